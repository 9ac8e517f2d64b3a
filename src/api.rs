//! Requests to the API: each bounded in time, with brief retries of failures that a retry can fix
//! (a dropped or reset connection, a hanging answer, 429/5xx answers that outlast the client's own
//! retries), and lists read page by page. Every request the binary sends is idempotent (deletes
//! carry uid preconditions, patches a resourceVersion), so a retry after an unseen success is
//! harmless.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::serde::de::DeserializeOwned;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Api, Client, Resource};
use serde_json::json;
use tokio::time::{Instant, sleep_until, timeout_at};
use tracing::warn;

use crate::decision::Refusal;
use crate::error::{Error, Request, describe_kube_error};
use crate::execute::Mode;
use crate::volume_snapshot::{VolumeSnapshot, VolumeSnapshotClass};

const ATTEMPTS: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// The longest one attempt may take; a hanging answer is abandoned and the request sent again.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Objects per page of a list.
const LIST_PAGE: u32 = 500;

/// The API objects of one namespace's run, and the limit of each request.
#[derive(Clone)]
pub struct Cluster {
    pub claims: Api<PersistentVolumeClaim>,
    pub volumes: Api<PersistentVolume>,
    pub pods: Api<Pod>,
    /// Evictions go through a client without the automatic retry of 429: a budget's refusal
    /// comes back at once instead of after minutes of retries.
    pub evictions: Api<Pod>,
    pub budgets: Api<PodDisruptionBudget>,
    /// The copy Jobs of `--data copy`.
    pub jobs: Api<Job>,
    pub classes: Api<StorageClass>,
    /// The StatefulSet of a `--statefulset` run.
    pub sets: Api<StatefulSet>,
    /// The snapshots of `--data snapshot`, and their classes.
    pub snapshots: Api<VolumeSnapshot>,
    pub snapshot_classes: Api<VolumeSnapshotClass>,
    pub namespaces: Api<Namespace>,
    pub reviews: Api<SelfSubjectAccessReview>,
    pub namespace: String,
    /// Longest wait for a step, and for a request with its retries.
    pub timeout: Duration,
}

impl Cluster {
    pub fn new(client: Client, evictions: Client, namespace: String, timeout: Duration) -> Self {
        Self {
            claims: Api::namespaced(client.clone(), &namespace),
            volumes: Api::all(client.clone()),
            pods: Api::namespaced(client.clone(), &namespace),
            evictions: Api::namespaced(evictions, &namespace),
            budgets: Api::namespaced(client.clone(), &namespace),
            jobs: Api::namespaced(client.clone(), &namespace),
            classes: Api::all(client.clone()),
            sets: Api::namespaced(client.clone(), &namespace),
            snapshots: Api::namespaced(client.clone(), &namespace),
            snapshot_classes: Api::all(client.clone()),
            namespaces: Api::all(client.clone()),
            reviews: Api::all(client),
            namespace,
            timeout,
        }
    }

    /// One request; its answer for the caller to match (404, 409, ...), or a timeout.
    pub async fn send<T, F, Fut>(
        &self,
        request: &Request,
        send: F,
    ) -> Result<Result<T, kube::Error>, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        call(self.timeout, request, send).await
    }

    /// One request whose every failure is an error.
    pub async fn fetch<T, F, Fut>(&self, request: Request, send: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        self.send(&request, send)
            .await?
            .map_err(|e| Error::api(request, e))
    }

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

    /// Whether the API allows this request, asked before any change for what a dry run cannot
    /// show (the lists and watches of the waits). An answer that cannot be had is taken as yes:
    /// the request itself will then say.
    pub async fn allowed(&self, request: &Request) -> Result<bool, Error> {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    group: Some(api_group(request.resource).to_owned()),
                    verb: Some(request.verb.to_owned()),
                    resource: Some(request.resource.to_owned()),
                    namespace: request.namespace.clone(),
                    name: request.name.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let ask = Request::new("create", "selfsubjectaccessreviews");
        let params = PostParams::default();
        match self
            .send(&ask, || self.reviews.create(&params, &review))
            .await?
        {
            Ok(answer) => Ok(answer.status.is_none_or(|s| s.allowed)),
            Err(error) => {
                tracing::debug!(%request, error = %describe_kube_error(&error), "cannot ask whether the request is allowed");
                Ok(true)
            }
        }
    }

    /// Fails, as a 403 would, unless every request is allowed.
    pub async fn require(&self, requests: Vec<Request>, why: &str) -> Result<(), Error> {
        for request in requests {
            if !self.allowed(&request).await? {
                return Err(Error::Api {
                    request,
                    source: Box::new(kube::Error::Api(Box::new(kube::core::Status {
                        code: 403,
                        reason: "Forbidden".into(),
                        message: format!("not allowed ({why}; asked before any change)"),
                        ..Default::default()
                    }))),
                });
            }
        }
        Ok(())
    }

    pub fn claim_request(&self, verb: &'static str, name: &str) -> Request {
        Request::new(verb, "persistentvolumeclaims")
            .name(name)
            .namespace(&self.namespace)
    }
}

