//! The harness of storageclass-migrate's tests, in one crate that every test target shares.
//!
//! | module | what it holds |
//! |---|---|
//! | [`control_plane`] | the local control plane (`scripts/control-plane.sh`), admin clients |
//! | [`namespace`] | unique names, a namespace per test, the default-class lock |
//! | [`cluster`] | the usual scene: a namespace with classes A and B, the binary run there |
//! | [`csi`] | the CSI stack (`control-plane.sh start DIR --csi`): its drivers' directories, the leak check |
//! | [`objects`] | builders: classes (also host-path provisioned), volumes, claims, pods, nodes, budgets, Jobs that mount claims, StatefulSets |
//! | [`rbac`] | service accounts with rules (the chart's), tokens, token kubeconfigs |
//! | [`api`] | create, read, wait for, unchanged-object checks |
//! | [`binary`] | the binary as a subprocess: run, wait, kill; its output |
//! | [`outcome`] | the binary's structured summary (`--summary-format json`), typed |
//! | [`kubelet`] | the stand-in kubelet that finishes deleted and evicted pods |
//! | [`binder`] | the stand-in scheduler that binds StatefulSet pods to a node (`pods/binding`) |
//! | [`hook_runner`] | runs Jobs' pods (in the image, or on the host), claims mounted, in place of a kubelet |
//! | [`node`] | this process's Node, whose kubelet endpoint serves the logs of the pods the runner ran |
//! | [`fault_proxy`] | an HTTP proxy to the apiserver that injects faults |
//! | [`files`] | a tree with every kind of entry, and the comparison of two trees |
//! | [`hold`] | holds a request inside the apiserver with a webhook that never answers |
//! | [`helm`] | helm 3 and helm 4, and the charts, prepared once per test process |
//! | [`release`] | a release of examples/app with its hook Jobs run: the end-to-end scene |
//! | [`chart_repo`] | a Helm chart repository (examples/app packaged) on a loopback port |
//! | [`flux`] | Flux's source-controller and helm-controller, and a release installed by a HelmRelease |
//! | [`rows`] | table-driven tests: every row at once, each checked on its own |
//! | [`background`] | the stoppable background thread under the kubelet, runner and proxy |
//!
//! # Adding a scenario
//!
//! A test says its set-up, its run and its expected end state, each in a few lines:
//!
//! ```ignore
//! use testkit::prelude::*;
//!
//! #[tokio::test]
//! async fn retain_volume_is_kept() {
//!     let (c, _claim, pv) = Cluster::with_bound_claim("retain", "Retain").await;
//!     let run = c.migrate("data", &[]).await;               // to class B, JSON summary
//!     run.expect_shape(0, "migrated: found class, volume; done claim-deleted, claim-gone; left volume-kept");
//!     c.assert_gone_and_kept("data", &pv).await;            // read back through the API
//! }
//! ```
//!
//! Give every test its own namespace ([`TestNamespace`] or [`Cluster`]): tests run in parallel
//! against one control plane. Name cluster-scoped objects through the builders (they are
//! `<namespace>-<suffix>` and go with the namespace). A test that needs a default StorageClass
//! or claims without a class holds [`default_class_lock`]. Objects that need a kubelet (pods
//! that finish) need a [`KubeletStandIn`]. Faults between the binary and the apiserver go
//! through a [`FaultProxy`]; a request can be held inside the apiserver with a [`hold::Hold`].

pub mod api;
pub mod background;
pub mod binary;
pub mod binder;
pub mod chart_repo;
pub mod cluster;
pub mod control_plane;
pub mod csi;
pub mod fault_proxy;
pub mod files;
pub mod flux;
pub mod helm;
pub mod hold;
pub mod hook_runner;
pub mod kubelet;
pub mod namespace;
pub mod node;
pub mod objects;
pub mod outcome;
pub mod rbac;
pub mod release;
pub mod rows;

pub use api::*;
pub use binary::{Binary, Job, RUN_TIMEOUT, Run, binary_path};
pub use binder::PodBinder;
pub use cluster::Cluster;
pub use control_plane::{
    ControlPlane, apiserver_url, ca_path, client, client_for, kubeconfig_path,
    pinned_kubernetes_version, repo_root,
};
pub use fault_proxy::FaultProxy;
pub use kubelet::KubeletStandIn;
pub use namespace::{
    DefaultClassGuard, OWNER_LABEL, TestNamespace, default_class_lock, unique_name,
};
pub use objects::*;
pub use outcome::{Item, Outcome};
pub use rbac::{
    Account, ServiceAccountAccess, chart_rules, everything, rule, statefulset_chart_rules,
    write_token_kubeconfig,
};

/// Everything a scenario file usually needs, in one `use`.
pub mod prelude {
    pub use crate::*;
    pub use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
    pub use kube::{Api, Client, ResourceExt};
}
