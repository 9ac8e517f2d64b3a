//! Reliability on the local control plane: the binary either finishes with the right end state or
//! stops with its documented exit status and outcome, and never deletes what it should not. API
//! faults are injected by a proxy between the binary and the apiserver (`testkit::fault_proxy`);
//! runs are killed at each step and run again; other writers race with it; bad input,
//! least-privilege RBAC and credentials in the output are checked. Every row of
//! docs/reliability.md names the test here that backs it.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    core::v1::{Secret, ServiceAccount},
    rbac::v1::PolicyRule,
};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;
use testkit::fault_proxy::{Fault, FaultProxy, Gate, Match, Which};
use testkit::prelude::*;
use testkit::rows::check_rows;

/// The annotation a run puts on a volume it is going to delete, before it deletes the claim.
const MARK: &str = "storageclass-migrate/delete-after-claim";
/// A claim finalizer of another controller (a backup tool, say) that the binary waits for.
const FOREIGN_FINALIZER: &str = "example.com/backup";
/// WAIT_TIMEOUT of runs that are expected to finish: long enough never to expire here.
const OK_TIMEOUT: Duration = Duration::from_secs(20);
/// WAIT_TIMEOUT of runs in which a wait or a request is expected to expire.
const SHORT_TIMEOUT: Duration = Duration::from_secs(2);
/// Slack on top of WAIT_TIMEOUT for a run that must end by itself: start-up, the requests before
/// the step that expires, retries, and a loaded machine.
const MARGIN: Duration = Duration::from_secs(10);
/// How long a run that is expected to finish may take.
const OK_LIMIT: Duration = Duration::from_secs(30);
/// How long a run whose wait expires may take.
const SHORT_LIMIT: Duration = Duration::from_secs(12);
/// How long a test waits for a gate or a request at the proxy.
const GATE_TIMEOUT: Duration = Duration::from_secs(30);
/// One environment variable of the hook.
type Setting = (&'static str, &'static str);
/// Also delete the Retain volume.
const DELETE_PV: (&str, &str) = ("DELETE_RETAINED_PV", "true");
/// What a migration that keeps the Retain volume did.
const KEPT: &str =
    "migrated: found class, volume; done claim-deleted, claim-gone; left volume-kept";

// ------------------------------------------------------------------------------------------
// The scene: one claim to migrate, one that must never be touched

/// Classes a and b (Retain), claim `data` on class a bound to PV `<ns>-pv`, and claim `other`
/// on class a bound to PV `<ns>-pv-other`, which no run here may change.
struct Fixture {
    c: Cluster,
    pv: String,
    other_pv: String,
    /// The uid of claim `data` as created.
    data_uid: String,
}

impl std::ops::Deref for Fixture {
    type Target = Cluster;

    fn deref(&self) -> &Cluster {
        &self.c
    }
}

/// Variations of the scene.
#[derive(Clone, Copy, Debug, Default)]
struct Shape {
    /// A finalizer of another controller on claim `data`.
    claim_finalizer: bool,
    /// The volume of `data` as a CSI provisioner leaves it (reclaim policy Delete, the
    /// provisioner's finalizer); the provisioner does not run.
    csi_volume: bool,
}

/// Boxed, as are the other big helpers: a test's future lives on its thread's stack.
async fn fixture(prefix: &str, shape: Shape) -> Fixture {
    Box::pin(Fixture::new(prefix, shape)).await
}

impl Fixture {
    async fn new(prefix: &str, shape: Shape) -> Fixture {
        let retain = Class::new("a").retain();
        let c = Cluster::with_classes(prefix, retain.clone(), retain).await;
        let volume = |suffix: &str, claim: &str| {
            Volume::host_path(suffix)
                .class(&c.a)
                .reserved_for(c.name(), claim)
                .reclaimable()
        };
        let mut data_pv = volume("pv", "data");
        if shape.csi_volume {
            data_pv = data_pv.csi();
        }
        let other_pv = volume("pv-other", "other");
        let (pv, other_pv) = tokio::join!(data_pv.create(&c), other_pv.create(&c));
        let mut data = c.claim("data");
        if shape.claim_finalizer {
            data = data.finalizer(FOREIGN_FINALIZER);
        }
        let other = c.claim("other");
        let (data, _) = tokio::join!(data.create_bound(&c), other.create_bound(&c));
        Fixture {
            c,
            pv: pv.name_any(),
            other_pv: other_pv.name_any(),
            data_uid: data.uid().expect("a uid"),
        }
    }

    /// The hook's settings for claim `data`: move it to class b, plus `extra`.
    fn job(&self, extra: &[(&str, &str)]) -> Job {
        self.job_for("data", extra)
    }

    fn job_for(&self, claim: &str, extra: &[(&str, &str)]) -> Job {
        self.c.migration(claim, &[]).timeout(OK_TIMEOUT).with(extra)
    }

    fn short_job(&self, extra: &[(&str, &str)]) -> Job {
        self.job(extra).timeout(SHORT_TIMEOUT)
    }

    fn claim_path(&self) -> String {
        format!("{}/data", self.claims_path())
    }

    fn claims_path(&self) -> String {
        format!("/api/v1/namespaces/{}/persistentvolumeclaims", self.name())
    }

    fn pv_path(&self) -> String {
        format!("/api/v1/persistentvolumes/{}", self.pv)
    }

    /// A fault proxy with a kubeconfig that reaches the apiserver through it, as a
    /// ServiceAccount allowed everything.
    async fn proxy(&self) -> FaultProxy {
        let sa = Account::new("hook").admin().create(self).await;
        FaultProxy::to_apiserver(&sa.token, self.name())
    }

    /// The scene with a proxy and the state before any run.
    async fn proxied(prefix: &str, shape: Shape) -> (Fixture, FaultProxy, Snapshot) {
        let fx = fixture(prefix, shape).await;
        let proxy = fx.proxy().await;
        let before = fx.snapshot().await;
        (fx, proxy, before)
    }

    /// The mark a run puts on the volume of claim `data`: namespace, name and uid.
    fn mark(&self) -> Option<String> {
        Some(format!("{}/data/{}", self.name(), self.data_uid))
    }

    async fn remove_claim_finalizer(&self) {
        remove_finalizer(&self.claims(), "data", FOREIGN_FINALIZER).await;
    }

    async fn label_data(&self) {
        let labels = json!({"metadata": {
            "labels": {"migrate": "yes"},
            "annotations": {
                "meta.helm.sh/release-name": "rel",
                "meta.helm.sh/release-namespace": self.name(),
            },
        }});
        self.claims()
            .patch("data", &PatchParams::default(), &Patch::Merge(&labels))
            .await
            .expect("labelling the claim");
    }
}

/// Runs `job` through the proxy.
async fn via(proxy: &FaultProxy, job: Job, limit: Duration) -> Run {
    job.kubeconfig(proxy.kubeconfig()).run_within(limit).await
}

/// Runs `job` again through the proxy with every fault removed: the rerun must finish.
async fn rerun(proxy: &FaultProxy, job: Job) -> Run {
    proxy.clear();
    via(proxy, job, OK_LIMIT).await
}

// ------------------------------------------------------------------------------------------
// What a run changed

/// What identifies an object and what a run could have changed on it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Print {
    uid: String,
    deleting: bool,
    finalizers: Vec<String>,
    mark: Option<String>,
    /// A claim's volumeName; a volume's claimRef uid.
    bound: Option<String>,
}

