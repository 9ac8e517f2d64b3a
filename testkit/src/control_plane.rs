//! The local control plane (etcd, kube-apiserver, kube-controller-manager on 127.0.0.1, see
//! `scripts/control-plane.sh`) and clients for it.
//!
//! If `STORAGECLASS_MIGRATE_CONTROL_PLANE` names a directory with a running control plane
//! (`make test` does this), that one is used. Otherwise the first call to [`ControlPlane::get`]
//! starts one for this test process in a temporary directory; a watchdog stops it (and deletes
//! the directory) once the process exits. Set `STORAGECLASS_MIGRATE_KEEP_CONTROL_PLANE=1` to keep
//! that directory and its logs.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    time::Instant,
};

use kube::{
    Client,
    config::{KubeConfigOptions, Kubeconfig},
};

/// Names a directory holding a running control plane (written by `scripts/control-plane.sh`).
pub const CONTROL_PLANE_ENV: &str = "STORAGECLASS_MIGRATE_CONTROL_PLANE";
/// Keep the temporary control-plane directory of this test process (logs, etcd data).
pub const KEEP_ENV: &str = "STORAGECLASS_MIGRATE_KEEP_CONTROL_PLANE";

/// The repository's root directory (the parent of `testkit/`).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ lies in the repository")
}

/// Where the control plane is and how to reach it. Only paths and strings: every test creates
/// its own [`Client`] (with [`client`]) on its own runtime.
#[derive(Debug)]
pub struct ControlPlane {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub apiserver_url: String,
    pub ca: PathBuf,
    /// kubectl built together with the servers, if the env file names it.
    pub kubectl: Option<PathBuf>,
    /// True if this process started the control plane.
    pub owned: bool,
    /// With the CSI stack (`control-plane.sh start DIR --csi`): `DIR/csi`, one directory per
    /// driver (see [`crate::csi`]).
    pub csi_root: Option<PathBuf>,
}

static CONTROL_PLANE: OnceLock<Result<ControlPlane, String>> = OnceLock::new();

impl ControlPlane {
    /// The control plane for this test process, started on first use.
    pub fn get() -> &'static ControlPlane {
        match CONTROL_PLANE.get_or_init(Self::init) {
            Ok(cp) => cp,
            Err(e) => panic!("no control plane: {e}"),
        }
    }

    fn init() -> Result<ControlPlane, String> {
        match std::env::var_os(CONTROL_PLANE_ENV) {
            Some(dir) if !dir.is_empty() => Self::from_dir(Path::new(&dir), false),
            _ => Self::start(),
        }
    }

    fn start() -> Result<ControlPlane, String> {
        let keep = std::env::var_os(KEEP_ENV).is_some_and(|v| !v.is_empty() && v != "0");
        let dir = tempfile::Builder::new()
            .prefix("storageclass-migrate-cp-")
            .tempdir()
            .map_err(|e| format!("creating a temporary directory: {e}"))?
            .keep();
        let script = repo_root().join("scripts/control-plane.sh");
        let mut cmd = Command::new(&script);
        cmd.arg("start")
            .arg(&dir)
            .arg("--owner-pid")
            .arg(std::process::id().to_string())
            .stdin(Stdio::null());
        if !keep {
            cmd.arg("--remove-dir");
        }
        let started = Instant::now();
        let out = cmd
            .output()
            .map_err(|e| format!("running {}: {e}", script.display()))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            return Err(format!(
                "{} start {} failed ({}):\n{stderr}",
                script.display(),
                dir.display(),
                out.status
            ));
        }
        eprint!("{stderr}");
        eprintln!(
            "control plane for test process {} ready in {:.1?} in {} (removed at exit unless \
             {KEEP_ENV}=1)",
            std::process::id(),
            started.elapsed(),
            dir.display()
        );
        Self::from_dir(&dir, true)
    }

    fn from_dir(dir: &Path, owned: bool) -> Result<ControlPlane, String> {
        if !dir.join("pids").is_file() {
            return Err(format!(
                "{} has no running control plane (no pids file); start one with \
                 scripts/control-plane.sh start DIR",
                dir.display()
            ));
        }
        let env_file = dir.join("env");
        let text = std::fs::read_to_string(&env_file).map_err(|e| {
            format!(
                "reading {} ({CONTROL_PLANE_ENV} must name a directory written by \
                 scripts/control-plane.sh start): {e}",
                env_file.display()
            )
        })?;
        let vars = parse_env_file(&text);
        let get = |k: &str| {
            vars.get(k)
                .cloned()
                .ok_or_else(|| format!("{} has no {k}", env_file.display()))
        };
        Ok(ControlPlane {
            dir: dir.to_path_buf(),
            kubeconfig: get("KUBECONFIG")?.into(),
            apiserver_url: get("APISERVER_URL")?,
            ca: get("CA_CERT")?.into(),
            kubectl: vars.get("KUBECTL").map(PathBuf::from),
            owned,
            csi_root: vars
                .get("CSI_ROOT")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
        })
    }
}

