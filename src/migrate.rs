//! The layer that talks to the API for one claim: reads what the decision layer needs, then
//! carries out its plan.

use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::policy::v1::Eviction;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{DeleteOptions, ObjectMeta};
use k8s_openapi::serde::de::DeserializeOwned;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::OnceCell;
use tracing::{info, warn};

use crate::class::Target;
use crate::config::Policies;
use crate::decision::{
    self, Facts, Nothing, Plan, Triage, VolumeAction, VolumePlan, VolumeStep, join,
};
use crate::error::{Error, ExitStatus, Request};
use crate::summary::{Outcome, Report};
use crate::wait::{self, Waited};

const CLAIMS: &str = "persistentvolumeclaims";
const VOLUMES: &str = "persistentvolumes";

/// What every claim of a run shares.
pub struct Context {
    pub claims: Api<PersistentVolumeClaim>,
    pub volumes: Api<PersistentVolume>,
    pub pods: Api<Pod>,
    pub namespace: String,
    /// None: no class desired and the cluster has no default.
    pub target: Option<Target>,
    pub policies: Policies,
    pub dry_run: bool,
    pub timeout: Duration,
    /// Whether the target class exists, read once and only when a claim needs migrating.
    pub target_exists: OnceCell<bool>,
    pub classes: Api<k8s_openapi::api::storage::v1::StorageClass>,
}

impl Context {
    async fn target_exists(&self, target: &Target) -> Result<bool, Error> {
        let Target::Class(name) = target else {
            return Ok(true);
        };
        self.target_exists
            .get_or_try_init(|| async {
                let class = self.classes.get_opt(name).await;
                let class = class
                    .map_err(|e| Error::api(Request::new("get", "storageclasses").name(name), e))?;
                Ok(class.is_some())
            })
            .await
            .copied()
    }

    fn claim_request(&self, verb: &'static str, name: &str) -> Request {
        Request::new(verb, CLAIMS)
            .name(name)
            .namespace(&self.namespace)
    }
}

/// Handles one claim from first read to summary line; never fails, the outcome carries the error.
pub async fn migrate(ctx: &Context, name: &str) -> Outcome {
    let key = format!("{}/{}", ctx.namespace, name);
    let mut report = Report::default();
    let result = handle(ctx, name, &mut report).await;
    let (status, line) = match result {
        Ok(line) => (ExitStatus::Ok, line),
        Err(Error::Refused(reason)) => (
            ExitStatus::Refused,
            format!("refused, nothing changed: {reason}"),
        ),
        Err(error) => {
            let result = match &error {
                Error::Timeout { .. } => "timed out",
                _ => "failed",
            };
            (
                error.exit_status(),
                format!("{}: {error}", report.line(result)),
            )
        }
    };
    match status {
        ExitStatus::Ok => info!(claim = %key, "{line}"),
        _ => tracing::error!(claim = %key, "{line}"),
    }
    Outcome::new(&key, status, line)
}

async fn handle(ctx: &Context, name: &str, report: &mut Report) -> Result<String, Error> {
    let Some(target) = &ctx.target else {
        warn!(
            "no storage class desired and the cluster has no default StorageClass; nothing to compare with"
        );
        return Ok(format!("nothing to do: {}", Nothing::NoDefaultClass));
    };
    let claim = ctx
        .claims
        .get_opt(name)
        .await
        .map_err(|e| Error::api(ctx.claim_request("get", name), e))?;
    let resume = match decision::triage(claim.as_ref(), target) {
        Triage::Nothing(reason) => return Ok(format!("nothing to do: {reason}")),
        Triage::Migrate { resume } => resume,
    };
    let claim = claim.expect("triage migrates only an existing claim");
    let from = decision::claim_class(&claim).unwrap_or_default();
    report.found(format!("class {from:?}"));
    if resume {
        report.found("already being deleted");
    }

    let target_exists = ctx.target_exists(target).await?;
    let volume = match decision::claim_volume(&claim) {
        Some(volume) => ctx
            .volumes
            .get_opt(volume)
            .await
            .map_err(|e| Error::api(Request::new("get", VOLUMES).name(volume), e))?,
        None => None,
    };
    let pods = ctx
        .pods
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::api(Request::new("list", "pods").namespace(&ctx.namespace), e))?
        .items;
    let facts = Facts {
        claim: &claim,
        volume: volume.as_ref(),
        pods: &pods,
        target,
        target_exists,
    };
    let plan = decision::plan(facts, ctx.policies).map_err(|r| Error::Refused(r.to_string()))?;
    describe(&plan, report);
    info!(to = %target, "claim needs migrating: {}", report.line("plan"));
    tracing::debug!(?plan);

    if ctx.dry_run {
        dry_run(ctx, &plan, report).await?;
        return Ok(report.line(&format!("dry run, would migrate to {target}")));
    }
    execute(ctx, plan, report).await?;
    Ok(report.line(&format!("migrated to {target}")))
}

