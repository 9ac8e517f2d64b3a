//! The layer that talks to the API for one claim: reads what the decision layer needs, then
//! carries out its plan.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::policy::v1::Eviction;
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{DeleteOptions, ObjectMeta};
use k8s_openapi::serde::de::DeserializeOwned;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::OnceCell;
use tracing::{info, warn};

use crate::api;
use crate::class::Target;
use crate::config::Policies;
use crate::decision::{
    self, Facts, Nothing, Plan, Triage, VolumeAction, VolumePlan, VolumeStep, join,
};
use crate::error::{Error, ExitStatus, Request};
use crate::summary::{Kind, Outcome, Report, Result as Ending};
use crate::wait::{self, Waited};

const CLAIMS: &str = "persistentvolumeclaims";
const VOLUMES: &str = "persistentvolumes";
/// How long the reads that explain a timeout may take.
const DIAGNOSIS_TIMEOUT: Duration = Duration::from_secs(5);
/// Objects per page of a list.
const LIST_PAGE: u32 = 500;
/// Attempts at a read-check-write that the API keeps answering with 409.
const CONFLICT_ATTEMPTS: usize = 5;

/// What every claim of a run shares.
pub struct Context {
    pub claims: Api<PersistentVolumeClaim>,
    pub volumes: Api<PersistentVolume>,
    pub pods: Api<Pod>,
    pub classes: Api<StorageClass>,
    pub namespaces: Api<Namespace>,
    pub namespace: String,
    /// None: no class desired and the cluster has no default.
    pub target: Option<Target>,
    pub policies: Policies,
    pub dry_run: bool,
    pub timeout: Duration,
    /// Whether the target class exists, read once and only when a claim needs migrating.
    pub target_exists: OnceCell<bool>,
}

impl Context {
    /// Lists `api` page by page (optionally by label selector), keeping only what `keep` accepts,
    /// so memory stays flat however many objects the namespace or cluster holds.
    pub async fn list<K>(
        &self,
        api: &Api<K>,
        request: Request,
        labels: Option<&str>,
        keep: impl Fn(&K) -> bool,
    ) -> Result<Vec<K>, Error>
    where
        K: Clone + DeserializeOwned + std::fmt::Debug,
    {
        let mut params = ListParams::default().limit(LIST_PAGE);
        if let Some(labels) = labels {
            params = params.labels(labels);
        }
        let mut kept = Vec::new();
        loop {
            let page = self.fetch(request.clone(), || api.list(&params)).await?;
            kept.extend(page.items.into_iter().filter(|object| keep(object)));
            match page.metadata.continue_ {
                Some(token) if !token.is_empty() => params = params.continue_token(&token),
                _ => return Ok(kept),
            }
        }
    }

