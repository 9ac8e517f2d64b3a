//! One claim, in three phases: read what the decision layer needs and plan (pure), send every
//! write of the plan as a dry run (the pre-flight), then commit. A refusal or a denial before the
//! commit changes nothing.

use std::sync::Mutex;

use k8s_openapi::api::core::v1::{PersistentVolume, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::ResourceExt;
use tokio::sync::{OnceCell, watch};
use tokio::time::{Instant, sleep_until};
use tracing::{info, warn};

use crate::api::Cluster;
use crate::class::Target;
use crate::config::{DataPolicy, InUsePolicy, KeepSettings, Policies};
use crate::decision::{
    self, BudgetUse, Facts, Leftover, Nothing, Plan, Refusal, Triage, VolumeStep,
};
use crate::error::{Error, ExitStatus, Request, Stop};
use crate::eviction;
use crate::execute::{self, Keeping, Mode};
use crate::keep::{self, Record};
use crate::summary::{Kind, Outcome, Report, Result as Ending};
use crate::volume_snapshot::VolumeSnapshotClass;

/// When a run must stop: its deadline, or a signal.
#[derive(Clone)]
pub struct Stopper {
    pub deadline: Instant,
    pub after: std::time::Duration,
    pub signal: watch::Receiver<Option<&'static str>>,
}

impl Stopper {
    /// Resolves when the run must stop, with why.
    pub async fn stopped(&self) -> Stop {
        let mut signal = self.signal.clone();
        tokio::select! {
            () = sleep_until(self.deadline) => Stop::Deadline(self.after),
            received = signal.wait_for(Option::is_some) => match received {
                Ok(name) => Stop::Signal(name.unwrap_or("a signal")),
                // No sender any more: no signal can come; only the deadline remains.
                Err(_) => {
                    sleep_until(self.deadline).await;
                    Stop::Deadline(self.after)
                }
            },
        }
    }
}

/// What every claim of a run shares: the API, the settings, and what is read once per run.
pub struct Context {
    pub cluster: Cluster,
    /// None: no class desired.
    pub target: Option<Target>,
    pub policies: Policies,
    pub dry_run: bool,
    /// Every claim of the run, for the one pod list.
    pub claims: Vec<String>,
    pub stop: Stopper,
    /// Some unless `--data delete`.
    pub keep: Option<KeepSettings>,
    /// The StatefulSet that the run deletes (orphaning its pods) before the claims move: their
    /// pods are planned for as they will be then, without that controller.
    pub orphaning: Option<String>,
    target_class: OnceCell<Option<StorageClass>>,
    /// Set once the VolumeAttributesClass hint was considered.
    hinted: OnceCell<()>,
    pods: OnceCell<Vec<Pod>>,
    budgets: OnceCell<Vec<PodDisruptionBudget>>,
    marked: OnceCell<Vec<PersistentVolume>>,
    /// Volumes carrying the record of a migration that keeps the data (runs that keep it only).
    records: OnceCell<Vec<PersistentVolume>>,
    /// The VolumeSnapshotClasses (None: the cluster has no snapshot API), for runs that may
    /// snapshot.
    snapshot_classes: OnceCell<Option<Vec<VolumeSnapshotClass>>>,
    /// Budget disruptions that the plans of the run's claims use, so that claims whose pods
    /// share a budget are judged together.
    budget_use: Mutex<BudgetUse>,
}

impl Context {
    pub fn new(
        cluster: Cluster,
        target: Option<Target>,
        policies: Policies,
        dry_run: bool,
        stop: Stopper,
        keep: Option<KeepSettings>,
    ) -> Self {
        Self {
            cluster,
            target,
            policies,
            dry_run,
            claims: Vec::new(),
            stop,
            keep,
            orphaning: None,
            target_class: OnceCell::new(),
            hinted: OnceCell::new(),
            pods: OnceCell::new(),
            budgets: OnceCell::new(),
            marked: OnceCell::new(),
            records: OnceCell::new(),
            snapshot_classes: OnceCell::new(),
            budget_use: Mutex::new(BudgetUse::new()),
        }
    }

    /// The desired StorageClass, read once per run; None when it does not exist.
    pub async fn target_class(&self, target: &Target) -> Result<Option<&StorageClass>, Error> {
        let Target::Class(name) = target else {
            return Ok(None);
        };
        self.target_class
            .get_or_try_init(|| async {
                let request = Request::new("get", "storageclasses").name(name);
                self.cluster
                    .fetch(request, || self.cluster.classes.get_opt(name))
                    .await
            })
            .await
            .map(Option::as_ref)
    }

    /// Once per run, for the first class change: when the old class differs from the desired
    /// one only in `parameters`, says that a VolumeAttributesClass may change those in place.
    /// Only a hint: a class that cannot be read is left at that (logged at debug level).
    async fn hint_attributes_class(&self, from: &str, to: &StorageClass) {
        self.hinted
            .get_or_init(|| async {
                let request = Request::new("get", "storageclasses").name(from);
                let old = self
                    .cluster
                    .fetch(request, || self.cluster.classes.get_opt(from))
                    .await;
                match old {
                    Ok(Some(old)) if crate::class::only_parameters_differ(&old, to) => info!(
                        from,
                        to = %to.name_any(),
                        "the classes differ only in parameters: a VolumeAttributesClass can \
                         change those in place without moving the data (Kubernetes 1.34+, a CSI \
                         driver with ModifyVolume); the migration runs all the same"
                    ),
                    Ok(_) => {}
                    Err(error) => tracing::debug!(from, %error, "old class not read for the hint"),
                }
            })
            .await;
    }

    /// How the data is kept, unless `--data delete`.
    pub fn keeping(&self) -> Option<Keeping<'_>> {
        self.keep.as_ref().map(|settings| Keeping {
            settings,
            deadline: self.stop.deadline,
        })
    }

    /// The VolumeSnapshotClasses, read once per run; None when the cluster serves no snapshot
    /// API.
    async fn snapshot_classes(&self) -> Result<Option<&[VolumeSnapshotClass]>, Error> {
        self.snapshot_classes
            .get_or_try_init(|| async {
                let request = Request::new("list", "volumesnapshotclasses");
                let cluster = &self.cluster;
                match cluster
                    .list(&cluster.snapshot_classes, request, None, |_| true)
                    .await
                {
                    Ok(classes) => Ok(Some(classes)),
                    Err(Error::Api { source, .. })
                        if matches!(&*source, kube::Error::Api(s) if s.code == 404) =>
                    {
                        Ok(None)
                    }
                    Err(error) => Err(error),
                }
            })
            .await
            .map(Option::as_deref)
    }

    /// Migrations that keep the data and that an interrupted run left unfinished, for a claim
    /// of this namespace (any, or `claim`): one list of volumes per run, and only in runs that
    /// keep the data.
    pub async fn records(&self, claim: Option<&str>) -> Result<Vec<Record>, Error> {
        if self.keep.is_none() {
            return Ok(Vec::new());
        }
        let volumes = self
            .records
            .get_or_try_init(|| async {
                let request = Request::new("list", "persistentvolumes");
                self.cluster
                    .list(&self.cluster.volumes, request, None, |pv| {
                        keep::plan::pending_record(pv).is_some()
                    })
                    .await
            })
            .await?;
        Ok(volumes
            .iter()
            .filter_map(keep::plan::pending_record)
            .filter(|r| r.namespace == self.cluster.namespace)
            .filter(|r| claim.is_none_or(|c| r.claim == c))
            .collect())
    }

    /// The pods that name a claim of the run: one list per run.
    async fn pods(&self) -> Result<&[Pod], Error> {
        self.pods
            .get_or_try_init(|| async {
                let pods = eviction::pods_naming(&self.cluster, &self.claims).await?;
                Ok(match &self.orphaning {
                    Some(set) => decision::orphaned_from(pods, set),
                    None => pods,
                })
            })
            .await
            .map(Vec::as_slice)
    }

    /// The namespace's budgets: one list per run, and only when pods are to be evicted.
    async fn budgets(&self) -> Result<&[PodDisruptionBudget], Error> {
        self.budgets
            .get_or_try_init(|| eviction::budgets(&self.cluster))
            .await
            .map(Vec::as_slice)
    }

    /// Volumes marked by an interrupted run: one list per run, and only in runs that write
    /// volumes.
    pub async fn leftovers(&self, claim: Option<&str>) -> Result<Vec<Leftover>, Error> {
        if !decision::writes_volumes(self.policies) {
            return Ok(Vec::new());
        }
        let marked = self
            .marked
            .get_or_try_init(|| async {
                let request = Request::new("list", "persistentvolumes");
                self.cluster
                    .list(&self.cluster.volumes, request, None, |pv| {
                        pv.annotations().contains_key(decision::DELETE_AFTER_CLAIM)
                    })
                    .await
            })
            .await?;
        let only = claim.map(|c| vec![c.to_owned()]);
        Ok(decision::leftovers(
            &self.cluster.namespace,
            only.as_deref(),
            marked,
            self.policies,
        ))
    }

    /// Fails with a bad-input error when the namespace does not exist, so a mistyped namespace
    /// is not reported as an absent claim. Without the right to read namespaces it cannot tell,
    /// and says nothing.
    pub async fn check_namespace(&self) -> Result<(), Error> {
        let namespace = &self.cluster.namespace;
        let request = Request::new("get", "namespaces").name(namespace);
        match self
            .cluster
            .send(&request, || self.cluster.namespaces.get_opt(namespace))
            .await?
        {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(Error::Input(format!(
                "namespace {namespace:?} does not exist"
            ))),
            Err(error) => {
                tracing::debug!(error = %crate::error::describe_kube_error(&error), "cannot check that the namespace exists");
                Ok(())
            }
        }
    }
}

