//! Integration-test harness: a real control plane (etcd, kube-apiserver, kube-controller-manager
//! on 127.0.0.1, see `scripts/control-plane.sh`) plus helpers to create the objects the tests
//! need.
//!
//! * If `STORAGECLASS_MIGRATE_CONTROL_PLANE` names a directory with a running control plane
//!   (`make test` does this), that one is used. Otherwise the first call to
//!   [`ControlPlane::get`] starts one for this test process in a temporary directory; a watchdog
//!   stops it (and deletes the directory) once the process exits. Set
//!   `STORAGECLASS_MIGRATE_KEEP_CONTROL_PLANE=1` to keep that directory and its logs.
//! * Tests run in parallel threads, each with its own tokio runtime, against one shared cluster:
//!   give every test its own [`TestNamespace`] and derive the names of cluster-scoped objects
//!   from it with [`TestNamespace::scoped`]. Cluster-scoped objects created through the helpers
//!   carry the label [`OWNER_LABEL`] and are deleted with the namespace.
//! * A default StorageClass affects every PVC created without `storageClassName`, even after
//!   the fact (the PV controller assigns the default class to such unbound claims). Tests that
//!   create a default class or such claims must hold [`default_class_lock`] meanwhile.
//! * There is no kubelet and no scheduler. Pods with `spec.nodeName` set stay `Pending` unless a
//!   test patches their status ([`set_pod_phase`]), and once deleted or evicted they stay
//!   `Terminating` unless a [`KubeletStandIn`] runs for the namespace.
//! * hostPath PVs made by [`host_path_pv`] point below a directory that does not exist; the
//!   in-tree hostPath deleter (which runs for a `Delete` PV) then fails instead of deleting files.
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    fmt::Debug,
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{
        Arc, Condvar, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures::{TryStreamExt, channel::oneshot};
use k8s_openapi::api::{
    authentication::v1::TokenRequest,
    authorization::v1::SubjectAccessReview,
    core::v1::{Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding},
    storage::v1::StorageClass,
};
use k8s_openapi::serde::{Serialize, de::DeserializeOwned};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt, wait::await_condition, watcher},
};
use serde_json::json;

/// Names a directory holding a running control plane (written by `scripts/control-plane.sh`).
pub const CONTROL_PLANE_ENV: &str = "STORAGECLASS_MIGRATE_CONTROL_PLANE";
/// Keep the temporary control-plane directory of this test process (logs, etcd data).
pub const KEEP_ENV: &str = "STORAGECLASS_MIGRATE_KEEP_CONTROL_PLANE";
/// Label on namespaces and cluster-scoped objects created by the helpers: the test namespace
/// they belong to.
pub const OWNER_LABEL: &str = "storageclass-migrate.test/namespace";
/// Annotation that makes a StorageClass the default one.
pub const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";
/// The path of the binary under test.
pub const BINARY: &str = env!("CARGO_BIN_EXE_storageclass-migrate");
/// How long the `wait_*` helpers wait before failing the test.
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long [`run_binary`] lets the binary run before killing it and failing the test.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);

// ------------------------------------------------------------------------------------------
// Control plane

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
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/control-plane.sh");
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

// ------------------------------------------------------------------------------------------
// Names and namespaces

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A DNS-label name `<prefix>-<unique suffix>`, unique across test processes and runs.
pub fn unique_name(prefix: &str) -> String {
    let mut p: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    p.truncate(40);
    let p = p.trim_matches('-');
    let p = if p.is_empty() { "t" } else { p };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{p}-{}{}-{}",
        base36(u64::from(std::process::id())),
        base36(u64::from(nanos) % 1296),
        n
    )
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut s = Vec::new();
    loop {
        s.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    s.reverse();
    String::from_utf8(s).unwrap()
}

/// A namespace of its own for one test. Dropping it deletes the namespace and every
/// cluster-scoped object labelled with [`OWNER_LABEL`] = its name (best effort, without
/// waiting for finalizers). Set `STORAGECLASS_MIGRATE_KEEP_NAMESPACES=1` to keep them.
#[derive(Debug)]
pub struct TestNamespace {
    name: String,
}