fn print<K: kube::Resource>(object: &K, bound: Option<&str>) -> Print {
    let meta = object.meta();
    Print {
        uid: meta.uid.clone().unwrap_or_default(),
        deleting: meta.deletion_timestamp.is_some(),
        finalizers: meta.finalizers.clone().unwrap_or_default(),
        mark: meta.annotations.as_ref().and_then(|a| a.get(MARK)).cloned(),
        bound: bound.map(str::to_owned),
    }
}

async fn claim_print(c: &Cluster, name: &str) -> Option<Print> {
    let claim = read(&c.claims(), name).await?;
    Some(print(&claim, volume_name(&claim)))
}

async fn pv_print(c: &Cluster, name: &str) -> Option<Print> {
    let pv = read(&c.pvs(), name).await?;
    Some(print(&pv, claim_ref_uid(&pv)))
}

#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    claim: Option<Print>,
    pv: Option<Print>,
    other_claim: Option<Print>,
    other_pv: Option<Print>,
}

/// The state of claim `data` and its volume, in terms that compare across namespaces.
#[derive(Clone, Debug, PartialEq, Eq)]
struct EndState {
    /// (still on class a, being deleted)
    claim: Option<(bool, bool)>,
    /// (phase, marked, being deleted)
    pv: Option<(String, bool, bool)>,
}

/// Claim gone, the volume Released with the old data (reclaim policy Retain, the default).
fn kept_state() -> EndState {
    EndState {
        claim: None,
        pv: Some(("Released".into(), false, false)),
    }
}

/// Claim and volume gone (DELETE_RETAINED_PV=true).
const ALL_GONE: EndState = EndState {
    claim: None,
    pv: None,
};

impl Fixture {
    async fn snapshot(&self) -> Snapshot {
        Snapshot {
            claim: claim_print(self, "data").await,
            pv: pv_print(self, &self.pv).await,
            other_claim: claim_print(self, "other").await,
            other_pv: pv_print(self, &self.other_pv).await,
        }
    }

    /// Nothing was changed: every object as before.
    async fn assert_unchanged(&self, before: &Snapshot) {
        assert_eq!(&self.snapshot().await, before, "objects changed");
    }

    /// The claim and volume that must never be touched are as before.
    async fn assert_others_untouched(&self, before: &Snapshot) {
        let now = self.snapshot().await;
        assert_eq!(now.other_claim, before.other_claim, "claim `other` changed");
        assert_eq!(
            now.other_pv, before.other_pv,
            "the volume of `other` changed"
        );
        assert!(now.other_claim.is_some() && now.other_pv.is_some());
    }

    async fn end_state(&self) -> EndState {
        let claim = read(&self.claims(), "data").await;
        let pv = read(&self.pvs(), &self.pv).await;
        EndState {
            claim: claim.map(|c| {
                (
                    claim_class(&c) == Some(self.a.as_str()),
                    c.metadata.deletion_timestamp.is_some(),
                )
            }),
            pv: pv.map(|pv| {
                (
                    pv_phase(&pv).unwrap_or_default().to_owned(),
                    pv.annotations().contains_key(MARK),
                    pv.metadata.deletion_timestamp.is_some(),
                )
            }),
        }
    }

