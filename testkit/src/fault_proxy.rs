//! A fault-injecting HTTP proxy between the binary under test and the control plane's apiserver.
//!
//! The binary's kubeconfig points at `http://127.0.0.1:<port>` with a bearer token
//! ([`FaultProxy::write_kubeconfig`]); the proxy forwards every request over TLS to the apiserver
//! (trusting the control plane's CA) with its headers, so the token passes through and the
//! apiserver authenticates and authorises the binary as usual.
//!
//! Rules pick requests by method, path and query ([`Match`]) and inject a [`Fault`] into some of
//! them ([`Which`]): an error status, a reset connection (before or after the apiserver saw the
//! request), a watch cut short, a delay, or a pause that the test releases ([`Gate`]). Every
//! request is logged, so a test can wait for one and count them. The proxy listens on 127.0.0.1
//! only and runs on its own thread and runtime until dropped; requests still held then are
//! dropped with their connections.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{StreamExt, TryStreamExt, stream};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, BodyStream, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};
use rustls::pki_types::{CertificateDer, pem::PemObject};
use serde_json::json;
use tokio::{net::TcpListener, sync::watch};

use crate::{
    background::Background,
    control_plane::{apiserver_url, ca_path},
    rbac::write_token_kubeconfig,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why the proxy closed a connection instead of answering: a fault injected on purpose, or the
/// apiserver unreachable. A concrete type, not a boxed error, keeps the handler's future `Send`.
#[derive(Debug)]
struct ProxyError(String);

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProxyError {}

impl From<&str> for ProxyError {
    fn from(message: &str) -> Self {
        ProxyError(message.to_owned())
    }
}

impl From<hyper::Error> for ProxyError {
    fn from(error: hyper::Error) -> Self {
        ProxyError(error.to_string())
    }
}

impl From<http::Error> for ProxyError {
    fn from(error: http::Error) -> Self {
        ProxyError(error.to_string())
    }
}

impl From<hyper_util::client::legacy::Error> for ProxyError {
    fn from(error: hyper_util::client::legacy::Error) -> Self {
        ProxyError(format!("{error:?}"))
    }
}
type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;
type Upstream = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Which requests a rule looks at. Paths are compared whole; query conditions are substrings of
/// the raw query (e.g. `watch=true`, `labelSelector=`).
#[derive(Clone, Debug, Default)]
pub struct Match {
    method: Option<Method>,
    path: Option<String>,
    query_has: Vec<String>,
    query_lacks: Vec<String>,
}

impl Match {
    /// Every request.
    pub fn any() -> Match {
        Match::default()
    }

    /// `method` on exactly `path`, e.g. `DELETE /api/v1/namespaces/ns/persistentvolumeclaims/data`.
    pub fn request(method: &str, path: &str) -> Match {
        Match {
            method: Some(method.parse().expect("HTTP method")),
            path: Some(path.to_owned()),
            ..Match::default()
        }
    }

    /// `method` on exactly `path`, but not a server-side dry run (`dryRun=All`): the write that
    /// changes something, not its pre-flight.
    pub fn write(method: &str, path: &str) -> Match {
        Match::request(method, path).query_lacks("dryRun")
    }

    /// A watch of the collection at `path` (`GET path?...watch=true...`).
    pub fn watch(path: &str) -> Match {
        Match::request("GET", path).query_has("watch=true")
    }

    /// A list of the collection at `path` (a GET that is not a watch).
    pub fn list(path: &str) -> Match {
        Match::request("GET", path).query_lacks("watch=true")
    }

    pub fn query_has(mut self, text: &str) -> Match {
        self.query_has.push(text.to_owned());
        self
    }

    pub fn query_lacks(mut self, text: &str) -> Match {
        self.query_lacks.push(text.to_owned());
        self
    }

    fn matches(&self, method: &Method, path: &str, query: &str) -> bool {
        self.method.as_ref().is_none_or(|m| m == method)
            && self.path.as_deref().is_none_or(|p| p == path)
            && self.query_has.iter().all(|q| query.contains(q.as_str()))
            && !self.query_lacks.iter().any(|q| query.contains(q.as_str()))
    }
}

/// Which of the matching requests (counted from 1, per rule) get the fault.
#[derive(Clone, Copy, Debug)]
pub enum Which {
    Nth(usize),
    /// The n-th and every later one.
    From(usize),
    Every,
}

impl Which {
    fn applies(self, occurrence: usize) -> bool {
        match self {
            Which::Nth(n) => occurrence == n,
            Which::From(n) => occurrence >= n,
            Which::Every => true,
        }
    }
}

/// What happens to a request a rule applies to.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status (a Kubernetes `Status` body) without forwarding, optionally with
    /// a `Retry-After` header in seconds.
    Status { code: u16, retry_after: Option<u32> },
    /// Read the request, then close the connection without forwarding or answering.
    Reset,
    /// Forward the request, then close the connection instead of passing the answer on: the
    /// apiserver acted, the client never learns it.
    ResetAfterForward,
    /// Forward and pass the answer on, but cut its body (a watch stream) after this long.
    CutStream(Duration),
    /// Wait this long before forwarding.
    Delay(Duration),
    /// Note the arrival on the gate and wait until the test releases (forward) or abandons it
    /// (close the connection).
    Hold(Gate),
    /// Forward, note the answer's arrival on the gate, and wait until the test releases (pass
    /// the answer on) or abandons it (close the connection instead).
    HoldAnswer(Gate),
    /// Note the arrival on the gate and forward at once.
    Observe(Gate),
}

