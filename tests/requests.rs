//! The exact requests a run sends, against a mock API server: methods, paths, queries such as
//! dryRun, delete preconditions and patch bodies. Behaviour on a real control plane is covered by
//! the control-plane tests; these pin the wire format.

use std::time::Duration;

use clap::Parser;
use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use storageclass_migrate::summary::{Kind, Outcome, Result as Ending};
use storageclass_migrate::{Args, ExitStatus, run};

const CLAIM: &str = "/api/v1/namespaces/apps/persistentvolumeclaims/data";
const CLAIM_WATCH: &str =
    "/api/v1/namespaces/apps/persistentvolumeclaims?&fieldSelector=metadata.name%3Ddata&limit=500";
const VOLUME: &str = "/api/v1/persistentvolumes/pv-1";
const VOLUME_WATCH: &str =
    "/api/v1/persistentvolumes?&fieldSelector=metadata.name%3Dpv-1&limit=500";
const PODS: &str = "/api/v1/namespaces/apps/pods?&limit=500";
const NAMESPACE: &str = "/api/v1/namespaces/apps";
const CLASS_B: &str = "/apis/storage.k8s.io/v1/storageclasses/b";
const CLASS_A: &str = "/apis/storage.k8s.io/v1/storageclasses/a";
const MARK: &str = "storageclass-migrate/delete-after-claim";

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
    let mut argv = vec![
        "storageclass-migrate",
        "--namespace",
        "apps",
        "--timeout",
        "5s",
    ];
    if !args.contains(&"--pvc") {
        argv.extend(["--pvc", "data"]);
    }
    let config = Args::try_parse_from(argv.iter().chain(args))
        .unwrap()
        .config()
        .unwrap();
    let (_signal, stop) = tokio::sync::watch::channel(None);
    let run = run::run(client.clone(), client, &config, stop);
    let outcomes = tokio::time::timeout(Duration::from_secs(10), run)
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

fn class(name: &str) -> Value {
    json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": name},
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

fn status(code: u16, reason: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": code, "reason": reason, "message": reason})
}

fn delete_body(uid: &str) -> Value {
    json!({"propagationPolicy": "Background", "preconditions": {"uid": uid}})
}

fn namespace() -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "apps"}})
}

fn class_b() -> Expect {
    expect("GET", CLASS_B, 200, class("b"))
}

/// The old class, read once per run after the desired one for the VolumeAttributesClass hint.
fn class_a() -> Expect {
    expect("GET", CLASS_A, 200, class("a"))
}

fn pods(items: Vec<Value>) -> Expect {
    expect("GET", PODS, 200, list("PodList", items))
}

fn claim_gone() -> Expect {
    expect(
        "GET",
        CLAIM_WATCH,
        200,
        list("PersistentVolumeClaimList", vec![]),
    )
}

fn volume_gone() -> Expect {
    expect(
        "GET",
        VOLUME_WATCH,
        200,
        list("PersistentVolumeList", vec![]),
    )
}

/// The query of a patch: every write names the binary as its field manager.
fn patch_query(dry_run: bool) -> &'static str {
    if dry_run {
        "?&dryRun=All&fieldManager=storageclass-migrate"
    } else {
        "?&fieldManager=storageclass-migrate"
    }
}

/// A merge patch of the volume, after the read that checks it is still the claim's.
fn patch_volume(read: &Value, dry_run: bool, body: Value) -> [Expect; 2] {
    let query = patch_query(dry_run);
    [
        expect("GET", VOLUME, 200, read.clone()),
        expect("PATCH", &format!("{VOLUME}{query}"), 200, read.clone())
            .body(body)
            .content_type("application/merge-patch+json"),
    ]
}

/// The requests of each part, in order.
fn seq(parts: Vec<Vec<Expect>>) -> Vec<Expect> {
    parts.into_iter().flatten().collect()
}

