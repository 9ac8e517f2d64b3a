//! Generic object helpers: create, read, wait, remove a finalizer, and check that nothing changed
//! an object. Each fails the test with the object's kind and name on an error.

use std::{
    fmt::Debug,
    time::{Duration, Instant},
};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::serde::{Serialize, de::DeserializeOwned};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams, PostParams, WatchEvent, WatchParams},
    runtime::wait::await_condition,
};
use serde_json::{Value, json};

/// How long the `wait_*` helpers wait before failing the test.
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(60);

/// Deserialises a Kubernetes object from JSON (with `apiVersion`/`kind` optional).
pub fn from_json<K: DeserializeOwned>(value: Value) -> K {
    serde_json::from_value(value).unwrap_or_else(|e| panic!("invalid object: {e}"))
}

/// Creates an object, failing the test on error.
pub async fn create<K>(api: &Api<K>, obj: &K) -> K
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
{
    api.create(&PostParams::default(), obj)
        .await
        .unwrap_or_else(|e| panic!("creating {} {:?}: {e}", K::kind(&()), obj.meta().name))
}

/// Gets an object, failing the test on error.
pub async fn get<K>(api: &Api<K>, name: &str) -> K
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned,
{
    api.get(name)
        .await
        .unwrap_or_else(|e| panic!("getting {} {name}: {e}", K::kind(&())))
}

/// Reads an object again, or `None` if it is gone.
pub async fn read<K>(api: &Api<K>, name: &str) -> Option<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned,
{
    api.get_opt(name)
        .await
        .unwrap_or_else(|e| panic!("reading {} {name}: {e}", K::kind(&())))
}

/// Watches one object until `cond` holds for it (`None` = it does not exist) and returns it.
/// Fails the test after [`WAIT_TIMEOUT`], showing the object's last state.
pub async fn wait_for<K>(
    api: &Api<K>,
    name: &str,
    what: &str,
    cond: impl Fn(Option<&K>) -> bool,
) -> Option<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Send + DeserializeOwned + 'static,
{
    wait_for_within(api, name, what, WAIT_TIMEOUT, cond).await
}

/// [`wait_for`] with a limit of its own, for what takes several steps of a controller (a Flux
/// release with its retries).
pub async fn wait_for_within<K>(
    api: &Api<K>,
    name: &str,
    what: &str,
    limit: Duration,
    cond: impl Fn(Option<&K>) -> bool,
) -> Option<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Send + DeserializeOwned + 'static,
{
    let condition = move |obj: Option<&K>| cond(obj);
    match tokio::time::timeout(limit, await_condition(api.clone(), name, condition)).await {
        Ok(Ok(obj)) => obj,
        Ok(Err(e)) => panic!("watching {} {name} for {what}: {e}", K::kind(&())),
        Err(_) => {
            let last = api.get_opt(name).await;
            panic!(
                "timed out after {limit:?} waiting for {what} on {} {name}; last state: \
                 {last:#?}",
                K::kind(&())
            )
        }
    }
}

/// Waits until the object is gone (finalizers done).
pub async fn wait_deleted<K>(api: &Api<K>, name: &str)
where
    K: Resource<DynamicType = ()> + Clone + Debug + Send + DeserializeOwned + 'static,
{
    wait_for(api, name, "deletion", |o| o.is_none()).await;
}

/// Polls `probe` (every 100 ms) until it returns something; fails the test with `what` after
/// [`WAIT_TIMEOUT`]. For conditions there is nothing to watch for (events, reviews).
pub async fn poll<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT_TIMEOUT;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The HTTP status code of an API error (`None` for other errors and successes).
pub fn api_code<T: Debug>(result: &Result<T, kube::Error>) -> Option<u16> {
    match result {
        Err(kube::Error::Api(status)) => Some(status.code),
        _ => None,
    }
}

/// Asserts that a request was refused with 403.
pub fn expect_forbidden<T: Debug>(what: &str, result: Result<T, kube::Error>) {
    assert_eq!(api_code(&result), Some(403), "{what}: {result:?}");
}

/// Removes one finalizer with a merge patch that carries the resourceVersion read, so that a
/// concurrent change (controllers edit finalizers too) is not overwritten: a 409 is read again.
/// Nothing to do if the object does not carry it.
pub async fn remove_finalizer<K>(api: &Api<K>, name: &str, finalizer: &str)
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned,
{
    for _ in 0..10 {
        let object = get(api, name).await;
        if !object.finalizers().iter().any(|f| f == finalizer) {
            return;
        }
        let keep: Vec<&String> = object
            .finalizers()
            .iter()
            .filter(|f| *f != finalizer)
            .collect();
        let patch = json!({"metadata": {
            "finalizers": keep, "resourceVersion": object.resource_version()
        }});
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return,
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(e) => panic!("removing {finalizer} from {name}: {e}"),
        }
    }
    panic!("removing {finalizer} from {name}: kept conflicting");
}

