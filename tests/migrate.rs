//! The binary as the hook Job runs it: a subprocess configured by environment variables, against
//! the local control plane, on real classes, volumes bound by the PV controller, pods and service
//! accounts. Every test asserts the exit status, the summary line on stdout and the end state read
//! back through the API.

mod common;

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use common::*;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Event, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{
    DeleteParams, ListParams, Patch, PatchParams, Preconditions, WatchEvent, WatchParams,
};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
const PV_PROTECTION: &str = "kubernetes.io/pv-protection";
/// A finalizer of another controller, e.g. a backup tool that holds the claim while it copies.
const BACKUP_FINALIZER: &str = "example.com/backup";
/// What the CSI external-provisioner puts on the volumes it provisions.
const PROVISIONER_FINALIZER: &str = "external-provisioner.volume.kubernetes.io/finalizer";
const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// The annotation the binary puts on a volume it is to delete, before it deletes the claim.
const DELETE_AFTER_CLAIM: &str = "storageclass-migrate/delete-after-claim";
/// The provisioner named by the CSI-like class and volumes; nothing runs for it.
const CSI_PROVISIONER: &str = "example.com/csi";

// ------------------------------------------------------------------------------------------
// Running the binary

/// A finished run of the binary.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    termination_log: Option<String>,
    elapsed: Duration,
}

impl Run {
    fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    /// The one summary line of a run for one claim.
    fn line(&self) -> &str {
        let lines = self.lines();
        assert_eq!(lines.len(), 1, "expected one summary line\n{self}");
        lines[0]
    }

    fn expect_status(&self, code: i32) -> &Self {
        assert_eq!(self.code, Some(code), "exit status\n{self}");
        self
    }

    /// stdout and stderr together, for "named in the output" checks.
    fn output(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit status {:?} after {:.1?}\n--- stdout:\n{}--- stderr:\n{}--- termination log:\n{:?}",
            self.code, self.elapsed, self.stdout, self.stderr, self.termination_log
        )
    }
}

/// Runs the binary in `ns` (`PVC_NAMESPACE`) with `envs`, as the hook Job does, with
/// `TERMINATION_LOG` in a temporary directory, created empty as the kubelet does. Checks on every run that the termination message
/// holds the summary lines of stdout.
async fn run(ns: &TestNamespace, envs: &[(&str, &str)]) -> Run {
    let dir = tempfile::tempdir().expect("temporary directory");
    let log = dir.path().join("termination-log");
    // The kubelet creates the file; the binary only writes into it.
    std::fs::write(&log, "").expect("termination log");
    let log_path = log.to_str().expect("UTF-8 path").to_owned();
    let mut all = vec![
        ("PVC_NAMESPACE", ns.name()),
        ("TERMINATION_LOG", log_path.as_str()),
    ];
    all.extend_from_slice(envs);
    let started = Instant::now();
    let out = run_binary_async(&all, &[]).await;
    let run = Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        termination_log: std::fs::read_to_string(&log).ok(),
        elapsed: started.elapsed(),
    };
    if !run.stdout.is_empty() {
        assert_eq!(
            run.termination_log.as_deref(),
            Some(run.stdout.trim_end_matches('\n')),
            "the termination message repeats the summary\n{run}"
        );
    }
    run
}

// ------------------------------------------------------------------------------------------
// Objects

/// One test's namespace, its classes A and B, and API handles.
struct Cluster {
    client: Client,
    ns: TestNamespace,
    /// Class A, the claims' current class.
    a: String,
    /// Class B, the desired class.
    b: String,
}

impl Cluster {
    async fn new(prefix: &str) -> Cluster {
        Self::with_class_opts(prefix, &ClassOpts::default()).await
    }

    /// Classes A and B with `opts` (neither is a default class).
    async fn with_class_opts(prefix: &str, opts: &ClassOpts) -> Cluster {
        let client = client().await;
        let ns = TestNamespace::new(prefix).await;
        let opts = ClassOpts {
            default: false,
            ..opts.clone()
        };
        let a = create_storage_class(&client, &ns, "a", &opts).await;
        let b = create_storage_class(&client, &ns, "b", &opts).await;
        Cluster {
            client,
            ns,
            a: a.name_any(),
            b: b.name_any(),
        }
    }

    fn name(&self) -> &str {
        self.ns.name()
    }

    fn claims(&self) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.client.clone(), self.ns.name())
    }

    fn pvs(&self) -> Api<PersistentVolume> {
        Api::all(self.client.clone())
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), self.ns.name())
    }

    async fn run(&self, envs: &[(&str, &str)]) -> Run {
        run(&self.ns, envs).await
    }

    /// A statically provisioned hostPath volume `<ns>-<suffix>` of `class`.
    async fn volume(&self, suffix: &str, class: &str, opts: PvOpts) -> PersistentVolume {
        let opts = PvOpts {
            class: Some(class.to_owned()),
            ..opts
        };
        create_pv(&self.client, &self.ns, suffix, &opts).await
    }

    /// Creates a claim on `class` with extra labels and finalizers.
    async fn claim(
        &self,
        name: &str,
        class: Option<&str>,
        labels: &[(&str, &str)],
        finalizers: &[&str],
    ) -> PersistentVolumeClaim {
        let opts = PvcOpts {
            class: class.map(str::to_owned),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..PvcOpts::default()
        };
        let mut claim = pvc(name, &opts);
        if !finalizers.is_empty() {
            claim.metadata.finalizers = Some(finalizers.iter().map(|f| f.to_string()).collect());
        }
        create(&self.claims(), &claim).await
    }

    /// A volume `<ns>-pv-<name>` of `class` and a claim `name` on `class`, bound by the PV
    /// controller; returns both as they are once bound.
    async fn bound_on(
        &self,
        name: &str,
        class: &str,
        volume: PvOpts,
        labels: &[(&str, &str)],
        finalizers: &[&str],
    ) -> (PersistentVolumeClaim, PersistentVolume) {
        let pv = self.volume(&format!("pv-{name}"), class, volume).await;
        self.claim(name, Some(class), labels, finalizers).await;
        let claim = wait_bound(&self.client, self.name(), name).await;
        assert_eq!(volume_name(&claim), Some(pv.name_any().as_str()));
        let pv = wait_pv_phase(&self.client, &pv.name_any(), "Bound").await;
        (claim, pv)
    }

    /// A claim on class A bound to a hostPath volume with the reclaim policy given.
    async fn bound(&self, name: &str, reclaim: &str) -> (PersistentVolumeClaim, PersistentVolume) {
        let a = self.a.clone();
        self.bound_on(name, &a, reclaim_policy(reclaim), &[], &[])
            .await
    }

    /// Options for a Retain volume pre-bound to the claim `name` of the namespace, so that no
    /// other claim (of another test) can take it.
    fn reserved_for(&self, name: &str) -> PvOpts {
        PvOpts {
            claim_ref: Some((self.name().to_owned(), name.to_owned())),
            ..reclaim_policy("Retain")
        }
    }

    /// A node and a scheduled, running pod on it that mounts `claim`.
    async fn running_pod(&self, pod: &str, claim: &str) -> (String, Pod) {
        let node = create_node(&self.client, &self.ns, &format!("node-{pod}")).await;
        create_pod(&self.client, self.name(), pod, &node.name_any(), &[claim]).await;
        let pod = set_pod_phase(&self.client, self.name(), pod, "Running").await;
        (node.name_any(), pod)
    }
}

fn reclaim_policy(policy: &str) -> PvOpts {
    PvOpts {
        reclaim_policy: policy.into(),
        ..PvOpts::default()
    }
}

fn volume_name(claim: &PersistentVolumeClaim) -> Option<&str> {
    claim.spec.as_ref()?.volume_name.as_deref()
}

fn claim_class(claim: &PersistentVolumeClaim) -> Option<&str> {
    claim.spec.as_ref()?.storage_class_name.as_deref()
}

fn pv_phase(pv: &PersistentVolume) -> Option<&str> {
    pv.status.as_ref()?.phase.as_deref()
}

/// Asserts that nothing changed an object: same uid, not being deleted, same finalizers, and the
/// same metadata, spec and status apart from the resourceVersion and the status conditions that
/// controllers keep current (such as a claim's `Unused` condition).
async fn assert_unchanged<K>(api: &Api<K>, before: &K)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + fmt::Debug
        + k8s_openapi::serde::Serialize
        + k8s_openapi::serde::de::DeserializeOwned,
{
    let name = before.name_any();
    let kind = K::kind(&());
    let now = api
        .get_opt(&name)
        .await
        .expect("reading the object")
        .unwrap_or_else(|| panic!("{kind} {name} is gone"));
    assert_eq!(now.uid(), before.uid(), "{kind} {name} was replaced");
    assert!(
        now.meta().deletion_timestamp.is_none(),
        "{kind} {name} is being deleted: {now:#?}"
    );
    assert_eq!(now.finalizers(), before.finalizers(), "{kind} {name}");
    assert_eq!(
        comparable(&now),
        comparable(before),
        "{kind} {name} was changed"
    );
}

