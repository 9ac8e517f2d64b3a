//! The decision layer: given what the API returned for a claim, its volume, the pods that use it
//! and the budgets that cover them, what to do. No I/O here; every row of the decision table is
//! a unit test below.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use crate::class::Target;
use crate::config::{InUsePolicy, Policies};

/// Added to every claim by admission; the pvc-protection controller removes it once no scheduled
/// pod uses the claim.
pub const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";

/// Put on a volume, with the claim's `namespace/name/uid`, before a claim whose volume this run
/// will write is itself deleted: a run interrupted after the claim went finds the volume by it.
pub const DELETE_AFTER_CLAIM: &str = "storageclass-migrate/delete-after-claim";

/// The class of a claim made before `spec.storageClassName` existed.
pub const BETA_CLASS_ANNOTATION: &str = "volume.beta.kubernetes.io/storage-class";

/// Helm's ownership annotations on every object of a release.
pub const RELEASE_NAME_ANNOTATION: &str = "meta.helm.sh/release-name";
pub const RELEASE_NAMESPACE_ANNOTATION: &str = "meta.helm.sh/release-namespace";

/// Why a claim needs nothing done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nothing {
    /// No such claim: a fresh install.
    Absent,
    /// `storageClassName` is nil: nil to a name is the one change the API allows, Helm applies it.
    NilClass,
    /// Already on the desired class.
    OnTarget,
    /// No class desired: the chart omits the field, and Helm leaves an omitted field alone.
    Unset,
}

impl fmt::Display for Nothing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Nothing::Absent => "claim absent",
            Nothing::NilClass => "storageClassName is unset, Helm can set it",
            Nothing::OnTarget => "already on the desired class",
            Nothing::Unset => {
                "no class desired: the chart leaves storageClassName out and Helm leaves it alone (name a class to move claims to it)"
            }
        })
    }
}

/// The first look at a claim, before its volume and pods are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Triage {
    Nothing(Nothing),
    /// Migrate the claim. `resume` when it is already being deleted (a previous run, or someone
    /// else): it is waited out whatever its class, so Helm never applies a dying claim.
    /// `class_change` when its class differs from the desired one.
    Migrate {
        resume: bool,
        class_change: bool,
    },
}

pub fn triage(claim: Option<&PersistentVolumeClaim>, target: Option<&Target>) -> Triage {
    let Some(claim) = claim else {
        return Triage::Nothing(Nothing::Absent);
    };
    let class = claim_class(claim);
    let class_change = match (target, class) {
        (Some(target), Some(class)) => class != target.class_name(),
        _ => false,
    };
    if claim.metadata.deletion_timestamp.is_some() {
        return Triage::Migrate {
            resume: true,
            class_change,
        };
    }
    match (target, class) {
        (None, _) => Triage::Nothing(Nothing::Unset),
        (_, None) => Triage::Nothing(Nothing::NilClass),
        _ if !class_change => Triage::Nothing(Nothing::OnTarget),
        _ => Triage::Migrate {
            resume: false,
            class_change,
        },
    }
}

/// The claim's class: its spec, else (a claim older than the field) the beta annotation, which
/// the API then holds a new `storageClassName` to.
pub fn claim_class(claim: &PersistentVolumeClaim) -> Option<&str> {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .or_else(|| {
            claim
                .metadata
                .annotations
                .as_ref()?
                .get(BETA_CLASS_ANNOTATION)
                .map(String::as_str)
        })
}

pub fn claim_volume(claim: &PersistentVolumeClaim) -> Option<&str> {
    claim
        .spec
        .as_ref()?
        .volume_name
        .as_deref()
        .filter(|name| !name.is_empty())
}

/// Why a claim that a selector matched is left out of the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutOfScope {
    /// Not part of the release (Helm's annotations name another release, or none).
    OtherRelease { owner: Option<String> },
    /// Created by a StatefulSet from its volumeClaimTemplates.
    StatefulSet { name: String },
}

impl fmt::Display for OutOfScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutOfScope::OtherRelease { owner: Some(owner) } => {
                write!(f, "belongs to release {owner}")
            }
            OutOfScope::OtherRelease { owner: None } => f.write_str("not part of a Helm release"),
            OutOfScope::StatefulSet { name } => {
                write!(f, "made by StatefulSet {name} from its template")
            }
        }
    }
}

