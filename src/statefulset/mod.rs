//! `--statefulset`: moves a StatefulSet's volumeClaimTemplate to the desired class, with every
//! claim made from it. The API forbids changing a template, so the StatefulSet is deleted with
//! `propagationPolicy: Orphan` (its pods and claims stay, no controller recreates them while the
//! claims move) and Helm creates it again, with the new template, in the same upgrade; the claims
//! on another class move as standalone claims do, by the run's in-use and data policies.
//!
//! The phases are those of every run: read, plan ([`plan`], pure), pre-flight (the StatefulSet's
//! delete and every claim's writes sent with `dryRun=All`), then commit: nothing changes unless
//! the StatefulSet and every claim can go through. A rerun after an interruption finds the
//! claims by name (`<template>-<statefulset>-<ordinal>`) whether the StatefulSet is still there,
//! being deleted or gone; with it gone, the template's name comes from `--template` (the chart
//! always passes it).

pub mod plan;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::ResourceExt;
use kube::api::{DeleteParams, Preconditions, PropagationPolicy};
use tracing::info;

use crate::api::{self, Cluster};
use crate::class::Target;
use crate::config::SetTarget;
use crate::decision::{Nothing, Refusal};
use crate::error::{Error, ExitStatus, Request};
use crate::execute::Mode;
use crate::migrate::{Claim, Context};
use crate::run::{commit_all, hold_back, prepare_all, unready};
use crate::summary::{Kind, Outcome, Report, Result as Ending};
use crate::wait::{self, Waited};

use plan::{Facts, MemberState, SetPlan, SetStep};

/// What was read: the StatefulSet, the claims named after it, and the claims for which an
/// interrupted run left work.
struct Read {
    set: Option<StatefulSet>,
    claims: Vec<PersistentVolumeClaim>,
    unfinished: Vec<String>,
}

/// How the StatefulSet's part of the run ended.
enum SetEnd {
    Ended(Ending, String),
    Failed(Error),
    /// The StatefulSet went, but these claims did not move: a rerun finishes them.
    ClaimsLeft(Vec<String>),
}

/// The whole `--statefulset` run: the StatefulSet's outcome first, then one per claim handled.
pub async fn run(
    ctx: &mut Context,
    set: &SetTarget,
    concurrency: usize,
) -> Result<Vec<Outcome>, Error> {
    let namespace = ctx.cluster.namespace.clone();
    let key = format!("{namespace}/statefulset/{}", set.name);
    let Some(target) = ctx.target.clone() else {
        info!(statefulset = %set.name, "{}", Nothing::Unset);
        return Ok(vec![Outcome::nothing(key, Nothing::Unset.to_string())]);
    };
    let stop = ctx.stop.clone();
    let read = tokio::select! {
        read = read(ctx, set) => read?,
        stop = stop.stopped() => return Err(Error::Stopped(stop)),
    };
    let mut report = Report::default();
    let facts = Facts {
        name: &set.name,
        set: read.set.as_ref(),
        template: set.template.as_deref(),
        claims: &read.claims,
        unfinished: &read.unfinished,
        target: &target,
    };
    let plan = match plan::plan(facts) {
        Ok(plan) => plan,
        Err(refusal) => {
            describe_set(&set.name, read.set.as_ref(), None, &mut report);
            let error = Error::Refused(Refusal::StatefulSet(refusal));
            return Ok(vec![finish(key, report, SetEnd::Failed(error))]);
        }
    };
    describe(&plan, read.set.as_ref(), &mut report);
    info!(statefulset = %plan.name, template = %plan.template, desired = %target, "found {}", report.found_line());
    if plan.step.is_none() {
        if read.set.is_none() && plan.members.is_empty() {
            ctx.check_namespace().await?;
        }
        let end = SetEnd::Ended(Ending::NothingToDo, plan.nothing_reason());
        return Ok(vec![finish(key, report, end)]);
    }
    // A template on a class that does not exist would make claims that never bind: the desired
    // class must exist before the StatefulSet goes, even when no claim moves.
    if let Target::Class(class) = &target
        && ctx.target_class(&target).await?.is_none()
    {
        let error = Error::Refused(Refusal::TargetMissing {
            class: class.clone(),
        });
        return Ok(vec![finish(key, report, SetEnd::Failed(error))]);
    }

    let names = plan.moving();
    ctx.claims = names.clone();
    if matches!(
        plan.step,
        Some(SetStep::Orphan { .. } | SetStep::AwaitGone { .. })
    ) {
        ctx.orphaning = Some(plan.name.clone());
    }
    let ctx = &*ctx;
    let mut claims: Vec<Claim> = names.iter().map(|n| Claim::new(n)).collect();
    let set_label = format!("StatefulSet {}", plan.name);
    let preflight = tokio::select! {
        checked = preflight(ctx, &plan, &mut report) => checked,
        stop = stop.stopped() => Err(Error::Stopped(stop)),
    };
    let mut blocked = prepare_all(ctx, &mut claims, concurrency).await;
    let detail = target.to_string();
    let end = if ctx.dry_run {
        match preflight {
            Ok(()) => SetEnd::Ended(Ending::DryRun, detail),
            Err(error) => SetEnd::Failed(error),
        }
    } else if let Err(error) = preflight {
        blocked.push(set_label);
        hold_back(&mut claims, &blocked);
        SetEnd::Failed(error)
    } else if !blocked.is_empty() {
        hold_back(&mut claims, &blocked);
        SetEnd::Failed(Error::Refused(Refusal::HeldBack { claims: blocked }))
    } else {
        let committed = tokio::select! {
            committed = commit(ctx, &plan, &mut report) => committed,
            stop = stop.stopped() => Err(Error::Stopped(stop)),
        };
        match committed {
            Err(error) => {
                hold_back(&mut claims, &[set_label]);
                SetEnd::Failed(error)
            }
            Ok(()) => {
                commit_all(ctx, &mut claims, concurrency).await;
                let left = unready(&claims);
                if left.is_empty() {
                    report.left(
                        Kind::StatefulSetToRecreate,
                        Some(&plan.name),
                        format!(
                            "StatefulSet {} to be created again with the new template (Helm does in this upgrade); it adopts the claims by name",
                            plan.name
                        ),
                    );
                    SetEnd::Ended(Ending::Migrated, detail)
                } else {
                    SetEnd::ClaimsLeft(left)
                }
            }
        }
    };
    let mut outcomes = vec![finish(key, report, end)];
    outcomes.extend(claims.into_iter().map(|c| c.outcome(&namespace)));
    Ok(outcomes)
}