    /// Waits (bounded) until the end state is `expected`: controllers finish their part (a
    /// Released phase, a volume's protection finalizer) a moment after the binary exits.
    async fn assert_converges(&self, expected: &EndState) {
        let deadline = Instant::now() + WAIT_TIMEOUT;
        loop {
            let state = self.end_state().await;
            if &state == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "end state {state:?} never became {expected:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Migrated with the volume kept, and `other` untouched.
    async fn assert_kept(&self, before: &Snapshot) {
        self.assert_converges(&kept_state()).await;
        self.assert_others_untouched(before).await;
    }
}

/// Runs `extra` on a fresh scene of the same shape in another namespace, uninterrupted, with
/// the admin kubeconfig, and returns the state it leaves. `setup` prepares the scene; what it
/// returns is kept until the run has ended.
async fn reference_run<T>(
    shape: Shape,
    extra: &[(&str, &str)],
    setup: impl AsyncFnOnce(&Fixture) -> T,
) -> EndState {
    Box::pin(make_reference_run(shape, extra, setup)).await
}

async fn make_reference_run<T>(
    shape: Shape,
    extra: &[(&str, &str)],
    setup: impl AsyncFnOnce(&Fixture) -> T,
) -> EndState {
    let fx = fixture("reference", shape).await;
    let _keep = setup(&fx).await;
    let before = fx.snapshot().await;
    fx.job(extra)
        .run_within(OK_LIMIT)
        .await
        .expect_result(0, "migrated");
    fx.assert_others_untouched(&before).await;
    // Let the controllers finish, as assert_converges does for the run compared with it.
    let deadline = Instant::now() + WAIT_TIMEOUT;
    loop {
        let state = fx.end_state().await;
        let settled = state.claim.is_none()
            && state.pv.as_ref().is_none_or(|(phase, _, deleting)| {
                (phase == "Released" || phase == "Failed") && !deleting
            });
        if settled || Instant::now() > deadline {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn status(code: u16) -> Fault {
    Fault::Status {
        code,
        retry_after: None,
    }
}

// ------------------------------------------------------------------------------------------
// 1. API faults

#[tokio::test]
async fn a_throttled_read_is_retried_after_retry_after() {
    let (fx, p, before) = Fixture::proxied("throttled", Shape::default()).await;
    let read = Match::request("GET", &fx.claim_path());
    let throttled = Fault::Status {
        code: 429,
        retry_after: Some(1),
    };
    p.on(read.clone(), Which::Nth(1), throttled);

    via(&p, fx.job(&[]), OK_LIMIT)
        .await
        .expect_result(0, "migrated");
    let reads = p.matching(&read);
    assert!(reads.len() >= 2, "{}", p.describe());
    assert!(
        reads[1].at - reads[0].at >= Duration::from_millis(900),
        "Retry-After: 1 not honoured:\n{}",
        p.describe()
    );
    fx.assert_kept(&before).await;
}

#[tokio::test]
async fn throttling_that_never_ends_times_out_and_changes_nothing() {
    let (fx, p, before) = Fixture::proxied("throttled-forever", Shape::default()).await;
    let throttled = Fault::Status {
        code: 429,
        retry_after: Some(1),
    };
    p.on(
        Match::request("GET", &fx.claim_path()),
        Which::Every,
        throttled,
    );

    let expected =
        "timed out after 2s waiting for an answer to get persistentvolumeclaims \"data\"";
    via(&p, fx.short_job(&[]), SHORT_LIMIT)
        .await
        .within(SHORT_LIMIT)
        .expect_error(5, "failed", &[expected]);
    fx.assert_unchanged(&before).await;

    assert_eq!(rerun(&p, fx.job(&[])).await.outcome().shape(), KEPT);
    fx.assert_kept(&before).await;
}

#[tokio::test]
async fn a_server_error_on_the_claim_delete_is_retried() {
    let (fx, p, before) = Fixture::proxied("delete-500", Shape::default()).await;
    // A delete carries dryRun in its body: the first is the pre-flight's, the second the real one.
    let delete = Match::request("DELETE", &fx.claim_path());
    p.on(delete.clone(), Which::Nth(2), status(500));

    let run = via(&p, fx.job(&[]), OK_LIMIT).await;
    assert_eq!(run.expect_status(0).outcome().shape(), KEPT, "{run}");
    assert_eq!(p.count(&delete), 3, "{}", p.describe());
    fx.assert_kept(&before).await;
}

#[tokio::test]
async fn a_persistent_server_error_fails_naming_the_request() {
    let (fx, p, before) = Fixture::proxied("read-500", Shape::default()).await;
    let read = Match::request("GET", &fx.pv_path());
    p.on(read.clone(), Which::Every, status(500));

    let expected = format!("get persistentvolumes \"{}\": HTTP 500", fx.pv);
    via(&p, fx.job(&[]), OK_LIMIT)
        .await
        .within(MARGIN)
        .expect_error(4, "failed", &[&expected]);
    assert!(p.count(&read) > 1, "not retried:\n{}", p.describe());
    fx.assert_unchanged(&before).await;

    rerun(&p, fx.job(&[])).await.expect_result(0, "migrated");
    fx.assert_kept(&before).await;
}

#[tokio::test]
async fn an_unavailable_apiserver_is_retried() {
    let (fx, p, before) = Fixture::proxied("unavailable", Shape::default()).await;
    // Twice on the volume's read, once on the list of pods.
    let read = Match::request("GET", &fx.pv_path());
    p.on(read.clone(), Which::Nth(1), status(503));
    p.on(read.clone(), Which::Nth(2), status(503));
    let pods = Match::list(&format!("/api/v1/namespaces/{}/pods", fx.name()));
    p.on(pods, Which::Nth(1), status(503));

    via(&p, fx.job(&[]), OK_LIMIT)
        .await
        .expect_result(0, "migrated");
    assert!(p.count(&read) >= 3, "{}", p.describe());
    fx.assert_kept(&before).await;
}

/// A connection reset on the claim delete, before the apiserver saw it (`Reset`) or after it
/// acted (`ResetAfterForward`): the delete is sent again and the run succeeds.
#[tokio::test]
async fn a_connection_reset_around_the_claim_delete_is_retried() {
    let rows = vec![Fault::Reset, Fault::ResetAfterForward];
    check_rows(
        rows,
        |f| format!("{f:?}"),
        |fault| async move {
            let (fx, p, before) = Fixture::proxied("reset", Shape::default()).await;
            // The first delete is the pre-flight's dry run (dryRun is in its body).
            let delete = Match::request("DELETE", &fx.claim_path());
            p.on(delete.clone(), Which::Nth(2), fault);

            let run = via(&p, fx.job(&[]), OK_LIMIT).await;
            assert_eq!(run.expect_status(0).outcome().shape(), KEPT, "{run}");
            assert_eq!(p.count(&delete), 3, "{}", p.describe());
            fx.assert_kept(&before).await;
        },
    );
}

#[tokio::test]
async fn connections_that_always_reset_fail_as_unreachable() {
    let (fx, p, before) = Fixture::proxied("reset-always", Shape::default()).await;
    p.on(Match::any(), Which::Every, Fault::Reset);

    let run = via(&p, fx.job(&[]), OK_LIMIT).await;
    run.within(MARGIN).expect_error(
        4,
        "failed",
        &["get persistentvolumeclaims \"data\"", "connection"],
    );
    assert!(p.requests().len() > 1, "not retried:\n{}", p.describe());
    fx.assert_unchanged(&before).await;

    rerun(&p, fx.job(&[])).await.expect_result(0, "migrated");
    fx.assert_kept(&before).await;
}

/// A watch cut short (the claim's, or the volume's) is established again: the run sees the
/// object go once its holder lets go (another controller's finalizer on the claim; the
/// provisioner, which deletes the volume).
#[tokio::test]
async fn a_dropped_watch_is_reestablished() {
    let rows = vec!["claim", "volume"];
    check_rows(
        rows,
        |w| w.to_string(),
        |watched| async move {
            let claim = watched == "claim";
            let shape = Shape {
                claim_finalizer: claim,
                csi_volume: !claim,
            };
            let (fx, p, before) = Fixture::proxied("watch-cut", shape).await;
            let path = if claim {
                fx.claims_path()
            } else {
                "/api/v1/persistentvolumes".into()
            };
            let watch = Match::watch(&path);
            let cut = Fault::CutStream(Duration::from_millis(300));
            p.on(watch.clone(), Which::Nth(1), cut);

            let binary = fx.job(&[]).kubeconfig(p.kubeconfig()).spawn();
            // The first watch was cut; once the second is up, the holder lets go.
            p.wait_count(&watch, 2, GATE_TIMEOUT).await;
            if claim {
                fx.remove_claim_finalizer().await;
            } else {
                fx.pvs()
                    .delete(&fx.pv, &DeleteParams::default())
                    .await
                    .expect("deleting the volume");
                remove_finalizer(&fx.pvs(), &fx.pv, PROVISIONER_FINALIZER).await;
            }
            let run = binary.finish(OK_LIMIT).await;
            let expected = if claim {
                let shape = "migrated: found class, volume, foreign-finalizer; done claim-deleted, claim-gone; left volume-kept";
                (shape, kept_state())
            } else {
                let shape = "migrated: found class, volume; done claim-deleted, claim-gone, volume-reclaimed";
                (shape, ALL_GONE)
            };
            run.expect_shape(0, expected.0);
            fx.assert_converges(&expected.1).await;
            fx.assert_others_untouched(&before).await;
        },
    );
}

#[tokio::test]
async fn slow_answers_within_the_timeout_still_succeed() {
    let (fx, p, before) = Fixture::proxied("slow", Shape::default()).await;
    let slow = Fault::Delay(Duration::from_millis(1500));
    for (method, path) in [
        ("GET", fx.claim_path()),
        ("GET", fx.pv_path()),
        ("DELETE", fx.claim_path()),
    ] {
        p.on(Match::request(method, &path), Which::Every, slow.clone());
    }

    let run = via(&p, fx.job(&[("WAIT_TIMEOUT", "5s")]), OK_LIMIT).await;
    run.expect_result(0, "migrated");
    assert!(run.elapsed >= Duration::from_millis(4500), "{run}");
    fx.assert_kept(&before).await;
}

#[tokio::test]
async fn an_answer_slower_than_the_timeout_fails_in_time() {
    let (fx, p, before) = Fixture::proxied("hang", Shape::default()).await;
    let gate = Gate::new();
    p.on(
        Match::request("GET", &fx.pv_path()),
        Which::Every,
        Fault::Hold(gate.clone()),
    );

    let expected = format!(
        "timed out after 2s waiting for an answer to get persistentvolumes \"{}\"",
        fx.pv
    );
    let run = via(&p, fx.short_job(&[]), SHORT_LIMIT).await;
    gate.abandon();
    run.within(SHORT_LIMIT)
        .expect_error(5, "failed", &[&expected]);
    fx.assert_unchanged(&before).await;

    rerun(&p, fx.job(&[])).await.expect_result(0, "migrated");
    fx.assert_kept(&before).await;
}

#[tokio::test]
async fn a_claim_held_past_the_timeout_fails_naming_the_finalizer() {
    let shape = Shape {
        claim_finalizer: true,
        ..Shape::default()
    };
    let (fx, p, before) = Fixture::proxied("held", shape).await;

    let held = format!("to be deleted (finalizers {FOREIGN_FINALIZER})");
    let run = via(&p, fx.short_job(&[]), SHORT_LIMIT).await;
    let o = run
        .within(SHORT_LIMIT)
        .expect_error(6, "part-way", &["timed out", &held]);
    assert_eq!(o.done_kinds(), ["claim-deleted"], "{run}");

    // A rerun carries on from the deleted claim; the other controller lets go meanwhile.
    let gate = Gate::new();
    p.on(
        Match::watch(&fx.claims_path()),
        Which::Every,
        Fault::Observe(gate.clone()),
    );
    let binary = fx.job(&[]).kubeconfig(p.kubeconfig()).spawn();
    gate.arrived(GATE_TIMEOUT).await;
    fx.remove_claim_finalizer().await;
    let o = binary.finish(OK_LIMIT).await.expect_result(0, "migrated");
    assert!(
        o.has_found("being-deleted") && o.has_done("claim-gone"),
        "{o}"
    );
    fx.assert_kept(&before).await;
}

/// After the wait for the claim expires, the binary reads the claim and the pods once more to
/// name what holds it; those reads must be bounded too, or a hanging apiserver keeps the hook
/// (and `helm upgrade`) waiting far beyond WAIT_TIMEOUT.
#[tokio::test]
async fn a_hanging_read_after_the_claim_wait_expired_ends_in_time() {
    let shape = Shape {
        claim_finalizer: true,
        ..Shape::default()
    };
    let (fx, p, _) = Fixture::proxied("hang-after-wait", shape).await;
    let gate = Gate::new();
    // The first read of the claim passes; every later one (after the wait) hangs.
    p.on(
        Match::request("GET", &fx.claim_path()),
        Which::From(2),
        Fault::Hold(gate.clone()),
    );

    let run = via(&p, fx.short_job(&[]), SHORT_LIMIT).await;
    gate.abandon();
    run.within(SHORT_LIMIT)
        .expect_error(6, "part-way", &["timed out"]);
}

/// README: "a dropped connection, a 429 or a 5xx is retried a few times with backoff". The list
/// of claims by selector is one of the requests of a run.
#[tokio::test]
async fn a_server_error_listing_claims_by_selector_is_retried() {
    let (fx, p, before) = Fixture::proxied("selector-500", Shape::default()).await;
    let list = Match::list(&fx.claims_path()).query_has("labelSelector=");
    p.on(list.clone(), Which::Nth(1), status(500));
    fx.label_data().await;

    let by_label = [
        ("PVC_NAME", ""),
        ("PVC_SELECTOR", "migrate=yes"),
        ("RELEASE_NAME", "rel"),
    ];
    via(&p, fx.job(&by_label), OK_LIMIT)
        .await
        .expect_result(0, "migrated");
    assert_eq!(p.count(&list), 2, "{}", p.describe());
    fx.assert_kept(&before).await;
}

/// Each request is bounded by the timeout (README), the list by selector included.
#[tokio::test]
async fn a_hanging_list_by_selector_ends_in_time() {
    let (fx, p, _) = Fixture::proxied("selector-hang", Shape::default()).await;
    let gate = Gate::new();
    let list = Match::list(&fx.claims_path()).query_has("labelSelector=");
    p.on(list, Which::Every, Fault::Hold(gate.clone()));
    fx.label_data().await;
    let before = fx.snapshot().await;

    let by_label = [
        ("PVC_NAME", ""),
        ("PVC_SELECTOR", "migrate=yes"),
        ("RELEASE_NAME", "rel"),
    ];
    let run = via(&p, fx.short_job(&by_label), SHORT_LIMIT).await;
    gate.abandon();
    run.within(SHORT_LIMIT)
        .expect(5, &["timed out", "list persistentvolumeclaims"]);
    fx.assert_unchanged(&before).await;
}

/// The lookup of the desired class is a request of the run like the others: a 5xx is retried.
#[tokio::test]
async fn a_server_error_on_the_class_lookup_is_retried() {
    let (fx, p, before) = Fixture::proxied("class-500", Shape::default()).await;
    let lookup = Match::request(
        "GET",
        &format!("/apis/storage.k8s.io/v1/storageclasses/{}", fx.b),
    );
    p.on(lookup.clone(), Which::Nth(1), status(500));

    via(&p, fx.job(&[]), OK_LIMIT)
        .await
        .expect_result(0, "migrated");
    assert_eq!(p.count(&lookup), 2, "{}", p.describe());
    fx.assert_kept(&before).await;
}

// ------------------------------------------------------------------------------------------
// 2. Killed at each step, then run again with the same settings

/// Where a run is killed: once the proxy holds this request (or its answer).
#[derive(Clone, Copy, Debug)]
enum KillAt {
    /// The claim delete, before the apiserver saw it.
    ClaimDelete,
    /// The claim delete's answer: the apiserver deleted the claim, the binary never learns it.
    ClaimDeleteAnswer,
    /// The watch for the claim to go (the claim deleted, something holds it).
    ClaimWatch,
    /// The switch of the volume's reclaim policy to Delete, before the apiserver saw it.
    VolumeSwitch,
    /// The switch's answer: the apiserver switched it (and its deleter may be at work).
    VolumeSwitchAnswer,
}

/// What holds the claim after its delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Holder {
    Nothing,
    /// A finalizer of another controller, removed once the rerun watches.
    Finalizer,
    /// A pod on a node; a kubelet stand-in starts once the rerun watches.
    Pod,
}

/// The state a killed run leaves, checked before the rerun.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Killed {
    /// The claim untouched, its volume marked.
    ClaimUntouchedVolumeMarked,
    /// The claim gone, its volume Released and marked.
    ClaimGoneVolumeMarked,
    /// The claim gone (the volume is not to be deleted).
    ClaimGone,
    /// The claim being deleted, held.
    ClaimHeld,
    /// The claim being deleted, its pod evicted and still there (no kubelet).
    ClaimHeldPodEvicted,
    /// Whatever: the volume may be going or gone.
    Any,
}

struct KillRow {
    name: &'static str,
    at: KillAt,
    holder: Holder,
    delete_pv: bool,
    killed: Killed,
    /// The rerun's outcome (one of them: a volume still going or gone).
    rerun: &'static [&'static str],
}

impl KillRow {
    fn settings(&self) -> Vec<(&'static str, &'static str)> {
        if self.delete_pv {
            vec![DELETE_PV]
        } else {
            vec![]
        }
    }

    fn shape(&self) -> Shape {
        Shape {
            claim_finalizer: self.holder == Holder::Finalizer,
            ..Shape::default()
        }
    }
}

const MIGRATED_ALL: &str = "migrated: found class, volume; done claim-deleted, claim-gone, volume-reclaim-delete, volume-reclaimed";
const RESUMED: &str = "migrated: found class, being-deleted, volume, foreign-finalizer; done claim-gone, volume-reclaim-delete, volume-reclaimed";
const RESUMED_POD: &str = "migrated: found class, being-deleted, volume, used-by; done claim-gone, volume-reclaim-delete, volume-reclaimed";
const FINISHED: &str =
    "finished: found claim-absent, marked-volume; done volume-reclaim-delete, volume-reclaimed";
const ABSENT: &str = "nothing-to-do";
/// The rerun after the switch to Delete went through: the deleter finishes the volume.
const RECLAIMED: &str = "finished: found claim-absent, marked-volume; done volume-reclaimed";

fn kill_rows() -> Vec<KillRow> {
    use {Holder::*, KillAt::*};
    let row = |name, at, holder, delete_pv, killed, rerun| KillRow {
        name,
        at,
        holder,
        delete_pv,
        killed,
        rerun,
    };
    vec![
        row(
            "killed before the claim delete, a rerun converges",
            ClaimDelete,
            Nothing,
            true,
            Killed::ClaimUntouchedVolumeMarked,
            &[MIGRATED_ALL],
        ),
        row(
            "killed after the claim delete, a rerun finishes the volume",
            ClaimDeleteAnswer,
            Nothing,
            true,
            Killed::ClaimGoneVolumeMarked,
            &[FINISHED],
        ),
        row(
            "killed after the claim delete, a rerun keeps the volume",
            ClaimDeleteAnswer,
            Nothing,
            false,
            Killed::ClaimGone,
            &[ABSENT],
        ),
        row(
            "killed while a finalizer holds the claim, a rerun converges",
            ClaimWatch,
            Finalizer,
            true,
            Killed::ClaimHeld,
            &[RESUMED],
        ),
        row(
            "killed while a pod holds the claim, a rerun converges",
            ClaimWatch,
            Pod,
            true,
            Killed::ClaimHeldPodEvicted,
            &[RESUMED_POD],
        ),
        row(
            "killed before the reclaim-policy switch, a rerun finishes it",
            VolumeSwitch,
            Nothing,
            true,
            Killed::ClaimGoneVolumeMarked,
            &[FINISHED],
        ),
        row(
            "killed after the reclaim-policy switch, a rerun has nothing left",
            VolumeSwitchAnswer,
            Nothing,
            true,
            Killed::Any,
            &[ABSENT, FINISHED, RECLAIMED],
        ),
    ]
}

/// A pod on a node that uses claim `data`, marked running.
async fn pod_using_data(fx: &Fixture) {
    ClaimUser::new("user")
        .claim("data")
        .running()
        .create(fx)
        .await;
}

/// Each row: a reference run of the same scene gives the end state; the run under test is
/// SIGKILLed once the proxy holds the row's request, whatever the proxy still holds is dropped
/// (nothing reaches the apiserver after the kill), the state left is checked, and a rerun with
/// the same settings (the holder letting go once it watches) converges to the reference's end.
#[tokio::test]
async fn killed_at_each_step_a_rerun_converges() {
    check_rows(
        kill_rows(),
        |r| r.name.to_owned(),
        |row| async move {
            let settings = row.settings();
            let with_pod = async |fx: &Fixture| {
                if row.holder == Holder::Pod {
                    pod_using_data(fx).await;
                    Some(KubeletStandIn::start(fx.name()))
                } else {
                    None
                }
            };
            let reference_shape = Shape::default();
            let (fx, expected) = tokio::join!(
                fixture("kill", row.shape()),
                reference_run(reference_shape, &settings, with_pod),
            );
            let expected_end = if row.delete_pv {
                ALL_GONE
            } else {
                kept_state()
            };
            assert_eq!(expected, expected_end, "the reference run");
            if row.holder == Holder::Pod {
                pod_using_data(&fx).await;
            }
            let p = fx.proxy().await;
            let gate = Gate::new();
            let (matcher, fault) = match row.at {
                KillAt::ClaimDelete => (
                    Match::request("DELETE", &fx.claim_path()),
                    Fault::Hold(gate.clone()),
                ),
                KillAt::ClaimDeleteAnswer => (
                    Match::request("DELETE", &fx.claim_path()),
                    Fault::HoldAnswer(gate.clone()),
                ),
                KillAt::ClaimWatch => (
                    Match::watch(&fx.claims_path()),
                    Fault::Observe(gate.clone()),
                ),
                KillAt::VolumeSwitch => (
                    Match::write("PATCH", &fx.pv_path()),
                    Fault::Hold(gate.clone()),
                ),
                KillAt::VolumeSwitchAnswer => (
                    Match::write("PATCH", &fx.pv_path()),
                    Fault::HoldAnswer(gate.clone()),
                ),
            };
            // A claim delete carries dryRun in its body: the first is the pre-flight's. The
            // volume's real patches are the mark, then the switch to Delete.
            let which = match row.at {
                KillAt::ClaimWatch => Which::Every,
                _ => Which::Nth(2),
            };
            p.on(matcher.clone(), which, fault);
            let before = fx.snapshot().await;
            let job = fx.job(&settings).kubeconfig(p.kubeconfig());

            let binary = job.spawn();
            gate.arrived(GATE_TIMEOUT).await;
            binary.kill();
            gate.abandon();

            let killed = fx.snapshot().await;
            match row.killed {
                Killed::ClaimUntouchedVolumeMarked => {
                    assert_eq!(killed.claim, before.claim);
                    assert_eq!(killed.pv.expect("the volume").mark, fx.mark());
                }
                Killed::ClaimGoneVolumeMarked | Killed::ClaimGone => {
                    wait_deleted(&fx.claims(), "data").await;
                    if row.killed == Killed::ClaimGoneVolumeMarked {
                        let released = wait_pv_phase(fx.client(), &fx.pv, "Released").await;
                        assert!(released.metadata.deletion_timestamp.is_none());
                        assert_eq!(released.annotations().get(MARK), fx.mark().as_ref());
                    }
                }
                Killed::ClaimHeld | Killed::ClaimHeldPodEvicted => {
                    let claim = killed.claim.expect("the claim is held");
                    assert!(claim.deleting, "{claim:?}");
                    if row.killed == Killed::ClaimHeldPodEvicted {
                        let pod = get(&fx.pods(), "user").await;
                        assert!(pod.metadata.deletion_timestamp.is_some(), "not evicted");
                    }
                }
                Killed::Any => {}
            }

            // The rerun resumes; the holder lets go once it watches.
            p.clear();
            let gate = Gate::new();
            p.on(
                Match::watch(&fx.claims_path()),
                Which::Every,
                Fault::Observe(gate.clone()),
            );
            let binary = job.spawn();
            let _kubelet = match row.holder {
                Holder::Nothing => None,
                Holder::Finalizer => {
                    gate.arrived(GATE_TIMEOUT).await;
                    fx.remove_claim_finalizer().await;
                    None
                }
                Holder::Pod => {
                    gate.arrived(GATE_TIMEOUT).await;
                    Some(KubeletStandIn::start(fx.name()))
                }
            };
            let run = binary.finish(OK_LIMIT).await;
            let o = run.expect_status(0).outcome();
            // A pod evicted by the killed run is not evicted again.
            assert!(row.rerun.contains(&o.shape().as_str()), "{run}");
            if row.holder == Holder::Pod {
                wait_deleted(&fx.pods(), "user").await;
            }
            fx.assert_converges(&expected).await;
            fx.assert_others_untouched(&before).await;
        },
    );
}

// ------------------------------------------------------------------------------------------
// 3. Races with other writers

#[tokio::test]
async fn three_runs_at_once_all_succeed_with_one_end_state() {
    let (fx, expected) = tokio::join!(
        fixture("concurrent", Shape::default()),
        reference_run(Shape::default(), &[DELETE_PV], async |_| {}),
    );
    let before = fx.snapshot().await;
    let job = fx.job(&[DELETE_PV]);

    let runs = futures::future::join_all((0..3).map(|_| job.run_within(OK_LIMIT))).await;
    for run in &runs {
        run.expect_status(0);
    }
    fx.assert_converges(&expected).await;
    fx.assert_others_untouched(&before).await;
}

#[tokio::test]
async fn a_claim_replaced_before_the_delete_is_not_deleted() {
    let (fx, p, before) = Fixture::proxied("replaced", Shape::default()).await;
    let gate = Gate::new();
    p.on(
        Match::write("DELETE", &fx.claim_path()),
        Which::Nth(1),
        Fault::Hold(gate.clone()),
    );

    let binary = fx.job(&[]).kubeconfig(p.kubeconfig()).spawn();
    gate.arrived(GATE_TIMEOUT).await;
    // Read, not yet deleted: someone else deletes the claim and creates it anew.
    let claims = fx.claims();
    claims
        .delete("data", &DeleteParams::default())
        .await
        .expect("deleting the claim");
    wait_deleted(&claims, "data").await;
    let new = fx.claim("data").create(&fx).await;
    gate.release();

    let run = binary.finish(OK_LIMIT).await;
    let o = run.expect_error(3, "refused", &["the claim was replaced after it was read"]);
    assert!(!o.changed, "{run}");
    let survivor = get(&claims, "data").await;
    assert_eq!(survivor.uid(), new.uid());
    assert!(survivor.metadata.deletion_timestamp.is_none());
    fx.assert_others_untouched(&before).await;
}

/// How the volume of `data` is taken by a new claim `thief` while a run goes on.
#[derive(Clone, Copy, Debug)]
enum Rebind {
    /// Before the run's last read of the volume: its claimRef is cleared, and a claim naming it
    /// in spec.volumeName takes it.
    BeforeTheLastRead,
    /// Between the last read and the switch of its reclaim policy to Delete: its claimRef is
    /// pointed at the new claim. The patch carries the resourceVersion read: 409, a fresh read,
    /// a refusal.
    BeforeTheSwitch,
}

/// Binds the volume of `data` to a new claim `thief`; returns the new claim's uid once bound.
async fn rebind(fx: &Fixture) -> String {
    // The thief names the volume first, then the volume's claimRef is pointed at it in one
    // patch: a claimRef cleared on its own would race the binder, which rebinds a volume whose
    // claim (still there, or not yet seen gone) names it.
    let thief = fx.claim("thief").volume(&fx.pv).create(fx).await;
    let uid = thief.uid().unwrap();
    let claim_ref = json!({"spec": {"claimRef": {
        "kind": "PersistentVolumeClaim", "apiVersion": "v1",
        "namespace": fx.name(), "name": "thief", "uid": uid, "resourceVersion": null,
    }}});
    fx.pvs()
        .patch(&fx.pv, &PatchParams::default(), &Patch::Merge(&claim_ref))
        .await
        .expect("pointing the claimRef at the new claim");
    wait_for(&fx.pvs(), &fx.pv, "binding to the new claim", |pv| {
        pv.is_some_and(|pv| claim_ref_uid(pv) == Some(&uid) && pv_phase(pv) == Some("Bound"))
    })
    .await;
    uid
}

/// A volume rebound to another claim while the run goes on is never touched. Rebound before the
/// run's second read (while it plans), the run refuses before any change, and so does a rerun;
/// rebound before the switch of its reclaim policy (the claim already deleted), the run stops
/// part-way, and a rerun for the (absent) old claim leaves the volume alone although it still
/// carries the mark.
#[tokio::test]
async fn a_volume_rebound_during_the_run_is_not_touched() {
    let rows = vec![Rebind::BeforeTheLastRead, Rebind::BeforeTheSwitch];
    check_rows(
        rows,
        |r| format!("{r:?}"),
        |how| async move {
            let (fx, p, before) = Fixture::proxied("rebound", Shape::default()).await;
            let gate = Gate::new();
            let planning = matches!(how, Rebind::BeforeTheLastRead);
            let (request, which) = if planning {
                (Match::request("GET", &fx.pv_path()), Which::Nth(2))
            } else {
                // The first write marks the volume; the second switches its reclaim policy.
                (Match::write("PATCH", &fx.pv_path()), Which::Nth(2))
            };
            p.on(request.clone(), which, Fault::Hold(gate.clone()));

            let binary = fx.job(&[DELETE_PV]).kubeconfig(p.kubeconfig()).spawn();
            gate.arrived(GATE_TIMEOUT).await;
            let uid = rebind(&fx).await;
            gate.release();

            // Planned on the first read; the second is the pre-flight's, which checks again.
            let expected = format!("PV {} no longer belongs to the claim", fx.pv);
            let (code, result) = if planning {
                (3, "refused")
            } else {
                (6, "part-way")
            };
            let run = binary.finish(OK_LIMIT).await;
            let o = run.expect_error(code, result, &[&expected]);
            assert_eq!(o.has_done("claim-deleted"), !planning, "{run}");
            if !planning {
                assert_eq!(p.count(&request), 2, "no second switch\n{}", p.describe());
            }
            let pv = pv_print(&fx, &fx.pv).await.expect("the volume survives");
            assert!(!pv.deleting, "{pv:?}");
            assert_eq!(pv.bound.as_deref(), Some(uid.as_str()));
            let rerun = rerun(&p, fx.job(&[DELETE_PV])).await;
            if planning {
                let thief = format!(
                    "PersistentVolume {} is bound to claim {}/thief",
                    fx.pv,
                    fx.name()
                );
                rerun.expect_error(3, "refused", &[&thief]);
            } else {
                let o = rerun.expect_result(0, "nothing-to-do");
                assert_eq!(o.detail.as_deref(), Some("claim absent"));
            }
            assert_eq!(pv_print(&fx, &fx.pv).await, Some(pv));
            fx.assert_others_untouched(&before).await;
        },
    );
}

// ------------------------------------------------------------------------------------------
// 4. Bad input: the documented status, one line that says what to fix, nothing changed

#[tokio::test]
async fn invalid_settings_are_refused_before_any_request() {
    let (fx, p, before) = Fixture::proxied("bad-input", Shape::default()).await;
    let cases: &[(&[Setting], &[&str])] = &[
        (
            &[("PVC_NAME", "Bad_Name")],
            &["claim name \"Bad_Name\" is not a valid DNS-1123 subdomain"],
        ),
        (
            &[("PVC_NAME", "a,,b")],
            &["claim list \"a,,b\" has an empty name"],
        ),
        (
            &[("PVC_NAME", " ")],
            &["claim name \" \" is not a valid DNS-1123 subdomain"],
        ),
        (
            &[("PVC_SELECTOR", "app in x")],
            &["invalid label selector \"app in x\""],
        ),
        (
            &[("PVC_NAMESPACE", "Bad")],
            &["namespace \"Bad\" is not a valid DNS-1123 label"],
        ),
        (
            &[("DESIRED_STORAGECLASS", "no_such")],
            &["storage class \"no_such\" is not a valid"],
        ),
        (
            &[("IN_USE_POLICY", "later")],
            &[
                "invalid value 'later'",
                "possible values: evict, force, fail",
            ],
        ),
        (
            &[("WAIT_TIMEOUT", "-5s")],
            &[
                "invalid value '-5s'",
                "expected a positive duration such as 60s",
            ],
        ),
        (
            &[("WAIT_TIMEOUT", "soon")],
            &["invalid value 'soon'", "expected a positive duration"],
        ),
        (
            &[("WAIT_TIMEOUT", "0")],
            &["'0'", "must be longer than zero"],
        ),
        (
            &[("DELETE_RETAINED_PV", "maybe")],
            &["invalid value 'maybe'", "not a boolean"],
        ),
        (
            &[("SUMMARY_FORMAT", "yaml")],
            &["invalid value 'yaml'", "possible values: text, json"],
        ),
    ];
    for (extra, fragments) in cases {
        let mut job = fx.job(extra);
        if extra[0].0 == "SUMMARY_FORMAT" {
            job = job.human();
        }
        let run = via(&p, job, MARGIN).await;
        run.within(MARGIN)
            .expect(2, fragments)
            .expect_single_error_line();
    }
    assert!(
        p.requests().is_empty(),
        "bad input sent requests:\n{}",
        p.describe()
    );
    fx.assert_unchanged(&before).await;
}

#[tokio::test]
async fn a_namespace_that_does_not_exist_is_bad_input() {
    let fx = fixture("no-namespace", Shape::default()).await;
    let before = fx.snapshot().await;
    let missing = unique_name("missing");
    for extra in [&[][..], &[DELETE_PV][..]] {
        let run = fx
            .job(extra)
            .set("PVC_NAMESPACE", &missing)
            .run_within(OK_LIMIT)
            .await;
        let o = run.expect_error(
            2,
            "failed",
            &[&format!("namespace {missing:?} does not exist")],
        );
        assert_eq!(o.claim, format!("{missing}/data"), "{run}");
    }
    fx.assert_unchanged(&before).await;
}

#[tokio::test]
async fn an_unreadable_kubeconfig_is_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, "this is not a kubeconfig\n").unwrap();
    let missing = dir.path().join("missing");
    let directory = dir.path().to_path_buf();
    for (kubeconfig, fragment) in [
        (&missing, "No such file or directory"),
        (&garbage, "failed to parse kubeconfig"),
        (&directory, "kubeconfig"),
    ] {
        let job = Job::bare().set("PVC_NAME", "data").kubeconfig(kubeconfig);
        let run = job.run_within(MARGIN).await;
        run.within(MARGIN)
            .expect(
                2,
                &["cannot load the Kubernetes client configuration", fragment],
            )
            .expect_single_error_line();
    }
}

