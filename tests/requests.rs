//! The exact requests a run sends, against a mock API server: methods, paths, queries such as
//! dryRun, delete preconditions and patch bodies. Behaviour on a real control plane is covered by
//! the control-plane tests; these pin the wire format.

use std::time::Duration;

use clap::Parser;
use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use storageclass_migrate::summary::{Item, Kind, Outcome, Result};
use storageclass_migrate::{Args, ExitStatus, run};

const CLAIM: &str = "/api/v1/namespaces/apps/persistentvolumeclaims/data";
const CLAIM_WATCH: &str =
    "/api/v1/namespaces/apps/persistentvolumeclaims?&fieldSelector=metadata.name%3Ddata&limit=500";
const VOLUME: &str = "/api/v1/persistentvolumes/pv-1";
const VOLUME_WATCH: &str =
    "/api/v1/persistentvolumes?&fieldSelector=metadata.name%3Dpv-1&limit=500";
const PODS: &str = "/api/v1/namespaces/apps/pods?&limit=500";
const NAMESPACE: &str = "/api/v1/namespaces/apps";

struct Expect {
    method: &'static str,
    uri: String,
    body: Option<Value>,
    content_type: Option<&'static str>,
    status: u16,
    response: Value,
}

fn expect(method: &'static str, uri: &str, status: u16, response: Value) -> Expect {
    Expect {
        method,
        uri: uri.to_owned(),
        body: None,
        content_type: None,
        status,
        response,
    }
}

impl Expect {
    fn body(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }

    fn content_type(mut self, content_type: &'static str) -> Self {
        self.content_type = Some(content_type);
        self
    }
}

/// `expected` is contained in `actual`: every key it names has the same value.
fn contains(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => e
            .iter()
            .all(|(k, v)| a.get(k).is_some_and(|av| contains(av, v))),
        _ => actual == expected,
    }
}

async fn run_against(args: &[&str], expects: Vec<Expect>) -> Vec<Outcome> {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "apps");
    let server = tokio::spawn(async move {
        for (i, e) in expects.into_iter().enumerate() {
            let (request, send) = handle.next_request().await.expect("a request");
            assert_eq!(
                request.method().as_str(),
                e.method,
                "request {i}: {}",
                request.uri()
            );
            assert_eq!(request.uri().to_string(), e.uri, "request {i}");
            if let Some(content_type) = e.content_type {
                assert_eq!(
                    request.headers()["content-type"],
                    content_type,
                    "request {i}"
                );
            }
            let body = request.into_body().collect_bytes().await.unwrap();
            if let Some(expected) = &e.body {
                let actual: Value = serde_json::from_slice(&body).unwrap();
                assert!(
                    contains(&actual, expected),
                    "request {i} body {actual} lacks {expected}"
                );
            }
            let response = Response::builder()
                .status(e.status)
                .body(Body::from(serde_json::to_vec(&e.response).unwrap()))
                .unwrap();
            send.send_response(response);
        }
        if let Some((request, _)) = handle.next_request().await {
            panic!("unexpected request {} {}", request.method(), request.uri());
        }
    });
    let argv = [
        "storageclass-migrate",
        "--namespace",
        "apps",
        "--pvc",
        "data",
        "--timeout",
        "5s",
    ];
    let config = Args::try_parse_from(argv.iter().chain(args))
        .unwrap()
        .config()
        .unwrap();
    let outcomes = tokio::time::timeout(Duration::from_secs(10), run::run(client, &config))
        .await
        .expect("run finished")
        .expect("run succeeded");
    server.await.expect("every expected request was made");
    outcomes
}

fn claim(class: &str, volume: Option<&str>, finalizers: &[&str]) -> Value {
    json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data", "namespace": "apps", "uid": "claim-uid", "resourceVersion": "7", "finalizers": finalizers},
        "spec": {"storageClassName": class, "volumeName": volume, "accessModes": ["ReadWriteOnce"]},
    })
}

fn deleting(mut claim: Value) -> Value {
    claim["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    claim["metadata"]["resourceVersion"] = json!("8");
    claim
}

fn volume(policy: &str, finalizers: &[&str]) -> Value {
    json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": "pv-1", "uid": "pv-uid", "resourceVersion": "3", "finalizers": finalizers},
        "spec": {
            "persistentVolumeReclaimPolicy": policy, "storageClassName": "a",
            "claimRef": {"namespace": "apps", "name": "data", "uid": "claim-uid"},
        },
        "status": {"phase": "Bound"},
    })
}

