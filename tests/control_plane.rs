//! Shows that the test control plane behaves like a real cluster in the ways the tool depends on:
//! version, admission (protection finalizers, default class), the PV controller's binding and
//! release, the protection controllers, preconditions, ServiceAccount tokens under RBAC, and
//! dynamic provisioning of real directories whose claims a Job's pod mounts.

use std::{
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt, lchown, symlink},
    path::Path,
};

use k8s_openapi::api::{authentication::v1::SelfSubjectReview, storage::v1::StorageClass};
use kube::api::{
    DeleteParams, EvictParams, ListParams, Patch, PatchParams, PostParams, Preconditions,
};
use testkit::hook_runner::{HookRunner, How, RunnerOpts};
use testkit::prelude::*;
use testkit::release::image;

#[tokio::test]
async fn version_is_stamped() {
    let client = client().await;
    let info = client.apiserver_version().await.expect("GET /version");
    // The version pinned in tools/k8s, or in tools/k8s-1.33 with KUBERNETES_VERSION=1.33.
    let pinned = pinned_kubernetes_version();
    assert_eq!(info.git_version, pinned, "{info:?}");
    let minor = pinned.split('.').nth(1).expect("vX.Y.Z");
    assert_eq!((info.major.as_str(), info.minor.as_str()), ("1", minor));
    assert!(
        apiserver_url().starts_with("https://127.0.0.1:"),
        "{}",
        apiserver_url()
    );
}

#[tokio::test]
async fn admission_adds_protection_finalizers() {
    let ns = TestNamespace::new("finalizers").await;
    let class = Class::new("a").create(&ns).await.name_any();
    let pv = Volume::host_path("pv")
        .class(&class)
        .finalizer("example.com/keep")
        .create(&ns)
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
    let claim = Claim::new("data")
        .class(&class)
        .request("5Gi")
        .create(&ns)
        .await;
    assert_eq!(claim.finalizers(), [PVC_PROTECTION]);

    // Deleting the unused PV: pv-protection removes its finalizer at once, the extra one keeps
    // the PV until it is removed too.
    let pvs = ns.pvs();
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
    let c = Cluster::new("binding").await;
    // Same size and modes, other class: must not be chosen.
    let pv_b = Volume::host_path("pv-b").class(&c.b).create(&c).await;
    let pv_a = Volume::host_path("pv-a").class(&c.a).create(&c).await;

    let claim = c.claim("data").create(&c).await;
    let bound = wait_bound(c.client(), c.name(), "data").await;
    assert_eq!(volume_name(&bound), Some(pv_a.name_any().as_str()));

    let pv = wait_pv_phase(c.client(), &pv_a.name_any(), "Bound").await;
    let claim_ref = pv.spec.unwrap().claim_ref.unwrap();
    assert_eq!(claim_ref.uid, claim.uid());
    assert_eq!(claim_ref.namespace.as_deref(), Some(c.name()));
    let other = get(&c.pvs(), &pv_b.name_any()).await;
    assert_eq!(pv_phase(&other), Some("Available"));
}