async fn read(ctx: &Context, set: &SetTarget) -> Result<Read, Error> {
    let cluster = &ctx.cluster;
    let request = set_request(cluster, "get", &set.name);
    let found = cluster
        .fetch(request, || cluster.sets.get_opt(&set.name))
        .await?;
    let request = Request::new("list", "persistentvolumeclaims").namespace(&cluster.namespace);
    let claims = cluster
        .list(&cluster.claims, request, None, |c| {
            plan::named_after(&c.name_any(), &set.name)
        })
        .await?;
    let leftovers = ctx.leftovers(None).await?.into_iter().map(|l| l.claim);
    let records = ctx.records(None).await?.into_iter().map(|r| r.claim);
    let mut unfinished: Vec<String> = leftovers.chain(records).collect();
    unfinished.sort();
    unfinished.dedup();
    Ok(Read {
        set: found,
        claims,
        unfinished,
    })
}

fn set_request(cluster: &Cluster, verb: &'static str, name: &str) -> Request {
    Request::new(verb, "statefulsets")
        .name(name)
        .namespace(&cluster.namespace)
}

/// The StatefulSet's delete sent as a dry run, and the rights of the wait for it to go, before
/// anything changes.
async fn preflight(ctx: &Context, plan: &SetPlan, report: &mut Report) -> Result<(), Error> {
    let cluster = &ctx.cluster;
    let uid = match &plan.step {
        Some(SetStep::Orphan { uid }) => {
            delete(cluster, &plan.name, uid, Mode::Preflight).await?;
            if ctx.dry_run {
                report.would(
                    Kind::StatefulSetOrphaned,
                    Some(&plan.name),
                    orphaned_text(&plan.name),
                );
            }
            uid
        }
        Some(SetStep::AwaitGone { uid }) => uid,
        Some(SetStep::Absent) | None => return Ok(()),
    };
    let waits = vec![
        set_request(cluster, "list", &plan.name),
        set_request(cluster, "watch", &plan.name),
    ];
    cluster
        .require(
            waits,
            "the run waits by watching; a dry run cannot show that right",
        )
        .await?;
    info!(statefulset = %plan.name, uid, "pre-flight passed: the StatefulSet's delete was accepted as a dry run");
    Ok(())
}

/// Deletes the StatefulSet (orphaning its pods and claims) and waits until it is gone.
async fn commit(ctx: &Context, plan: &SetPlan, report: &mut Report) -> Result<(), Error> {
    let cluster = &ctx.cluster;
    let uid = match &plan.step {
        Some(SetStep::Orphan { uid }) => {
            report.pending(format!("delete StatefulSet {}", plan.name));
            delete(cluster, &plan.name, uid, Mode::Commit).await?;
            info!(statefulset = %plan.name, "StatefulSet deleted, its pods and claims orphaned");
            report.done(
                Kind::StatefulSetOrphaned,
                Some(&plan.name),
                orphaned_text(&plan.name),
            );
            uid
        }
        Some(SetStep::AwaitGone { uid }) => uid,
        Some(SetStep::Absent) | None => return Ok(()),
    };
    report.pending(format!("wait for StatefulSet {} to go", plan.name));
    await_gone(cluster, &plan.name, uid).await?;
    report.done(
        Kind::StatefulSetGone,
        Some(&plan.name),
        format!("StatefulSet {} gone", plan.name),
    );
    report.settled();
    Ok(())
}