/// What a held request waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decision {
    Wait,
    Pass,
    Drop,
}

/// A meeting point between the proxy and the test: the proxy notes each request (or answer)
/// that reaches it; a held one goes on once the test calls [`Gate::release`] or
/// [`Gate::abandon`]. The decision stays, so requests arriving later pass (or drop) at once.
#[derive(Clone, Debug)]
pub struct Gate {
    arrived: Arc<watch::Sender<usize>>,
    decision: Arc<watch::Sender<Decision>>,
}

impl Default for Gate {
    fn default() -> Self {
        Gate::new()
    }
}

impl Gate {
    pub fn new() -> Gate {
        Gate {
            arrived: Arc::new(watch::channel(0).0),
            decision: Arc::new(watch::channel(Decision::Wait).0),
        }
    }

    /// Waits until the gate has seen `n` arrivals in all; fails the test after `timeout`.
    pub async fn wait_arrivals(&self, n: usize, timeout: Duration) {
        let mut rx = self.arrived.subscribe();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|seen| *seen >= n)).await;
        assert!(
            matches!(waited, Ok(Ok(_))),
            "the proxy saw {} of {n} expected requests at the gate within {timeout:?}",
            *self.arrived.borrow()
        );
    }

    /// Waits for the first arrival (see [`Gate::wait_arrivals`]).
    pub async fn arrived(&self, timeout: Duration) {
        self.wait_arrivals(1, timeout).await;
    }

    /// Lets held requests (and later ones) go on.
    pub fn release(&self) {
        self.decision.send_replace(Decision::Pass);
    }

    /// Drops held requests (and later ones): their connections are closed, nothing is forwarded
    /// (for [`Fault::Hold`]) or passed on (for [`Fault::HoldAnswer`]).
    pub fn abandon(&self) {
        self.decision.send_replace(Decision::Drop);
    }

    fn note_arrival(&self) {
        self.arrived.send_modify(|n| *n += 1);
    }

    async fn decision(&self) -> Decision {
        let mut rx = self.decision.subscribe();
        match rx.wait_for(|d| *d != Decision::Wait).await {
            Ok(decision) => *decision,
            Err(_) => Decision::Drop,
        }
    }
}

struct Rule {
    matcher: Match,
    which: Which,
    fault: Fault,
    seen: usize,
}

/// One request as the proxy saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub query: String,
    /// Since the proxy started.
    pub at: Duration,
    /// The fault injected, if any.
    pub fault: Option<String>,
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:>8.3?} {} {}", self.at, self.method, self.path)?;
        if !self.query.is_empty() {
            write!(f, "?{}", self.query)?;
        }
        if let Some(fault) = &self.fault {
            write!(f, " [{fault}]")?;
        }
        Ok(())
    }
}

struct State {
    upstream_url: String,
    upstream: Upstream,
    rules: Mutex<Vec<Rule>>,
    log: Mutex<Vec<Seen>>,
    logged: watch::Sender<usize>,
    started: Instant,
}

pub struct FaultProxy {
    url: String,
    state: Arc<State>,
    /// A kubeconfig that reaches the apiserver through the proxy ([`FaultProxy::to_apiserver`]).
    kubeconfig: Option<(tempfile::TempDir, PathBuf)>,
    _task: Background,
}

impl FaultProxy {
    /// Starts a proxy to the apiserver at `upstream_url` (https) whose serving certificate is
    /// signed by the CA in `ca_file`.
    pub fn start(upstream_url: &str, ca_file: &Path) -> FaultProxy {
        let upstream_url = upstream_url.trim_end_matches('/').to_owned();
        let ca_file = ca_file.to_path_buf();
        let (task, ready) = Background::start(
            "fault-proxy",
            Duration::from_secs(30),
            |mut ready| async move {
                let listener = TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("binding the proxy to 127.0.0.1");
                let port = listener.local_addr().expect("proxy address").port();
                let state = Arc::new(State {
                    upstream_url,
                    upstream: upstream_client(&ca_file),
                    rules: Mutex::new(Vec::new()),
                    log: Mutex::new(Vec::new()),
                    logged: watch::channel(0).0,
                    started: Instant::now(),
                });
                ready.send((format!("http://127.0.0.1:{port}"), state.clone()));
                accept_loop(listener, state).await;
            },
        );
        let (url, state) = ready.expect("the proxy did not start");
        FaultProxy {
            url,
            state,
            kubeconfig: None,
            _task: task,
        }
    }