fn comparable<K: k8s_openapi::serde::Serialize>(object: &K) -> Value {
    let mut value = serde_json::to_value(object).expect("serialising");
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
        meta.remove("managedFields");
    }
    if let Some(status) = value.get_mut("status").and_then(Value::as_object_mut) {
        status.remove("conditions");
    }
    value
}

/// Reads an object again, or None if it is gone.
async fn read<K>(api: &Api<K>, name: &str) -> Option<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + fmt::Debug
        + k8s_openapi::serde::de::DeserializeOwned,
{
    api.get_opt(name).await.expect("reading the object")
}

/// Removes one finalizer, with the resourceVersion read (controllers edit finalizers too).
async fn remove_finalizer<K>(api: &Api<K>, name: &str, finalizer: &str)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + fmt::Debug
        + k8s_openapi::serde::de::DeserializeOwned,
{
    for _ in 0..10 {
        let object = get(api, name).await;
        let keep: Vec<&String> = object
            .finalizers()
            .iter()
            .filter(|f| *f != finalizer)
            .collect();
        let patch = json!({"metadata": {
            "finalizers": keep, "resourceVersion": object.resource_version()
        }});
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return,
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(e) => panic!("removing {finalizer} from {name}: {e}"),
        }
    }
    panic!("removing {finalizer} from {name}: kept conflicting");
}

/// Waits until the PV controller has reported `reason` on the claim, i.e. it has seen it.
async fn wait_claim_event(client: &Client, ns: &str, claim: &str, reason: &str) -> Event {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().fields(&format!(
        "involvedObject.kind=PersistentVolumeClaim,involvedObject.name={claim}"
    ));
    let deadline = Instant::now() + WAIT_TIMEOUT;
    loop {
        let list = events.list(&lp).await.expect("listing events");
        if let Some(event) = list
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some(reason))
        {
            return event;
        }
        assert!(
            Instant::now() < deadline,
            "no {reason} event on claim {ns}/{claim}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every version the object has had since `since` (replayed by a watch from its resourceVersion).
async fn versions_since<K>(api: &Api<K>, since: &K) -> Vec<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + fmt::Debug
        + k8s_openapi::serde::de::DeserializeOwned
        + 'static,
{
    let params = WatchParams::default()
        .fields(&format!("metadata.name={}", since.name_any()))
        .timeout(1);
    let rv = since.resource_version().expect("resourceVersion");
    let mut events = api.watch(&params, &rv).await.expect("watching").boxed();
    let mut versions = Vec::new();
    while let Some(event) = events.try_next().await.expect("watch event") {
        match event {
            WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) => {
                versions.push(o)
            }
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("watch error: {e:?}"),
        }
    }
    versions
}

/// Deletes a StorageClass (a default one must be gone before the lock is released).
async fn delete_class(client: &Client, name: &str) {
    Api::<StorageClass>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("deleting StorageClass {name}: {e}"));
}

/// Fails unless the cluster has no default StorageClass (other test processes or leftovers would
/// make the default-class tests meaningless).
async fn assert_no_default_class(client: &Client) {
    let defaults: Vec<String> = Api::<StorageClass>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("listing classes")
        .items
        .into_iter()
        .filter(|c| {
            c.annotations()
                .iter()
                .any(|(k, v)| k.ends_with("/is-default-class") && v == "true")
        })
        .map(|c| c.name_any())
        .collect();
    assert!(defaults.is_empty(), "default classes exist: {defaults:?}");
}

fn default_opts() -> ClassOpts {
    ClassOpts {
        default: true,
        ..ClassOpts::default()
    }
}

// ------------------------------------------------------------------------------------------
// Holding a request inside the apiserver

/// A validating webhook (failure policy Ignore) whose endpoint is a listener of this test that
/// accepts connections and never answers: a request it matches is held inside the apiserver
/// until the test drops the connection, then admitted. The accepted connection also tells the
/// test that the request has been sent. Deleted when dropped.
struct Hold {
    name: String,
    listener: Option<std::net::TcpListener>,
}

impl Hold {
    /// Holds the UPDATEs of `resource` (core group) in the test's namespace (or, for volumes,
    /// labelled with it) for which the CEL `expression` holds. Returns once the apiserver calls
    /// the webhook for `probe`, a server-side dry-run request that matches.
    async fn install<T, F, Fut>(c: &Cluster, resource: &str, expression: &str, probe: F) -> Hold
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, kube::Error>>,
    {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a port");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let port = listener.local_addr().expect("local address").port();
        let name = c.ns.scoped(&format!("hold-{resource}"));
        let selector = if resource == "persistentvolumes" {
            "objectSelector"
        } else {
            "namespaceSelector"
        };
        let config: ValidatingWebhookConfiguration = from_json(json!({
            "metadata": {"name": name, "labels": c.ns.owner_labels()},
            "webhooks": [{
                "name": "hold.storageclass-migrate.test",
                "clientConfig": {"url": format!("https://127.0.0.1:{port}/")},
                "rules": [{
                    "apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"],
                    "resources": [resource], "scope": "*",
                }],
                selector: {"matchLabels": c.ns.owner_labels()},
                "matchConditions": [{"name": "held", "expression": expression}],
                "failurePolicy": "Ignore",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 30,
            }],
        }));
        create(&Api::all(c.client.clone()), &config).await;
        let hold = Hold {
            name,
            listener: Some(listener),
        };
        hold.wait_active(probe).await;
        hold
    }

    /// The apiserver picks up webhook configurations asynchronously: probes until it calls.
    async fn wait_active<T, F, Fut>(&self, probe: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, kube::Error>>,
    {
        let deadline = Instant::now() + WAIT_TIMEOUT;
        loop {
            let mut request = std::pin::pin!(probe());
            let called = tokio::select! {
                result = &mut request => {
                    result.expect("probe request");
                    false
                }
                call = self.next_call(deadline) => {
                    drop(call);
                    true
                }
            };
            if called {
                // Retries of the call are dropped too, until the probe is admitted.
                loop {
                    tokio::select! {
                        result = &mut request => {
                            result.expect("probe request");
                            return;
                        }
                        call = self.next_call(deadline) => drop(call),
                    }
                }
            }
            assert!(Instant::now() < deadline, "the webhook is never called");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The next call of the apiserver to the webhook, held open until dropped.
    async fn next_call(&self, deadline: Instant) -> std::net::TcpStream {
        let listener = self.listener.as_ref().expect("listening");
        loop {
            match listener.accept() {
                Ok((stream, _)) => return stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "the webhook is never called");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("accepting: {e}"),
            }
        }
    }

    /// Stops listening: later calls are refused at once (and ignored by the failure policy).
    fn close(&mut self) {
        self.listener = None;
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.listener = None;
        let name = self.name.clone();
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let api: Api<ValidatingWebhookConfiguration> = Api::all(client().await);
                let _ = api.delete(&name, &DeleteParams::default()).await;
            });
        });
        let _ = cleanup.join();
    }
}

/// CEL for a webhook's match condition: `metadata.<field>` (annotations or finalizers) of
/// `object` (`object` or `oldObject`) holds `item`.
fn cel_has(object: &str, field: &str, item: &str) -> String {
    format!("(has({object}.metadata.{field}) && '{item}' in {object}.metadata.{field})")
}

/// The cases, in a module so that a name filter (`migrate::`) selects exactly them.
mod migrate {
    use super::*;

    // ------------------------------------------------------------------------------------------
    // Nothing to do

    #[tokio::test]
    async fn absent_claim_changes_nothing() {
        let c = Cluster::new("absent").await;
        let (neighbour, pv) = c.bound("neighbour", "Retain").await;
        // A missing target class does not block a fresh install; a run that may delete volumes
        // finds none left by an interrupted run.
        for (class, delete_retained) in [
            (c.b.clone(), "false"),
            (c.ns.scoped("missing"), "false"),
            (c.b.clone(), "true"),
        ] {
            let run = c
                .run(&[
                    ("PVC_NAME", "data"),
                    ("DESIRED_STORAGECLASS", &class),
                    ("DELETE_RETAINED_PV", delete_retained),
                ])
                .await;
            run.expect_status(0);
            assert_eq!(
                run.line(),
                format!("{}/data: nothing to do: claim absent", c.name()),
                "{run}"
            );
        }
        assert!(read(&c.claims(), "data").await.is_none());

        // A namespace that does not exist is bad input, not an absent claim.
        let missing = c.ns.scoped("nowhere");
        let run = c
            .run(&[
                ("PVC_NAME", "data"),
                ("PVC_NAMESPACE", &missing),
                ("DESIRED_STORAGECLASS", &c.b),
            ])
            .await;
        run.expect_status(2);
        assert_eq!(
            run.line(),
            format!("{missing}/data: failed: namespace \"{missing}\" does not exist")
        );
        assert_unchanged(&c.claims(), &neighbour).await;
        assert_unchanged(&c.pvs(), &pv).await;
    }