/// A kubeconfig for `server`, trusting `ca`, with a bearer token.
fn token_kubeconfig(dir: &Path, server: &str, ca: &Path, token: &str) -> PathBuf {
    let path = dir.join(format!("kubeconfig-{}", unique_name("kc")));
    write_token_kubeconfig(&path, server, Some(ca), token, "default");
    path
}

/// The API cannot be reached or does not accept the client: status 4, the claim's read named,
/// nothing changed.
#[tokio::test]
async fn an_apiserver_that_refuses_connections_fails_fast() {
    let fx = fixture("refused", Shape::default()).await;
    let before = fx.snapshot().await;
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let server = format!("https://127.0.0.1:{port}");
    let kubeconfig = token_kubeconfig(dir.path(), &server, ca_path(), "unused");

    let run = fx
        .job(&[])
        .kubeconfig(&kubeconfig)
        .run_within(OK_LIMIT)
        .await;
    let refused = ["get persistentvolumeclaims \"data\"", "Connection refused"];
    run.within(Duration::from_secs(5))
        .expect_error(4, "failed", &refused);
    fx.assert_unchanged(&before).await;
}

#[tokio::test]
async fn a_certificate_that_does_not_verify_fails_as_an_api_error() {
    let fx = fixture("wrong-ca", Shape::default()).await;
    let sa = Account::new("hook").admin().create(&fx).await;
    let before = fx.snapshot().await;
    let dir = tempfile::tempdir().unwrap();
    let wrong_ca = dir.path().join("wrong-ca.crt");
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args([
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=not-the-cluster-ca",
            "-keyout",
        ])
        .arg(dir.path().join("wrong-ca.key"))
        .arg("-out")
        .arg(&wrong_ca)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("running openssl");
    assert!(status.success(), "openssl could not make a CA");
    let kubeconfig = token_kubeconfig(dir.path(), apiserver_url(), &wrong_ca, &sa.token);

    let run = fx
        .job(&[])
        .kubeconfig(&kubeconfig)
        .run_within(OK_LIMIT)
        .await;
    let unverified = ["get persistentvolumeclaims \"data\"", "certificate"];
    run.within(MARGIN).expect_error(4, "failed", &unverified);
    fx.assert_unchanged(&before).await;
}

