//! The volume's steps: the delete-after-claim mark, then, once the claim is gone, what its plan
//! says: keep it, wait for its provisioner, switch a Retain volume to Delete, or delete it.
//! Every write first reads the volume again and checks that it still names the claim (uid
//! included), and carries the resourceVersion read.

use k8s_openapi::api::core::v1::PersistentVolume;
use kube::ResourceExt;
use serde_json::json;
use tracing::{info, warn};

use crate::api::{self, Cluster, Written};
use crate::decision::{self, Refusal, VolumeAction, VolumePlan};
use crate::error::{Error, Request};
use crate::execute::Mode;
use crate::summary::{Kind, Report};
use crate::wait::{self, Waited};

const VOLUMES: &str = "persistentvolumes";

fn request(verb: &'static str, volume: &VolumePlan) -> Request {
    Request::new(verb, VOLUMES).name(&volume.name)
}

fn rebound(volume: &VolumePlan) -> Error {
    Error::Refused(Refusal::VolumeRebound {
        volume: volume.name.clone(),
    })
}

/// Marks the volume, before its claim is deleted, as to be written once the claim is gone: a run
/// interrupted after that finds it by the mark. Says whether the volume was marked.
pub async fn mark(
    cluster: &Cluster,
    claim: &str,
    volume: &VolumePlan,
    mode: Mode,
) -> Result<bool, Error> {
    let value = decision::mark(&cluster.namespace, claim, &volume.claim_uid);
    let ours = |pv: &PersistentVolume| volume.still_ours(pv, &cluster.namespace, claim);
    let written = cluster
        .patch_checked(
            &cluster.volumes,
            &volume.name,
            mode,
            request("patch", volume),
            ours,
            |pv| {
                (pv.annotations().get(decision::DELETE_AFTER_CLAIM) != Some(&value)).then(
                    || json!({"metadata": {"annotations": {decision::DELETE_AFTER_CLAIM: value}}}),
                )
            },
        )
        .await?;
    match written {
        Written::Done => Ok(true),
        Written::Unchanged | Written::Gone => Ok(false),
        Written::NotOurs => Err(rebound(volume)),
    }
}

/// Takes the mark back when the claim was not deleted after all. Says whether it is off.
pub async fn unmark(cluster: &Cluster, claim: &str, volume: &VolumePlan) -> bool {
    let ours = |pv: &PersistentVolume| volume.still_ours(pv, &cluster.namespace, claim);
    let written = cluster
        .patch_checked(
            &cluster.volumes,
            &volume.name,
            Mode::Commit,
            request("patch", volume),
            ours,
            |pv| {
                pv.annotations()
                    .contains_key(decision::DELETE_AFTER_CLAIM)
                    .then(|| json!({"metadata": {"annotations": {decision::DELETE_AFTER_CLAIM: null}}}))
            },
        )
        .await;
    match written {
        Ok(Written::NotOurs) | Ok(_) => true,
        Err(error) => {
            warn!(volume = %volume.name, %error, "could not remove the delete-after-claim mark");
            false
        }
    }
}

/// The volume's step once its claim is gone (in the pre-flight: every write of it, as a dry run).
pub async fn finish(
    cluster: &Cluster,
    claim: &str,
    volume: &VolumePlan,
    mode: Mode,
    report: &mut Report,
) -> Result<(), Error> {
    let name = volume.name.as_str();
    let policy = &volume.reclaim_policy;
    match volume.action {
        VolumeAction::Keep => {
            info!(volume = %name, "keeping the volume, it holds the old data");
            report.left(
                Kind::VolumeKept,
                Some(name),
                format!("PV {name} ({policy}) with the old data"),
            );
        }
        VolumeAction::Recycle => report.left(
            Kind::VolumeKept,
            Some(name),
            format!("PV {name} (Recycle): the recycler wipes its data and offers it to new claims"),
        ),
        VolumeAction::AwaitReclaim => await_reclaim(cluster, volume, mode, report).await?,
        VolumeAction::ReclaimByDelete => {
            reclaim_by_delete(cluster, claim, volume, mode).await?;
            mode.record(
                report,
                Kind::VolumeReclaimDelete,
                Some(name),
                format!("PV {name} reclaim policy Retain switched to Delete"),
            );
            await_reclaim(cluster, volume, mode, report).await?;
        }
        VolumeAction::Delete => {
            delete(cluster, claim, volume, mode).await?;
            mode.record(
                report,
                Kind::VolumeDeleted,
                Some(name),
                format!("PV {name} ({policy}) deleted"),
            );
            if !volume.strip.is_empty() {
                warn!(volume = %name, finalizers = %volume.strip.join(" "), "stripping volume finalizers (--strip-all-finalizers); the backing storage may be left behind");
                let ours = |pv: &PersistentVolume| volume.still_ours(pv, &cluster.namespace, claim);
                let written = cluster
                    .remove_finalizers(
                        &cluster.volumes,
                        name,
                        &volume.strip,
                        mode,
                        request("patch", volume),
                        ours,
                    )
                    .await?;
                if written == Written::NotOurs {
                    return Err(rebound(volume));
                }
                if written == Written::Done {
                    mode.record(
                        report,
                        Kind::VolumeFinalizerStripped,
                        None,
                        format!("stripped PV finalizers {}", volume.strip.join(" ")),
                    );
                }
            }
            if mode == Mode::Commit {
                await_deleted(cluster, volume).await?;
            }
        }
    }
    Ok(())
}

