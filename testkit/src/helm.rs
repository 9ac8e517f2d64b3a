//! helm (built by `scripts/build-helm.sh`: Helm 3, and Helm 4 when a test asks for it) and the
//! charts, prepared once per test process: a copy of `chart-snippet/`, `examples/app` and
//! `examples/statefulset` under
//! `target/tmp/e2e-<pid>/` with the app's dependency built there (the work tree is not touched),
//! and, when `STORAGECLASS_MIGRATE_SCRIPT` names the kubectl script that storageclass-migrate
//! replaces, the same app with that script as its hook (`testkit/charts/script-hook.yaml`).
//!
//! Both majors run the same chart copies; each has its own `HELM_*_HOME` directories
//! ([`Charts::home`]). Helm 4 applies with server-side apply (its `--server-side auto` follows the
//! release's install), Helm 3 with its three-way merge patch.

use std::{
    fmt, fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

use crate::control_plane::{kubeconfig_path, repo_root};

/// The kubectl hook script to run side by side, e.g. the reference kubectl-hook.sh.
pub const SCRIPT_ENV: &str = "STORAGECLASS_MIGRATE_SCRIPT";
/// A helm call still running after this is killed and fails the test.
pub const HELM_KILL: Duration = Duration::from_secs(150);

/// Which helm runs a command: both are built from the modules pinned in `tools/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Helm {
    /// Helm 3 (`tools/helm`): the default of every [`crate::release::Release`].
    V3,
    /// Helm 4 (`tools/helm4`, `HELM_MODULE=helm4 scripts/build-helm.sh`).
    V4,
}

impl Helm {
    /// The major version, 3 or 4.
    pub fn major(self) -> u32 {
        match self {
            Helm::V3 => 3,
            Helm::V4 => 4,
        }
    }

    /// The directory below `tools/` of its Go module, as `HELM_MODULE` names it.
    fn module(self) -> &'static str {
        match self {
            Helm::V3 => "helm",
            Helm::V4 => "helm4",
        }
    }

    /// The helm binary, built (or found in the cache) by `scripts/build-helm.sh` on the first
    /// call of this test process.
    pub fn path(self) -> &'static Path {
        static PATHS: [OnceLock<PathBuf>; 2] = [OnceLock::new(), OnceLock::new()];
        PATHS[self as usize]
            .get_or_init(|| build_helm(self).unwrap_or_else(|e| panic!("building {self}: {e}")))
    }
}

impl fmt::Display for Helm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "helm {}", self.major())
    }
}

/// Runs `scripts/build-helm.sh` for `helm`'s module; returns the path it prints.
fn build_helm(helm: Helm) -> Result<PathBuf, String> {
    let out = Command::new(repo_root().join("scripts/build-helm.sh"))
        .env("HELM_MODULE", helm.module())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("scripts/build-helm.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "HELM_MODULE={} scripts/build-helm.sh failed:\n{}",
            helm.module(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let path = PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim(),
    );
    if !path.is_file() {
        return Err(format!(
            "scripts/build-helm.sh printed {path:?}, not a file"
        ));
    }
    Ok(path)
}

/// The charts, and where helm keeps its files.
#[derive(Debug)]
pub struct Charts {
    /// Below it, one directory per major ([`Charts::home`]).
    pub base: PathBuf,
    /// A copy of examples/app with its dependency built.
    pub app: PathBuf,
    /// A copy of examples/statefulset with its dependency built.
    pub statefulset: PathBuf,
    /// The same chart with the kubectl script as its hook, if [`SCRIPT_ENV`] names a script.
    pub script_app: Option<PathBuf>,
}

/// The charts of this test process, prepared on first use.
pub fn charts() -> &'static Charts {
    static CHARTS: OnceLock<Charts> = OnceLock::new();
    CHARTS.get_or_init(|| prepare_charts().unwrap_or_else(|e| panic!("preparing the charts: {e}")))
}

/// The kubectl script named by [`SCRIPT_ENV`].
pub fn script_path() -> Option<PathBuf> {
    std::env::var_os(SCRIPT_ENV)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

fn target_tmp() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
        .join("tmp")
}

