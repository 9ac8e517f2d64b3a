//! `--data snapshot` (and `auto` where it picks a snapshot), once the claim is gone: the old
//! volume, held by a temporary claim, is snapshotted by its CSI driver; once the snapshot is ready
//! the claim is made again on the new class from it, and the temporary claim goes. The snapshot
//! is kept as a backup (`--delete-snapshot`: deleted once the new claim is bound), and so is the
//! old volume (Retain) unless `--delete-old-volume`. Each step is skipped where a run already
//! did it.

use kube::ResourceExt;
use tokio::time::Instant;
use tracing::info;

use super::plan::{self, Record};
use super::{
    CLAIMS, VOLUMES, await_bound, create_claim_again, create_owned, dry_create, hold_old_volume,
    made_claim, remove_temporary_claim, settle_old_volume,
};
use crate::api::{self, Cluster};
use crate::config::KeepSettings;
use crate::error::{Error, Request};
use crate::summary::{Kind, Report};
use crate::volume_snapshot::VolumeSnapshot;
use crate::wait::{self, Waited};

const SNAPSHOTS: &str = "volumesnapshots";

fn snapshot_request(cluster: &Cluster, verb: &'static str, name: &str) -> Request {
    Request::new(verb, SNAPSHOTS)
        .name(name)
        .namespace(&cluster.namespace)
}

/// The temporary claim and the snapshot as dry runs, and the rights of the waits and deletes.
/// The claim made again has the name of the claim that still exists: its create is not sent
/// now; the temporary claim's shows that claims can be created.
pub async fn preflight(
    cluster: &Cluster,
    record: &Record,
    settings: &KeepSettings,
) -> Result<(), Error> {
    dry_create(cluster, &cluster.claims, &record.source_claim(), CLAIMS).await?;
    dry_create(cluster, &cluster.snapshots, &record.snapshot(), SNAPSHOTS).await?;
    let source = record.source_claim_name();
    let snapshot = record.snapshot_name();
    let mut asks = Vec::new();
    for verb in ["get", "list", "watch", "delete"] {
        asks.push(cluster.claim_request(verb, &source));
    }
    for verb in ["create", "get", "list", "watch"] {
        asks.push(cluster.claim_request(verb, &record.claim));
    }
    for verb in ["get", "list", "watch"] {
        asks.push(snapshot_request(cluster, verb, &snapshot));
    }
    if settings.delete_snapshot {
        asks.push(snapshot_request(cluster, "delete", &snapshot));
    }
    asks.extend(["get", "patch", "list", "watch"].map(|verb| Request::new(verb, VOLUMES)));
    cluster
        .require(
            asks,
            "the snapshot is waited for by watching, and the claim is made again once the old one is gone",
        )
        .await
}

/// The snapshot and the claim made again from it.
pub async fn carry_over(
    cluster: &Cluster,
    record: &Record,
    settings: &KeepSettings,
    deadline: Instant,
    report: &mut Report,
) -> Result<(), Error> {
    if made_claim(cluster, record).await?.is_none() {
        report.pending(format!("bind PV {} to a temporary claim", record.volume));
        hold_old_volume(cluster, record, report).await?;
        report.pending("snapshot the old volume");
        let restore_size = take_snapshot(cluster, record, deadline, report).await?;
        report.pending("make the claim again from the snapshot");
        restore(cluster, record, restore_size.as_deref(), report).await?;
    }
    let bound = if record.binds_at_once {
        report.pending(format!("claim {} to be bound", record.claim));
        await_bound(cluster, &record.claim).await?;
        true
    } else {
        false
    };
    report.pending("remove the temporary claim");
    let source = record.source_claim_name();
    if remove_temporary_claim(cluster, record, &source).await? {
        report.done(
            Kind::CopyRemoved,
            Some(&source),
            format!("temporary claim {source} removed"),
        );
    }
    report.pending("keep or delete the snapshot");
    settle_snapshot(cluster, record, settings.delete_snapshot, bound, report).await?;
    report.pending(format!("PV {}", record.volume));
    let copied_to = format!(
        "VolumeSnapshot {}/{}",
        record.namespace,
        record.snapshot_name()
    );
    settle_old_volume(
        cluster,
        record,
        settings.delete_old_volume,
        &copied_to,
        report,
    )
    .await
}

