//! Shows that the test control plane behaves like a real cluster in the ways the tool depends on:
//! version, admission (protection finalizers, default class), the PV controller's binding and
//! release, the protection controllers, preconditions, and ServiceAccount tokens under RBAC.

mod common;

use common::*;
use k8s_openapi::api::{
    authentication::v1::SelfSubjectReview,
    core::v1::{PersistentVolume, PersistentVolumeClaim, Pod},
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, EvictParams, ListParams, Patch, PatchParams, PostParams, Preconditions},
};

const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
const PV_PROTECTION: &str = "kubernetes.io/pv-protection";

#[tokio::test]
async fn version_is_stamped() {
    let client = client().await;
    let info = client.apiserver_version().await.expect("GET /version");
    assert_eq!(info.git_version, "v1.37.2", "{info:?}");
    assert_eq!((info.major.as_str(), info.minor.as_str()), ("1", "37"));
    assert!(
        apiserver_url().starts_with("https://127.0.0.1:"),
        "{}",
        apiserver_url()
    );
}

#[tokio::test]
async fn admission_adds_protection_finalizers() {
    let client = client().await;
    let ns = TestNamespace::new("finalizers").await;
    let class = create_storage_class(&client, &ns, "a", &ClassOpts::default()).await;
    let pv = create_pv(
        &client,
        &ns,
        "pv",
        &PvOpts {
            class: Some(class.name_any()),
            extra_finalizers: vec!["example.com/keep".into()],
            ..PvOpts::default()
        },
    )
    .await;
    assert!(
        pv.finalizers().iter().any(|f| f == PV_PROTECTION),
        "{:?}",
        pv.finalizers()
    );
    assert!(
        pv.finalizers().iter().any(|f| f == "example.com/keep"),
        "{:?}",
        pv.finalizers()
    );

    // No matching volume (different size), so the claim stays Pending; admission acts anyway.
    let claim = create_pvc(
        &client,
        ns.name(),
        "data",
        &PvcOpts {
            request: "5Gi".into(),
            ..PvcOpts::class(&class.name_any())
        },
    )
    .await;
    assert_eq!(claim.finalizers(), [PVC_PROTECTION]);

    // Deleting the unused PV: pv-protection removes its finalizer at once, the extra one keeps
    // the PV until it is removed too.
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    pvs.delete(&pv.name_any(), &DeleteParams::default())
        .await
        .expect("delete PV");
    wait_for(&pvs, &pv.name_any(), "pv-protection to let go", |pv| {
        pv.is_some_and(|pv| {
            pv.metadata.deletion_timestamp.is_some() && pv.finalizers() == ["example.com/keep"]
        })
    })
    .await;
    pvs.patch(
        &pv.name_any(),
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("remove the extra finalizer");
    wait_deleted(&pvs, &pv.name_any()).await;
}

#[tokio::test]
async fn claim_binds_to_static_volume_of_its_class() {
    let client = client().await;
    let ns = TestNamespace::new("binding").await;
    let a = create_storage_class(&client, &ns, "a", &ClassOpts::default()).await;
    let b = create_storage_class(&client, &ns, "b", &ClassOpts::default()).await;
    // Same size and modes, other class: must not be chosen.
    let pv_b = create_pv(
        &client,
        &ns,
        "pv-b",
        &PvOpts {
            class: Some(b.name_any()),
            ..PvOpts::default()
        },
    )
    .await;
    let pv_a = create_pv(
        &client,
        &ns,
        "pv-a",
        &PvOpts {
            class: Some(a.name_any()),
            ..PvOpts::default()
        },
    )
    .await;

    let claim = create_pvc(&client, ns.name(), "data", &PvcOpts::class(&a.name_any())).await;
    let bound = wait_bound(&client, ns.name(), "data").await;
    assert_eq!(
        bound.spec.as_ref().unwrap().volume_name.as_deref(),
        Some(pv_a.name_any().as_str())
    );

    let pv = wait_pv_phase(&client, &pv_a.name_any(), "Bound").await;
    let claim_ref = pv.spec.unwrap().claim_ref.unwrap();
    assert_eq!(claim_ref.uid, claim.uid());
    assert_eq!(claim_ref.namespace.as_deref(), Some(ns.name()));
    let other = get(
        &Api::<PersistentVolume>::all(client.clone()),
        &pv_b.name_any(),
    )
    .await;
    assert_eq!(other.status.unwrap().phase.as_deref(), Some("Available"));
}

#[tokio::test]
async fn claim_without_class_gets_the_default_class() {
    let _default = default_class_lock();
    let client = client().await;
    let ns = TestNamespace::new("default-class").await;
    let default = create_storage_class(
        &client,
        &ns,
        "default",
        &ClassOpts {
            default: true,
            provisioner: "example.com/none".into(),
            ..ClassOpts::default()
        },
    )
    .await;

    let claim = create_pvc(&client, ns.name(), "nil-class", &PvcOpts::default()).await;
    assert_eq!(
        claim.spec.as_ref().unwrap().storage_class_name.as_deref(),
        Some(default.name_any().as_str()),
        "DefaultStorageClass admission"
    );
    // An explicit empty class means "no class" and is left alone.
    let empty = create_pvc(&client, ns.name(), "empty-class", &PvcOpts::class("")).await;
    assert_eq!(empty.spec.unwrap().storage_class_name.as_deref(), Some(""));

    // The class's provisioner is external and absent: the claim waits for it.
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns.name());
    wait_for(
        &claims,
        "nil-class",
        "the storage-provisioner annotation",
        |c| {
            c.is_some_and(|c| {
                c.annotations()
                    .get("volume.kubernetes.io/storage-provisioner")
                    .map(String::as_str)
                    == Some("example.com/none")
            })
        },
    )
    .await;

    Api::<k8s_openapi::api::storage::v1::StorageClass>::all(client.clone())
        .delete(&default.name_any(), &DeleteParams::default())
        .await
        .expect("delete the default class");
}