/// The access reviews of the waits' lists and watches: claims, then (`volumes`) volumes.
fn waits(volumes: bool) -> Vec<Expect> {
    let review = |verb: &str, resource: &str, namespace: Option<&str>| {
        let name = if namespace.is_some() { "data" } else { "pv-1" };
        let mut attributes = json!({"verb": verb, "resource": resource, "name": name});
        if let Some(namespace) = namespace {
            attributes["namespace"] = json!(namespace);
        }
        expect(
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews?",
            201,
            json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": attributes}, "status": {"allowed": true}}),
        )
        .body(json!({"spec": {"resourceAttributes": attributes}}))
    };
    let mut expects = vec![
        review("list", "persistentvolumeclaims", Some("apps")),
        review("watch", "persistentvolumeclaims", Some("apps")),
    ];
    if volumes {
        expects.push(review("list", "persistentvolumes", None));
        expects.push(review("watch", "persistentvolumes", None));
    }
    expects
}

fn budgets_none() -> Expect {
    expect(
        "GET",
        "/apis/policy/v1/namespaces/apps/poddisruptionbudgets?&limit=500",
        200,
        list("PodDisruptionBudgetList", vec![]),
    )
}

/// The reads of a claim on class A used by pod web-0: claim, class, pods, budgets.
fn reads_with_a_pod(read: &Value) -> Vec<Expect> {
    vec![
        expect("GET", CLAIM, 200, read.clone()),
        class_b(),
        class_a(),
        pods(vec![pod("web-0")]),
        budgets_none(),
    ]
}

fn mark_body() -> Value {
    json!({"metadata": {"resourceVersion": "3", "annotations": {MARK: "apps/data/claim-uid"}}})
}

fn delete_claim(dry_run: bool, response: Value) -> Expect {
    let body = if dry_run {
        json!({"dryRun": ["All"], "preconditions": {"uid": "claim-uid"}})
    } else {
        delete_body("claim-uid")
    };
    expect("DELETE", &format!("{CLAIM}?"), 200, response).body(body)
}

fn evict(pod: &str, dry_run: bool) -> Expect {
    let (query, options) = if dry_run {
        ("?&dryRun=All", json!({"dryRun": ["All"]}))
    } else {
        ("?", Value::Null)
    };
    let mut body = json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod, "namespace": "apps"}});
    if !options.is_null() {
        body["deleteOptions"] = options;
    }
    expect(
        "POST",
        &format!("/api/v1/namespaces/apps/pods/{pod}/eviction{query}"),
        201,
        status(201, "Created"),
    )
    .body(body)
}

fn line(outcomes: &[Outcome]) -> String {
    outcomes[0].line()
}

fn kinds(items: &[storageclass_migrate::summary::Item]) -> Vec<Kind> {
    items.iter().map(|i| i.kind).collect()
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
    assert_eq!(line(&outcomes), "apps/data: nothing to do: claim absent");
    assert_eq!(outcomes[0].status, ExitStatus::Ok);
    assert_eq!(outcomes[0].result, Ending::NothingToDo);
}

#[tokio::test]
async fn claim_on_desired_class_takes_one_request() {
    let outcomes = run_against(
        &["--storage-class", "b"],
        vec![expect("GET", CLAIM, 200, claim("b", Some("pv-1"), &[]))],
    )
    .await;
    assert_eq!(outcomes[0].result, Ending::NothingToDo);
    assert_eq!(
        outcomes[0].detail.as_deref(),
        Some("already on the desired class")
    );
}

#[tokio::test]
async fn an_unset_class_changes_nothing_and_lists_no_classes() {
    let outcomes = run_against(
        &[],
        vec![expect("GET", CLAIM, 200, claim("a", Some("pv-1"), &[]))],
    )
    .await;
    assert_eq!(outcomes[0].result, Ending::NothingToDo);
    assert!(
        outcomes[0]
            .detail
            .as_deref()
            .unwrap()
            .starts_with("no class desired"),
        "{}",
        line(&outcomes)
    );
}