/// The API group of a resource the binary asks about.
fn api_group(resource: &str) -> &'static str {
    match resource {
        "jobs" => "batch",
        "statefulsets" => "apps",
        "poddisruptionbudgets" => "policy",
        "storageclasses" => "storage.k8s.io",
        "volumesnapshots" | "volumesnapshotclasses" => crate::volume_snapshot::GROUP,
        "selfsubjectaccessreviews" => "authorization.k8s.io",
        _ => "",
    }
}

/// Runs `send` until it succeeds, fails for good, or `limit` passes; each attempt gets at most
/// [`ATTEMPT_TIMEOUT`]. The inner result is the API's answer for the caller to match; the outer
/// error is a timeout, naming the last failure seen.
pub async fn call<T, F, Fut>(
    limit: Duration,
    request: &Request,
    send: F,
) -> Result<Result<T, kube::Error>, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    call_retrying(limit, request, transient, send).await
}

/// [`call`], retrying only the failures that `retry` accepts.
pub async fn call_retrying<T, F, Fut>(
    limit: Duration,
    request: &Request,
    retry: impl Fn(&kube::Error) -> bool,
    mut send: F,
) -> Result<Result<T, kube::Error>, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let deadline = Instant::now() + limit;
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 1;
    let mut last_error = None;
    loop {
        let attempt_deadline = (Instant::now() + ATTEMPT_TIMEOUT).min(deadline);
        let answer = match timeout_at(attempt_deadline, send()).await {
            Ok(answer) => answer,
            Err(_) if attempt_deadline < deadline => {
                warn!(%request, attempt, "no answer in time; sending it again");
                last_error = Some(format!(
                    "no answer within {}",
                    humantime::format_duration(ATTEMPT_TIMEOUT)
                ));
                attempt += 1;
                continue;
            }
            Err(_) => {
                return Err(Error::Timeout {
                    after: limit,
                    what: format!("an answer to {request}"),
                    last_error,
                });
            }
        };
        match answer {
            Err(error) if retry(&error) => {
                let described = describe_kube_error(&error);
                if attempt >= ATTEMPTS || Instant::now() + backoff >= deadline {
                    return Ok(Err(error));
                }
                warn!(%request, attempt, error = %described, "request failed; retrying");
                last_error = Some(described);
                sleep_until(Instant::now() + backoff).await;
                backoff *= 2;
                attempt += 1;
            }
            answer => return Ok(answer),
        }
    }
}