fn describe(plan: &Plan, report: &mut Report) {
    match &plan.volume {
        VolumeStep::Unbound => report.found("not bound"),
        VolumeStep::Gone { name } => {
            report.found(format!("bound to PV {name}, which no longer exists"))
        }
        VolumeStep::Handle(volume) => report.found(format!(
            "bound to PV {} ({})",
            volume.name, volume.reclaim_policy
        )),
    }
    if !plan.users.is_empty() {
        report.found(format!("used by {}", join(&plan.users)));
    }
    if !plan.foreign_finalizers.is_empty() {
        report.found(format!(
            "finalizers of other controllers: {}",
            plan.foreign_finalizers.join(" ")
        ));
    }
}

async fn dry_run(ctx: &Context, plan: &Plan, report: &mut Report) -> Result<(), Error> {
    if !plan.resume {
        delete_claim(ctx, plan, true).await?;
        report.done("claim delete accepted (dry run)");
    }
    if !plan.strip_claim.is_empty() {
        remove_finalizers(
            &ctx.claims,
            &plan.claim,
            &plan.uid,
            &plan.strip_claim,
            true,
            ctx.claim_request("patch", &plan.claim),
        )
        .await?;
        report.done(format!(
            "claim finalizers {} would be stripped",
            plan.strip_claim.join(" ")
        ));
    }
    for pod in &plan.evict {
        evict(ctx, pod, true).await?;
        report.done(format!("pod {pod} would be evicted"));
    }
    if let VolumeStep::Handle(volume) = &plan.volume {
        match volume.action {
            VolumeAction::Delete => {
                delete_volume(ctx, volume, true).await?;
                report.done(format!("PV {} delete accepted (dry run)", volume.name));
            }
            VolumeAction::Keep => report.left(format!(
                "PV {} ({}) would be kept",
                volume.name, volume.reclaim_policy
            )),
            VolumeAction::AwaitReclaim => report.left(format!(
                "PV {} would be deleted by its provisioner",
                volume.name
            )),
        }
    }
    Ok(())
}

async fn execute(ctx: &Context, plan: Plan, report: &mut Report) -> Result<(), Error> {
    if !plan.resume {
        delete_claim(ctx, &plan, false).await?;
        report.done("claim deleted");
    }
    if !plan.strip_claim.is_empty() {
        if !plan.users.is_empty() {
            warn!(pods = %join(&plan.users), "stripping {} while pods still mount the claim (--in-use force)", decision::PVC_PROTECTION);
        }
        remove_finalizers(
            &ctx.claims,
            &plan.claim,
            &plan.uid,
            &plan.strip_claim,
            false,
            ctx.claim_request("patch", &plan.claim),
        )
        .await?;
        report.done(format!(
            "stripped claim finalizers {}",
            plan.strip_claim.join(" ")
        ));
    }
    for pod in &plan.evict {
        evict(ctx, pod, false).await?;
        report.done(format!("evicted pod {pod}"));
    }
    await_claim_gone(ctx, &plan).await?;
    report.done("claim gone");

    match plan.volume {
        VolumeStep::Unbound => {}
        VolumeStep::Gone { .. } => {}
        VolumeStep::Handle(volume) => handle_volume(ctx, &volume, report).await?,
    }
    Ok(())
}