/// A claim after its first two phases: read and planned, its pre-flight passed.
pub enum Prepared {
    /// Nothing left to do (nothing needed, or a dry run): how it ended.
    Ended(Ending, String),
    /// Ready to commit this plan.
    Plan(Box<Plan>, String),
    /// Ready to finish volumes that an interrupted run marked.
    Leftovers(Vec<Leftover>, String),
    /// Ready to carry on with a copy that an interrupted run left.
    Carry(Box<Record>, String),
}

/// One claim of a run, from its first read to its summary.
pub struct Claim {
    pub name: String,
    pub report: Report,
    pub state: Result<Prepared, Error>,
}

impl Claim {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            report: Report::default(),
            state: Ok(Prepared::Ended(Ending::NothingToDo, String::new())),
        }
    }

    /// Whether the pre-flight went through (or there is nothing to do).
    pub fn ready(&self) -> bool {
        self.state.is_ok()
    }

    /// Whether a commit is due.
    fn due(&self) -> bool {
        matches!(
            self.state,
            Ok(Prepared::Plan(..) | Prepared::Leftovers(..) | Prepared::Carry(..))
        )
    }

    /// Held back because another claim of the run could not go through: nothing changed.
    pub fn hold_back(&mut self, because: &[String]) {
        if self.due() {
            self.state = Err(Error::Refused(Refusal::HeldBack {
                claims: because.to_vec(),
            }));
        }
    }

    /// The summary.
    pub fn outcome(mut self, namespace: &str) -> Outcome {
        let key = format!("{namespace}/{}", self.name);
        if matches!(self.state, Err(Error::Stopped(_))) {
            self.report.stopped();
        }
        let report = self.report;
        let outcome = match self.state {
            Ok(Prepared::Ended(ending, detail)) => {
                report.finish(key.clone(), ExitStatus::Ok, ending, Some(detail), None)
            }
            Ok(Prepared::Plan(..) | Prepared::Leftovers(..) | Prepared::Carry(..)) => {
                unreachable!("a claim is summed up once committed or held back")
            }
            Err(error) => report.finish_with_error(key.clone(), &error),
        };
        let line = outcome.line();
        match outcome.status {
            ExitStatus::Ok => info!(claim = %key, "{line}"),
            _ => tracing::error!(claim = %key, "{line}"),
        }
        outcome
    }
}

