//! The CSI stack of the local control plane (`scripts/control-plane.sh start DIR --csi`): two
//! instances of the test driver (`tools/csi/driver`), [`DRIVER_A`] and [`DRIVER_B`], each with
//! its external-provisioner and csi-snapshotter. Each driver keeps its volumes as directories on
//! this host:
//!
//! ```text
//! DIR/csi/<driver>/volumes/<volume handle>      the volume's data (pvc-<claim uid>)
//! DIR/csi/<driver>/origins/<volume handle>.json the claim it was made for; kept after deletion
//! DIR/csi/<driver>/holds/<volume handle>        while present, DeleteVolume fails
//! DIR/csi/<driver>/snapshots/<snapshot id>.tar  a snapshot: the volume's tree, owners, modes, times
//! DIR/csi/<driver>/snapshot-sources/<snapshot id> the volume it was taken of; kept after deletion
//! ```
//!
//! so a test sees what the provisioner really deleted, and [`assert_no_leak`] checks that every
//! volume a test's claims ever had is either still named by a PersistentVolume or gone from disk:
//!
//! ```ignore
//! let c = Cluster::with_classes("csi", Class::new("a").csi(DRIVER_A), Class::new("b").csi(DRIVER_B)).await;
//! Claim::new("data").class(&c.a).create_bound(&c).await;
//! let dir = claim_dir(&c, "data").await;                 // DIR/csi/<driver a>/volumes/pvc-...
//! // ... run the binary ...
//! assert_no_leak(&c).await;
//! ```
//!
//! Tests that use it live in `tests/csi.rs`; they fail with a clear message on a control plane
//! started without `--csi`.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::PersistentVolume;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::{Api, ResourceExt};
use serde::Deserialize;

use crate::{TestNamespace, control_plane::ControlPlane};

/// The first driver; the control plane also has a StorageClass `csi-a` for it.
pub const DRIVER_A: &str = "a.csi.storageclass-migrate.test";
/// The second driver (for moves between drivers); StorageClass `csi-b`.
pub const DRIVER_B: &str = "b.csi.storageclass-migrate.test";
/// Both drivers.
pub const DRIVERS: [&str; 2] = [DRIVER_A, DRIVER_B];

/// `DIR/csi`; panics if the control plane runs without its CSI stack.
pub fn csi_root() -> &'static Path {
    ControlPlane::get().csi_root.as_deref().unwrap_or_else(|| {
        panic!(
            "the control plane in {} has no CSI stack: start it with \
             `scripts/control-plane.sh start DIR --csi` (scripts/test.sh does)",
            ControlPlane::get().dir.display()
        )
    })
}

/// The directory of volume `handle` of `driver` (which need not exist).
pub fn volume_dir(driver: &str, handle: &str) -> PathBuf {
    csi_root().join(driver).join("volumes").join(handle)
}

/// [`volume_dir`] if the control plane has a CSI stack serving `driver`, else `None`.
pub fn served_volume_dir(driver: &str, handle: &str) -> Option<PathBuf> {
    let root = ControlPlane::get().csi_root.as_deref()?;
    DRIVERS
        .contains(&driver)
        .then(|| root.join(driver).join("volumes").join(handle))
}