    /// One request; its answer for the caller to match, or a timeout.
    async fn send<T, F, Fut>(
        &self,
        request: &Request,
        send: F,
    ) -> Result<Result<T, kube::Error>, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        api::call(self.timeout, request, send).await
    }

    /// One request whose every failure ends the claim's handling.
    async fn fetch<T, F, Fut>(&self, request: Request, send: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        self.send(&request, send)
            .await?
            .map_err(|e| Error::api(request, e))
    }

    async fn target_exists(&self, target: &Target) -> Result<bool, Error> {
        let Target::Class(name) = target else {
            return Ok(true);
        };
        self.target_exists
            .get_or_try_init(|| async {
                let request = Request::new("get", "storageclasses").name(name);
                let class = self.fetch(request, || self.classes.get_opt(name)).await?;
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

    /// Fails with a bad-input error when the namespace does not exist, so a mistyped namespace
    /// is not reported as an absent claim. Without the right to read namespaces it cannot tell,
    /// and says nothing.
    pub async fn check_namespace(&self) -> Result<(), Error> {
        let request = Request::new("get", "namespaces").name(&self.namespace);
        match self
            .send(&request, || self.namespaces.get_opt(&self.namespace))
            .await?
        {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(Error::Input(format!(
                "namespace {:?} does not exist",
                self.namespace
            ))),
            Err(error) => {
                tracing::debug!(error = %crate::error::describe_kube_error(&error), "cannot check that the namespace exists");
                Ok(())
            }
        }
    }
}

/// Handles one claim from first read to summary; never fails, the outcome carries the error.
pub async fn migrate(ctx: &Context, name: &str) -> Outcome {
    let key = format!("{}/{}", ctx.namespace, name);
    let mut report = Report::default();
    let result = handle(ctx, name, &mut report).await;
    let outcome = match result {
        Ok((ending, detail)) => {
            report.finish(key.clone(), ExitStatus::Ok, ending, Some(detail), None)
        }
        Err(error) => {
            let changed = report.changed();
            let (status, ending) = match &error {
                _ if changed => (ExitStatus::PartWay, Ending::PartWay),
                Error::Refused(_) => (ExitStatus::Refused, Ending::Refused),
                other => (other.exit_status(), Ending::Failed),
            };
            let message = match &error {
                Error::Refused(reason) => reason.clone(),
                other => other.to_string(),
            };
            report.finish(key.clone(), status, ending, None, Some(message))
        }
    };
    let line = outcome.line();
    match outcome.status {
        ExitStatus::Ok => info!(claim = %key, "{line}"),
        _ => tracing::error!(claim = %key, "{line}"),
    }
    outcome
}

async fn handle(ctx: &Context, name: &str, report: &mut Report) -> Result<(Ending, String), Error> {
    let Some(target) = &ctx.target else {
        warn!(
            "no storage class desired and the cluster has no default StorageClass; nothing to compare with"
        );
        return Ok((Ending::NothingToDo, Nothing::NoDefaultClass.to_string()));
    };
    let claim = ctx
        .fetch(ctx.claim_request("get", name), || ctx.claims.get_opt(name))
        .await?;
    let resume = match decision::triage(claim.as_ref(), target) {
        Triage::Nothing(Nothing::Absent) => return absent(ctx, name, report).await,
        Triage::Nothing(reason) => return Ok((Ending::NothingToDo, reason.to_string())),
        Triage::Migrate { resume } => resume,
    };
    let claim = claim.expect("triage migrates only an existing claim");
    let from = decision::claim_class(&claim).unwrap_or_default();
    report.found(Kind::Class, Some(from), format!("class {from:?}"));
    if resume {
        report.found(Kind::BeingDeleted, None, "already being deleted");
    }

    let target_exists = ctx.target_exists(target).await?;
    let volume = match decision::claim_volume(&claim) {
        Some(volume) => {
            let request = Request::new("get", VOLUMES).name(volume);
            ctx.fetch(request, || ctx.volumes.get_opt(volume)).await?
        }
        None => None,
    };
    let request = Request::new("list", "pods").namespace(&ctx.namespace);
    let pods = ctx
        .list(&ctx.pods, request, None, |pod| {
            decision::names_claim(pod, name)
        })
        .await?;
    let facts = Facts {
        claim: &claim,
        volume: volume.as_ref(),
        pods: &pods,
        target,
        target_exists,
    };
    let plan = decision::plan(facts, ctx.policies).map_err(|r| Error::Refused(r.to_string()))?;
    describe(&plan, report);
    info!(to = %target, "claim needs migrating: found {}", report.found_line());
    tracing::debug!(?plan);

    if ctx.dry_run {
        dry_run(ctx, &plan, report).await?;
        return Ok((Ending::DryRun, target.to_string()));
    }
    execute(ctx, plan, report).await?;
    Ok((Ending::Migrated, target.to_string()))
}

/// No claim. In a run that deletes volumes, a volume marked by an interrupted run is finished.
async fn absent(ctx: &Context, name: &str, report: &mut Report) -> Result<(Ending, String), Error> {
    ctx.check_namespace().await?;
    if !decision::writes_volumes(ctx.policies) {
        return Ok((Ending::NothingToDo, Nothing::Absent.to_string()));
    }
    let request = Request::new("list", VOLUMES);
    let mark = format!("{}/{name}", ctx.namespace);
    let marked =
        |pv: &PersistentVolume| pv.annotations().get(decision::DELETE_AFTER_CLAIM) == Some(&mark);
    let volumes = ctx.list(&ctx.volumes, request, None, marked).await?;
    let leftovers = decision::leftovers(&ctx.namespace, name, &volumes, ctx.policies);
    if leftovers.is_empty() {
        return Ok((Ending::NothingToDo, Nothing::Absent.to_string()));
    }
    report.found(Kind::ClaimAbsent, None, "claim absent");
    for volume in &leftovers {
        report.found(
            Kind::MarkedVolume,
            Some(&volume.name),
            format!(
                "PV {} ({}) left by an interrupted run",
                volume.name, volume.reclaim_policy
            ),
        );
    }
    for volume in &leftovers {
        if ctx.dry_run {
            dry_run_volume(ctx, name, volume, report).await?;
        } else {
            handle_volume(ctx, name, volume, report).await?;
        }
    }
    let ending = if ctx.dry_run {
        Ending::DryRun
    } else {
        Ending::Finished
    };
    Ok((
        ending,
        format!("marked volumes of {}/{name}", ctx.namespace),
    ))
}

fn describe(plan: &Plan, report: &mut Report) {
    match &plan.volume {
        VolumeStep::Unbound => report.found(Kind::Unbound, None, "not bound"),
        VolumeStep::Gone { name } => report.found(
            Kind::VolumeGone,
            Some(name),
            format!("bound to PV {name}, which no longer exists"),
        ),
        VolumeStep::Handle(volume) => report.found(
            Kind::Volume,
            Some(&volume.name),
            format!("bound to PV {} ({})", volume.name, volume.reclaim_policy),
        ),
    }
    for user in &plan.users {
        report.found(Kind::UsedBy, Some(&user.name), format!("used by {user}"));
    }
    for finalizer in &plan.foreign_finalizers {
        report.found(
            Kind::ForeignFinalizer,
            Some(finalizer),
            format!("finalizer {finalizer} of another controller"),
        );
    }
}

async fn dry_run(ctx: &Context, plan: &Plan, report: &mut Report) -> Result<(), Error> {
    if !plan.resume {
        delete_claim(ctx, plan, true).await?;
        report.would(
            Kind::ClaimDeleted,
            Some(&plan.claim),
            "claim delete accepted (dry run)",
        );
    }
    if !plan.strip_claim.is_empty() {
        strip_claim(ctx, plan, true).await?;
        report.would(
            Kind::ClaimFinalizerStripped,
            None,
            format!(
                "claim finalizers {} would be stripped",
                plan.strip_claim.join(" ")
            ),
        );
    }
    for pod in &plan.evict {
        evict(ctx, pod, true).await?;
        report.would(
            Kind::PodEvicted,
            Some(pod),
            format!("pod {pod} would be evicted"),
        );
    }
    if let VolumeStep::Handle(volume) = &plan.volume {
        dry_run_volume(ctx, &plan.claim, volume, report).await?;
    }
    Ok(())
}

async fn dry_run_volume(
    ctx: &Context,
    claim: &str,
    volume: &VolumePlan,
    report: &mut Report,
) -> Result<(), Error> {
    match volume.action {
        VolumeAction::Delete => {
            delete_volume(ctx, claim, volume, true).await?;
            report.would(
                Kind::VolumeDeleted,
                Some(&volume.name),
                format!("PV {} delete accepted (dry run)", volume.name),
            );
        }
        VolumeAction::Keep => report.left(
            Kind::VolumeKept,
            Some(&volume.name),
            format!(
                "PV {} ({}) would be kept",
                volume.name, volume.reclaim_policy
            ),
        ),
        VolumeAction::AwaitReclaim => report.left(
            Kind::VolumeReclaimPending,
            Some(&volume.name),
            format!("PV {} would be deleted by its provisioner", volume.name),
        ),
    }
    Ok(())
}

async fn execute(ctx: &Context, plan: Plan, report: &mut Report) -> Result<(), Error> {
    if let VolumeStep::Handle(volume) = &plan.volume
        && volume.action == VolumeAction::Delete
    {
        mark_volume(ctx, &plan.claim, volume).await?;
    }
    if !plan.resume {
        if let Err(error) = delete_claim(ctx, &plan, false).await {
            if let VolumeStep::Handle(volume) = &plan.volume
                && volume.action == VolumeAction::Delete
            {
                unmark_volume(ctx, volume).await;
            }
            return Err(error);
        }
        report.done(Kind::ClaimDeleted, Some(&plan.claim), "claim deleted");
    }
    if !plan.strip_claim.is_empty() {
        if !plan.users.is_empty() {
            warn!(pods = %join(&plan.users), "stripping {} while pods still mount the claim (--in-use force)", decision::PVC_PROTECTION);
        }
        if strip_claim(ctx, &plan, false).await? {
            report.done(
                Kind::ClaimFinalizerStripped,
                None,
                format!("stripped claim finalizers {}", plan.strip_claim.join(" ")),
            );
        }
    }
    for pod in &plan.evict {
        evict(ctx, pod, false).await?;
        report.done(Kind::PodEvicted, Some(pod), format!("evicted pod {pod}"));
    }
    await_claim_gone(ctx, &plan).await?;
    report.done(Kind::ClaimGone, Some(&plan.claim), "claim gone");

    if let VolumeStep::Handle(volume) = &plan.volume {
        handle_volume(ctx, &plan.claim, volume, report).await?;
    }
    Ok(())
}

/// Marks the volume as to be deleted with the claim, before the claim is deleted: a run
/// interrupted once the claim is gone leaves this mark for the next run to find.
async fn mark_volume(ctx: &Context, claim: &str, volume: &VolumePlan) -> Result<(), Error> {
    let mark = json!(format!("{}/{claim}", ctx.namespace));
    match patch_mark(ctx, volume, mark).await? {
        Ok(()) => Ok(()),
        // Gone or replaced (another uid): nothing to mark; deleting it is checked again later.
        Err(kube::Error::Api(status))
            if status.is_not_found() || status.is_conflict() || status.is_invalid() =>
        {
            Ok(())
        }
        Err(e) => Err(Error::api(
            Request::new("patch", VOLUMES).name(&volume.name),
            e,
        )),
    }
}

/// Takes the mark back when the claim was not deleted after all; best effort, the volume is
/// checked again before any later run deletes it.
async fn unmark_volume(ctx: &Context, volume: &VolumePlan) {
    let failure = match patch_mark(ctx, volume, serde_json::Value::Null).await {
        Ok(Ok(())) => return,
        Ok(Err(error)) => crate::error::describe_kube_error(&error),
        Err(error) => error.to_string(),
    };
    warn!(volume = %volume.name, %failure, "could not remove the delete-after-claim mark");
}

/// Sets (or, with null, removes) the delete-after-claim annotation of the planned volume; the
/// uid in the patch keeps it off a volume that replaced it.
async fn patch_mark(
    ctx: &Context,
    volume: &VolumePlan,
    mark: serde_json::Value,
) -> Result<Result<(), kube::Error>, Error> {
    let patch = json!({"metadata": {"uid": volume.uid, "annotations": {decision::DELETE_AFTER_CLAIM: mark}}});
    let request = Request::new("patch", VOLUMES).name(&volume.name);
    let params = PatchParams::default();
    let patch = Patch::Merge(&patch);
    let answer = ctx
        .send(&request, || {
            ctx.volumes.patch(&volume.name, &params, &patch)
        })
        .await?;
    Ok(answer.map(drop))
}

async fn delete_claim(ctx: &Context, plan: &Plan, dry_run: bool) -> Result<(), Error> {
    let params = delete_params(&plan.uid, None, dry_run);
    let request = ctx.claim_request("delete", &plan.claim);
    match ctx
        .send(&request, || ctx.claims.delete(&plan.claim, &params))
        .await?
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(kube::Error::Api(status)) if status.is_conflict() => Err(Error::Refused(format!(
            "the claim was replaced after it was read (uid {} is gone); the new claim is not deleted, run again to evaluate it",
            plan.uid
        ))),
        Err(e) => Err(Error::api(request, e)),
    }
}

fn delete_params(uid: &str, resource_version: Option<String>, dry_run: bool) -> DeleteParams {
    DeleteParams {
        dry_run,
        preconditions: Some(Preconditions {
            uid: Some(uid.to_owned()),
            resource_version,
        }),
        ..DeleteParams::background()
    }
}

/// Strips the plan's finalizers from the claim; says whether it did (the claim may be gone, or
/// replaced by another with the same name, which is left alone).
async fn strip_claim(ctx: &Context, plan: &Plan, dry_run: bool) -> Result<bool, Error> {
    let request = ctx.claim_request("patch", &plan.claim);
    let ours = |claim: &PersistentVolumeClaim| claim.uid().as_deref() == Some(plan.uid.as_str());
    let stripped = remove_finalizers(
        ctx,
        &ctx.claims,
        &plan.claim,
        &plan.strip_claim,
        dry_run,
        request,
        ours,
    )
    .await?;
    Ok(stripped == Strip::Done)
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
    let request = Request::new("create", "pods/eviction")
        .name(pod)
        .namespace(&ctx.namespace);
    let evicted = ctx
        .send(&request, || {
            ctx.pods
                .create_subresource::<_, kube::core::Status>("eviction", pod, &params, &eviction)
        })
        .await?;
    match evicted {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(e) => Err(Error::api(request, e)),
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
    // What holds the claim, read briefly: the run is already over its time.
    let brief = DIAGNOSIS_TIMEOUT.min(ctx.timeout);
    let mut blockers = Vec::new();
    let read = ctx.claim_request("get", &plan.claim);
    if let Ok(Ok(Some(claim))) = api::call(brief, &read, || ctx.claims.get_opt(&plan.claim)).await
        && claim.uid().as_deref() == Some(plan.uid.as_str())
        && !claim.finalizers().is_empty()
    {
        blockers.push(format!("finalizers {}", claim.finalizers().join(" ")));
    }
    let read = Request::new("list", "pods").namespace(&ctx.namespace);
    let all = ListParams::default();
    if let Ok(Ok(pods)) = api::call(brief, &read, || ctx.pods.list(&all)).await {
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
    claim: &str,
    volume: &VolumePlan,
    report: &mut Report,
) -> Result<(), Error> {
    let name = &volume.name;
    if !volume.strip.is_empty() {
        warn!(volume = %name, finalizers = %volume.strip.join(" "), "stripping volume finalizers (--strip-all-finalizers); the backing storage may be left behind");
        let request = Request::new("patch", VOLUMES).name(name);
        let ours = |pv: &PersistentVolume| volume.still_ours(pv, &ctx.namespace, claim);
        if remove_finalizers(ctx, &ctx.volumes, name, &volume.strip, false, request, ours).await?
            == Strip::NotOurs
        {
            return Err(rebound(volume));
        }
        report.done(
            Kind::VolumeFinalizerStripped,
            None,
            format!("stripped PV finalizers {}", volume.strip.join(" ")),
        );
    }
    match volume.action {
        VolumeAction::Keep => {
            info!(volume = %name, "keeping the volume, it holds the old data");
            report.left(
                Kind::VolumeKept,
                Some(name),
                format!("PV {name} ({}) with the old data", volume.reclaim_policy),
            );
        }
        VolumeAction::AwaitReclaim => await_reclaim(ctx, volume, report).await?,
        VolumeAction::Delete => {
            delete_volume(ctx, claim, volume, false).await?;
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
                Waited::Done(_) => report.done(
                    Kind::VolumeDeleted,
                    Some(name),
                    format!("PV {name} ({}) deleted", volume.reclaim_policy),
                ),
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

/// Reclaim policy Delete: the provisioner deletes the backing storage, then the volume. A volume
/// that stays, or whose reclaim fails, is named; the claim is gone, so the upgrade can go on.
async fn await_reclaim(
    ctx: &Context,
    volume: &VolumePlan,
    report: &mut Report,
) -> Result<(), Error> {
    let name = &volume.name;
    let uid = volume.uid.clone();
    let condition = move |pv: Option<&PersistentVolume>| {
        pv.is_none_or(|pv| pv.uid().as_deref() != Some(uid.as_str()) || phase(pv) == Some("Failed"))
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
        Waited::TimedOut => {
            warn!(volume = %name, "the volume is still there; its provisioner may delete it later");
            report.left(
                Kind::VolumeReclaimPending,
                Some(name),
                format!(
                    "PV {name} (Delete) still present after {}",
                    humantime::format_duration(ctx.timeout)
                ),
            );
        }
    }
    Ok(())
}

fn phase(volume: &PersistentVolume) -> Option<&str> {
    volume.status.as_ref()?.phase.as_deref()
}

fn rebound(volume: &VolumePlan) -> Error {
    Error::Refused(format!(
        "PV {} no longer belongs to the claim (bound elsewhere meanwhile); it is not touched",
        volume.name
    ))
}

/// Deletes the volume only while it still names the claim: read, check, then delete with uid and
/// resourceVersion preconditions, so a volume rebound in between is never deleted.
async fn delete_volume(
    ctx: &Context,
    claim: &str,
    volume: &VolumePlan,
    dry_run: bool,
) -> Result<(), Error> {
    let name = &volume.name;
    for _ in 0..CONFLICT_ATTEMPTS {
        let request = Request::new("get", VOLUMES).name(name);
        let Some(current) = ctx.fetch(request, || ctx.volumes.get_opt(name)).await? else {
            return Ok(());
        };
        if !volume.still_ours(&current, &ctx.namespace, claim) {
            return Err(rebound(volume));
        }
        let params = delete_params(&volume.uid, current.resource_version(), dry_run);
        let request = Request::new("delete", VOLUMES).name(name);
        match ctx
            .send(&request, || ctx.volumes.delete(name, &params))
            .await?
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.is_not_found() => return Ok(()),
            Err(kube::Error::Api(status)) if status.is_conflict() => {
                info!(volume = %name, "volume changed meanwhile; reading it again");
            }
            Err(e) => return Err(Error::api(request, e)),
        }
    }
    Err(kept_changing(Request::new("delete", VOLUMES).name(name)))
}

fn kept_changing(request: Request) -> Error {
    Error::Api {
        source: Box::new(kube::Error::Api(Box::new(kube::core::Status {
            code: 409,
            reason: "Conflict".into(),
            message: format!(
                "the object kept changing; gave up after {CONFLICT_ATTEMPTS} attempts"
            ),
            ..Default::default()
        }))),
        request,
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Strip {
    Done,
    Gone,
    NotOurs,
}

/// Removes `remove` from the object's finalizers with a merge patch that carries the
/// resourceVersion read, so a concurrent change makes it fail with 409; then it reads again and
/// retries. An object that is gone, or that `ours` no longer accepts, is left alone.
async fn remove_finalizers<K>(
    ctx: &Context,
    api: &Api<K>,
    name: &str,
    remove: &[String],
    dry_run: bool,
    request: Request,
    ours: impl Fn(&K) -> bool,
) -> Result<Strip, Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    for _ in 0..CONFLICT_ATTEMPTS {
        let Some(object) = ctx.fetch(request.clone(), || api.get_opt(name)).await? else {
            return Ok(Strip::Gone);
        };
        if !ours(&object) {
            return Ok(Strip::NotOurs);
        }
        let current = object.meta().finalizers.clone().unwrap_or_default();
        let keep: Vec<&String> = current.iter().filter(|f| !remove.contains(f)).collect();
        if keep.len() == current.len() {
            return Ok(Strip::Done);
        }
        let patch = json!({"metadata": {"finalizers": keep, "resourceVersion": object.meta().resource_version}});
        let params = PatchParams {
            dry_run,
            ..Default::default()
        };
        let patch = Patch::Merge(&patch);
        match ctx
            .send(&request, || api.patch(name, &params, &patch))
            .await?
        {
            Ok(_) => return Ok(Strip::Done),
            Err(kube::Error::Api(status)) if status.is_not_found() => return Ok(Strip::Gone),
            Err(kube::Error::Api(status)) if status.is_conflict() => {
                info!(%request, "object changed meanwhile; reading it again");
            }
            Err(e) => return Err(Error::api(request, e)),
        }
    }
    Err(kept_changing(request))
}
