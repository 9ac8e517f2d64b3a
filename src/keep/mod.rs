//! `--data copy`, `snapshot` and `auto`: the claim moves to the new class with its data. Before
//! the claim is deleted the old volume is switched to Retain and carries the [`Record`] of the
//! migration; once the claim is gone the old volume is bound to a temporary claim. Then, by the
//! record's [`Strategy`]:
//! - a copy: a claim on the new class is made, a Job copies the data from one to the other
//!   (`storageclass-migrate copy`), and the claim is made again on the new class, bound to the
//!   copy;
//! - a snapshot ([`snapshot`]): the old volume's driver snapshots it, and the claim is made again
//!   on the new class from the snapshot.
//!
//! Every step first looks whether it is already done, so a rerun after an interruption at any
//! point carries on from there.
//!
//! [`plan`] decides, without I/O, whether a claim can be kept, how, and what every object looks
//! like.

pub mod plan;
pub mod snapshot;

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::serde::de::DeserializeOwned;
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::wait::Condition;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde_json::json;
use tokio::time::Instant;
use tracing::info;

use plan::{COPIED_TO, COPY_TARGET, MIGRATED_FROM, RECLAIM_POLICY, RECORD};
pub use plan::{Record, Strategy};

use crate::api::{self, Cluster, Written};
use crate::config::{CopySettings, KeepSettings};
use crate::decision::{Refusal, owned_by};
use crate::error::{Error, Request};
use crate::execute::Mode;
use crate::summary::{Kind, Report};
use crate::wait::{self, Waited};

/// On the old volume: the new volume, once the copy made it.
const COPY_VOLUME: &str = "storageclass-migrate/copy-volume";
const CLAIMS: &str = "persistentvolumeclaims";
const VOLUMES: &str = "persistentvolumes";
const JOBS: &str = "jobs";

fn refuse(reason: String) -> Error {
    Error::Refused(Refusal::CannotKeep { reason })
}

fn volume_request(verb: &'static str, name: &str) -> Request {
    Request::new(verb, VOLUMES).name(name)
}

/// Before the claim is deleted: the old volume to Retain, its policy and the record kept on it.
/// The volume must still be bound to the claim read.
pub async fn protect(cluster: &Cluster, record: &Record, mode: Mode) -> Result<bool, Error> {
    let value = serde_json::to_string(record)
        .map_err(|e| Error::Internal(format!("cannot write the record: {e}")))?;
    let ours = |pv: &PersistentVolume| {
        pv.uid().as_deref() == Some(record.volume_uid.as_str())
            && owned_by(pv, &record.namespace, &record.claim, &record.uid)
    };
    let written = cluster
        .patch_checked(
            &cluster.volumes,
            &record.volume,
            mode,
            volume_request("patch", &record.volume),
            ours,
            |pv| plan::retain_patch(pv, RECORD, &value),
        )
        .await?;
    match written {
        Written::Done => Ok(true),
        Written::Unchanged => Ok(false),
        Written::Gone | Written::NotOurs => Err(Error::Refused(Refusal::VolumeRebound {
            volume: record.volume.clone(),
        })),
    }
}

/// What the strategy will create, each as a dry run, and the rights of what a dry run cannot
/// show, before anything changes.
pub async fn preflight(
    cluster: &Cluster,
    record: &Record,
    settings: &KeepSettings,
) -> Result<(), Error> {
    match record.strategy {
        Strategy::Copy => copy_preflight(cluster, record, copy_settings(record, settings)?).await,
        Strategy::Snapshot => snapshot::preflight(cluster, record, settings).await,
    }
}

/// The copy settings of a run that copies; a copy needs its image.
fn copy_settings<'a>(
    record: &Record,
    settings: &'a KeepSettings,
) -> Result<&'a CopySettings, Error> {
    settings.copy.as_ref().ok_or_else(|| {
        refuse(format!(
            "PV {} holds a copy that a run of DATA_POLICY=copy or auto started; finish it with that policy and COPY_IMAGE",
            record.volume
        ))
    })
}