fn class(name: &str, default: bool, created: &str) -> Value {
    json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": name, "creationTimestamp": created,
            "annotations": {"storageclass.kubernetes.io/is-default-class": default.to_string()}},
        "provisioner": "example.com/none",
    })
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": "10"}, "items": items})
}

fn pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "apps"},
        "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "x"}],
            "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "data"}}]},
    })
}

/// Nothing to do: the claim is on the desired class.
fn assert_already_on_it(outcome: &Outcome) {
    assert_eq!(outcome.result, Result::NothingToDo, "{}", outcome.line());
    assert_eq!(
        outcome.detail.as_deref(),
        Some("already on the desired class")
    );
}

fn kinds(items: &[Item]) -> Vec<Kind> {
    items.iter().map(|i| i.kind).collect()
}

/// The kinds of `items`, a list of `outcome`, are `expected`.
fn assert_kinds(outcome: &Outcome, items: &[Item], expected: &[Kind]) {
    assert_eq!(kinds(items), expected, "{}", outcome.line());
}

/// `GET` of the claim, answered with `claim`.
fn get_claim(claim: Value) -> Expect {
    expect("GET", CLAIM, 200, claim)
}

/// The watch at `uri` (of a claim or a volume), which finds the object gone: an empty list of
/// `kind`.
fn gone(uri: &str, kind: &str) -> Expect {
    expect("GET", uri, 200, list(kind, vec![]))
}

/// `GET` of class b, which exists.
fn get_class_b() -> Expect {
    expect(
        "GET",
        "/apis/storage.k8s.io/v1/storageclasses/b",
        200,
        class("b", false, "2026-01-01T00:00:00Z"),
    )
}

/// The list of the namespace's pods, answered with `pods`.
fn list_pods(pods: Vec<Value>) -> Expect {
    expect("GET", PODS, 200, list("PodList", pods))
}

fn status(code: u16, reason: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": code, "reason": reason, "message": reason})
}

fn delete_body(uid: &str) -> Value {
    json!({"propagationPolicy": "Background", "preconditions": {"uid": uid}})
}

fn namespace() -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "apps"}})
}

#[tokio::test]
async fn absent_claim_checks_the_namespace_only() {
    let outcomes = run_against(
        &["--storage-class", "b"],
        vec![
            expect("GET", CLAIM, 404, status(404, "NotFound")),
            expect("GET", NAMESPACE, 200, namespace()),
        ],
    )
    .await;
    assert_eq!(outcomes[0].line(), "apps/data: nothing to do: claim absent");
    assert_eq!(outcomes[0].status, ExitStatus::Ok);
}

#[tokio::test]
async fn claim_on_desired_class_takes_one_request() {
    let outcomes = run_against(
        &["--storage-class", "b"],
        vec![get_claim(claim("b", Some("pv-1"), &[]))],
    )
    .await;
    assert_already_on_it(&outcomes[0]);
}

#[tokio::test]
async fn default_class_is_listed_and_newest_wins() {
    let classes = list(
        "StorageClassList",
        vec![
            class("old", true, "2026-01-01T00:00:00Z"),
            class("a", true, "2026-02-01T00:00:00Z"),
            class("b", false, "2026-03-01T00:00:00Z"),
        ],
    );
    let outcomes = run_against(
        &[],
        vec![
            expect(
                "GET",
                "/apis/storage.k8s.io/v1/storageclasses?&limit=500",
                200,
                classes,
            ),
            get_claim(claim("a", Some("pv-1"), &[])),
        ],
    )
    .await;
    assert_already_on_it(&outcomes[0]);
}

