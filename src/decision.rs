//! The decision layer: given what the API returned for a claim, its volume and the pods of its
//! namespace, what to do. No I/O here; every row of the decision table is a unit test below.

use std::fmt;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::ResourceExt;

use crate::class::Target;
use crate::config::{InUsePolicy, Policies};

/// Added to every claim by admission; the pvc-protection controller removes it once no scheduled
/// pod uses the claim.
pub const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";

/// Put on a volume, with the claim's `namespace/name`, before a claim whose volume is to be
/// deleted is itself deleted: a run interrupted after the claim went finds the volume by it.
pub const DELETE_AFTER_CLAIM: &str = "storageclass-migrate/delete-after-claim";

/// Why a claim needs nothing done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nothing {
    /// No such claim: a fresh install.
    Absent,
    /// `storageClassName` is nil: nil to a name is the one change the API allows, Helm applies it.
    NilClass,
    /// Already on the desired class.
    OnTarget,
    /// No class desired and the cluster has no default class: nothing to compare with.
    NoDefaultClass,
}

impl fmt::Display for Nothing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Nothing::Absent => "claim absent",
            Nothing::NilClass => "storageClassName is unset, Helm can set it",
            Nothing::OnTarget => "already on the desired class",
            Nothing::NoDefaultClass => {
                "no class desired and the cluster has no default StorageClass"
            }
        })
    }
}

/// The first look at a claim, before its volume and pods are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Triage {
    Nothing(Nothing),
    /// On another class: migrate. `resume` when it is already being deleted (a previous run).
    Migrate {
        resume: bool,
    },
}

pub fn triage(claim: Option<&PersistentVolumeClaim>, target: &Target) -> Triage {
    let Some(claim) = claim else {
        return Triage::Nothing(Nothing::Absent);
    };
    let Some(class) = claim_class(claim) else {
        return Triage::Nothing(Nothing::NilClass);
    };
    if class == target.class_name() {
        return Triage::Nothing(Nothing::OnTarget);
    }
    Triage::Migrate {
        resume: claim.metadata.deletion_timestamp.is_some(),
    }
}

pub fn claim_class(claim: &PersistentVolumeClaim) -> Option<&str> {
    claim.spec.as_ref()?.storage_class_name.as_deref()
}

pub fn claim_volume(claim: &PersistentVolumeClaim) -> Option<&str> {
    claim
        .spec
        .as_ref()?
        .volume_name
        .as_deref()
        .filter(|name| !name.is_empty())
}

/// A scheduled pod that uses the claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodUse {
    pub name: String,
    pub node: String,
    pub terminating: bool,
}

impl fmt::Display for PodUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pod {} on node {}", self.name, self.node)
    }
}

/// Whether the pod names the claim in one of its volumes.
pub fn names_claim(pod: &Pod, claim_name: &str) -> bool {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .any(|volume| {
            volume
                .persistent_volume_claim
                .as_ref()
                .is_some_and(|source| source.claim_name == claim_name)
        })
}

/// Pods that keep the claim from being deleted, by the rule of the pvc-protection controller:
/// scheduled (`spec.nodeName` set) and naming the claim in a volume, whatever their phase.
pub fn pods_using(claim_name: &str, pods: &[Pod]) -> Vec<PodUse> {
    pods.iter()
        .filter_map(|pod| {
            let spec = pod.spec.as_ref()?;
            let node = spec.node_name.as_deref().filter(|n| !n.is_empty())?;
            names_claim(pod, claim_name).then(|| PodUse {
                name: pod.name_any(),
                node: node.to_owned(),
                terminating: pod.metadata.deletion_timestamp.is_some(),
            })
        })
        .collect()
}

/// Why a migration is refused before anything is changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    TargetMissing { class: String },
    VolumeOfAnotherClaim { volume: String, owner: String },
    InUse { pods: Vec<PodUse> },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::TargetMissing { class } => write!(
                f,
                "StorageClass {class:?} does not exist; a claim recreated on it would never bind, so the old claim is kept"
            ),
            Refusal::VolumeOfAnotherClaim { volume, owner } => write!(
                f,
                "PersistentVolume {volume} is bound to {owner}, not to this claim; it is not touched"
            ),
            Refusal::InUse { pods } => write!(
                f,
                "in use by {} (--in-use fail); stop them or choose --in-use evict",
                join(pods)
            ),
        }
    }
}

