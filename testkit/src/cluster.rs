//! The usual scene of a test: a namespace of its own with two StorageClasses, A (the claims'
//! current class) and B (the desired one), and the binary run in that namespace.

use std::ops::Deref;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::ResourceExt;

use crate::{
    TestNamespace,
    api::{read, volume_name, wait_pv_phase},
    binary::{Job, Run},
    objects::{Claim, ClaimUser, Class, Volume},
};

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