/// What the copy will create, each as a dry run, and the rights of what a dry run cannot show.
/// The copy pod is sent as a Pod: Pod Security admission judges pods.
async fn copy_preflight(
    cluster: &Cluster,
    record: &Record,
    settings: &CopySettings,
) -> Result<(), Error> {
    dry_create(cluster, &cluster.claims, &record.source_claim(), CLAIMS).await?;
    dry_create(cluster, &cluster.claims, &record.target_claim(), CLAIMS).await?;
    dry_create(cluster, &cluster.jobs, &record.copy_job(settings, 60), JOBS).await?;
    let dry = api::post_params(true);
    let pod = record.copy_pod_object(settings);
    let request = Request::new("create", "pods").namespace(&cluster.namespace);
    match cluster
        .send(&request, || cluster.pods.create(&dry, &pod))
        .await?
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.message.contains("PodSecurity") => {
            return Err(Error::Refused(Refusal::Rejected {
                request: "the copy pod".into(),
                message: format!(
                    "{} (where the namespace enforces the restricted level, set COPY_AS_USER to a uid that can read the data)",
                    status.message
                ),
            }));
        }
        Err(e) => return Err(api::write_error(request, e)),
    }
    let ns = &cluster.namespace;
    let named =
        |verb, resource, name: String| Request::new(verb, resource).name(&name).namespace(ns);
    let mut asks = Vec::new();
    for claim in [
        record.source_claim_name(),
        record.target_claim_name(),
        record.claim.clone(),
    ] {
        for verb in ["get", "list", "watch", "delete"] {
            asks.push(named(verb, CLAIMS, claim.clone()));
        }
    }
    for verb in ["get", "list", "watch", "delete"] {
        asks.push(named(verb, JOBS, record.job_name()));
    }
    asks.push(Request::new("list", "pods").namespace(ns));
    asks.extend(["get", "patch", "list", "watch"].map(|verb| Request::new(verb, VOLUMES)));
    cluster
        .require(
            asks,
            "the copy waits by watching and swaps volumes that do not exist yet",
        )
        .await
}

/// Creates `object` as a dry run; one that exists already passes.
async fn dry_create<K>(
    cluster: &Cluster,
    objects: &Api<K>,
    object: &K,
    resource: &'static str,
) -> Result<(), Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let params = api::post_params(true);
    let request = Request::new("create", resource)
        .name(&object.name_any())
        .namespace(&cluster.namespace);
    match cluster
        .send(&request, || objects.create(&params, object))
        .await?
    {
        Ok(_) => Ok(()),
        // Left by an interrupted run: the commit checks whose it is.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(e) => Err(api::write_error(request, e)),
    }
}

/// Once the claim is gone: the data to the new class, by the record's strategy, each step
/// skipped where a run already did it.
pub async fn carry_over(
    cluster: &Cluster,
    record: &Record,
    settings: &KeepSettings,
    deadline: Instant,
    report: &mut Report,
) -> Result<(), Error> {
    match record.strategy {
        Strategy::Copy => {
            let copy = copy_settings(record, settings)?;
            copy_over(
                cluster,
                record,
                copy,
                settings.delete_old_volume,
                deadline,
                report,
            )
            .await?;
        }
        Strategy::Snapshot => {
            snapshot::carry_over(cluster, record, settings, deadline, report).await?
        }
    }
    report.settled();
    Ok(())
}

/// The copy and the swap.
async fn copy_over(
    cluster: &Cluster,
    record: &Record,
    settings: &CopySettings,
    delete_old_volume: bool,
    deadline: Instant,
    report: &mut Report,
) -> Result<(), Error> {
    let done = current_claim(cluster, record).await?;
    let new_volume = match done {
        Some(volume) => volume,
        None => {
            // Once the old volume names the copy, the copy is done: never copy again into a
            // claim made afresh.
            let new_volume = match recorded_new_volume(cluster, record).await? {
                Some(volume) => volume,
                None => {
                    report.pending(format!("bind PV {} to a temporary claim", record.volume));
                    hold_old_volume(cluster, record, report).await?;
                    report.pending("create the claim on the new class");
                    let target = record.target_claim();
                    let created =
                        create_owned(cluster, &cluster.claims, &target, CLAIMS, &record.uid)
                            .await?;
                    if created.created {
                        let name = target.name_any();
                        report.done(
                            Kind::CopyClaimCreated,
                            Some(&name),
                            format!("claim {name} on class {:?} for the copy", record.to),
                        );
                    }
                    report.pending("copy the data");
                    copy(cluster, record, settings, deadline, report).await?;
                    report.pending("keep the new volume");
                    keep_new_volume(cluster, record).await?
                }
            };
            report.pending("free the new volume of the temporary claim");
            // The temporary claim on the new class goes, so the new volume can be bound to the
            // claim.
            remove_temporary_claim(cluster, record, &record.target_claim_name()).await?;
            report.pending(format!("bind PV {new_volume} to the claim"));
            recreate_claim(cluster, record, &new_volume, report).await?;
            new_volume
        }
    };
    report.pending(format!("give PV {new_volume} its class's reclaim policy"));
    let mark = record.mark();
    restore_policy(cluster, &new_volume, Some(COPY_TARGET), |pv| {
        pv.annotations().get(COPY_TARGET) == Some(&mark)
    })
    .await?;
    report.pending("remove the copy Job and the temporary claim");
    clean_up(cluster, record, report).await?;
    report.pending(format!("PV {}", record.volume));
    settle_old_volume(cluster, record, delete_old_volume, &new_volume, report).await
}