    #[tokio::test]
    async fn nil_class_claim_is_kept() {
        let _lock = default_class_lock();
        let c = Cluster::new("nil-class").await;
        assert_no_default_class(&c.client).await;
        // Binds to a volume without class (pre-bound to it: such volumes are open to every
        // test's claims), so that no later default class is assigned to it.
        c.volume("pv-data", "", c.reserved_for("data")).await;
        let created = c.claim("data", None, &[], &[]).await;
        assert_eq!(claim_class(&created), None);
        let claim = wait_bound(&c.client, c.name(), "data").await;

        let run = c
            .run(&[("PVC_NAME", "data"), ("DESIRED_STORAGECLASS", &c.b)])
            .await;
        run.expect_status(0);
        assert_eq!(
            run.line(),
            format!(
                "{}/data: nothing to do: storageClassName is unset, Helm can set it",
                c.name()
            )
        );
        assert_unchanged(&c.claims(), &claim).await;
        assert_eq!(claim_class(&get(&c.claims(), "data").await), None);

        // No class desired and no default class: nothing to compare with.
        let other = c.bound("other", "Retain").await.0;
        let run = c.run(&[("PVC_NAME", "other")]).await;
        run.expect_status(0);
        assert_eq!(
            run.line(),
            format!(
                "{}/other: nothing to do: no class desired and the cluster has no default StorageClass",
                c.name()
            )
        );
        assert!(run.stderr.contains("WARN"), "{run}");
        assert_unchanged(&c.claims(), &other).await;
    }

    #[tokio::test]
    async fn claim_on_desired_class_is_kept() {
        let c = Cluster::new("same-class").await;
        let b = c.b.clone();
        let (claim, pv) = c
            .bound_on("data", &b, reclaim_policy("Retain"), &[], &[])
            .await;
        let run = c
            .run(&[("PVC_NAME", "data"), ("DESIRED_STORAGECLASS", &c.b)])
            .await;
        run.expect_status(0);
        assert_eq!(
            run.line(),
            format!(
                "{}/data: nothing to do: already on the desired class",
                c.name()
            )
        );
        assert_unchanged(&c.claims(), &claim).await;
        assert_unchanged(&c.pvs(), &pv).await;

        // `-` is no class: a claim with storageClassName "" is on it.
        let (empty, empty_pv) = c
            .bound_on("empty", "", c.reserved_for("empty"), &[], &[])
            .await;
        let run = c
            .run(&[("PVC_NAME", "empty"), ("DESIRED_STORAGECLASS", "-")])
            .await;
        run.expect_status(0);
        assert_eq!(
            run.line(),
            format!(
                "{}/empty: nothing to do: already on the desired class",
                c.name()
            )
        );
        assert_unchanged(&c.claims(), &empty).await;
        assert_unchanged(&c.pvs(), &empty_pv).await;
    }

    // ------------------------------------------------------------------------------------------
    // The default class

    #[tokio::test]
    async fn unset_class_with_the_claims_class_as_default_keeps_the_claim() {
        let _lock = default_class_lock();
        let c = Cluster::new("default-same").await;
        assert_no_default_class(&c.client).await;
        let default = create_storage_class(&c.client, &c.ns, "default", &default_opts()).await;
        let default = default.name_any();
        let (claim, pv) = c
            .bound_on("data", &default, reclaim_policy("Retain"), &[], &[])
            .await;

        // Unset and empty both mean the default class: the script compared with "" and deleted
        // this healthy claim.
        for envs in [
            vec![("PVC_NAME", "data")],
            vec![("PVC_NAME", "data"), ("DESIRED_STORAGECLASS", "")],
            vec![("PVC_NAME", "data"), ("DESIRED_STORAGECLASS", " ")],
        ] {
            let run = c.run(&envs).await;
            run.expect_status(0);
            assert_eq!(
                run.line(),
                format!(
                    "{}/data: nothing to do: already on the desired class",
                    c.name()
                ),
                "{envs:?}"
            );
            assert_unchanged(&c.claims(), &claim).await;
            assert_unchanged(&c.pvs(), &pv).await;
        }
        delete_class(&c.client, &default).await;
    }

    #[tokio::test]
    async fn unset_class_with_another_default_migrates() {
        let _lock = default_class_lock();
        let c = Cluster::new("default-other").await;
        assert_no_default_class(&c.client).await;
        let default = create_storage_class(&c.client, &c.ns, "default", &default_opts()).await;
        let default = default.name_any();
        let (claim, pv) = c.bound("data", "Retain").await;

        let run = c
            .run(&[("PVC_NAME", "data"), ("DESIRED_STORAGECLASS", "")])
            .await;
        run.expect_status(0);
        let pv_name = pv.name_any();
        assert_eq!(
            run.line(),
            format!(
                "{}/data: migrated to class \"{default}\": found class \"{}\", bound to PV {pv_name} (Retain); done: claim deleted, claim gone; left: PV {pv_name} (Retain) with the old data",
                c.name(),
                c.a
            )
        );
        assert!(read(&c.claims(), "data").await.is_none());
        let released = wait_pv_phase(&c.client, &pv_name, "Released").await;
        assert_eq!(released.uid(), pv.uid());
        assert_eq!(
            released.spec.unwrap().claim_ref.unwrap().uid,
            claim.uid(),
            "still names the old claim"
        );
        delete_class(&c.client, &default).await;
    }