impl TestNamespace {
    /// Creates `<prefix>-<unique>` and waits until its `default` ServiceAccount exists (the
    /// ServiceAccount admission plugin rejects pods until then).
    pub async fn new(prefix: &str) -> TestNamespace {
        let client = client().await;
        let name = unique_name(prefix);
        let ns: Namespace = from_json(json!({
            "metadata": {"name": name, "labels": {OWNER_LABEL: name}}
        }));
        create(&Api::all(client.clone()), &ns).await;
        let sas: Api<ServiceAccount> = Api::namespaced(client, &name);
        wait_for(&sas, "default", "the default ServiceAccount", |sa| {
            sa.is_some()
        })
        .await;
        TestNamespace { name }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `<namespace>-<suffix>`: a name for a cluster-scoped object that no other test uses.
    pub fn scoped(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.name)
    }

    /// Labels that tie a cluster-scoped object to this namespace for clean-up.
    pub fn owner_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(OWNER_LABEL.to_string(), self.name.clone())])
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::env::var_os("STORAGECLASS_MIGRATE_KEEP_NAMESPACES").is_some_and(|v| v != "0") {
            return;
        }
        let name = self.name.clone();
        // Own thread and runtime: the test's runtime may be shutting down or busy.
        let cleanup = thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let _ =
                    tokio::time::timeout(Duration::from_secs(20), cleanup_namespace(&name)).await;
            });
        });
        let _ = cleanup.join();
    }
}

async fn cleanup_namespace(name: &str) {
    let client = client().await;
    let dp = DeleteParams::background();
    let lp = ListParams::default().labels(&format!("{OWNER_LABEL}={name}"));
    let _ = Api::<Namespace>::all(client.clone())
        .delete(name, &dp)
        .await;
    let _ = Api::<PersistentVolume>::all(client.clone())
        .delete_collection(&dp, &lp)
        .await;
    let _ = Api::<StorageClass>::all(client.clone())
        .delete_collection(&dp, &lp)
        .await;
    let _ = Api::<ClusterRoleBinding>::all(client.clone())
        .delete_collection(&dp, &lp)
        .await;
    let _ = Api::<ClusterRole>::all(client.clone())
        .delete_collection(&dp, &lp)
        .await;
    let _ = Api::<Node>::all(client).delete_collection(&dp, &lp).await;
}

static DEFAULT_CLASS_LOCK: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());

/// Serialises the tests of this process that create a default StorageClass or PVCs without a
/// `storageClassName`. Hold the guard until the default class is deleted again. Taking it blocks
/// the thread, which is fine: every test has a thread and runtime of its own.
pub fn default_class_lock() -> DefaultClassGuard {
    let (held, released) = &DEFAULT_CLASS_LOCK;
    let mut held = held.lock().unwrap_or_else(|p| p.into_inner());
    while *held {
        held = released.wait(held).unwrap_or_else(|p| p.into_inner());
    }
    *held = true;
    DefaultClassGuard(())
}

/// See [`default_class_lock`]; released when dropped (also when the test panics).
#[derive(Debug)]
pub struct DefaultClassGuard(());

impl Drop for DefaultClassGuard {
    fn drop(&mut self) {
        let (held, released) = &DEFAULT_CLASS_LOCK;
        *held.lock().unwrap_or_else(|p| p.into_inner()) = false;
        released.notify_one();
    }
}

// ------------------------------------------------------------------------------------------
// Generic object helpers

