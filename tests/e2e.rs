//! `helm install` and `helm upgrade` of examples/app on the local control plane, with the hook Job
//! really running: a [`HookRunner`] runs its pod (in a container of the image that
//! scripts/build-image.sh builds) and writes the pod's status, the Job controller completes or
//! fails the Job (with the chart's `podFailurePolicy`), and Helm goes on or fails. Each test has
//! its own namespace, classes and volumes; hostPath volumes point below /nonexistent.
//!
//! The same scenarios run with the kubectl script that storageclass-migrate replaces as the hook
//! (`script_*` tests) when `STORAGECLASS_MIGRATE_SCRIPT` names it; without it they print that
//! they are skipped. docs/side-by-side.md tabulates where the outcomes differ; each row names the
//! tests here that show both.
//!
//!     scripts/control-plane.sh start /tmp/cp-e2e
//!     STORAGECLASS_MIGRATE_CONTROL_PLANE=/tmp/cp-e2e \
//!       [STORAGECLASS_MIGRATE_SCRIPT=/path/to/kubectl-hook.sh] cargo test --test e2e
//!     scripts/control-plane.sh stop /tmp/cp-e2e
//!
//! helm comes from scripts/build-helm.sh; the charts are copied to target/tmp/e2e-<pid>/ and the
//! app's dependency is built there, so the work tree is not touched.
//! `STORAGECLASS_MIGRATE_HOOK_RUNNER=binary` runs the host binary instead of the image.

mod common;
mod hook_runner;

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, OnceLock},
    thread,
    time::{Duration, Instant},
};

use common::*;
use hook_runner::{HookRun, HookRunner, How, Rendezvous, RunnerOpts};
use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use serde_json::{Value, json};

/// The kubectl hook script to run side by side, e.g. the reference kubectl-hook.sh.
const SCRIPT_ENV: &str = "STORAGECLASS_MIGRATE_SCRIPT";
/// Helm's `--timeout` (hooks and `--wait`).
const HELM_TIMEOUT: &str = "90s";
/// A helm call still running after this is killed and fails the test.
const HELM_KILL: Duration = Duration::from_secs(150);
/// The image the hook pod runs, as scripts/build-image.sh names it.
const IMAGE_REPOSITORY: &str = "localhost/storageclass-migrate";
/// The image standing for the script's kubectl image; its command runs on the host.
const KUBECTL_IMAGE: &str = "bitnami/kubectl";
/// The release name of every test: the claim is `rel-data`, the hook Job
/// `rel-data-storageclass-migrate`.
const RELEASE: &str = "rel";
const CLAIM: &str = "rel-data";
const JOB: &str = "rel-data-storageclass-migrate";
const PROVISIONER_FINALIZER: &str = "external-provisioner.volume.kubernetes.io/finalizer";

// ------------------------------------------------------------------------------------------
// Helm and the charts

/// helm and the charts, prepared once per test process under target/tmp.
struct Charts {
    helm: PathBuf,
    /// HELM_CONFIG_HOME, HELM_CACHE_HOME and HELM_DATA_HOME live here.
    home: PathBuf,
    /// A copy of examples/app with its dependency built.
    app: PathBuf,
    /// The same chart with the kubectl script as its hook, if [`SCRIPT_ENV`] names a script.
    script_app: Option<PathBuf>,
}

fn charts() -> &'static Charts {
    static CHARTS: OnceLock<Charts> = OnceLock::new();
    CHARTS.get_or_init(|| prepare_charts().unwrap_or_else(|e| panic!("preparing the charts: {e}")))
}