/// What to do with the claim's volume once the claim is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeStep {
    /// The claim was never bound.
    Unbound,
    /// The claim names a volume that no longer exists.
    Gone {
        name: String,
    },
    Handle(VolumePlan),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumePlan {
    pub name: String,
    pub uid: String,
    /// The uid of the claim its claimRef named when it was read; it is touched only while that
    /// still holds.
    pub claim_uid: String,
    pub reclaim_policy: String,
    pub action: VolumeAction,
    /// Finalizers to strip before deleting it (`--strip-all-finalizers` only).
    pub strip: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeAction {
    /// Reclaim policy Delete: its provisioner deletes the backing volume, then the object.
    AwaitReclaim,
    /// Retain (or Recycle): keep it, so its data can be recovered.
    Keep,
    /// Delete the object (Retain with `--delete-retained-pv`, or `--strip-all-finalizers`).
    Delete,
}

/// The migration of one claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub claim: String,
    pub uid: String,
    pub from: String,
    /// The claim is already being deleted: a previous run stopped part-way.
    pub resume: bool,
    pub users: Vec<PodUse>,
    /// Pods to evict after the claim is deleted.
    pub evict: Vec<String>,
    /// Finalizers to strip from the claim after it is deleted.
    pub strip_claim: Vec<String>,
    /// Finalizers of other controllers on the claim, waited for.
    pub foreign_finalizers: Vec<String>,
    pub volume: VolumeStep,
}

/// Everything read from the API about a claim that needs migrating.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub claim: &'a PersistentVolumeClaim,
    pub volume: Option<&'a PersistentVolume>,
    pub pods: &'a [Pod],
    pub target: &'a Target,
    pub target_exists: bool,
}

pub fn plan(facts: Facts<'_>, policies: Policies) -> Result<Plan, Refusal> {
    let claim = facts.claim;
    if !facts.target_exists {
        return Err(Refusal::TargetMissing {
            class: facts.target.class_name().to_owned(),
        });
    }
    let volume = volume_step(facts, policies)?;
    let users = pods_using(&claim.name_any(), facts.pods);
    if !users.is_empty() && policies.in_use == InUsePolicy::Fail {
        return Err(Refusal::InUse { pods: users });
    }
    let evict = match policies.in_use {
        InUsePolicy::Evict => users
            .iter()
            .filter(|u| !u.terminating)
            .map(|u| u.name.clone())
            .collect(),
        _ => Vec::new(),
    };
    let finalizers = claim.finalizers();
    let strip_claim: Vec<String> = if policies.strip_all_finalizers {
        finalizers.to_vec()
    } else if policies.in_use == InUsePolicy::Force && !users.is_empty() {
        finalizers
            .iter()
            .filter(|f| *f == PVC_PROTECTION)
            .cloned()
            .collect()
    } else {
        Vec::new()
    };
    let foreign_finalizers = finalizers
        .iter()
        .filter(|f| *f != PVC_PROTECTION && !strip_claim.contains(f))
        .cloned()
        .collect();
    Ok(Plan {
        claim: claim.name_any(),
        uid: claim.uid().unwrap_or_default(),
        from: claim_class(claim).unwrap_or_default().to_owned(),
        resume: claim.metadata.deletion_timestamp.is_some(),
        users,
        evict,
        strip_claim,
        foreign_finalizers,
        volume,
    })
}

fn volume_step(facts: Facts<'_>, policies: Policies) -> Result<VolumeStep, Refusal> {
    let claim = facts.claim;
    let Some(name) = claim_volume(claim) else {
        return Ok(VolumeStep::Unbound);
    };
    let Some(volume) = facts.volume else {
        return Ok(VolumeStep::Gone {
            name: name.to_owned(),
        });
    };
    let namespace = claim.namespace().unwrap_or_default();
    let claim_uid = claim.uid().unwrap_or_default();
    if !owned_by(volume, &namespace, &claim.name_any(), &claim_uid) {
        let owner = volume
            .spec
            .as_ref()
            .and_then(|s| s.claim_ref.as_ref())
            .map(|r| {
                format!(
                    "claim {}/{} (uid {})",
                    r.namespace.as_deref().unwrap_or(""),
                    r.name.as_deref().unwrap_or(""),
                    r.uid.as_deref().unwrap_or("unset")
                )
            })
            .unwrap_or_else(|| "no claim".to_owned());
        return Err(Refusal::VolumeOfAnotherClaim {
            volume: volume.name_any(),
            owner,
        });
    }
    Ok(VolumeStep::Handle(volume_plan(
        volume, &claim_uid, policies,
    )))
}

