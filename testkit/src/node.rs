//! A Node of this test process whose kubelet endpoint serves container logs, so that logs read
//! through the apiserver (`kubectl logs`, Helm's `helm.sh/hook-output-log-policy`) reach the
//! output of the pods a [`crate::HookRunner`] ran.
//!
//! The apiserver reads a pod's log from the kubelet of the pod's node: at the node's
//! `InternalIP` and `status.daemonEndpoints.kubeletEndpoint.Port`, over TLS, as
//! `GET /containerLogs/<namespace>/<pod>/<container>`. [`log_node`] registers one Node per test
//! process (`<prefix>-<unique suffix>`, left behind when the process ends: nothing schedules to
//! it and no node controller runs) with address 127.0.0.1 and the port of a small HTTPS server
//! on this host. The server presents the control plane's serving certificate, which
//! scripts/control-plane.sh issues for 127.0.0.1 and the apiserver verifies
//! (`--kubelet-certificate-authority`). A runner with [`crate::hook_runner::RunnerOpts::serve_logs`]
//! binds each pod to the node (the `pods/binding` subresource, as a scheduler would) before it
//! runs, and puts the container's output here once it ended.

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{Arc, Mutex},
};

use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    Api,
    api::{PostParams, ResourceExt},
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde_json::json;
use tokio::{net::TcpListener, sync::OnceCell};
use tokio_rustls::TlsAcceptor;

use crate::{
    api::WAIT_TIMEOUT,
    background::{Background, Ready},
    control_plane::{ControlPlane, client},
    namespace::unique_name,
};

/// (namespace, pod, container) → the container's output.
type Logs = Arc<Mutex<HashMap<(String, String, String), Vec<u8>>>>;

/// The Node of this test process and the logs its endpoint serves.
#[derive(Debug)]
pub struct LogNode {
    name: String,
    logs: Logs,
    _server: Background,
}

static NODE: OnceCell<LogNode> = OnceCell::const_new();

/// The Node of this test process, registered and serving on first use.
pub async fn log_node() -> &'static LogNode {
    NODE.get_or_init(LogNode::start).await
}

impl LogNode {
    async fn start() -> LogNode {
        let logs: Logs = Arc::default();
        let served = logs.clone();
        let tls = acceptor();
        let (server, port) = Background::start("log-node", WAIT_TIMEOUT, move |ready| {
            serve(tls, served, ready)
        });
        let port = port.expect("the log node's server listening");
        let name = unique_name("hook-runner-node");
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
            },
        }))
        .expect("a Node");
        let nodes: Api<Node> = Api::all(client().await);
        nodes
            .create(&PostParams::default(), &node)
            .await
            .unwrap_or_else(|e| panic!("creating node {name}: {e}"));
        LogNode {
            name,
            logs,
            _server: server,
        }
    }

    /// The Node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Binds `pod` to this node through the `pods/binding` subresource.
    pub async fn bind(&self, pods: &Api<Pod>, pod: &str) -> Result<(), kube::Error> {
        crate::binder::bind(pods, pod, &self.name).await
    }

    /// Serves `output` as the log of `container` of `pod`.
    pub fn put(&self, pod: &Pod, container: &str, output: &[u8]) {
        let key = (
            pod.namespace().unwrap_or_default(),
            pod.name_any(),
            container.to_string(),
        );
        self.logs.lock().unwrap().insert(key, output.to_vec());
    }
}

/// A TLS acceptor with the control plane's serving certificate and key.
fn acceptor() -> TlsAcceptor {
    let pki = ControlPlane::get().dir.join("pki");
    let (cert, key) = (pki.join("serving.crt"), pki.join("serving.key"));
    let certs = CertificateDer::pem_file_iter(&cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .unwrap_or_else(|e| panic!("{}: {e}", cert.display()));
    let key =
        PrivateKeyDer::from_pem_file(&key).unwrap_or_else(|e| panic!("{}: {e}", key.display()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("the serving certificate and key");
    TlsAcceptor::from(Arc::new(config))
}

async fn serve(tls: TlsAcceptor, logs: Logs, mut ready: Ready<u16>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding the log node's port");
    ready.send(listener.local_addr().expect("local address").port());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (tls, logs) = (tls.clone(), logs.clone());
        tokio::spawn(async move {
            let Ok(stream) = tls.accept(stream).await else {
                return;
            };
            let service = hyper::service::service_fn(move |request| {
                let logs = logs.clone();
                async move { Ok::<_, Infallible>(container_log(&logs, &request)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// `GET /containerLogs/<namespace>/<pod>/<container>`: the whole output (the apiserver's
/// `tailLines`, `follow` and the like are not honoured).
fn container_log(logs: &Logs, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let parts: Vec<&str> = request.uri().path().split('/').skip(1).collect();
    let found = match parts.as_slice() {
        ["containerLogs", ns, pod, container] => logs
            .lock()
            .unwrap()
            .get(&(ns.to_string(), pod.to_string(), container.to_string()))
            .cloned(),
        _ => None,
    };
    let (status, body) = match found {
        Some(output) => (StatusCode::OK, output),
        None => (StatusCode::NOT_FOUND, b"no such container log\n".to_vec()),
    };
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(body)))
        .expect("a response")
}
