//! The usual scene of a test: a namespace of its own with two StorageClasses, A (the claims'
//! current class) and B (the desired one), and the binary run in that namespace.

use std::{ops::Deref, time::Duration};

use k8s_openapi::api::{
    core::v1::{PersistentVolume, PersistentVolumeClaim, Pod},
    storage::v1::StorageClass,
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams},
};

use crate::{
    TestNamespace,
    api::{assert_unchanged, read, volume_name, wait_pv_phase},
    binary::{Job, Run},
    control_plane::client,
    namespace::{DefaultClassGuard, default_class_lock, on_own_runtime},
    objects::{Claim, ClaimUser, Class, Volume},
};

/// A default StorageClass of a test, deleted when dropped.
#[derive(Debug)]
pub struct DefaultClass {
    pub name: String,
    /// Its creationTimestamp, in seconds since the epoch.
    pub created: Option<i64>,
}

impl Drop for DefaultClass {
    fn drop(&mut self) {
        let name = self.name.clone();
        on_own_runtime(Duration::from_secs(20), move || async move {
            let classes: Api<StorageClass> = Api::all(client().await);
            let _ = classes.delete(&name, &DeleteParams::default()).await;
        });
    }
}

/// A test namespace with classes `<ns>-a` and `<ns>-b`. Derefs to its [`TestNamespace`], so the
/// builders' `create(&c)` take it as it is.
#[derive(Debug)]
pub struct Cluster {
    pub ns: TestNamespace,
    /// Class A, the claims' current class.
    pub a: String,
    /// Class B, the desired class.
    pub b: String,
}

impl Deref for Cluster {
    type Target = TestNamespace;

    fn deref(&self) -> &TestNamespace {
        &self.ns
    }
}

impl Cluster {
    /// Classes A and B with the defaults of [`Class`] (reclaim policy Delete, no provisioner).
    pub async fn new(prefix: &str) -> Cluster {
        Self::with_classes(prefix, Class::new("a"), Class::new("b")).await
    }

    /// Classes A and B as given (their names are `<ns>-a` and `<ns>-b` whatever the builders
    /// say).
    pub async fn with_classes(prefix: &str, a: Class, b: Class) -> Cluster {
        let ns = TestNamespace::new(prefix).await;
        let (a, b) = (a.named("a"), b.named("b"));
        let (a, b) = tokio::join!(a.create(&ns), b.create(&ns));
        Cluster {
            ns,
            a: a.name_any(),
            b: b.name_any(),
        }
    }

    /// A cluster with claim `data` on class A bound to the volume `<ns>-pv-data` of the
    /// reclaim policy given: the most common scene, in one line.
    pub async fn with_bound_claim(
        prefix: &str,
        reclaim: &str,
    ) -> (Cluster, PersistentVolumeClaim, PersistentVolume) {
        let c = Cluster::new(prefix).await;
        let (claim, pv) = c.bound("data", reclaim).await;
        (c, claim, pv)
    }

    /// Asserts that nothing changed a claim and its volume (see [`assert_unchanged`]).
    pub async fn assert_untouched(&self, claim: &PersistentVolumeClaim, pv: &PersistentVolume) {
        assert_unchanged(&self.claims(), claim).await;
        assert_unchanged(&self.pvs(), pv).await;
    }

    /// Takes the [`default_class_lock`] and asserts that the cluster has no default class (other
    /// test processes or leftovers would make a default-class test meaningless). Hold the guard
    /// while the test's default classes or claims without a class exist.
    pub async fn no_default_class(&self) -> DefaultClassGuard {
        let guard = default_class_lock();
        let defaults: Vec<String> = Api::<StorageClass>::all(self.client().clone())
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
        guard
    }

    /// Creates the default class `<ns>-<suffix>`, deleted again when the returned guard is
    /// dropped (declare it after the [`Cluster::no_default_class`] guard, so that it goes first).
    pub async fn default_class(&self, suffix: &str) -> DefaultClass {
        let class = Class::new(suffix).default_class().create(self).await;
        DefaultClass {
            name: class.name_any(),
            created: class.metadata.creation_timestamp.map(|t| t.0.as_second()),
        }
    }

    /// A claim `name` on class A.
    pub fn claim(&self, name: &str) -> Claim {
        Claim::new(name).class(&self.a)
    }