/// The claim, made again by a run and bound: its volume. None when the run has not got there.
async fn current_claim(cluster: &Cluster, record: &Record) -> Result<Option<String>, Error> {
    let Some(claim) = made_claim(cluster, record).await? else {
        return Ok(None);
    };
    let name = &record.claim;
    let volume = crate::decision::claim_volume(&claim)
        .map(str::to_owned)
        .ok_or_else(|| Error::Internal(format!("claim {name} made by the run names no volume")))?;
    await_bound(cluster, name).await?;
    Ok(Some(volume))
}

/// The claim, made again by a run. None when the run has not got there; refused when another
/// claim of that name took its place.
async fn made_claim(
    cluster: &Cluster,
    record: &Record,
) -> Result<Option<PersistentVolumeClaim>, Error> {
    let name = &record.claim;
    let Some(claim) = cluster
        .fetch(cluster.claim_request("get", name), || {
            cluster.claims.get_opt(name)
        })
        .await?
    else {
        return Ok(None);
    };
    if claim.annotations().get(MIGRATED_FROM) != Some(&record.uid) {
        if claim.uid().as_deref() == Some(record.uid.as_str()) {
            return Err(Error::Internal(format!(
                "claim {name} still exists; the copy starts only once it is gone"
            )));
        }
        return Err(refuse(format!(
            "a claim {name} was created meanwhile, not by this run; the data stays on PV {} (Retain)",
            record.volume
        )));
    }
    Ok(Some(claim))
}

/// The old volume, released by the claim's delete, bound to a temporary claim by name.
async fn hold_old_volume(
    cluster: &Cluster,
    record: &Record,
    report: &mut Report,
) -> Result<(), Error> {
    let source = record.source_claim_name();
    point_claim_ref(cluster, &record.volume, &record.volume_uid, &source, |pv| {
        pv.annotations().contains_key(RECORD)
    })
    .await?;
    let claim = create_owned(
        cluster,
        &cluster.claims,
        &record.source_claim(),
        CLAIMS,
        &record.uid,
    )
    .await?;
    await_bound(cluster, &source).await?;
    if claim.created {
        report.done(
            Kind::CopyClaimCreated,
            Some(&source),
            format!("claim {source} holds PV {}", record.volume),
        );
    }
    Ok(())
}

/// Points the volume's claimRef at `claim` (no uid: the binder binds it when that claim comes).
async fn point_claim_ref(
    cluster: &Cluster,
    volume: &str,
    uid: &str,
    claim: &str,
    held: impl Fn(&PersistentVolume) -> bool,
) -> Result<(), Error> {
    let namespace = cluster.namespace.clone();
    let ours = |pv: &PersistentVolume| pv.uid().as_deref() == Some(uid) && held(pv);
    let written = patch_volume(cluster, volume, ours, |pv| {
        let current = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
        let already = current.is_some_and(|r| {
            r.name.as_deref() == Some(claim) && r.namespace.as_deref() == Some(namespace.as_str())
        });
        (!already).then(|| {
            json!({"spec": {"claimRef": {
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "namespace": namespace, "name": claim, "uid": null, "resourceVersion": null,
            }}})
        })
    })
    .await?;
    match written {
        Written::Done | Written::Unchanged => Ok(()),
        Written::Gone | Written::NotOurs => Err(Error::Refused(Refusal::VolumeRebound {
            volume: volume.to_owned(),
        })),
    }
}