#[tokio::test]
async fn retained_volume_deleted_on_request_is_switched_to_delete_after_a_preflight() {
    let claim_read = claim("a", Some("pv-1"), &["kubernetes.io/pvc-protection"]);
    let pv = volume("Retain", &["kubernetes.io/pv-protection"]);
    let reclaim = json!({"metadata": {"resourceVersion": "3"}, "spec": {"persistentVolumeReclaimPolicy": "Delete"}});
    let mut expects = vec![
        expect("GET", CLAIM, 200, claim_read.clone()),
        class_b(),
        class_a(),
        expect("GET", VOLUME, 200, pv.clone()),
        pods(vec![]),
    ];
    // The pre-flight: the waits' rights, then every write as a dry run.
    expects.extend(waits(true));
    expects.extend(patch_volume(&pv, true, mark_body()));
    expects.push(delete_claim(true, claim_read.clone()));
    expects.extend(patch_volume(&pv, true, reclaim.clone()));
    // The commit.
    expects.extend(patch_volume(&pv, false, mark_body()));
    expects.push(delete_claim(false, deleting(claim_read)));
    expects.push(pods(vec![]));
    expects.push(claim_gone());
    expects.extend(patch_volume(&pv, false, reclaim));
    expects.push(volume_gone());
    let outcomes = run_against(&["--storage-class", "b", "--delete-retained-pv"], expects).await;
    assert_eq!(outcomes[0].status, ExitStatus::Ok, "{}", line(&outcomes));
    assert_eq!(
        kinds(&outcomes[0].done),
        [
            Kind::VolumeMarked,
            Kind::ClaimDeleted,
            Kind::ClaimGone,
            Kind::VolumeReclaimDelete,
            Kind::VolumeReclaimed
        ]
    );
    assert!(
        outcomes[0].would.is_empty(),
        "the pre-flight is not reported"
    );
}

#[tokio::test]
async fn retained_volume_is_kept_and_named() {
    let outcomes = run_against(
        &["--storage-class", "b"],
        vec![
            expect("GET", CLAIM, 200, claim("a", Some("pv-1"), &[])),
            class_b(),
            class_a(),
            expect("GET", VOLUME, 200, volume("Retain", &[])),
            pods(vec![]),
        ]
        .into_iter()
        .chain(waits(false))
        .chain([
            delete_claim(true, claim("a", Some("pv-1"), &[])),
            delete_claim(false, deleting(claim("a", Some("pv-1"), &[]))),
            pods(vec![]),
            claim_gone(),
        ])
        .collect(),
    )
    .await;
    assert_eq!(kinds(&outcomes[0].left), [Kind::VolumeKept]);
    assert_eq!(outcomes[0].left[0].name.as_deref(), Some("pv-1"));
    assert!(
        line(&outcomes).ends_with("left: PV pv-1 (Retain) with the old data"),
        "{}",
        line(&outcomes)
    );
}

#[tokio::test]
async fn dry_run_sends_every_write_with_dry_run_all_and_nothing_else() {
    let pv = volume("Retain", &[]);
    let reclaim = json!({"spec": {"persistentVolumeReclaimPolicy": "Delete"}});
    let mut expects = vec![
        expect("GET", CLAIM, 200, claim("a", Some("pv-1"), &[])),
        class_b(),
        class_a(),
        expect("GET", VOLUME, 200, pv.clone()),
        pods(vec![pod("web-0")]),
        budgets_none(),
    ];
    expects.extend(waits(true));
    expects.extend(patch_volume(&pv, true, mark_body()));
    expects.push(delete_claim(true, claim("a", Some("pv-1"), &[])));
    expects.push(evict("web-0", true));
    expects.extend(patch_volume(&pv, true, reclaim));
    let outcomes = run_against(
        &["--storage-class", "b", "--dry-run", "--delete-retained-pv"],
        expects,
    )
    .await;
    assert_eq!(outcomes[0].result, Ending::DryRun);
    assert!(!outcomes[0].changed);
    assert_eq!(
        kinds(&outcomes[0].would),
        [
            Kind::VolumeMarked,
            Kind::ClaimDeleted,
            Kind::PodEvicted,
            Kind::VolumeReclaimDelete
        ]
    );
}