fn script_path() -> Option<PathBuf> {
    std::env::var_os(SCRIPT_ENV)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

fn prepare_charts() -> Result<Charts, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    // Directories of earlier test processes that are gone.
    for entry in fs::read_dir(tmp).into_iter().flatten().flatten() {
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
                include_str!("e2e/script-hook.yaml"),
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
struct HelmOut {
    args: Vec<String>,
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl HelmOut {
    fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Display for HelmOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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
    fn run_blocking(&self, args: &[&str]) -> HelmOut {
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

    async fn run(&'static self, args: Vec<String>) -> HelmOut {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            self.run_blocking(&args)
        })
        .await
        .expect("helm thread")
    }
}

// ------------------------------------------------------------------------------------------
// Scenarios

/// Which hook the chart runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hook {
    /// examples/app as it is: the storageclass-migrate image.
    Binary,
    /// examples/app with the kubectl script as its hook (tests/e2e/script-hook.yaml).
    Script,
}

/// Prints, past the harness's capture, that a script test is skipped; true if it is.
fn skip_without_script(test: &str) -> bool {
    if script_path().is_some() {
        return false;
    }
    let _ = writeln!(
        std::io::stderr(),
        "{test}: skipped: set {SCRIPT_ENV}=/path/to/kubectl-hook.sh to run the kubectl script side \
         by side"
    );
    true
}

/// One release of examples/app in a namespace of its own, with a hook runner for it and classes
/// A and B (no provisioner, Immediate binding, unless given).
struct Scenario {
    client: Client,
    hook: Hook,
    /// Stopped before the namespace goes.
    runner: HookRunner,
    ns: TestNamespace,
    a: String,
    b: String,
}

impl Scenario {
    async fn new(prefix: &str, hook: Hook) -> Scenario {
        Self::with_opts(prefix, hook, &ClassOpts::default(), RunnerOpts::default()).await
    }

    async fn with_opts(
        prefix: &str,
        hook: Hook,
        class_a: &ClassOpts,
        mut runner: RunnerOpts,
    ) -> Scenario {
        let client = client().await;
        let ns = TestNamespace::new(prefix).await;
        let a = create_storage_class(&client, &ns, "a", class_a).await;
        let b = create_storage_class(&client, &ns, "b", &ClassOpts::default()).await;
        if hook == Hook::Script {
            let kubectl = ControlPlane::get()
                .kubectl
                .clone()
                .expect("the control plane's env names KUBECTL");
            let dir = kubectl.parent().expect("kubectl's directory").to_path_buf();
            runner.host_images.push((KUBECTL_IMAGE.into(), dir));
        }
        Scenario {
            runner: HookRunner::start(ns.name(), runner),
            client,
            hook,
            ns,
            a: a.name_any(),
            b: b.name_any(),
        }
    }

    fn name(&self) -> &str {
        self.ns.name()
    }

    fn claims(&self) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.client.clone(), self.name())
    }

    fn pvs(&self) -> Api<PersistentVolume> {
        Api::all(self.client.clone())
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), self.name())
    }

    fn chart(&self) -> PathBuf {
        match self.hook {
            Hook::Binary => charts().app.clone(),
            Hook::Script => charts()
                .script_app
                .clone()
                .expect("the script chart (STORAGECLASS_MIGRATE_SCRIPT)"),
        }
    }

    /// A hostPath volume `<ns>-<suffix>` of `class` for the binder to match.
    async fn volume(&self, suffix: &str, class: &str, opts: PvOpts) -> PersistentVolume {
        let opts = PvOpts {
            class: Some(class.into()),
            ..opts
        };
        create_pv(&self.client, &self.ns, suffix, &opts).await
    }

    /// `helm install` (`verb` "install") or `helm upgrade --reuse-values` of the release, with
    /// `--set` of each pair; `--wait` if `wait`.
    async fn helm(&self, verb: &str, sets: &[(&str, &str)], wait: bool) -> HelmOut {
        let mut args: Vec<String> = vec![
            verb.into(),
            RELEASE.into(),
            self.chart().display().to_string(),
            "--namespace".into(),
            self.name().into(),
            "--timeout".into(),
            HELM_TIMEOUT.into(),
        ];
        if verb == "upgrade" {
            args.push("--reuse-values".into());
        } else {
            for (k, v) in [
                ("storageclassMigrate.image.repository", IMAGE_REPOSITORY),
                ("storageclassMigrate.image.tag", env!("CARGO_PKG_VERSION")),
            ] {
                args.push("--set".into());
                args.push(format!("{k}={v}"));
            }
        }
        if wait {
            args.push("--wait".into());
        }
        for (k, v) in sets {
            args.push("--set".into());
            args.push(format!("{k}={v}"));
        }
        charts().run(args).await
    }

    /// Installs the release with its claim on `class` (`None`: class left unset) and waits
    /// until the claim is bound.
    async fn install(&self, class: Option<&str>) -> PersistentVolumeClaim {
        let sets: Vec<(&str, &str)> = class
            .map(|c| vec![("persistence.storageClass", c)])
            .unwrap_or_default();
        let out = self.helm("install", &sets, true).await;
        self.expect_ok(&out);
        wait_bound(&self.client, self.name(), CLAIM).await
    }

    fn expect_ok(&self, out: &HelmOut) {
        assert!(out.ok(), "{out}\n{}", self.runner.report());
    }

    fn expect_failed(&self, out: &HelmOut) {
        assert!(
            !out.ok(),
            "expected helm to fail\n{out}\n{}",
            self.runner.report()
        );
    }

    /// The runs of the hook so far; the last one must have ended with `code`.
    fn last_run(&self, code: i32) -> HookRun {
        let runs = self.runner.runs();
        let last = runs
            .last()
            .cloned()
            .unwrap_or_else(|| panic!("no hook pod ran\n{}", self.runner.report()));
        assert_eq!(last.exit_code, code, "{}", self.runner.report());
        if let How::Image { image, .. } = &last.how {
            hook_runner::say_once(&format!(
                "e2e: hook pods of storageclass-migrate run in image {image} (buildah, chroot \
                 isolation)"
            ));
        }
        last
    }

    async fn claim(&self) -> Option<PersistentVolumeClaim> {
        self.claims()
            .get_opt(CLAIM)
            .await
            .expect("reading the claim")
    }

    async fn pv(&self, name: &str) -> Option<PersistentVolume> {
        self.pvs().get_opt(name).await.expect("reading a volume")
    }

    /// The release's status as `helm status` reports it (`deployed`, `failed`, ...).
    async fn release_status(&self) -> String {
        let out = charts()
            .run(vec![
                "status".into(),
                RELEASE.into(),
                "--namespace".into(),
                self.name().into(),
                "--output".into(),
                "json".into(),
            ])
            .await;
        assert!(out.ok(), "{out}");
        let v: Value = serde_json::from_str(&out.stdout).expect("helm status JSON");
        v["info"]["status"].as_str().unwrap_or_default().to_string()
    }

    /// `state.terminated` of the newest hook pod, read back from the API.
    async fn hook_pod_terminated(&self) -> Value {
        let lp = ListParams::default().labels(&format!("batch.kubernetes.io/job-name={JOB}"));
        let mut pods = self.pods().list(&lp).await.expect("listing pods").items;
        pods.sort_by_key(|p| p.metadata.creation_timestamp.clone());
        let pod = pods
            .last()
            .unwrap_or_else(|| panic!("no pod of job {JOB}\n{}", self.runner.report()));
        let status = serde_json::to_value(pod.status.clone()).unwrap();
        status["containerStatuses"][0]["state"]["terminated"].clone()
    }

    /// After a hook that succeeded: Helm deleted the Job and the RBAC objects
    /// (`hook-succeeded`).
    async fn expect_hook_objects_gone(&self) {
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), self.name());
        wait_deleted(&jobs, JOB).await;
        let sas: Api<ServiceAccount> = Api::namespaced(self.client.clone(), self.name());
        let left: Vec<String> = sas
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|s| s.name_any())
            .filter(|n| n != "default")
            .collect();
        assert!(left.is_empty(), "service accounts left: {left:?}");
        let prefix = format!("storageclass-migrate:{}:", self.name());
        let roles: Api<ClusterRole> = Api::all(self.client.clone());
        let left: Vec<String> = roles
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|r| r.name_any())
            .filter(|n| n.starts_with(&prefix))
            .collect();
        assert!(left.is_empty(), "cluster roles left: {left:?}");
    }
}