/// Phases one and two: read, plan, pre-flight (a dry run ends here).
pub async fn prepare(ctx: &Context, claim: &mut Claim) {
    claim.state = tokio::select! {
        state = handle(ctx, &claim.name, &mut claim.report) => state,
        stop = ctx.stop.stopped() => Err(Error::Stopped(stop)),
    };
}

/// Phase three: commit what the pre-flight passed.
pub async fn commit(ctx: &Context, claim: &mut Claim) {
    let state = std::mem::replace(
        &mut claim.state,
        Ok(Prepared::Ended(Ending::NothingToDo, String::new())),
    );
    let report = &mut claim.report;
    let cluster = &ctx.cluster;
    let work = async {
        match state? {
            Prepared::Plan(plan, detail) => {
                execute::execute(
                    cluster,
                    &plan,
                    ctx.policies,
                    ctx.keeping(),
                    Mode::Commit,
                    report,
                )
                .await?;
                Ok(Prepared::Ended(Ending::Migrated, detail))
            }
            Prepared::Carry(record, detail) => {
                let keeping = ctx
                    .keeping()
                    .expect("a migration is carried on in runs that keep the data only");
                keep::carry_over(cluster, &record, keeping.settings, keeping.deadline, report)
                    .await?;
                Ok(Prepared::Ended(Ending::Finished, detail))
            }
            Prepared::Leftovers(leftovers, detail) => {
                execute::finish_leftovers(cluster, &leftovers, Mode::Commit, report).await?;
                Ok(Prepared::Ended(Ending::Finished, detail))
            }
            ended => Ok(ended),
        }
    };
    claim.state = tokio::select! {
        state = work => state,
        stop = ctx.stop.stopped() => Err(Error::Stopped(stop)),
    };
}