    /// The volume `<ns>-pv-<claim>` on class A, reclaim policy Retain.
    pub fn volume_for(&self, claim: &str) -> Volume {
        Volume::host_path(&format!("pv-{claim}")).class(&self.a)
    }

    /// A Retain volume of no class pre-bound to claim `name` of the namespace, so that no other
    /// claim (of another test) can take it.
    pub fn reserved_for(&self, name: &str) -> Volume {
        Volume::host_path(&format!("pv-{name}")).reserved_for(self.name(), name)
    }

    /// Creates `volume`, then `claim`, and waits until the PV controller bound them to each
    /// other; returns both as they are once bound.
    pub async fn bound_with(
        &self,
        claim: Claim,
        volume: Volume,
    ) -> (PersistentVolumeClaim, PersistentVolume) {
        let pv = volume.create(self).await;
        let claim = claim.create_bound(self).await;
        assert_eq!(volume_name(&claim), Some(pv.name_any().as_str()));
        let pv = wait_pv_phase(self.client(), &pv.name_any(), "Bound").await;
        (claim, pv)
    }

    /// A claim `name` on class A bound to a volume of its own with the reclaim policy given.
    pub async fn bound(
        &self,
        name: &str,
        reclaim: &str,
    ) -> (PersistentVolumeClaim, PersistentVolume) {
        self.bound_with(self.claim(name), self.volume_for(name).reclaim(reclaim))
            .await
    }

    /// Asserts that `claim` is gone and that `pv`, its volume, is kept Released (same uid, not
    /// being deleted); returns the volume as it is then.
    pub async fn assert_gone_and_kept(
        &self,
        claim: &str,
        pv: &PersistentVolume,
    ) -> PersistentVolume {
        assert!(
            read(&self.claims(), claim).await.is_none(),
            "claim {claim} is still there"
        );
        let kept = wait_pv_phase(self.client(), &pv.name_any(), "Released").await;
        assert_eq!(kept.uid(), pv.uid(), "the volume was replaced");
        assert!(kept.metadata.deletion_timestamp.is_none(), "{kept:#?}");
        kept
    }

    /// Asserts that `claim` is gone and that `pv`, its volume, is still there with reclaim policy
    /// `Delete` (switched from Retain for its provisioner to delete, which the hostPath deleter
    /// here refuses).
    pub async fn assert_gone_and_switched_to_delete(&self, claim: &str, pv: &PersistentVolume) {
        assert!(
            read(&self.claims(), claim).await.is_none(),
            "claim {claim} is still there"
        );
        let left = read(&self.pvs(), &pv.name_any())
            .await
            .expect("the volume is still there");
        assert_eq!(left.uid(), pv.uid(), "the volume was replaced");
        let policy = left
            .spec
            .as_ref()
            .and_then(|s| s.persistent_volume_reclaim_policy.as_deref());
        assert_eq!(policy, Some("Delete"), "{left:#?}");
    }

    /// Asserts that `claim` and its volume `pv` are gone.
    pub async fn assert_both_gone(&self, claim: &str, pv: &PersistentVolume) {
        assert!(
            read(&self.claims(), claim).await.is_none(),
            "claim {claim} is still there"
        );
        assert!(
            read(&self.pvs(), &pv.name_any()).await.is_none(),
            "the volume is still there"
        );
    }

    /// A running pod on a node of its own that mounts `claim`.
    pub async fn running_pod(&self, pod: &str, claim: &str) -> Pod {
        ClaimUser::new(pod)
            .claim(claim)
            .running()
            .create(self)
            .await
    }

    /// The binary's settings for this namespace, with `settings` (see [`Job::with`]).
    pub fn job(&self, settings: &[(&str, &str)]) -> Job {
        Job::new(self.name()).with(settings)
    }

    /// Runs the binary in the namespace with `settings`, as the hook Job does.
    pub async fn run(&self, settings: &[(&str, &str)]) -> Run {
        self.job(settings).run().await
    }

    /// The settings that move `claim` to class B, and `extra`.
    pub fn migration(&self, claim: &str, extra: &[(&str, &str)]) -> Job {
        self.job(&[("PVC_NAME", claim), ("DESIRED_STORAGECLASS", &self.b)])
            .with(extra)
    }

    /// Runs the binary to move `claim` to class B, with `extra` settings.
    pub async fn migrate(&self, claim: &str, extra: &[(&str, &str)]) -> Run {
        self.migration(claim, extra).run().await
    }
}