impl Drop for Scenario {
    /// The chart's cluster-scoped hook objects are left behind when a hook fails; they carry the
    /// namespace in their names. Pods on a node are deleted at once: no kubelet would confirm
    /// their graceful deletion, and the namespace would never go.
    fn drop(&mut self) {
        if std::env::var_os("STORAGECLASS_MIGRATE_KEEP_NAMESPACES").is_some_and(|v| v != "0") {
            return;
        }
        let prefix = format!("storageclass-migrate:{}:", self.name());
        let ns = self.name().to_string();
        let cleanup = thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let client = client().await;
                let dp = DeleteParams::background();
                let lp = ListParams::default();
                let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
                let now = DeleteParams {
                    grace_period_seconds: Some(0),
                    ..DeleteParams::background()
                };
                for p in pods.list(&lp).await.map(|l| l.items).unwrap_or_default() {
                    let _ = pods.delete(&p.name_any(), &now).await;
                }
                let crbs: Api<ClusterRoleBinding> = Api::all(client.clone());
                for b in crbs.list(&lp).await.map(|l| l.items).unwrap_or_default() {
                    if b.name_any().starts_with(&prefix) {
                        let _ = crbs.delete(&b.name_any(), &dp).await;
                    }
                }
                let crs: Api<ClusterRole> = Api::all(client);
                for r in crs.list(&lp).await.map(|l| l.items).unwrap_or_default() {
                    if r.name_any().starts_with(&prefix) {
                        let _ = crs.delete(&r.name_any(), &dp).await;
                    }
                }
            });
        });
        let _ = cleanup.join();
    }
}

fn class_of(claim: &PersistentVolumeClaim) -> Option<&str> {
    claim.spec.as_ref()?.storage_class_name.as_deref()
}

fn volume_of(claim: &PersistentVolumeClaim) -> Option<&str> {
    claim.spec.as_ref()?.volume_name.as_deref()
}

fn phase_of(pv: &PersistentVolume) -> Option<&str> {
    pv.status.as_ref()?.phase.as_deref()
}

fn retain() -> PvOpts {
    PvOpts {
        reclaim_policy: "Retain".into(),
        ..PvOpts::default()
    }
}

// ------------------------------------------------------------------------------------------
// (1) install

#[tokio::test]
async fn install_runs_the_hook_and_the_claim_binds_on_class_a() {
    let s = Scenario::new("e2e-install", Hook::Binary).await;
    let pv = s.volume("pv-a", &s.a, retain()).await;
    let claim = s.install(Some(&s.a)).await;

    assert_eq!(class_of(&claim), Some(s.a.as_str()));
    assert_eq!(volume_of(&claim), Some(pv.name_any().as_str()));
    let run = s.last_run(0);
    assert_eq!(s.runner.runs().len(), 1, "{}", s.runner.report());
    assert_eq!(
        run.termination_message,
        format!("{}/{CLAIM}: nothing to do: claim absent", s.name()),
        "{run}"
    );
    // In-cluster, with the chart's RBAC, as the chart's user.
    assert_eq!(run.service_account, JOB, "{run}");
    assert_eq!(
        run.bindings,
        [
            format!(
                "ClusterRoleBinding/storageclass-migrate:{}:{RELEASE}:{CLAIM}",
                s.name()
            ),
            format!("RoleBinding/{}/{JOB}", s.name()),
        ],
        "{run}"
    );
    assert_eq!(run.user, Some((65532, Some(65532))), "{run}");
    if let How::Image { .. } = run.how {
        // The message above came back through the file mounted for the container.
        assert!(
            run.notes
                .iter()
                .any(|n| n.starts_with("terminationMessagePath /dev/termination-log")),
            "{run}"
        );
    }
    assert_eq!(s.release_status().await, "deployed");
    s.expect_hook_objects_gone().await;
}