async fn handle(ctx: &Context, name: &str, report: &mut Report) -> Result<Prepared, Error> {
    let cluster = &ctx.cluster;
    let claim = cluster
        .fetch(cluster.claim_request("get", name), || {
            cluster.claims.get_opt(name)
        })
        .await?;
    let target = ctx.target.as_ref();
    let (resume, class_change) = match decision::triage(claim.as_ref(), target) {
        Triage::Nothing(reason) => {
            let current_uid = claim.as_ref().and_then(|c| c.uid());
            if reason == Nothing::Absent {
                ctx.check_namespace().await?;
            }
            if reason == Nothing::Unset {
                info!(claim = name, "{reason}");
            }
            return leftovers(ctx, name, current_uid, reason, report).await;
        }
        Triage::Migrate {
            resume,
            class_change,
        } => (resume, class_change),
    };
    let claim = claim.expect("triage migrates only an existing claim");
    let from = decision::claim_class(&claim);
    report.found(
        Kind::Class,
        from,
        match from {
            Some(class) => format!("class {class:?}"),
            None => "no class".into(),
        },
    );
    if resume {
        report.found(Kind::BeingDeleted, None, "already being deleted");
    }

    // The desired StorageClass (read once per run): it must exist, and a copy needs its
    // provisioner.
    let target_class = match target {
        Some(target) if class_change => ctx.target_class(target).await?,
        _ => None,
    };
    if let (Some(from), Some(to)) = (from, target_class) {
        ctx.hint_attributes_class(from, to).await;
    }
    let target_exists = match target {
        Some(Target::Class(_)) if class_change => target_class.is_some(),
        _ => true,
    };
    let volume = match decision::claim_volume(&claim) {
        Some(volume) => {
            let request = Request::new("get", "persistentvolumes").name(volume);
            cluster
                .fetch(request, || cluster.volumes.get_opt(volume))
                .await?
        }
        None => None,
    };
    let snapshot_classes = match (&ctx.keep, volume.as_ref()) {
        (Some(keep), Some(_)) if class_change && keep.policy != DataPolicy::Copy => {
            ctx.snapshot_classes().await?
        }
        _ => None,
    };
    let pods = ctx.pods().await?;
    let budgets = if ctx.policies.in_use == InUsePolicy::Evict
        && !decision::to_evict(name, pods).is_empty()
    {
        ctx.budgets().await?
    } else {
        &[]
    };
    let plan = {
        // Planned and reserved at once: no other claim of the run plans in between.
        let mut reserved = ctx.budget_use.lock().expect("no panic while planning");
        let facts = Facts {
            claim: &claim,
            volume: volume.as_ref(),
            pods,
            budgets,
            reserved: &reserved,
            target,
            target_exists,
            class_change,
        };
        let mut plan = decision::plan(facts, ctx.policies).map_err(Error::Refused)?;
        if let (Some(keep), Some(target), Some(volume)) = (&ctx.keep, target, volume.as_ref())
            && class_change
        {
            let mut record =
                keep::plan::record(&claim, volume, target, target_class).map_err(Error::Refused)?;
            let class = target_class.expect("a record is made for an existing class only");
            let (strategy, snapshot_class, why) = keep::plan::choose(
                keep.policy,
                volume,
                class,
                snapshot_classes,
                keep.snapshot_class.as_deref(),
            )
            .map_err(Error::Refused)?;
            if keep.policy == DataPolicy::Auto {
                info!(claim = name, strategy = ?strategy, "DATA_POLICY=auto: {why}");
            }
            record.strategy = strategy;
            record.snapshot_class = snapshot_class;
            plan.keep = Some(record);
        }
        for (budget, used) in &plan.budget_use {
            *reserved.entry(budget.clone()).or_default() += used;
        }
        plan
    };
    describe(&plan, report);
    info!(to = ?target.map(ToString::to_string), "claim needs migrating: found {}", report.found_line());
    tracing::debug!(?plan);

    let detail = match target {
        Some(target) if class_change => target.to_string(),
        _ => "the claim being deleted waited out".to_owned(),
    };
    if ctx.keep.is_some() && plan.keep.is_none() && class_change {
        report.found(
            Kind::Unbound,
            None,
            "no volume: nothing to copy, the claim is replaced",
        );
    }
    if ctx.dry_run {
        check_waits(ctx, &plan).await?;
        execute::execute(
            cluster,
            &plan,
            ctx.policies,
            ctx.keeping(),
            Mode::Preflight,
            report,
        )
        .await?;
        return Ok(Prepared::Ended(Ending::DryRun, detail));
    }
    preflight(ctx, &plan).await?;
    Ok(Prepared::Plan(Box::new(plan), detail))
}