/// Deserialises a Kubernetes object from JSON (with `apiVersion`/`kind` optional).
/// The hook's Role and ClusterRole rules, read from chart-snippet/rbac-rules.json and rendered as
/// the chart renders them for claims given by name: the rules whose `when` is in `when`,
/// `limitToClaimNames` as resourceNames of `claims`, `limitToNamespace` as resourceNames of
/// `namespace`; with `without` (resource, verb), that verb removed. Fails on any key or `when`
/// it does not know, so the file cannot grow a rule the tests would not grant.
pub fn chart_rules(
    claims: &[&str],
    namespace: &str,
    when: &[&str],
    without: Option<(&str, &str)>,
) -> (Vec<PolicyRule>, Vec<PolicyRule>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("chart-snippet/rbac-rules.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let doc: serde_json::Value = serde_json::from_str(&text).expect("parsing rbac-rules.json");
    let keys = doc.as_object().expect("an object").keys();
    assert!(
        keys.clone().all(|k| k == "role" || k == "clusterRole"),
        "{:?}",
        keys.collect::<Vec<_>>()
    );
    let mut removed = false;
    let mut pick = |key: &str| -> Vec<PolicyRule> {
        doc[key]
            .as_array()
            .unwrap_or_else(|| panic!("{key} is not a list"))
            .iter()
            .filter_map(|r| {
                let entry = r.as_object().expect("a rule object");
                for k in entry.keys() {
                    assert!(
                        [
                            "when",
                            "apiGroups",
                            "resources",
                            "verbs",
                            "limitToClaimNames",
                            "limitToNamespace"
                        ]
                        .contains(&k.as_str()),
                        "unknown key {k} in {r}"
                    );
                }
                let set = r["when"].as_str().expect("when");
                assert!(
                    ["always", "inUseEvict", "writeVolumes"].contains(&set),
                    "unknown when {set}"
                );
                if !when.contains(&set) {
                    return None;
                }
                let mut verbs: Vec<serde_json::Value> =
                    r["verbs"].as_array().expect("verbs").clone();
                if let Some((resource, verb)) = without
                    && r["resources"]
                        .as_array()
                        .expect("resources")
                        .iter()
                        .any(|x| x == resource)
                {
                    let before = verbs.len();
                    verbs.retain(|v| v != verb);
                    removed |= verbs.len() < before;
                    if verbs.is_empty() {
                        return None;
                    }
                }
                let mut rule = json!({
                    "apiGroups": r["apiGroups"], "resources": r["resources"], "verbs": verbs,
                });
                match (
                    r["limitToClaimNames"].as_bool() == Some(true),
                    r["limitToNamespace"].as_bool() == Some(true),
                ) {
                    (true, false) => rule["resourceNames"] = json!(claims),
                    (false, true) => rule["resourceNames"] = json!([namespace]),
                    (false, false) => {}
                    (true, true) => panic!("two limits on one rule: {r}"),
                }
                Some(from_json(rule))
            })
            .collect()
    };
    let rules = (pick("role"), pick("clusterRole"));
    assert!(
        without.is_none() || removed,
        "{without:?} is not in the rules"
    );
    rules
}

pub fn from_json<K: DeserializeOwned>(value: serde_json::Value) -> K {
    serde_json::from_value(value).unwrap_or_else(|e| panic!("invalid object: {e}"))
}

/// Creates an object, failing the test on error.
pub async fn create<K>(api: &Api<K>, obj: &K) -> K
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
{
    api.create(&PostParams::default(), obj)
        .await
        .unwrap_or_else(|e| panic!("creating {} {:?}: {e}", K::kind(&()), obj.meta().name))
}

/// Gets an object, failing the test on error.
pub async fn get<K>(api: &Api<K>, name: &str) -> K
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned,
{
    api.get(name)
        .await
        .unwrap_or_else(|e| panic!("getting {} {name}: {e}", K::kind(&())))
}

/// Watches one object until `cond` holds for it (`None` = it does not exist) and returns it.
/// Fails the test after [`WAIT_TIMEOUT`], showing the object's last state.
pub async fn wait_for<K>(
    api: &Api<K>,
    name: &str,
    what: &str,
    cond: impl Fn(Option<&K>) -> bool,
) -> Option<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Send + DeserializeOwned + 'static,
{
    wait_for_timeout(api, name, what, WAIT_TIMEOUT, cond).await
}

pub async fn wait_for_timeout<K>(
    api: &Api<K>,
    name: &str,
    what: &str,
    timeout: Duration,
    cond: impl Fn(Option<&K>) -> bool,
) -> Option<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Send + DeserializeOwned + 'static,
{
    let condition = move |obj: Option<&K>| cond(obj);
    match tokio::time::timeout(timeout, await_condition(api.clone(), name, condition)).await {
        Ok(Ok(obj)) => obj,
        Ok(Err(e)) => panic!("watching {} {name} for {what}: {e}", K::kind(&())),
        Err(_) => {
            let last = api.get_opt(name).await;
            panic!(
                "timed out after {timeout:?} waiting for {what} on {} {name}; last state: {last:#?}",
                K::kind(&())
            )
        }
    }
}

/// Waits until the object is gone (finalizers done).
pub async fn wait_deleted<K>(api: &Api<K>, name: &str)
where
    K: Resource<DynamicType = ()> + Clone + Debug + Send + DeserializeOwned + 'static,
{
    wait_for(api, name, "deletion", |o| o.is_none()).await;
}

/// The HTTP status code of an API error (`None` for other errors).
pub fn api_code<T: Debug>(result: &Result<T, kube::Error>) -> Option<u16> {
    match result {
        Err(kube::Error::Api(status)) => Some(status.code),
        _ => None,
    }
}

// ------------------------------------------------------------------------------------------
// Storage

/// Options for [`storage_class`].
#[derive(Clone, Debug)]
pub struct ClassOpts {
    /// e.g. `kubernetes.io/no-provisioner` (the default) or `example.com/none` (an external
    /// provisioner that never runs: claims wait for it).
    pub provisioner: String,
    /// Sets the `is-default-class` annotation (hold [`default_class_lock`]).
    pub default: bool,
    /// `Delete` (the API default) or `Retain`.
    pub reclaim_policy: String,
    /// `Immediate` (default) or `WaitForFirstConsumer`.
    pub binding_mode: String,
    pub allow_expansion: Option<bool>,
}

impl Default for ClassOpts {
    fn default() -> Self {
        ClassOpts {
            provisioner: "kubernetes.io/no-provisioner".into(),
            default: false,
            reclaim_policy: "Delete".into(),
            binding_mode: "Immediate".into(),
            allow_expansion: None,
        }
    }
}

pub fn storage_class(name: &str, opts: &ClassOpts) -> StorageClass {
    let mut sc: StorageClass = from_json(json!({
        "metadata": {"name": name},
        "provisioner": opts.provisioner,
        "reclaimPolicy": opts.reclaim_policy,
        "volumeBindingMode": opts.binding_mode,
        "allowVolumeExpansion": opts.allow_expansion,
    }));
    if opts.default {
        sc.annotations_mut()
            .insert(DEFAULT_CLASS_ANNOTATION.into(), "true".into());
    }
    sc
}

/// Creates the StorageClass `<namespace>-<suffix>`, labelled for clean-up with `ns`.
pub async fn create_storage_class(
    client: &Client,
    ns: &TestNamespace,
    suffix: &str,
    opts: &ClassOpts,
) -> StorageClass {
    let mut sc = storage_class(&ns.scoped(suffix), opts);
    sc.labels_mut().extend(ns.owner_labels());
    create(&Api::all(client.clone()), &sc).await
}

/// Options for [`host_path_pv`].
#[derive(Clone, Debug)]
pub struct PvOpts {
    /// `storageClassName`; `None` leaves it empty (matches claims with class `""`).
    pub class: Option<String>,
    pub capacity: String,
    pub access_modes: Vec<String>,
    /// `Retain` (default), `Delete` or `Recycle`.
    pub reclaim_policy: String,
    /// Finalizers besides the `kubernetes.io/pv-protection` that admission adds.
    pub extra_finalizers: Vec<String>,
    /// Pre-binds the volume to this claim (`namespace`, `name`).
    pub claim_ref: Option<(String, String)>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

impl Default for PvOpts {
    fn default() -> Self {
        PvOpts {
            class: None,
            capacity: "1Gi".into(),
            access_modes: vec!["ReadWriteOnce".into()],
            reclaim_policy: "Retain".into(),
            extra_finalizers: vec![],
            claim_ref: None,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
        }
    }
}

/// Directory that hostPath volumes point into. It does not exist, and it must never contain
/// `/tmp/`: kube-controller-manager's hostPath deleter removes any such path (it runs for
/// `Delete` volumes) and accepts nothing else.
pub const HOST_PATH_ROOT: &str = "/nonexistent/storageclass-migrate-test";

/// A statically provisioned hostPath PersistentVolume.
pub fn host_path_pv(name: &str, opts: &PvOpts) -> PersistentVolume {
    let path = format!("{HOST_PATH_ROOT}/{name}");
    assert!(!path.contains("/tmp/"), "unsafe hostPath {path}");
    from_json(json!({
        "metadata": {
            "name": name,
            "labels": opts.labels,
            "annotations": opts.annotations,
            "finalizers": opts.extra_finalizers,
        },
        "spec": {
            "capacity": {"storage": opts.capacity},
            "accessModes": opts.access_modes,
            "persistentVolumeReclaimPolicy": opts.reclaim_policy,
            "storageClassName": opts.class.clone().unwrap_or_default(),
            "hostPath": {"path": path},
            "claimRef": opts.claim_ref.as_ref().map(|(namespace, name)| json!({
                "kind": "PersistentVolumeClaim",
                "apiVersion": "v1",
                "namespace": namespace,
                "name": name,
            })),
        }
    }))
}

/// Creates the PV `<namespace>-<suffix>` (labelled for clean-up with `ns`) and waits until the
/// PV controller has seen it (phase no longer `Pending`), so a claim created next is matched
/// against it right away.
pub async fn create_pv(
    client: &Client,
    ns: &TestNamespace,
    suffix: &str,
    opts: &PvOpts,
) -> PersistentVolume {
    let mut pv = host_path_pv(&ns.scoped(suffix), opts);
    pv.labels_mut().extend(ns.owner_labels());
    let api: Api<PersistentVolume> = Api::all(client.clone());
    let pv = create(&api, &pv).await;
    wait_pv_phase_not(client, &pv.name_any(), "Pending").await
}

/// Waits until the PV's phase is `phase`.
pub async fn wait_pv_phase(client: &Client, name: &str, phase: &str) -> PersistentVolume {
    let api: Api<PersistentVolume> = Api::all(client.clone());
    wait_for(&api, name, &format!("phase {phase}"), |pv| {
        pv_phase(pv) == Some(phase)
    })
    .await
    .expect("PV exists")
}

async fn wait_pv_phase_not(client: &Client, name: &str, phase: &str) -> PersistentVolume {
    let api: Api<PersistentVolume> = Api::all(client.clone());
    wait_for(&api, name, &format!("a phase other than {phase}"), |pv| {
        pv.is_some() && pv_phase(pv).is_some_and(|p| p != phase)
    })
    .await
    .expect("PV exists")
}

fn pv_phase(pv: Option<&PersistentVolume>) -> Option<&str> {
    pv?.status.as_ref()?.phase.as_deref()
}

/// Options for [`pvc`].
#[derive(Clone, Debug)]
pub struct PvcOpts {
    /// `Some(class)`; `Some("")` for "no class"; `None` leaves `storageClassName` unset (the
    /// DefaultStorageClass admission plugin fills in the default class if there is one).
    pub class: Option<String>,
    pub request: String,
    pub access_modes: Vec<String>,
    /// `spec.volumeName`: bind to this PV.
    pub volume_name: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

impl Default for PvcOpts {
    fn default() -> Self {
        PvcOpts {
            class: None,
            request: "1Gi".into(),
            access_modes: vec!["ReadWriteOnce".into()],
            volume_name: None,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
        }
    }
}

impl PvcOpts {
    pub fn class(class: &str) -> PvcOpts {
        PvcOpts {
            class: Some(class.into()),
            ..PvcOpts::default()
        }
    }
}

pub fn pvc(name: &str, opts: &PvcOpts) -> PersistentVolumeClaim {
    from_json(json!({
        "metadata": {"name": name, "labels": opts.labels, "annotations": opts.annotations},
        "spec": {
            "accessModes": opts.access_modes,
            "resources": {"requests": {"storage": opts.request}},
            "storageClassName": opts.class,
            "volumeName": opts.volume_name,
        }
    }))
}

pub async fn create_pvc(
    client: &Client,
    ns: &str,
    name: &str,
    opts: &PvcOpts,
) -> PersistentVolumeClaim {
    create(&Api::namespaced(client.clone(), ns), &pvc(name, opts)).await
}

/// Watches the claim until it is `Bound` and returns it.
pub async fn wait_bound(client: &Client, ns: &str, claim: &str) -> PersistentVolumeClaim {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    wait_for(&api, claim, "phase Bound", |pvc| {
        pvc.and_then(|c| c.status.as_ref())
            .and_then(|s| s.phase.as_deref())
            == Some("Bound")
    })
    .await
    .expect("claim exists")
}

// ------------------------------------------------------------------------------------------
// Nodes and pods

/// Creates the Node `<namespace>-<suffix>` (labelled for clean-up). No kubelet backs it.
pub async fn create_node(client: &Client, ns: &TestNamespace, suffix: &str) -> Node {
    let node: Node = from_json(json!({
        "metadata": {"name": ns.scoped(suffix), "labels": ns.owner_labels()},
    }));
    create(&Api::all(client.clone()), &node).await
}

/// A pod bound to `node` (no scheduler involved) that mounts the given claims.
pub fn pod_with_claims(name: &str, node: &str, claims: &[&str]) -> Pod {
    let volumes: Vec<_> = claims
        .iter()
        .enumerate()
        .map(|(i, c)| json!({"name": format!("v{i}"), "persistentVolumeClaim": {"claimName": c}}))
        .collect();
    let mounts: Vec<_> = (0..claims.len())
        .map(|i| json!({"name": format!("v{i}"), "mountPath": format!("/data/{i}")}))
        .collect();
    from_json(json!({
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 30,
            "containers": [{
                "name": "main",
                "image": "registry.invalid/storageclass-migrate/none:0",
                "volumeMounts": mounts,
            }],
            "volumes": volumes,
        }
    }))
}

pub async fn create_pod(client: &Client, ns: &str, name: &str, node: &str, claims: &[&str]) -> Pod {
    create(
        &Api::namespaced(client.clone(), ns),
        &pod_with_claims(name, node, claims),
    )
    .await
}

/// Sets `status.phase` the way a kubelet would (`Running`, `Succeeded`, `Failed`).
pub async fn set_pod_phase(client: &Client, ns: &str, name: &str, phase: &str) -> Pod {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": phase}})),
    )
    .await
    .unwrap_or_else(|e| panic!("setting phase of pod {ns}/{name}: {e}"))
}

/// Stands in for the kubelet of every node in one namespace: a pod that gets a
/// `deletionTimestamp` (deleted or evicted) is force-deleted (grace period 0), as a kubelet
/// would after stopping its containers. Runs on its own thread and runtime until dropped.
pub struct KubeletStandIn {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
    deleted: Arc<Mutex<Vec<String>>>,
}

/// Starts a [`KubeletStandIn`] for namespace `ns`. Returns once its watch is established.
pub fn kubelet_stand_in(ns: &str) -> KubeletStandIn {
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let deleted = Arc::new(Mutex::new(Vec::new()));
    let ns = ns.to_string();
    let record = deleted.clone();
    let thread = thread::Builder::new()
        .name(format!("kubelet-stand-in-{ns}"))
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let client = client().await;
                let api: Api<Pod> = Api::namespaced(client, &ns);
                let mut ready = Some(ready_tx);
                // uids already force-deleted: a terminating pod may be seen more than once.
                let mut handled = std::collections::HashSet::new();
                let events = watcher(api.clone(), watcher::Config::default()).default_backoff();
                let work = events.try_for_each(|event| {
                    if matches!(event, watcher::Event::InitDone)
                        && let Some(tx) = ready.take()
                    {
                        let _ = tx.send(());
                    }
                    let target = match event {
                        watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)
                            if pod.metadata.deletion_timestamp.is_some()
                                && handled.insert(pod.uid().unwrap_or_default()) =>
                        {
                            Some((pod.name_any(), pod.uid()))
                        }
                        _ => None,
                    };
                    if let Some((name, _)) = &target {
                        // Recorded first: watchers may see the pod vanish before the delete
                        // call returns.
                        record.lock().unwrap().push(name.clone());
                    }
                    let api = api.clone();
                    async move {
                        if let Some((name, uid)) = target {
                            let dp = DeleteParams {
                                grace_period_seconds: Some(0),
                                ..DeleteParams::default()
                            }
                            .preconditions(kube::api::Preconditions {
                                uid,
                                resource_version: None,
                            });
                            // An error means the pod is gone already or was replaced.
                            let _ = api.delete(&name, &dp).await;
                        }
                        Ok(())
                    }
                });
                tokio::select! {
                    _ = stop_rx => {}
                    r = work => eprintln!("kubelet stand-in for {ns} stopped: {r:?}"),
                }
            });
        })
        .expect("spawning the kubelet stand-in");
    // The initial list is part of the watch, so pods already terminating are handled too.
    let _ = ready_rx.recv_timeout(WAIT_TIMEOUT);
    KubeletStandIn {
        stop: Some(stop_tx),
        thread: Some(thread),
        deleted,
    }
}