#[tokio::test]
async fn force_strips_pvc_protection_with_a_resource_version_merge_patch_and_retries_a_conflict() {
    let finalizers = ["kubernetes.io/pvc-protection", "example.com/keep"];
    let read = claim("a", None, &finalizers);
    let deleted = deleting(claim("a", None, &finalizers));
    let patch =
        |rv: &str| json!({"metadata": {"finalizers": ["example.com/keep"], "resourceVersion": rv}});
    let outcomes = run_against(
        &["--storage-class", "b", "--in-use", "force"],
        seq(vec![
            vec![
                expect("GET", CLAIM, 200, read.clone()),
                class_b(),
                class_a(),
                pods(vec![pod("web-0")]),
            ],
            waits(false),
            vec![
                delete_claim(true, read.clone()),
                expect("GET", CLAIM, 200, read.clone()),
                expect(
                    "PATCH",
                    &format!("{CLAIM}{}", patch_query(true)),
                    200,
                    read.clone(),
                )
                .body(patch("7")),
                delete_claim(false, deleted.clone()),
                expect("GET", CLAIM, 200, deleted.clone()),
                expect(
                    "PATCH",
                    &format!("{CLAIM}{}", patch_query(false)),
                    409,
                    status(409, "Conflict"),
                )
                .body(patch("8"))
                .content_type("application/merge-patch+json"),
                expect("GET", CLAIM, 200, deleted.clone()),
                expect(
                    "PATCH",
                    &format!("{CLAIM}{}", patch_query(false)),
                    200,
                    deleted.clone(),
                )
                .body(patch("8")),
                claim_gone(),
            ],
        ]),
    )
    .await;
    assert_eq!(outcomes[0].status, ExitStatus::Ok, "{}", line(&outcomes));
    let stripped: Vec<_> = outcomes[0]
        .done
        .iter()
        .filter(|i| i.kind == Kind::ClaimFinalizerStripped)
        .map(|i| i.name.as_deref())
        .collect();
    assert_eq!(stripped, [Some("kubernetes.io/pvc-protection")]);
}

#[tokio::test]
async fn evict_deletes_the_claim_first_then_evicts_the_pods_listed_again() {
    let read = claim("a", None, &["kubernetes.io/pvc-protection"]);
    let outcomes = run_against(
        &["--storage-class", "b"],
        seq(vec![
            reads_with_a_pod(&read),
            waits(false),
            vec![
                delete_claim(true, read.clone()),
                evict("web-0", true),
                delete_claim(false, deleting(read)),
                // A pod scheduled after the first list is evicted too.
                pods(vec![pod("web-0"), pod("web-1")]),
                evict("web-0", false),
                evict("web-1", false),
                claim_gone(),
            ],
        ]),
    )
    .await;
    assert_eq!(
        kinds(&outcomes[0].done),
        [
            Kind::ClaimDeleted,
            Kind::PodEvicted,
            Kind::PodEvicted,
            Kind::ClaimGone
        ]
    );
}

#[tokio::test]
async fn a_budget_refusing_the_dry_run_eviction_changes_nothing() {
    let read = claim("a", None, &["kubernetes.io/pvc-protection"]);
    let refused = json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 429, "reason": "TooManyRequests",
        "message": "Cannot evict pod as it would violate the pod's disruption budget.",
        "details": {"causes": [{"reason": "DisruptionBudget", "message": "The disruption budget web needs 1 healthy pods and has 1 currently"}]}});
    let outcomes = run_against(
        &["--storage-class", "b"],
        seq(vec![
            reads_with_a_pod(&read),
            waits(false),
            vec![
                delete_claim(true, read),
                // Answered once: a budget's 429 is never retried.
                expect(
                    "POST",
                    "/api/v1/namespaces/apps/pods/web-0/eviction?&dryRun=All",
                    429,
                    refused,
                ),
            ],
        ]),
    )
    .await;
    assert_eq!(outcomes[0].status, ExitStatus::Refused);
    assert!(!outcomes[0].changed);
    let error = outcomes[0].error.as_deref().unwrap();
    assert!(error.contains("disruption budget web"), "{error}");
}

