//! Names, and a namespace of its own for every test.
//!
//! Tests run in parallel threads, each with its own tokio runtime, against one shared cluster:
//! every test gets its own [`TestNamespace`] and derives the names of cluster-scoped objects from
//! it with [`TestNamespace::scoped`]. Cluster-scoped objects created through the builders carry
//! the label [`OWNER_LABEL`] and are deleted with the namespace.
//!
//! A default StorageClass affects every PVC created without `storageClassName`, even after the
//! fact (the PV controller assigns the default class to such unbound claims). Tests that create a
//! default class or such claims hold [`default_class_lock`] meanwhile.

use std::{
    collections::BTreeMap,
    sync::{
        Condvar, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use k8s_openapi::api::{
    admissionregistration::v1::ValidatingWebhookConfiguration,
    apps::v1::StatefulSet,
    core::v1::{Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
    storage::v1::StorageClass,
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams},
};
use serde_json::json;

use crate::{api::create, api::from_json, api::wait_for, control_plane::client};

/// Label on namespaces and cluster-scoped objects created by the builders: the test namespace
/// they belong to.
pub const OWNER_LABEL: &str = "storageclass-migrate.test/namespace";
/// Set to keep every test namespace (and its cluster-scoped objects) for a look afterwards.
pub const KEEP_NAMESPACES_ENV: &str = "STORAGECLASS_MIGRATE_KEEP_NAMESPACES";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A DNS-label name `<prefix>-<unique suffix>`, unique across test processes and runs.
pub fn unique_name(prefix: &str) -> String {
    let mut p: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    p.truncate(40);
    let p = p.trim_matches('-');
    let p = if p.is_empty() { "t" } else { p };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{p}-{}{}-{}",
        base36(u64::from(std::process::id())),
        base36(u64::from(nanos) % 1296),
        n
    )
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut s = Vec::new();
    loop {
        s.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    s.reverse();
    String::from_utf8(s).unwrap()
}

/// Whether test namespaces are kept ([`KEEP_NAMESPACES_ENV`]).
pub fn keep_namespaces() -> bool {
    std::env::var_os(KEEP_NAMESPACES_ENV).is_some_and(|v| v != "0")
}

/// Runs `work` to completion on a thread and runtime of its own, bounded by `limit`: for
/// clean-up in `Drop`, when the test's runtime may be shutting down or busy.
pub fn on_own_runtime<F, Fut>(limit: Duration, work: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let cleanup = thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let _ = tokio::time::timeout(limit, work()).await;
        });
    });
    let _ = cleanup.join();
}

/// A namespace of its own for one test, with an admin client. Dropping it deletes the namespace
/// and every cluster-scoped object labelled with [`OWNER_LABEL`] = its name (best effort, without
/// waiting for finalizers), unless [`KEEP_NAMESPACES_ENV`] is set.
pub struct TestNamespace {
    name: String,
    client: Client,
}

impl std::fmt::Debug for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNamespace")
            .field("name", &self.name)
            .finish()
    }
}

impl TestNamespace {
    /// Creates `<prefix>-<unique>` and waits until its `default` ServiceAccount exists (the
    /// ServiceAccount admission plugin rejects pods until then).
    pub async fn new(prefix: &str) -> TestNamespace {
        let client = client().await;
        let name = unique_name(prefix);
        let ns: Namespace = from_json(json!({
            "metadata": {"name": name, "labels": {OWNER_LABEL: name}}
        }));
        create(&Api::all(client.clone()), &ns).await;
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
        wait_for(&sas, "default", "the default ServiceAccount", |sa| {
            sa.is_some()
        })
        .await;
        TestNamespace { name, client }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The admin client this namespace was made with (bound to the test's runtime).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// `<namespace>-<suffix>`: a name for a cluster-scoped object that no other test uses.
    pub fn scoped(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.name)
    }

    /// Labels that tie a cluster-scoped object to this namespace for clean-up.
    pub fn owner_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(OWNER_LABEL.to_string(), self.name.clone())])
    }

    /// The claims of the namespace.
    pub fn claims(&self) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Every PersistentVolume (they are cluster-scoped).
    pub fn pvs(&self) -> Api<PersistentVolume> {
        Api::all(self.client.clone())
    }

    /// The pods of the namespace.
    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// The StatefulSets of the namespace.
    pub fn sets(&self) -> Api<StatefulSet> {
        Api::namespaced(self.client().clone(), self.name())
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if keep_namespaces() {
            return;
        }
        let name = self.name.clone();
        on_own_runtime(Duration::from_secs(20), move || async move {
            cleanup_namespace(&name).await;
        });
    }
}

async fn cleanup_namespace(name: &str) {
    let client = client().await;
    let dp = DeleteParams::background();
    let lp = ListParams::default().labels(&format!("{OWNER_LABEL}={name}"));
    let _ = Api::<Namespace>::all(client.clone())
        .delete(name, &dp)
        .await;
    let _ = Api::<PersistentVolume>::all(client.clone())
        .delete_collection(&dp, &lp)
        .await;
    let _ = Api::<StorageClass>::all(client.clone())
        .delete_collection(&dp, &lp)
        .await;
    let _ = Api::<ClusterRoleBinding>::all(client.clone())
        .delete_collection(&dp, &lp)
        .await;
    let _ = Api::<ClusterRole>::all(client.clone())
        .delete_collection(&dp, &lp)
        .await;
    let _ = Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .delete_collection(&dp, &lp)
        .await;
    let _ = Api::<Node>::all(client).delete_collection(&dp, &lp).await;
}

static DEFAULT_CLASS_LOCK: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());

/// Serialises the tests of this process that create a default StorageClass or PVCs without a
/// `storageClassName`. Hold the guard until the default class is deleted again. Taking it blocks
/// the thread, which is fine: every test has a thread and runtime of its own.
pub fn default_class_lock() -> DefaultClassGuard {
    let (held, released) = &DEFAULT_CLASS_LOCK;
    let mut held = held.lock().unwrap_or_else(|p| p.into_inner());
    while *held {
        held = released.wait(held).unwrap_or_else(|p| p.into_inner());
    }
    *held = true;
    DefaultClassGuard(())
}

/// See [`default_class_lock`]; released when dropped (also when the test panics).
#[derive(Debug)]
pub struct DefaultClassGuard(());

impl Drop for DefaultClassGuard {
    fn drop(&mut self) {
        let (held, released) = &DEFAULT_CLASS_LOCK;
        *held.lock().unwrap_or_else(|p| p.into_inner()) = false;
        released.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_are_dns_labels() {
        let a = unique_name("Some_Test::name");
        let b = unique_name("Some_Test::name");
        assert_ne!(a, b);
        assert!(a.starts_with("some-test--name-"), "{a}");
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "{a}"
        );
        assert!(unique_name("--").starts_with("t-"));
    }
}
