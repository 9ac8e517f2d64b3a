//! What a data-keeping migration will do, decided without I/O: whether the claim can be kept and
//! how (a copy or a snapshot), the record written on the old volume before anything changes, and
//! every object the run creates (the temporary claims, the copy Job, the snapshot, the claim
//! recreated on the new class).

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, LocalObjectReference, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec,
    PodTemplateSpec, SeccompProfile, SecurityContext, TypedLocalObjectReference, Volume,
    VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use crate::class::Target;
use crate::config::{CopySettings, DataPolicy};
use crate::decision::{Refusal, claim_class};
use crate::volume_snapshot::{self, VolumeSnapshot, VolumeSnapshotClass, VolumeSnapshotSpec};

/// On the old volume: the [`Record`] of the migration, as JSON.
pub const RECORD: &str = "storageclass-migrate/copy";
/// On the old volume once the migration is over: the volume the data was copied to.
pub const COPIED_TO: &str = "storageclass-migrate/copied-to";
/// On the new volume while the run holds it: `namespace/claim/uid` of the old claim.
pub const COPY_TARGET: &str = "storageclass-migrate/copy-target";
/// On a volume whose reclaim policy the run switched to Retain: the policy to give back.
pub const RECLAIM_POLICY: &str = "storageclass-migrate/reclaim-policy";
/// On the claim recreated on the new class: the uid of the claim it replaces.
pub const MIGRATED_FROM: &str = "storageclass-migrate/migrated-from";
/// On the temporary claims, the copy Job (and its pods) and the snapshot: the uid of the claim
/// they serve.
pub const CLAIM_UID_LABEL: &str = "storageclass-migrate/claim-uid";
/// On the snapshot: the claim's name (when it fits a label value) and its Helm release.
pub const CLAIM_LABEL: &str = "storageclass-migrate/claim";
pub const RELEASE_LABEL: &str = "storageclass-migrate/release";
/// The annotation by which Helm names a claim's release.
const HELM_RELEASE: &str = "meta.helm.sh/release-name";
/// Where the copy pod mounts the old volume (read-only) and the new one.
pub const SOURCE_PATH: &str = "/source";
pub const TARGET_PATH: &str = "/target";
/// The binary in the image.
pub const ENTRYPOINT: &str = "/storageclass-migrate";
/// Capabilities of a copy that runs as root: set owners, read and write whatever the mode,
/// set times and modes of files it does not own, and keep setuid/setgid bits.
pub const COPY_CAPABILITIES: [&str; 4] = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID"];

/// Annotations that belong to a claim's binding, not to what the chart asked for: the new claim
/// gets its own.
const BINDING_ANNOTATIONS: [&str; 6] = [
    "pv.kubernetes.io/bind-completed",
    "pv.kubernetes.io/bound-by-controller",
    "volume.kubernetes.io/storage-provisioner",
    "volume.beta.kubernetes.io/storage-provisioner",
    "volume.kubernetes.io/selected-node",
    crate::decision::BETA_CLASS_ANNOTATION,
];

/// How the data gets to the new class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Strategy {
    /// A Job copies it, file by file, to a volume of the new class.
    #[default]
    Copy,
    /// The old volume's driver snapshots it and restores the snapshot into the new class.
    Snapshot,
}

/// Everything a migration that keeps the data needs to go on after an interruption. Written on
/// the old volume before the claim is deleted: once the claim is gone, this is what is left of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub namespace: String,
    pub claim: String,
    /// The uid of the claim being replaced.
    pub uid: String,
    pub from: String,
    pub to: String,
    pub volume: String,
    pub volume_uid: String,
    /// The old volume's reclaim policy before the run switched it to Retain.
    pub reclaim_policy: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// `resources.requests`, each quantity as written.
    pub requests: BTreeMap<String, String>,
    pub access_modes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mode: Option<String>,
    #[serde(default)]
    pub strategy: Strategy,
    /// With a snapshot: its VolumeSnapshotClass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_class: Option<String>,
    /// Whether the new class binds a claim at once (`Immediate`), so the run can wait for it;
    /// `WaitForFirstConsumer` binds it only once a pod uses it.
    #[serde(default = "bound_at_once")]
    pub binds_at_once: bool,
}

fn bound_at_once() -> bool {
    true
}

