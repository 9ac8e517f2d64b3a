//! Flux on the local control plane: source-controller and helm-controller (built by
//! `scripts/build-flux.sh` from the modules pinned in `tools/flux/`), their
//! CustomResourceDefinitions from the same module versions, and [`FluxRelease`]: a
//! [`Release`](crate::release::Release) of `examples/app` installed and upgraded by a HelmRelease
//! from the chart repository of [`crate::chart_repo`].
//!
//! [`controllers`] starts both once per test process, out of cluster with the admin kubeconfig,
//! leader election, metrics and health endpoints off, watching all namespaces; source-controller
//! keeps its artifacts below the control plane's directory and serves them on a loopback port.
//! They stop when the test process exits (`PR_SET_PDEATHSIG`). Their logs go to
//! `<control plane dir>/logs/flux-<pid>-<controller>.log`, which `make test` keeps when a test
//! failed; a [`FluxRelease`] dropped by a failing test prints the helm-controller lines of its
//! namespace. Two test processes must not run Flux against one control plane at the same time:
//! both pairs of controllers would reconcile every HelmRelease.

use std::{
    borrow::Cow,
    fs,
    net::TcpListener,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, OnceLock, mpsc},
    thread,
    time::{Duration, Instant},
};

use k8s_openapi::{
    NamespaceResourceScope, api::core::v1::PersistentVolumeClaim,
    apimachinery::pkg::apis::meta::v1::Condition,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{
    api::{get, wait_bound, wait_for_within, wait_pv_phase},
    chart_repo::app_repository,
    control_plane::{ControlPlane, client, kubeconfig_path, repo_root},
    namespace::{keep_namespaces, on_own_runtime},
    objects::Volume,
    release::{CLAIM, IMAGE_REPOSITORY, RELEASE, Release, ReleaseOpts, image_tag},
};

/// How long a HelmRelease may take to reach the state a test waits for: an install or upgrade
/// with its hook, or a failed upgrade with all its retries and rollbacks.
pub const RELEASE_WAIT: Duration = Duration::from_secs(240);
/// The HelmRepository of every [`FluxRelease`]'s namespace.
pub const REPOSITORY: &str = "charts";
/// The field manager of the tests' server-side applies.
const MANAGER: &str = "storageclass-migrate-tests";
/// A HelmRelease with this label (value: its namespace) is reconciled by an
/// [`OwnHelmController`]; the shared helm-controller leaves it alone.
pub const OWN_CONTROLLER_LABEL: &str = "storageclass-migrate.test/helm-controller";
/// The flags of every controller: out of cluster, one instance, nothing listening but
/// source-controller's artifact server.
const COMMON_FLAGS: [&str; 4] = [
    "--enable-leader-election=false",
    "--metrics-addr=0",
    "--health-addr=0",
    "--log-encoding=console",
];

/// Declares a Flux object kind with a typed `status` and an untyped `spec`.
macro_rules! flux_kind {
    ($kind:ident, $status:ty, $group:literal, $version:literal, $plural:literal) => {
        #[derive(Clone, Debug, Default, Deserialize, Serialize)]
        pub struct $kind {
            pub metadata: ObjectMeta,
            #[serde(default)]
            pub spec: Value,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub status: Option<$status>,
        }

        impl Resource for $kind {
            type DynamicType = ();
            type Scope = NamespaceResourceScope;

            fn kind(_: &()) -> Cow<'_, str> {
                stringify!($kind).into()
            }
            fn group(_: &()) -> Cow<'_, str> {
                $group.into()
            }
            fn version(_: &()) -> Cow<'_, str> {
                $version.into()
            }
            fn plural(_: &()) -> Cow<'_, str> {
                $plural.into()
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

flux_kind!(
    HelmRelease,
    FluxStatus,
    "helm.toolkit.fluxcd.io",
    "v2",
    "helmreleases"
);
flux_kind!(
    HelmChart,
    FluxStatus,
    "source.toolkit.fluxcd.io",
    "v1",
    "helmcharts"
);
flux_kind!(
    HelmRepository,
    FluxStatus,
    "source.toolkit.fluxcd.io",
    "v1",
    "helmrepositories"
);

/// The part of a Flux object's status the tests read.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FluxStatus {
    pub observed_generation: Option<i64>,
    pub conditions: Vec<Condition>,
    pub last_handled_reconcile_at: Option<String>,
    /// HelmRelease: the failures counted for the current generation.
    pub install_failures: Option<i64>,
    pub upgrade_failures: Option<i64>,
    pub failures: Option<i64>,
    /// HelmRelease: the releases made, newest first.
    pub history: Vec<Value>,
}

