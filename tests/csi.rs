//! Migrations of volumes that a CSI driver provisioned, on the control plane's CSI stack
//! (`scripts/control-plane.sh start DIR --csi`: external-provisioner in front of the test driver,
//! which keeps each volume as a directory; see `testkit::csi`). external-provisioner puts its
//! finalizer on every volume and deletes the backing storage (here: the directory) through the
//! driver's DeleteVolume. Every test ends with the leak check: each volume its claims ever had is
//! either gone from disk or still named by a PersistentVolume.

use k8s_openapi::api::core::v1::PersistentVolume;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;
use testkit::csi::{
    DRIVER_A, DRIVER_B, assert_no_leak, hold_deletion, volume_dir, volumes_of, wait_deleted,
};
use testkit::prelude::*;

/// The claim is deleted and waited for; the volume follows by its reclaim policy.
const DELETED: &str =
    "migrated: found class, volume; done claim-deleted, claim-gone, volume-reclaimed";
/// A Retain volume is kept, Released, with the old data.
const KEPT: &str =
    "migrated: found class, volume; done claim-deleted, claim-gone; left volume-kept";
/// `--delete-retained-pv`: the Retain volume is marked, switched to Delete and reclaimed.
const RECLAIMED: &str = "migrated: found class, volume; done volume-marked, claim-deleted, claim-gone, volume-reclaim-delete, volume-reclaimed";

/// Claim `data` on class A, bound to a volume the driver provisioned, with a file in it. Returns
/// the volume and its handle.
async fn bound_with_data(c: &Cluster) -> (PersistentVolume, String) {
    Claim::new("data").class(&c.a).create_bound(c).await;
    let dir = claim_dir(c, "data").await;
    std::fs::write(dir.join("old.txt"), "old data").expect("writing into the volume");
    let claim = read(&c.claims(), "data").await.expect("claim data");
    let pv = get(&c.pvs(), volume_name(&claim).expect("bound")).await;
    let csi = pv
        .spec
        .as_ref()
        .and_then(|s| s.csi.clone())
        .expect("a CSI volume");
    // external-provisioner guards the volumes it must delete (reclaim policy Delete) with its
    // finalizer, so that the PV object outlives the backing storage (KEP-2644).
    let delete = pv
        .spec
        .as_ref()
        .unwrap()
        .persistent_volume_reclaim_policy
        .as_deref()
        == Some("Delete");
    let mut finalizers = pv.finalizers().to_vec();
    finalizers.sort();
    let mut expected = vec![PV_PROTECTION.to_string()];
    if delete {
        expected.insert(0, PROVISIONER_FINALIZER.to_string());
    }
    assert_eq!(finalizers, expected, "finalizers of {}", pv.name_any());
    (pv, csi.volume_handle)
}

/// The run ended with `shape` and reclaimed `pv` (driver A's volume `handle`) through the
/// driver, not just in the API: the provisioner called DeleteVolume, so the directory is gone,
/// and so is the PV.
async fn assert_reclaimed(
    c: &Cluster,
    run: &Run,
    shape: &str,
    pv: &PersistentVolume,
    handle: &str,
) {
    let o = run.expect_shape(0, shape);
    assert_eq!(
        o.done_names("volume-reclaimed"),
        [pv.name_any().as_str()],
        "{run}"
    );
    assert!(!volume_dir(DRIVER_A, handle).exists());
    assert!(read(&c.pvs(), &pv.name_any()).await.is_none());
}

/// What the chart does next: the claim again, now on class B.
async fn recreate_on_b(c: &Cluster) -> std::path::PathBuf {
    Claim::new("data").class(&c.b).create_bound(c).await;
    claim_dir(c, "data").await
}

#[tokio::test]
async fn delete_volume_is_deleted_by_its_driver_and_the_new_claim_gets_the_other_driver() {
    let c = Cluster::with_classes(
        "csi-delete",
        Class::new("a").csi(DRIVER_A),
        Class::new("b").csi(DRIVER_B),
    )
    .await;
    let (pv, handle) = bound_with_data(&c).await;

    let run = c.migrate("data", &[("WAIT_TIMEOUT", "60s")]).await;
    assert_reclaimed(&c, &run, DELETED, &pv, &handle).await;
    let new_dir = recreate_on_b(&c).await;
    assert!(
        new_dir.starts_with(volume_dir(DRIVER_B, "")),
        "{}",
        new_dir.display()
    );
    assert!(!new_dir.join("old.txt").exists(), "a new, empty volume");

    let volumes = assert_no_leak(&c).await;
    assert_eq!(volumes.len(), 2, "{volumes:#?}");
}