    /// A proxy to the control plane's apiserver, with a kubeconfig ([`FaultProxy::kubeconfig`])
    /// that reaches it through the proxy with `token`, in `namespace`.
    pub fn to_apiserver(token: &str, namespace: &str) -> FaultProxy {
        let mut proxy = FaultProxy::start(apiserver_url(), ca_path());
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = proxy.write_kubeconfig(&dir.path().join("kubeconfig"), token, namespace);
        proxy.kubeconfig = Some((dir, path));
        proxy
    }

    /// The kubeconfig of [`FaultProxy::to_apiserver`].
    pub fn kubeconfig(&self) -> &Path {
        &self
            .kubeconfig
            .as_ref()
            .expect("a proxy made by FaultProxy::to_apiserver")
            .1
    }

    /// Adds a rule; rules are tried in the order added and the first that applies wins.
    pub fn on(&self, matcher: Match, which: Which, fault: Fault) {
        self.state.rules.lock().unwrap().push(Rule {
            matcher,
            which,
            fault,
            seen: 0,
        });
    }

    /// Removes every rule: from now on every request passes unchanged.
    pub fn clear(&self) {
        self.state.rules.lock().unwrap().clear();
    }

    /// Every request seen so far, in order of arrival.
    pub fn requests(&self) -> Vec<Seen> {
        self.state.log.lock().unwrap().clone()
    }

    /// The requests seen so far that `matcher` matches.
    pub fn matching(&self, matcher: &Match) -> Vec<Seen> {
        self.requests()
            .into_iter()
            .filter(|s| matcher.matches(&s.method, &s.path, &s.query))
            .collect()
    }

    pub fn count(&self, matcher: &Match) -> usize {
        self.matching(matcher).len()
    }

    /// Waits until `n` requests matching `matcher` have been seen; fails the test after
    /// `timeout`, listing what was seen.
    pub async fn wait_count(&self, matcher: &Match, n: usize, timeout: Duration) {
        let mut rx = self.state.logged.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        while self.count(matcher) < n {
            let changed = tokio::time::timeout_at(deadline, rx.changed()).await;
            assert!(
                matches!(changed, Ok(Ok(()))),
                "the proxy saw {} of {n} requests matching {matcher:?} within {timeout:?}:\n{}",
                self.count(matcher),
                self.describe()
            );
        }
    }

    /// The request log, one line each, for assertion messages.
    pub fn describe(&self) -> String {
        self.requests()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Writes a kubeconfig that reaches the apiserver through this proxy, over plain HTTP on
    /// loopback, authenticating with `token`.
    pub fn write_kubeconfig(&self, path: &Path, token: &str, namespace: &str) -> PathBuf {
        write_token_kubeconfig(path, &self.url, None, token, namespace);
        path.to_path_buf()
    }
}

fn upstream_client(ca_file: &Path) -> Upstream {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file)
        .unwrap_or_else(|e| panic!("reading {}: {e}", ca_file.display()))
    {
        roots
            .add(cert.expect("a PEM certificate"))
            .expect("a CA certificate");
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new()).build(https)
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors, say: wait rather than spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let state = state.clone();
                async move { handle(&state, request).await }
            });
            // An error here is a fault injected on purpose or a client that went away.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Chooses the fault for a request (at most one rule applies) and logs the request.
fn admit(state: &State, method: &Method, path: &str, query: &str) -> Option<Fault> {
    let fault = {
        let mut rules = state.rules.lock().unwrap();
        let mut chosen = None;
        for rule in rules.iter_mut() {
            if !rule.matcher.matches(method, path, query) {
                continue;
            }
            rule.seen += 1;
            if chosen.is_none() && rule.which.applies(rule.seen) {
                chosen = Some(rule.fault.clone());
            }
        }
        chosen
    };
    let seen = Seen {
        method: method.clone(),
        path: path.to_owned(),
        query: query.to_owned(),
        at: state.started.elapsed(),
        fault: fault.as_ref().map(fault_name),
    };
    let count = {
        let mut log = state.log.lock().unwrap();
        log.push(seen);
        log.len()
    };
    state.logged.send_replace(count);
    fault
}