/// Switches a Retain volume to Delete, so that its provisioner deletes the backing storage as
/// well as the object; deleting a Retain volume's object would leave the storage untracked.
async fn reclaim_by_delete(
    cluster: &Cluster,
    claim: &str,
    volume: &VolumePlan,
    mode: Mode,
) -> Result<(), Error> {
    let ours = |pv: &PersistentVolume| volume.still_ours(pv, &cluster.namespace, claim);
    let written = cluster
        .patch_checked(
            &cluster.volumes,
            &volume.name,
            mode,
            request("patch", volume),
            ours,
            |pv| {
                let policy = pv
                    .spec
                    .as_ref()
                    .and_then(|s| s.persistent_volume_reclaim_policy.as_deref());
                (policy != Some("Delete"))
                    .then(|| json!({"spec": {"persistentVolumeReclaimPolicy": "Delete"}}))
            },
        )
        .await?;
    match written {
        Written::NotOurs => Err(rebound(volume)),
        _ => Ok(()),
    }
}

/// Deletes the volume only while it still names the claim: read, check, then delete with uid and
/// resourceVersion preconditions, so a volume rebound in between is never deleted.
async fn delete(
    cluster: &Cluster,
    claim: &str,
    volume: &VolumePlan,
    mode: Mode,
) -> Result<(), Error> {
    let name = &volume.name;
    for _ in 0..5 {
        let Some(current) = cluster
            .fetch(request("get", volume), || cluster.volumes.get_opt(name))
            .await?
        else {
            return Ok(());
        };
        if !volume.still_ours(&current, &cluster.namespace, claim) {
            return Err(rebound(volume));
        }
        let params = api::delete_params(&volume.uid, current.resource_version(), mode.dry_run());
        let delete = request("delete", volume);
        match cluster
            .send(&delete, || cluster.volumes.delete(name, &params))
            .await?
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.is_not_found() => return Ok(()),
            Err(kube::Error::Api(status)) if status.is_conflict() => {
                info!(volume = %name, "volume changed meanwhile; reading it again");
            }
            Err(e) => return Err(api::write_error(delete, e)),
        }
    }
    Err(api::kept_changing(request("delete", volume)))
}

async fn await_deleted(cluster: &Cluster, volume: &VolumePlan) -> Result<(), Error> {
    let name = &volume.name;
    match wait::until(
        &cluster.volumes,
        name,
        cluster.timeout,
        wait::deleted(&volume.uid),
        request("watch", volume),
    )
    .await?
    {
        Waited::Done(_) => Ok(()),
        Waited::TimedOut { last_error } => Err(Error::Timeout {
            after: cluster.timeout,
            what: format!("PV {name} to be deleted"),
            last_error,
        }),
    }
}

/// Reclaim policy Delete: the provisioner deletes the backing storage, then the volume. A volume
/// that stays, or whose reclaim fails, is named; the claim is gone, so the upgrade can go on.
async fn await_reclaim(
    cluster: &Cluster,
    volume: &VolumePlan,
    mode: Mode,
    report: &mut Report,
) -> Result<(), Error> {
    let name = volume.name.as_str();
    if mode == Mode::Preflight {
        report.left(
            Kind::VolumeReclaimPending,
            Some(name),
            format!("PV {name} would be deleted by its provisioner"),
        );
        return Ok(());
    }
    let uid = volume.uid.clone();
    let condition = move |pv: Option<&PersistentVolume>| {
        pv.is_none_or(|pv| pv.uid().as_deref() != Some(uid.as_str()) || phase(pv) == Some("Failed"))
    };
    match wait::until(
        &cluster.volumes,
        name,
        cluster.timeout,
        condition,
        request("watch", volume),
    )
    .await?
    {
        Waited::Done(Some(pv)) if phase(&pv) == Some("Failed") => {
            let message = pv
                .status
                .as_ref()
                .and_then(|s| s.message.clone())
                .unwrap_or_default();
            warn!(volume = %name, %message, "the volume's reclaim failed");
            report.left(
                Kind::VolumeReclaimFailed,
                Some(name),
                format!("PV {name} (Delete) Failed to reclaim: {message}"),
            );
        }
        Waited::Done(_) => report.done(
            Kind::VolumeReclaimed,
            Some(name),
            format!("PV {name} deleted by its reclaim policy"),
        ),
        Waited::TimedOut { .. } => {
            warn!(volume = %name, "the volume is still there; its provisioner may delete it later");
            report.left(
                Kind::VolumeReclaimPending,
                Some(name),
                format!(
                    "PV {name} (Delete) still present after {}",
                    humantime::format_duration(cluster.timeout)
                ),
            );
        }
    }
    Ok(())
}

fn phase(volume: &PersistentVolume) -> Option<&str> {
    volume.status.as_ref()?.phase.as_deref()
}
