//! Builders for the objects tests create, one line each with defaults that make sense:
//!
//! ```ignore
//! let a = Class::new("a").create(&ns).await;                        // <ns>-a, no provisioner
//! let pv = Volume::host_path("pv").class(&a.name_any()).create(&ns).await;
//! let claim = Claim::new("data").class(&a.name_any()).create_bound(&ns).await;
//! let pod = ClaimUser::new("user").claim("data").running().create(&ns).await;
//! ```
//!
//! Cluster-scoped objects (classes, volumes, nodes) are named `<namespace>-<suffix>` and labelled
//! for clean-up with the namespace ([`TestNamespace::scoped`], [`TestNamespace::owner_labels`]).
//! There is no kubelet and no scheduler: pods name their node in `spec.nodeName`, and stay
//! `Pending` unless marked running ([`ClaimUser::running`]); once deleted or evicted they stay
//! `Terminating` unless a [`crate::KubeletStandIn`] runs for the namespace. hostPath volumes point
//! below [`HOST_PATH_ROOT`], which does not exist: the in-tree hostPath deleter (which runs for a
//! `Delete` volume) then fails instead of deleting files.
//!
//! Volumes with real files: a class made with [`Class::host_path_provisioner`] is provisioned by
//! kube-controller-manager itself, with a directory of this host for each claim
//! ([`claim_dir`] finds it); a [`ClaimJob`] mounts such claims into a pod that a
//! [`crate::hook_runner::HookRunner`] runs:
//!
//! ```ignore
//! let b = Class::new("b").host_path_provisioner().create(&ns).await.name_any();
//! Claim::new("data").class(&b).create_bound(&ns).await;
//! let dir = claim_dir(&ns, "data").await;                       // /tmp/hostpath_pv/<uuid>
//! let _runner = HookRunner::start(ns.name(), RunnerOpts::default());
//! ClaimJob::new("job", &image()).command(&["/storageclass-migrate", "copy", ...])
//!     .mount("data", "/data").create(&ns).await;
//! let job = wait_job_finished(&ns, "job").await;
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::{
    apps::v1::StatefulSet,
    batch::v1::Job as BatchJob,
    core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod},
    policy::v1::PodDisruptionBudget,
    storage::v1::StorageClass,
};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::json;

use crate::{
    TestNamespace,
    api::{create, from_json, get, pv_phase, volume_name, wait_bound, wait_for},
};

/// Annotation that makes a StorageClass the default one.
pub const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";
/// What admission puts on every claim.
pub const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
/// What admission puts on every volume.
pub const PV_PROTECTION: &str = "kubernetes.io/pv-protection";
/// What the CSI external-provisioner puts on the volumes it provisions.
pub const PROVISIONER_FINALIZER: &str = "external-provisioner.volume.kubernetes.io/finalizer";
/// The annotation naming a volume's provisioner.
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// A provisioner of CSI-like classes and volumes; nothing runs for it.
pub const CSI_PROVISIONER: &str = "example.com/csi";
/// Directory that hostPath volumes point into. It does not exist, and it must never contain
/// `/tmp/`: kube-controller-manager's hostPath deleter removes any such path (it runs for
/// `Delete` volumes) and accepts nothing else.
pub const HOST_PATH_ROOT: &str = "/nonexistent/storageclass-migrate-test";
/// Directory that reclaimable hostPath volumes point into: below `/tmp`, so the hostPath
/// deleter accepts them, and never created, so it has nothing to remove.
pub const RECLAIMABLE_ROOT: &str = "/tmp/storageclass-migrate-test-never-created";
/// The in-tree provisioner that kube-controller-manager runs with `--enable-hostpath-provisioner`
/// (scripts/control-plane.sh enables it): each claim of its classes gets a new directory
/// `<HOST_PATH_PROVISIONER_ROOT>/<uuid>` on this host (mode 0750, less the controller manager's
/// umask, owned by its user), in a hostPath volume `pvc-<claim uid>`. Its deleter removes the
/// directory of a released `Delete` volume.
pub const HOST_PATH_PROVISIONER: &str = "kubernetes.io/host-path";
/// Where [`HOST_PATH_PROVISIONER`] makes its directories (fixed in kube-controller-manager).
pub const HOST_PATH_PROVISIONER_ROOT: &str = "/tmp/hostpath_pv";