#[tokio::test]
async fn retained_volume_deleted_on_request_with_uid_preconditions() {
    let outcomes = run_against(
        &["--storage-class", "b", "--delete-retained-pv"],
        vec![
            get_claim(claim("a", Some("pv-1"), &["kubernetes.io/pvc-protection"])),
            get_class_b(),
            expect(
                "GET",
                VOLUME,
                200,
                volume("Retain", &["kubernetes.io/pv-protection"]),
            ),
            list_pods(vec![]),
            expect("PATCH", &format!("{VOLUME}?"), 200, volume("Retain", &[]))
                .body(json!({"metadata": {"uid": "pv-uid", "annotations": {"storageclass-migrate/delete-after-claim": "apps/data"}}}))
                .content_type("application/merge-patch+json"),
            expect(
                "DELETE",
                &format!("{CLAIM}?"),
                200,
                deleting(claim("a", Some("pv-1"), &["kubernetes.io/pvc-protection"])),
            )
            .body(delete_body("claim-uid")),
            gone(CLAIM_WATCH, "PersistentVolumeClaimList"),
            expect("GET", VOLUME, 200, volume("Retain", &[])),
            expect("DELETE", &format!("{VOLUME}?"), 200, volume("Retain", &[]))
                .body(json!({"propagationPolicy": "Background", "preconditions": {"uid": "pv-uid", "resourceVersion": "3"}})),
            gone(VOLUME_WATCH, "PersistentVolumeList"),
        ],
    )
    .await;
    let outcome = &outcomes[0];
    assert_eq!(outcome.status, ExitStatus::Ok, "{}", outcome.line());
    assert_eq!(outcome.result, Result::Migrated);
    assert_kinds(
        outcome,
        &outcome.done,
        &[Kind::ClaimDeleted, Kind::ClaimGone, Kind::VolumeDeleted],
    );
    assert!(outcome.left.is_empty(), "{}", outcome.line());
}

#[tokio::test]
async fn retained_volume_is_kept_and_named() {
    let outcomes = run_against(
        &["--storage-class", "b"],
        vec![
            get_claim(claim("a", Some("pv-1"), &[])),
            get_class_b(),
            expect("GET", VOLUME, 200, volume("Retain", &[])),
            list_pods(vec![]),
            expect(
                "DELETE",
                &format!("{CLAIM}?"),
                200,
                deleting(claim("a", Some("pv-1"), &[])),
            ),
            gone(CLAIM_WATCH, "PersistentVolumeClaimList"),
        ],
    )
    .await;
    let outcome = &outcomes[0];
    assert_kinds(outcome, &outcome.left, &[Kind::VolumeKept]);
    assert_eq!(outcome.left[0].name.as_deref(), Some("pv-1"));
}

#[tokio::test]
async fn dry_run_sends_deletes_and_evictions_with_dry_run_all() {
    let outcomes = run_against(
        &["--storage-class", "b", "--dry-run", "--delete-retained-pv"],
        vec![
            get_claim(claim("a", Some("pv-1"), &[])),
            get_class_b(),
            expect("GET", VOLUME, 200, volume("Retain", &[])),
            list_pods(vec![pod("web-0")]),
            expect("DELETE", &format!("{CLAIM}?"), 200, deleting(claim("a", Some("pv-1"), &[])))
                .body(json!({"dryRun": ["All"], "preconditions": {"uid": "claim-uid"}})),
            expect("POST", "/api/v1/namespaces/apps/pods/web-0/eviction?&dryRun=All", 201, status(201, "Created"))
                .body(json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "web-0", "namespace": "apps"}, "deleteOptions": {"dryRun": ["All"]}})),
            expect("GET", VOLUME, 200, volume("Retain", &[])),
            expect("DELETE", &format!("{VOLUME}?"), 200, volume("Retain", &[]))
                .body(json!({"dryRun": ["All"], "preconditions": {"uid": "pv-uid", "resourceVersion": "3"}})),
        ],
    )
    .await;
    let outcome = &outcomes[0];
    assert_eq!(outcome.result, Result::DryRun, "{}", outcome.line());
    assert_eq!(outcome.detail.as_deref(), Some("class \"b\""));
    assert!(
        outcome.done.is_empty() && !outcome.changed,
        "{}",
        outcome.line()
    );
    assert!(
        kinds(&outcome.would).contains(&Kind::PodEvicted),
        "{}",
        outcome.line()
    );
}

