//! A whole run: resolve the desired class, find the claims, migrate each independently.

use futures::future::join_all;
use kube::{Api, Client, ResourceExt};
use tokio::sync::OnceCell;
use tracing::info;

use crate::class::{self, Desired, Target};
use crate::config::Config;
use crate::error::{Error, Request};
use crate::migrate::{self, Context};
use crate::summary::Outcome;

/// Runs every claim of `config`; an error here means no claim was touched.
pub async fn run(client: Client, config: &Config) -> Result<Vec<Outcome>, Error> {
    let namespace = config
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let mut ctx = Context {
        claims: Api::namespaced(client.clone(), &namespace),
        volumes: Api::all(client.clone()),
        pods: Api::namespaced(client.clone(), &namespace),
        classes: Api::all(client.clone()),
        namespaces: Api::all(client),
        namespace,
        target: None,
        policies: config.policies,
        dry_run: config.dry_run,
        timeout: config.timeout,
        target_exists: OnceCell::new(),
    };
    ctx.target = resolve(&ctx, &config.desired).await?;
    let names = claim_names(&ctx, config).await?;
    if names.is_empty() {
        ctx.check_namespace().await?;
        let selector = config.selector.as_deref().unwrap_or_default();
        let key = format!("{}/-l {selector}", ctx.namespace);
        return Ok(vec![Outcome::nothing(
            key,
            "no claim matches the selector".into(),
        )]);
    }
    info!(namespace = %ctx.namespace, claims = %names.join(","), desired = ?ctx.target, dry_run = ctx.dry_run, "start");
    Ok(join_all(names.iter().map(|name| migrate::migrate(&ctx, name))).await)
}

/// The desired class as a target; None when the default is asked for and there is none.
async fn resolve(ctx: &Context, desired: &Desired) -> Result<Option<Target>, Error> {
    match desired {
        Desired::Named(name) => Ok(Some(Target::Class(name.clone()))),
        Desired::NoClass => Ok(Some(Target::NoClass)),
        Desired::Default => {
            let classes = ctx
                .list(
                    &ctx.classes,
                    Request::new("list", "storageclasses"),
                    None,
                    |_| true,
                )
                .await?;
            let default = class::default_class(&classes).map(|c| Target::Class(c.name_any()));
            info!(default = ?default, "resolved the cluster's default StorageClass");
            Ok(default)
        }
    }
}

/// The names given, then those the selector picks, each once, in that order.
async fn claim_names(ctx: &Context, config: &Config) -> Result<Vec<String>, Error> {
    let mut names = config.names.clone();
    if let Some(selector) = &config.selector {
        let request = Request::new("list", "persistentvolumeclaims").namespace(&ctx.namespace);
        for claim in ctx
            .list(&ctx.claims, request, Some(selector), |_| true)
            .await?
        {
            let name = claim.name_any();
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    Ok(names)
}