struct Created<K> {
    object: K,
    created: bool,
}

/// Creates the object, or takes the one an interrupted run made for the same claim.
async fn create_owned<K>(
    cluster: &Cluster,
    api: &Api<K>,
    object: &K,
    resource: &'static str,
    uid: &str,
) -> Result<Created<K>, Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let name = object.name_any();
    let request = Request::new("create", resource)
        .name(&name)
        .namespace(&cluster.namespace);
    let params = api::post_params(false);
    match cluster
        .send(&request, || api.create(&params, object))
        .await?
    {
        Ok(object) => {
            return Ok(Created {
                object,
                created: true,
            });
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(e) => return Err(api::write_error(request, e)),
    }
    let read = Request::new("get", resource)
        .name(&name)
        .namespace(&cluster.namespace);
    let existing = cluster.fetch(read, || api.get_opt(&name)).await?;
    match existing {
        Some(object) if plan::made_for(object.labels(), uid) => Ok(Created {
            object,
            created: false,
        }),
        Some(_) => Err(refuse(format!(
            "{resource} {name} exists and was not made for this claim; it is left alone"
        ))),
        None => Err(Error::Internal(format!(
            "{resource} {name} was there, then gone; run again"
        ))),
    }
}

async fn await_bound(cluster: &Cluster, name: &str) -> Result<(), Error> {
    let bound = |claim: Option<&PersistentVolumeClaim>| {
        claim
            .and_then(|c| c.status.as_ref())
            .and_then(|s| s.phase.as_deref())
            == Some("Bound")
    };
    await_claim(cluster, name, bound, "bound").await
}

/// Waits by watching, at most the step timeout, until `condition` holds for the claim `name`;
/// the timeout names the claim and `what` it waited for.
async fn await_claim(
    cluster: &Cluster,
    name: &str,
    condition: impl Condition<PersistentVolumeClaim> + Clone,
    what: &str,
) -> Result<(), Error> {
    let request = cluster.claim_request("watch", name);
    match wait::until(&cluster.claims, name, cluster.timeout, condition, request).await? {
        Waited::Done(_) => Ok(()),
        Waited::TimedOut { last_error } => Err(Error::Timeout {
            after: cluster.timeout,
            what: format!("claim {}/{name} to be {what}", cluster.namespace),
            last_error,
        }),
    }
}

/// The copy Job: made (again, if an earlier one failed), waited for until the run's deadline,
/// its result put in the summary.
async fn copy(
    cluster: &Cluster,
    record: &Record,
    settings: &CopySettings,
    deadline: Instant,
    report: &mut Report,
) -> Result<(), Error> {
    let name = record.job_name();
    let seconds = deadline.saturating_duration_since(Instant::now()).as_secs();
    let job = record.copy_job(settings, i64::try_from(seconds).unwrap_or(i64::MAX));
    let mut created = create_owned(cluster, &cluster.jobs, &job, JOBS, &record.uid).await?;
    if finished(&created.object) == Some(false) {
        info!(job = %name, "the copy Job of an earlier run failed; running it again");
        delete_job(cluster, &name, created.object.uid()).await?;
        await_job_gone(cluster, &name, created.object.uid().unwrap_or_default()).await?;
        created = create_owned(cluster, &cluster.jobs, &job, JOBS, &record.uid).await?;
    }
    if created.created {
        info!(job = %name, image = %settings.image, "copy Job created");
    }
    let limit = deadline.saturating_duration_since(Instant::now());
    let request = Request::new("watch", JOBS)
        .name(&name)
        .namespace(&cluster.namespace);
    let condition = |job: Option<&Job>| job.is_none_or(|j| finished(j).is_some());
    let job = match wait::until(&cluster.jobs, &name, limit, condition, request).await? {
        Waited::Done(Some(job)) => job,
        Waited::Done(None) => {
            return Err(Error::Internal(format!(
                "the copy Job {name} was deleted while it ran"
            )));
        }
        Waited::TimedOut { last_error } => {
            return Err(Error::Timeout {
                after: limit,
                what: format!("the copy Job {name} (it goes on; a rerun waits for it again)"),
                last_error,
            });
        }
    };
    let result = copy_result(cluster, &name).await;
    if finished(&job) == Some(true) {
        report.done(Kind::DataCopied, Some(&name), result);
        return Ok(());
    }
    let reason = job_failure(&job);
    Err(Error::CopyFailed(format!(
        "the copy Job {name} failed ({reason}): {result}; the old data is kept on PV {} (Retain); run again to retry",
        record.volume
    )))
}

