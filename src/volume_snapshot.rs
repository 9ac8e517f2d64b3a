//! The two objects of the CSI snapshot API (`snapshot.storage.k8s.io/v1`, the external-snapshotter
//! CRDs) that `--data snapshot` uses, with only the fields it reads or writes. Unknown fields
//! are never sent back: these objects are only created and read, never updated.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope};
use kube::Resource;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "snapshot.storage.k8s.io";
const VERSION: &str = "v1";
const API_VERSION: &str = "snapshot.storage.k8s.io/v1";
/// On a VolumeSnapshotClass: `"true"` makes it its driver's default.
pub const DEFAULT_CLASS_ANNOTATION: &str = "snapshot.storage.kubernetes.io/is-default-class";

/// A snapshot of a claim's volume, or the request for one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshot {
    #[serde(default = "VolumeSnapshot::api_version_owned")]
    pub api_version: String,
    #[serde(default = "VolumeSnapshot::kind_owned")]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: VolumeSnapshotSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<VolumeSnapshotStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotSpec {
    #[serde(default)]
    pub source: VolumeSnapshotSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_class_name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim_name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotStatus {
    #[serde(default)]
    pub ready_to_use: Option<bool>,
    #[serde(default)]
    pub bound_volume_snapshot_content_name: Option<String>,
    #[serde(default)]
    pub restore_size: Option<String>,
    #[serde(default)]
    pub error: Option<SnapshotError>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SnapshotError {
    #[serde(default)]
    pub message: Option<String>,
}

impl VolumeSnapshot {
    pub fn new(metadata: ObjectMeta, spec: VolumeSnapshotSpec) -> Self {
        Self {
            api_version: API_VERSION.to_owned(),
            kind: Self::kind_owned(),
            metadata,
            spec,
            status: None,
        }
    }

    fn api_version_owned() -> String {
        API_VERSION.to_owned()
    }

    fn kind_owned() -> String {
        "VolumeSnapshot".to_owned()
    }

    /// Whether the snapshot can be restored from.
    pub fn ready(&self) -> bool {
        self.status.as_ref().and_then(|s| s.ready_to_use) == Some(true)
    }

    /// The error the snapshot controller or the driver reported, if any.
    pub fn error(&self) -> Option<&str> {
        self.status.as_ref()?.error.as_ref()?.message.as_deref()
    }
}

/// How a driver's snapshots are taken.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotClass {
    #[serde(default = "VolumeSnapshotClass::api_version_owned")]
    pub api_version: String,
    #[serde(default = "VolumeSnapshotClass::kind_owned")]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub driver: String,
    #[serde(default)]
    pub deletion_policy: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<BTreeMap<String, String>>,
}

impl VolumeSnapshotClass {
    fn api_version_owned() -> String {
        API_VERSION.to_owned()
    }

    fn kind_owned() -> String {
        "VolumeSnapshotClass".to_owned()
    }

    /// Whether it is its driver's default.
    pub fn is_default(&self) -> bool {
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
            .map(String::as_str)
            == Some("true")
    }
}

impl Resource for VolumeSnapshot {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "VolumeSnapshot".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        VERSION.into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "volumesnapshots".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl Resource for VolumeSnapshotClass {
    type DynamicType = ();
    type Scope = ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "VolumeSnapshotClass".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        VERSION.into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "volumesnapshotclasses".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_reads_as_the_api_writes_it() {
        let snapshot: VolumeSnapshot = serde_json::from_value(serde_json::json!({
            "apiVersion": "snapshot.storage.k8s.io/v1",
            "kind": "VolumeSnapshot",
            "metadata": {"name": "s", "namespace": "apps"},
            "spec": {"source": {"persistentVolumeClaimName": "c"}, "volumeSnapshotClassName": "k"},
            "status": {"readyToUse": false, "error": {"message": "driver busy", "time": "2026-01-01T00:00:00Z"}},
        }))
        .unwrap();
        assert!(!snapshot.ready());
        assert_eq!(snapshot.error(), Some("driver busy"));
        assert_eq!(
            VolumeSnapshot::url_path(&(), Some("apps")),
            "/apis/snapshot.storage.k8s.io/v1/namespaces/apps/volumesnapshots"
        );
        let written = serde_json::to_value(VolumeSnapshot::new(
            ObjectMeta::default(),
            VolumeSnapshotSpec::default(),
        ))
        .unwrap();
        assert_eq!(written["apiVersion"], API_VERSION);
        assert_eq!(written["kind"], "VolumeSnapshot");
        assert!(written.get("status").is_none());
        let class: VolumeSnapshotClass = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "k", "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}},
            "driver": "d", "deletionPolicy": "Delete",
        }))
        .unwrap();
        assert!(class.is_default());
        assert_eq!(class.api_version, "snapshot.storage.k8s.io/v1");
    }
}