// ------------------------------------------------------------------------------------------
// StorageClass

/// A StorageClass `<namespace>-<suffix>`: no provisioner (`kubernetes.io/no-provisioner`),
/// reclaim policy `Delete`, `Immediate` binding, not the default.
#[derive(Clone, Debug)]
pub struct Class {
    suffix: String,
    provisioner: String,
    parameters: BTreeMap<String, String>,
    default: bool,
    reclaim_policy: String,
    binding_mode: String,
}

impl Class {
    pub fn new(suffix: &str) -> Class {
        Class {
            suffix: suffix.into(),
            provisioner: "kubernetes.io/no-provisioner".into(),
            parameters: BTreeMap::new(),
            default: false,
            reclaim_policy: "Delete".into(),
            binding_mode: "Immediate".into(),
        }
    }

    /// The same settings under another name.
    pub fn named(mut self, suffix: &str) -> Class {
        self.suffix = suffix.into();
        self
    }

    /// e.g. `example.com/none`, an external provisioner that never runs: claims wait for it.
    pub fn provisioner(mut self, provisioner: &str) -> Class {
        self.provisioner = provisioner.into();
        self
    }

    /// Provisioned by kube-controller-manager's hostPath provisioner
    /// ([`HOST_PATH_PROVISIONER`]), with `Immediate` binding (there is no scheduler to pick a
    /// node): a claim of the class is bound within a second or two to a new volume whose
    /// directory on this host ([`claim_dir`]) really exists. The reclaim policy stays `Delete`
    /// unless [`Class::retain`]: the directory is then removed with the claim.
    pub fn host_path_provisioner(mut self) -> Class {
        self.provisioner = HOST_PATH_PROVISIONER.into();
        self.binding_mode = "Immediate".into();
        self
    }

    /// Provisioned by a CSI driver of the control plane's CSI stack ([`crate::csi::DRIVER_A`],
    /// [`crate::csi::DRIVER_B`]; `control-plane.sh start DIR --csi`), `Immediate` binding: each
    /// claim gets a directory of the driver ([`crate::csi::volume_dir`]).
    pub fn csi(mut self, driver: &str) -> Class {
        self.provisioner = driver.into();
        self.binding_mode = "Immediate".into();
        self
    }

    /// `WaitForFirstConsumer` binding: a claim of the class stays Pending until a pod uses it.
    pub fn wait_for_first_consumer(mut self) -> Class {
        self.binding_mode = "WaitForFirstConsumer".into();
        self
    }

    /// A parameter, passed by the provisioner to the driver.
    pub fn parameter(mut self, key: &str, value: &str) -> Class {
        self.parameters.insert(key.into(), value.into());
        self
    }

    /// The cluster's default class (hold [`crate::default_class_lock`]).
    pub fn default_class(mut self) -> Class {
        self.default = true;
        self
    }

    pub fn retain(mut self) -> Class {
        self.reclaim_policy = "Retain".into();
        self
    }

    pub fn build(&self, ns: &TestNamespace) -> StorageClass {
        let mut sc: StorageClass = from_json(json!({
            "metadata": {"name": ns.scoped(&self.suffix), "labels": ns.owner_labels()},
            "provisioner": self.provisioner,
            "reclaimPolicy": self.reclaim_policy,
            "volumeBindingMode": self.binding_mode,
            "parameters": self.parameters,
        }));
        if self.default {
            sc.annotations_mut()
                .insert(DEFAULT_CLASS_ANNOTATION.into(), "true".into());
        }
        sc
    }

    pub async fn create(&self, ns: &TestNamespace) -> StorageClass {
        create(&Api::all(ns.client().clone()), &self.build(ns)).await
    }
}

// ------------------------------------------------------------------------------------------
// PersistentVolume

/// A statically provisioned hostPath PersistentVolume `<namespace>-<suffix>`: 1Gi,
/// ReadWriteOnce, reclaim policy `Retain`, no class (`""`).
#[derive(Clone, Debug)]
pub struct Volume {
    suffix: String,
    class: String,
    capacity: String,
    reclaim_policy: String,
    finalizers: Vec<String>,
    claim_ref: Option<(String, String)>,
    annotations: BTreeMap<String, String>,
    access_mode: String,
    reclaimable: bool,
    path: Option<PathBuf>,
}

