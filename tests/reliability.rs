//! Reliability on the local control plane: the binary either finishes with the right end state or
//! stops with its documented exit status and one clear line, and never deletes what it should
//! not. API faults are injected by a proxy between the binary and the apiserver
//! (`fault_proxy`); runs are killed at each step and run again; other writers race with it; bad
//! input, least-privilege RBAC and credentials in the output are checked. Every row of
//! docs/reliability.md names the test here that backs it.

mod common;
mod fault_proxy;

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::*;
use fault_proxy::{Fault, FaultProxy, Gate, Match, Which};
use k8s_openapi::api::{
    core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, Secret, ServiceAccount},
    rbac::v1::PolicyRule,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use serde_json::json;

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
/// How long a test waits for a gate or a request at the proxy.
const GATE_TIMEOUT: Duration = Duration::from_secs(30);

// ------------------------------------------------------------------------------------------
// Running the binary

/// The binary's environment, as the hook Job sets it.
type Env = Vec<(String, String)>;
/// One variable of it.
type Setting<'a> = (&'a str, &'a str);

/// A running binary whose output is collected; it can be killed (SIGKILL) at any point.
struct Binary {
    child: Child,
    started: Instant,
    stdout: Option<thread::JoinHandle<Vec<u8>>>,
    stderr: Option<thread::JoinHandle<Vec<u8>>>,
    termination_log: PathBuf,
    _dir: tempfile::TempDir,
}

/// How a run ended.
#[derive(Debug)]
struct Run {
    /// None when killed by a signal.
    code: Option<i32>,
    stdout: String,
    stderr: String,
    termination_log: String,
    elapsed: Duration,
}

/// Starts the binary with a clean environment: `PATH`, `KUBECONFIG`, a `TERMINATION_LOG` in a
/// directory of its own, and `env`.
fn spawn(kubeconfig: &Path, env: &[(String, String)]) -> Binary {
    let dir = tempfile::Builder::new()
        .prefix("storageclass-migrate-run-")
        .tempdir()
        .expect("temporary directory");
    let termination_log = dir.path().join("termination-log");
    // The kubelet creates the file; the binary only writes into it.
    std::fs::write(&termination_log, "").expect("termination log");
    let mut command = Command::new(BINARY);
    command
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("KUBECONFIG", kubeconfig)
        .env("TERMINATION_LOG", &termination_log)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("starting {BINARY}: {e}"));
    let reader = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = reader(Box::new(child.stdout.take().unwrap()));
    let stderr = reader(Box::new(child.stderr.take().unwrap()));
    Binary {
        child,
        started: Instant::now(),
        stdout: Some(stdout),
        stderr: Some(stderr),
        termination_log,
        _dir: dir,
    }
}

impl Binary {
    /// Waits for the binary to exit; kills it and fails the test after `limit`.
    async fn finish(mut self, limit: Duration) -> Run {
        loop {
            if self
                .child
                .try_wait()
                .expect("waiting for the binary")
                .is_some()
            {
                return self.collect();
            }
            if self.started.elapsed() > limit {
                let _ = self.child.kill();
                let run = self.collect();
                panic!("still running after {limit:?}; killed.\n{}", run.describe());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: no clean-up, no summary; what the cluster holds is what a rerun finds.
    fn kill(mut self) -> Run {
        self.child.kill().expect("killing the binary");
        self.collect()
    }

    fn collect(&mut self) -> Run {
        let status = self.child.wait().expect("waiting for the binary");
        let text = |h: Option<thread::JoinHandle<Vec<u8>>>| {
            String::from_utf8_lossy(&h.and_then(|h| h.join().ok()).unwrap_or_default()).into_owned()
        };
        Run {
            code: status.code(),
            stdout: text(self.stdout.take()),
            stderr: text(self.stderr.take()),
            termination_log: std::fs::read_to_string(&self.termination_log).unwrap_or_default(),
            elapsed: self.started.elapsed(),
        }
    }
}

impl Drop for Binary {
    /// A test that fails half-way leaves no binary running against the cluster.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn run(kubeconfig: &Path, env: &[(String, String)], limit: Duration) -> Run {
    spawn(kubeconfig, env).finish(limit).await
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "exit status: {:?} after {:.1?}\nstdout:\n{}\nstderr:\n{}\ntermination log:\n{}",
            self.code, self.elapsed, self.stdout, self.stderr, self.termination_log
        )
    }

    /// The line that says how the run ended: the claim's summary line on stdout (there must be
    /// exactly one), or, when the run stopped before any claim was looked at (bad input, no
    /// configuration), the last line on stderr.
    fn line(&self) -> &str {
        let lines: Vec<&str> = self.stdout.lines().filter(|l| !l.is_empty()).collect();
        match lines.as_slice() {
            [line] => line,
            [] => self
                .stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or_else(|| panic!("no output at all\n{}", self.describe())),
            _ => panic!("more than one line on stdout\n{}", self.describe()),
        }
    }

    /// Asserts the exit status and that the final line contains every fragment; a summary line
    /// must also be the whole termination message.
    fn expect(&self, code: i32, fragments: &[&str]) -> &Run {
        assert_eq!(self.code, Some(code), "\n{}", self.describe());
        let line = self.line();
        for fragment in fragments {
            assert!(
                line.contains(fragment),
                "the final line lacks {fragment:?}: {line}\n{}",
                self.describe()
            );
        }
        if !self.stdout.trim().is_empty() {
            assert_eq!(
                self.termination_log.trim(),
                self.stdout.trim(),
                "the termination message differs from the summary\n{}",
                self.describe()
            );
        }
        self
    }

    /// Asserts that the run ended by itself within `limit`.
    fn within(&self, limit: Duration) -> &Run {
        assert!(
            self.elapsed <= limit,
            "took {:.1?}, more than {limit:?}\n{}",
            self.elapsed,
            self.describe()
        );
        self
    }
}

fn seconds(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

// ------------------------------------------------------------------------------------------
// The cluster: one claim to migrate, one that must never be touched

/// A namespace with StorageClasses `a` and `b` (cluster-scoped, `<ns>-a`, `<ns>-b`), claim
/// `data` on class a bound to PV `<ns>-pv` (Retain), and claim `other` on class a bound to PV
/// `<ns>-pv-other` (Retain), which no run here may change.
struct Fixture {
    ns: TestNamespace,
    class_b: String,
    class_a: String,
    pv: String,
    other_pv: String,
}

#[derive(Default)]
struct Shape {
    /// A finalizer of another controller on claim `data`.
    claim_finalizer: bool,
    /// An extra finalizer on the volume of `data`.
    pv_finalizer: bool,
}

/// Boxed, as are the other big helpers: a test's future lives on its thread's stack.
async fn fixture(client: &Client, prefix: &str, shape: &Shape) -> Fixture {
    Box::pin(make_fixture(client, prefix, shape)).await
}

async fn make_fixture(client: &Client, prefix: &str, shape: &Shape) -> Fixture {
    let ns = TestNamespace::new(prefix).await;
    let name = ns.name().to_owned();
    let retain = ClassOpts {
        reclaim_policy: "Retain".into(),
        ..ClassOpts::default()
    };
    let (a, b) = tokio::join!(
        create_storage_class(client, &ns, "a", &retain),
        create_storage_class(client, &ns, "b", &retain),
    );
    let (class_a, class_b) = (a.name_any(), b.name_any());
    let pv_opts = |claim: &str, finalizer: bool| PvOpts {
        class: Some(class_a.clone()),
        claim_ref: Some((name.clone(), claim.to_owned())),
        extra_finalizers: if finalizer {
            vec!["example.com/hold".into()]
        } else {
            vec![]
        },
        ..PvOpts::default()
    };
    let (data_opts, other_opts) = (pv_opts("data", shape.pv_finalizer), pv_opts("other", false));
    let (pv, other_pv) = tokio::join!(
        create_pv(client, &ns, "pv", &data_opts),
        create_pv(client, &ns, "pv-other", &other_opts),
    );
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &name);
    let mut data = pvc("data", &PvcOpts::class(&class_a));
    if shape.claim_finalizer {
        data.finalizers_mut().push(FOREIGN_FINALIZER.into());
    }
    let other = pvc("other", &PvcOpts::class(&class_a));
    tokio::join!(create(&claims, &data), create(&claims, &other));
    tokio::join!(
        wait_bound(client, &name, "data"),
        wait_bound(client, &name, "other")
    );
    Fixture {
        ns,
        class_a,
        class_b,
        pv: pv.name_any(),
        other_pv: other_pv.name_any(),
    }
}

impl Fixture {
    fn name(&self) -> &str {
        self.ns.name()
    }