async fn delete_claim(ctx: &Context, plan: &Plan, dry_run: bool) -> Result<(), Error> {
    let params = delete_params(&plan.uid, dry_run);
    match ctx.claims.delete(&plan.claim, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(kube::Error::Api(status)) if status.is_conflict() => Err(Error::Refused(format!(
            "the claim was replaced after it was read (uid {} is gone); the new claim is not deleted, run again to evaluate it",
            plan.uid
        ))),
        Err(e) => Err(Error::api(ctx.claim_request("delete", &plan.claim), e)),
    }
}

fn delete_params(uid: &str, dry_run: bool) -> DeleteParams {
    DeleteParams {
        dry_run,
        preconditions: Some(Preconditions {
            uid: Some(uid.to_owned()),
            resource_version: None,
        }),
        ..DeleteParams::background()
    }
}

/// Evicts through the Eviction API, so PodDisruptionBudgets apply. The body is written here
/// because kube's `Api::evict` sends its delete options under a key the API ignores.
async fn evict(ctx: &Context, pod: &str, dry_run: bool) -> Result<(), Error> {
    let eviction = Eviction {
        metadata: ObjectMeta {
            name: Some(pod.to_owned()),
            namespace: Some(ctx.namespace.clone()),
            ..Default::default()
        },
        delete_options: dry_run.then(|| DeleteOptions {
            dry_run: Some(vec!["All".to_owned()]),
            ..Default::default()
        }),
    };
    let params = PostParams {
        dry_run,
        ..Default::default()
    };
    info!(pod, dry_run, "evicting pod");
    let evicted: Result<kube::core::Status, _> = ctx
        .pods
        .create_subresource("eviction", pod, &params, &eviction)
        .await;
    match evicted {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(e) => Err(Error::api(
            Request::new("create", "pods/eviction")
                .name(pod)
                .namespace(&ctx.namespace),
            e,
        )),
    }
}

async fn await_claim_gone(ctx: &Context, plan: &Plan) -> Result<(), Error> {
    let request = ctx.claim_request("watch", &plan.claim);
    let waited = wait::until(
        &ctx.claims,
        &plan.claim,
        ctx.timeout,
        wait::deleted(&plan.uid),
        request,
    )
    .await?;
    if let Waited::Done(_) = waited {
        return Ok(());
    }
    let mut blockers = Vec::new();
    if let Ok(Some(claim)) = ctx.claims.get_opt(&plan.claim).await
        && claim.uid().as_deref() == Some(plan.uid.as_str())
        && !claim.finalizers().is_empty()
    {
        blockers.push(format!("finalizers {}", claim.finalizers().join(" ")));
    }
    if let Ok(pods) = ctx.pods.list(&ListParams::default()).await {
        let users = decision::pods_using(&plan.claim, &pods.items);
        if !users.is_empty() {
            blockers.push(format!("still used by {}", join(&users)));
        }
    }
    let blockers = if blockers.is_empty() {
        String::new()
    } else {
        format!(" ({})", blockers.join("; "))
    };
    Err(Error::Timeout {
        after: ctx.timeout,
        what: format!(
            "claim {}/{} to be deleted{blockers}",
            ctx.namespace, plan.claim
        ),
    })
}

