//! The claim's steps: delete it (uid precondition), strip its finalizers, wait until it is gone.

use std::time::Duration;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::ResourceExt;
use kube::api::ListParams;

use crate::api::{self, Cluster, Written};
use crate::decision::{self, Plan, Refusal, join};
use crate::error::{Error, Request};
use crate::execute::Mode;
use crate::wait::{self, Waited};

/// How long the reads that explain a timeout may take.
const DIAGNOSIS_TIMEOUT: Duration = Duration::from_secs(5);

/// Deletes the claim read, never one recreated under its name since.
pub async fn delete(cluster: &Cluster, plan: &Plan, mode: Mode) -> Result<(), Error> {
    let params = api::delete_params(&plan.uid, None, mode.dry_run());
    let request = cluster.claim_request("delete", &plan.claim);
    match cluster
        .send(&request, || cluster.claims.delete(&plan.claim, &params))
        .await?
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(kube::Error::Api(status)) if status.is_conflict() => {
            Err(Error::Refused(Refusal::ClaimReplaced {
                uid: plan.uid.clone(),
            }))
        }
        Err(e) => Err(api::write_error(request, e)),
    }
}

/// Strips the plan's finalizers from the claim; says whether it did (the claim may be gone, or
/// replaced by another with the same name, which is left alone).
pub async fn strip(cluster: &Cluster, plan: &Plan, mode: Mode) -> Result<bool, Error> {
    let request = cluster.claim_request("patch", &plan.claim);
    let ours = |claim: &PersistentVolumeClaim| claim.uid().as_deref() == Some(plan.uid.as_str());
    let written = cluster
        .remove_finalizers(
            &cluster.claims,
            &plan.claim,
            &plan.strip_claim,
            mode,
            request,
            ours,
        )
        .await?;
    Ok(written == Written::Done)
}

/// Waits by watching until the claim is gone; at the timeout, names what holds it.
pub async fn await_gone(cluster: &Cluster, plan: &Plan) -> Result<(), Error> {
    let request = cluster.claim_request("watch", &plan.claim);
    let waited = wait::until(
        &cluster.claims,
        &plan.claim,
        cluster.timeout,
        wait::deleted(&plan.uid),
        request,
    )
    .await?;
    let last_error = match waited {
        Waited::Done(_) => return Ok(()),
        Waited::TimedOut { last_error } => last_error,
    };
    // What holds the claim, read briefly: the run is already over its time.
    let brief = DIAGNOSIS_TIMEOUT.min(cluster.timeout);
    let mut blockers = Vec::new();
    let read = cluster.claim_request("get", &plan.claim);
    if let Ok(Ok(Some(claim))) =
        api::call(brief, &read, || cluster.claims.get_opt(&plan.claim)).await
        && claim.uid().as_deref() == Some(plan.uid.as_str())
        && !claim.finalizers().is_empty()
    {
        blockers.push(format!("finalizers {}", claim.finalizers().join(" ")));
    }
    let read = Request::new("list", "pods").namespace(&cluster.namespace);
    let all = ListParams::default();
    if let Ok(Ok(pods)) = api::call(brief, &read, || cluster.pods.list(&all)).await {
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
        after: cluster.timeout,
        what: format!(
            "claim {}/{} to be deleted{blockers}",
            cluster.namespace, plan.claim
        ),
        last_error,
    })
}