    #[tokio::test]
    async fn of_two_default_classes_the_newest_wins() {
        let _lock = default_class_lock();
        let c = Cluster::new("two-defaults").await;
        assert_no_default_class(&c.client).await;
        // The older default sorts after the newer one by name, so a tie-break by name alone would
        // pick the older one.
        let older = create_storage_class(&c.client, &c.ns, "z-older", &default_opts()).await;
        let created = |sc: &StorageClass| sc.metadata.creation_timestamp.clone().unwrap().0;
        // creationTimestamp has whole seconds: let the next class be created in a later one.
        let next_second = created(&older).as_second() + 1;
        loop {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            if now.as_secs() as i64 >= next_second {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let newer = create_storage_class(&c.client, &c.ns, "m-newer", &default_opts()).await;
        assert!(created(&newer) > created(&older));
        let (older, newer) = (older.name_any(), newer.name_any());

        // The apiserver's admission picks the newest for a claim without class; so must the binary.
        let probe = c.claim("probe", None, &[], &[]).await;
        assert_eq!(claim_class(&probe), Some(newer.as_str()));

        let (_, pv) = c
            .bound_on("data", &older, reclaim_policy("Retain"), &[], &[])
            .await;
        let run = c.run(&[("PVC_NAME", "data")]).await;
        run.expect_status(0);
        let pv_name = pv.name_any();
        assert_eq!(
            run.line(),
            format!(
                "{}/data: migrated to class \"{newer}\": found class \"{older}\", bound to PV {pv_name} (Retain); done: claim deleted, claim gone; left: PV {pv_name} (Retain) with the old data",
                c.name()
            )
        );
        assert!(read(&c.claims(), "data").await.is_none());
        wait_pv_phase(&c.client, &pv_name, "Released").await;
        delete_class(&c.client, &newer).await;
        delete_class(&c.client, &older).await;
    }

    #[tokio::test]
    async fn dash_means_no_class() {
        let c = Cluster::new("dash").await;
        let (_, pv) = c.bound("data", "Retain").await;
        let run = c
            .run(&[("PVC_NAME", "data"), ("DESIRED_STORAGECLASS", "-")])
            .await;
        run.expect_status(0);
        let pv_name = pv.name_any();
        assert_eq!(
            run.line(),
            format!(
                "{}/data: migrated to no class (\"\"): found class \"{}\", bound to PV {pv_name} (Retain); done: claim deleted, claim gone; left: PV {pv_name} (Retain) with the old data",
                c.name(),
                c.a
            )
        );
        assert!(read(&c.claims(), "data").await.is_none());
    }

    // ------------------------------------------------------------------------------------------
    // Volumes by reclaim policy

    #[tokio::test]
    async fn delete_policy_volume_left_behind_is_named() {
        let c = Cluster::new("reclaim-delete").await;
        let (_, pv) = c.bound("data", "Delete").await;
        let pv_name = pv.name_any();
        let run = c
            .run(&[
                ("PVC_NAME", "data"),
                ("DESIRED_STORAGECLASS", &c.b),
                ("WAIT_TIMEOUT", "10s"),
            ])
            .await;
        run.expect_status(0);
        let line = run.line();
        let prefix = format!(
            "{}/data: migrated to class \"{}\": found class \"{}\", bound to PV {pv_name} (Delete); done: claim deleted, claim gone; left: PV {pv_name} (Delete) ",
            c.name(),
            c.b,
            c.a
        );
        // The hostPath deleter refuses paths outside /tmp: the volume fails to reclaim (or, on a
        // slow controller, is still there at the timeout) and stays.
        let left = line
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("{run}"));
        assert!(
            left == "still present after 10s"
                || left.starts_with("Failed to reclaim: host_path deleter only supports /tmp/"),
            "{run}"
        );
        assert!(run.stderr.contains("WARN"), "{run}");
        assert!(read(&c.claims(), "data").await.is_none());
        let kept = get(&c.pvs(), &pv_name).await;
        assert_eq!(kept.uid(), pv.uid());
        assert!(kept.metadata.deletion_timestamp.is_none());
        assert_eq!(kept.finalizers(), pv.finalizers());
    }

    #[tokio::test]
    async fn retain_policy_volume_is_kept_released() {
        let c = Cluster::new("reclaim-retain").await;
        let (claim, pv) = c.bound("data", "Retain").await;
        let pv_name = pv.name_any();
        let run = c
            .run(&[("PVC_NAME", "data"), ("DESIRED_STORAGECLASS", &c.b)])
            .await;
        run.expect_status(0);
        let expected = format!(
            "{}/data: migrated to class \"{}\": found class \"{}\", bound to PV {pv_name} (Retain); done: claim deleted, claim gone; left: PV {pv_name} (Retain) with the old data",
            c.name(),
            c.b,
            c.a
        );
        assert_eq!(run.line(), expected);
        assert_eq!(run.termination_log.as_deref(), Some(expected.as_str()));
        assert!(read(&c.claims(), "data").await.is_none());
        let released = wait_pv_phase(&c.client, &pv_name, "Released").await;
        assert_eq!(released.uid(), pv.uid());
        assert!(released.metadata.deletion_timestamp.is_none());
        assert_eq!(
            released.spec.unwrap().claim_ref.unwrap().uid,
            claim.uid(),
            "still names the old claim, so the data can be recovered"
        );
    }

    #[tokio::test]
    async fn retain_policy_volume_deleted_on_request() {
        let c = Cluster::new("delete-retained").await;
        let (_, pv) = c.bound("data", "Retain").await;
        let pv_name = pv.name_any();
        let run = c
            .run(&[
                ("PVC_NAME", "data"),
                ("DESIRED_STORAGECLASS", &c.b),
                ("DELETE_RETAINED_PV", "true"),
            ])
            .await;
        run.expect_status(0);
        assert_eq!(
            run.line(),
            format!(
                "{}/data: migrated to class \"{}\": found class \"{}\", bound to PV {pv_name} (Retain); done: claim deleted, claim gone, PV {pv_name} (Retain) deleted",
                c.name(),
                c.b,
                c.a
            )
        );
        assert!(read(&c.claims(), "data").await.is_none());
        assert!(read(&c.pvs(), &pv_name).await.is_none());
    }

    /// A volume as a CSI provisioner leaves it: reclaim Delete, the provisioner's annotation and
    /// finalizer. The provisioner does not run, so the volume is never deleted by it.
    async fn csi_like_cluster(prefix: &str) -> (Cluster, PersistentVolumeClaim, PersistentVolume) {
        let c = Cluster::with_class_opts(
            prefix,
            &ClassOpts {
                provisioner: CSI_PROVISIONER.into(),
                ..ClassOpts::default()
            },
        )
        .await;
        let volume = PvOpts {
            reclaim_policy: "Delete".into(),
            extra_finalizers: vec![PROVISIONER_FINALIZER.into()],
            annotations: BTreeMap::from([(PROVISIONED_BY.into(), CSI_PROVISIONER.into())]),
            ..PvOpts::default()
        };
        let a = c.a.clone();
        let (claim, pv) = c.bound_on("data", &a, volume, &[], &[]).await;
        let mut finalizers = pv.finalizers().to_vec();
        finalizers.sort();
        assert_eq!(finalizers, [PROVISIONER_FINALIZER, PV_PROTECTION]);
        (c, claim, pv)
    }

    #[tokio::test]
    async fn provisioner_finalizer_is_kept_by_default() {
        let (c, _, pv) = csi_like_cluster("csi-keep").await;
        let pv_name = pv.name_any();
        let run = c
            .run(&[
                ("PVC_NAME", "data"),
                ("DESIRED_STORAGECLASS", &c.b),
                ("WAIT_TIMEOUT", "5s"),
            ])
            .await;
        run.expect_status(0);
        assert_eq!(
            run.line(),
            format!(
                "{}/data: migrated to class \"{}\": found class \"{}\", bound to PV {pv_name} (Delete); done: claim deleted, claim gone; left: PV {pv_name} (Delete) still present after 5s",
                c.name(),
                c.b,
                c.a
            )
        );
        assert!(run.stderr.contains("WARN"), "{run}");
        assert!(read(&c.claims(), "data").await.is_none());
        // Waiting for its (absent) provisioner, with the provisioner's finalizer in place.
        let left = wait_pv_phase(&c.client, &pv_name, "Released").await;
        assert_eq!(left.uid(), pv.uid());
        assert!(left.metadata.deletion_timestamp.is_none());
        assert!(
            left.finalizers().iter().any(|f| f == PROVISIONER_FINALIZER),
            "{:?}",
            left.finalizers()
        );
        // Clean-up: nothing else would ever remove it.
        remove_finalizer(&c.pvs(), &pv_name, PROVISIONER_FINALIZER).await;
    }

    #[tokio::test]
    async fn strip_all_finalizers_strips_the_provisioner_finalizer_and_deletes_the_volume() {
        let (c, _, pv) = csi_like_cluster("csi-strip").await;
        let pv_name = pv.name_any();
        let run = c
            .run(&[
                ("PVC_NAME", "data"),
                ("DESIRED_STORAGECLASS", &c.b),
                ("STRIP_ALL_FINALIZERS", "true"),
                ("WAIT_TIMEOUT", "10s"),
            ])
            .await;
        run.expect_status(0);
        let line = run.line();
        for part in [
            format!(
                "found class \"{}\", bound to PV {pv_name} (Delete); done: claim deleted, stripped claim finalizers {PVC_PROTECTION}, claim gone, stripped PV finalizers ",
                c.a
            ),
            PROVISIONER_FINALIZER.to_owned(),
            format!(", PV {pv_name} (Delete) deleted"),
        ] {
            assert!(line.contains(&part), "missing {part:?}\n{run}");
        }
        assert!(
            line.starts_with(&format!(
                "{}/data: migrated to class \"{}\": ",
                c.name(),
                c.b
            )),
            "{run}"
        );
        assert!(!line.contains("left:"), "{run}");
        assert!(run.stderr.contains("WARN"), "{run}");
        assert!(read(&c.claims(), "data").await.is_none());
        assert!(read(&c.pvs(), &pv_name).await.is_none());
    }

    // ------------------------------------------------------------------------------------------
    // Claims in use

    #[tokio::test]
    async fn in_use_evict_deletes_the_claim_then_evicts_the_pod() {
        let c = Cluster::new("evict").await;
        let (_, pv) = c.bound("data", "Retain").await;
        let (node, pod) = c.running_pod("user", "data").await;
        let stand_in = kubelet_stand_in(c.name());
        let run = c
            .run(&[
                ("PVC_NAME", "data"),
                ("DESIRED_STORAGECLASS", &c.b),
                ("WAIT_TIMEOUT", "30s"),
            ])
            .await;
        run.expect_status(0);
        let pv_name = pv.name_any();
        assert_eq!(
            run.line(),
            format!(
                "{}/data: migrated to class \"{}\": found class \"{}\", bound to PV {pv_name} (Retain), used by pod user on node {node}; done: claim deleted, evicted pod user, claim gone; left: PV {pv_name} (Retain) with the old data",
                c.name(),
                c.b,
                c.a
            )
        );
        assert_eq!(stand_in.deleted_pods(), ["user"]);
        assert!(read(&c.claims(), "data").await.is_none());
        let after = read(&c.pods(), "user").await;
        assert!(
            after.as_ref().is_none_or(|p| p.uid() != pod.uid()),
            "{after:#?}"
        );
        wait_pv_phase(&c.client, &pv_name, "Released").await;
    }

    #[tokio::test]
    async fn in_use_force_deletes_the_claim_at_once_and_leaves_the_pod() {
        let c = Cluster::new("force").await;
        let (_, pv) = c.bound("data", "Retain").await;
        let (node, pod) = c.running_pod("user", "data").await;
        let run = c
            .run(&[
                ("PVC_NAME", "data"),
                ("DESIRED_STORAGECLASS", &c.b),
                ("IN_USE_POLICY", "force"),
                ("WAIT_TIMEOUT", "10s"),
            ])
            .await;
        run.expect_status(0);
        let pv_name = pv.name_any();
        assert_eq!(
            run.line(),
            format!(
                "{}/data: migrated to class \"{}\": found class \"{}\", bound to PV {pv_name} (Retain), used by pod user on node {node}; done: claim deleted, stripped claim finalizers {PVC_PROTECTION}, claim gone; left: PV {pv_name} (Retain) with the old data",
                c.name(),
                c.b,
                c.a
            )
        );
        let warning = run
            .stderr
            .lines()
            .find(|l| l.contains("WARN") && l.contains(PVC_PROTECTION))
            .unwrap_or_else(|| panic!("no warning about stripping pvc-protection\n{run}"));
        assert!(warning.contains("pod user on node"), "{warning}");
        assert!(read(&c.claims(), "data").await.is_none());
        assert_unchanged(&c.pods(), &pod).await;
    }

    #[tokio::test]
    async fn in_use_fail_refuses_and_changes_nothing() {
        let c = Cluster::new("fail").await;
        let (claim, pv) = c.bound("data", "Retain").await;
        let (node, pod) = c.running_pod("user", "data").await;
        let run = c
            .run(&[
                ("PVC_NAME", "data"),
                ("DESIRED_STORAGECLASS", &c.b),
                ("IN_USE_POLICY", "fail"),
            ])
            .await;
        run.expect_status(3);
        assert_eq!(
            run.line(),
            format!(
                "{}/data: refused, nothing changed: in use by pod user on node {node} (--in-use fail); stop them or choose --in-use evict",
                c.name()
            )
        );
        assert_unchanged(&c.claims(), &claim).await;
        assert_unchanged(&c.pvs(), &pv).await;
        assert_unchanged(&c.pods(), &pod).await;
    }

    #[tokio::test]
    async fn claim_already_being_deleted_is_resumed() {
        let c = Cluster::new("resume").await;
        let (claim, pv) = c.bound("data", "Retain").await;
        let (node, _) = c.running_pod("user", "data").await;
        // A previous run deleted the claim and stopped; pvc-protection holds it for the pod.
        c.claims()
            .delete(
                "data",
                &DeleteParams::default().preconditions(Preconditions {
                    uid: claim.uid(),
                    resource_version: None,
                }),
            )
            .await
            .expect("deleting the claim");
        let terminating = get(&c.claims(), "data").await;
        assert!(terminating.metadata.deletion_timestamp.is_some());

        let stand_in = kubelet_stand_in(c.name());
        let run = c
            .run(&[
                ("PVC_NAME", "data"),
                ("DESIRED_STORAGECLASS", &c.b),
                ("WAIT_TIMEOUT", "30s"),
            ])
            .await;
        run.expect_status(0);
        let pv_name = pv.name_any();
        assert_eq!(
            run.line(),
            format!(
                "{}/data: migrated to class \"{}\": found class \"{}\", already being deleted, bound to PV {pv_name} (Retain), used by pod user on node {node}; done: evicted pod user, claim gone; left: PV {pv_name} (Retain) with the old data",
                c.name(),
                c.b,
                c.a
            )
        );
        assert_eq!(stand_in.deleted_pods(), ["user"]);
        assert!(read(&c.claims(), "data").await.is_none());
        wait_pv_phase(&c.client, &pv_name, "Released").await;
    }

    // ------------------------------------------------------------------------------------------
    // Refusals and waits

    #[tokio::test]
    async fn volume_of_another_claim_is_refused() {
        let c = Cluster::new("other-claim").await;
        let a = c.a.clone();
        // `owner` is bound to its volume; `data` names that volume in spec.volumeName.
        let (owner, owned_pv) = c.bound("owner", "Retain").await;
        let owned_pv_name = owned_pv.name_any();
        let data = pvc(
            "data",
            &PvcOpts {
                volume_name: Some(owned_pv_name.clone()),
                ..PvcOpts::class(&a)
            },
        );
        create(&c.claims(), &data).await;

        // A volume released by an earlier claim `again`, and a new claim `again` pinned to it.
        let (old, released) = c.bound("again", "Retain").await;
        c.claims()
            .delete("again", &DeleteParams::default())
            .await
            .expect("deleting the old claim");
        wait_deleted(&c.claims(), "again").await;
        let released_name = released.name_any();
        wait_pv_phase(&c.client, &released_name, "Released").await;
        create_pvc(
            &c.client,
            c.name(),
            "again",
            &PvcOpts {
                volume_name: Some(released_name.clone()),
                ..PvcOpts::class(&a)
            },
        )
        .await;

        // The PV controller has seen both claims and left them pending.
        for claim in ["data", "again"] {
            let event = wait_claim_event(&c.client, c.name(), claim, "FailedBinding").await;
            assert!(
                event
                    .message
                    .as_deref()
                    .is_some_and(|m| m.contains("already bound to a different claim")),
                "{event:#?}"
            );
        }
        let data = get(&c.claims(), "data").await;
        let again = get(&c.claims(), "again").await;
        let owned_pv = get(&c.pvs(), &owned_pv_name).await;
        let released = get(&c.pvs(), &released_name).await;
        assert_eq!(volume_name(&data), Some(owned_pv_name.as_str()));
        assert_eq!(volume_name(&again), Some(released_name.as_str()));
        assert_eq!(pv_phase(&released), Some("Released"));

        let run = c
            .run(&[("PVC_NAME", "data,again"), ("DESIRED_STORAGECLASS", &c.b)])
            .await;
        run.expect_status(3);
        let ns = c.name();
        assert_eq!(
            run.lines(),
            [
                format!(
                    "{ns}/data: refused, nothing changed: PersistentVolume {owned_pv_name} is bound to claim {ns}/owner (uid {}), not to this claim; it is not touched",
                    owner.uid().unwrap()
                ),
                format!(
                    "{ns}/again: refused, nothing changed: PersistentVolume {released_name} is bound to claim {ns}/again (uid {}), not to this claim; it is not touched",
                    old.uid().unwrap()
                ),
            ]
        );
        for claim in [&data, &again, &owner] {
            assert_unchanged(&c.claims(), claim).await;
        }
        assert_unchanged(&c.pvs(), &owned_pv).await;
        assert_unchanged(&c.pvs(), &released).await;
    }

    #[tokio::test]
    async fn missing_target_class_is_refused() {
        let c = Cluster::new("missing-class").await;
        let (claim, pv) = c.bound("data", "Delete").await;
        let missing = c.ns.scoped("missing");
        let run = c
            .run(&[("PVC_NAME", "data"), ("DESIRED_STORAGECLASS", &missing)])
            .await;
        run.expect_status(3);
        assert_eq!(
            run.line(),
            format!(
                "{}/data: refused, nothing changed: StorageClass \"{missing}\" does not exist; a claim recreated on it would never bind, so the old claim is kept",
                c.name()
            )
        );
        assert_unchanged(&c.claims(), &claim).await;
        assert_unchanged(&c.pvs(), &pv).await;
    }

    #[tokio::test]
    async fn foreign_finalizer_times_out_then_a_rerun_succeeds() {
        let c = Cluster::new("foreign-timeout").await;
        let a = c.a.clone();
        let (_, pv) = c
            .bound_on(
                "data",
                &a,
                reclaim_policy("Retain"),
                &[],
                &[BACKUP_FINALIZER],
            )
            .await;
        let envs = [
            ("PVC_NAME", "data"),
            ("DESIRED_STORAGECLASS", c.b.as_str()),
            ("DELETE_RETAINED_PV", "true"),
            ("WAIT_TIMEOUT", "5s"),
        ];
        let run = c.run(&envs).await;
        run.expect_status(5);
        let line = run.line();
        assert!(
        line.starts_with(&format!(
            "{}/data: timed out: found class \"{}\", bound to PV {} (Retain), finalizers of other controllers: {BACKUP_FINALIZER}; done: claim deleted: timed out after 5s waiting for claim {}/data to be deleted (finalizers ",
            c.name(),
            c.a,
            pv.name_any(),
            c.name()
        )),
        "{run}"
    );
        assert!(line.contains(BACKUP_FINALIZER), "{run}");
        let held = get(&c.claims(), "data").await;
        assert!(held.metadata.deletion_timestamp.is_some());
        assert!(held.finalizers().iter().any(|f| f == BACKUP_FINALIZER));
        // The volume is only marked while the claim exists.
        let marked = get(&c.pvs(), &pv.name_any()).await;
        assert_eq!(pv_phase(&marked), Some("Bound"));
        assert!(marked.metadata.deletion_timestamp.is_none());
        assert_eq!(
            marked.annotations().get(DELETE_AFTER_CLAIM),
            Some(&format!("{}/data", c.name()))
        );

        // A rerun picks the claim up where the first stopped, and waits again.
        let rerun = c.run(&envs).await;
        rerun.expect_status(5);
        assert!(
            rerun.line().contains(&format!(
                "found class \"{}\", already being deleted, bound to PV",
                c.a
            )),
            "{rerun}"
        );
        assert!(!rerun.line().contains("claim deleted"), "{rerun}");
        assert_eq!(get(&c.claims(), "data").await.uid(), held.uid());

        // The backup tool is done: the claim goes, and the next run finishes the volume.
        remove_finalizer(&c.claims(), "data", BACKUP_FINALIZER).await;
        wait_deleted(&c.claims(), "data").await;
        let pv_name = pv.name_any();
        wait_pv_phase(&c.client, &pv_name, "Released").await;
        let last = c.run(&envs).await;
        last.expect_status(0);
        assert_eq!(
            last.line(),
            format!(
                "{}/data: finished an interrupted migration: found claim absent, PV {pv_name} (Retain) left by an interrupted run; done: PV {pv_name} (Retain) deleted",
                c.name()
            )
        );
        assert!(read(&c.pvs(), &pv_name).await.is_none());
        // And then there is nothing left to do.
        let again = c.run(&envs).await;
        again.expect_status(0);
        assert_eq!(
            again.line(),
            format!("{}/data: nothing to do: claim absent", c.name())
        );
    }

    #[tokio::test]
    async fn foreign_finalizer_is_waited_for_until_removed() {
        let c = Cluster::new("foreign-wait").await;
        let a = c.a.clone();
        let (_, pv) = c
            .bound_on(
                "data",
                &a,
                reclaim_policy("Retain"),
                &[],
                &[BACKUP_FINALIZER],
            )
            .await;
        let pv_name = pv.name_any();
        let b = c.b.clone();
        let envs = [
            ("PVC_NAME", "data"),
            ("DESIRED_STORAGECLASS", b.as_str()),
            ("DELETE_RETAINED_PV", "true"),
            ("WAIT_TIMEOUT", "60s"),
        ];
        let binary = c.run(&envs);
        let backup_tool = async {
            // The binary deletes the claim, then waits; the backup tool lets go a little later.
            wait_for(&c.claims(), "data", "deletion by the binary", |claim| {
                claim.is_some_and(|c| c.metadata.deletion_timestamp.is_some())
            })
            .await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            remove_finalizer(&c.claims(), "data", BACKUP_FINALIZER).await;
            Instant::now()
        };
        let (run, released_at) = futures::join!(binary, backup_tool);
        run.expect_status(0);
        assert_eq!(
            run.line(),
            format!(
                "{}/data: migrated to class \"{b}\": found class \"{}\", bound to PV {pv_name} (Retain), finalizers of other controllers: {BACKUP_FINALIZER}; done: claim deleted, claim gone, PV {pv_name} (Retain) deleted",
                c.name(),
                c.a
            )
        );
        // It went on as soon as the claim was gone, not at its timeout.
        assert!(released_at.elapsed() < Duration::from_secs(20), "{run}");
        assert!(read(&c.claims(), "data").await.is_none());
        assert!(read(&c.pvs(), &pv_name).await.is_none());
    }

    /// The claim is replaced between the binary's read and its delete: the binary's
    /// delete-after-claim mark on the volume (sent after the read, before the delete) is held in
    /// the apiserver by a webhook while the test deletes the claim and creates a new one under
    /// the same name. The delete's uid precondition then fails, and the new claim is kept.
    #[tokio::test]
    async fn claim_replaced_between_read_and_delete_is_not_deleted() {
        let c = Cluster::new("replaced").await;
        let a = c.a.clone();
        let (old, pv) = c.bound("data", "Retain").await;
        // Holds the update that adds the mark to a volume.
        let adds_mark = format!(
            "{} && !{}",
            cel_has("object", "annotations", DELETE_AFTER_CLAIM),
            cel_has("oldObject", "annotations", DELETE_AFTER_CLAIM)
        );
        let pvs = c.pvs();
        let pv_name = pv.name_any();
        let mark = json!({"metadata": {"annotations": {DELETE_AFTER_CLAIM: "probe"}}});
        let dry_run = PatchParams {
            dry_run: true,
            ..PatchParams::default()
        };
        let mark = Patch::Merge(&mark);
        let probe = || pvs.patch(&pv_name, &dry_run, &mark);
        let mut held = Hold::install(&c, "persistentvolumes", &adds_mark, probe).await;
        let b = c.b.clone();
        let envs = [
            ("PVC_NAME", "data"),
            ("DESIRED_STORAGECLASS", b.as_str()),
            ("DELETE_RETAINED_PV", "true"),
            ("WAIT_TIMEOUT", "30s"),
        ];
        let binary = c.run(&envs);
        let chart = async {
            // The binary has read the claim and its volume, and is marking the volume.
            let call = held.next_call(Instant::now() + WAIT_TIMEOUT).await;
            c.claims()
                .delete("data", &DeleteParams::default())
                .await
                .expect("deleting the claim");
            wait_deleted(&c.claims(), "data").await;
            let new = c.claim("data", Some(&a), &[], &[]).await;
            held.close();
            drop(call);
            new
        };
        let (run, new) = futures::join!(binary, chart);
        run.expect_status(3);
        assert_eq!(
            run.line(),
            format!(
                "{}/data: refused, nothing changed: the claim was replaced after it was read (uid {} is gone); the new claim is not deleted, run again to evaluate it",
                c.name(),
                old.uid().unwrap()
            )
        );
        assert_ne!(new.uid(), old.uid());
        assert_unchanged(&c.claims(), &new).await;
        // The volume of the old claim is kept, released.
        let kept = wait_pv_phase(&c.client, &pv.name_any(), "Released").await;
        assert_eq!(kept.uid(), pv.uid());
        assert!(kept.metadata.deletion_timestamp.is_none());
    }

    /// The claim is replaced after the binary deleted it and before it watches for it to go:
    /// with `force`, the binary's patch that strips pvc-protection is held in the apiserver while
    /// the pod goes, the claim goes and a new one is created under the same name. The binary's
    /// patch must not touch the new claim, and its wait must end on the old uid (a wait for "no
    /// claim of that name" would time out on the new one).
    #[tokio::test]
    async fn claim_replaced_while_the_binary_waits_is_left_alone() {
        let c = Cluster::new("recreated").await;
        let a = c.a.clone();
        let (old, pv) = c.bound("data", "Retain").await;
        let (node, _) = c.running_pod("user", "data").await;
        // Holds the update that strips pvc-protection from a claim of the namespace.
        let strips = format!(
            "{} && !{}",
            cel_has("oldObject", "finalizers", PVC_PROTECTION),
            cel_has("object", "finalizers", PVC_PROTECTION)
        );
        c.claim("probe", Some(&a), &[], &[]).await;
        let claims = c.claims();
        let strip_all = json!({"metadata": {"finalizers": null}});
        let dry_run = PatchParams {
            dry_run: true,
            ..PatchParams::default()
        };
        let strip_all = Patch::Merge(&strip_all);
        let probe = || claims.patch("probe", &dry_run, &strip_all);
        let mut held = Hold::install(&c, "persistentvolumeclaims", &strips, probe).await;

        let b = c.b.clone();
        let envs = [
            ("PVC_NAME", "data"),
            ("DESIRED_STORAGECLASS", b.as_str()),
            ("IN_USE_POLICY", "force"),
            ("WAIT_TIMEOUT", "10s"),
        ];
        let binary = c.run(&envs);
        let chart = async {
            // The binary has deleted the claim and is stripping pvc-protection.
            let call = held.next_call(Instant::now() + WAIT_TIMEOUT).await;
            held.close();
            let deleting = get(&c.claims(), "data").await;
            assert_eq!(deleting.uid(), old.uid());
            assert!(deleting.metadata.deletion_timestamp.is_some());
            // The pod goes, pvc-protection lets the claim go, the chart creates it again.
            let force = DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            };
            c.pods()
                .delete("user", &force)
                .await
                .expect("deleting the pod");
            wait_deleted(&c.claims(), "data").await;
            let new = c.claim("data", Some(&a), &[], &[]).await;
            drop(call);
            new
        };
        let (run, new) = futures::join!(binary, chart);
        run.expect_status(0);
        let pv_name = pv.name_any();
        let line = run.line();
        assert!(
            line.starts_with(&format!(
                "{}/data: migrated to class \"{b}\": found class \"{a}\", bound to PV {pv_name} (Retain), used by pod user on node {node}; done: claim deleted, ",
                c.name()
            )),
            "{run}"
        );
        assert!(
            line.ends_with(&format!(
                "claim gone; left: PV {pv_name} (Retain) with the old data"
            )),
            "{run}"
        );
        assert_ne!(new.uid(), old.uid());
        assert_unchanged(&c.claims(), &new).await;
        // Never stripped meanwhile either (the pvc-protection controller would have put it back).
        assert_eq!(new.finalizers(), [PVC_PROTECTION]);
        for version in versions_since(&c.claims(), &new).await {
            assert_eq!(version.uid(), new.uid());
            assert_eq!(version.finalizers(), [PVC_PROTECTION], "{version:#?}");
        }
        let kept = wait_pv_phase(&c.client, &pv_name, "Released").await;
        assert_eq!(kept.uid(), pv.uid());
    }