#[tokio::test]
async fn force_strips_pvc_protection_with_a_resource_version_merge_patch_and_retries_a_conflict() {
    let finalizers = ["kubernetes.io/pvc-protection", "example.com/keep"];
    let deleted = deleting(claim("a", None, &finalizers));
    let patch =
        || json!({"metadata": {"finalizers": ["example.com/keep"], "resourceVersion": "8"}});
    let outcomes = run_against(
        &["--storage-class", "b", "--in-use", "force"],
        vec![
            get_claim(claim("a", None, &finalizers)),
            get_class_b(),
            list_pods(vec![pod("web-0")]),
            expect("DELETE", &format!("{CLAIM}?"), 200, deleted.clone()),
            expect("GET", CLAIM, 200, deleted.clone()),
            expect("PATCH", &format!("{CLAIM}?"), 409, status(409, "Conflict"))
                .body(patch())
                .content_type("application/merge-patch+json"),
            expect("GET", CLAIM, 200, deleted.clone()),
            expect("PATCH", &format!("{CLAIM}?"), 200, deleted.clone()).body(patch()),
            gone(CLAIM_WATCH, "PersistentVolumeClaimList"),
        ],
    )
    .await;
    let outcome = &outcomes[0];
    assert_eq!(outcome.status, ExitStatus::Ok, "{}", outcome.line());
    assert_kinds(
        outcome,
        &outcome.done,
        &[
            Kind::ClaimDeleted,
            Kind::ClaimFinalizerStripped,
            Kind::ClaimGone,
        ],
    );
    // Only pvc-protection: the other controller's finalizer stays.
    assert_eq!(
        outcome.done[1].text,
        "stripped claim finalizers kubernetes.io/pvc-protection"
    );
}

#[tokio::test]
async fn evict_deletes_the_claim_first_then_posts_evictions() {
    let outcomes = run_against(
        &["--storage-class", "b"],
        vec![
            get_claim(claim("a", None, &["kubernetes.io/pvc-protection"])),
            get_class_b(),
            list_pods(vec![pod("web-0")]),
            expect(
                "DELETE",
                &format!("{CLAIM}?"),
                200,
                deleting(claim("a", None, &["kubernetes.io/pvc-protection"])),
            ),
            expect(
                "POST",
                "/api/v1/namespaces/apps/pods/web-0/eviction?",
                201,
                status(201, "Created"),
            )
            .body(json!({"kind": "Eviction", "metadata": {"name": "web-0", "namespace": "apps"}})),
            gone(CLAIM_WATCH, "PersistentVolumeClaimList"),
        ],
    )
    .await;
    let outcome = &outcomes[0];
    assert_kinds(
        outcome,
        &outcome.done,
        &[Kind::ClaimDeleted, Kind::PodEvicted, Kind::ClaimGone],
    );
    assert_eq!(outcome.done[1].name.as_deref(), Some("web-0"));
}

#[tokio::test]
async fn replaced_claim_is_refused_on_uid_precondition() {
    let outcomes = run_against(
        &["--storage-class", "b"],
        vec![
            get_claim(claim("a", None, &[])),
            get_class_b(),
            list_pods(vec![]),
            expect("DELETE", &format!("{CLAIM}?"), 409, status(409, "Conflict")),
        ],
    )
    .await;
    let outcome = &outcomes[0];
    assert_eq!(outcome.status, ExitStatus::Refused, "{}", outcome.line());
    assert_eq!(outcome.result, Result::Refused);
    assert!(!outcome.changed);
    assert!(
        outcome
            .error
            .as_deref()
            .unwrap_or_default()
            .starts_with("the claim was replaced"),
        "{}",
        outcome.line()
    );
}

#[tokio::test]
async fn forbidden_names_the_verb_and_resource() {
    let forbidden = json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 403, "reason": "Forbidden",
        "message": "persistentvolumeclaims \"data\" is forbidden: User \"system:serviceaccount:apps:hook\" cannot delete resource \"persistentvolumeclaims\" in API group \"\" in the namespace \"apps\""});
    let outcomes = run_against(
        &["--storage-class", "b"],
        vec![
            get_claim(claim("a", None, &[])),
            get_class_b(),
            list_pods(vec![]),
            expect("DELETE", &format!("{CLAIM}?"), 403, forbidden),
        ],
    )
    .await;
    let outcome = &outcomes[0];
    assert_eq!(outcome.status, ExitStatus::Api, "{}", outcome.line());
    assert_eq!(outcome.result, Result::Failed);
    assert!(
        outcome.error.as_deref().unwrap_or_default().contains(
            "delete persistentvolumeclaims \"data\" in namespace \"apps\": HTTP 403 Forbidden: "
        ),
        "{}",
        outcome.line()
    );
}