/// Whether the claim's data can be copied to the target class; its [`Record`] if so.
pub fn record(
    claim: &PersistentVolumeClaim,
    volume: &PersistentVolume,
    target: &Target,
    class: Option<&StorageClass>,
) -> Result<Record, Refusal> {
    let refuse = |reason: String| Err(Refusal::CannotKeep { reason });
    let Target::Class(to) = target else {
        return refuse(
            "a copy needs a new volume, and a claim without a class (\"-\") is never provisioned one"
                .into(),
        );
    };
    let Some(class) = class else {
        return Err(Refusal::TargetMissing { class: to.clone() });
    };
    if class.provisioner == "kubernetes.io/no-provisioner" {
        return refuse(format!(
            "StorageClass {to:?} has no provisioner (kubernetes.io/no-provisioner): no volume can be provisioned for the copy"
        ));
    }
    let spec = claim.spec.clone().unwrap_or_default();
    if spec.volume_mode.as_deref() == Some("Block") {
        return refuse(
            "the claim is a raw block device (volumeMode: Block); only filesystems are copied"
                .into(),
        );
    }
    let requests = spec
        .resources
        .and_then(|r| r.requests)
        .filter(|r| r.contains_key("storage"));
    let Some(requests) = requests else {
        return refuse("the claim requests no storage size".into());
    };
    let mut annotations = claim.annotations().clone();
    annotations.retain(|key, _| !BINDING_ANNOTATIONS.contains(&key.as_str()));
    Ok(Record {
        namespace: claim.namespace().unwrap_or_default(),
        claim: claim.name_any(),
        uid: claim.uid().unwrap_or_default(),
        from: claim_class(claim).unwrap_or_default().to_owned(),
        to: to.clone(),
        volume: volume.name_any(),
        volume_uid: volume.uid().unwrap_or_default(),
        reclaim_policy: reclaim_policy(volume),
        labels: claim.labels().clone(),
        annotations,
        requests: requests.into_iter().map(|(k, v)| (k, v.0)).collect(),
        access_modes: spec.access_modes.unwrap_or_default(),
        volume_mode: spec.volume_mode,
        strategy: Strategy::Copy,
        snapshot_class: None,
        binds_at_once: class.volume_binding_mode.as_deref() != Some("WaitForFirstConsumer"),
    })
}

/// How the data of the claim on `volume` gets to the class `to`, by the data policy: copy,
/// snapshot (refused where it cannot work, naming copy), or auto (a snapshot where it can work,
/// else a copy; with why). `classes` is None where the cluster has no snapshot API.
pub fn choose(
    policy: DataPolicy,
    volume: &PersistentVolume,
    to: &StorageClass,
    classes: Option<&[VolumeSnapshotClass]>,
    requested: Option<&str>,
) -> Result<(Strategy, Option<String>, String), Refusal> {
    match policy {
        DataPolicy::Delete | DataPolicy::Copy => {
            Ok((Strategy::Copy, None, "DATA_POLICY=copy".into()))
        }
        DataPolicy::Snapshot => match snapshot_class(volume, to, classes, requested) {
            Ok(class) => Ok((
                Strategy::Snapshot,
                Some(class.clone()),
                format!("snapshot class {class:?}"),
            )),
            Err(reason) => Err(Refusal::CannotKeep {
                reason: format!("{reason}; DATA_POLICY=copy (or auto) copies the files instead"),
            }),
        },
        DataPolicy::Auto => Ok(match snapshot_class(volume, to, classes, requested) {
            Ok(class) => (
                Strategy::Snapshot,
                Some(class.clone()),
                format!("same CSI driver, snapshot class {class:?}"),
            ),
            Err(reason) => (Strategy::Copy, None, reason),
        }),
    }
}

/// The VolumeSnapshotClass to snapshot `volume` with, for a restore into class `to`; or why a
/// snapshot cannot carry its data there.
fn snapshot_class(
    volume: &PersistentVolume,
    to: &StorageClass,
    classes: Option<&[VolumeSnapshotClass]>,
    requested: Option<&str>,
) -> Result<String, String> {
    let name = volume.name_any();
    let Some(driver) = volume
        .spec
        .as_ref()
        .and_then(|s| s.csi.as_ref())
        .map(|c| c.driver.as_str())
    else {
        return Err(format!(
            "PV {name} is not a CSI volume, and only CSI drivers take snapshots"
        ));
    };
    let class = to.name_any();
    if to.provisioner != driver {
        return Err(format!(
            "PV {name} is of CSI driver {driver}, but class {class:?} provisions with {}: a snapshot is restored only by the driver that took it",
            to.provisioner
        ));
    }
    let Some(classes) = classes else {
        return Err(
            "the cluster serves no VolumeSnapshot API (snapshot.storage.k8s.io/v1: the snapshot CRDs and snapshot-controller)".into(),
        );
    };
    if let Some(requested) = requested {
        return match classes.iter().find(|c| c.name_any() == requested) {
            None => Err(format!("VolumeSnapshotClass {requested:?} does not exist")),
            Some(c) if c.driver != driver => Err(format!(
                "VolumeSnapshotClass {requested:?} is for driver {}, not {driver}",
                c.driver
            )),
            Some(_) => Ok(requested.to_owned()),
        };
    }
    let defaults: Vec<String> = classes
        .iter()
        .filter(|c| c.driver == driver && c.is_default())
        .map(ResourceExt::name_any)
        .collect();
    match defaults.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!(
            "no VolumeSnapshotClass is the default for driver {driver}: name one with SNAPSHOT_CLASS"
        )),
        several => Err(format!(
            "VolumeSnapshotClasses {} are all the default for driver {driver}: name one with SNAPSHOT_CLASS",
            several.join(", ")
        )),
    }
}