#[tokio::test]
async fn replaced_claim_is_refused_on_uid_precondition() {
    let outcomes = run_against(
        &["--storage-class", "b"],
        seq(vec![
            vec![
                expect("GET", CLAIM, 200, claim("a", None, &[])),
                class_b(),
                class_a(),
                pods(vec![]),
            ],
            waits(false),
            vec![expect(
                "DELETE",
                &format!("{CLAIM}?"),
                409,
                status(409, "Conflict"),
            )],
        ]),
    )
    .await;
    assert_eq!(outcomes[0].status, ExitStatus::Refused);
    assert!(
        line(&outcomes).starts_with("apps/data: refused, nothing changed"),
        "{}",
        line(&outcomes)
    );
    assert!(
        outcomes[0]
            .error
            .as_deref()
            .unwrap()
            .starts_with("the claim was replaced")
    );
}

#[tokio::test]
async fn forbidden_in_the_preflight_names_the_verb_and_resource_and_changes_nothing() {
    let forbidden = json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 403, "reason": "Forbidden",
        "message": "persistentvolumeclaims \"data\" is forbidden: User \"system:serviceaccount:apps:hook\" cannot delete resource \"persistentvolumeclaims\" in API group \"\" in the namespace \"apps\""});
    let outcomes = run_against(
        &["--storage-class", "b"],
        seq(vec![
            vec![
                expect("GET", CLAIM, 200, claim("a", None, &[])),
                class_b(),
                class_a(),
                pods(vec![]),
            ],
            waits(false),
            vec![
                expect("DELETE", &format!("{CLAIM}?"), 403, forbidden)
                    .body(json!({"dryRun": ["All"]})),
            ],
        ]),
    )
    .await;
    assert_eq!(outcomes[0].status, ExitStatus::Api);
    assert!(!outcomes[0].changed);
    assert!(
        outcomes[0].error.as_deref().unwrap().starts_with(
            "delete persistentvolumeclaims \"data\" in namespace \"apps\": HTTP 403 Forbidden: "
        ),
        "{}",
        line(&outcomes)
    );
}

#[tokio::test]
async fn an_admission_rejection_in_the_preflight_is_a_refusal() {
    let invalid = status(422, "Invalid");
    let outcomes = run_against(
        &["--storage-class", "b"],
        seq(vec![
            vec![
                expect("GET", CLAIM, 200, claim("a", None, &[])),
                class_b(),
                class_a(),
                pods(vec![]),
            ],
            waits(false),
            vec![expect("DELETE", &format!("{CLAIM}?"), 422, invalid)],
        ]),
    )
    .await;
    assert_eq!(outcomes[0].status, ExitStatus::Refused);
    assert!(!outcomes[0].changed);
}

#[tokio::test]
async fn a_failure_after_the_claim_delete_is_part_way() {
    let read = claim("a", None, &[]);
    let outcomes = run_against(
        &["--storage-class", "b", "--in-use", "fail"],
        seq(vec![
            vec![
                expect("GET", CLAIM, 200, read.clone()),
                class_b(),
                class_a(),
                pods(vec![]),
            ],
            waits(false),
            vec![
                delete_claim(true, read.clone()),
                delete_claim(false, deleting(read)),
                expect("GET", CLAIM_WATCH, 403, status(403, "Forbidden")),
            ],
        ]),
    )
    .await;
    assert_eq!(outcomes[0].status, ExitStatus::PartWay);
    assert_eq!(outcomes[0].result, Ending::PartWay);
    assert_eq!(kinds(&outcomes[0].done), [Kind::ClaimDeleted]);
}

#[tokio::test]
async fn missing_target_class_is_refused_before_any_change() {
    let outcomes = run_against(
        &["--storage-class", "b"],
        vec![
            expect("GET", CLAIM, 200, claim("a", Some("pv-1"), &[])),
            expect("GET", CLASS_B, 404, status(404, "NotFound")),
            expect("GET", VOLUME, 200, volume("Delete", &[])),
            pods(vec![]),
        ],
    )
    .await;
    assert_eq!(outcomes[0].status, ExitStatus::Refused);
    assert!(
        outcomes[0]
            .error
            .as_deref()
            .unwrap()
            .contains("StorageClass \"b\" does not exist"),
        "{}",
        line(&outcomes)
    );
}