/// Some(true): complete; Some(false): failed; None: still running.
fn finished(job: &Job) -> Option<bool> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    conditions
        .iter()
        .filter(|c| c.status == "True")
        .find_map(|c| match c.type_.as_str() {
            "Complete" => Some(true),
            "Failed" => Some(false),
            _ => None,
        })
}

fn job_failure(job: &Job) -> String {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Failed"))
        .map(|c| {
            let reason = c.reason.clone().unwrap_or_default();
            match &c.message {
                Some(message) => format!("{reason}: {message}"),
                None => reason,
            }
        })
        .unwrap_or_else(|| "failed".into())
}

/// The copy's summary line: the termination message of the Job's last pod.
async fn copy_result(cluster: &Cluster, job: &str) -> String {
    let request = Request::new("list", "pods").namespace(&cluster.namespace);
    let params = ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}"));
    let pods: Vec<Pod> = match cluster.fetch(request, || cluster.pods.list(&params)).await {
        Ok(list) => list.items,
        Err(error) => return format!("no copy result ({error})"),
    };
    let mut messages: Vec<(Option<String>, String)> = pods
        .iter()
        .filter_map(|pod| {
            let status = pod.status.as_ref()?;
            let terminated = status
                .container_statuses
                .as_ref()?
                .iter()
                .find_map(|c| c.state.as_ref()?.terminated.clone())?;
            let message = terminated.message.unwrap_or_default();
            let when = terminated.finished_at.map(|t| t.0.to_string());
            Some((when, message.trim().to_owned()))
        })
        .collect();
    messages.sort();
    messages
        .pop()
        .map(|(_, message)| message)
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "the copy pod left no result".into())
}

async fn delete_job(cluster: &Cluster, name: &str, uid: Option<String>) -> Result<(), Error> {
    let params = DeleteParams {
        preconditions: uid.map(|uid| kube::api::Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    let request = Request::new("delete", JOBS)
        .name(name)
        .namespace(&cluster.namespace);
    match cluster
        .send(&request, || cluster.jobs.delete(name, &params))
        .await?
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() || status.is_conflict() => Ok(()),
        Err(e) => Err(api::write_error(request, e)),
    }
}

async fn await_job_gone(cluster: &Cluster, name: &str, uid: String) -> Result<(), Error> {
    let request = Request::new("watch", JOBS)
        .name(name)
        .namespace(&cluster.namespace);
    match wait::until(
        &cluster.jobs,
        name,
        cluster.timeout,
        wait::deleted(&uid),
        request,
    )
    .await?
    {
        Waited::Done(_) => Ok(()),
        Waited::TimedOut { last_error } => Err(Error::Timeout {
            after: cluster.timeout,
            what: format!("the failed copy Job {name} to be deleted"),
            last_error,
        }),
    }
}

/// The volume the data was copied to: switched to Retain, marked, and named on the old volume.
/// Its name.
async fn keep_new_volume(cluster: &Cluster, record: &Record) -> Result<String, Error> {
    let target = record.target_claim_name();
    let claim = cluster
        .fetch(cluster.claim_request("get", &target), || {
            cluster.claims.get_opt(&target)
        })
        .await?
        .filter(|c| plan::made_for(c.labels(), &record.uid))
        .ok_or_else(|| {
            Error::Internal(format!(
                "the claim {target} with the copy is gone; the old data is kept on PV {}",
                record.volume
            ))
        })?;
    let volume = crate::decision::claim_volume(&claim)
        .map(str::to_owned)
        .ok_or_else(|| Error::Internal(format!("claim {target} is not bound after the copy")))?;
    let mark = record.mark();
    let ns = cluster.namespace.clone();
    let claim_uid = claim.uid().unwrap_or_default();
    let ours = |pv: &PersistentVolume| owned_by(pv, &ns, &target, &claim_uid);
    let written = patch_volume(cluster, &volume, ours, |pv| {
        plan::retain_patch(pv, COPY_TARGET, &mark)
    })
    .await?;
    if matches!(written, Written::Gone | Written::NotOurs) {
        return Err(Error::Refused(Refusal::VolumeRebound { volume }));
    }
    annotate(
        cluster,
        &record.volume,
        &record.volume_uid,
        COPY_VOLUME,
        Some(&volume),
    )
    .await?;
    Ok(volume)
}

/// Deletes the temporary claim `name` if a run made it for this claim, and waits until it is
/// gone; says whether there was one.
async fn remove_temporary_claim(
    cluster: &Cluster,
    record: &Record,
    name: &str,
) -> Result<bool, Error> {
    let claim = cluster
        .fetch(cluster.claim_request("get", name), || {
            cluster.claims.get_opt(name)
        })
        .await?
        .filter(|c| plan::made_for(c.labels(), &record.uid));
    let Some(claim) = claim else {
        return Ok(false);
    };
    delete_claim(cluster, name, &claim.uid().unwrap_or_default()).await?;
    Ok(true)
}

/// Deletes a temporary claim (uid precondition) and waits until it is gone.
async fn delete_claim(cluster: &Cluster, name: &str, uid: &str) -> Result<(), Error> {
    let params = api::delete_params(uid, None, false);
    let request = cluster.claim_request("delete", name);
    match cluster
        .send(&request, || cluster.claims.delete(name, &params))
        .await?
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.is_not_found() => {}
        Err(e) => return Err(api::write_error(request, e)),
    }
    await_claim(cluster, name, wait::deleted(uid), "deleted").await
}

