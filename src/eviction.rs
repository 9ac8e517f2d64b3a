//! Evictions through the Eviction API, so PodDisruptionBudgets apply, and the reads they need:
//! the namespace's budgets, and the pods that use a claim now.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::{Eviction, PodDisruptionBudget};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{DeleteOptions, ObjectMeta};
use kube::api::PostParams;
use tracing::info;

use crate::api::{self, Cluster};
use crate::decision::{self, Refusal};
use crate::error::{Error, Request};
use crate::execute::Mode;

/// The namespace's PodDisruptionBudgets.
pub async fn budgets(cluster: &Cluster) -> Result<Vec<PodDisruptionBudget>, Error> {
    let request = Request::new("list", "poddisruptionbudgets").namespace(&cluster.namespace);
    cluster
        .list(&cluster.budgets, request, None, |_| true)
        .await
}

/// The pods of the namespace that name any of `claims`, in one paged list.
pub async fn pods_naming(cluster: &Cluster, claims: &[String]) -> Result<Vec<Pod>, Error> {
    let request = Request::new("list", "pods").namespace(&cluster.namespace);
    cluster
        .list(&cluster.pods, request, None, |pod| {
            claims.iter().any(|c| decision::names_claim(pod, c))
        })
        .await
}

/// Evicts the pod. The body is written here because kube's `Api::evict` sends its delete
/// options under a key the API ignores. A 429 (a budget refusing) is answered at once, never
/// retried: it is a refusal, named with the budget where the API names it.
pub async fn evict(cluster: &Cluster, pod: &str, mode: Mode) -> Result<(), Error> {
    let dry_run = mode.dry_run();
    let eviction = Eviction {
        metadata: ObjectMeta {
            name: Some(pod.to_owned()),
            namespace: Some(cluster.namespace.clone()),
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
        .namespace(&cluster.namespace);
    let not_throttled = |e: &kube::Error| api::transient(e) && !is_429(e);
    let evicted = api::call_retrying(cluster.timeout, &request, not_throttled, || {
        cluster
            .evictions
            .create_subresource::<_, kube::core::Status>("eviction", pod, &params, &eviction)
    })
    .await?;
    match evicted {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 429 => {
            Err(Error::Refused(Refusal::EvictionRefused {
                pod: pod.to_owned(),
                message: refusal_message(&status),
            }))
        }
        Err(e) => Err(api::write_error(request, e)),
    }
}

fn is_429(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 429)
}

/// The API's message, with the budget's own (in the `DisruptionBudget` cause) where it sent one.
fn refusal_message(status: &kube::core::Status) -> String {
    let causes: Vec<&str> = status
        .details
        .iter()
        .flat_map(|d| d.causes.iter())
        .filter(|c| c.reason == "DisruptionBudget")
        .map(|c| c.message.as_str())
        .collect();
    if causes.is_empty() {
        status.message.clone()
    } else {
        format!("{} ({})", status.message.trim(), causes.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_refusal_names_the_budget() {
        let status = kube::core::Status {
            code: 429,
            message: "Cannot evict pod as it would violate the pod's disruption budget.".into(),
            details: Some(kube::core::response::StatusDetails {
                causes: vec![kube::core::response::StatusCause {
                    reason: "DisruptionBudget".into(),
                    message: "The disruption budget web needs 1 healthy pods and has 1 currently"
                        .into(),
                    field: String::new(),
                }],
                name: "web-0".into(),
                group: "policy".into(),
                kind: "Eviction".into(),
                uid: String::new(),
                retry_after_seconds: 10,
            }),
            ..Default::default()
        };
        let message = refusal_message(&status);
        assert!(
            message.contains("disruption budget web needs 1"),
            "{message}"
        );
        assert!(is_429(&kube::Error::Api(Box::new(status))));
    }
}