// ------------------------------------------------------------------------------------------
// (2) upgrade to class B; row "class change, Retain volume"

/// Installs on A (a Retain volume), upgrades to B (a volume waits there): the claim is replaced.
/// Returns the scenario, the claim before and after, and the volume on A.
async fn class_change(
    prefix: &str,
    hook: Hook,
) -> (
    Scenario,
    PersistentVolumeClaim,
    PersistentVolumeClaim,
    PersistentVolume,
) {
    let s = Scenario::new(prefix, hook).await;
    let pv_a = s.volume("pv-a", &s.a, retain()).await;
    let pv_b = s.volume("pv-b", &s.b, retain()).await;
    let before = s.install(Some(&s.a)).await;

    let out = s
        .helm("upgrade", &[("persistence.storageClass", &s.b)], true)
        .await;
    s.expect_ok(&out);
    let after = wait_bound(&s.client, s.name(), CLAIM).await;
    assert_ne!(after.uid(), before.uid(), "the claim was replaced");
    assert_eq!(class_of(&after), Some(s.b.as_str()));
    assert_eq!(volume_of(&after), Some(pv_b.name_any().as_str()));
    assert_eq!(s.release_status().await, "deployed");
    (s, before, after, pv_a)
}

#[tokio::test]
async fn upgrade_to_class_b_replaces_the_claim_and_keeps_a_retain_volume() {
    let (s, _, _, pv_a) = class_change("e2e-change", Hook::Binary).await;
    let run = s.last_run(0);
    assert_eq!(s.runner.runs().len(), 2, "{}", s.runner.report());
    let pv = pv_a.name_any();
    assert_eq!(
        run.termination_message,
        format!(
            "{ns}/{CLAIM}: migrated to class \"{b}\": found class \"{a}\", bound to PV {pv} \
             (Retain); done: claim deleted, claim gone; left: PV {pv} (Retain) with the old data",
            ns = s.name(),
            a = s.a,
            b = s.b
        ),
        "{run}"
    );
    let kept = s.pv(&pv).await.expect("the Retain volume is kept");
    assert_eq!(kept.uid(), pv_a.uid());
    assert_eq!(phase_of(&kept), Some("Released"));
    s.expect_hook_objects_gone().await;
}

#[tokio::test]
async fn script_upgrade_to_class_b_deletes_a_retain_volume() {
    if skip_without_script("script_upgrade_to_class_b_deletes_a_retain_volume") {
        return;
    }
    let (s, _, _, pv_a) = class_change("e2e-script-change", Hook::Script).await;
    let run = s.last_run(0);
    // Its finalizer strips fail (kubectl patch has no --ignore-not-found, and `|| true` hides
    // it); the protection controllers let claim and volume go once unused.
    assert!(
        run.output.contains("unknown flag: --ignore-not-found")
            && run.output.contains("Migration complete"),
        "{run}"
    );
    assert!(
        s.pv(&pv_a.name_any()).await.is_none(),
        "the script deleted the Retain volume"
    );
}

/// With get, patch and delete only (no list, watch), `kubectl delete --wait` cannot watch the
/// claim it deleted: it waits out its 60 s and fails; the claim is gone, the upgrade failed.
#[tokio::test]
async fn script_with_get_patch_delete_rbac_fails_after_60s_with_the_claim_gone() {
    if skip_without_script("script_with_get_patch_delete_rbac_fails_after_60s_with_the_claim_gone")
    {
        return;
    }
    let s = Scenario::new("e2e-script-rbac", Hook::Script).await;
    let pv_a = s.volume("pv-a", &s.a, retain()).await;
    s.volume("pv-b", &s.b, retain()).await;
    let out = s
        .helm(
            "install",
            &[
                ("persistence.storageClass", &s.a),
                ("scriptHook.listWatch", "false"),
            ],
            true,
        )
        .await;
    s.expect_ok(&out);
    let out = s
        .helm("upgrade", &[("persistence.storageClass", &s.b)], false)
        .await;
    s.expect_failed(&out);
    assert!(out.stderr.contains("BackoffLimitExceeded"), "{out}");
    let run = s.last_run(1);
    assert!(
        run.output.contains("cannot list resource")
            && run.output.contains("timed out waiting for the condition"),
        "{run}"
    );
    assert!(s.claim().await.is_none(), "the claim was deleted");
    let left = s.pv(&pv_a.name_any()).await.expect("the volume is left");
    assert_eq!(phase_of(&left), Some("Released"));
    assert_eq!(s.release_status().await, "failed");
}