/// The condition `type_` of a Flux object (`Ready`, `Released`, `Remediated`, `Stalled`, ...).
pub fn condition<'a>(status: Option<&'a FluxStatus>, type_: &str) -> Option<&'a Condition> {
    status?.conditions.iter().find(|c| c.type_ == type_)
}

/// `(status, reason)` of condition `type_`, e.g. `Some(("False", "UpgradeFailed"))`.
pub fn condition_state<'a>(
    status: Option<&'a FluxStatus>,
    type_: &str,
) -> Option<(&'a str, &'a str)> {
    condition(status, type_).map(|c| (c.status.as_str(), c.reason.as_str()))
}

impl HelmRelease {
    /// True once the controller has reconciled the current generation (`observedGeneration`).
    pub fn observed(&self) -> bool {
        let status = self.status.as_ref();
        status.and_then(|s| s.observed_generation) == self.metadata.generation
    }

    /// `(status, reason)` of condition `type_`.
    pub fn state(&self, type_: &str) -> Option<(&str, &str)> {
        condition_state(self.status.as_ref(), type_)
    }

    /// The message of condition `type_` ("" without it).
    pub fn message(&self, type_: &str) -> &str {
        condition(self.status.as_ref(), type_).map_or("", |c| c.message.as_str())
    }

