//! helm (built by `scripts/build-helm.sh`) and the charts, prepared once per test process: a copy
//! of `chart-snippet/` and `examples/app` under `target/tmp/e2e-<pid>/` with the app's dependency
//! built there (the work tree is not touched), and, when `STORAGECLASS_MIGRATE_SCRIPT` names the
//! kubectl script that storageclass-migrate replaces, the same app with that script as its hook
//! (`testkit/charts/script-hook.yaml`).

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

/// helm and the charts.
#[derive(Debug)]
pub struct Charts {
    pub helm: PathBuf,
    /// HELM_CONFIG_HOME, HELM_CACHE_HOME and HELM_DATA_HOME live here.
    pub home: PathBuf,
    /// A copy of examples/app with its dependency built.
    pub app: PathBuf,
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

    let out = Command::new(root.join("scripts/build-helm.sh"))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("scripts/build-helm.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "scripts/build-helm.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let helm = PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim(),
    );

    // The library chart and the app side by side, as in the repository (the app's dependency is
    // file://../../chart-snippet); the app's charts/ is rebuilt from the library.
    copy_dir(&root.join("chart-snippet"), &base.join("chart-snippet"))?;
    let app = base.join("examples/app");
    copy_dir(&root.join("examples/app"), &app)?;
    let _ = fs::remove_dir_all(app.join("charts"));
    let charts = Charts {
        helm,
        home: base.join("helm"),
        app: app.clone(),
        script_app: None,
    };
    let out = charts.run_blocking(&["dependency", "build", &app.display().to_string()]);
    if !out.ok() {
        return Err(format!("helm dependency build: {out}"));
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
            "helm {} -> exit {:?} after {:.1?}\n--- stdout:\n{}--- stderr:\n{}",
            self.args.join(" "),
            self.code,
            self.elapsed,
            self.stdout,
            self.stderr
        )
    }
}

impl Charts {
    /// Runs helm against the control plane (admin kubeconfig); blocks.
    pub fn run_blocking(&self, args: &[&str]) -> HelmOut {
        let started = Instant::now();
        let mut cmd = Command::new(&self.helm);
        cmd.args(args)
            .arg("--kubeconfig")
            .arg(kubeconfig_path())
            .env("HELM_CONFIG_HOME", self.home.join("config"))
            .env("HELM_CACHE_HOME", self.home.join("cache"))
            .env("HELM_DATA_HOME", self.home.join("data"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.helm.display()));
        let pid = child.id();
        // Kill a helm that hangs (its own --timeout should end it first).
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let watchdog = thread::spawn(move || {
            if done_rx.recv_timeout(HELM_KILL).is_err() {
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
            args: args.iter().map(|a| a.to_string()).collect(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: started.elapsed(),
        }
    }

    /// Runs helm on a blocking thread, so that the test's runtime goes on meanwhile.
    pub async fn run(&'static self, args: Vec<String>) -> HelmOut {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            self.run_blocking(&args)
        })
        .await
        .expect("helm thread")
    }
}