    /// The hook's environment for claim `data`: move it to class b, plus `extra`.
    fn job(&self, extra: &[Setting<'_>]) -> Env {
        self.job_for("data", extra)
    }

    fn job_for(&self, claim: &str, extra: &[Setting<'_>]) -> Env {
        let mut env: Env = vec![
            ("PVC_NAME".into(), claim.into()),
            ("PVC_NAMESPACE".into(), self.name().into()),
            ("DESIRED_STORAGECLASS".into(), self.class_b.clone()),
            ("WAIT_TIMEOUT".into(), seconds(OK_TIMEOUT)),
        ];
        for (key, value) in extra {
            env.retain(|(k, _)| k != key);
            env.push((key.to_string(), value.to_string()));
        }
        env
    }

    fn claim_path(&self, claim: &str) -> String {
        format!("{}/{claim}", self.claims_path())
    }

    fn claims_path(&self) -> String {
        format!("/api/v1/namespaces/{}/persistentvolumeclaims", self.name())
    }

    fn claims(&self, client: &Client) -> Api<PersistentVolumeClaim> {
        Api::namespaced(client.clone(), self.name())
    }
}

fn pv_path(name: &str) -> String {
    format!("/api/v1/persistentvolumes/{name}")
}

const PVS_PATH: &str = "/api/v1/persistentvolumes";

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

fn print<K: kube::Resource>(object: &K, bound: Option<String>) -> Print {
    let meta = object.meta();
    Print {
        uid: meta.uid.clone().unwrap_or_default(),
        deleting: meta.deletion_timestamp.is_some(),
        finalizers: meta.finalizers.clone().unwrap_or_default(),
        mark: meta.annotations.as_ref().and_then(|a| a.get(MARK)).cloned(),
        bound,
    }
}

async fn claim_print(client: &Client, ns: &str, name: &str) -> Option<Print> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let claim = api.get_opt(name).await.expect("reading a claim")?;
    let volume = claim.spec.as_ref().and_then(|s| s.volume_name.clone());
    Some(print(&claim, volume))
}

async fn pv_print(client: &Client, name: &str) -> Option<Print> {
    let api: Api<PersistentVolume> = Api::all(client.clone());
    let pv = api.get_opt(name).await.expect("reading a volume")?;
    let owner = pv
        .spec
        .as_ref()
        .and_then(|s| s.claim_ref.as_ref())
        .and_then(|r| r.uid.clone());
    Some(print(&pv, owner))
}

#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    claim: Option<Print>,
    pv: Option<Print>,
    other_claim: Option<Print>,
    other_pv: Option<Print>,
}

async fn snapshot(client: &Client, fx: &Fixture) -> Snapshot {
    Snapshot {
        claim: claim_print(client, fx.name(), "data").await,
        pv: pv_print(client, &fx.pv).await,
        other_claim: claim_print(client, fx.name(), "other").await,
        other_pv: pv_print(client, &fx.other_pv).await,
    }
}

/// Nothing was changed: every object as before.
async fn assert_unchanged(client: &Client, fx: &Fixture, before: &Snapshot) {
    assert_eq!(&snapshot(client, fx).await, before, "objects changed");
}

/// The claim and volume that must never be touched are as before.
async fn assert_others_untouched(client: &Client, fx: &Fixture, before: &Snapshot) {
    let now = snapshot(client, fx).await;
    assert_eq!(now.other_claim, before.other_claim, "claim `other` changed");
    assert_eq!(
        now.other_pv, before.other_pv,
        "the volume of `other` changed"
    );
    assert!(now.other_claim.is_some() && now.other_pv.is_some());
}

/// The state of claim `data` and its volume, in terms that compare across namespaces.
#[derive(Clone, Debug, PartialEq, Eq)]
struct EndState {
    /// (still on class a, being deleted)
    claim: Option<(bool, bool)>,
    /// (phase, marked, being deleted)
    pv: Option<(String, bool, bool)>,
}

async fn end_state(client: &Client, fx: &Fixture) -> EndState {
    let claim = fx
        .claims(client)
        .get_opt("data")
        .await
        .expect("reading the claim");
    let pv = Api::<PersistentVolume>::all(client.clone())
        .get_opt(&fx.pv)
        .await
        .expect("reading the volume");
    EndState {
        claim: claim.map(|c| {
            (
                c.spec
                    .as_ref()
                    .and_then(|s| s.storage_class_name.as_deref())
                    == Some(fx.class_a.as_str()),
                c.metadata.deletion_timestamp.is_some(),
            )
        }),
        pv: pv.map(|pv| {
            (
                pv.status
                    .as_ref()
                    .and_then(|s| s.phase.clone())
                    .unwrap_or_default(),
                pv.annotations().contains_key(MARK),
                pv.metadata.deletion_timestamp.is_some(),
            )
        }),
    }
}

/// Waits (bounded) until the end state is `expected`: controllers finish their part (a
/// Released phase, a volume's protection finalizer) a moment after the binary exits.
async fn assert_converges(client: &Client, fx: &Fixture, expected: &EndState) {
    let deadline = Instant::now() + WAIT_TIMEOUT;
    loop {
        let state = end_state(client, fx).await;
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

/// Claim gone, the volume Released with the old data (reclaim policy Retain, the default).
fn kept() -> EndState {
    EndState {
        claim: None,
        pv: Some(("Released".into(), false, false)),
    }
}

/// Claim and volume gone (DELETE_RETAINED_PV=true).
fn all_gone() -> EndState {
    EndState {
        claim: None,
        pv: None,
    }
}

/// Runs `job` on a fresh fixture of the same shape in another namespace, uninterrupted, with the
/// admin kubeconfig, and returns the state it leaves. `setup` prepares the fixture; what it returns is kept until the run has ended.
async fn reference_run<T>(
    client: &Client,
    shape: &Shape,
    extra: &[Setting<'_>],
    setup: impl AsyncFnOnce(&Fixture) -> T,
) -> EndState {
    Box::pin(make_reference_run(client, shape, extra, setup)).await
}

async fn make_reference_run<T>(
    client: &Client,
    shape: &Shape,
    extra: &[Setting<'_>],
    setup: impl AsyncFnOnce(&Fixture) -> T,
) -> EndState {
    let fx = fixture(client, "reference", shape).await;
    let _keep = setup(&fx).await;
    let before = snapshot(client, &fx).await;
    run(kubeconfig_path(), &fx.job(extra), OK_TIMEOUT + MARGIN)
        .await
        .expect(0, &["migrated to class"]);
    assert_others_untouched(client, &fx, &before).await;
    // Let the controllers finish, as assert_converges does for the run compared with it.
    let deadline = Instant::now() + WAIT_TIMEOUT;
    loop {
        let state = end_state(client, &fx).await;
        let settled = state.claim.is_none()
            && state
                .pv
                .as_ref()
                .is_none_or(|(phase, _, deleting)| phase == "Released" && !deleting);
        if settled || Instant::now() > deadline {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ------------------------------------------------------------------------------------------
// Access through the proxy

/// A fault proxy and a kubeconfig that reaches the apiserver through it with the token of a
/// ServiceAccount allowed everything.
struct Proxied {
    proxy: FaultProxy,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

async fn proxied(client: &Client, fx: &Fixture) -> Proxied {
    Box::pin(make_proxied(client, fx)).await
}

async fn make_proxied(client: &Client, fx: &Fixture) -> Proxied {
    let everything = rule(&["*"], &["*"], &["*"]);
    let sa = service_account_with_rules(client, &fx.ns, "hook", &[], &[everything]).await;
    let proxy = FaultProxy::start(apiserver_url(), ca_path());
    let dir = tempfile::tempdir().expect("temporary directory");
    let kubeconfig = proxy.write_kubeconfig(&dir.path().join("kubeconfig"), &sa.token, fx.name());
    Proxied {
        proxy,
        kubeconfig,
        _dir: dir,
    }
}

impl Proxied {
    async fn run(&self, env: &[(String, String)], limit: Duration) -> Run {
        run(&self.kubeconfig, env, limit).await
    }

    /// Runs again with every fault removed and the same settings: the rerun must finish.
    async fn rerun(&self, env: &[(String, String)]) -> Run {
        self.proxy.clear();
        self.run(env, OK_TIMEOUT + MARGIN).await
    }
}

fn ok_limit() -> Duration {
    OK_TIMEOUT + MARGIN
}

// ------------------------------------------------------------------------------------------
// 1. API faults

#[tokio::test]
async fn a_throttled_read_is_retried_after_retry_after() {
    let client = client().await;
    let fx = fixture(&client, "throttled", &Shape::default()).await;
    let p = proxied(&client, &fx).await;
    let read = Match::request("GET", &fx.claim_path("data"));
    let throttled = Fault::Status {
        code: 429,
        retry_after: Some(1),
    };
    p.proxy.on(read.clone(), Which::Nth(1), throttled);
    let before = snapshot(&client, &fx).await;

    p.run(&fx.job(&[]), ok_limit())
        .await
        .expect(0, &["migrated to class"]);
    let reads = p.proxy.matching(&read);
    assert!(reads.len() >= 2, "{}", p.proxy.describe());
    assert!(
        reads[1].at - reads[0].at >= Duration::from_millis(900),
        "Retry-After: 1 not honoured:\n{}",
        p.proxy.describe()
    );
    assert_converges(&client, &fx, &kept()).await;
    assert_others_untouched(&client, &fx, &before).await;
}

#[tokio::test]
async fn throttling_that_never_ends_times_out_and_changes_nothing() {
    let client = client().await;
    let fx = fixture(&client, "throttled-forever", &Shape::default()).await;
    let p = proxied(&client, &fx).await;
    let throttled = Fault::Status {
        code: 429,
        retry_after: Some(1),
    };
    let read = Match::request("GET", &fx.claim_path("data"));
    p.proxy.on(read, Which::Every, throttled);
    let before = snapshot(&client, &fx).await;
    let job = fx.job(&[("WAIT_TIMEOUT", &seconds(SHORT_TIMEOUT))]);

    p.run(&job, SHORT_TIMEOUT + MARGIN)
        .await
        .expect(
            5,
            &["timed out after 2s waiting for an answer to get persistentvolumeclaims \"data\""],
        )
        .within(SHORT_TIMEOUT + MARGIN);
    assert_unchanged(&client, &fx, &before).await;

    p.rerun(&fx.job(&[])).await.expect(0, &["migrated"]);
    assert_converges(&client, &fx, &kept()).await;
    assert_others_untouched(&client, &fx, &before).await;
}

#[tokio::test]
async fn a_server_error_on_the_claim_delete_is_retried() {
    let client = client().await;
    let fx = fixture(&client, "delete-500", &Shape::default()).await;
    let p = proxied(&client, &fx).await;
    let delete = Match::request("DELETE", &fx.claim_path("data"));
    let error = Fault::Status {
        code: 500,
        retry_after: None,
    };
    p.proxy.on(delete.clone(), Which::Nth(1), error);
    let before = snapshot(&client, &fx).await;

    p.run(&fx.job(&[]), ok_limit())
        .await
        .expect(0, &["migrated to class", "claim deleted"]);
    assert_eq!(p.proxy.count(&delete), 2, "{}", p.proxy.describe());
    assert_converges(&client, &fx, &kept()).await;
    assert_others_untouched(&client, &fx, &before).await;
}

#[tokio::test]
async fn a_persistent_server_error_fails_naming_the_request() {
    let client = client().await;
    let fx = fixture(&client, "read-500", &Shape::default()).await;
    let p = proxied(&client, &fx).await;
    let read = Match::request("GET", &pv_path(&fx.pv));
    let error = Fault::Status {
        code: 500,
        retry_after: None,
    };
    p.proxy.on(read.clone(), Which::Every, error);
    let before = snapshot(&client, &fx).await;

    let expected = format!("get persistentvolumes \"{}\": HTTP 500", fx.pv);
    p.run(&fx.job(&[]), ok_limit())
        .await
        .expect(4, &["failed", &expected])
        .within(MARGIN);
    assert!(
        p.proxy.count(&read) > 1,
        "not retried:\n{}",
        p.proxy.describe()
    );
    assert_unchanged(&client, &fx, &before).await;

    p.rerun(&fx.job(&[])).await.expect(0, &["migrated"]);
    assert_converges(&client, &fx, &kept()).await;
}

#[tokio::test]
async fn an_unavailable_apiserver_is_retried() {
    let client = client().await;
    let fx = fixture(&client, "unavailable", &Shape::default()).await;
    let p = proxied(&client, &fx).await;
    let unavailable = Fault::Status {
        code: 503,
        retry_after: None,
    };
    // Twice on the volume's read, once on the list of pods.
    let read = Match::request("GET", &pv_path(&fx.pv));
    p.proxy.on(read.clone(), Which::Nth(1), unavailable.clone());
    p.proxy.on(read.clone(), Which::Nth(2), unavailable.clone());
    let pods = Match::list(&format!("/api/v1/namespaces/{}/pods", fx.name()));
    p.proxy.on(pods, Which::Nth(1), unavailable);
    let before = snapshot(&client, &fx).await;

    p.run(&fx.job(&[]), ok_limit())
        .await
        .expect(0, &["migrated to class"]);
    assert!(p.proxy.count(&read) >= 3, "{}", p.proxy.describe());
    assert_converges(&client, &fx, &kept()).await;
    assert_others_untouched(&client, &fx, &before).await;
}

#[tokio::test]
async fn a_connection_reset_before_the_claim_delete_is_retried() {
    let client = client().await;
    let fx = fixture(&client, "reset-before", &Shape::default()).await;
    let p = proxied(&client, &fx).await;
    let delete = Match::request("DELETE", &fx.claim_path("data"));
    p.proxy.on(delete.clone(), Which::Nth(1), Fault::Reset);
    let before = snapshot(&client, &fx).await;

    p.run(&fx.job(&[]), ok_limit())
        .await
        .expect(0, &["migrated to class", "claim deleted"]);
    assert_eq!(p.proxy.count(&delete), 2, "{}", p.proxy.describe());
    assert_converges(&client, &fx, &kept()).await;
    assert_others_untouched(&client, &fx, &before).await;
}

#[tokio::test]
async fn a_connection_reset_after_the_claim_delete_was_applied_is_retried() {
    let client = client().await;
    let fx = fixture(&client, "reset-after", &Shape::default()).await;
    let p = proxied(&client, &fx).await;
    let delete = Match::request("DELETE", &fx.claim_path("data"));
    p.proxy
        .on(delete.clone(), Which::Nth(1), Fault::ResetAfterForward);
    let before = snapshot(&client, &fx).await;

    p.run(&fx.job(&[]), ok_limit())
        .await
        .expect(0, &["migrated to class", "claim deleted"]);
    assert_eq!(p.proxy.count(&delete), 2, "{}", p.proxy.describe());
    assert_converges(&client, &fx, &kept()).await;
    assert_others_untouched(&client, &fx, &before).await;
}

#[tokio::test]
async fn connections_that_always_reset_fail_as_unreachable() {
    let client = client().await;
    let fx = fixture(&client, "reset-always", &Shape::default()).await;
    let p = proxied(&client, &fx).await;
    p.proxy.on(Match::any(), Which::Every, Fault::Reset);
    let before = snapshot(&client, &fx).await;

    let run = p.run(&fx.job(&[]), ok_limit()).await;
    run.expect(
        4,
        &["failed: get persistentvolumeclaims \"data\"", "connection"],
    )
    .within(MARGIN);
    assert!(
        p.proxy.requests().len() > 1,
        "not retried:\n{}",
        p.proxy.describe()
    );
    assert_unchanged(&client, &fx, &before).await;

    p.rerun(&fx.job(&[])).await.expect(0, &["migrated"]);
    assert_converges(&client, &fx, &kept()).await;
}

#[tokio::test]
async fn a_dropped_claim_watch_is_reestablished() {
    let client = client().await;
    let shape = Shape {
        claim_finalizer: true,
        ..Shape::default()
    };
    let fx = fixture(&client, "claim-watch-cut", &shape).await;
    let p = proxied(&client, &fx).await;
    let watch = Match::watch(&fx.claims_path());
    p.proxy.on(
        watch.clone(),
        Which::Nth(1),
        Fault::CutStream(Duration::from_millis(300)),
    );
    let before = snapshot(&client, &fx).await;

    let binary = spawn(&p.kubeconfig, &fx.job(&[]));
    // The first watch was cut; once the second is up, the other controller lets go.
    p.proxy.wait_count(&watch, 2, GATE_TIMEOUT).await;
    remove_claim_finalizer(&client, &fx).await;
    binary
        .finish(ok_limit())
        .await
        .expect(0, &["migrated to class", "claim gone"]);
    assert_converges(&client, &fx, &kept()).await;
    assert_others_untouched(&client, &fx, &before).await;
}

#[tokio::test]
async fn a_dropped_volume_watch_is_reestablished() {
    let client = client().await;
    let shape = Shape {
        pv_finalizer: true,
        ..Shape::default()
    };
    let fx = fixture(&client, "pv-watch-cut", &shape).await;
    let p = proxied(&client, &fx).await;
    let watch = Match::watch(PVS_PATH);
    p.proxy.on(
        watch.clone(),
        Which::Nth(1),
        Fault::CutStream(Duration::from_millis(300)),
    );
    let before = snapshot(&client, &fx).await;

    let job = fx.job(&[("DELETE_RETAINED_PV", "true")]);
    let binary = spawn(&p.kubeconfig, &job);
    p.proxy.wait_count(&watch, 2, GATE_TIMEOUT).await;
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    remove_finalizer(&pvs, &fx.pv, "example.com/hold").await;
    binary
        .finish(ok_limit())
        .await
        .expect(0, &["migrated to class", "deleted"]);
    assert_converges(&client, &fx, &all_gone()).await;
    assert_others_untouched(&client, &fx, &before).await;
}

#[tokio::test]
async fn slow_answers_within_the_timeout_still_succeed() {
    let client = client().await;
    let fx = fixture(&client, "slow", &Shape::default()).await;
    let p = proxied(&client, &fx).await;
    let slow = Fault::Delay(Duration::from_millis(1500));
    for request in [
        Match::request("GET", &fx.claim_path("data")),
        Match::request("GET", &pv_path(&fx.pv)),
        Match::request("DELETE", &fx.claim_path("data")),
    ] {
        p.proxy.on(request, Which::Every, slow.clone());
    }
    let before = snapshot(&client, &fx).await;

    let job = fx.job(&[("WAIT_TIMEOUT", "5s")]);
    let run = p.run(&job, ok_limit()).await;
    run.expect(0, &["migrated to class"]);
    assert!(run.elapsed >= Duration::from_millis(4500), "{run:?}");
    assert_converges(&client, &fx, &kept()).await;
    assert_others_untouched(&client, &fx, &before).await;
}

#[tokio::test]
async fn an_answer_slower_than_the_timeout_fails_in_time() {
    let client = client().await;
    let fx = fixture(&client, "hang", &Shape::default()).await;
    let p = proxied(&client, &fx).await;
    let gate = Gate::new();
    let read = Match::request("GET", &pv_path(&fx.pv));
    p.proxy.on(read, Which::Every, Fault::Hold(gate.clone()));
    let before = snapshot(&client, &fx).await;

    let job = fx.job(&[("WAIT_TIMEOUT", &seconds(SHORT_TIMEOUT))]);
    let expected = format!(
        "timed out after 2s waiting for an answer to get persistentvolumes \"{}\"",
        fx.pv
    );
    p.run(&job, SHORT_TIMEOUT + MARGIN)
        .await
        .expect(5, &[&expected])
        .within(SHORT_TIMEOUT + MARGIN);
    gate.abandon();
    assert_unchanged(&client, &fx, &before).await;

    p.rerun(&fx.job(&[])).await.expect(0, &["migrated"]);
    assert_converges(&client, &fx, &kept()).await;
}

#[tokio::test]
async fn a_claim_held_past_the_timeout_fails_naming_the_finalizer() {
    let client = client().await;
    let shape = Shape {
        claim_finalizer: true,
        ..Shape::default()
    };
    let fx = fixture(&client, "held", &shape).await;
    let p = proxied(&client, &fx).await;
    let before = snapshot(&client, &fx).await;

    let job = fx.job(&[("WAIT_TIMEOUT", &seconds(SHORT_TIMEOUT))]);
    p.run(&job, SHORT_TIMEOUT + MARGIN)
        .await
        .expect(
            5,
            &[
                "timed out",
                "done: claim deleted",
                &format!("to be deleted (finalizers {FOREIGN_FINALIZER})"),
            ],
        )
        .within(SHORT_TIMEOUT + MARGIN);

    // A rerun carries on from the deleted claim; the other controller lets go meanwhile.
    let gate = Gate::new();
    let watch = Match::watch(&fx.claims_path());
    p.proxy
        .on(watch, Which::Every, Fault::Observe(gate.clone()));
    let binary = spawn(&p.kubeconfig, &fx.job(&[]));
    gate.arrived(GATE_TIMEOUT).await;
    remove_claim_finalizer(&client, &fx).await;
    binary.finish(ok_limit()).await.expect(
        0,
        &["migrated to class", "already being deleted", "claim gone"],
    );
    assert_converges(&client, &fx, &kept()).await;
    assert_others_untouched(&client, &fx, &before).await;
}

/// After the wait for the claim expires, the binary reads the claim and the pods once more to
/// name what holds it; those reads must be bounded too, or a hanging apiserver keeps the hook
/// (and `helm upgrade`) waiting far beyond WAIT_TIMEOUT.
#[tokio::test]
async fn a_hanging_read_after_the_claim_wait_expired_ends_in_time() {
    let client = client().await;
    let shape = Shape {
        claim_finalizer: true,
        ..Shape::default()
    };
    let fx = fixture(&client, "hang-after-wait", &shape).await;
    let p = proxied(&client, &fx).await;
    let gate = Gate::new();
    // The first read of the claim passes; every later one (after the wait) hangs.
    let read = Match::request("GET", &fx.claim_path("data"));
    p.proxy.on(read, Which::From(2), Fault::Hold(gate.clone()));

    let job = fx.job(&[("WAIT_TIMEOUT", &seconds(SHORT_TIMEOUT))]);
    let run = p.run(&job, SHORT_TIMEOUT + MARGIN).await;
    gate.abandon();
    run.expect(5, &["timed out"]).within(SHORT_TIMEOUT + MARGIN);
}

/// README: "a dropped connection, a 429 or a 5xx is retried a few times with backoff". The list
/// of claims by selector is one of the requests of a run.
#[tokio::test]
async fn a_server_error_listing_claims_by_selector_is_retried() {
    let client = client().await;
    let fx = fixture(&client, "selector-500", &Shape::default()).await;
    let p = proxied(&client, &fx).await;
    let list = Match::list(&fx.claims_path()).query_has("labelSelector=");
    let error = Fault::Status {
        code: 500,
        retry_after: None,
    };
    p.proxy.on(list.clone(), Which::Nth(1), error);
    label_claim(&client, &fx, "data").await;
    let before = snapshot(&client, &fx).await;

    let job = fx.job(&[("PVC_NAME", ""), ("PVC_SELECTOR", "migrate=yes")]);
    p.run(&job, ok_limit())
        .await
        .expect(0, &["migrated to class"]);
    assert_eq!(p.proxy.count(&list), 2, "{}", p.proxy.describe());
    assert_converges(&client, &fx, &kept()).await;
    assert_others_untouched(&client, &fx, &before).await;
}

/// Each request is bounded by the timeout (README), the list by selector included.
#[tokio::test]
async fn a_hanging_list_by_selector_ends_in_time() {
    let client = client().await;
    let fx = fixture(&client, "selector-hang", &Shape::default()).await;
    let p = proxied(&client, &fx).await;
    let gate = Gate::new();
    let list = Match::list(&fx.claims_path()).query_has("labelSelector=");
    p.proxy.on(list, Which::Every, Fault::Hold(gate.clone()));
    label_claim(&client, &fx, "data").await;
    let before = snapshot(&client, &fx).await;

    let job = fx.job(&[
        ("PVC_NAME", ""),
        ("PVC_SELECTOR", "migrate=yes"),
        ("WAIT_TIMEOUT", &seconds(SHORT_TIMEOUT)),
    ]);
    let run = p.run(&job, SHORT_TIMEOUT + MARGIN).await;
    gate.abandon();
    run.expect(5, &["timed out", "list persistentvolumeclaims"])
        .within(SHORT_TIMEOUT + MARGIN);
    assert_unchanged(&client, &fx, &before).await;
}

/// The lookup of the cluster's default class (DESIRED_STORAGECLASS empty) is a request of the
/// run like the others: a 5xx is retried.
#[tokio::test]
async fn a_server_error_on_the_default_class_lookup_is_retried() {
    let _default = default_class_lock();
    let client = client().await;
    let fx = fixture(&client, "default-500", &Shape::default()).await;
    let classes: Api<k8s_openapi::api::storage::v1::StorageClass> = Api::all(client.clone());
    let default = json!({"metadata": {"annotations": {DEFAULT_CLASS_ANNOTATION: "true"}}});
    classes
        .patch(
            &fx.class_b,
            &PatchParams::default(),
            &Patch::Merge(&default),
        )
        .await
        .expect("making class b the default");
    let p = proxied(&client, &fx).await;
    let list = Match::list("/apis/storage.k8s.io/v1/storageclasses");
    let error = Fault::Status {
        code: 500,
        retry_after: None,
    };
    p.proxy.on(list.clone(), Which::Nth(1), error);
    let before = snapshot(&client, &fx).await;

    let job = fx.job(&[("DESIRED_STORAGECLASS", "")]);
    let run = p.run(&job, ok_limit()).await;
    let _ = classes.delete(&fx.class_b, &DeleteParams::default()).await;
    run.expect(0, &["migrated to class"]);
    assert_eq!(p.proxy.count(&list), 2, "{}", p.proxy.describe());
    assert_others_untouched(&client, &fx, &before).await;
}

async fn label_claim(client: &Client, fx: &Fixture, claim: &str) {
    let labels = json!({"metadata": {"labels": {"migrate": "yes"}}});
    fx.claims(client)
        .patch(claim, &PatchParams::default(), &Patch::Merge(&labels))
        .await
        .expect("labelling the claim");
}

async fn remove_claim_finalizer(client: &Client, fx: &Fixture) {
    remove_finalizer(&fx.claims(client), "data", FOREIGN_FINALIZER).await;
}

/// Removes one finalizer with a merge patch that carries the resourceVersion read, so a
/// concurrent change is not overwritten (409, read again).
async fn remove_finalizer<K>(api: &Api<K>, name: &str, finalizer: &str)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + k8s_openapi::serde::de::DeserializeOwned,
{
    for _ in 0..10 {
        let object = get(api, name).await;
        let finalizers = object.finalizers().to_vec();
        if !finalizers.iter().any(|f| f == finalizer) {
            return;
        }
        let keep: Vec<&String> = finalizers.iter().filter(|f| *f != finalizer).collect();
        let patch = json!({"metadata": {
            "finalizers": keep,
            "resourceVersion": object.resource_version(),
        }});
        if api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .is_ok()
        {
            return;
        }
    }
    panic!("could not remove finalizer {finalizer} from {name}");
}

// ------------------------------------------------------------------------------------------
// 2. Killed at each step, then run again with the same settings

const DELETE_PV: [Setting; 1] = [("DELETE_RETAINED_PV", "true")];

/// SIGKILLs the binary once `gate` has seen its request (or answer), then drops whatever the
/// proxy still holds, so nothing reaches the apiserver after the kill.
async fn kill_at(gate: &Gate, binary: Binary) -> Run {
    gate.arrived(GATE_TIMEOUT).await;
    let run = binary.kill();
    gate.abandon();
    assert_eq!(
        run.code,
        None,
        "the binary ended before it was killed\n{}",
        run.describe()
    );
    run
}

fn marked_for(fx: &Fixture, claim: &str) -> Option<String> {
    Some(format!("{}/{claim}", fx.name()))
}

#[tokio::test]
async fn killed_before_the_claim_delete_a_rerun_converges() {
    let client = client().await;
    let shape = Shape::default();
    let (fx, expected) = tokio::join!(
        fixture(&client, "kill-before-delete", &shape),
        reference_run(&client, &shape, &DELETE_PV, async |_| {}),
    );
    assert_eq!(expected, all_gone());
    let p = proxied(&client, &fx).await;
    let gate = Gate::new();
    let delete = Match::request("DELETE", &fx.claim_path("data"));
    p.proxy.on(delete, Which::Nth(1), Fault::Hold(gate.clone()));
    let before = snapshot(&client, &fx).await;
    let job = fx.job(&DELETE_PV);

    kill_at(&gate, spawn(&p.kubeconfig, &job)).await;
    // Killed with the volume marked and the claim untouched.
    let killed = snapshot(&client, &fx).await;
    assert_eq!(killed.claim, before.claim);
    assert_eq!(killed.pv.unwrap().mark, marked_for(&fx, "data"));

    p.rerun(&job)
        .await
        .expect(0, &["migrated to class", "claim deleted", "deleted"]);
    assert_converges(&client, &fx, &expected).await;
    assert_others_untouched(&client, &fx, &before).await;
}

#[tokio::test]
async fn killed_after_the_claim_delete_a_rerun_finishes_the_volume() {
    let client = client().await;
    let shape = Shape::default();
    let (fx, expected) = tokio::join!(
        fixture(&client, "kill-after-delete", &shape),
        reference_run(&client, &shape, &DELETE_PV, async |_| {}),
    );
    let p = proxied(&client, &fx).await;
    let gate = Gate::new();
    let delete = Match::request("DELETE", &fx.claim_path("data"));
    p.proxy
        .on(delete, Which::Nth(1), Fault::HoldAnswer(gate.clone()));
    let before = snapshot(&client, &fx).await;
    let job = fx.job(&DELETE_PV);

    // The apiserver has deleted the claim; the binary never learns it.
    kill_at(&gate, spawn(&p.kubeconfig, &job)).await;
    wait_deleted(&fx.claims(&client), "data").await;
    let released = wait_pv_phase(&client, &fx.pv, "Released").await;
    assert_eq!(
        released.annotations().get(MARK),
        marked_for(&fx, "data").as_ref()
    );

    p.rerun(&job).await.expect(
        0,
        &[
            "finished an interrupted migration",
            "claim absent",
            "deleted",
        ],
    );
    assert_converges(&client, &fx, &expected).await;
    assert_others_untouched(&client, &fx, &before).await;
}

#[tokio::test]
async fn killed_after_the_claim_delete_a_rerun_keeps_the_volume() {
    let client = client().await;
    let shape = Shape::default();
    let (fx, expected) = tokio::join!(
        fixture(&client, "kill-keep", &shape),
        reference_run(&client, &shape, &[], async |_| {}),
    );
    assert_eq!(expected, kept());
    let p = proxied(&client, &fx).await;
    let gate = Gate::new();
    let delete = Match::request("DELETE", &fx.claim_path("data"));
    p.proxy
        .on(delete, Which::Nth(1), Fault::HoldAnswer(gate.clone()));
    let before = snapshot(&client, &fx).await;
    let job = fx.job(&[]);

    kill_at(&gate, spawn(&p.kubeconfig, &job)).await;
    wait_deleted(&fx.claims(&client), "data").await;
    p.rerun(&job)
        .await
        .expect(0, &["nothing to do: claim absent"]);
    assert_converges(&client, &fx, &expected).await;
    assert_others_untouched(&client, &fx, &before).await;
}

#[tokio::test]
async fn killed_while_a_finalizer_holds_the_claim_a_rerun_converges() {
    let client = client().await;
    let shape = Shape {
        claim_finalizer: true,
        ..Shape::default()
    };
    let unheld = Shape::default();
    let (fx, expected) = tokio::join!(
        fixture(&client, "kill-finalizer", &shape),
        reference_run(&client, &unheld, &DELETE_PV, async |_| {}),
    );
    let p = proxied(&client, &fx).await;
    let watch = Match::watch(&fx.claims_path());
    let gate = Gate::new();
    p.proxy
        .on(watch.clone(), Which::Every, Fault::Observe(gate.clone()));
    let before = snapshot(&client, &fx).await;
    let job = fx.job(&DELETE_PV);

    kill_at(&gate, spawn(&p.kubeconfig, &job)).await;
    let killed = snapshot(&client, &fx).await;
    let claim = killed.claim.expect("the claim is held by its finalizer");
    assert!(claim.deleting, "{claim:?}");

    // The rerun resumes and waits; the other controller lets go meanwhile.
    p.proxy.clear();
    let gate = Gate::new();
    p.proxy
        .on(watch, Which::Every, Fault::Observe(gate.clone()));
    let binary = spawn(&p.kubeconfig, &job);
    gate.arrived(GATE_TIMEOUT).await;
    remove_claim_finalizer(&client, &fx).await;
    binary
        .finish(ok_limit())
        .await
        .expect(0, &["already being deleted", "claim gone", "deleted"]);
    assert_converges(&client, &fx, &expected).await;
    assert_others_untouched(&client, &fx, &before).await;
}

async fn pod_using_data(client: &Client, fx: &Fixture) {
    let node = create_node(client, &fx.ns, "node").await;
    create_pod(client, fx.name(), "user", &node.name_any(), &["data"]).await;
    set_pod_phase(client, fx.name(), "user", "Running").await;
}

#[tokio::test]
async fn killed_while_a_pod_holds_the_claim_a_rerun_converges() {
    let client = client().await;
    let shape = Shape::default();
    let with_pod = async |fx: &Fixture| {
        pod_using_data(&client, fx).await;
        kubelet_stand_in(fx.name())
    };
    let (fx, expected) = tokio::join!(
        fixture(&client, "kill-pod", &shape),
        reference_run(&client, &shape, &DELETE_PV, with_pod),
    );
    pod_using_data(&client, &fx).await;
    let p = proxied(&client, &fx).await;
    let watch = Match::watch(&fx.claims_path());
    let gate = Gate::new();
    p.proxy
        .on(watch.clone(), Which::Every, Fault::Observe(gate.clone()));
    let before = snapshot(&client, &fx).await;
    let job = fx.job(&DELETE_PV);

    // Killed while waiting: the claim deleted, the pod evicted but (no kubelet) still there.
    kill_at(&gate, spawn(&p.kubeconfig, &job)).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), fx.name());
    let pod = get(&pods, "user").await;
    assert!(pod.metadata.deletion_timestamp.is_some(), "not evicted");
    assert!(snapshot(&client, &fx).await.claim.unwrap().deleting);

    // The rerun resumes without evicting again; the kubelet finishes the pod meanwhile.
    p.proxy.clear();
    let gate = Gate::new();
    p.proxy
        .on(watch, Which::Every, Fault::Observe(gate.clone()));
    let binary = spawn(&p.kubeconfig, &job);
    gate.arrived(GATE_TIMEOUT).await;
    let _kubelet = kubelet_stand_in(fx.name());
    let run = binary.finish(ok_limit()).await;
    run.expect(0, &["already being deleted", "claim gone", "deleted"]);
    assert!(!run.line().contains("evicted"), "evicted again: {run:?}");
    wait_deleted(&pods, "user").await;
    assert_converges(&client, &fx, &expected).await;
    assert_others_untouched(&client, &fx, &before).await;
}

#[tokio::test]
async fn killed_before_the_volume_delete_a_rerun_finishes_it() {
    let client = client().await;
    let shape = Shape::default();
    let (fx, expected) = tokio::join!(
        fixture(&client, "kill-before-pv", &shape),
        reference_run(&client, &shape, &DELETE_PV, async |_| {}),
    );
    let p = proxied(&client, &fx).await;
    let gate = Gate::new();
    let delete = Match::request("DELETE", &pv_path(&fx.pv));
    p.proxy.on(delete, Which::Nth(1), Fault::Hold(gate.clone()));
    let before = snapshot(&client, &fx).await;
    let job = fx.job(&DELETE_PV);

    kill_at(&gate, spawn(&p.kubeconfig, &job)).await;
    // The claim is gone, the marked volume left over.
    assert!(snapshot(&client, &fx).await.claim.is_none());
    let released = wait_pv_phase(&client, &fx.pv, "Released").await;
    assert!(released.metadata.deletion_timestamp.is_none());
    assert_eq!(
        released.annotations().get(MARK),
        marked_for(&fx, "data").as_ref()
    );

    p.rerun(&job).await.expect(
        0,
        &[
            "finished an interrupted migration",
            "left by an interrupted run",
            "deleted",
        ],
    );
    assert_converges(&client, &fx, &expected).await;
    assert_others_untouched(&client, &fx, &before).await;
}

#[tokio::test]
async fn killed_after_the_volume_delete_a_rerun_has_nothing_left() {
    let client = client().await;
    let shape = Shape::default();
    let (fx, expected) = tokio::join!(
        fixture(&client, "kill-after-pv", &shape),
        reference_run(&client, &shape, &DELETE_PV, async |_| {}),
    );
    let p = proxied(&client, &fx).await;
    let gate = Gate::new();
    let delete = Match::request("DELETE", &pv_path(&fx.pv));
    p.proxy
        .on(delete, Which::Nth(1), Fault::HoldAnswer(gate.clone()));
    let before = snapshot(&client, &fx).await;
    let job = fx.job(&DELETE_PV);

    kill_at(&gate, spawn(&p.kubeconfig, &job)).await;
    // Whether the volume is still going or gone, the rerun ends in the same state.
    p.rerun(&job).await.expect(0, &["claim absent"]);
    assert_converges(&client, &fx, &expected).await;
    assert_others_untouched(&client, &fx, &before).await;
}

// ------------------------------------------------------------------------------------------
// 3. Races with other writers

#[tokio::test]
async fn three_runs_at_once_all_succeed_with_one_end_state() {
    let client = client().await;
    let shape = Shape::default();
    let (fx, expected) = tokio::join!(
        fixture(&client, "concurrent", &shape),
        reference_run(&client, &shape, &DELETE_PV, async |_| {}),
    );
    let before = snapshot(&client, &fx).await;
    let job = fx.job(&DELETE_PV);

    let runs = futures::future::join_all(
        (0..3).map(|_| spawn(kubeconfig_path(), &job).finish(ok_limit())),
    )
    .await;
    for run in &runs {
        run.expect(0, &[]);
    }
    assert_converges(&client, &fx, &expected).await;
    assert_others_untouched(&client, &fx, &before).await;
}

#[tokio::test]
async fn a_claim_replaced_before_the_delete_is_not_deleted() {
    let client = client().await;
    let fx = fixture(&client, "replaced", &Shape::default()).await;
    let p = proxied(&client, &fx).await;
    let gate = Gate::new();
    let delete = Match::request("DELETE", &fx.claim_path("data"));
    p.proxy.on(delete, Which::Nth(1), Fault::Hold(gate.clone()));
    let before = snapshot(&client, &fx).await;

    let binary = spawn(&p.kubeconfig, &fx.job(&[]));
    gate.arrived(GATE_TIMEOUT).await;
    // Read, not yet deleted: someone else deletes the claim and creates it anew.
    let claims = fx.claims(&client);
    claims
        .delete("data", &DeleteParams::default())
        .await
        .expect("deleting the claim");
    wait_deleted(&claims, "data").await;
    let new = create(&claims, &pvc("data", &PvcOpts::class(&fx.class_a))).await;
    gate.release();

    binary.finish(ok_limit()).await.expect(
        3,
        &[
            "refused, nothing changed",
            "the claim was replaced after it was read",
        ],
    );
    let survivor = get(&claims, "data").await;
    assert_eq!(survivor.uid(), new.uid());
    assert!(survivor.metadata.deletion_timestamp.is_none());
    assert_others_untouched(&client, &fx, &before).await;
}

/// Binds the (Released) volume of `data` to a new claim `thief`: its claimRef is cleared, and a
/// claim naming it in spec.volumeName takes it. Returns the new claim's uid once bound.
async fn rebind_by_volume_name(client: &Client, fx: &Fixture) -> String {
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let clear = json!({"spec": {"claimRef": null}});
    pvs.patch(&fx.pv, &PatchParams::default(), &Patch::Merge(&clear))
        .await
        .expect("clearing the claimRef");
    let thief = create(
        &fx.claims(client),
        &pvc(
            "thief",
            &PvcOpts {
                volume_name: Some(fx.pv.clone()),
                ..PvcOpts::class(&fx.class_a)
            },
        ),
    )
    .await;
    wait_bound_to(client, fx, &thief).await
}

/// Binds the volume of `data` to a new claim `thief` by pointing its claimRef at it.
async fn rebind_by_claim_ref(client: &Client, fx: &Fixture) -> String {
    let thief = create(
        &fx.claims(client),
        &pvc(
            "thief",
            &PvcOpts {
                volume_name: Some(fx.pv.clone()),
                ..PvcOpts::class(&fx.class_a)
            },
        ),
    )
    .await;
    let claim_ref = json!({"spec": {"claimRef": {
        "kind": "PersistentVolumeClaim", "apiVersion": "v1",
        "namespace": fx.name(), "name": "thief", "uid": thief.uid(),
    }}});
    Api::<PersistentVolume>::all(client.clone())
        .patch(&fx.pv, &PatchParams::default(), &Patch::Merge(&claim_ref))
        .await
        .expect("pointing the claimRef at the new claim");
    wait_bound_to(client, fx, &thief).await
}

async fn wait_bound_to(client: &Client, fx: &Fixture, thief: &PersistentVolumeClaim) -> String {
    let uid = thief.uid().unwrap();
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    wait_for(&pvs, &fx.pv, "binding to the new claim", |pv| {
        pv.is_some_and(|pv| {
            pv.spec
                .as_ref()
                .and_then(|s| s.claim_ref.as_ref()?.uid.as_deref())
                == Some(&uid)
                && pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
        })
    })
    .await;
    uid
}

/// The volume is bound to the new claim and not being deleted; a rerun for the (absent) old
/// claim leaves it alone although it still carries the mark.
async fn assert_volume_kept_by_thief(client: &Client, fx: &Fixture, p: &Proxied, uid: &str) {
    let pv = pv_print(client, &fx.pv).await.expect("the volume survives");
    assert!(!pv.deleting, "{pv:?}");
    assert_eq!(pv.bound.as_deref(), Some(uid));
    p.rerun(&fx.job(&DELETE_PV))
        .await
        .expect(0, &["nothing to do: claim absent"]);
    let after = pv_print(client, &fx.pv).await.expect("the volume survives");
    assert_eq!(after, pv);
}

#[tokio::test]
async fn a_volume_rebound_before_its_last_read_is_not_touched() {
    let client = client().await;
    let fx = fixture(&client, "rebound-read", &Shape::default()).await;
    let p = proxied(&client, &fx).await;
    let gate = Gate::new();
    // The first read plans; the second, after the claim is gone, checks before the delete.
    let read = Match::request("GET", &pv_path(&fx.pv));
    p.proxy.on(read, Which::Nth(2), Fault::Hold(gate.clone()));
    let before = snapshot(&client, &fx).await;

    let binary = spawn(&p.kubeconfig, &fx.job(&DELETE_PV));
    gate.arrived(GATE_TIMEOUT).await;
    let uid = rebind_by_volume_name(&client, &fx).await;
    gate.release();

    let expected = format!("PV {} no longer belongs to the claim", fx.pv);
    binary
        .finish(ok_limit())
        .await
        .expect(3, &["refused", "claim deleted", &expected]);
    assert_volume_kept_by_thief(&client, &fx, &p, &uid).await;
    assert_others_untouched(&client, &fx, &before).await;
}

#[tokio::test]
async fn a_volume_rebound_between_read_and_delete_is_not_touched() {
    let client = client().await;
    let fx = fixture(&client, "rebound-delete", &Shape::default()).await;
    let p = proxied(&client, &fx).await;
    let gate = Gate::new();
    let delete = Match::request("DELETE", &pv_path(&fx.pv));
    p.proxy
        .on(delete.clone(), Which::Nth(1), Fault::Hold(gate.clone()));
    let before = snapshot(&client, &fx).await;

    let binary = spawn(&p.kubeconfig, &fx.job(&DELETE_PV));
    gate.arrived(GATE_TIMEOUT).await;
    let uid = rebind_by_claim_ref(&client, &fx).await;
    gate.release();

    // The delete carries the resourceVersion read: 409, a fresh read, a refusal.
    let expected = format!("PV {} no longer belongs to the claim", fx.pv);
    binary
        .finish(ok_limit())
        .await
        .expect(3, &["refused", "claim deleted", &expected]);
    assert_eq!(p.proxy.count(&delete), 1, "{}", p.proxy.describe());
    assert_volume_kept_by_thief(&client, &fx, &p, &uid).await;
    assert_others_untouched(&client, &fx, &before).await;
}

// ------------------------------------------------------------------------------------------
// 4. Bad input: the documented status, one line that says what to fix, nothing changed

/// A failure before any claim was looked at is one line on stderr and nothing on stdout.
fn assert_single_error_line(run: &Run) {
    assert!(run.stdout.trim().is_empty(), "{}", run.describe());
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "not one line on stderr\n{}", run.describe());
}

#[tokio::test]
async fn invalid_settings_are_refused_before_any_request() {
    let client = client().await;
    let fx = fixture(&client, "bad-input", &Shape::default()).await;
    let p = proxied(&client, &fx).await;
    let before = snapshot(&client, &fx).await;
    let cases: &[(&[Setting<'_>], &[&str])] = &[
        (
            &[("PVC_NAME", "Bad_Name")],
            &["claim name \"Bad_Name\" is not a valid DNS-1123 subdomain"],
        ),
        (
            &[("PVC_NAME", "a,,b")],
            &["claim list \"a,,b\" has an empty name"],
        ),
        (&[("PVC_NAME", " ")], &["no claim given: set PVC_NAME"]),
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
    ];
    for (extra, fragments) in cases {
        let run = p.run(&fx.job(extra), MARGIN).await;
        run.expect(2, fragments).within(MARGIN);
        assert_single_error_line(&run);
    }
    assert!(
        p.proxy.requests().is_empty(),
        "bad input sent requests:\n{}",
        p.proxy.describe()
    );
    assert_unchanged(&client, &fx, &before).await;
}

#[tokio::test]
async fn a_namespace_that_does_not_exist_is_bad_input() {
    let client = client().await;
    let fx = fixture(&client, "no-namespace", &Shape::default()).await;
    let before = snapshot(&client, &fx).await;
    let missing = unique_name("missing");
    let expected = format!("namespace {missing:?} does not exist");
    for extra in [&[][..], &DELETE_PV[..]] {
        let mut job = fx.job(extra);
        job.retain(|(k, _)| k != "PVC_NAMESPACE");
        job.push(("PVC_NAMESPACE".into(), missing.clone()));
        run(kubeconfig_path(), &job, ok_limit())
            .await
            .expect(2, &[&format!("{missing}/data: failed"), &expected]);
    }
    assert_unchanged(&client, &fx, &before).await;
}

#[tokio::test]
async fn an_unreadable_kubeconfig_is_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, "this is not a kubeconfig\n").unwrap();
    let missing = dir.path().join("missing");
    let directory = dir.path().to_path_buf();
    let job = [("PVC_NAME".to_string(), "data".to_string())];
    for (kubeconfig, fragment) in [
        (&missing, "No such file or directory"),
        (&garbage, "failed to parse kubeconfig"),
        (&directory, "kubeconfig"),
    ] {
        let run = run(kubeconfig, &job, MARGIN).await;
        run.expect(
            2,
            &["cannot load the Kubernetes client configuration", fragment],
        )
        .within(MARGIN);
        assert_single_error_line(&run);
    }
}

/// A kubeconfig for `server`, trusting `ca`, with a bearer token.
fn token_kubeconfig(dir: &Path, server: &str, ca: &Path, token: &str) -> PathBuf {
    let path = dir.join(format!("kubeconfig-{}", unique_name("kc")));
    let kubeconfig = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server, "certificate-authority": ca}}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    });
    std::fs::write(&path, serde_json::to_vec(&kubeconfig).unwrap()).unwrap();
    path
}

#[tokio::test]
async fn an_apiserver_that_refuses_connections_fails_fast() {
    let client = client().await;
    let fx = fixture(&client, "refused", &Shape::default()).await;
    let before = snapshot(&client, &fx).await;
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let server = format!("https://127.0.0.1:{port}");
    let kubeconfig = token_kubeconfig(dir.path(), &server, ca_path(), "unused");

    run(&kubeconfig, &fx.job(&[]), ok_limit())
        .await
        .expect(
            4,
            &[
                "failed: get persistentvolumeclaims \"data\"",
                "Connection refused",
            ],
        )
        .within(Duration::from_secs(5));
    assert_unchanged(&client, &fx, &before).await;
}

#[tokio::test]
async fn a_certificate_that_does_not_verify_fails_as_an_api_error() {
    let client = client().await;
    let fx = fixture(&client, "wrong-ca", &Shape::default()).await;
    let sa = service_account_with_rules(
        &client,
        &fx.ns,
        "hook",
        &[],
        &[rule(&["*"], &["*"], &["*"])],
    )
    .await;
    let before = snapshot(&client, &fx).await;
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

    run(&kubeconfig, &fx.job(&[]), ok_limit())
        .await
        .expect(
            4,
            &["failed: get persistentvolumeclaims \"data\"", "certificate"],
        )
        .within(MARGIN);
    assert_unchanged(&client, &fx, &before).await;
}

#[tokio::test]
async fn a_wrong_or_revoked_token_fails_with_401() {
    let client = client().await;
    let fx = fixture(&client, "bad-token", &Shape::default()).await;
    let sa = service_account_with_rules(
        &client,
        &fx.ns,
        "gone",
        &[],
        &[rule(&["*"], &["*"], &["*"])],
    )
    .await;
    let before = snapshot(&client, &fx).await;
    let dir = tempfile::tempdir().unwrap();

    // A token that never was.
    let wrong = token_kubeconfig(dir.path(), apiserver_url(), ca_path(), "not-a-token");
    run(&wrong, &fx.job(&[]), ok_limit())
        .await
        .expect(
            4,
            &[
                "failed: get persistentvolumeclaims",
                "HTTP 401 Unauthorized",
            ],
        )
        .within(MARGIN);

    // A token of a ServiceAccount deleted since.
    let revoked = token_kubeconfig(dir.path(), apiserver_url(), ca_path(), &sa.token);
    Api::<ServiceAccount>::namespaced(client.clone(), fx.name())
        .delete("gone", &DeleteParams::default())
        .await
        .expect("deleting the ServiceAccount");
    let probe = client_for(&revoked).await;
    let deadline = Instant::now() + WAIT_TIMEOUT;
    while api_code(&probe.apiserver_version().await) != Some(401) {
        assert!(Instant::now() < deadline, "the token still works");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    run(&revoked, &fx.job(&[]), ok_limit())
        .await
        .expect(
            4,
            &[
                "failed: get persistentvolumeclaims",
                "HTTP 401 Unauthorized",
            ],
        )
        .within(MARGIN);
    assert_unchanged(&client, &fx, &before).await;
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

async fn expect_forbidden<T: std::fmt::Debug>(what: &str, result: Result<T, kube::Error>) {
    assert_eq!(api_code(&result), Some(403), "{what}: {result:?}");
}

#[tokio::test]
async fn the_chart_rules_allow_the_migration_and_nothing_more() {
    let client = client().await;
    let fx = fixture(&client, "least-privilege", &Shape::default()).await;
    let (role, cluster) = chart_rules(&["data"], fx.name(), &["always", "inUseEvict"], None);
    let sa = service_account_with_rules(&client, &fx.ns, "hook", &role, &cluster).await;
    let throwaway = create_pv(&client, &fx.ns, "throwaway", &PvOpts::default()).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), fx.name());
    create(
        &secrets,
        &from_json(json!({"metadata": {"name": "credentials"}, "stringData": {"password": "x"}})),
    )
    .await;
    let before = snapshot(&client, &fx).await;
    let throwaway_before = pv_print(&client, &throwaway.name_any()).await;

    let hook = sa.client().await;
    let pvs: Api<PersistentVolume> = Api::all(hook.clone());
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(hook.clone(), fx.name());
    let hook_secrets: Api<Secret> = Api::namespaced(hook.clone(), fx.name());
    let label = Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}}));
    let dp = DeleteParams::default();
    let pp = PatchParams::default();
    for pv in [throwaway.name_any(), fx.pv.clone()] {
        expect_forbidden("delete a PV", pvs.delete(&pv, &dp).await).await;
        expect_forbidden("patch a PV", pvs.patch(&pv, &pp, &label).await).await;
    }
    expect_forbidden("get another claim", claims.get("other").await).await;
    expect_forbidden("delete another claim", claims.delete("other", &dp).await).await;
    expect_forbidden(
        "patch another claim",
        claims.patch("other", &pp, &label).await,
    )
    .await;
    expect_forbidden(
        "list secrets",
        hook_secrets.list(&ListParams::default()).await,
    )
    .await;
    expect_forbidden("get a secret", hook_secrets.get("credentials").await).await;
    claims.get("data").await.expect("the hook reads its claim");

    // Deleting a Retain volume takes rights these rules do not give: refused by the API before
    // anything changed, naming the verb and resource for the RBAC fix.
    run(&sa.kubeconfig, &fx.job(&DELETE_PV), ok_limit())
        .await
        .expect(
            4,
            &[
                "failed",
                &format!("patch persistentvolumes \"{}\": HTTP 403 Forbidden", fx.pv),
                "cannot patch resource \"persistentvolumes\"",
            ],
        );
    assert_unchanged(&client, &fx, &before).await;

    // The default migration needs nothing more.
    run(&sa.kubeconfig, &fx.job(&[]), ok_limit())
        .await
        .expect(0, &["migrated to class"]);
    assert_converges(&client, &fx, &kept()).await;
    assert_others_untouched(&client, &fx, &before).await;
    assert_eq!(
        pv_print(&client, &throwaway.name_any()).await,
        throwaway_before
    );
}