/// The volume handles that have a directory under `driver`'s `volumes/` now.
pub fn driver_volumes(driver: &str) -> BTreeSet<String> {
    let dir = csi_root().join(driver).join("volumes");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| {
            e.expect("a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        // The driver fills a new volume in `<handle>.creating` and renames it when done.
        .filter(|name| !name.contains('.'))
        .collect()
}

/// What the driver recorded when it created a volume (`origins/<handle>.json`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Origin {
    pub namespace: String,
    pub claim: String,
    pub pv: String,
    /// The class's parameters, as the driver got them.
    pub parameters: BTreeMap<String, String>,
}

/// Every volume `driver` ever created for claims of namespace `ns`: handle and origin.
pub fn origins_in(driver: &str, ns: &str) -> BTreeMap<String, Origin> {
    let dir = csi_root().join(driver).join("origins");
    let mut out = BTreeMap::new();
    for entry in
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
    {
        let path = entry.expect("a directory entry").path();
        let Some(handle) = path
            .file_name()
            .and_then(|n| n.to_str()?.strip_suffix(".json"))
        else {
            continue;
        };
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let origin: Origin = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
        if origin.namespace == ns {
            out.insert(handle.to_string(), origin);
        }
    }
    out
}

/// One volume of a namespace's claims, as it stands on disk and in the API.
#[derive(Clone, Debug, PartialEq)]
pub struct DriverVolume {
    pub driver: String,
    pub handle: String,
    pub origin: Origin,
    /// Its directory exists.
    pub on_disk: bool,
    /// The PersistentVolume naming it (driver and handle), if any.
    pub pv: Option<String>,
}

impl DriverVolume {
    /// On disk with no PersistentVolume naming it: storage nobody will ever delete.
    pub fn leaked(&self) -> bool {
        self.on_disk && self.pv.is_none()
    }
}

/// Every volume the drivers made for claims of `ns`, with its directory and PV, by handle.
pub async fn volumes_of(ns: &TestNamespace) -> Vec<DriverVolume> {
    let pvs = ns
        .pvs()
        .list(&ListParams::default())
        .await
        .expect("listing PersistentVolumes")
        .items;
    let named = pv_names_by_handle(&pvs);
    let mut out = Vec::new();
    for driver in DRIVERS {
        let on_disk = driver_volumes(driver);
        for (handle, origin) in origins_in(driver, ns.name()) {
            out.push(DriverVolume {
                driver: driver.to_string(),
                on_disk: on_disk.contains(&handle),
                pv: named.get(&(driver.to_string(), handle.clone())).cloned(),
                handle,
                origin,
            });
        }
    }
    out
}

/// (driver, handle) -> PV name, for the CSI volumes among `pvs`.
fn pv_names_by_handle(pvs: &[PersistentVolume]) -> BTreeMap<(String, String), String> {
    pvs.iter()
        .filter_map(|pv| {
            let csi = pv.spec.as_ref()?.csi.as_ref()?;
            let name = pv.metadata.name.clone()?;
            Some(((csi.driver.clone(), csi.volume_handle.clone()), name))
        })
        .collect()
}

/// Makes the driver refuse (`hold`) or accept again DeleteVolume of volume `handle`: while the
/// file `holds/<handle>` exists, DeleteVolume fails with FAILED_PRECONDITION, as for a disk still
/// attached to a node, and external-provisioner retries with back-off.
pub fn hold_deletion(driver: &str, handle: &str, hold: bool) {
    let file = csi_root().join(driver).join("holds").join(handle);
    if hold {
        std::fs::write(&file, "").unwrap_or_else(|e| panic!("writing {}: {e}", file.display()));
    } else {
        std::fs::remove_file(&file).unwrap_or_else(|e| panic!("removing {}: {e}", file.display()));
    }
}

// ------------------------------------------------------------------------------------------
// Snapshots

fn snapshot_resource(kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "snapshot.storage.k8s.io",
        "v1",
        kind,
    ))
}

/// The VolumeSnapshots of the namespace.
pub fn snapshots(ns: &TestNamespace) -> Api<DynamicObject> {
    Api::namespaced_with(
        ns.client().clone(),
        ns.name(),
        &snapshot_resource("VolumeSnapshot"),
    )
}

/// The VolumeSnapshotContents of the cluster.
pub fn snapshot_contents(ns: &TestNamespace) -> Api<DynamicObject> {
    Api::all_with(
        ns.client().clone(),
        &snapshot_resource("VolumeSnapshotContent"),
    )
}

