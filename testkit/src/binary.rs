//! The binary under test as the hook Job runs it: a subprocess configured by environment
//! variables, with a clean environment, a kubeconfig and a termination-message file of its own.
//! It can be waited for (bounded) or killed at any point.

use std::{
    fmt,
    io::Read,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{control_plane::kubeconfig_path, outcome::Outcome};

/// How long [`Job::run`] lets the binary run before killing it and failing the test.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// The most the termination message holds (the binary cuts the summary there).
pub const TERMINATION_LOG_LIMIT: usize = 4096;
/// Names the binary under test, instead of the one cargo built next to the test.
pub const BINARY_ENV: &str = "STORAGECLASS_MIGRATE_BINARY";

/// The storageclass-migrate binary cargo built for the tests: it lies in the profile directory
/// (`target/debug/`), above the test executable (`target/debug/deps/<test>-<hash>`).
pub fn binary_path() -> PathBuf {
    if let Some(path) = std::env::var_os(BINARY_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable lies in target/<profile>/deps/");
    let binary = profile.join("storageclass-migrate");
    assert!(
        binary.is_file(),
        "{} does not exist: cargo builds it for the integration tests of the root package, or \
         set {BINARY_ENV}",
        binary.display()
    );
    binary
}

/// One run's settings: the hook's environment variables, arguments and kubeconfig. The summary
/// is asked for as JSON (`--summary-format json`) unless [`Job::human`] says otherwise.
#[derive(Clone, Debug)]
pub struct Job {
    kubeconfig: PathBuf,
    env: Vec<(String, String)>,
    args: Vec<String>,
    human: bool,
}

impl Job {
    /// A run for claims of `namespace` (`PVC_NAMESPACE`) with the admin kubeconfig.
    pub fn new(namespace: &str) -> Job {
        Job::bare().set("PVC_NAMESPACE", namespace)
    }

    /// A run with the admin kubeconfig and no setting at all.
    pub fn bare() -> Job {
        Job {
            kubeconfig: kubeconfig_path().to_path_buf(),
            env: vec![],
            args: vec![],
            human: false,
        }
    }

    /// The summary as the human lines (no `--summary-format json`), for the golden-line tests.
    pub fn human(mut self) -> Job {
        self.human = true;
        self
    }

    /// Sets (or replaces) an environment variable.
    pub fn set(mut self, key: &str, value: &str) -> Job {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
        self
    }

    /// Sets each variable of `settings`.
    pub fn with(self, settings: &[(&str, &str)]) -> Job {
        settings.iter().fold(self, |job, (k, v)| job.set(k, v))
    }

    pub fn unset(mut self, key: &str) -> Job {
        self.env.retain(|(k, _)| k != key);
        self
    }

    /// `WAIT_TIMEOUT`, in whole seconds.
    pub fn timeout(self, timeout: Duration) -> Job {
        self.set("WAIT_TIMEOUT", &format!("{}s", timeout.as_secs()))
    }

    pub fn arg(mut self, arg: &str) -> Job {
        self.args.push(arg.into());
        self
    }

    pub fn kubeconfig(mut self, path: &Path) -> Job {
        self.kubeconfig = path.to_path_buf();
        self
    }

    /// The value a variable is set to.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Starts the binary with a clean environment: `PATH`, `KUBECONFIG`, a `TERMINATION_LOG`
    /// in a directory of its own (created empty, as the kubelet does), and the settings.
    pub fn spawn(&self) -> Binary {
        let dir = tempfile::Builder::new()
            .prefix("storageclass-migrate-run-")
            .tempdir()
            .expect("temporary directory");
        let termination_log = dir.path().join("termination-log");
        // The kubelet creates the file; the binary only writes into it.
        std::fs::write(&termination_log, "").expect("termination log");
        let binary = binary_path();
        let mut command = Command::new(&binary);
        command
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("KUBECONFIG", &self.kubeconfig)
            .env("TERMINATION_LOG", &termination_log)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .args(if self.human {
                &[][..]
            } else {
                &["--summary-format", "json"][..]
            })
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let reader = |mut pipe: Box<dyn Read + Send>| {
            thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = pipe.read_to_end(&mut buf);
                buf
            })
        };
        let stdout = reader(Box::new(child.stdout.take().unwrap()));
        let stderr = reader(Box::new(child.stderr.take().unwrap()));
        Binary {
            child,
            json: !self.human,
            started: Instant::now(),
            stdout: Some(stdout),
            stderr: Some(stderr),
            termination_log,
            _dir: dir,
        }
    }

    /// Runs the binary to its end; fails the test if it runs longer than [`RUN_TIMEOUT`].
    pub async fn run(&self) -> Run {
        self.run_within(RUN_TIMEOUT).await
    }

    /// Runs the binary to its end; kills it and fails the test after `limit`.
    pub async fn run_within(&self, limit: Duration) -> Run {
        self.spawn().finish(limit).await
    }
}