#[tokio::test]
async fn a_wrong_or_revoked_token_fails_with_401() {
    let fx = fixture("bad-token", Shape::default()).await;
    let sa = Account::new("gone").admin().create(&fx).await;
    let before = fx.snapshot().await;
    let dir = tempfile::tempdir().unwrap();
    let unauthorized = ["get persistentvolumeclaims", "HTTP 401 Unauthorized"];

    // A token that never was.
    let wrong = token_kubeconfig(dir.path(), apiserver_url(), ca_path(), "not-a-token");
    let run = fx.job(&[]).kubeconfig(&wrong).run_within(OK_LIMIT).await;
    run.within(MARGIN).expect_error(4, "failed", &unauthorized);

    // A token of a ServiceAccount deleted since.
    let revoked = token_kubeconfig(dir.path(), apiserver_url(), ca_path(), &sa.token);
    Api::<ServiceAccount>::namespaced(fx.client().clone(), fx.name())
        .delete("gone", &DeleteParams::default())
        .await
        .expect("deleting the ServiceAccount");
    let probe = client_for(&revoked).await;
    poll("the token to be refused", || async {
        (api_code(&probe.apiserver_version().await) == Some(401)).then_some(())
    })
    .await;
    let run = fx.job(&[]).kubeconfig(&revoked).run_within(OK_LIMIT).await;
    run.within(MARGIN).expect_error(4, "failed", &unauthorized);
    fx.assert_unchanged(&before).await;
}