/// Whether a claim that a selector picked is the release's own: Helm's ownership annotations
/// name the release and its namespace, and no StatefulSet made it.
pub fn in_release(
    claim: &PersistentVolumeClaim,
    release: &str,
    namespace: &str,
) -> Result<(), OutOfScope> {
    if let Some(owner) = claim
        .owner_references()
        .iter()
        .find(|o| o.kind == "StatefulSet")
    {
        return Err(OutOfScope::StatefulSet {
            name: owner.name.clone(),
        });
    }
    let annotations = claim.annotations();
    let name = annotations.get(RELEASE_NAME_ANNOTATION);
    let ns = annotations.get(RELEASE_NAMESPACE_ANNOTATION);
    if name.map(String::as_str) == Some(release) && ns.map(String::as_str) == Some(namespace) {
        return Ok(());
    }
    Err(OutOfScope::OtherRelease {
        owner: name.map(|n| format!("{}/{n}", ns.map(String::as_str).unwrap_or("?"))),
    })
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

/// Pods to evict: scheduled users of the claim that are not already going.
pub fn to_evict(claim_name: &str, pods: &[Pod]) -> Vec<String> {
    pods_using(claim_name, pods)
        .into_iter()
        .filter(|u| !u.terminating)
        .map(|u| u.name)
        .collect()
}

/// A PodDisruptionBudget that would refuse the evictions of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetShort {
    pub budget: String,
    pub allowed: i32,
    pub pods: Vec<String>,
    /// Pods it covers that have no controller (none, or their StatefulSet is deleted first)
    /// while it counts pods through their controllers: the disruption controller leaves them
    /// out, and with no pod counted it allows no disruption.
    pub uncounted: Vec<String>,
}

impl fmt::Display for BudgetShort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.uncounted.is_empty() {
            return write!(
                f,
                "PodDisruptionBudget {} counts its pods through their controller (maxUnavailable \
                 or a percentage minAvailable), and pod(s) {} have none (or lose it when their \
                 StatefulSet is deleted): it does not count them and allows no disruption (an \
                 integer minAvailable counts pods without a controller)",
                self.budget,
                self.uncounted.join(", ")
            );
        }
        write!(
            f,
            "PodDisruptionBudget {} allows {} disruption(s) but pod(s) {} would have to be evicted",
            self.budget,
            self.allowed,
            self.pods.join(", ")
        )
    }
}

/// Whether the disruption controller counts a budget's pods through their controllers' scale
/// (`maxUnavailable`, or `minAvailable` as a percentage): pods without a controller count for
/// nothing, and a budget whose pods have none allows no disruption.
fn counts_through_controllers(spec: &PodDisruptionBudgetSpec) -> bool {
    spec.max_unavailable.is_some() || matches!(spec.min_available, Some(IntOrString::String(_)))
}

fn has_controller(pod: &Pod) -> bool {
    pod.owner_references()
        .iter()
        .any(|o| o.controller == Some(true))
}

/// `pods` as they will be once StatefulSet `set` is deleted with `propagationPolicy: Orphan`:
/// without that controller.
pub fn orphaned_from(pods: Vec<Pod>, set: &str) -> Vec<Pod> {
    pods.into_iter()
        .map(|mut pod| {
            if let Some(owners) = pod.metadata.owner_references.as_mut() {
                owners.retain(|o| {
                    !(o.controller == Some(true) && o.kind == "StatefulSet" && o.name == set)
                });
            }
            pod
        })
        .collect()
}

/// Disruptions of each budget (by name) that claims of the run already planned to use.
pub type BudgetUse = BTreeMap<String, i32>;