/// A running binary whose output is collected; it can be killed (SIGKILL) at any point. Dropped
/// while running, it is killed: a test that fails half-way leaves no binary running.
pub struct Binary {
    child: Child,
    json: bool,
    started: Instant,
    stdout: Option<thread::JoinHandle<Vec<u8>>>,
    stderr: Option<thread::JoinHandle<Vec<u8>>>,
    termination_log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Binary {
    /// Waits for the binary to exit; kills it and fails the test after `limit`. Checks that
    /// the termination message repeats the summary on stdout.
    pub async fn finish(mut self, limit: Duration) -> Run {
        loop {
            if self
                .child
                .try_wait()
                .expect("waiting for the binary")
                .is_some()
            {
                let run = self.collect();
                run.check_termination_log();
                return run;
            }
            if self.started.elapsed() > limit {
                let _ = self.child.kill();
                let run = self.collect();
                panic!("still running after {limit:?}; killed.\n{run}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: no clean-up, no summary; what the cluster holds is what a rerun finds. Fails the
    /// test if the binary had ended by itself before.
    pub fn kill(mut self) -> Run {
        if let Ok(Some(_)) = self.child.try_wait() {
            let run = self.collect();
            panic!("the binary ended before it was killed\n{run}");
        }
        self.child.kill().expect("killing the binary");
        let run = self.collect();
        assert_eq!(
            run.code, None,
            "the binary ended before it was killed\n{run}"
        );
        run
    }

    /// SIGTERM, as the kubelet sends at the Job's deadline or a drain: the binary stops and
    /// still reports. Waits for it to exit, for at most `limit`.
    pub async fn terminate(mut self, limit: Duration) -> Run {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -TERM failed");
        self.started = Instant::now();
        self.finish(limit).await
    }

    fn collect(&mut self) -> Run {
        let status = self.child.wait().expect("waiting for the binary");
        let text = |h: Option<thread::JoinHandle<Vec<u8>>>| {
            String::from_utf8_lossy(&h.and_then(|h| h.join().ok()).unwrap_or_default()).into_owned()
        };
        Run {
            json: self.json,
            code: status.code(),
            stdout: text(self.stdout.take()),
            stderr: text(self.stderr.take()),
            termination_log: std::fs::read_to_string(&self.termination_log).unwrap_or_default(),
            elapsed: self.started.elapsed(),
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// How a run ended.
#[derive(Clone, Debug)]
pub struct Run {
    /// Whether the summary was asked for as JSON.
    pub json: bool,
    /// `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub termination_log: String,
    pub elapsed: Duration,
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit status {:?} after {:.1?}\n--- stdout:\n{}--- stderr:\n{}--- termination log:\n{}",
            self.code, self.elapsed, self.stdout, self.stderr, self.termination_log
        )
    }
}

impl Run {
    /// The claims' outcomes, one per line of stdout (a run with the JSON summary).
    pub fn outcomes(&self) -> Vec<Outcome> {
        assert!(
            self.json,
            "a run with the human summary has no outcomes\n{self}"
        );
        Outcome::parse_all(&self.stdout).unwrap_or_else(|e| panic!("{e}\n{self}"))
    }

    /// The outcome of a run for one claim (there must be exactly one).
    pub fn outcome(&self) -> Outcome {
        let mut outcomes = self.outcomes();
        assert_eq!(outcomes.len(), 1, "expected one outcome\n{self}");
        outcomes.remove(0)
    }

    /// The human summary lines, one per claim (rebuilt from the outcomes of a JSON run).
    pub fn lines(&self) -> Vec<String> {
        if self.json {
            self.outcomes().iter().map(Outcome::line).collect()
        } else {
            self.stdout
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect()
        }
    }

    /// The line that says how the run ended: the claim's summary line (there must be exactly
    /// one), or, when the run stopped before any claim was looked at (bad input, no
    /// configuration), the last line on stderr.
    pub fn line(&self) -> String {
        match self.lines().as_slice() {
            [line] => line.clone(),
            [] => self
                .stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or_else(|| panic!("no output at all\n{self}"))
                .to_owned(),
            _ => panic!("more than one summary line\n{self}"),
        }
    }

    /// stdout and stderr together, for "named in the output" checks.
    pub fn output(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// Asserts the exit status.
    pub fn expect_status(&self, code: i32) -> &Run {
        assert_eq!(self.code, Some(code), "exit status\n{self}");
        self
    }

    /// Asserts the exit status and that the final line ([`Run::line`]) contains every fragment.
    pub fn expect(&self, code: i32, fragments: &[&str]) -> &Run {
        self.expect_status(code);
        let line = self.line();
        for fragment in fragments {
            assert!(
                line.contains(fragment),
                "the final line lacks {fragment:?}: {line}\n{self}"
            );
        }
        self
    }

    /// Asserts the exit status and the result of the one claim, and returns its outcome.
    pub fn expect_result(&self, code: i32, result: &str) -> Outcome {
        let outcome = self.expect_status(code).outcome();
        assert_eq!(outcome.result, result, "result\n{self}");
        outcome
    }

    /// Asserts the exit status and the [`Outcome::shape`] of the one claim (result and the kinds
    /// of what was found, done and left), and returns its outcome.
    pub fn expect_shape(&self, code: i32, shape: &str) -> Outcome {
        let outcome = self.expect_status(code).outcome();
        assert_eq!(outcome.shape(), shape, "outcome\n{self}");
        outcome
    }

    /// Asserts the exit status, the result and that the error names every fragment; returns
    /// the outcome.
    pub fn expect_error(&self, code: i32, result: &str, fragments: &[&str]) -> Outcome {
        let outcome = self.expect_result(code, result);
        for fragment in fragments {
            assert!(
                outcome.error().contains(fragment),
                "the error lacks {fragment:?}\n{self}"
            );
        }
        outcome
    }

    /// Asserts that the run ended by itself within `limit`.
    pub fn within(&self, limit: Duration) -> &Run {
        assert!(
            self.elapsed <= limit,
            "took {:.1?}, more than {limit:?}\n{self}",
            self.elapsed
        );
        self
    }

    /// Asserts that a warning was logged.
    pub fn expect_warning(&self) -> &Run {
        assert!(self.stderr.contains("WARN"), "no warning logged\n{self}");
        self
    }

    /// A failure before any claim was looked at is one line on stderr and nothing on stdout.
    pub fn expect_single_error_line(&self) -> &Run {
        assert!(self.stdout.trim().is_empty(), "{self}");
        let lines = self.stderr.lines().filter(|l| !l.trim().is_empty()).count();
        assert_eq!(lines, 1, "not one line on stderr\n{self}");
        self
    }

    /// The termination message holds the summary's human lines (when there is a summary), cut
    /// at 4 KiB with `...` where they are longer (the kubelet keeps no more).
    fn check_termination_log(&self) {
        if self.stdout.trim().is_empty() {
            return;
        }
        let summary = self.lines().join("\n");
        let log = self.termination_log.trim();
        match log.strip_suffix("...") {
            Some(start) if summary.len() > TERMINATION_LOG_LIMIT => {
                assert!(
                    self.termination_log.len() <= TERMINATION_LOG_LIMIT
                        && summary.starts_with(start),
                    "the termination message is not the start of the summary\n{self}"
                );
            }
            _ => assert_eq!(
                log, summary,
                "the termination message differs from the summary\n{self}"
            ),
        }
    }
}