// ------------------------------------------------------------------------------------------
// (3) upgrade without a change; row "no change"

async fn no_change(prefix: &str, hook: Hook) -> Scenario {
    let s = Scenario::new(prefix, hook).await;
    let pv = s.volume("pv-a", &s.a, retain()).await;
    let before = s.install(Some(&s.a)).await;
    let out = s.helm("upgrade", &[], true).await;
    s.expect_ok(&out);
    let after = s.claim().await.expect("the claim is there");
    assert_eq!(after.uid(), before.uid(), "the claim was kept");
    assert_eq!(volume_of(&after), Some(pv.name_any().as_str()));
    assert_eq!(s.runner.runs().len(), 2, "{}", s.runner.report());
    s
}

#[tokio::test]
async fn upgrade_without_a_change_keeps_the_claim() {
    let s = no_change("e2e-same", Hook::Binary).await;
    let run = s.last_run(0);
    assert_eq!(
        run.termination_message,
        format!(
            "{}/{CLAIM}: nothing to do: already on the desired class",
            s.name()
        ),
        "{run}"
    );
}

#[tokio::test]
async fn script_upgrade_without_a_change_keeps_the_claim() {
    if skip_without_script("script_upgrade_without_a_change_keeps_the_claim") {
        return;
    }
    let s = no_change("e2e-script-same", Hook::Script).await;
    let run = s.last_run(0);
    assert!(run.output.contains("no migration"), "{run}");
}

// ------------------------------------------------------------------------------------------
// (4) the toggle off

#[tokio::test]
async fn without_the_hook_a_class_change_fails_on_the_immutable_claim() {
    let s = Scenario::new("e2e-toggle", Hook::Binary).await;
    s.volume("pv-a", &s.a, retain()).await;
    let pv_b = s.volume("pv-b", &s.b, retain()).await;
    let before = s.install(Some(&s.a)).await;

    let out = s
        .helm(
            "upgrade",
            &[
                ("storageclassMigrate.allowMigration", "false"),
                ("persistence.storageClass", &s.b),
            ],
            false,
        )
        .await;
    s.expect_failed(&out);
    assert!(
        out.stderr.contains("spec is immutable after creation"),
        "{out}"
    );
    assert_eq!(
        s.runner.runs().len(),
        1,
        "no hook ran\n{}",
        s.runner.report()
    );
    let kept = s.claim().await.expect("the claim is there");
    assert_eq!(kept.uid(), before.uid());
    assert_eq!(class_of(&kept), Some(s.a.as_str()));
    assert_eq!(s.release_status().await, "failed");

    // The hook is what makes it work: the same upgrade with it on. (--reuse-values takes the
    // values of the last deployed release, so the class is given again.)
    let out = s
        .helm(
            "upgrade",
            &[
                ("storageclassMigrate.allowMigration", "true"),
                ("persistence.storageClass", &s.b),
            ],
            true,
        )
        .await;
    s.expect_ok(&out);
    let after = wait_bound(&s.client, s.name(), CLAIM).await;
    assert_eq!(class_of(&after), Some(s.b.as_str()));
    assert_eq!(volume_of(&after), Some(pv_b.name_any().as_str()));
    s.last_run(0);
}

// ------------------------------------------------------------------------------------------
// (5) class unset, the default class is the claim's; row "class left unset"

/// Installs with the class unset while class D is the default: the claim gets D. Then upgrades
/// without a change. Hold [`default_class_lock`] meanwhile.
async fn unset_class(prefix: &str, hook: Hook) -> (Scenario, PersistentVolumeClaim, String) {
    let s = Scenario::new(prefix, hook).await;
    let d = create_storage_class(
        &s.client,
        &s.ns,
        "default",
        &ClassOpts {
            default: true,
            ..ClassOpts::default()
        },
    )
    .await
    .name_any();
    let pv = s.volume("pv-d", &d, retain()).await;
    let before = s.install(None).await;
    assert_eq!(
        class_of(&before),
        Some(d.as_str()),
        "defaulted by admission"
    );
    assert_eq!(volume_of(&before), Some(pv.name_any().as_str()));

    let out = s.helm("upgrade", &[], false).await;
    s.expect_ok(&out);
    (s, before, pv.name_any())
}

#[tokio::test]
async fn unset_class_equal_to_the_default_deletes_nothing() {
    let _default = default_class_lock();
    let (s, before, pv) = unset_class("e2e-unset", Hook::Binary).await;
    let run = s.last_run(0);
    assert!(
        run.termination_message
            .starts_with(&format!("{}/{CLAIM}: nothing to do", s.name())),
        "{run}"
    );
    let after = s.claim().await.expect("the claim is there");
    assert_eq!(after.uid(), before.uid());
    assert_eq!(
        phase_of(&s.pv(&pv).await.expect("the volume is there")),
        Some("Bound")
    );
}