/// The budgets that the evictions would break, as the Eviction API would judge them one by one:
/// a Ready pod consumes one of the budget's allowed disruptions (less those that other claims of
/// the run already planned to use); a pod that is not Ready may go only when the budget is healthy
/// (or its policy is `AlwaysAllow`). Also returns the disruptions this plan uses.
pub fn budgets_short(
    evict: &[String],
    pods: &[Pod],
    budgets: &[PodDisruptionBudget],
    reserved: &BudgetUse,
) -> (Vec<BudgetShort>, BudgetUse) {
    let mut short = Vec::new();
    let mut uses = BudgetUse::new();
    for budget in budgets {
        let Some(spec) = budget.spec.as_ref() else {
            continue;
        };
        let Some(selector) = spec.selector.as_ref() else {
            continue;
        };
        let covered: Vec<&Pod> = pods
            .iter()
            .filter(|p| evict.contains(&p.name_any()))
            .filter(|p| selects(selector, p.labels()))
            .collect();
        if covered.is_empty() {
            continue;
        }
        let name = budget.name_any();
        if counts_through_controllers(spec) {
            let uncounted: Vec<String> = covered
                .iter()
                .filter(|p| !has_controller(p))
                .map(|p| p.name_any())
                .collect();
            if !uncounted.is_empty() {
                short.push(BudgetShort {
                    budget: name,
                    allowed: 0,
                    pods: covered.iter().map(|p| p.name_any()).collect(),
                    uncounted,
                });
                continue;
            }
        }
        let status = budget.status.as_ref();
        let allowed =
            status.map_or(0, |s| s.disruptions_allowed) - reserved.get(&name).copied().unwrap_or(0);
        let healthy = status.is_some_and(|s| s.current_healthy >= s.desired_healthy);
        let always = spec.unhealthy_pod_eviction_policy.as_deref() == Some("AlwaysAllow");
        let ready = covered.iter().filter(|p| is_ready(p)).count();
        let unready_blocked = ready < covered.len() && !always && !healthy;
        if ready as i64 > i64::from(allowed) || unready_blocked {
            short.push(BudgetShort {
                budget: name,
                allowed: allowed.max(0),
                pods: covered.iter().map(|p| p.name_any()).collect(),
                uncounted: Vec::new(),
            });
        } else if ready > 0 {
            uses.insert(name, ready as i32);
        }
    }
    (short, uses)
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Whether a label selector selects these labels; an empty selector selects everything.
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    by_labels && by_expressions
}

/// Why a migration is refused before anything is changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    TargetMissing {
        class: String,
    },
    VolumeOfAnotherClaim {
        volume: String,
        owner: String,
    },
    InUse {
        pods: Vec<PodUse>,
    },
    /// PodDisruptionBudgets would refuse the evictions.
    Budgets(Vec<BudgetShort>),
    /// The Eviction API refused an eviction (429): a budget, named where the API named it.
    EvictionRefused {
        pod: String,
        message: String,
    },
    /// The claim was replaced after it was read.
    ClaimReplaced {
        uid: String,
    },
    /// The volume was rebound or replaced after it was read.
    VolumeRebound {
        volume: String,
    },
    /// Admission (a webhook, a policy, validation) rejected a write of the plan.
    Rejected {
        request: String,
        message: String,
    },
    /// The data policy (copy, snapshot) cannot keep this claim's data.
    CannotKeep {
        reason: String,
    },
    /// Ready, but held back: other claims of the run could not go through, and a run changes
    /// nothing unless every claim can.
    HeldBack {
        claims: Vec<String>,
    },
    /// A `--statefulset` run cannot go on (which template, the StatefulSet replaced, ...).
    StatefulSet(crate::statefulset::plan::SetRefusal),
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
            Refusal::Budgets(short) => write!(
                f,
                "{}; scale the workload down, relax the budget, or choose --in-use force",
                join(short)
            ),
            Refusal::EvictionRefused { pod, message } => write!(
                f,
                "eviction of pod {pod} refused: {message}; scale the workload down, relax the budget, or choose --in-use force"
            ),
            Refusal::ClaimReplaced { uid } => write!(
                f,
                "the claim was replaced after it was read (uid {uid} is gone); the new claim is not deleted, run again to evaluate it"
            ),
            Refusal::VolumeRebound { volume } => write!(
                f,
                "PV {volume} no longer belongs to the claim (bound elsewhere meanwhile); it is not touched"
            ),
            Refusal::Rejected { request, message } => {
                write!(f, "{request} was rejected: {message}")
            }
            Refusal::CannotKeep { reason } => write!(
                f,
                "cannot keep the data: {reason}; nothing was changed (DATA_POLICY=delete replaces the volume instead)"
            ),
            Refusal::HeldBack { claims } => write!(
                f,
                "held back: {} of this run could not go through, and a run changes nothing unless every claim can",
                claims.join(", ")
            ),
            Refusal::StatefulSet(refusal) => refusal.fmt(f),
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

