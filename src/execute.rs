//! One executor for a plan: run as the pre-flight, every write goes out with `dryRun=All` and
//! nothing is waited for; run for real, the same writes in the same order, each waited out.
//! A run commits only after its pre-flight went through whole.

use tokio::time::Instant;
use tracing::warn;

use crate::api::Cluster;
use crate::config::{InUsePolicy, KeepSettings, Policies};
use crate::decision::{self, Plan, VolumePlan, join};
use crate::error::Error;
use crate::summary::{Kind, Report};
use crate::{claim, eviction, keep, volume};

/// How the data of `--data copy`, `snapshot` or `auto` is kept, and until when the run may wait
/// for it.
#[derive(Debug, Clone, Copy)]
pub struct Keeping<'a> {
    pub settings: &'a KeepSettings,
    pub deadline: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every write as a server-side dry run: authorization, admission and budgets are checked,
    /// nothing changes.
    Preflight,
    /// For real.
    Commit,
}

impl Mode {
    pub fn dry_run(self) -> bool {
        self == Mode::Preflight
    }

    /// Records a step: done for real, or accepted as a dry run.
    pub fn record(self, report: &mut Report, kind: Kind, name: Option<&str>, text: String) {
        match self {
            Mode::Preflight => report.would(kind, name, text),
            Mode::Commit => report.done(kind, name, text),
        }
    }
}

/// Runs the plan of one claim.
pub async fn execute(
    cluster: &Cluster,
    plan: &Plan,
    policies: Policies,
    keeping: Option<Keeping<'_>>,
    mode: Mode,
    report: &mut Report,
) -> Result<(), Error> {
    let name = plan.claim.as_str();
    let keep = plan.keep.as_ref().zip(keeping);
    if let Some((record, keeping)) = keep {
        report.pending(format!("keep PV {} (Retain)", record.volume));
        if keep::protect(cluster, record, mode).await? {
            mode.record(
                report,
                Kind::VolumeRetained,
                Some(&record.volume),
                format!(
                    "PV {} switched to Retain ({} before), the migration recorded on it",
                    record.volume, record.reclaim_policy
                ),
            );
        }
        if mode == Mode::Preflight {
            keep::preflight(cluster, record, keeping.settings).await?;
        }
    }
    let marked = plan.volume.plan().filter(|v| v.marked());
    let mut mark_put = false;
    if let Some(volume) = marked {
        report.pending(format!("mark PV {}", volume.name));
        mark_put = volume::mark(cluster, name, volume, mode).await?;
    }
    if !plan.resume {
        report.pending("delete the claim");
        if let Err(error) = claim::delete(cluster, plan, mode).await {
            if let Some(volume) = marked.filter(|_| mark_put && mode == Mode::Commit) {
                take_back_mark(cluster, name, volume, report).await;
            }
            return Err(error);
        }
        if let Some(volume) = marked.filter(|_| mark_put) {
            mode.record(
                report,
                Kind::VolumeMarked,
                Some(&volume.name),
                format!("PV {} marked to follow the claim", volume.name),
            );
        }
        if mode == Mode::Commit {
            tracing::info!(claim = name, "claim deleted");
        }
        mode.record(
            report,
            Kind::ClaimDeleted,
            Some(name),
            "claim deleted".into(),
        );
    }
    if !plan.strip_claim.is_empty() {
        if !plan.users.is_empty() && mode == Mode::Commit {
            warn!(pods = %join(&plan.users), "stripping {} while pods still mount the claim (--in-use force)", decision::PVC_PROTECTION);
        }
        report.pending("strip the claim's finalizers");
        if claim::strip(cluster, plan, mode).await? {
            for finalizer in &plan.strip_claim {
                mode.record(
                    report,
                    Kind::ClaimFinalizerStripped,
                    Some(finalizer),
                    format!("stripped claim finalizer {finalizer}"),
                );
            }
        }
    }
    let mut evict = plan.evict.clone();
    if mode == Mode::Commit && policies.in_use == InUsePolicy::Evict {
        // The claim is deleted: no new pod can start with it, so this set can no longer grow.
        report.pending("list the pods that use the claim");
        let pods = eviction::pods_naming(cluster, std::slice::from_ref(&plan.claim)).await?;
        for pod in decision::to_evict(name, &pods) {
            if !evict.contains(&pod) {
                evict.push(pod);
            }
        }
    }
    for pod in &evict {
        report.pending(format!("evict pod {pod}"));
        eviction::evict(cluster, pod, mode).await?;
        mode.record(
            report,
            Kind::PodEvicted,
            Some(pod),
            format!("evicted pod {pod}"),
        );
    }
    if mode == Mode::Commit {
        report.pending("wait for the claim to go");
        claim::await_gone(cluster, plan).await?;
        report.done(Kind::ClaimGone, Some(name), "claim gone");
    }
    if let Some((record, keeping)) = keep {
        match (mode, record.strategy) {
            (Mode::Commit, _) => {
                keep::carry_over(cluster, record, keeping.settings, keeping.deadline, report)
                    .await?;
            }
            (Mode::Preflight, keep::Strategy::Copy) => report.would(
                Kind::DataCopied,
                Some(&record.job_name()),
                format!(
                    "copy the data to a new volume of class {:?}, then make the claim again bound to it",
                    record.to
                ),
            ),
            (Mode::Preflight, keep::Strategy::Snapshot) => report.would(
                Kind::SnapshotTaken,
                Some(&record.snapshot_name()),
                format!(
                    "snapshot PV {} (class {}), then make the claim again on class {:?} from it",
                    record.volume,
                    record.snapshot_class.as_deref().unwrap_or("default"),
                    record.to
                ),
            ),
        }
    } else if let Some(volume) = plan.volume.plan() {
        report.pending(format!("PV {}", volume.name));
        volume::finish(cluster, name, volume, mode, report).await?;
    }
    report.settled();
    Ok(())
}

/// Finishes volumes that an interrupted run marked and left, by today's policies.
pub async fn finish_leftovers(
    cluster: &Cluster,
    leftovers: &[decision::Leftover],
    mode: Mode,
    report: &mut Report,
) -> Result<(), Error> {
    for leftover in leftovers {
        report.pending(format!("PV {}", leftover.volume.name));
        volume::finish(cluster, &leftover.claim, &leftover.volume, mode, report).await?;
    }
    report.settled();
    Ok(())
}

async fn take_back_mark(cluster: &Cluster, claim: &str, volume: &VolumePlan, report: &mut Report) {
    if !volume::unmark(cluster, claim, volume).await {
        report.done(
            Kind::VolumeMarked,
            Some(&volume.name),
            format!("PV {} marked to follow the claim", volume.name),
        );
        report.left(
            Kind::VolumeMarked,
            Some(&volume.name),
            format!(
                "the mark {} on PV {} (remove it, or run again)",
                decision::DELETE_AFTER_CLAIM,
                volume.name
            ),
        );
    }
}
