//! What a data-keeping migration will do, decided without I/O: whether the claim can be copied,
//! the record written on the old volume before anything changes, and every object the run
//! creates (the temporary claims, the copy Job, the claim recreated on the new class).

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, LocalObjectReference, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec,
    PodTemplateSpec, SeccompProfile, SecurityContext, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use crate::class::Target;
use crate::config::CopySettings;
use crate::decision::{Refusal, claim_class};

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
/// On the temporary claims and the copy Job (and its pods): the uid of the claim they serve.
pub const CLAIM_UID_LABEL: &str = "storageclass-migrate/claim-uid";
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
}

/// Whether the claim's data can be copied to the target class; its [`Record`] if so.
pub fn record(
    claim: &PersistentVolumeClaim,
    volume: &PersistentVolume,
    target: &Target,
    class: Option<&StorageClass>,
) -> Result<Record, Refusal> {
    let refuse = |reason: String| Err(Refusal::CannotCopy { reason });
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
    })
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
            spec: Some(self.claim_spec(&self.to, Some(volume))),
            ..Default::default()
        }
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
            delete_old_volume: false,
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
            Refusal::CannotCopy { .. }
        ));
        assert!(matches!(
            refused(claim(None), Target::NoClass, None),
            Refusal::CannotCopy { .. }
        ));
        assert!(matches!(
            refused(
                claim(None),
                target(),
                Some(class("kubernetes.io/no-provisioner"))
            ),
            Refusal::CannotCopy { .. }
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