/// Failures a retry may fix: no answer at all, throttling and server errors. A refused or
/// unauthorized request is final.
pub fn transient(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => status.code == 429 || status.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// The field manager of every write: `managedFields` (and the conflicts of a later server-side
/// apply, Helm 4's) name this program.
pub const FIELD_MANAGER: &str = "storageclass-migrate";

/// The options of a create: as a dry run or for real, by [`FIELD_MANAGER`].
pub fn post_params(dry_run: bool) -> PostParams {
    PostParams {
        dry_run,
        field_manager: Some(FIELD_MANAGER.into()),
    }
}

/// Attempts at a read-check-write that the API keeps answering with 409.
const CONFLICT_ATTEMPTS: usize = 5;

/// Delete options with uid (and resourceVersion) preconditions, in the foreground of nothing.
pub fn delete_params(uid: &str, resource_version: Option<String>, dry_run: bool) -> DeleteParams {
    DeleteParams {
        dry_run,
        preconditions: Some(Preconditions {
            uid: Some(uid.to_owned()),
            resource_version,
        }),
        ..DeleteParams::background()
    }
}

/// A write the API rejected. Validation and admission (400, 422) refuse the plan; everything
/// else (403 names the denied verb and resource) is an API error.
pub fn write_error(request: Request, error: kube::Error) -> Error {
    match &error {
        kube::Error::Api(status) if status.code == 400 || status.code == 422 => {
            Error::Refused(Refusal::Rejected {
                request: request.to_string(),
                message: status.message.clone(),
            })
        }
        _ => Error::api(request, error),
    }
}

/// The 409 of a read-check-write that never settled.
pub fn kept_changing(request: Request) -> Error {
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

/// What a read-check-write found.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    Done,
    /// There was nothing to change.
    Unchanged,
    Gone,
    /// The object is no longer the one planned for; it was left alone.
    NotOurs,
}

impl Cluster {
    /// Reads the object, checks it with `ours`, and sends the merge patch that `patch` makes of
    /// it (None: nothing to change) with the resourceVersion read, so a concurrent change fails
    /// with 409; then it reads again and retries.
    pub async fn patch_checked<K>(
        &self,
        api: &Api<K>,
        name: &str,
        mode: Mode,
        request: Request,
        ours: impl Fn(&K) -> bool,
        patch: impl Fn(&K) -> Option<serde_json::Value>,
    ) -> Result<Written, Error>
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    {
        for _ in 0..CONFLICT_ATTEMPTS {
            let read = Request {
                verb: "get",
                ..request.clone()
            };
            let Some(object) = self.fetch(read, || api.get_opt(name)).await? else {
                return Ok(Written::Gone);
            };
            if !ours(&object) {
                return Ok(Written::NotOurs);
            }
            let Some(mut body) = patch(&object) else {
                return Ok(Written::Unchanged);
            };
            body["metadata"]["resourceVersion"] = json!(object.meta().resource_version);
            let params = PatchParams {
                dry_run: mode.dry_run(),
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            let body = Patch::Merge(&body);
            match self
                .send(&request, || api.patch(name, &params, &body))
                .await?
            {
                Ok(_) => return Ok(Written::Done),
                Err(kube::Error::Api(status)) if status.is_not_found() => return Ok(Written::Gone),
                Err(kube::Error::Api(status)) if status.is_conflict() => {
                    tracing::info!(%request, "object changed meanwhile; reading it again");
                }
                Err(e) => return Err(write_error(request, e)),
            }
        }
        Err(kept_changing(request))
    }

    /// Removes `remove` from the object's finalizers, by [`Cluster::patch_checked`].
    pub async fn remove_finalizers<K>(
        &self,
        api: &Api<K>,
        name: &str,
        remove: &[String],
        mode: Mode,
        request: Request,
        ours: impl Fn(&K) -> bool,
    ) -> Result<Written, Error>
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    {
        self.patch_checked(api, name, mode, request, ours, |object| {
            let current = object.meta().finalizers.clone().unwrap_or_default();
            let keep: Vec<&String> = current.iter().filter(|f| !remove.contains(f)).collect();
            (keep.len() != current.len()).then(|| json!({"metadata": {"finalizers": keep}}))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn status(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            ..Default::default()
        }))
    }

    #[test]
    fn which_failures_are_retried() {
        assert!(transient(&status(500)));
        assert!(transient(&status(503)));
        assert!(transient(&status(429)));
        assert!(!transient(&status(403)));
        assert!(!transient(&status(404)));
        assert!(!transient(&status(409)));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_a_server_error_then_succeeds() {
        let tries = Cell::new(0);
        let answer = call(
            Duration::from_secs(10),
            &Request::new("get", "pods"),
            || {
                tries.set(tries.get() + 1);
                let result = if tries.get() < 3 {
                    Err(status(500))
                } else {
                    Ok(7)
                };
                async move { result }
            },
        )
        .await
        .unwrap();
        assert_eq!(answer.unwrap(), 7);
        assert_eq!(tries.get(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_the_attempts() {
        let tries = Cell::new(0);
        let answer: Result<(), _> = call(
            Duration::from_secs(10),
            &Request::new("get", "pods"),
            || {
                tries.set(tries.get() + 1);
                async { Err(status(503)) }
            },
        )
        .await
        .unwrap();
        assert!(answer.is_err());
        assert_eq!(tries.get(), ATTEMPTS);
    }

    #[tokio::test(start_paused = true)]
    async fn does_not_retry_a_refusal() {
        let tries = Cell::new(0);
        let answer: Result<(), _> = call(
            Duration::from_secs(10),
            &Request::new("get", "pods"),
            || {
                tries.set(tries.get() + 1);
                async { Err(status(403)) }
            },
        )
        .await
        .unwrap();
        assert!(answer.is_err());
        assert_eq!(tries.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_request_times_out() {
        let request = Request::new("get", "persistentvolumeclaims").name("data");
        let error = call::<(), _, _>(Duration::from_secs(3), &request, std::future::pending)
            .await
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "timed out after 3s waiting for an answer to get persistentvolumeclaims \"data\""
        );
    }
}