// ------------------------------------------------------------------------------------------
// 5. Least privilege

/// The RBAC of the kubectl hook this binary replaces, as data: it reads, patches and deletes the
/// claim, and reads, patches and deletes "its" volume, whose name is unknown when the chart is
/// rendered, so every PersistentVolume in the cluster.
fn seed_rules() -> (Vec<PolicyRule>, Vec<PolicyRule>) {
    let verbs = ["get", "list", "watch", "patch", "delete"];
    (
        vec![rule(&[""], &["persistentvolumeclaims"], &verbs)],
        vec![rule(&[""], &["persistentvolumes"], &verbs)],
    )
}

#[tokio::test]
async fn the_chart_rules_allow_the_migration_and_nothing_more() {
    let fx = fixture("least-privilege", Shape::default()).await;
    let sa = Account::new("hook")
        .chart(&["data"], fx.name(), &["always", "inUseEvict"], None)
        .create(&fx)
        .await;
    let throwaway = Volume::host_path("throwaway").create(&fx).await.name_any();
    let secret = json!({"metadata": {"name": "credentials"}, "stringData": {"password": "x"}});
    create(
        &Api::<Secret>::namespaced(fx.client().clone(), fx.name()),
        &from_json(secret),
    )
    .await;
    let before = fx.snapshot().await;
    let throwaway_before = pv_print(&fx, &throwaway).await;

    let hook = sa.client().await;
    let pvs: Api<PersistentVolume> = Api::all(hook.clone());
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(hook.clone(), fx.name());
    let secrets: Api<Secret> = Api::namespaced(hook.clone(), fx.name());
    let label = Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}}));
    let (dp, pp) = (DeleteParams::default(), PatchParams::default());
    for pv in [&throwaway, &fx.pv] {
        expect_forbidden("delete a PV", pvs.delete(pv, &dp).await);
        expect_forbidden("patch a PV", pvs.patch(pv, &pp, &label).await);
    }
    expect_forbidden("get another claim", claims.get("other").await);
    expect_forbidden("delete another claim", claims.delete("other", &dp).await);
    expect_forbidden(
        "patch another claim",
        claims.patch("other", &pp, &label).await,
    );
    expect_forbidden("list secrets", secrets.list(&ListParams::default()).await);
    expect_forbidden("get a secret", secrets.get("credentials").await);
    claims.get("data").await.expect("the hook reads its claim");

    // Deleting a Retain volume takes rights these rules do not give: refused by the API before
    // anything changed, naming the verb and resource for the RBAC fix.
    let denied = format!("patch persistentvolumes \"{}\": HTTP 403 Forbidden", fx.pv);
    let run = fx
        .job(&[DELETE_PV])
        .kubeconfig(&sa.kubeconfig)
        .run_within(OK_LIMIT)
        .await;
    run.expect_error(
        4,
        "failed",
        &[&denied, "cannot patch resource \"persistentvolumes\""],
    );
    fx.assert_unchanged(&before).await;

    // The default migration needs nothing more.
    let run = fx
        .job(&[])
        .kubeconfig(&sa.kubeconfig)
        .run_within(OK_LIMIT)
        .await;
    assert_eq!(run.expect_status(0).outcome().shape(), KEPT, "{run}");
    fx.assert_kept(&before).await;
    assert_eq!(pv_print(&fx, &throwaway).await, throwaway_before);
}