impl VolumePlan {
    /// Whether `volume`, read again, is still the one planned for: same uid, and its claimRef
    /// still names the claim read then. Checked before every write to a volume.
    pub fn still_ours(&self, volume: &PersistentVolume, namespace: &str, claim: &str) -> bool {
        volume.uid().as_deref() == Some(self.uid.as_str())
            && owned_by(volume, namespace, claim, &self.claim_uid)
    }
}

/// Whether the volume's claimRef names this claim: namespace, name and uid.
pub fn owned_by(volume: &PersistentVolume, namespace: &str, name: &str, claim_uid: &str) -> bool {
    volume
        .spec
        .as_ref()
        .and_then(|s| s.claim_ref.as_ref())
        .is_some_and(|r| {
            r.namespace.as_deref() == Some(namespace)
                && r.name.as_deref() == Some(name)
                && !claim_uid.is_empty()
                && r.uid.as_deref() == Some(claim_uid)
        })
}

fn volume_plan(volume: &PersistentVolume, claim_uid: &str, policies: Policies) -> VolumePlan {
    let reclaim_policy = volume
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.clone())
        .unwrap_or_else(|| "Retain".to_owned());
    let action = match reclaim_policy.as_str() {
        _ if policies.strip_all_finalizers => VolumeAction::Delete,
        "Delete" => VolumeAction::AwaitReclaim,
        _ if policies.delete_retained_pv => VolumeAction::Delete,
        _ => VolumeAction::Keep,
    };
    let strip = if policies.strip_all_finalizers {
        volume.finalizers().to_vec()
    } else {
        Vec::new()
    };
    VolumePlan {
        name: volume.name_any(),
        uid: volume.uid().unwrap_or_default(),
        claim_uid: claim_uid.to_owned(),
        reclaim_policy,
        action,
        strip,
    }
}

/// Whether a run may have to delete or strip volumes: only then does it mark them, and only then
/// does it look for volumes that an interrupted run marked.
pub fn writes_volumes(policies: Policies) -> bool {
    policies.delete_retained_pv || policies.strip_all_finalizers
}

/// Volumes that an interrupted run marked for deletion with this claim (now absent) and that
/// still name it in their claimRef; the binder may not have marked them Released yet. Planned
/// by today's policies.
pub fn leftovers(
    namespace: &str,
    name: &str,
    volumes: &[PersistentVolume],
    policies: Policies,
) -> Vec<VolumePlan> {
    let mark = format!("{namespace}/{name}");
    volumes
        .iter()
        .filter(|v| v.annotations().get(DELETE_AFTER_CLAIM) == Some(&mark))
        .filter_map(|v| {
            let claim_ref = v.spec.as_ref()?.claim_ref.as_ref()?;
            let claim_uid = claim_ref.uid.clone().unwrap_or_default();
            owned_by(v, namespace, name, &claim_uid).then(|| volume_plan(v, &claim_uid, policies))
        })
        .collect()
}

