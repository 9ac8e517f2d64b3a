//! A whole run: find the claims (named, by selector, or a StatefulSet's), then handle each (a few
//! at a time), within one deadline.

use futures::StreamExt;
use kube::{Client, ResourceExt};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::info;

use crate::api::Cluster;
use crate::config::Config;
use crate::decision;
use crate::error::{Error, Request};
use crate::migrate::{self, Claim, Context, Stopper};
use crate::statefulset;
use crate::summary::Outcome;

/// Runs every claim of `config`; an error here means no claim was touched. `signal` carries the
/// name of a signal that asks the run to stop.
pub async fn run(
    client: Client,
    evictions: Client,
    config: &Config,
    signal: watch::Receiver<Option<&'static str>>,
) -> Result<Vec<Outcome>, Error> {
    let namespace = config
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let cluster = Cluster::new(client, evictions, namespace, config.timeout);
    let stop = Stopper {
        deadline: Instant::now() + config.deadline,
        after: config.deadline,
        signal,
    };
    let mut ctx = Context::new(
        cluster,
        config.desired.target(),
        config.policies,
        config.dry_run,
        stop.clone(),
        config.keep.clone(),
    );
    if let Some(set) = &config.statefulset {
        return statefulset::run(&mut ctx, set, config.concurrency).await;
    }
    let names = tokio::select! {
        names = claim_names(&ctx, config) => names?,
        stop = stop.stopped() => return Err(Error::Stopped(stop)),
    };
    let namespace = ctx.cluster.namespace.clone();
    if names.is_empty() {
        ctx.check_namespace().await?;
        let selector = config.selector.as_deref().unwrap_or_default();
        return Ok(vec![Outcome::nothing(
            format!("{namespace}/-l {selector}"),
            "no claim of the release matches the selector".into(),
        )]);
    }
    info!(%namespace, claims = %names.join(","), desired = ?ctx.target, dry_run = ctx.dry_run, concurrency = config.concurrency, "start");
    ctx.claims = names.clone();
    let ctx = &ctx;
    let mut claims: Vec<Claim> = names.iter().map(|n| Claim::new(n)).collect();
    let blocked = prepare_all(ctx, &mut claims, config.concurrency).await;
    if blocked.is_empty() {
        commit_all(ctx, &mut claims, config.concurrency).await;
    } else {
        hold_back(&mut claims, &blocked);
    }
    Ok(claims.into_iter().map(|c| c.outcome(&namespace)).collect())
}

/// Reads, plans and pre-flights every claim (a few at a time); returns those that cannot go
/// through. Every claim is prepared before any is committed: a run changes nothing unless every
/// claim can go through.
pub async fn prepare_all(ctx: &Context, claims: &mut [Claim], concurrency: usize) -> Vec<String> {
    futures::stream::iter(claims.iter_mut())
        .for_each_concurrent(concurrency, |claim| migrate::prepare(ctx, claim))
        .await;
    unready(claims)
}

/// The claims that are not ready: prepared, those that cannot go through; committed, those
/// that did not finish.
pub fn unready(claims: &[Claim]) -> Vec<String> {
    claims
        .iter()
        .filter(|c| !c.ready())
        .map(|c| c.name.clone())
        .collect()
}

/// Commits every prepared claim (a few at a time).
pub async fn commit_all(ctx: &Context, claims: &mut [Claim], concurrency: usize) {
    futures::stream::iter(claims.iter_mut())
        .for_each_concurrent(concurrency, |claim| migrate::commit(ctx, claim))
        .await;
}

/// Holds back every claim that was ready: `blocked` could not go through.
pub fn hold_back(claims: &mut [Claim], blocked: &[String]) {
    for claim in claims {
        claim.hold_back(blocked);
    }
}

/// The names given, then the release's own claims that the selector picks, then (in a run that
/// writes volumes by selector) claims whose volumes an interrupted run marked; each once.
async fn claim_names(ctx: &Context, config: &Config) -> Result<Vec<String>, Error> {
    let mut names = config.names.clone();
    let Some(selector) = &config.selector else {
        return Ok(names);
    };
    let cluster = &ctx.cluster;
    let request = Request::new("list", "persistentvolumeclaims").namespace(&cluster.namespace);
    let release = config.release.as_deref().unwrap_or_default();
    for claim in cluster
        .list(&cluster.claims, request, Some(selector), |_| true)
        .await?
    {
        let name = claim.name_any();
        if let Err(why) = decision::in_release(&claim, release, &cluster.namespace) {
            info!(claim = %name, release, "left out of the run: {why}");
            continue;
        }
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let leftovers = ctx.leftovers(None).await?.into_iter().map(|l| l.claim);
    let copies = ctx.records(None).await?.into_iter().map(|r| r.claim);
    for claim in leftovers.chain(copies) {
        if !names.contains(&claim) {
            names.push(claim);
        }
    }
    Ok(names)
}