/// The new volume as the old one names it: set once the copy is done.
async fn recorded_new_volume(cluster: &Cluster, record: &Record) -> Result<Option<String>, Error> {
    let old = &record.volume;
    let volume = cluster
        .fetch(volume_request("get", old), || cluster.volumes.get_opt(old))
        .await?;
    Ok(volume
        .filter(|v| v.uid().as_deref() == Some(record.volume_uid.as_str()))
        .and_then(|v| v.annotations().get(COPY_VOLUME).cloned()))
}

/// A merge patch of the volume for real, by [`Cluster::patch_checked`].
async fn patch_volume(
    cluster: &Cluster,
    volume: &str,
    ours: impl Fn(&PersistentVolume) -> bool,
    patch: impl Fn(&PersistentVolume) -> Option<serde_json::Value>,
) -> Result<Written, Error> {
    let request = volume_request("patch", volume);
    cluster
        .patch_checked(&cluster.volumes, volume, Mode::Commit, request, ours, patch)
        .await
}

/// Sets (or with None removes) one annotation of a volume with this uid.
async fn annotate(
    cluster: &Cluster,
    volume: &str,
    uid: &str,
    key: &str,
    value: Option<&str>,
) -> Result<(), Error> {
    let ours = |pv: &PersistentVolume| pv.uid().as_deref() == Some(uid);
    patch_volume(cluster, volume, ours, |pv| {
        (pv.annotations().get(key).map(String::as_str) != value)
            .then(|| json!({"metadata": {"annotations": {key: value}}}))
    })
    .await?;
    Ok(())
}

/// The claim made again on the new class, bound to the copy.
async fn recreate_claim(
    cluster: &Cluster,
    record: &Record,
    new_volume: &str,
    report: &mut Report,
) -> Result<(), Error> {
    let volume = cluster
        .fetch(volume_request("get", new_volume), || {
            cluster.volumes.get_opt(new_volume)
        })
        .await?
        .ok_or_else(|| Error::Internal(format!("PV {new_volume} with the copy is gone")))?;
    let uid = volume.uid().unwrap_or_default();
    let mark = record.mark();
    point_claim_ref(cluster, new_volume, &uid, &record.claim, |pv| {
        pv.annotations().get(COPY_TARGET) == Some(&mark)
    })
    .await?;
    let created = create_claim_again(cluster, record, &record.new_claim(new_volume)).await?;
    await_bound(cluster, &record.claim).await?;
    if created {
        info!(claim = %record.claim, volume = new_volume, class = %record.to, "claim made again, bound to the copy");
        report.done(
            Kind::ClaimRecreated,
            Some(&record.claim),
            format!(
                "claim made again on class {:?}, bound to PV {new_volume} with the copy",
                record.to
            ),
        );
    }
    Ok(())
}