#[tokio::test]
async fn script_unset_class_deletes_the_claim_and_its_volume() {
    if skip_without_script("script_unset_class_deletes_the_claim_and_its_volume") {
        return;
    }
    let _default = default_class_lock();
    let (s, before, pv) = unset_class("e2e-script-unset", Hook::Script).await;
    let run = s.last_run(0);
    assert!(run.output.contains("mismatch"), "{run}");
    let after = s.claim().await.expect("helm created the claim again");
    assert_ne!(
        after.uid(),
        before.uid(),
        "the claim was deleted and recreated"
    );
    assert!(s.pv(&pv).await.is_none(), "its volume was deleted");
}

// ------------------------------------------------------------------------------------------
// (6) a failing hook: the target class is missing; row "target class missing"

async fn missing_class(
    prefix: &str,
    hook: Hook,
) -> (
    Scenario,
    PersistentVolumeClaim,
    PersistentVolume,
    String,
    HelmOut,
) {
    let s = Scenario::new(prefix, hook).await;
    let pv = s.volume("pv-a", &s.a, retain()).await;
    let before = s.install(Some(&s.a)).await;
    let missing = s.ns.scoped("missing");
    let out = s
        .helm("upgrade", &[("persistence.storageClass", &missing)], false)
        .await;
    (s, before, pv, missing, out)
}

#[tokio::test]
async fn missing_target_class_fails_the_upgrade_and_keeps_claim_and_volume() {
    let (s, before, pv, missing, out) = missing_class("e2e-missing", Hook::Binary).await;
    s.expect_failed(&out);
    assert!(out.stderr.contains("pre-upgrade hooks failed"), "{out}");
    assert!(out.stderr.contains("PodFailurePolicy"), "{out}");
    let run = s.last_run(3);
    // The reason, in the pod's status as the Job keeps it.
    let terminated = s.hook_pod_terminated().await;
    assert_eq!(terminated["exitCode"], json!(3), "{terminated}");
    let message = terminated["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("StorageClass \"{missing}\" does not exist"))
            && message.contains("the old claim is kept"),
        "{terminated}\n{run}"
    );
    let job: Job = get(&Api::namespaced(s.client.clone(), s.name()), JOB).await;
    let failed = job
        .status
        .and_then(|st| st.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Failed")
        .expect("the Job failed");
    assert_eq!(failed.reason.as_deref(), Some("PodFailurePolicy"));
    // Nothing changed.
    let kept = s.claim().await.expect("the claim is there");
    assert_eq!(kept.uid(), before.uid());
    assert_eq!(class_of(&kept), Some(s.a.as_str()));
    let pv_now = s.pv(&pv.name_any()).await.expect("the volume is there");
    assert_eq!(phase_of(&pv_now), Some("Bound"));
    assert_eq!(s.release_status().await, "failed");
}

#[tokio::test]
async fn script_missing_target_class_deletes_claim_and_volume() {
    if skip_without_script("script_missing_target_class_deletes_claim_and_volume") {
        return;
    }
    let (s, before, pv, missing, out) = missing_class("e2e-script-missing", Hook::Script).await;
    s.expect_ok(&out);
    s.last_run(0);
    assert!(
        s.pv(&pv.name_any()).await.is_none(),
        "its volume was deleted"
    );
    let after = s.claim().await.expect("helm created the claim again");
    assert_ne!(after.uid(), before.uid());
    assert_eq!(class_of(&after), Some(missing.as_str()));
    // A claim on a class that does not exist never binds.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = s.claim().await.expect("the claim is there");
    assert_eq!(
        after.status.and_then(|st| st.phase).as_deref(),
        Some("Pending")
    );
}

// ------------------------------------------------------------------------------------------
// (7) an app pod uses the claim; row "a pod uses the claim"

/// Installs on A, then starts a pod on a node that mounts the claim (no scheduler: spec.nodeName
/// set directly), and a kubelet stand-in that force-deletes pods once they are evicted.
async fn in_use(
    prefix: &str,
    hook: Hook,
) -> (
    Scenario,
    PersistentVolumeClaim,
    PersistentVolume,
    KubeletStandIn,
) {
    let s = Scenario::new(prefix, hook).await;
    let pv = s.volume("pv-a", &s.a, retain()).await;
    s.volume("pv-b", &s.b, retain()).await;
    let before = s.install(Some(&s.a)).await;
    let node = create_node(&s.client, &s.ns, "node").await;
    create_pod(&s.client, s.name(), "app", &node.name_any(), &[CLAIM]).await;
    set_pod_phase(&s.client, s.name(), "app", "Running").await;
    let kubelet = kubelet_stand_in(s.name());
    (s, before, pv, kubelet)
}

/// The pods the kubelet stand-in force-deleted, but for the hook's own (which it also deletes
/// once Helm deleted their Job).
fn app_pods_deleted(kubelet: &KubeletStandIn) -> Vec<String> {
    kubelet
        .deleted_pods()
        .into_iter()
        .filter(|p| !p.starts_with(JOB))
        .collect()
}