    /// The `status` of the releases in its history, newest first (`deployed`, `failed`, ...).
    pub fn history_states(&self) -> Vec<String> {
        let history = self.status.as_ref().map(|s| s.history.as_slice());
        history
            .unwrap_or_default()
            .iter()
            .map(|h| h["status"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

// ------------------------------------------------------------------------------------------
// The controllers

/// Flux's controllers running for this test process.
#[derive(Debug)]
pub struct Controllers {
    /// `<name>` -> its log file.
    pub logs: Vec<(String, PathBuf)>,
    /// Where source-controller serves its artifacts, `http://127.0.0.1:<port>`.
    pub storage_url: String,
    /// The helm-controller binary, for an [`OwnHelmController`].
    pub helm_controller: PathBuf,
    /// How each controller that has exited ended, by name.
    exited: Arc<Mutex<Vec<String>>>,
}

/// The controllers of this test process, started (CRDs applied) on first use.
pub fn controllers() -> &'static Controllers {
    static CONTROLLERS: OnceLock<Result<Controllers, String>> = OnceLock::new();
    match CONTROLLERS.get_or_init(start_controllers) {
        Ok(c) => c,
        Err(e) => panic!("starting Flux: {e}"),
    }
}

impl Controllers {
    /// Where the logs are, which controllers have exited, and the lines of helm-controller's log
    /// that name `namespace`: for assertion messages.
    pub fn report(&self, namespace: &str) -> String {
        let mut out = String::new();
        for (name, path) in &self.logs {
            out += &format!("{name} log: {}\n", path.display());
        }
        for exit in self.exited.lock().unwrap().iter() {
            out += &format!("{exit}\n");
        }
        if let Some((_, path)) = self.logs.iter().find(|(n, _)| n == "helm-controller") {
            let text = fs::read_to_string(path).unwrap_or_default();
            let needle = format!("\"{namespace}\"");
            for line in text.lines().filter(|l| l.contains(&needle)) {
                out += &format!("  {line}\n");
            }
        }
        out
    }
}

/// Runs `scripts/build-flux.sh` for one controller; returns the directory it prints.
fn build(controller: &str) -> Result<PathBuf, String> {
    let out = Command::new(repo_root().join("scripts/build-flux.sh"))
        .arg(controller)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("scripts/build-flux.sh: {e}"))?;
    let printed = String::from_utf8_lossy(&out.stdout);
    let dir = PathBuf::from(printed.lines().last().unwrap_or_default().trim());
    if !out.status.success() || !dir.join(controller).is_file() {
        return Err(format!(
            "scripts/build-flux.sh {controller} failed ({}), printed {printed:?}:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(dir)
}

/// `kubectl apply --server-side` of the CRDs in `dir`, then waits until they are established.
fn apply_crds(dir: &Path) -> Result<(), String> {
    let kubectl = ControlPlane::get()
        .kubectl
        .clone()
        .ok_or("the control plane's env names no KUBECTL")?;
    let dir = dir.display().to_string();
    for args in [
        vec!["apply", "--server-side", "--force-conflicts", "-f", &dir],
        vec![
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "-f",
            &dir,
        ],
    ] {
        let out = Command::new(&kubectl)
            .args(&args)
            .arg("--kubeconfig")
            .arg(kubeconfig_path())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{}: {e}", kubectl.display()))?;
        if !out.status.success() {
            return Err(format!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    Ok(())
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

fn start_controllers() -> Result<Controllers, String> {
    let source = build("source-controller")?;
    let helm = build("helm-controller")?;
    apply_crds(&source.join("crds"))?;
    apply_crds(&helm.join("crds"))?;

    let cp = ControlPlane::get();
    let pid = std::process::id();
    let storage = cp.dir.join(format!("flux-{pid}/storage"));
    fs::create_dir_all(&storage).map_err(|e| format!("{}: {e}", storage.display()))?;
    let storage_addr = format!("127.0.0.1:{}", free_port()?);
    let source_args = [
        format!("--storage-path={}", storage.display()),
        format!("--storage-addr={storage_addr}"),
        format!("--storage-adv-addr={storage_addr}"),
    ];
    let helm_args = helm_controller_args(&format!("!{OWN_CONTROLLER_LABEL}"));

    let mut commands = vec![];
    let mut logs = vec![];
    for (name, binary, args) in [
        (
            "source-controller",
            source.join("source-controller"),
            &source_args[..],
        ),
        (
            "helm-controller",
            helm.join("helm-controller"),
            &helm_args[..],
        ),
    ] {
        let log = cp.dir.join(format!("logs/flux-{pid}-{name}.log"));
        commands.push((name.to_owned(), controller_command(&binary, args, &log)?));
        logs.push((name.to_owned(), log));
    }
    let exited = Arc::new(Mutex::new(vec![]));
    spawn_for_life(commands, exited.clone())?;
    Ok(Controllers {
        logs,
        storage_url: format!("http://{storage_addr}"),
        helm_controller: helm.join("helm-controller"),
        exited,
    })
}

/// helm-controller's flags, reconciling the HelmReleases that `selector` picks.
fn helm_controller_args(selector: &str) -> Vec<String> {
    vec![
        "--graceful-shutdown-timeout=5s".into(),
        format!("--watch-label-selector={selector}"),
    ]
}

/// A controller's command: `args` and the common flags, the admin kubeconfig, output to `log`,
/// and SIGTERM when the thread that starts it ends (`PR_SET_PDEATHSIG`).
fn controller_command(binary: &Path, args: &[String], log: &Path) -> Result<Command, String> {
    let file = fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let mut cmd = Command::new(binary);
    cmd.args(COMMON_FLAGS)
        .args(args)
        .env("KUBECONFIG", kubeconfig_path())
        .env("RUNTIME_NAMESPACE", "default")
        .stdin(Stdio::null())
        .stdout(file.try_clone().map_err(|e| e.to_string())?)
        .stderr(file);
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))
                .map_err(std::io::Error::from)
        });
    }
    Ok(cmd)
}

/// A helm-controller for the HelmRelease of one namespace only (labelled
/// [`OWN_CONTROLLER_LABEL`]), for a test that may crash it. Killed when dropped.
#[derive(Debug)]
pub struct OwnHelmController {
    child: Mutex<Child>,
    pub log: PathBuf,
}

impl OwnHelmController {
    pub fn start(namespace: &str) -> OwnHelmController {
        let shared = controllers();
        let cp = ControlPlane::get();
        let log = cp.dir.join(format!(
            "logs/flux-{}-helm-controller-{namespace}.log",
            std::process::id()
        ));
        let args = helm_controller_args(&format!("{OWN_CONTROLLER_LABEL}={namespace}"));
        let child = controller_command(&shared.helm_controller, &args, &log)
            .and_then(|mut cmd| cmd.spawn().map_err(|e| e.to_string()))
            .unwrap_or_else(|e| panic!("starting a helm-controller for {namespace}: {e}"));
        OwnHelmController {
            child: Mutex::new(child),
            log,
        }
    }

    /// How it ended, once it has; `None` if it is still running after `limit`.
    pub async fn wait_exit(&self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            let status = self.child.lock().unwrap().try_wait();
            if let Ok(Some(status)) = status {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for OwnHelmController {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Starts the commands from a thread that lives as long as the process (the death signal is
/// sent when the thread that started a child ends), and records how each child ends.
fn spawn_for_life(
    commands: Vec<(String, Command)>,
    exited: Arc<Mutex<Vec<String>>>,
) -> Result<(), String> {
    let (tx, rx) = mpsc::channel::<Result<(), String>>();
    thread::Builder::new()
        .name("flux-controllers".into())
        .spawn(move || {
            let mut children: Vec<(String, Child)> = vec![];
            for (name, mut cmd) in commands {
                match cmd.spawn() {
                    Ok(child) => children.push((name, child)),
                    Err(e) => {
                        let _ = tx.send(Err(format!("starting {name}: {e}")));
                        return;
                    }
                }
            }
            let _ = tx.send(Ok(()));
            loop {
                children.retain_mut(|(name, child)| match child.try_wait() {
                    Ok(Some(status)) => {
                        exited
                            .lock()
                            .unwrap()
                            .push(format!("{name} exited: {status}"));
                        false
                    }
                    _ => true,
                });
                thread::sleep(Duration::from_millis(500));
            }
        })
        .map_err(|e| format!("spawning the controllers' thread: {e}"))?;
    rx.recv()
        .map_err(|_| "the controllers' thread ended".to_string())?
}

// ------------------------------------------------------------------------------------------
// The scene

/// A [`Release`] (namespace, classes A and B, hook runner) whose chart Flux installs: a
/// HelmRepository [`REPOSITORY`] for the chart repository of this test process and a HelmRelease
/// [`RELEASE`] of `app` from it, with the hook's image and `spec.upgrade` as given. Derefs to
/// the [`Release`].
pub struct FluxRelease {
    pub s: Release,
    pub opts: FluxOpts,
    /// With [`FluxOpts::own_helm_controller`]: the helm-controller of this release.
    pub own: Option<OwnHelmController>,
}

/// How a [`FluxRelease`] is set up; `Default`: Flux's defaults, the shared controllers.
#[derive(Clone, Debug, Default)]
pub struct FluxOpts {
    /// `spec.upgrade` of every apply, e.g. `{"remediation": {"retries": 2}}`; null: none.
    pub upgrade: Value,
    /// Reconciled by an [`OwnHelmController`] rather than the shared one: for a test that may
    /// crash helm-controller.
    pub own_helm_controller: bool,
}

impl std::ops::Deref for FluxRelease {
    type Target = Release;

    fn deref(&self) -> &Release {
        &self.s
    }
}

impl FluxRelease {
    /// The namespace with its HelmRepository, ready; no HelmRelease yet.
    pub async fn new(prefix: &str, opts: FluxOpts) -> FluxRelease {
        controllers();
        let repository = app_repository();
        let s = Release::with(prefix, ReleaseOpts::default()).await;
        let api: Api<HelmRepository> = Api::namespaced(s.client().clone(), s.name());
        let repo = json!({
            "apiVersion": "source.toolkit.fluxcd.io/v1",
            "kind": "HelmRepository",
            "metadata": {"name": REPOSITORY},
            "spec": {"url": repository.url, "interval": "10m"},
        });
        api.patch(REPOSITORY, &apply_params(), &Patch::Apply(repo))
            .await
            .expect("applying the HelmRepository");
        let own = opts
            .own_helm_controller
            .then(|| OwnHelmController::start(s.name()));
        let f = FluxRelease { s, opts, own };
        wait_for_within(&api, REPOSITORY, "Ready", RELEASE_WAIT, |r| {
            r.is_some_and(|r| {
                condition_state(r.status.as_ref(), "Ready") == Some(("True", "Succeeded"))
            })
        })
        .await;
        f
    }

    /// As [`Release::installed`], through Flux: Retain volumes `<ns>-pv-a` on A and `<ns>-pv-b`
    /// on B, the HelmRelease applied with the claim on A and Ready. Returns the scene, the claim
    /// and the volume on A.
    pub async fn installed(
        prefix: &str,
        opts: FluxOpts,
    ) -> (
        FluxRelease,
        PersistentVolumeClaim,
        k8s_openapi::api::core::v1::PersistentVolume,
    ) {
        let f = FluxRelease::new(prefix, opts).await;
        let pv_a = Volume::host_path("pv-a").class(&f.a).create(&f.s).await;
        Volume::host_path("pv-b").class(&f.b).create(&f.s).await;
        f.apply(&f.a, &[]).await;
        let hr = f.wait_ready().await;
        assert_eq!(
            hr.state("Released"),
            Some(("True", "InstallSucceeded")),
            "{hr:#?}"
        );
        let claim = wait_bound(f.client(), f.name(), CLAIM).await;
        let pv_a = wait_pv_phase(f.client(), &pv_a.name_any(), "Bound").await;
        (f, claim, pv_a)
    }

    pub fn helm_releases(&self) -> Api<HelmRelease> {
        Api::namespaced(self.client().clone(), self.name())
    }

    /// Server-side applies the HelmRelease with the claim on `class` and the values `sets`
    /// (dotted paths, e.g. `("storageclassMigrate.allowMigration", json!(false))`) over the
    /// hook's image and JSON summary. Returns it as applied (its new `generation`).
    pub async fn apply(&self, class: &str, sets: &[(&str, Value)]) -> HelmRelease {
        let mut values = json!({
            "persistence": {"storageClass": class},
            "storageclassMigrate": {
                "image": {"repository": IMAGE_REPOSITORY, "tag": image_tag()},
                "extraEnv": [{"name": "SUMMARY_FORMAT", "value": "json"}],
            },
        });
        for (path, value) in sets {
            set_path(&mut values, path, value.clone());
        }
        let mut hr = json!({
            "apiVersion": "helm.toolkit.fluxcd.io/v2",
            "kind": "HelmRelease",
            "metadata": {"name": RELEASE},
            "spec": {
                "interval": "10m",
                "timeout": self.timeout,
                "chart": {"spec": {
                    "chart": "app",
                    "version": "0.1.0",
                    "sourceRef": {"kind": "HelmRepository", "name": REPOSITORY},
                }},
                "values": values,
            },
        });
        if !self.opts.upgrade.is_null() {
            hr["spec"]["upgrade"] = self.opts.upgrade.clone();
        }
        if self.own.is_some() {
            hr["metadata"]["labels"] = json!({OWN_CONTROLLER_LABEL: self.name()});
        }
        self.helm_releases()
            .patch(RELEASE, &apply_params(), &Patch::Apply(hr))
            .await
            .expect("applying the HelmRelease")
    }

    /// Asks the controller to reconcile again (`reconcile.fluxcd.io/requestedAt`) and waits
    /// until it has handled that request. Returns the HelmRelease then.
    pub async fn reconcile_again(&self, token: &str) -> HelmRelease {
        let patch =
            json!({"metadata": {"annotations": {"reconcile.fluxcd.io/requestedAt": token}}});
        self.helm_releases()
            .patch(RELEASE, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .expect("annotating the HelmRelease");
        self.wait_until("the reconcile request handled", |hr| {
            hr.status
                .as_ref()
                .and_then(|s| s.last_handled_reconcile_at.as_deref())
                == Some(token)
        })
        .await
    }

    /// Waits until the current generation is reconciled and Ready.
    pub async fn wait_ready(&self) -> HelmRelease {
        self.wait_until("Ready", |hr| {
            hr.observed() && hr.state("Ready").map(|s| s.0) == Some("True")
        })
        .await
    }

    /// Waits until the controller has given up on the current generation: `Stalled` (retries
    /// exhausted) and not Ready.
    pub async fn wait_stalled(&self) -> HelmRelease {
        self.wait_until("Stalled", |hr| {
            hr.observed()
                && hr.state("Stalled").map(|s| s.0) == Some("True")
                && hr.state("Ready").map(|s| s.0) == Some("False")
        })
        .await
    }

    /// Watches the HelmRelease until `cond` holds, within [`RELEASE_WAIT`].
    pub async fn wait_until(&self, what: &str, cond: impl Fn(&HelmRelease) -> bool) -> HelmRelease {
        let hr = wait_for_within(&self.helm_releases(), RELEASE, what, RELEASE_WAIT, |hr| {
            hr.is_some_and(&cond)
        })
        .await;
        hr.expect("the HelmRelease")
    }

    pub async fn helm_release(&self) -> HelmRelease {
        get(&self.helm_releases(), RELEASE).await
    }

    /// The hook runs, the controllers' logs and the helm-controller lines of this namespace.
    pub fn report(&self) -> String {
        let mut out = format!(
            "{}\n{}",
            self.runner.report(),
            controllers().report(self.name())
        );
        if let Some(own) = &self.own {
            out += &format!("its own helm-controller's log: {}\n", own.log.display());
        }
        out
    }
}

impl Drop for FluxRelease {
    /// Prints [`FluxRelease::report`] when the test failed. Then deletes the namespace's Flux
    /// objects without waiting for their controllers (gone at the end of the test process, or
    /// crashed): their finalizers would keep the namespace from going.
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.report());
        }
        self.own.take();
        if keep_namespaces() {
            return;
        }
        let ns = self.name().to_string();
        on_own_runtime(Duration::from_secs(20), move || async move {
            let client = client().await;
            delete_without_finalizers::<HelmRelease>(&client, &ns).await;
            delete_without_finalizers::<HelmChart>(&client, &ns).await;
            delete_without_finalizers::<HelmRepository>(&client, &ns).await;
        });
    }
}

/// Deletes every `K` of `namespace` and strips its finalizers (best effort).
async fn delete_without_finalizers<K>(client: &kube::Client, namespace: &str)
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let strip = json!({"metadata": {"finalizers": null}});
    for object in api
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
    {
        let name = object.name_any();
        let _ = api.delete(&name, &DeleteParams::background()).await;
        let _ = api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&strip))
            .await;
    }
}

fn apply_params() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

/// Sets `value` at the dotted `path` of `target`, making objects on the way.
fn set_path(target: &mut Value, path: &str, value: Value) {
    let mut node = target;
    for key in path.split('.') {
        if !node.is_object() {
            *node = json!({});
        }
        node = node
            .as_object_mut()
            .expect("an object")
            .entry(key)
            .or_insert(Value::Null);
    }
    *node = value;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_path_makes_the_objects_on_the_way() {
        let mut v = json!({"a": {"x": 1}});
        set_path(&mut v, "a.b.c", json!(false));
        set_path(&mut v, "d", json!("e"));
        assert_eq!(v, json!({"a": {"x": 1, "b": {"c": false}}, "d": "e"}));
    }
}