fn fault_name(fault: &Fault) -> String {
    match fault {
        Fault::Status { code, .. } => format!("answered {code}"),
        Fault::Reset => "reset".into(),
        Fault::ResetAfterForward => "forwarded, then reset".into(),
        Fault::CutStream(after) => format!("stream cut after {after:?}"),
        Fault::Delay(by) => format!("delayed {by:?}"),
        Fault::Hold(_) => "held".into(),
        Fault::HoldAnswer(_) => "answer held".into(),
        Fault::Observe(_) => "observed".into(),
    }
}

async fn handle(
    state: &State,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or_default().to_owned();
    // The whole request is read first, so a reset always comes after the request was sent.
    let body = body.collect().await?.to_bytes();
    let fault = admit(state, &parts.method, &path, &query);
    let forward = || {
        forward(
            state,
            &parts.method,
            &parts.uri,
            &parts.headers,
            body.clone(),
        )
    };
    match fault {
        None => Ok(pass_on(forward().await?)),
        Some(Fault::Status { code, retry_after }) => Ok(status_response(code, retry_after)),
        Some(Fault::Reset) => Err("connection reset by the test proxy".into()),
        Some(Fault::ResetAfterForward) => {
            let answer = forward().await?;
            let _ = answer.into_body().collect().await;
            Err("connection reset by the test proxy after forwarding".into())
        }
        Some(Fault::CutStream(after)) => {
            let answer = forward().await?;
            let (parts, body) = answer.into_parts();
            let frames = TryStreamExt::map_err(BodyStream::new(body), boxed)
                .take_until(tokio::time::sleep(after));
            let cut = stream::once(futures::future::ready(Err::<Frame<Bytes>, BoxError>(
                Box::new(ProxyError::from("stream cut by the test proxy")),
            )));
            let body = StreamBody::new(frames.chain(cut));
            Ok(response_from(parts, BodyExt::boxed_unsync(body)))
        }
        Some(Fault::Delay(by)) => {
            tokio::time::sleep(by).await;
            Ok(pass_on(forward().await?))
        }
        Some(Fault::Hold(gate)) => {
            gate.note_arrival();
            match gate.decision().await {
                Decision::Pass => Ok(pass_on(forward().await?)),
                _ => Err("held request dropped by the test proxy".into()),
            }
        }
        Some(Fault::HoldAnswer(gate)) => {
            let answer = forward().await?;
            let (parts, body) = answer.into_parts();
            let body = body.collect().await?.to_bytes();
            gate.note_arrival();
            match gate.decision().await {
                Decision::Pass => Ok(response_from(
                    parts,
                    Full::new(body).map_err(never).boxed_unsync(),
                )),
                _ => Err("held answer dropped by the test proxy".into()),
            }
        }
        Some(Fault::Observe(gate)) => {
            gate.note_arrival();
            Ok(pass_on(forward().await?))
        }
    }
}

fn boxed(error: hyper::Error) -> BoxError {
    Box::new(error)
}

fn never(error: std::convert::Infallible) -> BoxError {
    match error {}
}

const HOP_BY_HOP: [header::HeaderName; 6] = [
    header::CONNECTION,
    header::HOST,
    header::TRANSFER_ENCODING,
    header::CONTENT_LENGTH,
    header::TE,
    header::UPGRADE,
];

async fn forward(
    state: &State,
    method: &Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response<Incoming>, ProxyError> {
    let target = format!(
        "{}{}",
        state.upstream_url,
        uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut request = Request::builder().method(method.clone()).uri(target);
    for (name, value) in headers {
        if !HOP_BY_HOP.contains(name) && name.as_str() != "keep-alive" {
            request = request.header(name, value);
        }
    }
    Ok(state
        .upstream
        .request(request.body(Full::new(body))?)
        .await?)
}

fn pass_on(answer: Response<Incoming>) -> Response<ProxyBody> {
    let (parts, body) = answer.into_parts();
    response_from(parts, body.map_err(boxed).boxed_unsync())
}

fn response_from(mut parts: http::response::Parts, body: ProxyBody) -> Response<ProxyBody> {
    for name in &HOP_BY_HOP {
        parts.headers.remove(name);
    }
    parts.headers.remove("keep-alive");
    Response::from_parts(parts, body)
}

fn status_response(code: u16, retry_after: Option<u32>) -> Response<ProxyBody> {
    let status = StatusCode::from_u16(code).expect("an HTTP status");
    let reason = match code {
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "",
    };
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": format!("injected by the test proxy ({code})"),
        "reason": reason,
        "code": code,
    });
    let mut response = Response::new(
        Full::new(Bytes::from(serde_json::to_vec(&body).unwrap()))
            .map_err(never)
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}