#[tokio::test]
async fn in_use_evict_evicts_the_pod_then_replaces_the_claim() {
    let (s, before, _, kubelet) = in_use("e2e-evict", Hook::Binary).await;
    let out = s
        .helm("upgrade", &[("persistence.storageClass", &s.b)], true)
        .await;
    s.expect_ok(&out);
    let run = s.last_run(0);
    assert_eq!(app_pods_deleted(&kubelet), ["app"], "{run}");
    assert!(s.pods().get_opt("app").await.unwrap().is_none());
    assert!(run.termination_message.contains("evicted"), "{run}");
    let after = wait_bound(&s.client, s.name(), CLAIM).await;
    assert_ne!(after.uid(), before.uid());
    assert_eq!(class_of(&after), Some(s.b.as_str()));
}

#[tokio::test]
async fn in_use_fail_refuses_and_the_upgrade_fails() {
    let (s, before, pv, kubelet) = in_use("e2e-in-use-fail", Hook::Binary).await;
    let out = s
        .helm(
            "upgrade",
            &[
                ("persistence.storageClass", &s.b),
                ("storageclassMigrate.inUse", "fail"),
            ],
            false,
        )
        .await;
    s.expect_failed(&out);
    assert!(out.stderr.contains("PodFailurePolicy"), "{out}");
    let run = s.last_run(3);
    let terminated = s.hook_pod_terminated().await;
    let message = terminated["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("in use by pod app") && message.contains("--in-use fail"),
        "{terminated}\n{run}"
    );
    assert!(app_pods_deleted(&kubelet).is_empty());
    let pod = s
        .pods()
        .get_opt("app")
        .await
        .unwrap()
        .expect("the pod runs on");
    assert!(pod.metadata.deletion_timestamp.is_none());
    let kept = s.claim().await.expect("the claim is there");
    assert_eq!(kept.uid(), before.uid());
    assert_eq!(
        phase_of(&s.pv(&pv.name_any()).await.expect("the volume")),
        Some("Bound")
    );
}

/// The script's `kubectl patch --ignore-not-found` fails (kubectl patch has no such flag), so
/// the claim keeps its `kubernetes.io/pvc-protection` finalizer: the delete waits for the pod
/// to go, which nothing asks for, `kubectl delete --wait --timeout=60s` gives up, and the Job
/// fails with the claim left terminating under the running pod.
#[tokio::test]
async fn script_in_use_fails_after_60s_leaving_the_claim_terminating() {
    if skip_without_script("script_in_use_fails_after_60s_leaving_the_claim_terminating") {
        return;
    }
    let (s, before, pv, kubelet) = in_use("e2e-script-in-use", Hook::Script).await;
    let out = s
        .helm("upgrade", &[("persistence.storageClass", &s.b)], false)
        .await;
    s.expect_failed(&out);
    assert!(out.stderr.contains("BackoffLimitExceeded"), "{out}");
    let run = s.last_run(1);
    assert!(
        run.output.contains("unknown flag: --ignore-not-found")
            && run.output.contains("timed out waiting for the condition"),
        "{run}"
    );
    assert!(run.elapsed >= Duration::from_secs(60), "{run}");
    // The pod was neither evicted nor deleted; the claim waits for it, being deleted.
    assert!(app_pods_deleted(&kubelet).is_empty());
    let pod = s
        .pods()
        .get_opt("app")
        .await
        .unwrap()
        .expect("the pod runs on");
    assert!(pod.metadata.deletion_timestamp.is_none());
    let claim = s.claim().await.expect("the claim is still there");
    assert_eq!(claim.uid(), before.uid());
    assert!(claim.metadata.deletion_timestamp.is_some(), "terminating");
    assert_eq!(
        phase_of(&s.pv(&pv.name_any()).await.expect("the volume")),
        Some("Bound")
    );
    assert_eq!(s.release_status().await, "failed");
}

// ------------------------------------------------------------------------------------------
// (8) two releases of the same name in two namespaces at the same time

#[tokio::test]
async fn two_releases_in_two_namespaces_at_once_keep_apart() {
    let opts = RunnerOpts {
        rendezvous: Some(Arc::new(Rendezvous::new(2))),
        ..RunnerOpts::default()
    };
    let one = Scenario::with_opts(
        "e2e-two-1",
        Hook::Binary,
        &ClassOpts::default(),
        opts.clone(),
    )
    .await;
    let two = Scenario::with_opts("e2e-two-2", Hook::Binary, &ClassOpts::default(), opts).await;
    for s in [&one, &two] {
        s.volume("pv-a", &s.a, retain()).await;
        s.volume("pv-b", &s.b, retain()).await;
    }
    // Both installs, then both upgrades, at the same time: each pair of hook pods runs only
    // once both exist (the runners share a rendezvous).
    let (a1, a2) = (
        [("persistence.storageClass", one.a.as_str())],
        [("persistence.storageClass", two.a.as_str())],
    );
    let (x, y) = tokio::join!(
        one.helm("install", &a1, true),
        two.helm("install", &a2, true),
    );
    one.expect_ok(&x);
    two.expect_ok(&y);
    let (b1, b2) = (
        [("persistence.storageClass", one.b.as_str())],
        [("persistence.storageClass", two.b.as_str())],
    );
    let (x, y) = tokio::join!(
        one.helm("upgrade", &b1, true),
        two.helm("upgrade", &b2, true),
    );
    one.expect_ok(&x);
    two.expect_ok(&y);
    for s in [&one, &two] {
        let run = s.last_run(0);
        assert!(run.termination_message.contains("migrated"), "{run}");
        assert!(
            run.notes
                .iter()
                .any(|n| n.starts_with("ran together with the other")),
            "{run}"
        );
        let claim = wait_bound(&s.client, s.name(), CLAIM).await;
        assert_eq!(class_of(&claim), Some(s.b.as_str()));
        // Each hook was bound only to its own namespace's objects.
        assert_eq!(
            run.bindings,
            [
                format!(
                    "ClusterRoleBinding/storageclass-migrate:{}:{RELEASE}:{CLAIM}",
                    s.name()
                ),
                format!("RoleBinding/{}/{JOB}", s.name()),
            ],
            "{run}"
        );
        s.expect_hook_objects_gone().await;
    }
}