pub fn reclaim_policy(volume: &PersistentVolume) -> String {
    volume
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.clone())
        .unwrap_or_else(|| "Retain".to_owned())
}

/// The merge patch that switches a volume to Retain with the annotation `key: value`, keeping its
/// policy before the switch in [`RECLAIM_POLICY`] (once: a rerun finds it there); None when the
/// volume is already so.
pub fn retain_patch(
    volume: &PersistentVolume,
    key: &str,
    value: &str,
) -> Option<serde_json::Value> {
    let annotations = volume.annotations();
    if annotations.get(key).map(String::as_str) == Some(value) && reclaim_policy(volume) == "Retain"
    {
        return None;
    }
    let original = annotations
        .get(RECLAIM_POLICY)
        .cloned()
        .unwrap_or_else(|| reclaim_policy(volume));
    Some(serde_json::json!({
        "metadata": {"annotations": {key: value, RECLAIM_POLICY: original}},
        "spec": {"persistentVolumeReclaimPolicy": "Retain"},
    }))
}

/// The record a volume carries, if it is one the run must carry on with (not yet finished).
pub fn pending_record(volume: &PersistentVolume) -> Option<Record> {
    let annotations = volume.annotations();
    if annotations.contains_key(COPIED_TO) {
        return None;
    }
    serde_json::from_str(annotations.get(RECORD)?).ok()
}

/// `name` with `suffix`, the name cut so the whole stays within `limit` characters and ends in
/// a letter or digit.
fn suffixed(name: &str, suffix: &str, limit: usize) -> String {
    let keep = limit.saturating_sub(suffix.len() + 1).min(name.len());
    let base = name[..keep].trim_end_matches(['-', '.']);
    format!("{base}-{suffix}")
}

impl Record {
    /// `namespace/claim/uid`, the mark of the objects the run holds for this claim.
    pub fn mark(&self) -> String {
        crate::decision::mark(&self.namespace, &self.claim, &self.uid)
    }

    /// The temporary claim that holds the old volume while it is copied.
    pub fn source_claim_name(&self) -> String {
        suffixed(&self.claim, "migrate-source", 253)
    }

    /// The temporary claim on the new class that the data is copied into.
    pub fn target_claim_name(&self) -> String {
        suffixed(&self.claim, "migrate-target", 253)
    }

    /// The snapshot of the old volume: one per migration of the claim (the uid's first part),
    /// as it is kept after the run.
    pub fn snapshot_name(&self) -> String {
        let uid: String = self.uid.chars().take(8).collect();
        suffixed(&self.claim, &format!("migrated-{uid}"), 253)
    }

    /// A Job's name ends up in a label of its pods: 63 characters at most.
    pub fn job_name(&self) -> String {
        suffixed(&self.claim, "migrate-copy", 63)
    }

    fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (CLAIM_UID_LABEL.to_owned(), self.uid.clone()),
            (
                "app.kubernetes.io/managed-by".to_owned(),
                "storageclass-migrate".to_owned(),
            ),
        ])
    }

    fn meta(&self, name: String) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels()),
            annotations: Some(BTreeMap::from([(RECORD.to_owned(), self.mark())])),
            ..Default::default()
        }
    }

    fn claim_spec(&self, class: &str, volume: Option<&str>) -> PersistentVolumeClaimSpec {
        PersistentVolumeClaimSpec {
            storage_class_name: Some(class.to_owned()),
            volume_name: volume.map(str::to_owned),
            access_modes: Some(self.access_modes.clone()),
            volume_mode: self.volume_mode.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(
                    self.requests
                        .iter()
                        .map(|(k, v)| (k.clone(), Quantity(v.clone())))
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Bound to the old volume by name, on its class.
    pub fn source_claim(&self) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: self.meta(self.source_claim_name()),
            spec: Some(self.claim_spec(&self.from, Some(&self.volume))),
            ..Default::default()
        }
    }

    /// On the new class, the same size, access modes and volume mode.
    pub fn target_claim(&self) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: self.meta(self.target_claim_name()),
            spec: Some(self.claim_spec(&self.to, None)),
            ..Default::default()
        }
    }

    /// The claim itself, on the new class and bound to the copy, with the labels and
    /// annotations it had (Helm's among them, so the upgrade adopts it).
    pub fn new_claim(&self, volume: &str) -> PersistentVolumeClaim {
        self.claim_again(self.claim_spec(&self.to, Some(volume)))
    }

    /// The claim itself, on the new class, its volume restored from the snapshot. It requests
    /// the snapshot's `restore_size` where that is more than the claim asked for: a volume
    /// larger than its claim (a driver that allocates in GiB) is restored only at its own size.
    pub fn restored_claim(&self, restore_size: Option<&str>) -> PersistentVolumeClaim {
        let mut spec = self.claim_spec(&self.to, None);
        if let Some(size) = self.larger_restore_size(restore_size) {
            let requests = spec.resources.get_or_insert_default();
            requests
                .requests
                .get_or_insert_default()
                .insert("storage".into(), Quantity(size.to_owned()));
        }
        spec.data_source = Some(TypedLocalObjectReference {
            api_group: Some(volume_snapshot::GROUP.to_owned()),
            kind: "VolumeSnapshot".into(),
            name: self.snapshot_name(),
        });
        self.claim_again(spec)
    }

    /// `restore_size`, when it is more than the claim's storage request.
    pub fn larger_restore_size<'a>(&self, restore_size: Option<&'a str>) -> Option<&'a str> {
        let restore_size = restore_size?;
        let requested = bytes(self.requests.get("storage")?)?;
        (bytes(restore_size)? > requested).then_some(restore_size)
    }

    fn claim_again(&self, spec: PersistentVolumeClaimSpec) -> PersistentVolumeClaim {
        let mut annotations = self.annotations.clone();
        annotations.insert(MIGRATED_FROM.to_owned(), self.uid.clone());
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(self.claim.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(self.labels.clone()).filter(|l| !l.is_empty()),
                annotations: Some(annotations),
                ..Default::default()
            },
            spec: Some(spec),
            ..Default::default()
        }
    }

    /// The snapshot of the old volume, taken through the temporary claim that holds it, and
    /// kept as a backup: labelled with the claim (its uid, and its name where a label can hold
    /// it) and its Helm release.
    pub fn snapshot(&self) -> VolumeSnapshot {
        let mut metadata = self.meta(self.snapshot_name());
        let labels = metadata.labels.get_or_insert_default();
        if crate::validate::label_value(&self.claim).is_ok() {
            labels.insert(CLAIM_LABEL.to_owned(), self.claim.clone());
        }
        if let Some(release) = self
            .annotations
            .get(HELM_RELEASE)
            .filter(|r| crate::validate::label_value(r).is_ok())
        {
            labels.insert(RELEASE_LABEL.to_owned(), release.clone());
        }
        VolumeSnapshot::new(
            metadata,
            VolumeSnapshotSpec {
                source: volume_snapshot::VolumeSnapshotSource {
                    persistent_volume_claim_name: Some(self.source_claim_name()),
                },
                volume_snapshot_class_name: self.snapshot_class.clone(),
            },
        )
    }

    /// The pod that copies: the old volume read-only at [`SOURCE_PATH`], the new one at
    /// [`TARGET_PATH`]; as root with only [`COPY_CAPABILITIES`], or as the given uid with none.
    pub fn copy_pod(&self, settings: &CopySettings) -> PodTemplateSpec {
        let mut args = vec![
            "copy".to_owned(),
            "--from".to_owned(),
            SOURCE_PATH.to_owned(),
            "--to".to_owned(),
            TARGET_PATH.to_owned(),
        ];
        if !settings.verify {
            args.push("--verify=false".to_owned());
        }
        let add = match settings.as_user {
            None => Some(COPY_CAPABILITIES.iter().map(|c| c.to_string()).collect()),
            Some(_) => None,
        };
        let claim = |name: &str, claim: String, read_only: bool| Volume {
            name: name.to_owned(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim,
                read_only: Some(read_only),
            }),
            ..Default::default()
        };
        let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
            name: name.to_owned(),
            mount_path: path.to_owned(),
            read_only: Some(read_only),
            ..Default::default()
        };
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(self.labels()),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                restart_policy: Some("Never".into()),
                image_pull_secrets: Some(
                    settings
                        .image_pull_secrets
                        .iter()
                        .map(|name| LocalObjectReference { name: name.clone() })
                        .collect(),
                )
                .filter(|s: &Vec<_>| !s.is_empty()),
                automount_service_account_token: Some(false),
                security_context: Some(PodSecurityContext {
                    run_as_user: Some(settings.as_user.unwrap_or(0)),
                    run_as_group: Some(settings.as_user.unwrap_or(0)),
                    run_as_non_root: Some(settings.as_user.is_some()),
                    // As that user, the new volume must be writable: where the driver supports
                    // it, the kubelet gives the volume to this group.
                    fs_group: settings.as_user,
                    seccomp_profile: Some(SeccompProfile {
                        type_: "RuntimeDefault".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                containers: vec![Container {
                    name: "copy".into(),
                    image: Some(settings.image.clone()),
                    command: Some(vec![ENTRYPOINT.to_owned()]),
                    args: Some(args),
                    security_context: Some(SecurityContext {
                        allow_privilege_escalation: Some(false),
                        read_only_root_filesystem: Some(true),
                        capabilities: Some(Capabilities {
                            drop: Some(vec!["ALL".into()]),
                            add,
                        }),
                        ..Default::default()
                    }),
                    volume_mounts: Some(vec![
                        mount("source", SOURCE_PATH, true),
                        mount("target", TARGET_PATH, false),
                    ]),
                    termination_message_policy: Some("FallbackToLogsOnError".into()),
                    ..Default::default()
                }],
                volumes: Some(vec![
                    claim("source", self.source_claim_name(), true),
                    claim("target", self.target_claim_name(), false),
                ]),
                ..Default::default()
            }),
        }
    }

    /// The Job that runs [`Record::copy_pod`], stopped after `deadline_seconds`. A copy that
    /// could not copy everything (exit 7) is retried once, which copies only what is not yet
    /// identical; bad input or an internal error (exit 1, 2) would fail again, and fails the Job.
    pub fn copy_job(&self, settings: &CopySettings, deadline_seconds: i64) -> Job {
        let fail_job = PodFailurePolicyRule {
            action: "FailJob".into(),
            on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                container_name: Some("copy".into()),
                operator: "In".into(),
                values: vec![1, 2],
            }),
            ..Default::default()
        };
        Job {
            metadata: self.meta(self.job_name()),
            spec: Some(JobSpec {
                backoff_limit: Some(1),
                pod_failure_policy: Some(PodFailurePolicy {
                    rules: vec![fail_job],
                }),
                active_deadline_seconds: Some(deadline_seconds.max(1)),
                template: self.copy_pod(settings),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The Job's pod as a Pod, for the pre-flight: Pod Security admission judges pods, and only
    /// warns about the Jobs that would make them.
    pub fn copy_pod_object(&self, settings: &CopySettings) -> Pod {
        let template = self.copy_pod(settings);
        let mut metadata = template.metadata.unwrap_or_default();
        metadata.name = Some(suffixed(&self.claim, "migrate-copy-check", 253));
        metadata.namespace = Some(self.namespace.clone());
        Pod {
            metadata,
            spec: template.spec,
            ..Default::default()
        }
    }
}

/// The bytes of a storage quantity (`1Gi`, `1500M`, `1073741824`, `1.5Gi`, `1e9`); None for
/// what a size is not written as.
fn bytes(quantity: &str) -> Option<u128> {
    let split = quantity
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(quantity.len());
    let (number, suffix) = quantity.split_at(split);
    let multiplier: u128 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        exponent => 10u128.checked_pow(exponent.strip_prefix(['e', 'E'])?.parse().ok()?)?,
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    let scale = 10u128.checked_pow(u32::try_from(fraction.len()).ok()?)?;
    let digits: u128 = format!("{whole}{fraction}").parse().ok()?;
    // Rounded up: a size is never less than it says.
    Some(digits.checked_mul(multiplier)?.div_ceil(scale))
}

/// Whether `object` (a temporary claim, the Job) was made by a run for the claim `uid`.
pub fn made_for(labels: &BTreeMap<String, String>, uid: &str) -> bool {
    labels.get(CLAIM_UID_LABEL).map(String::as_str) == Some(uid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PersistentVolumeSpec;

    fn claim(mode: Option<&str>) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data".into()),
                namespace: Some("apps".into()),
                uid: Some("u-1".into()),
                labels: Some(BTreeMap::from([("app".into(), "db".into())])),
                annotations: Some(BTreeMap::from([
                    ("meta.helm.sh/release-name".into(), "rel".into()),
                    ("pv.kubernetes.io/bind-completed".into(), "yes".into()),
                ])),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                storage_class_name: Some("a".into()),
                volume_name: Some("pv-1".into()),
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                volume_mode: mode.map(str::to_owned),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([("storage".into(), Quantity("1Gi".into()))])),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn volume() -> PersistentVolume {
        PersistentVolume {
            metadata: ObjectMeta {
                name: Some("pv-1".into()),
                uid: Some("v-1".into()),
                ..Default::default()
            },
            spec: Some(PersistentVolumeSpec {
                persistent_volume_reclaim_policy: Some("Delete".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn class(provisioner: &str) -> StorageClass {
        StorageClass {
            metadata: ObjectMeta {
                name: Some("b".into()),
                ..Default::default()
            },
            provisioner: provisioner.into(),
            ..Default::default()
        }
    }

    fn target() -> Target {
        Target::Class("b".into())
    }

    fn settings(as_user: Option<i64>) -> CopySettings {
        CopySettings {
            image: "registry.example/storageclass-migrate:1".into(),
            image_pull_secrets: vec!["regcred".into()],
            as_user,
            verify: true,
        }
    }

    /// The record of claim `data` (class a) on PV pv-1 (Delete), to class b of a CSI driver.
    fn a_record() -> Record {
        record(
            &claim(None),
            &volume(),
            &target(),
            Some(&class("csi.example")),
        )
        .unwrap()
    }

    #[test]
    fn a_record_keeps_what_the_new_claim_needs() {
        let record = a_record();
        assert_eq!((record.from.as_str(), record.to.as_str()), ("a", "b"));
        assert_eq!(record.reclaim_policy, "Delete");
        assert_eq!(record.volume_uid, "v-1");
        assert!(record.annotations.contains_key("meta.helm.sh/release-name"));
        assert!(
            !record
                .annotations
                .contains_key("pv.kubernetes.io/bind-completed")
        );
        let json = serde_json::to_string(&record).unwrap();
        assert_eq!(serde_json::from_str::<Record>(&json).unwrap(), record);
    }

    #[test]
    fn refusals() {
        let refused =
            |claim: PersistentVolumeClaim, target: Target, class: Option<StorageClass>| {
                record(&claim, &volume(), &target, class.as_ref()).unwrap_err()
            };
        assert!(matches!(
            refused(claim(Some("Block")), target(), Some(class("csi.example"))),
            Refusal::CannotKeep { .. }
        ));
        assert!(matches!(
            refused(claim(None), Target::NoClass, None),
            Refusal::CannotKeep { .. }
        ));
        assert!(matches!(
            refused(
                claim(None),
                target(),
                Some(class("kubernetes.io/no-provisioner"))
            ),
            Refusal::CannotKeep { .. }
        ));
        assert_eq!(
            refused(claim(None), target(), None),
            Refusal::TargetMissing { class: "b".into() }
        );
    }

    #[test]
    fn objects() {
        let record = a_record();
        let source = record.source_claim();
        assert_eq!(source.name_any(), "data-migrate-source");
        let spec = source.spec.unwrap();
        assert_eq!(spec.storage_class_name.as_deref(), Some("a"));
        assert_eq!(spec.volume_name.as_deref(), Some("pv-1"));
        let target = record.target_claim().spec.unwrap();
        assert_eq!(target.storage_class_name.as_deref(), Some("b"));
        assert_eq!(target.volume_name, None);
        let new = record.new_claim("pv-2");
        assert_eq!(new.labels().get("app").map(String::as_str), Some("db"));
        assert_eq!(
            new.annotations().get(MIGRATED_FROM).map(String::as_str),
            Some("u-1")
        );
        assert_eq!(new.spec.unwrap().volume_name.as_deref(), Some("pv-2"));
        assert!(made_for(record.source_claim().labels(), "u-1"));
    }

    #[test]
    fn the_copy_runs_as_root_with_four_capabilities_or_as_a_user_with_none() {
        let record = a_record();
        let caps = |settings| {
            let pod = record
                .copy_job(&settings, 60)
                .spec
                .unwrap()
                .template
                .spec
                .unwrap();
            let context = pod.security_context.unwrap();
            let container = &pod.containers[0];
            let caps = container
                .security_context
                .clone()
                .unwrap()
                .capabilities
                .unwrap();
            (context.run_as_user, context.run_as_non_root, caps.add)
        };
        let (user, non_root, add) = caps(settings(None));
        assert_eq!((user, non_root), (Some(0), Some(false)));
        assert_eq!(add.unwrap(), ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID"]);
        let (user, non_root, add) = caps(settings(Some(1000)));
        assert_eq!((user, non_root, add), (Some(1000), Some(true), None));
    }

    #[test]
    fn the_copy_job_pulls_with_the_hooks_secrets_and_fails_at_once_on_bad_input() {
        let record = a_record();
        let spec = record.copy_job(&settings(None), 60).spec.unwrap();
        let secrets = spec.template.spec.unwrap().image_pull_secrets.unwrap();
        assert_eq!(secrets[0].name, "regcred");
        let rule = &spec.pod_failure_policy.unwrap().rules[0];
        assert_eq!(rule.action, "FailJob");
        assert_eq!(rule.on_exit_codes.as_ref().unwrap().values, [1, 2]);
        assert_eq!(spec.backoff_limit, Some(1));
        assert_eq!(spec.active_deadline_seconds, Some(60));
    }

    #[test]
    fn the_switch_to_retain_keeps_the_first_policy_and_is_done_once() {
        let mut pv = volume();
        let patch = retain_patch(&pv, RECORD, "r").unwrap();
        assert_eq!(patch["metadata"]["annotations"][RECLAIM_POLICY], "Delete");
        assert_eq!(patch["spec"]["persistentVolumeReclaimPolicy"], "Retain");
        // Switched: a rerun changes nothing; with another value it keeps the first policy.
        pv.spec.as_mut().unwrap().persistent_volume_reclaim_policy = Some("Retain".into());
        pv.metadata.annotations = Some(BTreeMap::from([
            (RECORD.to_owned(), "r".to_owned()),
            (RECLAIM_POLICY.to_owned(), "Delete".to_owned()),
        ]));
        assert_eq!(retain_patch(&pv, RECORD, "r"), None);
        let patch = retain_patch(&pv, RECORD, "s").unwrap();
        assert_eq!(patch["metadata"]["annotations"][RECLAIM_POLICY], "Delete");
    }

    fn csi_volume(driver: &str) -> PersistentVolume {
        let mut pv = volume();
        pv.spec.as_mut().unwrap().csi =
            Some(k8s_openapi::api::core::v1::CSIPersistentVolumeSource {
                driver: driver.into(),
                volume_handle: "h".into(),
                ..Default::default()
            });
        pv
    }

    fn snapshot_class(name: &str, driver: &str, default: bool) -> VolumeSnapshotClass {
        let annotations = default.then(|| {
            BTreeMap::from([(
                volume_snapshot::DEFAULT_CLASS_ANNOTATION.to_owned(),
                "true".to_owned(),
            )])
        });
        VolumeSnapshotClass {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations,
                ..Default::default()
            },
            driver: driver.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_snapshot_needs_the_same_driver_and_a_class_for_it() {
        let classes = [
            snapshot_class("a-default", "a.csi", true),
            snapshot_class("a-other", "a.csi", false),
            snapshot_class("b-default", "b.csi", true),
        ];
        let choose =
            |policy, driver: &str, to: &str, classes: Option<&[VolumeSnapshotClass]>, requested| {
                choose(policy, &csi_volume(driver), &class(to), classes, requested)
            };
        let picked = |result: Result<(Strategy, Option<String>, String), Refusal>| {
            let (strategy, class, _) = result.unwrap();
            (strategy, class)
        };
        let snapshot = |class: &str| (Strategy::Snapshot, Some(class.to_owned()));
        let copy = (Strategy::Copy, None);
        // The driver's default class, or the one asked for.
        assert_eq!(
            picked(choose(
                DataPolicy::Snapshot,
                "a.csi",
                "a.csi",
                Some(&classes),
                None
            )),
            snapshot("a-default")
        );
        assert_eq!(
            picked(choose(
                DataPolicy::Snapshot,
                "a.csi",
                "a.csi",
                Some(&classes),
                Some("a-other")
            )),
            snapshot("a-other")
        );
        assert_eq!(
            picked(choose(
                DataPolicy::Auto,
                "a.csi",
                "a.csi",
                Some(&classes),
                None
            )),
            snapshot("a-default")
        );
        // Another driver: snapshot refuses naming copy; auto copies.
        let refusal =
            choose(DataPolicy::Snapshot, "a.csi", "b.csi", Some(&classes), None).unwrap_err();
        let text = refusal.to_string();
        assert!(
            text.contains("restored only by the driver that took it")
                && text.contains("DATA_POLICY=copy"),
            "{text}"
        );
        assert_eq!(
            picked(choose(
                DataPolicy::Auto,
                "a.csi",
                "b.csi",
                Some(&classes),
                None
            )),
            copy
        );
        // A class of another driver, a missing one, no default, two defaults, no snapshot API,
        // a volume that is not CSI.
        let reason = |result: Result<(Strategy, Option<String>, String), Refusal>| match result {
            Err(Refusal::CannotKeep { reason }) => reason,
            other => panic!("not refused: {other:?}"),
        };
        assert!(
            reason(choose(
                DataPolicy::Snapshot,
                "a.csi",
                "a.csi",
                Some(&classes),
                Some("b-default")
            ))
            .contains("is for driver b.csi")
        );
        assert!(
            reason(choose(
                DataPolicy::Snapshot,
                "a.csi",
                "a.csi",
                Some(&classes),
                Some("nope")
            ))
            .contains("does not exist")
        );
        assert!(
            reason(choose(
                DataPolicy::Snapshot,
                "a.csi",
                "a.csi",
                Some(&classes[1..]),
                None
            ))
            .contains("no VolumeSnapshotClass is the default")
        );
        let two = [
            snapshot_class("x", "a.csi", true),
            snapshot_class("y", "a.csi", true),
        ];
        assert!(
            reason(choose(
                DataPolicy::Snapshot,
                "a.csi",
                "a.csi",
                Some(&two),
                None
            ))
            .contains("x, y are all the default")
        );
        assert!(
            reason(choose(DataPolicy::Snapshot, "a.csi", "a.csi", None, None))
                .contains("no VolumeSnapshot API")
        );
        assert_eq!(
            picked(choose(DataPolicy::Auto, "a.csi", "a.csi", None, None)),
            copy
        );
        let not_csi = super::choose(
            DataPolicy::Snapshot,
            &volume(),
            &class("a.csi"),
            Some(&classes),
            None,
        );
        assert!(reason(not_csi).contains("not a CSI volume"));
    }

    #[test]
    fn the_snapshot_and_the_claim_made_from_it() {
        let mut record = a_record();
        record.strategy = Strategy::Snapshot;
        record.snapshot_class = Some("a-default".into());
        assert_eq!(record.snapshot_name(), "data-migrated-u-1");
        let snapshot = record.snapshot();
        let labels = snapshot.labels();
        assert!(made_for(labels, "u-1"));
        assert_eq!(labels.get(CLAIM_LABEL).map(String::as_str), Some("data"));
        assert_eq!(labels.get(RELEASE_LABEL).map(String::as_str), Some("rel"));
        assert_eq!(
            snapshot.spec.source.persistent_volume_claim_name.as_deref(),
            Some("data-migrate-source")
        );
        assert_eq!(
            snapshot.spec.volume_snapshot_class_name.as_deref(),
            Some("a-default")
        );
        let claim = record.restored_claim(None);
        assert!(
            claim
                .annotations()
                .contains_key("meta.helm.sh/release-name")
        );
        let spec = claim.spec.unwrap();
        assert_eq!(spec.volume_name, None);
        assert_eq!(spec.storage_class_name.as_deref(), Some("b"));
        let source = spec.data_source.unwrap();
        assert_eq!(
            (
                source.api_group.as_deref(),
                source.kind.as_str(),
                source.name.as_str()
            ),
            (
                Some("snapshot.storage.k8s.io"),
                "VolumeSnapshot",
                "data-migrated-u-1"
            )
        );
        // A record written before the strategy existed reads as a copy that binds at once.
        let mut json = serde_json::to_value(a_record()).unwrap();
        let object = json.as_object_mut().unwrap();
        object.remove("strategy");
        object.remove("bindsAtOnce");
        let old: Record = serde_json::from_value(json).unwrap();
        assert_eq!((old.strategy, old.binds_at_once), (Strategy::Copy, true));
        // A long claim name is no label value: the uid label still names the claim.
        let mut long = a_record();
        long.claim = "d".repeat(70);
        assert!(!long.snapshot().labels().contains_key(CLAIM_LABEL));
    }

    #[test]
    fn a_restore_asks_for_the_snapshot_size_when_the_volume_was_larger() {
        let record = a_record();
        let storage = |size: Option<&str>| {
            let claim = record.restored_claim(size);
            claim.spec.unwrap().resources.unwrap().requests.unwrap()["storage"]
                .0
                .clone()
        };
        assert_eq!(storage(None), "1Gi");
        assert_eq!(storage(Some("1Gi")), "1Gi");
        assert_eq!(storage(Some("1073741824")), "1Gi");
        assert_eq!(storage(Some("512Mi")), "1Gi");
        assert_eq!(storage(Some("10Gi")), "10Gi");
        assert_eq!(storage(Some("1.5Gi")), "1.5Gi");
        assert_eq!(storage(Some("not a size")), "1Gi");
        for (quantity, expected) in [
            ("1Gi", Some(1u128 << 30)),
            ("1500M", Some(1_500_000_000)),
            ("1.5Ki", Some(1536)),
            ("0.1", Some(1)),
            ("1e3", Some(1000)),
            ("12", Some(12)),
            ("", None),
            ("Gi", None),
            ("1Qi", None),
        ] {
            assert_eq!(bytes(quantity), expected, "{quantity}");
        }
    }

    #[test]
    fn names_stay_within_their_limits() {
        let long = "d".repeat(250);
        assert_eq!(suffixed(&long, "migrate-copy", 63).len(), 63);
        assert_eq!(suffixed(&long, "migrate-source", 253).len(), 253);
        assert_eq!(suffixed("a-", "migrate-copy", 63), "a-migrate-copy");
        assert_eq!(
            suffixed(&format!("{}-x", "d".repeat(49)), "migrate-copy", 63),
            format!("{}-migrate-copy", "d".repeat(49))
        );
    }
}