/// Whether the run logged (as JSON) that a VolumeAttributesClass could make the change.
fn hinted_attributes_class(run: &Run) -> bool {
    run.stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .any(|l| {
            l["level"] == "INFO"
                && l["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("VolumeAttributesClass"))
        })
}

/// Classes of one driver, one reclaim policy and binding mode, that differ only in a parameter:
/// the run says once that a VolumeAttributesClass could change it in place, and migrates all the
/// same. Across drivers it says nothing.
#[tokio::test]
async fn a_change_of_parameters_alone_hints_at_a_volume_attributes_class() {
    let c = Cluster::with_classes(
        "csi-hint",
        Class::new("a").csi(DRIVER_A).parameter("tier", "standard"),
        Class::new("b").csi(DRIVER_A).parameter("tier", "fast"),
    )
    .await;
    bound_with_data(&c).await;
    let json_logs = ("LOG_FORMAT", "json");
    let run = c
        .migrate("data", &[("WAIT_TIMEOUT", "60s"), json_logs])
        .await;
    run.expect_shape(0, DELETED);
    assert!(hinted_attributes_class(&run), "{}", run.stderr);
    assert_no_leak(&c).await;

    let other = Cluster::with_classes(
        "csi-no-hint",
        Class::new("a").csi(DRIVER_A).parameter("tier", "standard"),
        Class::new("b").csi(DRIVER_B).parameter("tier", "fast"),
    )
    .await;
    bound_with_data(&other).await;
    let run = other
        .migrate("data", &[("WAIT_TIMEOUT", "60s"), json_logs])
        .await;
    run.expect_shape(0, DELETED);
    assert!(!hinted_attributes_class(&run), "{}", run.stderr);
    assert_no_leak(&other).await;
}

#[tokio::test]
async fn retain_volume_is_kept_with_its_data() {
    let c = Cluster::with_classes(
        "csi-retain",
        Class::new("a").csi(DRIVER_A).retain(),
        Class::new("b").csi(DRIVER_A).parameter("tier", "fast"),
    )
    .await;
    let (pv, handle) = bound_with_data(&c).await;

    let run = c.migrate("data", &[("WAIT_TIMEOUT", "60s")]).await;
    let o = run.expect_shape(0, KEPT);
    assert_eq!(
        o.left_names("volume-kept"),
        [pv.name_any().as_str()],
        "{run}"
    );

    let kept = wait_pv_phase(c.client(), &pv.name_any(), "Released").await;
    assert_eq!(kept.uid(), pv.uid());
    let old = volume_dir(DRIVER_A, &handle).join("old.txt");
    assert_eq!(
        std::fs::read_to_string(&old).expect("the old data"),
        "old data"
    );
    // Same driver, new class: the new volume gets class B's parameters.
    let new_dir = recreate_on_b(&c).await;
    let new_handle = new_dir.file_name().unwrap().to_string_lossy().into_owned();
    let volumes = assert_no_leak(&c).await;
    let new = volumes
        .iter()
        .find(|v| v.handle == new_handle)
        .expect("the new volume");
    assert_eq!(
        new.origin.parameters.get("tier").map(String::as_str),
        Some("fast")
    );

    // Clean up as an administrator would: Delete policy, so the driver reclaims it too.
    c.pvs()
        .patch(
            &pv.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"persistentVolumeReclaimPolicy": "Delete"}})),
        )
        .await
        .expect("switching the kept volume to Delete");
    wait_deleted(DRIVER_A, &handle).await;
    assert_no_leak(&c).await;
}

#[tokio::test]
async fn delete_retained_pv_reclaims_the_directory() {
    let c = Cluster::with_classes(
        "csi-reclaim",
        Class::new("a").csi(DRIVER_A).retain(),
        Class::new("b").csi(DRIVER_B),
    )
    .await;
    let (pv, handle) = bound_with_data(&c).await;

    let run = c
        .migrate(
            "data",
            &[("WAIT_TIMEOUT", "60s"), ("DELETE_RETAINED_PV", "true")],
        )
        .await;
    assert_reclaimed(&c, &run, RECLAIMED, &pv, &handle).await;
    recreate_on_b(&c).await;
    assert_no_leak(&c).await;
}

/// The kubectl script's commands (`kubectl-hook.sh`: strip the claim's finalizers, delete it,
/// strip the volume's finalizers, delete it) on a CSI volume of a Delete class: the PV object is
/// gone at once, before the provisioner could call DeleteVolume, and the directory stays with no
/// PersistentVolume naming it (KEP-2644's leak). What the hook never does. The driver holds the
/// volume (`hold_deletion`: DeleteVolume fails, as for a disk still attached to a node that is
/// going away), so the script's commands run while the provisioner is still retrying, as they do
/// against a real storage backend; without the hold the local driver deletes within milliseconds.
#[tokio::test]
async fn script_finalizer_strip_leaks_the_directory() {
    let c = Cluster::with_classes(
        "csi-script",
        Class::new("a").csi(DRIVER_A),
        Class::new("b").csi(DRIVER_B),
    )
    .await;
    let (pv, handle) = bound_with_data(&c).await;
    hold_deletion(DRIVER_A, &handle, true);
    let strip = Patch::Merge(json!({"metadata": {"finalizers": []}}));
    c.claims()
        .patch("data", &PatchParams::default(), &strip)
        .await
        .expect("kubectl patch pvc ... finalizers: []");
    c.claims()
        .delete("data", &DeleteParams::default())
        .await
        .expect("kubectl delete pvc");
    testkit::wait_deleted(&c.claims(), "data").await;
    // Deleted first, then stripped (as `--strip-all-finalizers` does): stripped first, the
    // provisioner would put its finalizer back on the PV before the delete.
    let _ = c
        .pvs()
        .delete(&pv.name_any(), &DeleteParams::default())
        .await;
    c.pvs()
        .patch(&pv.name_any(), &PatchParams::default(), &strip)
        .await
        .expect("kubectl patch pv ... finalizers: []");
    testkit::wait_deleted(&c.pvs(), &pv.name_any()).await;

    // The backend lets go; the provisioner would now succeed, but it has no PV left to act on.
    hold_deletion(DRIVER_A, &handle, false);
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let dir = volume_dir(DRIVER_A, &handle);
    assert_eq!(
        std::fs::read_to_string(dir.join("old.txt")).expect("the leaked data"),
        "old data"
    );
    let volumes = volumes_of(&c).await;
    let leaked: Vec<&str> = volumes
        .iter()
        .filter(|v| v.leaked())
        .map(|v| v.handle.as_str())
        .collect();
    assert_eq!(leaked, [handle.as_str()], "{volumes:#?}");

    // Not left for other tests' checks (they only look at their own namespaces anyway).
    std::fs::remove_dir_all(&dir).expect("removing the leaked directory");
    assert_no_leak(&c).await;
}