/// Creates the claim again (`claim`, as the plan made it); false when a run had made it already.
/// A claim of that name that no run made is refused.
async fn create_claim_again(
    cluster: &Cluster,
    record: &Record,
    claim: &PersistentVolumeClaim,
) -> Result<bool, Error> {
    let request = cluster.claim_request("create", &record.claim);
    let params = api::post_params(false);
    match cluster
        .send(&request, || cluster.claims.create(&params, claim))
        .await?
    {
        Ok(_) => Ok(true),
        // Made by an interrupted run, or by someone else: made_claim tells.
        Err(kube::Error::Api(status)) if status.code == 409 => {
            match made_claim(cluster, record).await? {
                Some(_) => Ok(false),
                None => Err(Error::Internal(format!(
                    "claim {} came and went; run again",
                    record.claim
                ))),
            }
        }
        Err(e) => Err(api::write_error(request, e)),
    }
}

/// Gives the volume the reclaim policy recorded on it and takes that record (and `mark_key`)
/// off; only while `ours` holds.
async fn restore_policy(
    cluster: &Cluster,
    volume: &str,
    mark_key: Option<&str>,
    ours: impl Fn(&PersistentVolume) -> bool,
) -> Result<(), Error> {
    patch_volume(cluster, volume, ours, |pv| {
        let original = pv.annotations().get(RECLAIM_POLICY)?;
        let mut remove: BTreeMap<&str, Option<&str>> = BTreeMap::from([(RECLAIM_POLICY, None)]);
        if let Some(key) = mark_key {
            remove.insert(key, None);
        }
        Some(json!({
            "metadata": {"annotations": remove},
            "spec": {"persistentVolumeReclaimPolicy": original},
        }))
    })
    .await?;
    Ok(())
}

/// The copy Job and the temporary source claim go; the old volume is then Released.
async fn clean_up(cluster: &Cluster, record: &Record, report: &mut Report) -> Result<(), Error> {
    let job = record.job_name();
    let read = Request::new("get", JOBS)
        .name(&job)
        .namespace(&cluster.namespace);
    if let Some(existing) = cluster.fetch(read, || cluster.jobs.get_opt(&job)).await?
        && plan::made_for(existing.labels(), &record.uid)
    {
        delete_job(cluster, &job, existing.uid()).await?;
        report.done(
            Kind::CopyRemoved,
            Some(&job),
            format!("copy Job {job} removed"),
        );
    }
    let source = record.source_claim_name();
    if remove_temporary_claim(cluster, record, &source).await? {
        report.done(
            Kind::CopyRemoved,
            Some(&source),
            format!("temporary claim {source} removed"),
        );
    }
    Ok(())
}

/// The old volume: marked as carried over (`copied_to`: the new volume, or the snapshot), and
/// kept (Retain) unless `--delete-old-volume` gives it its original policy back.
async fn settle_old_volume(
    cluster: &Cluster,
    record: &Record,
    delete_old_volume: bool,
    copied_to: &str,
    report: &mut Report,
) -> Result<(), Error> {
    let old = &record.volume;
    let restore = delete_old_volume && record.reclaim_policy != "Retain";
    if restore {
        restore_policy(cluster, old, None, |pv| {
            pv.uid().as_deref() == Some(record.volume_uid.as_str())
        })
        .await?;
    }
    let uid = &record.volume_uid;
    annotate(cluster, old, uid, COPIED_TO, Some(copied_to)).await?;
    if restore {
        report.done(
            Kind::VolumeReclaimRestored,
            Some(old),
            format!(
                "PV {old} given back reclaim policy {}: its provisioner deletes it",
                record.reclaim_policy
            ),
        );
        return Ok(());
    }
    let how = if record.reclaim_policy == "Retain" {
        "Retain, as it was".to_owned()
    } else {
        format!(
            "Retain; to delete it: kubectl patch pv {old} -p '{{\"spec\":{{\"persistentVolumeReclaimPolicy\":\"{}\"}}}}'",
            record.reclaim_policy
        )
    };
    report.left(
        Kind::VolumeKept,
        Some(old),
        format!("PV {old} with the old data ({how})"),
    );
    Ok(())
}