pub fn join<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ObjectReference, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource,
        PersistentVolumeSpec, PodSpec, Volume,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use k8s_openapi::jiff::Timestamp;

    const NS: &str = "apps";

    fn claim(class: Option<&str>, volume: Option<&str>) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data".into()),
                namespace: Some(NS.into()),
                uid: Some("claim-uid".into()),
                finalizers: Some(vec![PVC_PROTECTION.into()]),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                storage_class_name: class.map(Into::into),
                volume_name: volume.map(Into::into),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn deleting(mut claim: PersistentVolumeClaim) -> PersistentVolumeClaim {
        claim.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        claim
    }

    fn with_finalizers(
        mut claim: PersistentVolumeClaim,
        finalizers: &[&str],
    ) -> PersistentVolumeClaim {
        claim.metadata.finalizers = Some(finalizers.iter().map(|f| f.to_string()).collect());
        claim
    }

    fn volume(
        policy: &str,
        claim_name: &str,
        claim_uid: &str,
        finalizers: &[&str],
    ) -> PersistentVolume {
        PersistentVolume {
            metadata: ObjectMeta {
                name: Some("pv-1".into()),
                uid: Some("pv-uid".into()),
                finalizers: Some(finalizers.iter().map(|f| f.to_string()).collect()),
                ..Default::default()
            },
            spec: Some(PersistentVolumeSpec {
                persistent_volume_reclaim_policy: Some(policy.into()),
                claim_ref: Some(ObjectReference {
                    namespace: Some(NS.into()),
                    name: Some(claim_name.into()),
                    uid: Some(claim_uid.into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pod(name: &str, node: Option<&str>, claim: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(Into::into),
                volumes: Some(vec![Volume {
                    name: "v".into(),
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: claim.into(),
                        read_only: None,
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn target() -> Target {
        Target::Class("b".into())
    }

    fn policies(in_use: InUsePolicy) -> Policies {
        Policies {
            in_use,
            delete_retained_pv: false,
            strip_all_finalizers: false,
        }
    }

    fn plan_for(
        claim: &PersistentVolumeClaim,
        volume: Option<&PersistentVolume>,
        pods: &[Pod],
        policies: Policies,
    ) -> Result<Plan, Refusal> {
        let target = target();
        plan(
            Facts {
                claim,
                volume,
                pods,
                target: &target,
                target_exists: true,
            },
            policies,
        )
    }

    // Decision table, first look.

    #[test]
    fn absent_claim_needs_nothing() {
        assert_eq!(triage(None, &target()), Triage::Nothing(Nothing::Absent));
    }

    #[test]
    fn nil_class_needs_nothing() {
        assert_eq!(
            triage(Some(&claim(None, None)), &target()),
            Triage::Nothing(Nothing::NilClass)
        );
    }

    #[test]
    fn claim_on_desired_class_needs_nothing() {
        assert_eq!(
            triage(Some(&claim(Some("b"), None)), &target()),
            Triage::Nothing(Nothing::OnTarget)
        );
        let no_class = claim(Some(""), None);
        assert_eq!(
            triage(Some(&no_class), &Target::NoClass),
            Triage::Nothing(Nothing::OnTarget)
        );
    }

    #[test]
    fn claim_being_deleted_resumes() {
        let claim = deleting(claim(Some("a"), Some("pv-1")));
        assert_eq!(
            triage(Some(&claim), &target()),
            Triage::Migrate { resume: true }
        );
        let plan = plan_for(&claim, None, &[], policies(InUsePolicy::Evict)).unwrap();
        assert!(plan.resume);
    }

    #[test]
    fn claim_on_another_class_migrates() {
        assert_eq!(
            triage(Some(&claim(Some("a"), None)), &target()),
            Triage::Migrate { resume: false }
        );
        let no_class = claim(Some(""), None);
        assert_eq!(
            triage(Some(&no_class), &target()),
            Triage::Migrate { resume: false }
        );
        let named = claim(Some("a"), None);
        assert_eq!(
            triage(Some(&named), &Target::NoClass),
            Triage::Migrate { resume: false }
        );
    }

    // Migration plans.

    #[test]
    fn missing_target_class_is_refused() {
        let claim = claim(Some("a"), None);
        let target = target();
        let facts = Facts {
            claim: &claim,
            volume: None,
            pods: &[],
            target: &target,
            target_exists: false,
        };
        assert_eq!(
            plan(facts, policies(InUsePolicy::Evict)),
            Err(Refusal::TargetMissing { class: "b".into() })
        );
    }

    #[test]
    fn unbound_claim_is_deleted_alone() {
        let plan = plan_for(
            &claim(Some("a"), None),
            None,
            &[],
            policies(InUsePolicy::Evict),
        )
        .unwrap();
        assert_eq!(plan.volume, VolumeStep::Unbound);
        assert_eq!(plan.uid, "claim-uid");
        assert_eq!(plan.from, "a");
        assert!(
            plan.strip_claim.is_empty()
                && plan.evict.is_empty()
                && plan.foreign_finalizers.is_empty()
        );
    }

    #[test]
    fn volume_already_gone() {
        let plan = plan_for(
            &claim(Some("a"), Some("pv-1")),
            None,
            &[],
            policies(InUsePolicy::Evict),
        )
        .unwrap();
        assert_eq!(
            plan.volume,
            VolumeStep::Gone {
                name: "pv-1".into()
            }
        );
    }

    #[test]
    fn delete_policy_waits_for_the_provisioner_and_keeps_its_finalizer() {
        let pv = volume(
            "Delete",
            "data",
            "claim-uid",
            &[
                "kubernetes.io/pv-protection",
                "external-provisioner.volume.kubernetes.io/finalizer",
            ],
        );
        let plan = plan_for(
            &claim(Some("a"), Some("pv-1")),
            Some(&pv),
            &[],
            policies(InUsePolicy::Evict),
        )
        .unwrap();
        let VolumeStep::Handle(volume) = plan.volume else {
            panic!("{plan:?}")
        };
        assert_eq!(volume.action, VolumeAction::AwaitReclaim);
        assert!(volume.strip.is_empty());
    }

    #[test]
    fn retain_policy_keeps_the_volume() {
        let pv = volume(
            "Retain",
            "data",
            "claim-uid",
            &["kubernetes.io/pv-protection"],
        );
        let plan = plan_for(
            &claim(Some("a"), Some("pv-1")),
            Some(&pv),
            &[],
            policies(InUsePolicy::Evict),
        )
        .unwrap();
        let VolumeStep::Handle(volume) = plan.volume else {
            panic!("{plan:?}")
        };
        assert_eq!(
            (volume.action, volume.reclaim_policy.as_str()),
            (VolumeAction::Keep, "Retain")
        );
    }

    #[test]
    fn retain_policy_deleted_on_request() {
        let pv = volume(
            "Retain",
            "data",
            "claim-uid",
            &["kubernetes.io/pv-protection"],
        );
        let mut policies = policies(InUsePolicy::Evict);
        policies.delete_retained_pv = true;
        let plan = plan_for(&claim(Some("a"), Some("pv-1")), Some(&pv), &[], policies).unwrap();
        let VolumeStep::Handle(volume) = plan.volume else {
            panic!("{plan:?}")
        };
        assert_eq!(volume.action, VolumeAction::Delete);
        assert!(volume.strip.is_empty());
    }

    #[test]
    fn strip_all_strips_claim_and_volume_and_deletes_the_volume() {
        let pv = volume(
            "Delete",
            "data",
            "claim-uid",
            &[
                "kubernetes.io/pv-protection",
                "external-provisioner.volume.kubernetes.io/finalizer",
            ],
        );
        let claim = with_finalizers(
            claim(Some("a"), Some("pv-1")),
            &[PVC_PROTECTION, "backup.example.com/hold"],
        );
        let mut policies = policies(InUsePolicy::Evict);
        policies.strip_all_finalizers = true;
        let plan = plan_for(&claim, Some(&pv), &[], policies).unwrap();
        assert_eq!(
            plan.strip_claim,
            [PVC_PROTECTION, "backup.example.com/hold"]
        );
        assert!(plan.foreign_finalizers.is_empty());
        let VolumeStep::Handle(volume) = plan.volume else {
            panic!("{plan:?}")
        };
        assert_eq!(volume.action, VolumeAction::Delete);
        assert_eq!(volume.strip.len(), 2);
    }

    #[test]
    fn volume_of_another_claim_is_refused() {
        for pv in [
            volume("Delete", "other", "claim-uid", &[]),
            volume("Delete", "data", "other-uid", &[]),
        ] {
            let refusal = plan_for(
                &claim(Some("a"), Some("pv-1")),
                Some(&pv),
                &[],
                policies(InUsePolicy::Evict),
            );
            assert!(
                matches!(refusal, Err(Refusal::VolumeOfAnotherClaim { .. })),
                "{refusal:?}"
            );
        }
        let mut unclaimed = volume("Delete", "data", "claim-uid", &[]);
        unclaimed.spec.as_mut().unwrap().claim_ref = None;
        let refusal = plan_for(
            &claim(Some("a"), Some("pv-1")),
            Some(&unclaimed),
            &[],
            policies(InUsePolicy::Evict),
        );
        assert_eq!(
            refusal.unwrap_err().to_string(),
            "PersistentVolume pv-1 is bound to no claim, not to this claim; it is not touched"
        );
    }

    #[test]
    fn foreign_finalizers_are_waited_for() {
        let claim = with_finalizers(
            claim(Some("a"), None),
            &[PVC_PROTECTION, "backup.example.com/hold"],
        );
        let plan = plan_for(&claim, None, &[], policies(InUsePolicy::Force)).unwrap();
        assert_eq!(plan.foreign_finalizers, ["backup.example.com/hold"]);
        assert!(
            plan.strip_claim.is_empty(),
            "no pods: pvc-protection goes by itself"
        );
    }

    #[test]
    fn only_scheduled_pods_naming_the_claim_count() {
        let pods = [
            pod("web-0", Some("node-1"), "data"),
            pod("pending", None, "data"),
            pod("other", Some("node-1"), "logs"),
        ];
        assert_eq!(
            pods_using("data", &pods),
            [PodUse {
                name: "web-0".into(),
                node: "node-1".into(),
                terminating: false
            }]
        );
    }

    #[test]
    fn in_use_evict_evicts_after_delete() {
        let pods = [pod("web-0", Some("node-1"), "data")];
        let plan = plan_for(
            &claim(Some("a"), None),
            None,
            &pods,
            policies(InUsePolicy::Evict),
        )
        .unwrap();
        assert_eq!(plan.evict, ["web-0"]);
        assert!(plan.strip_claim.is_empty());
    }

    #[test]
    fn in_use_evict_skips_pods_already_terminating() {
        let mut terminating = pod("web-0", Some("node-1"), "data");
        terminating.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        let plan = plan_for(
            &claim(Some("a"), None),
            None,
            &[terminating],
            policies(InUsePolicy::Evict),
        )
        .unwrap();
        assert!(plan.evict.is_empty());
        assert_eq!(plan.users.len(), 1);
    }

    #[test]
    fn in_use_force_strips_pvc_protection() {
        let pods = [pod("web-0", Some("node-1"), "data")];
        let plan = plan_for(
            &claim(Some("a"), None),
            None,
            &pods,
            policies(InUsePolicy::Force),
        )
        .unwrap();
        assert_eq!(plan.strip_claim, [PVC_PROTECTION]);
        assert!(plan.evict.is_empty());
    }

    #[test]
    fn in_use_fail_refuses() {
        let pods = [pod("web-0", Some("node-1"), "data")];
        let refusal = plan_for(
            &claim(Some("a"), None),
            None,
            &pods,
            policies(InUsePolicy::Fail),
        )
        .unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "in use by pod web-0 on node node-1 (--in-use fail); stop them or choose --in-use evict"
        );
    }

    #[test]
    fn leftovers_are_marked_released_volumes_of_the_claim() {
        let mut policies = policies(InUsePolicy::Evict);
        policies.delete_retained_pv = true;
        let marked = |phase: &str, mark: &str| {
            let mut pv = volume("Retain", "data", "old-uid", &[]);
            pv.metadata.annotations =
                Some([(DELETE_AFTER_CLAIM.to_owned(), mark.to_owned())].into());
            pv.status = Some(k8s_openapi::api::core::v1::PersistentVolumeStatus {
                phase: Some(phase.into()),
                ..Default::default()
            });
            pv
        };
        let found = leftovers(NS, "data", &[marked("Released", "apps/data")], policies);
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].action, found[0].claim_uid.as_str()),
            (VolumeAction::Delete, "old-uid")
        );
        assert_eq!(
            leftovers(NS, "data", &[marked("Bound", "apps/data")], policies).len(),
            1
        );
        assert!(leftovers(NS, "data", &[marked("Released", "apps/other")], policies).is_empty());
        assert!(
            leftovers(
                NS,
                "data",
                &[volume("Retain", "data", "old-uid", &[])],
                policies
            )
            .is_empty()
        );
        assert!(writes_volumes(policies));
        assert!(!writes_volumes(super::tests::policies(InUsePolicy::Evict)));
    }

    #[test]
    fn a_volume_replaced_or_rebound_is_no_longer_ours() {
        let pv = volume("Retain", "data", "claim-uid", &[]);
        let plan = volume_plan(&pv, "claim-uid", policies(InUsePolicy::Evict));
        assert!(plan.still_ours(&pv, NS, "data"));
        let mut replaced = pv.clone();
        replaced.metadata.uid = Some("other-pv-uid".into());
        assert!(!plan.still_ours(&replaced, NS, "data"));
        let rebound = volume("Retain", "data", "new-claim-uid", &[]);
        assert!(!plan.still_ours(&rebound, NS, "data"));
        assert!(!plan.still_ours(&pv, "elsewhere", "data"));
    }

    #[test]
    fn in_use_fail_without_pods_migrates() {
        let pods = [pod("pending", None, "data")];
        assert!(
            plan_for(
                &claim(Some("a"), None),
                None,
                &pods,
                policies(InUsePolicy::Fail)
            )
            .is_ok()
        );
    }
}