/// A ready VolumeSnapshot's driver and snapshot handle, read from its bound content; panics
/// when it is not ready.
pub async fn snapshot_handle(ns: &TestNamespace, snapshot: &DynamicObject) -> (String, String) {
    assert_eq!(
        snapshot.data["status"]["readyToUse"],
        true,
        "snapshot {} not ready: {:#?}",
        snapshot.name_any(),
        snapshot.data
    );
    let content_name = snapshot.data["status"]["boundVolumeSnapshotContentName"]
        .as_str()
        .expect("a ready snapshot names its content");
    let content = snapshot_contents(ns)
        .get(content_name)
        .await
        .unwrap_or_else(|e| panic!("reading VolumeSnapshotContent {content_name}: {e}"));
    let driver = content.data["spec"]["driver"].as_str().unwrap_or_default();
    let handle = content.data["status"]["snapshotHandle"]
        .as_str()
        .unwrap_or_default();
    (driver.to_string(), handle.to_string())
}

/// The snapshots `driver` ever took of its volume `volume` (`snapshot-sources/<id>`, kept after
/// a snapshot is deleted), each with whether its archive is still there.
pub fn snapshots_of_volume(driver: &str, volume: &str) -> Vec<(String, bool)> {
    let dir = csi_root().join(driver).join("snapshot-sources");
    let mut out = Vec::new();
    for entry in
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
    {
        let path = entry.expect("a directory entry").path();
        let source = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        if source == volume {
            let id = path.file_name().unwrap().to_string_lossy().into_owned();
            let kept = snapshot_archive(driver, &id).exists();
            out.push((id, kept));
        }
    }
    out
}

/// Waits until no snapshot of `driver`'s volume `volume` has its archive any more (the
/// csi-snapshotter's DeleteSnapshot); panics after [`crate::api::WAIT_TIMEOUT`]. Returns the
/// snapshots ever taken of it ([`snapshots_of_volume`]).
pub async fn wait_snapshots_deleted(driver: &str, volume: &str) -> Vec<(String, bool)> {
    let deadline = Instant::now() + crate::api::WAIT_TIMEOUT;
    loop {
        let taken = snapshots_of_volume(driver, volume);
        if taken.iter().all(|(_, kept)| !kept) {
            return taken;
        }
        assert!(
            Instant::now() < deadline,
            "snapshots of {volume} still archived after {:?}: {taken:?}",
            crate::api::WAIT_TIMEOUT
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The archive in which `driver` keeps snapshot `handle` (which need not exist).
pub fn snapshot_archive(driver: &str, handle: &str) -> PathBuf {
    csi_root()
        .join(driver)
        .join("snapshots")
        .join(format!("{handle}.tar"))
}

/// How long a directory may lack its PV: the provisioner creates the PV object just after the
/// driver made the directory, and deletes it just after the driver removed it.
pub const LEAK_GRACE: Duration = Duration::from_secs(20);

/// Asserts that no volume made for the claims of `ns` is leaked ([`DriverVolume::leaked`]),
/// waiting up to [`LEAK_GRACE`] for one that is being created. Returns the volumes.
pub async fn assert_no_leak(ns: &TestNamespace) -> Vec<DriverVolume> {
    let deadline = Instant::now() + LEAK_GRACE;
    loop {
        let volumes = volumes_of(ns).await;
        let leaked: Vec<&DriverVolume> = volumes.iter().filter(|v| v.leaked()).collect();
        if leaked.is_empty() {
            return volumes;
        }
        assert!(
            Instant::now() < deadline,
            "volumes of namespace {} on disk with no PersistentVolume naming them (leaked): \
             {leaked:#?}",
            ns.name()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until the directory of volume `handle` of `driver` is gone (the provisioner's
/// DeleteVolume); panics after [`crate::api::WAIT_TIMEOUT`].
pub async fn wait_deleted(driver: &str, handle: &str) {
    let dir = volume_dir(driver, handle);
    let deadline = Instant::now() + crate::api::WAIT_TIMEOUT;
    while dir.exists() {
        assert!(
            Instant::now() < deadline,
            "{} still exists after {:?}",
            dir.display(),
            crate::api::WAIT_TIMEOUT
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