/// Parses the `export KEY='value'` lines of the env file.
fn parse_env_file(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let line = line.strip_prefix("export ").unwrap_or(line);
            let (k, v) = line.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .unwrap_or(v);
            Some((k.trim().to_string(), v.to_string()))
        })
        .collect()
}

/// Selects the Kubernetes version of the control plane (`scripts/build-control-plane.sh`): unset,
/// the default pinned in `tools/k8s`; `1.33`, the one pinned in `tools/k8s-1.33`.
pub const KUBERNETES_VERSION_ENV: &str = "KUBERNETES_VERSION";

/// The `k8s.io/kubernetes` version (`v1.37.2`) pinned for the control plane that
/// `KUBERNETES_VERSION` selects, read from the go.mod the servers are built from.
pub fn pinned_kubernetes_version() -> String {
    let requested = std::env::var(KUBERNETES_VERSION_ENV).unwrap_or_default();
    let requested = requested.trim_start_matches('v');
    let minor: String = requested.split('.').take(2).collect::<Vec<_>>().join(".");
    let tools = repo_root().join("tools");
    let minor_dir = tools.join(format!("k8s-{minor}"));
    let dir = if !requested.is_empty() && minor_dir.join("go.mod").is_file() {
        minor_dir
    } else {
        tools.join("k8s")
    };
    let go_mod = dir.join("go.mod");
    let text = std::fs::read_to_string(&go_mod)
        .unwrap_or_else(|e| panic!("reading {}: {e}", go_mod.display()));
    kubernetes_requirement(&text)
        .unwrap_or_else(|| panic!("{} does not require k8s.io/kubernetes", go_mod.display()))
}

/// The version in a go.mod's `k8s.io/kubernetes vX.Y.Z` requirement.
fn kubernetes_requirement(go_mod: &str) -> Option<String> {
    go_mod.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some("k8s.io/kubernetes"))
            .then(|| words.next())
            .flatten()
            .filter(|v| v.starts_with('v'))
            .map(str::to_string)
    })
}

/// The admin (`system:masters`) kubeconfig.
pub fn kubeconfig_path() -> &'static Path {
    &ControlPlane::get().kubeconfig
}

/// `https://127.0.0.1:<port>`.
pub fn apiserver_url() -> &'static str {
    &ControlPlane::get().apiserver_url
}

/// The CA certificate that signed the apiserver's serving certificate.
pub fn ca_path() -> &'static Path {
    &ControlPlane::get().ca
}

/// A new admin client. Create one per test (clients are bound to the runtime they are used on).
pub async fn client() -> Client {
    client_for(kubeconfig_path()).await
}

/// A new client from any kubeconfig file.
pub async fn client_for(kubeconfig: &Path) -> Client {
    let kc = Kubeconfig::read_from(kubeconfig)
        .unwrap_or_else(|e| panic!("reading {}: {e}", kubeconfig.display()));
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("loading {}: {e}", kubeconfig.display()));
    Client::try_from(config).expect("building a client")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_file_lines_are_parsed() {
        let vars = parse_env_file(
            "export KUBECONFIG='/x/admin.kubeconfig'\nAPISERVER_URL=https://127.0.0.1:6443\n",
        );
        assert_eq!(vars["KUBECONFIG"], "/x/admin.kubeconfig");
        assert_eq!(vars["APISERVER_URL"], "https://127.0.0.1:6443");
    }

    #[test]
    fn kubernetes_requirement_is_read() {
        let go_mod = "require (\n\tk8s.io/kubelet v0.33.13 // indirect\n\tk8s.io/kubernetes v1.33.13 // indirect\n)\n\nreplace k8s.io/kubernetes => ./x\n";
        assert_eq!(kubernetes_requirement(go_mod).as_deref(), Some("v1.33.13"));
        assert_eq!(kubernetes_requirement("module x\n"), None);
    }

    #[test]
    fn a_kubernetes_version_is_pinned() {
        assert!(pinned_kubernetes_version().starts_with("v1."));
    }
}