impl VolumeStep {
    pub fn plan(&self) -> Option<&VolumePlan> {
        match self {
            VolumeStep::Handle(volume) => Some(volume),
            _ => None,
        }
    }
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
    /// Finalizers to strip after deleting it (`--strip-all-finalizers` only).
    pub strip: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeAction {
    /// Reclaim policy Delete: its provisioner deletes the backing volume, then the object.
    AwaitReclaim,
    /// Retain: keep it, so its data can be recovered.
    Keep,
    /// Recycle: the recycler wipes its data and offers it to new claims.
    Recycle,
    /// Retain with `--delete-retained-pv`: switch its reclaim policy to Delete, so that its
    /// provisioner deletes the backing storage too, then wait as for Delete.
    ReclaimByDelete,
    /// Delete the object (`--strip-all-finalizers`), then strip its finalizers.
    Delete,
}

impl VolumePlan {
    /// Whether this run writes the volume after the claim is gone, and so marks it first.
    pub fn marked(&self) -> bool {
        matches!(
            self.action,
            VolumeAction::ReclaimByDelete | VolumeAction::Delete
        )
    }

    /// Whether the run waits for the volume to go.
    pub fn waited(&self) -> bool {
        !matches!(self.action, VolumeAction::Keep | VolumeAction::Recycle)
    }

    /// Whether `volume`, read again, is still the one planned for: same uid, and its claimRef
    /// still names the claim read then. Checked before every write to a volume.
    pub fn still_ours(&self, volume: &PersistentVolume, namespace: &str, claim: &str) -> bool {
        volume.uid().as_deref() == Some(self.uid.as_str())
            && owned_by(volume, namespace, claim, &self.claim_uid)
    }
}

/// The migration of one claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub claim: String,
    pub uid: String,
    pub from: String,
    /// The claim is already being deleted: a previous run stopped part-way, or someone else.
    pub resume: bool,
    pub users: Vec<PodUse>,
    /// Pods to evict after the claim is deleted (with those that appear meanwhile).
    pub evict: Vec<String>,
    /// Finalizers to strip from the claim after it is deleted.
    pub strip_claim: Vec<String>,
    /// Finalizers of other controllers on the claim, waited for.
    pub foreign_finalizers: Vec<String>,
    pub volume: VolumeStep,
    /// Disruptions of each budget that the evictions use.
    pub budget_use: BudgetUse,
    /// With `--data copy`: the data is copied to the new class before the claim is made again.
    pub keep: Option<crate::keep::Record>,
}

/// Everything read from the API about a claim that needs migrating.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub claim: &'a PersistentVolumeClaim,
    pub volume: Option<&'a PersistentVolume>,
    /// Pods of the namespace (those naming the claim are enough).
    pub pods: &'a [Pod],
    /// PodDisruptionBudgets of the namespace (read when pods are to be evicted).
    pub budgets: &'a [PodDisruptionBudget],
    /// Disruptions that other claims of the run already planned to use.
    pub reserved: &'a BudgetUse,
    pub target: Option<&'a Target>,
    pub target_exists: bool,
    /// Whether the claim's class differs from the desired one. A claim that is only being waited
    /// out (deleted by someone else while on the desired class) keeps its volume's fate to its
    /// reclaim policy.
    pub class_change: bool,
}

pub fn plan(facts: Facts<'_>, policies: Policies) -> Result<Plan, Refusal> {
    let claim = facts.claim;
    // A claim only waited out (not moving class) is never stripped, nor its volume deleted.
    let policies = if facts.class_change {
        policies
    } else {
        Policies {
            delete_retained_pv: false,
            strip_all_finalizers: false,
            ..policies
        }
    };
    if facts.class_change
        && !facts.target_exists
        && let Some(target) = facts.target
    {
        return Err(Refusal::TargetMissing {
            class: target.class_name().to_owned(),
        });
    }
    let volume = volume_step(facts, policies)?;
    let name = claim.name_any();
    let users = pods_using(&name, facts.pods);
    if !users.is_empty() && policies.in_use == InUsePolicy::Fail {
        return Err(Refusal::InUse { pods: users });
    }
    let evict = match policies.in_use {
        InUsePolicy::Evict => to_evict(&name, facts.pods),
        _ => Vec::new(),
    };
    let (short, budget_use) = budgets_short(&evict, facts.pods, facts.budgets, facts.reserved);
    if !short.is_empty() {
        return Err(Refusal::Budgets(short));
    }
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
        claim: name,
        uid: claim.uid().unwrap_or_default(),
        from: claim_class(claim).unwrap_or_default().to_owned(),
        resume: claim.metadata.deletion_timestamp.is_some(),
        users,
        evict,
        strip_claim,
        foreign_finalizers,
        volume,
        budget_use,
        keep: None,
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
        "Recycle" => VolumeAction::Recycle,
        _ if policies.delete_retained_pv => VolumeAction::ReclaimByDelete,
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

/// Whether a run may write volumes after their claims are gone: only then does it mark them, and
/// only then does it look for volumes that an interrupted run marked.
pub fn writes_volumes(policies: Policies) -> bool {
    policies.delete_retained_pv || policies.strip_all_finalizers
}

/// The mark of a volume to be written once its claim is gone: the claim's namespace, name and uid.
pub fn mark(namespace: &str, claim: &str, claim_uid: &str) -> String {
    format!("{namespace}/{claim}/{claim_uid}")
}

/// A volume that an interrupted run marked, with the claim it was marked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    pub claim: String,
    pub volume: VolumePlan,
}