#[tokio::test]
async fn a_selector_takes_only_the_release_own_claims() {
    let mut owned = claim("b", None, &[]);
    owned["metadata"]["annotations"] =
        json!({"meta.helm.sh/release-name": "shop", "meta.helm.sh/release-namespace": "apps"});
    let mut foreign = claim("a", None, &[]);
    foreign["metadata"]["name"] = json!("db-data-db-0");
    let outcomes = run_against(
        &[
            "--selector",
            "app=db",
            "--release",
            "shop",
            "--storage-class",
            "b",
        ],
        vec![
            expect(
                "GET",
                "/api/v1/namespaces/apps/persistentvolumeclaims?&labelSelector=app%3Ddb&limit=500",
                200,
                list("PersistentVolumeClaimList", vec![owned.clone(), foreign]),
            ),
            expect("GET", CLAIM, 200, owned),
        ],
    )
    .await;
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0].claim, "apps/data");
}

#[tokio::test]
async fn a_volume_marked_by_an_interrupted_run_is_finished() {
    let mut marked = volume("Retain", &[]);
    marked["metadata"]["annotations"] = json!({MARK: "apps/data/claim-uid"});
    marked["status"]["phase"] = json!("Released");
    let reclaim = json!({"metadata": {"resourceVersion": "3"}, "spec": {"persistentVolumeReclaimPolicy": "Delete"}});
    let mut expects = vec![
        expect("GET", CLAIM, 404, status(404, "NotFound")),
        expect("GET", NAMESPACE, 200, namespace()),
        expect(
            "GET",
            "/api/v1/persistentvolumes?&limit=500",
            200,
            list("PersistentVolumeList", vec![marked.clone()]),
        ),
    ];
    expects.extend(patch_volume(&marked, true, reclaim.clone()));
    expects.extend(patch_volume(&marked, false, reclaim));
    expects.push(volume_gone());
    let outcomes = run_against(&["--storage-class", "b", "--delete-retained-pv"], expects).await;
    assert_eq!(outcomes[0].result, Ending::Finished);
    assert_eq!(
        kinds(&outcomes[0].found),
        [Kind::ClaimAbsent, Kind::MarkedVolume]
    );
    assert_eq!(
        kinds(&outcomes[0].done),
        [Kind::VolumeReclaimDelete, Kind::VolumeReclaimed]
    );
}

#[tokio::test]
async fn a_server_error_is_retried() {
    let outcomes = run_against(
        &["--storage-class", "b"],
        vec![
            expect("GET", CLAIM, 500, status(500, "InternalError")),
            expect("GET", CLAIM, 200, claim("b", None, &[])),
        ],
    )
    .await;
    assert_eq!(outcomes[0].result, Ending::NothingToDo);
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
    assert_eq!(outcomes[0].status, ExitStatus::BadInput);
    assert_eq!(
        outcomes[0].error.as_deref(),
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
            expect("GET", CLAIM, 200, claim("a", None, &[])),
            class_b(),
            class_a(),
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
    assert_eq!(outcomes[0].status, ExitStatus::Refused);
    assert!(
        outcomes[0]
            .error
            .as_deref()
            .unwrap()
            .starts_with("in use by pod web-0 on node node-1"),
        "{}",
        line(&outcomes)
    );
}

#[tokio::test]
async fn a_claim_that_cannot_go_through_holds_back_the_others() {
    let other = |class: &str| {
        let mut c = claim(class, None, &[]);
        c["metadata"]["name"] = json!("logs");
        c["metadata"]["uid"] = json!("logs-uid");
        c
    };
    let mut user = pod("web-0");
    user["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] = json!("logs");
    let logs = "/api/v1/namespaces/apps/persistentvolumeclaims/logs";
    let outcomes = run_against(
        &[
            "--pvc",
            "data,logs",
            "--storage-class",
            "b",
            "--in-use",
            "fail",
            "--concurrency",
            "1",
        ],
        seq(vec![
            vec![
                expect("GET", CLAIM, 200, claim("a", None, &[])),
                class_b(),
                class_a(),
                pods(vec![user]),
            ],
            waits(false),
            vec![
                delete_claim(true, claim("a", None, &[])),
                expect("GET", logs, 200, other("a")),
            ],
        ]),
    )
    .await;
    assert_eq!(
        outcomes[1].status,
        ExitStatus::Refused,
        "{}",
        outcomes[1].line()
    );
    assert_eq!(
        outcomes[0].status,
        ExitStatus::Refused,
        "{}",
        outcomes[0].line()
    );
    assert!(
        outcomes[0]
            .error
            .as_deref()
            .unwrap()
            .starts_with("held back: logs"),
        "{}",
        outcomes[0].line()
    );
    assert!(!outcomes[0].changed && !outcomes[1].changed);
}

#[tokio::test]
async fn a_wait_that_would_be_forbidden_stops_the_run_before_any_change() {
    let denied = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
        "spec": {}, "status": {"allowed": false}});
    let mut reviews = waits(false);
    reviews[1].status = 201;
    reviews[1].response = denied;
    let outcomes = run_against(
        &["--storage-class", "b"],
        seq(vec![
            vec![
                expect("GET", CLAIM, 200, claim("a", None, &[])),
                class_b(),
                class_a(),
                pods(vec![]),
            ],
            reviews,
        ]),
    )
    .await;
    assert_eq!(outcomes[0].status, ExitStatus::Api);
    assert!(!outcomes[0].changed);
    let error = outcomes[0].error.as_deref().unwrap();
    assert!(
        error.starts_with("watch persistentvolumeclaims \"data\" in namespace \"apps\": HTTP 403"),
        "{error}"
    );
}