#[tokio::test]
async fn the_seed_rules_let_the_hook_delete_any_volume() {
    let ns = TestNamespace::new("seed-rbac").await;
    let name = Volume::host_path("unrelated").create(&ns).await.name_any();
    let (role, cluster) = seed_rules();
    let sa = Account::new("hook")
        .role(&role)
        .cluster_role(&cluster)
        .create(&ns)
        .await;
    let pvs: Api<PersistentVolume> = Api::all(sa.client().await);

    // A volume that belongs to nobody in the hook's namespace: patched and deleted all the same.
    let label = Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}}));
    pvs.patch(&name, &PatchParams::default(), &label)
        .await
        .expect("the seed's rules allow patching any PV");
    pvs.delete(&name, &DeleteParams::default())
        .await
        .expect("the seed's rules allow deleting any PV");
    wait_deleted(&ns.pvs(), &name).await;
}

// ------------------------------------------------------------------------------------------
// 6. No credentials in the output

/// Strings that must never appear in what a run prints or leaves in the termination message.
struct Secrets(Vec<(String, String)>);

impl Secrets {
    fn add(&mut self, what: &str, secret: &str) {
        assert!(secret.len() >= 16, "{what} is too short to search for");
        self.0.push((what.to_owned(), secret.to_owned()));
    }