    // ------------------------------------------------------------------------------------------
    // Dry run

    #[tokio::test]
    async fn dry_run_changes_nothing() {
        let c = Cluster::new("dry-run").await;
        let a = c.a.clone();
        let (claim, pv) = c
            .bound_on(
                "data",
                &a,
                PvOpts {
                    reclaim_policy: "Retain".into(),
                    extra_finalizers: vec![PROVISIONER_FINALIZER.into()],
                    ..PvOpts::default()
                },
                &[],
                &[BACKUP_FINALIZER],
            )
            .await;
        let (node, pod) = c.running_pod("user", "data").await;
        // Every step the script's settings would take, each sent with server-side dry run.
        let run = c
            .run(&[
                ("PVC_NAME", "data"),
                ("DESIRED_STORAGECLASS", &c.b),
                ("IN_USE_POLICY", "force"),
                ("DELETE_RETAINED_PV", "true"),
                ("STRIP_ALL_FINALIZERS", "true"),
                ("DRY_RUN", "true"),
            ])
            .await;
        run.expect_status(0);
        let pv_name = pv.name_any();
        let claim_finalizers = claim.finalizers().join(" ");
        assert_eq!(
            run.line(),
            format!(
                "{}/data: dry run, would migrate to class \"{}\": found class \"{}\", bound to PV {pv_name} (Retain), used by pod user on node {node}; done: claim delete accepted (dry run), claim finalizers {claim_finalizers} would be stripped, PV {pv_name} delete accepted (dry run)",
                c.name(),
                c.b,
                c.a
            )
        );
        assert_unchanged(&c.claims(), &claim).await;
        assert_unchanged(&c.pvs(), &pv).await;
        assert_unchanged(&c.pods(), &pod).await;
        assert_eq!(pv_phase(&get(&c.pvs(), &pv_name).await), Some("Bound"));
        // Clean-up: let the namespace and the volume go.
        remove_finalizer(&c.claims(), "data", BACKUP_FINALIZER).await;
        remove_finalizer(&c.pvs(), &pv_name, PROVISIONER_FINALIZER).await;
    }

