//! Holding a request inside the apiserver: a validating webhook whose endpoint never answers.

use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kube::{Api, api::DeleteParams};
use serde_json::json;

use crate::{
    TestNamespace,
    api::{WAIT_TIMEOUT, create, from_json},
    control_plane::client,
    namespace::on_own_runtime,
};

/// A validating webhook (failure policy Ignore) whose endpoint is a listener of this test that
/// accepts connections and never answers: a request it matches is held inside the apiserver
/// until the test drops the connection, then admitted. The accepted connection also tells the
/// test that the request has been sent. Deleted when dropped.
pub struct Hold {
    name: String,
    listener: Option<std::net::TcpListener>,
}

/// CEL for a webhook's match condition: `metadata.<field>` (annotations or finalizers) of
/// `object` (`object` or `oldObject`) holds `item`.
pub fn cel_has(object: &str, field: &str, item: &str) -> String {
    format!("(has({object}.metadata.{field}) && '{item}' in {object}.metadata.{field})")
}

/// CEL: the update adds `item` to `metadata.<field>`.
pub fn cel_adds(field: &str, item: &str) -> String {
    format!(
        "{} && !{}",
        cel_has("object", field, item),
        cel_has("oldObject", field, item)
    )
}

/// CEL: the update removes `item` from `metadata.<field>`.
pub fn cel_removes(field: &str, item: &str) -> String {
    format!(
        "{} && !{}",
        cel_has("oldObject", field, item),
        cel_has("object", field, item)
    )
}

impl Hold {
    /// Holds the UPDATEs of `resource` (core group) in the test's namespace (or, for volumes,
    /// labelled with it) for which the CEL `expression` holds. Returns once the apiserver calls
    /// the webhook for `probe`, a server-side dry-run request that matches.
    pub async fn install<T, F, Fut>(
        ns: &TestNamespace,
        resource: &str,
        expression: &str,
        probe: F,
    ) -> Hold
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a port");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let port = listener.local_addr().expect("local address").port();
        let name = ns.scoped(&format!("hold-{resource}"));
        let selector = if resource == "persistentvolumes" {
            "objectSelector"
        } else {
            "namespaceSelector"
        };
        let config: ValidatingWebhookConfiguration = from_json(json!({
            "metadata": {"name": name, "labels": ns.owner_labels()},
            "webhooks": [{
                "name": "hold.storageclass-migrate.test",
                "clientConfig": {"url": format!("https://127.0.0.1:{port}/")},
                "rules": [{
                    "apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"],
                    "resources": [resource], "scope": "*",
                }],
                selector: {"matchLabels": ns.owner_labels()},
                "matchConditions": [{"name": "held", "expression": expression}],
                "failurePolicy": "Ignore",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 30,
            }],
        }));
        create(&Api::all(ns.client().clone()), &config).await;
        let hold = Hold {
            name,
            listener: Some(listener),
        };
        hold.wait_active(probe).await;
        hold
    }

    /// The apiserver picks up webhook configurations asynchronously: probes until it calls.
    async fn wait_active<T, F, Fut>(&self, probe: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        let deadline = Instant::now() + WAIT_TIMEOUT;
        loop {
            let mut request = std::pin::pin!(probe());
            let called = tokio::select! {
                result = &mut request => {
                    result.expect("probe request");
                    false
                }
                call = self.next_call(deadline) => {
                    drop(call);
                    true
                }
            };
            if called {
                // Retries of the call are dropped too, until the probe is admitted.
                loop {
                    tokio::select! {
                        result = &mut request => {
                            result.expect("probe request");
                            return;
                        }
                        call = self.next_call(deadline) => drop(call),
                    }
                }
            }
            assert!(Instant::now() < deadline, "the webhook is never called");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The next call of the apiserver to the webhook, held open until dropped.
    pub async fn next_call(&self, deadline: Instant) -> std::net::TcpStream {
        let listener = self.listener.as_ref().expect("listening");
        loop {
            match listener.accept() {
                Ok((stream, _)) => return stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "the webhook is never called");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("accepting: {e}"),
            }
        }
    }

    /// Stops listening: later calls are refused at once (and ignored by the failure policy).
    pub fn close(&mut self) {
        self.listener = None;
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.listener = None;
        let name = self.name.clone();
        on_own_runtime(Duration::from_secs(20), move || async move {
            let api: Api<ValidatingWebhookConfiguration> = Api::all(client().await);
            let _ = api.delete(&name, &DeleteParams::default()).await;
        });
    }
}