impl Volume {
    pub fn host_path(suffix: &str) -> Volume {
        Volume {
            suffix: suffix.into(),
            class: String::new(),
            capacity: "1Gi".into(),
            reclaim_policy: "Retain".into(),
            finalizers: vec![],
            claim_ref: None,
            annotations: BTreeMap::new(),
            access_mode: "ReadWriteOnce".into(),
            reclaimable: false,
            path: None,
        }
    }

    /// Points at a real directory (made by [`crate::files::data_dir`]) whose data a test
    /// checks; never below `/tmp/`, where the hostPath deleter would remove it.
    pub fn at(mut self, dir: &Path) -> Volume {
        self.path = Some(dir.to_owned());
        self
    }

    /// Points below [`RECLAIMABLE_ROOT`]: once its policy is `Delete` and it is released, the
    /// controller manager's hostPath deleter deletes it (there is no data to remove).
    pub fn reclaimable(mut self) -> Volume {
        self.reclaimable = true;
        self
    }

    /// Its one access mode (default `ReadWriteOnce`).
    pub fn access_mode(mut self, mode: &str) -> Volume {
        self.access_mode = mode.into();
        self
    }

    pub fn class(mut self, class: &str) -> Volume {
        self.class = class.into();
        self
    }

    /// `Retain` (the default), `Delete` or `Recycle`.
    pub fn reclaim(mut self, policy: &str) -> Volume {
        self.reclaim_policy = policy.into();
        self
    }

    /// A finalizer besides the `kubernetes.io/pv-protection` that admission adds.
    pub fn finalizer(mut self, finalizer: &str) -> Volume {
        self.finalizers.push(finalizer.into());
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Volume {
        self.annotations.insert(key.into(), value.into());
        self
    }

    /// Pre-bound to claim `claim` of `namespace` (`spec.claimRef` without uid), so that no other
    /// claim (of another test) can take it.
    pub fn reserved_for(mut self, namespace: &str, claim: &str) -> Volume {
        self.claim_ref = Some((namespace.into(), claim.into()));
        self
    }

    /// As a CSI provisioner leaves a volume: reclaim `Delete`, the provisioner's annotation and
    /// finalizer ([`CSI_PROVISIONER`]).
    pub fn csi(self) -> Volume {
        self.reclaim("Delete")
            .finalizer(PROVISIONER_FINALIZER)
            .annotation(PROVISIONED_BY, CSI_PROVISIONER)
    }

    pub fn build(&self, ns: &TestNamespace) -> PersistentVolume {
        let name = ns.scoped(&self.suffix);
        let path = if let Some(dir) = &self.path {
            dir.display().to_string()
        } else if self.reclaimable {
            format!("{RECLAIMABLE_ROOT}/{name}")
        } else {
            format!("{HOST_PATH_ROOT}/{name}")
        };
        assert!(
            self.reclaimable || !path.starts_with("/tmp/"),
            "unsafe hostPath {path}"
        );
        from_json(json!({
            "metadata": {
                "name": name,
                "labels": ns.owner_labels(),
                "annotations": self.annotations,
                "finalizers": self.finalizers,
            },
            "spec": {
                "capacity": {"storage": self.capacity},
                "accessModes": [self.access_mode],
                "persistentVolumeReclaimPolicy": self.reclaim_policy,
                "storageClassName": self.class,
                "hostPath": {"path": path},
                "claimRef": self.claim_ref.as_ref().map(|(namespace, name)| json!({
                    "kind": "PersistentVolumeClaim",
                    "apiVersion": "v1",
                    "namespace": namespace,
                    "name": name,
                })),
            }
        }))
    }

    /// Creates the volume and waits until the PV controller has seen it (phase no longer
    /// `Pending`), so that a claim created next is matched against it right away.
    pub async fn create(&self, ns: &TestNamespace) -> PersistentVolume {
        let api: Api<PersistentVolume> = ns.pvs();
        let pv = create(&api, &self.build(ns)).await;
        wait_for(&api, &pv.name_any(), "a phase other than Pending", |pv| {
            pv.and_then(pv_phase).is_some_and(|p| p != "Pending")
        })
        .await
        .expect("PV exists")
    }
}

// ------------------------------------------------------------------------------------------
// PersistentVolumeClaim

/// A claim: 1Gi, ReadWriteOnce, `storageClassName` unset (the DefaultStorageClass admission
/// plugin fills in the default class if there is one: hold [`crate::default_class_lock`]).
#[derive(Clone, Debug)]
pub struct Claim {
    name: String,
    class: Option<String>,
    request: String,
    volume: Option<String>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    finalizers: Vec<String>,
    access_mode: String,
}

impl Claim {
    pub fn new(name: &str) -> Claim {
        Claim {
            name: name.into(),
            class: None,
            request: "1Gi".into(),
            volume: None,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            finalizers: vec![],
            access_mode: "ReadWriteOnce".into(),
        }
    }