#[tokio::test]
async fn missing_target_class_is_refused_before_any_change() {
    let outcomes = run_against(
        &["--storage-class", "b"],
        vec![
            get_claim(claim("a", Some("pv-1"), &[])),
            expect(
                "GET",
                "/apis/storage.k8s.io/v1/storageclasses/b",
                404,
                status(404, "NotFound"),
            ),
            expect("GET", VOLUME, 200, volume("Delete", &[])),
            list_pods(vec![]),
        ],
    )
    .await;
    let outcome = &outcomes[0];
    assert_eq!(outcome.status, ExitStatus::Refused, "{}", outcome.line());
    assert!(
        outcome
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("StorageClass \"b\" does not exist"),
        "{}",
        outcome.line()
    );
}

#[tokio::test]
async fn selector_lists_claims_by_label() {
    let outcomes = run_against(
        &["--selector", "app=db", "--storage-class", "b"],
        vec![
            expect(
                "GET",
                "/api/v1/namespaces/apps/persistentvolumeclaims?&labelSelector=app%3Ddb&limit=500",
                200,
                list("PersistentVolumeClaimList", vec![claim("b", None, &[])]),
            ),
            get_claim(claim("b", None, &[])),
        ],
    )
    .await;
    assert_eq!(outcomes.len(), 1);
}

#[tokio::test]
async fn a_volume_marked_by_an_interrupted_run_is_finished() {
    let mut marked = volume("Retain", &[]);
    marked["metadata"]["annotations"] =
        json!({"storageclass-migrate/delete-after-claim": "apps/data"});
    marked["status"]["phase"] = json!("Released");
    let outcomes = run_against(
        &["--storage-class", "b", "--delete-retained-pv"],
        vec![
            expect("GET", CLAIM, 404, status(404, "NotFound")),
            expect("GET", NAMESPACE, 200, namespace()),
            expect(
                "GET",
                "/api/v1/persistentvolumes?&limit=500",
                200,
                list("PersistentVolumeList", vec![marked.clone()]),
            ),
            expect("GET", VOLUME, 200, marked.clone()),
            expect("DELETE", &format!("{VOLUME}?"), 200, marked)
                .body(json!({"preconditions": {"uid": "pv-uid", "resourceVersion": "3"}})),
            gone(VOLUME_WATCH, "PersistentVolumeList"),
        ],
    )
    .await;
    assert_eq!(
        outcomes[0].line(),
        "apps/data: finished an interrupted migration: marked volumes of apps/data: found claim absent, PV pv-1 (Retain) left by an interrupted run; done: PV pv-1 (Retain) deleted"
    );
}

#[tokio::test]
async fn a_server_error_is_retried() {
    let outcomes = run_against(
        &["--storage-class", "b"],
        vec![
            expect("GET", CLAIM, 500, status(500, "InternalError")),
            get_claim(claim("b", None, &[])),
        ],
    )
    .await;
    assert_already_on_it(&outcomes[0]);
}

#[tokio::test]
async fn a_missing_namespace_is_bad_input() {
    let outcomes = run_against(
        &["--storage-class", "b"],
        vec![
            expect("GET", CLAIM, 404, status(404, "NotFound")),
            expect("GET", NAMESPACE, 404, status(404, "NotFound")),
        ],
    )
    .await;
    let outcome = &outcomes[0];
    assert_eq!(outcome.status, ExitStatus::BadInput, "{}", outcome.line());
    assert_eq!(outcome.result, Result::Failed);
    assert_eq!(
        outcome.error.as_deref(),
        Some("namespace \"apps\" does not exist")
    );
}

#[tokio::test]
async fn pods_are_listed_page_by_page() {
    let mut first = list(
        "PodList",
        vec![json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "other", "namespace": "apps"},
        "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "x"}]}})],
    );
    first["metadata"]["continue"] = json!("page-2");
    let outcomes = run_against(
        &["--storage-class", "b", "--in-use", "fail"],
        vec![
            get_claim(claim("a", None, &[])),
            get_class_b(),
            expect("GET", PODS, 200, first),
            expect(
                "GET",
                &format!("{PODS}&continue=page-2"),
                200,
                list("PodList", vec![pod("web-0")]),
            ),
        ],
    )
    .await;
    let outcome = &outcomes[0];
    assert_eq!(outcome.status, ExitStatus::Refused, "{}", outcome.line());
    assert_eq!(outcome.found[0].kind, Kind::Class);
    assert!(
        outcome.error.as_deref().unwrap_or_default().ends_with(
            "in use by pod web-0 on node node-1 (--in-use fail); stop them or choose --in-use evict"
        ),
        "{}",
        outcome.line()
    );
}