async fn handle_volume(
    ctx: &Context,
    volume: &VolumePlan,
    report: &mut Report,
) -> Result<(), Error> {
    let name = &volume.name;
    if !volume.strip.is_empty() {
        warn!(volume = %name, finalizers = %volume.strip.join(" "), "stripping volume finalizers (--strip-all-finalizers); the backing storage may be left behind");
        remove_finalizers(
            &ctx.volumes,
            name,
            &volume.uid,
            &volume.strip,
            false,
            Request::new("patch", VOLUMES).name(name),
        )
        .await?;
        report.done(format!("stripped PV finalizers {}", volume.strip.join(" ")));
    }
    match volume.action {
        VolumeAction::Keep => {
            info!(volume = %name, "keeping the volume, it holds the old data");
            report.left(format!(
                "PV {name} ({}) with the old data",
                volume.reclaim_policy
            ));
        }
        VolumeAction::AwaitReclaim => {
            let uid = volume.uid.clone();
            let condition = move |pv: Option<&PersistentVolume>| {
                pv.is_none_or(|pv| {
                    pv.uid().as_deref() != Some(uid.as_str()) || phase(pv) == Some("Failed")
                })
            };
            let request = Request::new("watch", VOLUMES).name(name);
            match wait::until(&ctx.volumes, name, ctx.timeout, condition, request).await? {
                Waited::Done(Some(pv)) if phase(&pv) == Some("Failed") => {
                    let message = pv
                        .status
                        .as_ref()
                        .and_then(|s| s.message.clone())
                        .unwrap_or_default();
                    warn!(volume = %name, %message, "the volume's reclaim failed");
                    report.left(format!("PV {name} (Delete) Failed to reclaim: {message}"));
                }
                Waited::Done(_) => report.done(format!("PV {name} deleted by its reclaim policy")),
                Waited::TimedOut => {
                    warn!(volume = %name, "the volume is still there; its provisioner may delete it later");
                    report.left(format!(
                        "PV {name} (Delete) still present after {}",
                        humantime::format_duration(ctx.timeout)
                    ));
                }
            }
        }
        VolumeAction::Delete => {
            delete_volume(ctx, volume, false).await?;
            let request = Request::new("watch", VOLUMES).name(name);
            match wait::until(
                &ctx.volumes,
                name,
                ctx.timeout,
                wait::deleted(&volume.uid),
                request,
            )
            .await?
            {
                Waited::Done(_) => {
                    report.done(format!("PV {name} ({}) deleted", volume.reclaim_policy))
                }
                Waited::TimedOut => {
                    return Err(Error::Timeout {
                        after: ctx.timeout,
                        what: format!("PV {name} to be deleted"),
                    });
                }
            }
        }
    }
    Ok(())
}

fn phase(volume: &PersistentVolume) -> Option<&str> {
    volume.status.as_ref()?.phase.as_deref()
}

async fn delete_volume(ctx: &Context, volume: &VolumePlan, dry_run: bool) -> Result<(), Error> {
    match ctx
        .volumes
        .delete(&volume.name, &delete_params(&volume.uid, dry_run))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(kube::Error::Api(status)) if status.is_conflict() => Err(Error::Refused(format!(
            "PV {} was replaced after it was read; the new one is not deleted",
            volume.name
        ))),
        Err(e) => Err(Error::api(
            Request::new("delete", VOLUMES).name(&volume.name),
            e,
        )),
    }
}

/// Removes `remove` from the object's finalizers with a merge patch that carries the
/// resourceVersion read, so a concurrent change makes it fail with 409; then it reads again and
/// retries. An object that is gone or was replaced (other uid) is left alone.
async fn remove_finalizers<K>(
    api: &Api<K>,
    name: &str,
    uid: &str,
    remove: &[String],
    dry_run: bool,
    request: Request,
) -> Result<(), Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    const ATTEMPTS: usize = 5;
    for _ in 0..ATTEMPTS {
        let object = api
            .get_opt(name)
            .await
            .map_err(|e| Error::api(request.clone(), e))?;
        let Some(object) = object.filter(|o| o.meta().uid.as_deref() == Some(uid)) else {
            return Ok(());
        };
        let current = object.meta().finalizers.clone().unwrap_or_default();
        let keep: Vec<&String> = current.iter().filter(|f| !remove.contains(f)).collect();
        if keep.len() == current.len() {
            return Ok(());
        }
        let patch = json!({"metadata": {"finalizers": keep, "resourceVersion": object.meta().resource_version}});
        let params = PatchParams {
            dry_run,
            ..Default::default()
        };
        match api.patch(name, &params, &Patch::Merge(&patch)).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.is_not_found() => return Ok(()),
            Err(kube::Error::Api(status)) if status.is_conflict() => {
                info!(%request, "object changed meanwhile; reading it again");
            }
            Err(e) => return Err(Error::api(request, e)),
        }
    }
    Err(Error::Api {
        source: Box::new(kube::Error::Api(Box::new(kube::core::Status {
            code: 409,
            reason: "Conflict".into(),
            message: format!("the object kept changing; gave up after {ATTEMPTS} attempts"),
            ..Default::default()
        }))),
        request,
    })
}