/// Asserts that nothing changed an object: same uid, not being deleted, same finalizers, and the
/// same metadata, spec and status apart from the resourceVersion and the status conditions that
/// controllers keep current (such as a claim's `Unused` condition).
pub async fn assert_unchanged<K>(api: &Api<K>, before: &K)
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
{
    let name = before.name_any();
    let kind = K::kind(&());
    let now = read(api, &name)
        .await
        .unwrap_or_else(|| panic!("{kind} {name} is gone"));
    assert_eq!(now.uid(), before.uid(), "{kind} {name} was replaced");
    assert!(
        now.meta().deletion_timestamp.is_none(),
        "{kind} {name} is being deleted: {now:#?}"
    );
    assert_eq!(now.finalizers(), before.finalizers(), "{kind} {name}");
    assert_eq!(
        comparable(&now),
        comparable(before),
        "{kind} {name} was changed"
    );
}

fn comparable<K: Serialize>(object: &K) -> Value {
    let mut value = serde_json::to_value(object).expect("serialising");
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
        meta.remove("managedFields");
    }
    if let Some(status) = value.get_mut("status").and_then(Value::as_object_mut) {
        status.remove("conditions");
    }
    value
}

/// Every version the object has had since `since` (replayed by a watch from its resourceVersion).
pub async fn versions_since<K>(api: &Api<K>, since: &K) -> Vec<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + 'static,
{
    let params = WatchParams::default()
        .fields(&format!("metadata.name={}", since.name_any()))
        .timeout(1);
    let rv = since.resource_version().expect("resourceVersion");
    let mut events = api.watch(&params, &rv).await.expect("watching").boxed();
    let mut versions = Vec::new();
    while let Some(event) = events.try_next().await.expect("watch event") {
        match event {
            WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) => {
                versions.push(o)
            }
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("watch error: {e:?}"),
        }
    }
    versions
}

/// A claim's `spec.volumeName`.
pub fn volume_name(claim: &PersistentVolumeClaim) -> Option<&str> {
    claim.spec.as_ref()?.volume_name.as_deref()
}

/// A claim's `spec.storageClassName`.
pub fn claim_class(claim: &PersistentVolumeClaim) -> Option<&str> {
    claim.spec.as_ref()?.storage_class_name.as_deref()
}

/// Asserts that `new` is `old` made again on `class` by a run that kept the data: another uid,
/// `storageclass-migrate/migrated-from` naming the old one, and the old claim's labels and Helm
/// annotations (so that the upgrade adopts it).
pub fn assert_made_again(new: &PersistentVolumeClaim, old: &PersistentVolumeClaim, class: &str) {
    use kube::ResourceExt;
    assert_ne!(new.uid(), old.uid(), "the claim was not made again");
    assert_eq!(claim_class(new), Some(class));
    assert_eq!(
        new.annotations().get("storageclass-migrate/migrated-from"),
        old.uid().as_ref(),
        "{:?}",
        new.annotations()
    );
    for key in [
        "meta.helm.sh/release-name",
        "meta.helm.sh/release-namespace",
    ] {
        assert_eq!(
            new.annotations().get(key),
            old.annotations().get(key),
            "{key}"
        );
    }
    assert_eq!(new.labels(), old.labels());
}

/// A claim's `status.phase`.
pub fn claim_phase(claim: &PersistentVolumeClaim) -> Option<&str> {
    claim.status.as_ref()?.phase.as_deref()
}

/// A volume's `status.phase`.
pub fn pv_phase(pv: &PersistentVolume) -> Option<&str> {
    pv.status.as_ref()?.phase.as_deref()
}

/// The uid in a volume's `spec.claimRef`.
pub fn claim_ref_uid(pv: &PersistentVolume) -> Option<&str> {
    pv.spec.as_ref()?.claim_ref.as_ref()?.uid.as_deref()
}

/// Waits until the PV's phase is `phase`.
pub async fn wait_pv_phase(client: &Client, name: &str, phase: &str) -> PersistentVolume {
    let api: Api<PersistentVolume> = Api::all(client.clone());
    wait_for(&api, name, &format!("phase {phase}"), |pv| {
        pv.and_then(pv_phase) == Some(phase)
    })
    .await
    .expect("PV exists")
}

/// Watches the claim until it is `Bound` and returns it.
pub async fn wait_bound(client: &Client, ns: &str, claim: &str) -> PersistentVolumeClaim {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    wait_for(&api, claim, "phase Bound", |pvc| {
        pvc.and_then(claim_phase) == Some("Bound")
    })
    .await
    .expect("claim exists")
}