    #[tokio::test]
    async fn dry_run_does_not_evict() {
        let c = Cluster::new("dry-run-evict").await;
        let (claim, pv) = c.bound("data", "Delete").await;
        let (node, pod) = c.running_pod("user", "data").await;
        let stand_in = kubelet_stand_in(c.name());
        let run = c
            .run(&[
                ("PVC_NAME", "data"),
                ("DESIRED_STORAGECLASS", &c.b),
                ("DRY_RUN", "yes"),
            ])
            .await;
        run.expect_status(0);
        let pv_name = pv.name_any();
        assert_eq!(
            run.line(),
            format!(
                "{}/data: dry run, would migrate to class \"{}\": found class \"{}\", bound to PV {pv_name} (Delete), used by pod user on node {node}; done: claim delete accepted (dry run), pod user would be evicted; left: PV {pv_name} would be deleted by its provisioner",
                c.name(),
                c.b,
                c.a
            )
        );
        assert_unchanged(&c.claims(), &claim).await;
        assert_unchanged(&c.pvs(), &pv).await;
        assert_unchanged(&c.pods(), &pod).await;
        assert!(stand_in.deleted_pods().is_empty());
    }

    // ------------------------------------------------------------------------------------------
    // Several claims

    #[tokio::test]
    async fn selector_and_names_each_claim_on_its_own_worst_status_wins() {
        let c = Cluster::new("selector").await;
        let (a, b) = (c.a.clone(), c.b.clone());
        let db = [("app", "db")];
        let retain = || reclaim_policy("Retain");
        let (_, pv1) = c.bound_on("c1", &a, retain(), &db, &[]).await;
        let (_, pv2) = c.bound_on("c2", &a, retain(), &db, &[]).await;
        let (c3, pv3) = c.bound_on("c3", &b, retain(), &db, &[]).await;
        let (c4, pv4) = c.bound_on("c4", &a, retain(), &[], &[]).await;
        let (c5, pv5) = c.bound_on("c5", &a, retain(), &[], &[]).await;
        let (_, pv6) = c.bound_on("c6", &a, retain(), &[], &[]).await;
        let (node, pod) = c.running_pod("user", "c5").await;

        let run = c
            .run(&[
                ("PVC_NAME", "c5,c6"),
                ("PVC_SELECTOR", "app=db"),
                ("DESIRED_STORAGECLASS", &b),
                ("IN_USE_POLICY", "fail"),
            ])
            .await;
        run.expect_status(3);
        let ns = c.name();
        let migrated = |claim: &str, pv: &PersistentVolume| {
            let pv = pv.name_any();
            format!(
                "{ns}/{claim}: migrated to class \"{b}\": found class \"{a}\", bound to PV {pv} (Retain); done: claim deleted, claim gone; left: PV {pv} (Retain) with the old data"
            )
        };
        // Names first, then the selector's claims, each once.
        assert_eq!(
            run.lines(),
            [
                format!(
                    "{ns}/c5: refused, nothing changed: in use by pod user on node {node} (--in-use fail); stop them or choose --in-use evict"
                ),
                migrated("c6", &pv6),
                migrated("c1", &pv1),
                migrated("c2", &pv2),
                format!("{ns}/c3: nothing to do: already on the desired class"),
            ],
            "{run}"
        );
        for gone in ["c1", "c2", "c6"] {
            assert!(read(&c.claims(), gone).await.is_none(), "{gone}");
        }
        for pv in [&pv1, &pv2, &pv6] {
            wait_pv_phase(&c.client, &pv.name_any(), "Released").await;
        }
        for kept in [&c3, &c4, &c5] {
            assert_unchanged(&c.claims(), kept).await;
        }
        for pv in [&pv3, &pv4, &pv5] {
            assert_unchanged(&c.pvs(), pv).await;
        }
        assert_unchanged(&c.pods(), &pod).await;

        let run = c
            .run(&[("PVC_SELECTOR", "app=none"), ("DESIRED_STORAGECLASS", &b)])
            .await;
        run.expect_status(0);
        assert_eq!(
            run.line(),
            format!("{ns}/-l app=none: nothing to do: no claim matches the selector")
        );
    }