    /// A token, and its signature alone (a partial leak is a leak too).
    fn add_token(&mut self, what: &str, token: &str) {
        self.add(what, token);
        if let Some(signature) = token.rsplit('.').next().filter(|s| s.len() >= 16) {
            self.add(&format!("{what} (signature)"), signature);
        }
    }

    /// Each line of a PEM body (the key or certificate itself).
    fn add_pem(&mut self, what: &str, pem: &str) {
        for line in pem
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        {
            self.add(what, line);
        }
    }

    fn assert_absent(&self, run: &Run, case: &str) {
        for (what, secret) in &self.0 {
            for (stream, text) in [
                ("stdout", &run.stdout),
                ("stderr", &run.stderr),
                ("termination log", &run.termination_log),
            ] {
                assert!(
                    !text.contains(secret.as_str()),
                    "{case}: {what} appears on {stream}\n{run}"
                );
            }
        }
    }
}

/// The value of `key: value` in a YAML kubeconfig.
fn yaml_value(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in the kubeconfig"))
        .trim()
        .to_owned()
}

#[tokio::test]
async fn credentials_never_appear_in_the_output() {
    let fx = fixture("secrets", Shape::default()).await;
    let rules = ["always", "inUseEvict"];
    let sa = Account::new("hook")
        .chart(&["data", "other"], fx.name(), &rules, None)
        .create(&fx)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let wrong_token = format!(
        "eyJhbGciOiJFUzI1NiJ9.{}.{}",
        unique_name("payload").replace('-', ""),
        unique_name("signature-not-valid").replace('-', "")
    );
    let wrong = token_kubeconfig(dir.path(), apiserver_url(), ca_path(), &wrong_token);

    let mut secrets = Secrets(Vec::new());
    secrets.add_token("the ServiceAccount token", &sa.token);
    secrets.add_token("the wrong token", &wrong_token);
    let admin = std::fs::read_to_string(kubeconfig_path()).expect("admin kubeconfig");
    secrets.add("client-key-data", &yaml_value(&admin, "client-key-data"));
    secrets.add(
        "client-certificate-data",
        &yaml_value(&admin, "client-certificate-data"),
    );
    let pki = ControlPlane::get().dir.join("pki");
    let pem = |file: &str| std::fs::read_to_string(pki.join(file)).unwrap();
    secrets.add_pem("the client key", &pem("admin.key"));
    secrets.add_pem("the client certificate", &pem("admin.crt"));

    let trace = ("RUST_LOG", "trace");
    let json_logs = ("LOG_FORMAT", "json");
    let missing_namespace = unique_name("missing");
    let cases: Vec<(&str, &Path, Job, i32)> = vec![
        (
            "token, migration",
            &sa.kubeconfig,
            fx.job_for("data", &[trace]),
            0,
        ),
        (
            "token, 403, json logs",
            &sa.kubeconfig,
            fx.job_for("other", &[trace, json_logs, DELETE_PV]),
            4,
        ),
        ("wrong token, 401", &wrong, fx.job_for("other", &[trace]), 4),
        (
            "client certificate, migration, json logs",
            kubeconfig_path(),
            fx.job_for("other", &[trace, json_logs]),
            0,
        ),
        (
            "client certificate, bad namespace",
            kubeconfig_path(),
            fx.job_for("other", &[trace, ("PVC_NAMESPACE", &missing_namespace)]),
            2,
        ),
    ];
    for (case, kubeconfig, job, code) in cases {
        for job in [job.clone(), job.human()] {
            let run = job.kubeconfig(kubeconfig).run_within(OK_LIMIT).await;
            run.expect_status(code);
            assert!(
                run.stderr.contains("TRACE"),
                "{case}: no trace logs, the check would be void\n{run}"
            );
            secrets.assert_absent(&run, case);
        }
    }
}

/// A kubeconfig that does not parse is reported with the parser's message; it must not quote
/// the token on the line next to the error.
#[tokio::test]
async fn a_malformed_kubeconfig_does_not_echo_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let token = format!(
        "sha256~{}",
        unique_name("kubeconfig-token").replace('-', "")
    );
    let kubeconfigs = [
        format!(
            "apiVersion: v1\nkind: Config\nusers:\n- name: u\n  user:\n    token: {token}\n  - oops\n"
        ),
        format!("apiVersion: v1\nkind: Config\nusers:\n- name: u\n  user:\n    token: \"{token}\n"),
    ];
    let mut secrets = Secrets(Vec::new());
    secrets.add("the kubeconfig's token", &token);
    for (i, text) in kubeconfigs.iter().enumerate() {
        let path = dir.path().join(format!("kubeconfig-{i}"));
        std::fs::write(&path, text).unwrap();
        let run = Job::bare()
            .set("PVC_NAME", "data")
            .kubeconfig(&path)
            .run_within(MARGIN)
            .await;
        run.expect(2, &["cannot load the Kubernetes client configuration"]);
        secrets.assert_absent(&run, &format!("kubeconfig {i}"));
    }
}