/// Every write of the plan as a dry run, into a report of its own: the real one lists only
/// what was done.
async fn preflight(ctx: &Context, plan: &Plan) -> Result<(), Error> {
    check_waits(ctx, plan).await?;
    let mut scratch = Report::default();
    execute::execute(
        &ctx.cluster,
        plan,
        ctx.policies,
        ctx.keeping(),
        Mode::Preflight,
        &mut scratch,
    )
    .await?;
    info!(claim = %plan.claim, "pre-flight passed: every write of the plan was accepted as a dry run");
    Ok(())
}

/// The lists and watches of the commit's waits, for this claim and its volume (RBAC may limit
/// them to names, as the chart's Role does), asked before any change.
async fn check_waits(ctx: &Context, plan: &Plan) -> Result<(), Error> {
    let cluster = &ctx.cluster;
    let claim = |verb| cluster.claim_request(verb, &plan.claim);
    let mut waits = vec![claim("list"), claim("watch")];
    if let Some(volume) = plan.volume.plan().filter(|v| v.waited()) {
        let request = |verb| Request::new(verb, "persistentvolumes").name(&volume.name);
        waits.extend([request("list"), request("watch")]);
    }
    cluster
        .require(
            waits,
            "the run waits by watching; a dry run cannot show that right",
        )
        .await
}

/// Nothing to do for the claim itself. In a run that writes volumes, volumes that an interrupted
/// run marked for an earlier claim of this name (never for the current one) are finished.
async fn leftovers(
    ctx: &Context,
    name: &str,
    current_uid: Option<String>,
    reason: Nothing,
    report: &mut Report,
) -> Result<Prepared, Error> {
    let record = ctx
        .records(Some(name))
        .await?
        .into_iter()
        .find(|r| current_uid.as_deref() != Some(r.uid.as_str()));
    if let Some(record) = record {
        report.found(
            Kind::CopyRecord,
            Some(&record.volume),
            format!(
                "PV {} holds a {} to class {:?} that an interrupted run left",
                record.volume,
                match record.strategy {
                    keep::Strategy::Copy => "copy",
                    keep::Strategy::Snapshot => "move by snapshot",
                },
                record.to
            ),
        );
        let detail = format!("class {:?} with the data", record.to);
        if ctx.dry_run {
            return Ok(Prepared::Ended(Ending::DryRun, detail));
        }
        return Ok(Prepared::Carry(Box::new(record), detail));
    }
    let leftovers: Vec<Leftover> = ctx
        .leftovers(Some(name))
        .await?
        .into_iter()
        .filter(|l| current_uid.as_deref() != Some(l.volume.claim_uid.as_str()))
        .collect();
    if leftovers.is_empty() {
        return Ok(Prepared::Ended(Ending::NothingToDo, reason.to_string()));
    }
    if reason == Nothing::Absent {
        report.found(Kind::ClaimAbsent, None, reason.to_string());
    }
    for leftover in &leftovers {
        let volume = &leftover.volume;
        report.found(
            Kind::MarkedVolume,
            Some(&volume.name),
            format!(
                "PV {} ({}) left by an interrupted run",
                volume.name, volume.reclaim_policy
            ),
        );
    }
    let detail = format!("marked volumes of {}/{name}", ctx.cluster.namespace);
    if ctx.dry_run {
        execute::finish_leftovers(&ctx.cluster, &leftovers, Mode::Preflight, report).await?;
        return Ok(Prepared::Ended(Ending::DryRun, detail));
    }
    let mut scratch = Report::default();
    execute::finish_leftovers(&ctx.cluster, &leftovers, Mode::Preflight, &mut scratch).await?;
    Ok(Prepared::Leftovers(leftovers, detail))
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
    if plan.volume.plan().is_some_and(|v| !v.strip.is_empty()) || !plan.strip_claim.is_empty() {
        warn!("finalizers will be stripped (--strip-all-finalizers or --in-use force)");
    }
}