/// Creates the snapshot (or takes the one an interrupted run made) and waits, until the run's
/// deadline, for it to be ready to restore from. Its restore size, when the driver tells.
async fn take_snapshot(
    cluster: &Cluster,
    record: &Record,
    deadline: Instant,
    report: &mut Report,
) -> Result<Option<String>, Error> {
    let name = record.snapshot_name();
    let created = create_owned(
        cluster,
        &cluster.snapshots,
        &record.snapshot(),
        SNAPSHOTS,
        &record.uid,
    )
    .await?;
    if created.created {
        info!(snapshot = %name, class = ?record.snapshot_class, "snapshot of PV {} requested", record.volume);
    }
    let limit = deadline.saturating_duration_since(Instant::now());
    let request = snapshot_request(cluster, "watch", &name);
    let condition = |s: Option<&VolumeSnapshot>| s.is_none_or(VolumeSnapshot::ready);
    let snapshot = match wait::until(&cluster.snapshots, &name, limit, condition, request).await? {
        Waited::Done(Some(snapshot)) => snapshot,
        Waited::Done(None) => {
            return Err(Error::Internal(format!(
                "the snapshot {name} was deleted before it was ready; the old data is kept on PV {} (Retain); run again",
                record.volume
            )));
        }
        Waited::TimedOut { last_error } => {
            let error = read_snapshot(cluster, &name)
                .await
                .ok()
                .flatten()
                .and_then(|s| s.error().map(str::to_owned));
            return Err(Error::Timeout {
                after: limit,
                what: format!(
                    "the snapshot {name} to be ready to use{} (it goes on; a rerun waits for it again)",
                    error
                        .map(|e| format!(", last error: {e}"))
                        .unwrap_or_default()
                ),
                last_error,
            });
        }
    };
    let restore_size = snapshot
        .status
        .as_ref()
        .and_then(|s| s.restore_size.clone());
    let size = restore_size
        .as_ref()
        .map(|s| format!(", {s}"))
        .unwrap_or_default();
    report.done(
        Kind::SnapshotTaken,
        Some(&name),
        format!(
            "snapshot {name} of PV {} ready (class {}{size})",
            record.volume,
            record.snapshot_class.as_deref().unwrap_or("default")
        ),
    );
    Ok(restore_size)
}

async fn read_snapshot(cluster: &Cluster, name: &str) -> Result<Option<VolumeSnapshot>, Error> {
    cluster
        .fetch(snapshot_request(cluster, "get", name), || {
            cluster.snapshots.get_opt(name)
        })
        .await
}

/// The claim made again on the new class from the snapshot, with its labels and annotations.
async fn restore(
    cluster: &Cluster,
    record: &Record,
    restore_size: Option<&str>,
    report: &mut Report,
) -> Result<(), Error> {
    let claim = record.restored_claim(restore_size);
    if !create_claim_again(cluster, record, &claim).await? {
        return Ok(());
    }
    if let Some(size) = record.larger_restore_size(restore_size) {
        info!(
            claim = %record.claim,
            size,
            requested = ?record.requests.get("storage"),
            "the claim asks for the snapshot's restore size: the old volume was larger than its claim"
        );
    }
    info!(claim = %record.claim, class = %record.to, snapshot = %record.snapshot_name(), "claim made again from the snapshot");
    report.done(
        Kind::ClaimRecreated,
        Some(&record.claim),
        format!(
            "claim made again on class {:?} from snapshot {}",
            record.to,
            record.snapshot_name()
        ),
    );
    Ok(())
}

/// The snapshot stays as a backup, or with `--delete-snapshot` goes once the claim made from
/// it is bound (a claim not bound yet still needs it).
async fn settle_snapshot(
    cluster: &Cluster,
    record: &Record,
    delete: bool,
    bound: bool,
    report: &mut Report,
) -> Result<(), Error> {
    let name = record.snapshot_name();
    let Some(snapshot) = read_snapshot(cluster, &name)
        .await?
        .filter(|s| plan::made_for(s.labels(), &record.uid))
    else {
        return Ok(());
    };
    if delete && bound {
        let params = api::delete_params(&snapshot.uid().unwrap_or_default(), None, false);
        let request = snapshot_request(cluster, "delete", &name);
        match cluster
            .send(&request, || cluster.snapshots.delete(&name, &params))
            .await?
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.is_not_found() => return Ok(()),
            Err(e) => return Err(api::write_error(request, e)),
        }
        report.done(
            Kind::SnapshotDeleted,
            Some(&name),
            format!("snapshot {name} deleted, the claim bound to its restore"),
        );
        return Ok(());
    }
    let why = if delete {
        "not deleted: the claim is not bound yet (its class waits for the first pod), and its restore needs it; "
    } else {
        ""
    };
    report.left(
        Kind::SnapshotKept,
        Some(&name),
        format!(
            "snapshot {name} with the old data, {why}to delete it: kubectl delete volumesnapshot -n {} {name}",
            record.namespace
        ),
    );
    Ok(())
}