    /// Its one access mode (default `ReadWriteOnce`).
    pub fn access_mode(mut self, mode: &str) -> Claim {
        self.access_mode = mode.into();
        self
    }

    /// `storageClassName`; `""` is "no class".
    pub fn class(mut self, class: &str) -> Claim {
        self.class = Some(class.into());
        self
    }

    pub fn request(mut self, size: &str) -> Claim {
        self.request = size.into();
        self
    }

    /// `spec.volumeName`: bind to this volume.
    pub fn volume(mut self, pv: &str) -> Claim {
        self.volume = Some(pv.into());
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Claim {
        self.labels.insert(key.into(), value.into());
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Claim {
        self.annotations.insert(key.into(), value.into());
        self
    }

    /// Made by Helm release `release` of `namespace` (its `meta.helm.sh` annotations), so that
    /// a selector run for that release may pick it.
    pub fn of_release(self, release: &str, namespace: &str) -> Claim {
        self.annotation("meta.helm.sh/release-name", release)
            .annotation("meta.helm.sh/release-namespace", namespace)
    }

    /// A finalizer of another controller (besides the pvc-protection one admission adds).
    pub fn finalizer(mut self, finalizer: &str) -> Claim {
        self.finalizers.push(finalizer.into());
        self
    }

    pub fn build(&self) -> PersistentVolumeClaim {
        from_json(json!({
            "metadata": {
                "name": self.name, "labels": self.labels, "annotations": self.annotations,
                "finalizers": self.finalizers,
            },
            "spec": {
                "accessModes": [self.access_mode],
                "resources": {"requests": {"storage": self.request}},
                "storageClassName": self.class,
                "volumeName": self.volume,
            }
        }))
    }

    pub async fn create(&self, ns: &TestNamespace) -> PersistentVolumeClaim {
        create(&ns.claims(), &self.build()).await
    }

    /// Creates the claim and waits until the PV controller has bound it.
    pub async fn create_bound(&self, ns: &TestNamespace) -> PersistentVolumeClaim {
        self.create(ns).await;
        wait_bound(ns.client(), ns.name(), &self.name).await
    }
}

/// The directory on this host of a volume: its `hostPath` or `local` path, or for a CSI volume of
/// the control plane's CSI stack the driver's directory for its handle ([`crate::csi::volume_dir`];
/// `None` for other kinds of volume).
pub fn volume_dir(pv: &PersistentVolume) -> Option<PathBuf> {
    let spec = pv.spec.as_ref()?;
    let path = match (&spec.host_path, &spec.local, &spec.csi) {
        (Some(h), _, _) => &h.path,
        (None, Some(l), _) => &l.path,
        (None, None, Some(csi)) => {
            return crate::csi::served_volume_dir(&csi.driver, &csi.volume_handle);
        }
        (None, None, None) => return None,
    };
    Some(PathBuf::from(path))
}

/// Waits until claim `claim` of the namespace is bound, and returns the directory of its volume
/// on this host ([`volume_dir`]); fails the test if the volume has none or it does not exist.
pub async fn claim_dir(ns: &TestNamespace, claim: &str) -> PathBuf {
    let bound = wait_bound(ns.client(), ns.name(), claim).await;
    let pv = get(
        &ns.pvs(),
        volume_name(&bound).expect("a bound claim names its volume"),
    )
    .await;
    let dir = volume_dir(&pv)
        .unwrap_or_else(|| panic!("volume of claim {claim} has no directory here: {pv:#?}"));
    assert!(
        dir.is_dir(),
        "volume of claim {claim}: no directory {}",
        dir.display()
    );
    dir
}

// ------------------------------------------------------------------------------------------
// Nodes and pods

/// A Node `<namespace>-<suffix>` (labelled for clean-up). No kubelet backs it.
pub async fn create_node(ns: &TestNamespace, suffix: &str) -> Node {
    let node: Node = from_json(json!({
        "metadata": {"name": ns.scoped(suffix), "labels": ns.owner_labels()},
    }));
    create(&Api::all(ns.client().clone()), &node).await
}

/// A pod that mounts claims, bound to a node (no scheduler involved): by default a node of its
/// own, `<namespace>-node-<pod>`, created with it. Grace period 30 s.
#[derive(Clone, Debug)]
pub struct ClaimUser {
    name: String,
    node: Option<String>,
    claims: Vec<String>,
    labels: BTreeMap<String, String>,
    running: bool,
}

impl ClaimUser {
    pub fn new(name: &str) -> ClaimUser {
        ClaimUser {
            name: name.into(),
            node: None,
            claims: vec![],
            labels: BTreeMap::new(),
            running: false,
        }
    }

    /// Mounts this claim too.
    pub fn claim(mut self, claim: &str) -> ClaimUser {
        self.claims.push(claim.into());
        self
    }

    /// On this (existing) node instead of a node of its own.
    pub fn node(mut self, node: &str) -> ClaimUser {
        self.node = Some(node.into());
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> ClaimUser {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Marked `Running` and `Ready` through the status subresource once created, as a kubelet
    /// would once its containers started.
    pub fn running(mut self) -> ClaimUser {
        self.running = true;
        self
    }

    pub fn build(&self, node: &str) -> Pod {
        let volumes: Vec<_> = self
            .claims
            .iter()
            .enumerate()
            .map(|(i, c)| json!({"name": format!("v{i}"), "persistentVolumeClaim": {"claimName": c}}))
            .collect();
        let mounts: Vec<_> = (0..self.claims.len())
            .map(|i| json!({"name": format!("v{i}"), "mountPath": format!("/data/{i}")}))
            .collect();
        from_json(json!({
            "metadata": {"name": self.name, "labels": self.labels},
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

    pub async fn create(&self, ns: &TestNamespace) -> Pod {
        let node = match &self.node {
            Some(node) => node.clone(),
            None => create_node(ns, &format!("node-{}", self.name))
                .await
                .name_any(),
        };
        let pod = create(&ns.pods(), &self.build(&node)).await;
        if self.running {
            set_running(ns, &self.name).await
        } else {
            pod
        }
    }
}

/// The node a pod is bound to.
pub fn node_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

/// Marks a pod `Running` with its `Ready` conditions true, as a kubelet would.
pub async fn set_running(ns: &TestNamespace, name: &str) -> Pod {
    let ready = |type_: &str| json!({"type": type_, "status": "True"});
    let status = json!({"status": {
        "phase": "Running",
        "conditions": [ready("PodScheduled"), ready("Initialized"), ready("ContainersReady"), ready("Ready")],
    }});
    ns.pods()
        .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap_or_else(|e| panic!("marking pod {}/{name} running: {e}", ns.name()))
}

// ------------------------------------------------------------------------------------------
// Jobs

/// A Job whose one pod (one container, `restartPolicy: Never`, `backoffLimit: 0`) mounts claims:
/// for a [`crate::hook_runner::HookRunner`] to run, as the binary's own Jobs are run.
#[derive(Clone, Debug)]
pub struct ClaimJob {
    name: String,
    image: String,
    command: Vec<String>,
    /// (claim, mount path, read-only)
    mounts: Vec<(String, String, bool)>,
    user: Option<(i64, i64)>,
    drop: Vec<String>,
    add: Vec<String>,
}

impl ClaimJob {
    pub fn new(name: &str, image: &str) -> ClaimJob {
        ClaimJob {
            name: name.into(),
            image: image.into(),
            command: vec![],
            mounts: vec![],
            user: None,
            drop: vec![],
            add: vec![],
        }
    }

    /// The container's `command` (the first word) and `args` (the rest).
    pub fn command(mut self, argv: &[&str]) -> ClaimJob {
        self.command = argv.iter().map(|a| a.to_string()).collect();
        self
    }

    /// Mounts `claim` at `path`.
    pub fn mount(mut self, claim: &str, path: &str) -> ClaimJob {
        self.mounts.push((claim.into(), path.into(), false));
        self
    }

    /// Mounts `claim` at `path` read-only (`readOnly` on the volume mount).
    pub fn mount_read_only(mut self, claim: &str, path: &str) -> ClaimJob {
        self.mounts.push((claim.into(), path.into(), true));
        self
    }

    /// `runAsUser` and `runAsGroup` of the container (default: the image's user).
    pub fn run_as(mut self, uid: i64, gid: i64) -> ClaimJob {
        self.user = Some((uid, gid));
        self
    }

    /// `securityContext.capabilities` of the container.
    pub fn capabilities(mut self, drop: &[&str], add: &[&str]) -> ClaimJob {
        self.drop = drop.iter().map(|c| c.to_string()).collect();
        self.add = add.iter().map(|c| c.to_string()).collect();
        self
    }

    pub fn build(&self) -> BatchJob {
        let volumes: Vec<_> = self
            .mounts
            .iter()
            .enumerate()
            .map(|(i, (claim, _, _))| {
                json!({"name": format!("claim-{i}"), "persistentVolumeClaim": {"claimName": claim}})
            })
            .collect();
        let mounts: Vec<_> = self
            .mounts
            .iter()
            .enumerate()
            .map(|(i, (_, path, ro))| {
                json!({"name": format!("claim-{i}"), "mountPath": path, "readOnly": ro})
            })
            .collect();
        let mut security = json!({});
        if let Some((uid, gid)) = self.user {
            security["runAsUser"] = json!(uid);
            security["runAsGroup"] = json!(gid);
        }
        if !self.drop.is_empty() || !self.add.is_empty() {
            security["capabilities"] = json!({"drop": self.drop, "add": self.add});
        }
        let mut container = json!({
            "name": "main",
            "image": self.image,
            "securityContext": security,
            "volumeMounts": mounts,
        });
        if let Some((first, rest)) = self.command.split_first() {
            container["command"] = json!([first]);
            container["args"] = json!(rest);
        }
        from_json(json!({
            "metadata": {"name": self.name},
            "spec": {
                "backoffLimit": 0,
                "template": {"spec": {
                    "restartPolicy": "Never",
                    "containers": [container],
                    "volumes": volumes,
                }},
            }
        }))
    }

    pub async fn create(&self, ns: &TestNamespace) -> BatchJob {
        create(
            &Api::namespaced(ns.client().clone(), ns.name()),
            &self.build(),
        )
        .await
    }
}

/// A Job's condition `Complete` or `Failed` that is `True`, if any.
pub fn job_finished(job: &BatchJob) -> Option<&str> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .map(|c| c.type_.as_str())
}

/// Waits until the Job controller has completed or failed Job `name` ([`job_finished`]).
pub async fn wait_job_finished(ns: &TestNamespace, name: &str) -> BatchJob {
    let jobs: Api<BatchJob> = Api::namespaced(ns.client().clone(), ns.name());
    wait_for(&jobs, name, "condition Complete or Failed", |j| {
        j.is_some_and(|j| job_finished(j).is_some())
    })
    .await
    .expect("Job exists")
}

// ------------------------------------------------------------------------------------------
// PodDisruptionBudget

/// A PodDisruptionBudget over the pods labelled `key=value`, with `maxUnavailable: 0` unless
/// given otherwise: no eviction is allowed. `maxUnavailable` needs pods with a controller for
/// the disruption controller to count them; `minAvailable` does not.
#[derive(Clone, Debug)]
pub struct Budget {
    name: String,
    selector: (String, String),
    max_unavailable: i32,
    min_available: Option<i32>,
}

impl Budget {
    pub fn new(name: &str, key: &str, value: &str) -> Budget {
        Budget {
            name: name.into(),
            selector: (key.into(), value.into()),
            max_unavailable: 0,
            min_available: None,
        }
    }

    /// `minAvailable: n` instead of `maxUnavailable`.
    pub fn min_available(mut self, n: i32) -> Budget {
        self.min_available = Some(n);
        self
    }

    /// Waits until the disruption controller has computed the budget's status (for the pods
    /// that exist now), and returns it.
    pub async fn wait_computed(
        ns: &TestNamespace,
        name: &str,
        expected_pods: i32,
    ) -> PodDisruptionBudget {
        let budgets: Api<PodDisruptionBudget> = Api::namespaced(ns.client().clone(), ns.name());
        crate::api::poll(&format!("the status of budget {name}"), || async {
            let budget = budgets.get(name).await.ok()?;
            let status = budget.status.as_ref()?;
            (status.expected_pods == expected_pods
                && status.observed_generation == budget.metadata.generation)
                .then_some(budget)
        })
        .await
    }

    pub fn max_unavailable(mut self, n: i32) -> Budget {
        self.max_unavailable = n;
        self
    }

    pub fn build(&self) -> PodDisruptionBudget {
        let (key, value) = &self.selector;
        let mut spec = json!({"selector": {"matchLabels": {key: value}}});
        match self.min_available {
            Some(n) => spec["minAvailable"] = json!(n),
            None => spec["maxUnavailable"] = json!(self.max_unavailable),
        }
        from_json(json!({"metadata": {"name": self.name}, "spec": spec}))
    }

    pub async fn create(&self, ns: &TestNamespace) -> PodDisruptionBudget {
        create(
            &Api::namespaced(ns.client().clone(), ns.name()),
            &self.build(),
        )
        .await
    }
}

// ------------------------------------------------------------------------------------------
// StatefulSet

/// A StatefulSet `name` (3 replicas, `podManagementPolicy: Parallel`, pods labelled
/// `app: <name>`) with one volumeClaimTemplate, `data` by default (1Gi, ReadWriteOnce, class
/// unset unless given): its controller makes the claims `data-<name>-<ordinal>`. Its pods stay
/// unscheduled unless a [`crate::PodBinder`] runs for the namespace.
#[derive(Clone, Debug)]
pub struct Sts {
    name: String,
    replicas: i32,
    template: String,
    class: Option<String>,
    when_deleted: Option<String>,
}

impl Sts {
    pub fn new(name: &str) -> Sts {
        Sts {
            name: name.into(),
            replicas: 3,
            template: "data".into(),
            class: None,
            when_deleted: None,
        }
    }

    pub fn replicas(mut self, n: i32) -> Sts {
        self.replicas = n;
        self
    }

    /// The volumeClaimTemplate's name.
    pub fn template(mut self, name: &str) -> Sts {
        self.template = name.into();
        self
    }

    /// The template's `storageClassName`.
    pub fn class(mut self, class: &str) -> Sts {
        self.class = Some(class.into());
        self
    }

    /// `persistentVolumeClaimRetentionPolicy.whenDeleted` (`Retain` or `Delete`): with `Delete`
    /// the controller puts an owner reference to the StatefulSet on every claim.
    pub fn when_deleted(mut self, policy: &str) -> Sts {
        self.when_deleted = Some(policy.into());
        self
    }

    /// The claim of ordinal `n`: `<template>-<name>-<n>`.
    pub fn claim(&self, n: i32) -> String {
        format!("{}-{}-{n}", self.template, self.name)
    }

    pub fn build(&self) -> StatefulSet {
        let mut spec = json!({
            "replicas": self.replicas,
            "serviceName": self.name,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": self.name}},
            "template": {
                "metadata": {"labels": {"app": self.name}},
                "spec": {
                    "terminationGracePeriodSeconds": 30,
                    "containers": [{
                        "name": "main",
                        "image": "registry.invalid/storageclass-migrate/none:0",
                        "volumeMounts": [{"name": self.template, "mountPath": "/data"}],
                    }],
                },
            },
            "volumeClaimTemplates": [{
                "metadata": {"name": self.template},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "1Gi"}},
                    "storageClassName": self.class,
                },
            }],
        });
        if let Some(policy) = &self.when_deleted {
            spec["persistentVolumeClaimRetentionPolicy"] =
                json!({"whenDeleted": policy, "whenScaled": "Retain"});
        }
        from_json(json!({"metadata": {"name": self.name}, "spec": spec}))
    }

    pub async fn create(&self, ns: &TestNamespace) -> StatefulSet {
        create(&ns.sets(), &self.build()).await
    }

    /// Sets `spec.replicas`.
    pub async fn scale(&self, ns: &TestNamespace, replicas: i32) -> StatefulSet {
        ns.sets()
            .patch(
                &self.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": replicas}})),
            )
            .await
            .unwrap_or_else(|e| panic!("scaling StatefulSet {}: {e}", self.name))
    }

    /// Waits until the claims of ordinals `0..n` are bound; returns them by ordinal.
    pub async fn wait_claims(&self, ns: &TestNamespace, n: i32) -> Vec<PersistentVolumeClaim> {
        let mut claims = Vec::new();
        for i in 0..n {
            claims.push(wait_bound(ns.client(), ns.name(), &self.claim(i)).await);
        }
        claims
    }

    /// Waits until the pods of ordinals `0..n` are on a node and Ready (a [`crate::PodBinder`]
    /// binds them and marks them so).
    pub async fn wait_pods(&self, ns: &TestNamespace, n: i32) -> Vec<Pod> {
        let mut pods = Vec::new();
        for i in 0..n {
            let name = format!("{}-{i}", self.name);
            let pod = wait_for(&ns.pods(), &name, "on a node and Ready", |p| {
                p.is_some_and(|p| !node_of(p).is_empty() && pod_ready(p))
            })
            .await
            .expect("the pod exists");
            pods.push(pod);
        }
        pods
    }
}

/// Whether the pod's `Ready` condition is true.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_user_mounts_each_claim() {
        let pod = ClaimUser::new("web").claim("a").claim("b").build("node-1");
        let spec = pod.spec.unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("node-1"));
        let claims: Vec<String> = spec
            .volumes
            .unwrap()
            .into_iter()
            .map(|v| v.persistent_volume_claim.unwrap().claim_name)
            .collect();
        assert_eq!(claims, ["a", "b"]);
    }

    #[test]
    fn a_host_path_provisioned_class_binds_at_once() {
        let class = Class::new("b").host_path_provisioner();
        assert_eq!(class.provisioner, HOST_PATH_PROVISIONER);
        assert_eq!(class.binding_mode, "Immediate");
        assert_eq!(class.reclaim_policy, "Delete");
    }

    #[test]
    fn a_claim_job_mounts_its_claims_and_splits_the_command() {
        let job = ClaimJob::new("copy", "img:1")
            .command(&["/bin/x", "--from", "/source"])
            .mount_read_only("a", "/source")
            .mount("b", "/target")
            .run_as(0, 0)
            .capabilities(&["ALL"], &["CHOWN"])
            .build();
        let pod = job.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        let c = &pod.containers[0];
        assert_eq!(c.command.as_deref(), Some(&["/bin/x".to_string()][..]));
        assert_eq!(c.args.clone().unwrap(), ["--from", "/source"]);
        let mounts: Vec<_> = c
            .volume_mounts
            .clone()
            .unwrap()
            .into_iter()
            .map(|m| (m.name, m.mount_path, m.read_only))
            .collect();
        assert_eq!(
            mounts,
            [
                ("claim-0".into(), "/source".into(), Some(true)),
                ("claim-1".into(), "/target".into(), Some(false))
            ]
        );
        let claims: Vec<_> = pod
            .volumes
            .unwrap()
            .into_iter()
            .map(|v| (v.name, v.persistent_volume_claim.unwrap().claim_name))
            .collect();
        assert_eq!(
            claims,
            [
                ("claim-0".into(), "a".into()),
                ("claim-1".into(), "b".into())
            ]
        );
        let sc = c.security_context.clone().unwrap();
        assert_eq!((sc.run_as_user, sc.run_as_group), (Some(0), Some(0)));
        let caps = sc.capabilities.unwrap();
        assert_eq!(caps.drop.unwrap(), ["ALL"]);
        assert_eq!(caps.add.unwrap(), ["CHOWN"]);
    }

    #[test]
    fn a_claim_without_class_leaves_it_unset() {
        let claim = Claim::new("data").build();
        assert_eq!(claim.spec.unwrap().storage_class_name, None);
        let claim = Claim::new("data").class("").volume("pv").build();
        let spec = claim.spec.unwrap();
        assert_eq!(spec.storage_class_name.as_deref(), Some(""));
        assert_eq!(spec.volume_name.as_deref(), Some("pv"));
    }
}