    // ------------------------------------------------------------------------------------------
    // RBAC: the rules of chart-snippet/rbac-rules.json, and nothing more

    /// Runs the binary as the ServiceAccount `sa` with the hook's rules for `claim`.
    async fn run_as(
        c: &Cluster,
        sa: &str,
        claim: &str,
        when: &[&str],
        without: Option<(&str, &str)>,
        envs: &[(&str, &str)],
    ) -> Run {
        let (role, cluster_role) = chart_rules(&[claim], c.name(), when, without);
        let access = service_account_with_rules(&c.client, &c.ns, sa, &role, &cluster_role).await;
        let kubeconfig = access.kubeconfig.to_str().expect("UTF-8 path").to_owned();
        let mut all = vec![("KUBECONFIG", kubeconfig.as_str()), ("PVC_NAME", claim)];
        all.extend_from_slice(envs);
        let run = c.run(&all).await;
        assert!(
            !run.output().contains(&access.token),
            "the token appears in the output"
        );
        run
    }

    #[tokio::test]
    async fn rbac_rules_are_enough() {
        let c = Cluster::new("rbac").await;
        let b = c.b.clone();

        // DELETE_RETAINED_PV: the volume rules are needed too.
        let (_, pv) = c.bound("data", "Retain").await;
        let run = run_as(
            &c,
            "hook-write",
            "data",
            &["always", "inUseEvict", "writeVolumes"],
            None,
            &[("DESIRED_STORAGECLASS", &b), ("DELETE_RETAINED_PV", "true")],
        )
        .await;
        run.expect_status(0);
        assert!(
            run.line()
                .ends_with(&format!("PV {} (Retain) deleted", pv.name_any())),
            "{run}"
        );
        assert!(read(&c.claims(), "data").await.is_none());
        assert!(read(&c.pvs(), &pv.name_any()).await.is_none());

        // Default settings, with a pod to evict.
        let (_, pv) = c.bound("web", "Retain").await;
        let (node, _) = c.running_pod("user", "web").await;
        let stand_in = kubelet_stand_in(c.name());
        let run = run_as(
            &c,
            "hook",
            "web",
            &["always", "inUseEvict"],
            None,
            &[("DESIRED_STORAGECLASS", &b), ("WAIT_TIMEOUT", "30s")],
        )
        .await;
        run.expect_status(0);
        let pv_name = pv.name_any();
        assert_eq!(
            run.line(),
            format!(
                "{}/web: migrated to class \"{b}\": found class \"{}\", bound to PV {pv_name} (Retain), used by pod user on node {node}; done: claim deleted, evicted pod user, claim gone; left: PV {pv_name} (Retain) with the old data",
                c.name(),
                c.a
            )
        );
        assert_eq!(stand_in.deleted_pods(), ["user"]);
        assert!(read(&c.claims(), "web").await.is_none());
        wait_pv_phase(&c.client, &pv_name, "Released").await;
    }