#[tokio::test]
async fn deleting_a_bound_claim_releases_a_retained_volume() {
    let client = client().await;
    let ns = TestNamespace::new("release").await;
    let class = create_storage_class(
        &client,
        &ns,
        "a",
        &ClassOpts {
            reclaim_policy: "Retain".into(),
            ..ClassOpts::default()
        },
    )
    .await;
    let pv = create_pv(
        &client,
        &ns,
        "pv",
        &PvOpts {
            class: Some(class.name_any()),
            ..PvOpts::default()
        },
    )
    .await;
    create_pvc(
        &client,
        ns.name(),
        "data",
        &PvcOpts::class(&class.name_any()),
    )
    .await;
    let claim = wait_bound(&client, ns.name(), "data").await;

    // A pod on a node uses the claim: deleting the claim leaves it Terminating.
    let node = create_node(&client, &ns, "node").await;
    create_pod(&client, ns.name(), "user", &node.name_any(), &["data"]).await;
    set_pod_phase(&client, ns.name(), "user", "Running").await;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns.name());
    claims
        .delete(
            "data",
            &DeleteParams::default().preconditions(Preconditions {
                uid: claim.uid(),
                resource_version: None,
            }),
        )
        .await
        .expect("delete claim");
    let terminating = get(&claims, "data").await;
    assert!(terminating.metadata.deletion_timestamp.is_some());
    assert_eq!(terminating.finalizers(), [PVC_PROTECTION]);

    // Evict the pod; without a kubelet it would stay Terminating, the stand-in finishes it.
    let stand_in = kubelet_stand_in(ns.name());
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    pods.evict("user", &EvictParams::default())
        .await
        .expect("evict");
    wait_deleted(&pods, "user").await;
    assert_eq!(stand_in.deleted_pods(), ["user"]);

    // pvc-protection lets the claim go; the PV controller marks the volume Released and keeps it.
    wait_deleted(&claims, "data").await;
    let released = wait_pv_phase(&client, &pv.name_any(), "Released").await;
    assert_eq!(
        released
            .spec
            .as_ref()
            .unwrap()
            .claim_ref
            .as_ref()
            .unwrap()
            .uid,
        claim.uid()
    );
    assert!(released.finalizers().iter().any(|f| f == PV_PROTECTION));
}

#[tokio::test]
async fn delete_with_a_wrong_uid_precondition_conflicts() {
    let client = client().await;
    let ns = TestNamespace::new("precondition").await;
    create_pvc(&client, ns.name(), "data", &PvcOpts::class("")).await;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns.name());
    let wrong = DeleteParams::default().preconditions(Preconditions {
        uid: Some("00000000-0000-0000-0000-000000000000".into()),
        resource_version: None,
    });
    let result = claims.delete("data", &wrong).await;
    assert_eq!(api_code(&result), Some(409), "{result:?}");
    assert!(
        get(&claims, "data")
            .await
            .metadata
            .deletion_timestamp
            .is_none()
    );
}

#[tokio::test]
async fn service_account_token_is_authenticated_and_limited_by_rbac() {
    let admin = client().await;
    let ns = TestNamespace::new("rbac").await;
    create_pvc(&admin, ns.name(), "data", &PvcOpts::class("")).await;
    let sa = service_account_with_rules(
        &admin,
        &ns,
        "reader",
        &[rule(&[""], &["persistentvolumeclaims"], &["get", "list"])],
        &[rule(
            &["storage.k8s.io"],
            &["storageclasses"],
            &["get", "list"],
        )],
    )
    .await;
    let client = sa.client().await;

    let review: SelfSubjectReview = Api::all(client.clone())
        .create(&PostParams::default(), &from_json(serde_json::json!({})))
        .await
        .expect("SelfSubjectReview");
    let user = review.status.unwrap().user_info.unwrap();
    assert_eq!(user.username.as_deref(), Some(sa.username.as_str()));

    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns.name());
    assert_eq!(
        claims
            .list(&ListParams::default())
            .await
            .expect("list claims")
            .items
            .len(),
        1
    );
    Api::<k8s_openapi::api::storage::v1::StorageClass>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("list classes (ClusterRole)");

    let delete = claims.delete("data", &DeleteParams::default()).await;
    assert_eq!(api_code(&delete), Some(403), "{delete:?}");
    let pvs = Api::<PersistentVolume>::all(client.clone())
        .list(&ListParams::default())
        .await;
    assert_eq!(api_code(&pvs), Some(403), "{pvs:?}");
    let elsewhere = Api::<PersistentVolumeClaim>::namespaced(client.clone(), "default")
        .list(&ListParams::default())
        .await;
    assert_eq!(api_code(&elsewhere), Some(403), "{elsewhere:?}");

    // A garbage token is rejected outright.
    let bogus = tempfile::tempdir().unwrap();
    let path = bogus.path().join("kubeconfig");
    write_token_kubeconfig(&path, "bogus", "not-a-token", None);
    let result = client_for(&path).await.apiserver_version().await;
    assert_eq!(api_code(&result), Some(401), "{result:?}");
}