fn orphaned_text(name: &str) -> String {
    format!("StatefulSet {name} deleted, its pods and claims orphaned")
}

/// Deletes the StatefulSet read (uid precondition), orphaning what it owns.
async fn delete(cluster: &Cluster, name: &str, uid: &str, mode: Mode) -> Result<(), Error> {
    let params = DeleteParams {
        dry_run: mode.dry_run(),
        propagation_policy: Some(PropagationPolicy::Orphan),
        preconditions: Some(Preconditions {
            uid: Some(uid.to_owned()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    let request = set_request(cluster, "delete", name);
    match cluster
        .send(&request, || cluster.sets.delete(name, &params))
        .await?
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(kube::Error::Api(status)) if status.is_conflict() => Err(Error::Refused(
            Refusal::StatefulSet(plan::SetRefusal::Replaced {
                set: name.to_owned(),
                uid: uid.to_owned(),
            }),
        )),
        Err(e) => Err(api::write_error(request, e)),
    }
}

/// Waits by watching until the StatefulSet is gone: the garbage collector first takes its owner
/// references off its pods and claims (so none of them is collected), then lets it go.
async fn await_gone(cluster: &Cluster, name: &str, uid: &str) -> Result<(), Error> {
    let request = set_request(cluster, "watch", name);
    let waited = wait::until(
        &cluster.sets,
        name,
        cluster.timeout,
        wait::deleted(uid),
        request,
    )
    .await?;
    match waited {
        Waited::Done(_) => Ok(()),
        Waited::TimedOut { last_error } => Err(Error::Timeout {
            after: cluster.timeout,
            what: format!(
                "StatefulSet {}/{name} to be deleted (the garbage collector orphans its pods and claims first)",
                cluster.namespace
            ),
            last_error,
        }),
    }
}

/// The found part of the StatefulSet's summary.
fn describe(plan: &SetPlan, set: Option<&StatefulSet>, report: &mut Report) {
    describe_set(&plan.name, set, Some(plan), report);
    for member in &plan.members {
        report.found(Kind::Member, Some(&member.name), member.to_string());
    }
    let left_alone = plan
        .members
        .iter()
        .filter(|m| m.state == MemberState::NilClass)
        .count();
    if left_alone > 0 {
        tracing::warn!(
            statefulset = %plan.name,
            "{left_alone} claim(s) without storageClassName are left alone"
        );
    }
}

fn describe_set(
    name: &str,
    set: Option<&StatefulSet>,
    plan: Option<&SetPlan>,
    report: &mut Report,
) {
    let Some(set) = set else {
        report.found(
            Kind::StatefulSetAbsent,
            Some(name),
            format!("StatefulSet {name} absent"),
        );
        return;
    };
    let replicas = set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let text = match plan {
        Some(plan) => format!(
            "StatefulSet {name} ({replicas} replicas), template {} on {}",
            plan.template, plan.template_class
        ),
        None => format!("StatefulSet {name} ({replicas} replicas)"),
    };
    report.found(Kind::StatefulSet, Some(name), text);
    if set.metadata.deletion_timestamp.is_some() {
        report.found(
            Kind::StatefulSetBeingDeleted,
            Some(name),
            format!("StatefulSet {name} already being deleted"),
        );
    }
}

/// The StatefulSet's outcome.
fn finish(key: String, mut report: Report, end: SetEnd) -> Outcome {
    let outcome = match end {
        SetEnd::Ended(ending, detail) => {
            report.finish(key.clone(), ExitStatus::Ok, ending, Some(detail), None)
        }
        SetEnd::ClaimsLeft(claims) => {
            for claim in &claims {
                report.left(
                    Kind::ClaimNotMoved,
                    Some(claim),
                    format!("claim {claim} not moved"),
                );
            }
            let error = format!(
                "claim(s) {} did not move (see their own lines); run again to finish",
                claims.join(", ")
            );
            report.finish(
                key.clone(),
                ExitStatus::PartWay,
                Ending::PartWay,
                None,
                Some(error),
            )
        }
        SetEnd::Failed(error) => {
            if matches!(error, Error::Stopped(_)) {
                report.stopped();
            }
            report.finish_with_error(key.clone(), &error)
        }
    };
    let line = outcome.line();
    match outcome.status {
        ExitStatus::Ok => info!(statefulset = %key, "{line}"),
        _ => tracing::error!(statefulset = %key, "{line}"),
    }
    outcome
}