    #[tokio::test]
    async fn rbac_without_claim_delete_is_forbidden_and_changes_nothing() {
        let c = Cluster::new("rbac-no-claim-delete").await;
        let (claim, pv) = c.bound("data", "Retain").await;
        let run = run_as(
            &c,
            "hook",
            "data",
            &["always", "inUseEvict"],
            Some(("persistentvolumeclaims", "delete")),
            &[("DESIRED_STORAGECLASS", &c.b)],
        )
        .await;
        run.expect_status(4);
        let line = run.line();
        assert!(
            line.starts_with(&format!("{}/data: failed: found class ", c.name())),
            "{run}"
        );
        assert!(
            line.contains(&format!(
                "delete persistentvolumeclaims \"data\" in namespace \"{}\": HTTP 403 Forbidden",
                c.name()
            )),
            "{run}"
        );
        assert!(
            line.contains("cannot delete resource \"persistentvolumeclaims\""),
            "{run}"
        );
        assert_unchanged(&c.claims(), &claim).await;
        assert_unchanged(&c.pvs(), &pv).await;
    }

    #[tokio::test]
    async fn rbac_without_class_get_is_forbidden_and_changes_nothing() {
        let c = Cluster::new("rbac-no-class-get").await;
        let (claim, pv) = c.bound("data", "Retain").await;
        let run = run_as(
            &c,
            "hook",
            "data",
            &["always", "inUseEvict"],
            Some(("storageclasses", "get")),
            &[("DESIRED_STORAGECLASS", &c.b)],
        )
        .await;
        run.expect_status(4);
        assert!(
            run.line().contains(&format!(
                "get storageclasses \"{}\": HTTP 403 Forbidden",
                c.b
            )),
            "{run}"
        );
        assert_unchanged(&c.claims(), &claim).await;
        assert_unchanged(&c.pvs(), &pv).await;
    }

    /// The claim is deleted before its pods are evicted: without the right to evict, the claim is
    /// left being deleted, held by pvc-protection for the pod, and a rerun with the right resumes.
    #[tokio::test]
    async fn rbac_without_eviction_is_forbidden_and_a_rerun_resumes() {
        let c = Cluster::new("rbac-no-evict").await;
        let (claim, pv) = c.bound("data", "Retain").await;
        let (node, pod) = c.running_pod("user", "data").await;
        let envs = [
            ("DESIRED_STORAGECLASS", c.b.as_str()),
            ("WAIT_TIMEOUT", "30s"),
        ];
        let rules = ["always", "inUseEvict"];
        let without = Some(("pods/eviction", "create"));
        let run = run_as(&c, "hook", "data", &rules, without, &envs).await;
        run.expect_status(4);
        let pv_name = pv.name_any();
        let line = run.line();
        assert!(
        line.starts_with(&format!(
            "{}/data: failed: found class \"{}\", bound to PV {pv_name} (Retain), used by pod user on node {node}; done: claim deleted: create pods/eviction \"user\" in namespace \"{}\": HTTP 403 Forbidden",
            c.name(),
            c.a,
            c.name()
        )),
        "{run}"
    );
        assert!(
            line.contains("cannot create resource \"pods/eviction\""),
            "{run}"
        );
        let held = get(&c.claims(), "data").await;
        assert_eq!(held.uid(), claim.uid());
        assert!(held.metadata.deletion_timestamp.is_some());
        assert_eq!(held.finalizers(), [PVC_PROTECTION]);
        assert_unchanged(&c.pods(), &pod).await;

        let stand_in = kubelet_stand_in(c.name());
        let rerun = run_as(&c, "hook-fixed", "data", &rules, None, &envs).await;
        rerun.expect_status(0);
        assert_eq!(
            rerun.line(),
            format!(
                "{}/data: migrated to class \"{}\": found class \"{}\", already being deleted, bound to PV {pv_name} (Retain), used by pod user on node {node}; done: evicted pod user, claim gone; left: PV {pv_name} (Retain) with the old data",
                c.name(),
                c.b,
                c.a
            )
        );
        assert_eq!(stand_in.deleted_pods(), ["user"]);
        assert!(read(&c.claims(), "data").await.is_none());
        wait_pv_phase(&c.client, &pv_name, "Released").await;
    }

    /// The volume is marked before the claim is deleted: without the right to patch volumes,
    /// nothing is changed.
    #[tokio::test]
    async fn rbac_without_volume_patch_is_forbidden_and_changes_nothing() {
        let c = Cluster::new("rbac-no-pv-patch").await;
        let (claim, pv) = c.bound("data", "Retain").await;
        let run = run_as(
            &c,
            "hook",
            "data",
            &["always", "inUseEvict", "writeVolumes"],
            Some(("persistentvolumes", "patch")),
            &[
                ("DESIRED_STORAGECLASS", &c.b),
                ("DELETE_RETAINED_PV", "true"),
            ],
        )
        .await;
        run.expect_status(4);
        let pv_name = pv.name_any();
        assert!(
            run.line().contains(&format!(
                "patch persistentvolumes \"{pv_name}\": HTTP 403 Forbidden"
            )),
            "{run}"
        );
        assert!(
            run.line()
                .contains("cannot patch resource \"persistentvolumes\""),
            "{run}"
        );
        assert!(!run.line().contains("claim deleted"), "{run}");
        assert_unchanged(&c.claims(), &claim).await;
        assert_unchanged(&c.pvs(), &pv).await;
    }

    /// The volume is deleted after the claim: a denied volume delete leaves the claim deleted and
    /// the volume untouched (but marked), and the summary says so. Once the rule is restored, a
    /// rerun finishes the volume.
    #[tokio::test]
    async fn rbac_without_volume_delete_is_forbidden_and_a_rerun_finishes() {
        let c = Cluster::new("rbac-no-pv-delete").await;
        let (claim, pv) = c.bound("data", "Retain").await;
        let envs = [
            ("DESIRED_STORAGECLASS", c.b.as_str()),
            ("DELETE_RETAINED_PV", "true"),
        ];
        let all = ["always", "inUseEvict", "writeVolumes"];
        let without = Some(("persistentvolumes", "delete"));
        let run = run_as(&c, "hook", "data", &all, without, &envs).await;
        run.expect_status(4);
        let pv_name = pv.name_any();
        let line = run.line();
        assert!(
        line.starts_with(&format!(
            "{}/data: failed: found class \"{}\", bound to PV {pv_name} (Retain); done: claim deleted, claim gone: delete persistentvolumes \"{pv_name}\": HTTP 403 Forbidden",
            c.name(),
            c.a
        )),
        "{run}"
    );
        assert!(
            line.contains("cannot delete resource \"persistentvolumes\""),
            "{run}"
        );
        assert!(read(&c.claims(), "data").await.is_none());
        let kept = wait_pv_phase(&c.client, &pv_name, "Released").await;
        assert_eq!(kept.uid(), pv.uid());
        assert!(kept.metadata.deletion_timestamp.is_none());
        assert_eq!(kept.finalizers(), pv.finalizers());
        assert_eq!(
            kept.annotations().get(DELETE_AFTER_CLAIM),
            Some(&format!("{}/data", c.name()))
        );
        assert_eq!(kept.spec.unwrap().claim_ref.unwrap().uid, claim.uid());

        let rerun = run_as(&c, "hook-fixed", "data", &all, None, &envs).await;
        rerun.expect_status(0);
        assert_eq!(
            rerun.line(),
            format!(
                "{}/data: finished an interrupted migration: found claim absent, PV {pv_name} (Retain) left by an interrupted run; done: PV {pv_name} (Retain) deleted",
                c.name()
            )
        );
        assert!(read(&c.pvs(), &pv_name).await.is_none());
    }
}