#[tokio::test]
async fn the_seed_rules_let_the_hook_delete_any_volume() {
    let client = client().await;
    let ns = TestNamespace::new("seed-rbac").await;
    let throwaway = create_pv(&client, &ns, "unrelated", &PvOpts::default()).await;
    let (role, cluster) = seed_rules();
    let sa = service_account_with_rules(&client, &ns, "hook", &role, &cluster).await;
    let hook = sa.client().await;
    let pvs: Api<PersistentVolume> = Api::all(hook);
    let name = throwaway.name_any();

    // A volume that belongs to nobody in the hook's namespace: patched and deleted all the same.
    pvs.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})),
    )
    .await
    .expect("the seed's rules allow patching any PV");
    pvs.delete(&name, &DeleteParams::default())
        .await
        .expect("the seed's rules allow deleting any PV");
    wait_deleted(&Api::<PersistentVolume>::all(client.clone()), &name).await;
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
                    "{case}: {what} appears on {stream}\n{}",
                    run.describe()
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
    let client = client().await;
    let fx = fixture(&client, "secrets", &Shape::default()).await;
    let (role, cluster) = chart_rules(
        &["data", "other"],
        fx.name(),
        &["always", "inUseEvict"],
        None,
    );
    let sa = service_account_with_rules(&client, &fx.ns, "hook", &role, &cluster).await;
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
    secrets.add_pem(
        "the client key",
        &std::fs::read_to_string(pki.join("admin.key")).unwrap(),
    );
    secrets.add_pem(
        "the client certificate",
        &std::fs::read_to_string(pki.join("admin.crt")).unwrap(),
    );

    let trace = ("RUST_LOG", "trace");
    let json_logs = ("LOG_FORMAT", "json");
    let missing_namespace = unique_name("missing");
    let cases: Vec<(&str, &Path, Env, i32)> = vec![
        (
            "token, migration",
            &sa.kubeconfig,
            fx.job_for("data", &[trace]),
            0,
        ),
        (
            "token, 403, json logs",
            &sa.kubeconfig,
            fx.job_for("other", &[trace, json_logs, DELETE_PV[0]]),
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
        let run = run(kubeconfig, &job, ok_limit()).await;
        run.expect(code, &[]);
        assert!(
            run.stderr.contains("TRACE"),
            "{case}: no trace logs, the check would be void\n{}",
            run.describe()
        );
        secrets.assert_absent(&run, case);
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
        let run = run(&path, &[("PVC_NAME".into(), "data".into())], MARGIN).await;
        run.expect(2, &["cannot load the Kubernetes client configuration"]);
        secrets.assert_absent(&run, &format!("kubeconfig {i}"));
    }
}