/// Volumes that an interrupted run marked for a claim of `namespace` (any claim, or only
/// `claims` when given) and whose claimRef still names that very claim, uid included: the
/// binder may not have marked them Released yet. Planned by today's policies.
pub fn leftovers(
    namespace: &str,
    claims: Option<&[String]>,
    volumes: &[PersistentVolume],
    policies: Policies,
) -> Vec<Leftover> {
    volumes
        .iter()
        .filter_map(|v| {
            let value = v.annotations().get(DELETE_AFTER_CLAIM)?;
            let mut parts = value.splitn(3, '/');
            let (ns, claim, uid) = (parts.next()?, parts.next()?, parts.next()?);
            let wanted = claims.is_none_or(|names| names.iter().any(|n| n == claim));
            (ns == namespace && wanted && owned_by(v, ns, claim, uid)).then(|| Leftover {
                claim: claim.to_owned(),
                volume: volume_plan(v, uid, policies),
            })
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
    use crate::config::DataPolicy;
    use k8s_openapi::api::core::v1::{
        ObjectReference, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource,
        PersistentVolumeSpec, PodSpec, Volume,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use k8s_openapi::jiff::Timestamp;

    const NS: &str = "apps";
    const MIGRATE: Triage = Triage::Migrate {
        resume: false,
        class_change: true,
    };

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
            data: DataPolicy::Delete,
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
                budgets: &[],
                reserved: &BudgetUse::new(),
                target: Some(&target),
                target_exists: true,
                class_change: true,
            },
            policies,
        )
    }

    // Decision table, first look.

    #[test]
    fn absent_claim_needs_nothing() {
        assert_eq!(
            triage(None, Some(&target())),
            Triage::Nothing(Nothing::Absent)
        );
    }

    #[test]
    fn nil_class_needs_nothing() {
        assert_eq!(
            triage(Some(&claim(None, None)), Some(&target())),
            Triage::Nothing(Nothing::NilClass)
        );
    }

    #[test]
    fn claim_on_desired_class_needs_nothing() {
        assert_eq!(
            triage(Some(&claim(Some("b"), None)), Some(&target())),
            Triage::Nothing(Nothing::OnTarget)
        );
        let no_class = claim(Some(""), None);
        assert_eq!(
            triage(Some(&no_class), Some(&Target::NoClass)),
            Triage::Nothing(Nothing::OnTarget)
        );
    }

    #[test]
    fn claim_being_deleted_resumes() {
        let claim = deleting(claim(Some("a"), Some("pv-1")));
        assert_eq!(
            triage(Some(&claim), Some(&target())),
            Triage::Migrate {
                resume: true,
                class_change: true
            }
        );
        let plan = plan_for(&claim, None, &[], policies(InUsePolicy::Evict)).unwrap();
        assert!(plan.resume);
    }

    #[test]
    fn claim_on_another_class_migrates() {
        assert_eq!(
            triage(Some(&claim(Some("a"), None)), Some(&target())),
            MIGRATE
        );
        let no_class = claim(Some(""), None);
        assert_eq!(triage(Some(&no_class), Some(&target())), MIGRATE);
        let named = claim(Some("a"), None);
        assert_eq!(triage(Some(&named), Some(&Target::NoClass)), MIGRATE);
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
            budgets: &[],
            reserved: &BudgetUse::new(),
            target: Some(&target),
            target_exists: false,
            class_change: true,
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
    fn retain_policy_deleted_on_request_is_reclaimed_through_the_provisioner() {
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
        assert_eq!(volume.action, VolumeAction::ReclaimByDelete);
        assert!(volume.marked());
        assert!(volume.strip.is_empty());
    }

    #[test]
    fn recycle_is_not_kept() {
        let pv = volume("Recycle", "data", "claim-uid", &[]);
        let plan = plan_for(
            &claim(Some("a"), Some("pv-1")),
            Some(&pv),
            &[],
            policies(InUsePolicy::Evict),
        )
        .unwrap();
        assert_eq!(plan.volume.plan().unwrap().action, VolumeAction::Recycle);
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
        let data = ["data".to_owned()];
        let found = leftovers(
            NS,
            Some(&data),
            &[marked("Released", "apps/data/old-uid")],
            policies,
        );
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].volume.action, found[0].volume.claim_uid.as_str()),
            (VolumeAction::ReclaimByDelete, "old-uid")
        );
        assert_eq!(found[0].claim, "data");
        let bound = [marked("Bound", "apps/data/old-uid")];
        assert_eq!(leftovers(NS, Some(&data), &bound, policies).len(), 1);
        assert_eq!(
            leftovers(NS, None, &bound, policies).len(),
            1,
            "a selector run finishes it too"
        );
        let other = [marked("Released", "apps/other/old-uid")];
        assert!(leftovers(NS, Some(&data), &other, policies).is_empty());
        let rebound = [marked("Released", "apps/data/a-newer-uid")];
        assert!(
            leftovers(NS, None, &rebound, policies).is_empty(),
            "the mark's uid must be the claimRef's"
        );
        let unmarked = [volume("Retain", "data", "old-uid", &[])];
        assert!(leftovers(NS, None, &unmarked, policies).is_empty());
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

    // Unset class, legacy claims, claims being deleted.

    #[test]
    fn an_unset_class_needs_nothing() {
        assert_eq!(
            triage(Some(&claim(Some("a"), Some("pv-1"))), None),
            Triage::Nothing(Nothing::Unset)
        );
    }

    #[test]
    fn a_legacy_claim_is_judged_by_its_beta_annotation() {
        let mut legacy = claim(None, None);
        legacy.metadata.annotations =
            Some([(BETA_CLASS_ANNOTATION.to_owned(), "a".to_owned())].into());
        assert_eq!(claim_class(&legacy), Some("a"));
        assert_eq!(triage(Some(&legacy), Some(&target())), MIGRATE);
        let on_target = claim_class_annotated("b");
        assert_eq!(
            triage(Some(&on_target), Some(&target())),
            Triage::Nothing(Nothing::OnTarget)
        );
    }

    fn claim_class_annotated(class: &str) -> PersistentVolumeClaim {
        let mut legacy = claim(None, None);
        legacy.metadata.annotations =
            Some([(BETA_CLASS_ANNOTATION.to_owned(), class.to_owned())].into());
        legacy
    }

    #[test]
    fn a_claim_being_deleted_is_waited_out_whatever_its_class() {
        for (class, target, class_change) in [
            (Some("b"), Some(target()), false),
            (None, Some(target()), false),
            (Some("a"), None, false),
            (Some("a"), Some(target()), true),
        ] {
            assert_eq!(
                triage(Some(&deleting(claim(class, None))), target.as_ref()),
                Triage::Migrate {
                    resume: true,
                    class_change
                },
                "{class:?} {target:?}"
            );
        }
    }

    #[test]
    fn waiting_out_a_claim_never_deletes_its_volume() {
        let pv = volume(
            "Retain",
            "data",
            "claim-uid",
            &["kubernetes.io/pv-protection"],
        );
        let claim = deleting(claim(Some("b"), Some("pv-1")));
        let target = target();
        let facts = Facts {
            claim: &claim,
            volume: Some(&pv),
            pods: &[],
            budgets: &[],
            reserved: &BudgetUse::new(),
            target: Some(&target),
            target_exists: false,
            class_change: false,
        };
        let policies = Policies {
            in_use: InUsePolicy::Evict,
            delete_retained_pv: true,
            strip_all_finalizers: true,
            data: DataPolicy::Delete,
        };
        let plan = plan(facts, policies).unwrap();
        assert!(plan.resume);
        assert_eq!(plan.volume.plan().unwrap().action, VolumeAction::Keep);
    }

    // Budgets.

    fn ready(mut pod: Pod, labels: &[(&str, &str)], ready: bool) -> Pod {
        pod.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        pod.status = Some(k8s_openapi::api::core::v1::PodStatus {
            conditions: Some(vec![k8s_openapi::api::core::v1::PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        pod
    }

    fn budget(name: &str, app: &str, allowed: i32, healthy: (i32, i32)) -> PodDisruptionBudget {
        use k8s_openapi::api::policy::v1::{PodDisruptionBudgetSpec, PodDisruptionBudgetStatus};
        PodDisruptionBudget {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(PodDisruptionBudgetSpec {
                selector: Some(LabelSelector {
                    match_labels: Some([("app".to_owned(), app.to_owned())].into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: Some(PodDisruptionBudgetStatus {
                disruptions_allowed: allowed,
                current_healthy: healthy.0,
                desired_healthy: healthy.1,
                expected_pods: healthy.0,
                ..Default::default()
            }),
        }
    }

    fn plan_with_budgets(pods: &[Pod], budgets: &[PodDisruptionBudget]) -> Result<Plan, Refusal> {
        plan_reserved(pods, budgets, &BudgetUse::new())
    }

    fn plan_reserved(
        pods: &[Pod],
        budgets: &[PodDisruptionBudget],
        reserved: &BudgetUse,
    ) -> Result<Plan, Refusal> {
        let claim = claim(Some("a"), None);
        let target = target();
        plan(
            Facts {
                claim: &claim,
                volume: None,
                pods,
                budgets,
                reserved,
                target: Some(&target),
                target_exists: true,
                class_change: true,
            },
            policies(InUsePolicy::Evict),
        )
    }

    #[test]
    fn a_budget_allowing_no_disruption_refuses() {
        let pods = [ready(
            pod("web-0", Some("n"), "data"),
            &[("app", "web")],
            true,
        )];
        let refusal = plan_with_budgets(&pods, &[budget("web", "web", 0, (1, 1))]).unwrap_err();
        assert_eq!(
            refusal,
            Refusal::Budgets(vec![BudgetShort {
                budget: "web".into(),
                allowed: 0,
                pods: vec!["web-0".into()],
                uncounted: vec![],
            }])
        );
    }

    /// A Ready pod `db-<n>` labelled `app: db`, using its claim, controlled by StatefulSet db.
    fn set_pod(n: u32) -> Pod {
        let mut p = ready(
            pod(&format!("db-{n}"), Some("n"), "data"),
            &[("app", "db")],
            true,
        );
        p.metadata.owner_references = Some(vec![
            serde_json::from_value(serde_json::json!({
                "apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "set-uid",
                "controller": true,
            }))
            .unwrap(),
        ]);
        p
    }

    /// Budget `db` on the pods of StatefulSet db, one Ready pod, with `spec` as given.
    fn db_budget(spec: serde_json::Value) -> PodDisruptionBudget {
        let mut b = budget("db", "db", 1, (1, 0));
        let mut full = serde_json::to_value(b.spec.take().unwrap()).unwrap();
        for (k, v) in spec.as_object().unwrap() {
            full[k] = v.clone();
        }
        b.spec = Some(serde_json::from_value(full).unwrap());
        b
    }

    #[test]
    fn a_budget_counting_through_the_controller_refuses_pods_the_orphaning_leaves_without_one() {
        let pods = [set_pod(0)];
        for spec in [
            serde_json::json!({"maxUnavailable": 1}),
            serde_json::json!({"maxUnavailable": "100%"}),
            serde_json::json!({"minAvailable": "0%"}),
        ] {
            let budgets = [db_budget(spec.clone())];
            // With their StatefulSet the budget allows the eviction.
            assert!(plan_with_budgets(&pods, &budgets).is_ok(), "{spec}");
            // Orphaned, the disruption controller no longer counts the pod.
            let orphaned = orphaned_from(pods.to_vec(), "db");
            let refusal = plan_with_budgets(&orphaned, &budgets).unwrap_err();
            let Refusal::Budgets(short) = &refusal else {
                panic!("{spec}: {refusal:?}");
            };
            assert_eq!(short[0].uncounted, ["db-0"], "{spec}");
            assert!(
                refusal.to_string().contains("allows no disruption"),
                "{refusal}"
            );
        }
    }

    #[test]
    fn an_integer_min_available_counts_orphaned_pods() {
        let budgets = [db_budget(serde_json::json!({"minAvailable": 0}))];
        let orphaned = orphaned_from(vec![set_pod(0)], "db");
        assert!(plan_with_budgets(&orphaned, &budgets).is_ok());
    }

    #[test]
    fn orphaning_removes_only_that_statefulsets_controller_reference() {
        let other = orphaned_from(vec![set_pod(0)], "web");
        assert_eq!(other[0].owner_references().len(), 1);
        let orphaned = orphaned_from(vec![set_pod(0)], "db");
        assert!(orphaned[0].owner_references().is_empty());
    }

    #[test]
    fn a_budget_is_judged_on_all_the_pods_it_covers() {
        let pods: Vec<Pod> = (0..3)
            .map(|i| {
                ready(
                    pod(&format!("web-{i}"), Some("n"), "data"),
                    &[("app", "web")],
                    true,
                )
            })
            .collect();
        assert!(matches!(
            plan_with_budgets(&pods, &[budget("web", "web", 1, (3, 2))]),
            Err(Refusal::Budgets(_))
        ));
        let plan = plan_with_budgets(&pods, &[budget("web", "web", 3, (3, 0))]).unwrap();
        assert_eq!(plan.evict.len(), 3);
        let plan = plan_with_budgets(&pods, &[budget("db", "db", 0, (1, 1))]).unwrap();
        assert_eq!(plan.evict.len(), 3, "a budget of other pods does not apply");
    }

    #[test]
    fn disruptions_planned_by_other_claims_of_the_run_count() {
        let pods = [ready(
            pod("web-0", Some("n"), "data"),
            &[("app", "web")],
            true,
        )];
        let budgets = [budget("web", "web", 1, (3, 2))];
        let plan = plan_with_budgets(&pods, &budgets).unwrap();
        assert_eq!(plan.budget_use, BudgetUse::from([("web".to_owned(), 1)]));
        let refusal = plan_reserved(&pods, &budgets, &plan.budget_use).unwrap_err();
        assert!(
            refusal
                .to_string()
                .starts_with("PodDisruptionBudget web allows 0 disruption(s)"),
            "{refusal}"
        );
    }

    #[test]
    fn an_unready_pod_goes_while_its_budget_is_healthy() {
        let pods = [ready(
            pod("web-0", Some("n"), "data"),
            &[("app", "web")],
            false,
        )];
        assert!(plan_with_budgets(&pods, &[budget("web", "web", 0, (2, 2))]).is_ok());
        assert!(plan_with_budgets(&pods, &[budget("web", "web", 0, (1, 2))]).is_err());
    }

    #[test]
    fn label_selectors_match_as_the_api_does() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
        let labels: BTreeMap<String, String> = [("app".to_owned(), "web".to_owned())].into();
        let expression = |key: &str, operator: &str, values: &[&str]| LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.into(),
                operator: operator.into(),
                values: Some(values.iter().map(|v| v.to_string()).collect()),
            }]),
            ..Default::default()
        };
        assert!(selects(&LabelSelector::default(), &labels));
        assert!(selects(&expression("app", "In", &["web", "db"]), &labels));
        assert!(!selects(&expression("app", "NotIn", &["web"]), &labels));
        assert!(selects(&expression("tier", "DoesNotExist", &[]), &labels));
        assert!(!selects(&expression("tier", "Exists", &[]), &labels));
    }

    // Selector scope.

    #[test]
    fn a_selector_keeps_only_the_release_own_claims() {
        let mut owned = claim(Some("a"), None);
        owned.metadata.annotations = Some(
            [
                (RELEASE_NAME_ANNOTATION.to_owned(), "app".to_owned()),
                (RELEASE_NAMESPACE_ANNOTATION.to_owned(), NS.to_owned()),
            ]
            .into(),
        );
        assert_eq!(in_release(&owned, "app", NS), Ok(()));
        assert_eq!(
            in_release(&owned, "other", NS),
            Err(OutOfScope::OtherRelease {
                owner: Some("apps/app".into())
            })
        );
        assert!(in_release(&owned, "app", "elsewhere").is_err());
        assert_eq!(
            in_release(&claim(Some("a"), None), "app", NS),
            Err(OutOfScope::OtherRelease { owner: None })
        );
        owned.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                kind: "StatefulSet".into(),
                name: "db".into(),
                ..Default::default()
            },
        ]);
        assert_eq!(
            in_release(&owned, "app", NS),
            Err(OutOfScope::StatefulSet { name: "db".into() })
        );
    }
}