fn prepare_charts() -> Result<Charts, String> {
    let root = repo_root();
    let tmp = target_tmp();
    // Directories of earlier test processes that are gone.
    for entry in fs::read_dir(&tmp).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("e2e-")
            && !Path::new("/proc").join(pid).exists()
        {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    let base = tmp.join(format!("e2e-{}", std::process::id()));
    let _ = fs::remove_dir_all(&base);

    // The library chart and the app side by side, as in the repository (the app's dependency is
    // file://../../chart-snippet); the app's charts/ is rebuilt from the library.
    copy_dir(&root.join("chart-snippet"), &base.join("chart-snippet"))?;
    let app = base.join("examples/app");
    copy_dir(&root.join("examples/app"), &app)?;
    let _ = fs::remove_dir_all(app.join("charts"));
    let statefulset = base.join("examples/statefulset");
    copy_dir(&root.join("examples/statefulset"), &statefulset)?;
    let _ = fs::remove_dir_all(statefulset.join("charts"));
    let charts = Charts {
        base: base.clone(),
        app: app.clone(),
        statefulset: statefulset.clone(),
        script_app: None,
    };
    // Helm 3 builds the dependencies; both majors read the result.
    for chart in [&app, &statefulset] {
        let out = charts.run_blocking(
            Helm::V3,
            &["dependency", "build", &chart.display().to_string()],
        );
        if !out.ok() {
            return Err(format!("helm dependency build: {out}"));
        }
    }

    let script_app = match script_path() {
        None => None,
        Some(script) => {
            let text = fs::read_to_string(&script)
                .map_err(|e| format!("{SCRIPT_ENV}={}: {e}", script.display()))?;
            let variant = base.join("script/examples/app");
            copy_dir(&app, &variant)?;
            fs::write(
                variant.join("templates/storageclass-migrate.yaml"),
                include_str!("../charts/script-hook.yaml"),
            )
            .map_err(|e| e.to_string())?;
            fs::create_dir_all(variant.join("files")).map_err(|e| e.to_string())?;
            fs::write(variant.join("files/kubectl-hook.sh"), text).map_err(|e| e.to_string())?;
            Some(variant)
        }
    };
    Ok(Charts {
        script_app,
        ..charts
    })
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), String> {
    fs::create_dir_all(to).map_err(|e| format!("{}: {e}", to.display()))?;
    for entry in fs::read_dir(from).map_err(|e| format!("{}: {e}", from.display()))? {
        let entry = entry.map_err(|e| e.to_string())?;
        let target = to.join(entry.file_name());
        if entry.file_type().map_err(|e| e.to_string())?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), &target).map_err(|e| format!("{}: {e}", target.display()))?;
        }
    }
    Ok(())
}

/// A finished helm command.
#[derive(Debug)]
pub struct HelmOut {
    pub helm: Helm,
    pub args: Vec<String>,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl HelmOut {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

impl fmt::Display for HelmOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} -> exit {:?} after {:.1?}\n--- stdout:\n{}--- stderr:\n{}",
            self.helm,
            self.args.join(" "),
            self.code,
            self.elapsed,
            self.stdout,
            self.stderr
        )
    }
}

impl Charts {
    /// HELM_CONFIG_HOME, HELM_CACHE_HOME and HELM_DATA_HOME of `helm` live here.
    pub fn home(&self, helm: Helm) -> PathBuf {
        match helm {
            Helm::V3 => self.base.join("helm"),
            Helm::V4 => self.base.join("helm4"),
        }
    }

    /// Runs `helm` against the control plane (admin kubeconfig); blocks. Killed after
    /// [`HELM_KILL`].
    pub fn run_blocking(&self, helm: Helm, args: &[&str]) -> HelmOut {
        self.run_blocking_within(helm, args, HELM_KILL)
    }

    /// As [`Charts::run_blocking`], killed after `kill` (longer than its `--timeout`).
    pub fn run_blocking_within(&self, helm: Helm, args: &[&str], kill: Duration) -> HelmOut {
        let started = Instant::now();
        let home = self.home(helm);
        let mut cmd = Command::new(helm.path());
        cmd.args(args)
            .arg("--kubeconfig")
            .arg(kubeconfig_path())
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_DATA_HOME", home.join("data"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", helm.path().display()));
        let pid = child.id();
        // Kill a helm that hangs (its own --timeout should end it first).
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let watchdog = thread::spawn(move || {
            if done_rx.recv_timeout(kill).is_err() {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(pid.to_string())
                    .status();
            }
        });
        let out = child.wait_with_output().expect("waiting for helm");
        let _ = done_tx.send(());
        let _ = watchdog.join();
        HelmOut {
            helm,
            args: args.iter().map(|a| a.to_string()).collect(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: started.elapsed(),
        }
    }

    /// Runs `helm` on a blocking thread, so that the test's runtime goes on meanwhile; killed
    /// after `kill`.
    pub async fn run(&'static self, helm: Helm, args: Vec<String>, kill: Duration) -> HelmOut {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            self.run_blocking_within(helm, &args, kill)
        })
        .await
        .expect("helm thread")
    }
}

/// For each `async fn scenario(helm: Helm)` named, the tests `scenario::helm_3` and
/// `scenario::helm_4`, which run it with that helm: `helm_3_and_4!(upgrade_keeps_the_claim);`
/// after the function. `scripts/test.sh` runs the tests named `…::helm_3` and `…::helm_4`
/// after the others, several at a time.
#[macro_export]
macro_rules! helm_3_and_4 {
    ($($scenario:ident),+ $(,)?) => {$(
        mod $scenario {
            #[tokio::test]
            async fn helm_3() {
                super::$scenario($crate::helm::Helm::V3).await;
            }

            #[tokio::test]
            async fn helm_4() {
                super::$scenario($crate::helm::Helm::V4).await;
            }
        }
    )+};
}