// ------------------------------------------------------------------------------------------
// Row "the volume carries its provisioner's finalizer"

/// Class A as a CSI driver's: the volume has reclaim policy Delete, the provisioner's annotation
/// and finalizer; the provisioner does not run here. Installs on A and upgrades to B (whose
/// volume waits there; `--wait` only if `wait`).
async fn provisioner_finalizer(
    prefix: &str,
    hook: Hook,
    wait: bool,
) -> (Scenario, PersistentVolume, HelmOut) {
    let class_a = ClassOpts {
        provisioner: "example.com/csi".into(),
        ..ClassOpts::default()
    };
    let s = Scenario::with_opts(prefix, hook, &class_a, RunnerOpts::default()).await;
    let pv = s
        .volume(
            "pv-a",
            &s.a,
            PvOpts {
                reclaim_policy: "Delete".into(),
                extra_finalizers: vec![PROVISIONER_FINALIZER.into()],
                annotations: [(
                    "pv.kubernetes.io/provisioned-by".to_string(),
                    "example.com/csi".to_string(),
                )]
                .into(),
                ..PvOpts::default()
            },
        )
        .await;
    s.volume("pv-b", &s.b, retain()).await;
    s.install(Some(&s.a)).await;
    let out = s
        .helm(
            "upgrade",
            &[
                ("persistence.storageClass", &s.b),
                ("storageclassMigrate.timeout", "3s"),
            ],
            wait,
        )
        .await;
    (s, pv, out)
}

/// Removes the provisioner's finalizer, which no provisioner will ever remove here.
async fn release_volume(s: &Scenario, name: &str) {
    let _ = s
        .pvs()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await;
}

#[tokio::test]
async fn provisioner_finalizer_is_left_to_the_provisioner() {
    let (s, pv, out) = provisioner_finalizer("e2e-csi", Hook::Binary, true).await;
    s.expect_ok(&out);
    let after = wait_bound(&s.client, s.name(), CLAIM).await;
    assert_eq!(class_of(&after), Some(s.b.as_str()));
    let run = s.last_run(0);
    let name = pv.name_any();
    assert!(
        run.termination_message
            .contains(&format!("left: PV {name} (Delete) still present after 3s")),
        "{run}"
    );
    let left = s
        .pv(&name)
        .await
        .expect("the volume waits for its provisioner");
    assert!(left.metadata.deletion_timestamp.is_none());
    assert!(
        left.finalizers().iter().any(|f| f == PROVISIONER_FINALIZER),
        "{:?}",
        left.finalizers()
    );
    release_volume(&s, &name).await;
}

/// The script's `kubectl patch --ignore-not-found` fails, so the provisioner's finalizer stays:
/// `kubectl delete pv --wait --timeout=60s` waits for a provisioner that does not run here, gives
/// up, and the upgrade fails with the claim already gone.
#[tokio::test]
async fn script_provisioner_finalizer_fails_after_60s_with_the_claim_gone() {
    if skip_without_script("script_provisioner_finalizer_fails_after_60s_with_the_claim_gone") {
        return;
    }
    let (s, pv, out) = provisioner_finalizer("e2e-script-csi", Hook::Script, false).await;
    s.expect_failed(&out);
    assert!(out.stderr.contains("BackoffLimitExceeded"), "{out}");
    let run = s.last_run(1);
    assert!(
        run.output.contains("unknown flag: --ignore-not-found")
            && run.output.contains("timed out waiting for the condition"),
        "{run}"
    );
    assert!(s.claim().await.is_none(), "the claim was deleted");
    let name = pv.name_any();
    let left = s
        .pv(&name)
        .await
        .expect("the volume waits for its provisioner");
    assert!(left.metadata.deletion_timestamp.is_some(), "being deleted");
    assert!(
        left.finalizers().iter().any(|f| f == PROVISIONER_FINALIZER),
        "{:?}",
        left.finalizers()
    );
    assert_eq!(s.release_status().await, "failed");
    release_volume(&s, &name).await;
}