const SNAPSHOT_CLASSES: &str = "/apis/snapshot.storage.k8s.io/v1/volumesnapshotclasses?&limit=500";

/// Claim `data` on class A with a size, bound to pv-1, a CSI volume of `driver`.
fn csi_scene(driver: &str) -> [Expect; 2] {
    let mut claim = claim("a", Some("pv-1"), &[]);
    claim["spec"]["resources"] = json!({"requests": {"storage": "1Gi"}});
    let mut pv = volume("Delete", &[]);
    pv["spec"]["csi"] = json!({"driver": driver, "volumeHandle": "h-1"});
    [
        expect("GET", CLAIM, 200, claim),
        expect("GET", VOLUME, 200, pv),
    ]
}

/// `--data snapshot` reads the snapshot classes once, after the volume, and a snapshot that
/// cannot work (here: class B provisions with another driver) is refused with no write sent.
#[tokio::test]
async fn a_snapshot_across_drivers_is_refused_after_one_list_of_snapshot_classes() {
    let [claim, volume] = csi_scene("other.example.com");
    let snapshot_class = json!({
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
        "metadata": {"name": "snaps", "annotations": {"snapshot.storage.kubernetes.io/is-default-class": "true"}},
        "driver": "other.example.com", "deletionPolicy": "Delete",
    });
    let outcomes = run_against(
        &["--storage-class", "b", "--data", "snapshot"],
        vec![
            claim,
            class_b(),
            class_a(),
            volume,
            expect(
                "GET",
                SNAPSHOT_CLASSES,
                200,
                list("VolumeSnapshotClassList", vec![snapshot_class]),
            ),
            pods(vec![]),
        ],
    )
    .await;
    assert_eq!(outcomes[0].status, ExitStatus::Refused);
    let line = line(&outcomes);
    assert!(
        line.contains("restored only by the driver that took it")
            && line.contains("DATA_POLICY=copy"),
        "{line}"
    );
}

/// A cluster without the snapshot API (the CRDs' list is 404) refuses `--data snapshot`, saying
/// so, with no write sent.
#[tokio::test]
async fn without_the_snapshot_api_a_snapshot_is_refused() {
    let [claim, volume] = csi_scene("example.com/none");
    let outcomes = run_against(
        &["--storage-class", "b", "--data", "snapshot"],
        vec![
            claim,
            class_b(),
            class_a(),
            volume,
            expect("GET", SNAPSHOT_CLASSES, 404, status(404, "NotFound")),
            pods(vec![]),
        ],
    )
    .await;
    assert_eq!(outcomes[0].status, ExitStatus::Refused);
    assert!(
        line(&outcomes).contains("serves no VolumeSnapshot API"),
        "{}",
        line(&outcomes)
    );
}