#[tokio::test]
async fn claim_without_class_gets_the_default_class() {
    let _default = default_class_lock();
    let ns = TestNamespace::new("default-class").await;
    let default = Class::new("default")
        .default_class()
        .provisioner("example.com/none")
        .create(&ns)
        .await;

    let claim = Claim::new("nil-class").create(&ns).await;
    assert_eq!(
        claim_class(&claim),
        Some(default.name_any().as_str()),
        "DefaultStorageClass admission"
    );
    // An explicit empty class means "no class" and is left alone.
    let empty = Claim::new("empty-class").class("").create(&ns).await;
    assert_eq!(claim_class(&empty), Some(""));

    // The class's provisioner is external and absent: the claim waits for it.
    wait_for(
        &ns.claims(),
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

    Api::<StorageClass>::all(ns.client().clone())
        .delete(&default.name_any(), &DeleteParams::default())
        .await
        .expect("delete the default class");
}

#[tokio::test]
async fn deleting_a_bound_claim_releases_a_retained_volume() {
    let c = Cluster::with_classes("release", Class::new("a").retain(), Class::new("b")).await;
    let pv = Volume::host_path("pv").class(&c.a).create(&c).await;
    let claim = c.claim("data").create_bound(&c).await;

    // A pod on a node uses the claim: deleting the claim leaves it Terminating.
    c.running_pod("user", "data").await;
    let claims = c.claims();
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
    let stand_in = KubeletStandIn::start(c.name());
    let pods = c.pods();
    pods.evict("user", &EvictParams::default())
        .await
        .expect("evict");
    wait_deleted(&pods, "user").await;
    assert_eq!(stand_in.deleted_pods(), ["user"]);

    // pvc-protection lets the claim go; the PV controller marks the volume Released and keeps it.
    wait_deleted(&claims, "data").await;
    let released = wait_pv_phase(c.client(), &pv.name_any(), "Released").await;
    assert_eq!(claim_ref_uid(&released), claim.uid().as_deref());
    assert!(released.finalizers().iter().any(|f| f == PV_PROTECTION));
}

#[tokio::test]
async fn delete_with_a_wrong_uid_precondition_conflicts() {
    let ns = TestNamespace::new("precondition").await;
    Claim::new("data").class("").create(&ns).await;
    let claims = ns.claims();
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
    let ns = TestNamespace::new("rbac").await;
    Claim::new("data").class("").create(&ns).await;
    let sa = Account::new("reader")
        .role(&[rule(&[""], &["persistentvolumeclaims"], &["get", "list"])])
        .cluster_role(&[rule(
            &["storage.k8s.io"],
            &["storageclasses"],
            &["get", "list"],
        )])
        .create(&ns)
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
    Api::<StorageClass>::all(client.clone())
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
    write_token_kubeconfig(
        &path,
        apiserver_url(),
        Some(ca_path()),
        "not-a-token",
        "default",
    );
    let result = client_for(&path).await.apiserver_version().await;
    assert_eq!(api_code(&result), Some(401), "{result:?}");
}

/// (uid, gid, mode bits) of a path, not following a symlink.
fn owner_and_mode(path: &Path) -> (u32, u32, u32) {
    let m = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

/// The hostPath provisioner makes a real directory per claim, and the hook runner mounts claims
/// into a Job's pod: the copy Job the binary will create, run on real files. If the runner
/// ignored the mounts, `/source` would not exist (in the image, and on the host) and the Job
/// would fail; if it mounted copies, the files would not reach the second claim's directory.
#[tokio::test]
async fn a_job_copies_between_two_claims_of_a_host_path_provisioned_class() {
    testkit::require_root!("it chowns files to other users");
    // Two claims of a class that kube-controller-manager provisions: a directory each.
    let ns = TestNamespace::new("provisioned").await;
    let class = Class::new("hp")
        .host_path_provisioner()
        .create(&ns)
        .await
        .name_any();
    Claim::new("source").class(&class).create(&ns).await;
    Claim::new("target").class(&class).create(&ns).await;
    let source = claim_dir(&ns, "source").await;
    let target = claim_dir(&ns, "target").await;
    assert_ne!(source, target);
    for claim in ["source", "target"] {
        let bound = get(&ns.claims(), claim).await;
        let pv = get(&ns.pvs(), volume_name(&bound).unwrap()).await;
        assert_eq!(
            pv.annotations().get(PROVISIONED_BY).map(String::as_str),
            Some(HOST_PATH_PROVISIONER)
        );
        assert_eq!(
            pv.spec
                .as_ref()
                .unwrap()
                .persistent_volume_reclaim_policy
                .as_deref(),
            Some("Delete")
        );
        let dir = volume_dir(&pv).unwrap();
        assert!(
            dir.starts_with(HOST_PATH_PROVISIONER_ROOT),
            "{}",
            dir.display()
        );
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0, "{}", dir.display());
    }

    // Files of other owners, a 0640 file, a symlink, in the first claim's directory.
    let data = source.join("data");
    fs::create_dir(&data).unwrap();
    fs::write(data.join("file.txt"), "kept\n").unwrap();
    fs::set_permissions(data.join("file.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::set_permissions(&data, fs::Permissions::from_mode(0o750)).unwrap();
    symlink("data/file.txt", source.join("link")).unwrap();
    lchown(data.join("file.txt"), Some(1234), Some(5678)).unwrap();
    lchown(&data, Some(1000), Some(2000)).unwrap();
    lchown(source.join("link"), Some(4321), Some(8765)).unwrap();

    // The copy Job as the binary will make it: both claims mounted, the source read-only, root
    // with only the capabilities a copy that keeps owners needs (in the image, the 0640 file of
    // another user is readable through the added DAC_OVERRIDE alone).
    let runner = HookRunner::start(ns.name(), RunnerOpts::default());
    ClaimJob::new("copy", &image())
        .command(&[
            "/storageclass-migrate",
            "copy",
            "--from",
            "/source",
            "--to",
            "/target",
        ])
        .mount_read_only("source", "/source")
        .mount("target", "/target")
        .run_as(0, 0)
        .capabilities(&["ALL"], &["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID"])
        .create(&ns)
        .await;
    let job = wait_job_finished(&ns, "copy").await;
    assert_eq!(job_finished(&job), Some("Complete"), "{}", runner.report());
    let runs = runner.runs();
    assert_eq!(runs.len(), 1, "{}", runner.report());
    let mounted = |path: &str, dir: &Path, ro: &str| {
        let note = format!("{} of this host, mounted at {path}{ro}", dir.display());
        assert!(
            runs[0].notes.iter().any(|n| n.ends_with(&note)),
            "no note ending {note:?}\n{}",
            runner.report()
        );
    };
    mounted("/source", &source, " read-only");
    mounted("/target", &target, "");
    let rewritten = runs[0]
        .notes
        .iter()
        .any(|n| n.contains("arguments naming a mount path were rewritten"));
    match &runs[0].how {
        How::Image { .. } => assert!(!rewritten, "{}", runner.report()),
        How::HostBinary { .. } => assert!(rewritten, "{}", runner.report()),
        other => panic!("ran as {other:?}\n{}", runner.report()),
    }

    // The second claim's directory has them, with owners, modes and the link.
    let report = runner.report();
    let copied = target.join("data/file.txt");
    assert_eq!(
        fs::read_to_string(&copied).unwrap_or_else(|e| panic!("{e}\n{report}")),
        "kept\n"
    );
    assert_eq!(owner_and_mode(&copied), (1234, 5678, 0o640), "{report}");
    assert_eq!(owner_and_mode(&target.join("data")), (1000, 2000, 0o750));
    let link = target.join("link");
    assert_eq!(fs::read_link(&link).unwrap(), Path::new("data/file.txt"));
    let (uid, gid, _) = owner_and_mode(&link);
    assert_eq!((uid, gid), (4321, 8765), "the link's own owner");
    // Untouched source.
    assert_eq!(owner_and_mode(&data.join("file.txt")), (1234, 5678, 0o640));
}