impl KubeletStandIn {
    /// Names of the pods it has force-deleted so far (in order; a name once per deletion).
    pub fn deleted_pods(&self) -> Vec<String> {
        self.deleted.lock().unwrap().clone()
    }
}

impl Drop for KubeletStandIn {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ------------------------------------------------------------------------------------------
// Service accounts and RBAC

/// A ServiceAccount with a token and a kubeconfig that authenticates as it.
#[derive(Debug)]
pub struct ServiceAccountAccess {
    pub namespace: String,
    pub name: String,
    /// `system:serviceaccount:<namespace>:<name>`
    pub username: String,
    pub token: String,
    /// Kubeconfig with the token (server and CA of the control plane), context `local`.
    pub kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl ServiceAccountAccess {
    /// A client authenticating as the ServiceAccount.
    pub async fn client(&self) -> Client {
        client_for(&self.kubeconfig).await
    }
}

/// `PolicyRule` from its parts, e.g. `rule(&[""], &["persistentvolumeclaims"], &["get"])`.
pub fn rule(api_groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    from_json(json!({"apiGroups": api_groups, "resources": resources, "verbs": verbs}))
}

/// Creates ServiceAccount `name` in `ns`, a Role (`role_rules`, in `ns`) and a ClusterRole
/// (`cluster_rules`, named `<namespace>-<name>`) bound to it (each only if its rules are not
/// empty), and a token from the TokenRequest API (1 h). Returns once RBAC allows the first
/// rule of each role, so a request made next is authorised.
pub async fn service_account_with_rules(
    client: &Client,
    ns: &TestNamespace,
    name: &str,
    role_rules: &[PolicyRule],
    cluster_rules: &[PolicyRule],
) -> ServiceAccountAccess {
    let namespace = ns.name();
    let sa: ServiceAccount = from_json(json!({"metadata": {"name": name}}));
    create(&Api::namespaced(client.clone(), namespace), &sa).await;
    let subject = json!([{"kind": "ServiceAccount", "name": name, "namespace": namespace}]);
    if !role_rules.is_empty() {
        let role: Role = from_json(json!({"metadata": {"name": name}, "rules": role_rules}));
        create(&Api::namespaced(client.clone(), namespace), &role).await;
        let binding: RoleBinding = from_json(json!({
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": subject,
        }));
        create(&Api::namespaced(client.clone(), namespace), &binding).await;
    }
    if !cluster_rules.is_empty() {
        let cname = ns.scoped(name);
        let labels = ns.owner_labels();
        let role: ClusterRole = from_json(json!({
            "metadata": {"name": cname, "labels": labels}, "rules": cluster_rules
        }));
        create(&Api::all(client.clone()), &role).await;
        let binding: ClusterRoleBinding = from_json(json!({
            "metadata": {"name": cname, "labels": labels},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cname},
            "subjects": subject,
        }));
        create(&Api::all(client.clone()), &binding).await;
    }
    let username = format!("system:serviceaccount:{namespace}:{name}");
    // The apiserver's RBAC authoriser works from a cache; wait until it has the new bindings.
    for (r, ns_of_rule) in [
        (role_rules.first(), Some(namespace)),
        (cluster_rules.first(), None),
    ] {
        if let Some(r) = r {
            wait_authorized(client, &username, namespace, r, ns_of_rule).await;
        }
    }

    let token_request: TokenRequest =
        from_json(json!({"spec": {"audiences": [], "expirationSeconds": 3600}}));
    let token = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(name, &PostParams::default(), &token_request)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for {namespace}/{name}: {e}"))
        .status
        .expect("TokenRequest status")
        .token;

    let dir = tempfile::Builder::new()
        .prefix("storageclass-migrate-sa-")
        .tempdir()
        .expect("temporary directory");
    let kubeconfig = dir.path().join("kubeconfig");
    write_token_kubeconfig(&kubeconfig, &username, &token, Some(namespace));
    ServiceAccountAccess {
        namespace: namespace.to_string(),
        name: name.to_string(),
        username,
        token,
        kubeconfig,
        _dir: dir,
    }
}

/// Writes a kubeconfig for the control plane that authenticates with a bearer token.
pub fn write_token_kubeconfig(path: &Path, user: &str, token: &str, namespace: Option<&str>) {
    let ca = std::fs::read(ca_path()).expect("reading the CA");
    let kubeconfig = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {
            "server": apiserver_url(),
            "certificate-authority-data": base64(&ca),
        }}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "local", "context": {
            "cluster": "local", "user": user, "namespace": namespace.unwrap_or("default"),
        }}],
        "current-context": "local",
    });
    std::fs::write(path, serde_json::to_vec_pretty(&kubeconfig).unwrap())
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Polls SubjectAccessReview (there is nothing to watch) until `user` may use the first verb
/// and resource of `rule`.
async fn wait_authorized(
    client: &Client,
    user: &str,
    sa_namespace: &str,
    rule: &PolicyRule,
    namespace: Option<&str>,
) {
    let (Some(resource), Some(verb)) = (
        rule.resources.as_ref().and_then(|r| r.first()),
        rule.verbs.first(),
    ) else {
        return;
    };
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r, Some(s)),
        None => (resource.as_str(), None),
    };
    let group = rule
        .api_groups
        .as_ref()
        .and_then(|g| g.first())
        .cloned()
        .unwrap_or_default();
    let name = rule.resource_names.as_ref().and_then(|n| n.first());
    let review: SubjectAccessReview = from_json(json!({"spec": {
        "user": user,
        "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{sa_namespace}"), "system:authenticated"],
        "resourceAttributes": {
            "namespace": namespace, "verb": verb, "group": group,
            "resource": resource, "subresource": subresource, "name": name,
        }
    }}));
    let api: Api<SubjectAccessReview> = Api::all(client.clone());
    let deadline = Instant::now() + WAIT_TIMEOUT;
    let mut delay = Duration::from_millis(10);
    loop {
        let r = api
            .create(&PostParams::default(), &review)
            .await
            .expect("SubjectAccessReview");
        if r.status.is_some_and(|s| s.allowed) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "RBAC never allowed {user} to {verb} {resource}"
        );
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(200));
    }
}

// ------------------------------------------------------------------------------------------
// Running the binary

/// Runs the binary under test with `args`, a clean environment except `KUBECONFIG` (the admin
/// kubeconfig) and `envs` (which may override `KUBECONFIG`), and fails the test if it runs
/// longer than [`RUN_TIMEOUT`]. Blocks the calling thread: inside an async test, prefer
/// [`run_binary_async`] if the test must do something while the binary runs.
pub fn run_binary(envs: &[(&str, &str)], args: &[&str]) -> Output {
    run_binary_with_timeout(envs, args, RUN_TIMEOUT)
}

pub fn run_binary_with_timeout(envs: &[(&str, &str)], args: &[&str], timeout: Duration) -> Output {
    let mut cmd = Command::new(BINARY);
    cmd.env_clear()
        .env("KUBECONFIG", kubeconfig_path())
        .env("PATH", "/usr/bin:/bin")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("starting {BINARY}: {e}"));
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the binary") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(10));
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    match status {
        Some(status) => Output {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "{BINARY} {args:?} still running after {timeout:?}; killed.\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        ),
    }
}

/// [`run_binary`] on a separate thread, so the test's runtime keeps running meanwhile.
pub async fn run_binary_async(envs: &[(&str, &str)], args: &[&str]) -> Output {
    let envs: Vec<(String, String)> = envs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let (tx, rx) = oneshot::channel();
    thread::spawn(move || {
        let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let result = std::panic::catch_unwind(|| run_binary(&envs, &args));
        let _ = tx.send(result);
    });
    match rx.await.expect("binary runner thread") {
        Ok(out) => out,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// stdout and stderr of a finished run, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "status: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
