//! What a run reports: one summary per claim on stdout, as a line of text or as a JSON object
//! (`--summary-format json`), and the same lines in the termination message file that
//! `kubectl describe pod` shows.
//!
//! A summary says what was found, what was done (or, in a dry run, would be), and what was left.
//! Each of those items has a stable [`Kind`] and, where it names an object, that object's name:
//! scripts and tests read those; the text is for people and may change.

use std::fmt;
use std::path::Path;

use serde::Serialize;

use crate::error::ExitStatus;

/// The termination message file holds at most this much; the kubelet truncates the rest.
pub const TERMINATION_LOG_LIMIT: usize = 4096;

/// What one item of a summary is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    // found
    /// The claim's class; name: the class.
    Class,
    /// The claim was already being deleted.
    BeingDeleted,
    /// The claim is not bound to a volume.
    Unbound,
    /// The claim's volume; name: the volume.
    Volume,
    /// The claim names a volume that no longer exists; name: the volume.
    VolumeGone,
    /// A scheduled pod uses the claim; name: the pod.
    UsedBy,
    /// A finalizer of another controller holds the claim; name: the finalizer.
    ForeignFinalizer,
    /// No claim of that name.
    ClaimAbsent,
    /// A volume that an interrupted run marked; name: the volume.
    MarkedVolume,
    /// The record of a migration keeping the data (a copy or a snapshot) that an interrupted run
    /// left on the old volume; name: the volume.
    CopyRecord,
    /// `--statefulset`: the StatefulSet and the class of its template; name: the StatefulSet.
    StatefulSet,
    /// `--statefulset`: the StatefulSet does not exist; name: the StatefulSet.
    StatefulSetAbsent,
    /// `--statefulset`: the StatefulSet is already being deleted; name: the StatefulSet.
    StatefulSetBeingDeleted,
    /// `--statefulset`: a claim made from the template, with its class; name: the claim.
    Member,
    // done, would, left
    /// The delete-after-claim mark was put on the volume (left: could not be taken off after a
    /// failure); name: the volume.
    VolumeMarked,
    /// The claim was deleted; name: the claim.
    ClaimDeleted,
    /// Claim finalizers were stripped; name: the finalizer.
    ClaimFinalizerStripped,
    /// A pod was evicted; name: the pod.
    PodEvicted,
    /// The claim is gone; name: the claim.
    ClaimGone,
    /// The volume's reclaim policy was switched to Delete; name: the volume.
    VolumeReclaimDelete,
    /// The volume was deleted; name: the volume.
    VolumeDeleted,
    /// Volume finalizers were stripped; name: the finalizer.
    VolumeFinalizerStripped,
    /// The volume's provisioner reclaimed it; name: the volume.
    VolumeReclaimed,
    /// The volume is kept with the old data; name: the volume.
    VolumeKept,
    /// The volume is still there, its reclaim pending; name: the volume.
    VolumeReclaimPending,
    /// The volume's reclaim failed; name: the volume.
    VolumeReclaimFailed,
    /// `--data copy`: the old volume switched to Retain, the migration recorded on it; name: the
    /// volume.
    VolumeRetained,
    /// A temporary claim of a copy or a snapshot was created; name: the claim.
    CopyClaimCreated,
    /// The data was copied (the text is the copy's summary); name: the copy Job.
    DataCopied,
    /// The claim was made again on the new class, bound to the copy or restored from the
    /// snapshot; name: the claim.
    ClaimRecreated,
    /// The copy Job or a temporary claim (of a copy or a snapshot) was removed; name: the
    /// object.
    CopyRemoved,
    /// `--data snapshot`: the snapshot of the old volume is ready to restore from; name: the
    /// VolumeSnapshot.
    SnapshotTaken,
    /// `--data snapshot` (left): the snapshot is kept as a backup; name: the VolumeSnapshot.
    SnapshotKept,
    /// `--delete-snapshot`: the snapshot was deleted once the claim made from it was bound;
    /// name: the VolumeSnapshot.
    SnapshotDeleted,
    /// The old volume got its original reclaim policy back (`--delete-old-volume`); name: the
    /// volume.
    VolumeReclaimRestored,
    /// `--statefulset`: the StatefulSet was deleted with its pods and claims orphaned; name: the
    /// StatefulSet.
    StatefulSetOrphaned,
    /// `--statefulset`: the StatefulSet is gone; name: the StatefulSet.
    StatefulSetGone,
    /// `--statefulset` (left): the StatefulSet is to be created again with the new template
    /// (Helm does so in the same upgrade); name: the StatefulSet.
    StatefulSetToRecreate,
    /// `--statefulset` (left): a claim that was not moved; name: the claim.
    ClaimNotMoved,
    /// A step of the plan that was not reached; no name.
    NotReached,
}

/// One fact, step or leftover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Item {
    pub kind: Kind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub text: String,
}

impl Item {
    pub fn new(kind: Kind, name: Option<&str>, text: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.map(str::to_owned),
            text: text.into(),
        }
    }
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// How the handling of a claim ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Result {
    /// Nothing needed doing; `reason` says why.
    NothingToDo,
    /// Migrated: the claim is gone, Helm can create it on the new class.
    Migrated,
    /// Finished what an interrupted run left (a marked volume).
    Finished,
    /// A dry run: the pre-flight passed; `would` lists the steps.
    DryRun,
    /// Refused for safety before anything changed.
    Refused,
    /// Failed before anything changed.
    Failed,
    /// Stopped after something changed; a rerun finishes it.
    PartWay,
}

impl Result {
    fn text(self) -> &'static str {
        match self {
            Result::NothingToDo => "nothing to do",
            Result::Migrated => "migrated",
            Result::Finished => "finished an interrupted migration",
            Result::DryRun => "dry run, would migrate",
            Result::Refused => "refused, nothing changed",
            Result::Failed => "failed, nothing changed",
            Result::PartWay => "stopped part-way, run again to finish",
        }
    }
}

/// What became of one claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// `namespace/name`, `namespace/-l selector` when a selector picked none, or
    /// `namespace/statefulset/name` for the StatefulSet of a `--statefulset` run.
    pub claim: String,
    /// This claim's exit status.
    pub status: ExitStatus,
    pub result: Result,
    /// Whether anything in the cluster was changed for this claim.
    pub changed: bool,
    /// Why nothing was done, or the target (`class "b"`, `no class`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The refusal or error that ended the handling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub found: Vec<Item>,
    pub done: Vec<Item>,
    pub would: Vec<Item>,
    pub left: Vec<Item>,
}

/// Collects what is found, done and left while a claim is handled.
#[derive(Debug, Clone, Default)]
pub struct Report {
    found: Vec<Item>,
    done: Vec<Item>,
    would: Vec<Item>,
    left: Vec<Item>,
    /// The step under way, named in `left` should the run stop there.
    pending: Option<String>,
}

impl Report {
    pub fn found(&mut self, kind: Kind, name: Option<&str>, text: impl Into<String>) {
        self.found.push(Item::new(kind, name, text));
    }

    /// A step that changed the cluster.
    pub fn done(&mut self, kind: Kind, name: Option<&str>, text: impl Into<String>) {
        self.done.push(Item::new(kind, name, text));
    }

    /// A step sent with server-side dry run: accepted, nothing changed.
    pub fn would(&mut self, kind: Kind, name: Option<&str>, text: impl Into<String>) {
        self.would.push(Item::new(kind, name, text));
    }

    pub fn left(&mut self, kind: Kind, name: Option<&str>, text: impl Into<String>) {
        self.left.push(Item::new(kind, name, text));
    }

    /// The step about to be taken.
    pub fn pending(&mut self, step: impl Into<String>) {
        self.pending = Some(step.into());
    }

    /// Every step was taken.
    pub fn settled(&mut self) {
        self.pending = None;
    }

    /// The run stopped: the step under way, and what follows it, is left.
    pub fn stopped(&mut self) {
        if let Some(step) = self.pending.take() {
            self.left(
                Kind::NotReached,
                None,
                format!("not finished: {step} and what follows"),
            );
        }
    }

    pub fn changed(&self) -> bool {
        !self.done.is_empty()
    }

    /// The found facts so far, on one line, for the log.
    pub fn found_line(&self) -> String {
        join(&self.found)
    }

    pub fn finish(
        self,
        claim: String,
        status: ExitStatus,
        result: Result,
        detail: Option<String>,
        error: Option<String>,
    ) -> Outcome {
        Outcome {
            changed: self.changed(),
            claim,
            status,
            result,
            detail,
            error,
            found: self.found,
            done: self.done,
            would: self.would,
            left: self.left,
        }
    }
}

impl Report {
    /// The outcome of a part that ended with `error`: part-way (exit 6) once anything changed,
    /// else refused (exit 3) or failed with the error's own status.
    pub fn finish_with_error(self, key: String, error: &crate::error::Error) -> Outcome {
        let (status, result) = match error {
            _ if self.changed() => (ExitStatus::PartWay, Result::PartWay),
            crate::error::Error::Refused(_) => (ExitStatus::Refused, Result::Refused),
            other => (other.exit_status(), Result::Failed),
        };
        self.finish(key, status, result, None, Some(error.to_string()))
    }
}

impl Outcome {
    /// An outcome with nothing found or done.
    pub fn nothing(claim: String, reason: String) -> Self {
        Report::default().finish(
            claim,
            ExitStatus::Ok,
            Result::NothingToDo,
            Some(reason),
            None,
        )
    }

    /// `<claim>: <result>[ to <detail>|: <detail>]: found <facts>; done: <steps>; would: <steps>;
    /// left: <items>[: <error>]`, empty parts omitted.
    pub fn line(&self) -> String {
        let mut line = format!("{}: {}", self.claim, self.result.text());
        if let Some(detail) = &self.detail {
            let joint = match self.result {
                Result::Migrated | Result::DryRun => " to ",
                _ => ": ",
            };
            line.push_str(joint);
            line.push_str(detail);
        }
        if !self.found.is_empty() {
            line.push_str(": found ");
            line.push_str(&join(&self.found));
        }
        for (label, items) in [
            ("done", &self.done),
            ("would", &self.would),
            ("left", &self.left),
        ] {
            if !items.is_empty() {
                line.push_str(&format!("; {label}: {}", join(items)));
            }
        }
        if let Some(error) = &self.error {
            line.push_str(": ");
            line.push_str(error);
        }
        line
    }

    pub fn json(&self) -> String {
        serde_json::to_string(self).expect("an outcome always serializes")
    }
}

fn join(items: &[Item]) -> String {
    items
        .iter()
        .map(|i| i.text.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The exit status of a run: the highest of its claims', 0 for none.
pub fn worst(outcomes: &[Outcome]) -> ExitStatus {
    outcomes
        .iter()
        .map(|o| o.status)
        .max()
        .unwrap_or(ExitStatus::Ok)
}

/// The lines, cut at a character boundary to fit the termination message limit.
pub fn termination_message(lines: &[String]) -> String {
    let mut message = lines.join("\n");
    if message.len() > TERMINATION_LOG_LIMIT {
        let mut end = TERMINATION_LOG_LIMIT - 3;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("...");
    }
    message
}

/// Writes the termination message, best effort, into a file that must exist (the kubelet creates
/// it): run by hand outside a pod, nothing is created, not even as root.
pub fn write_termination_log(path: &Path, lines: &[String]) {
    let written = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut file| {
            std::io::Write::write_all(&mut file, termination_message(lines).as_bytes())
        });
    if let Err(error) = written {
        tracing::debug!(path = %path.display(), %error, "termination message not written");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn migrated() -> Outcome {
        let mut report = Report::default();
        report.found(Kind::Class, Some("a"), "class \"a\"");
        report.found(Kind::Volume, Some("pv-1"), "bound to PV pv-1 (Retain)");
        report.done(Kind::ClaimDeleted, Some("data"), "claim deleted");
        report.left(
            Kind::VolumeKept,
            Some("pv-1"),
            "PV pv-1 (Retain) with the old data",
        );
        report.finish(
            "apps/data".into(),
            ExitStatus::Ok,
            Result::Migrated,
            Some("class \"b\"".into()),
            None,
        )
    }

    #[test]
    fn line_omits_empty_parts() {
        assert_eq!(
            Outcome::nothing("apps/data".into(), "claim absent".into()).line(),
            "apps/data: nothing to do: claim absent"
        );
        assert_eq!(
            migrated().line(),
            "apps/data: migrated to class \"b\": found class \"a\", bound to PV pv-1 (Retain); done: claim deleted; left: PV pv-1 (Retain) with the old data"
        );
    }

    #[test]
    fn json_carries_kinds_names_and_status() {
        let value: serde_json::Value = serde_json::from_str(&migrated().json()).unwrap();
        assert_eq!(value["claim"], "apps/data");
        assert_eq!(value["status"], 0);
        assert_eq!(value["result"], "migrated");
        assert_eq!(value["changed"], true);
        assert_eq!(value["done"][0]["kind"], "claim-deleted");
        assert_eq!(value["done"][0]["name"], "data");
        assert_eq!(value["left"][0]["kind"], "volume-kept");
        assert_eq!(value["found"][1]["kind"], "volume");
        assert!(value.get("error").is_none());
        assert_eq!(value["would"], serde_json::json!([]));
    }

    #[test]
    fn only_real_steps_count_as_changes() {
        let mut report = Report::default();
        report.would(Kind::ClaimDeleted, Some("data"), "claim delete accepted");
        assert!(!report.changed());
        report.done(Kind::ClaimDeleted, Some("data"), "claim deleted");
        assert!(report.changed());
    }

    #[test]
    fn worst_status_wins() {
        let with =
            |status| Report::default().finish("ns/a".into(), status, Result::Failed, None, None);
        let outcomes = [
            with(ExitStatus::Ok),
            with(ExitStatus::PartWay),
            with(ExitStatus::Refused),
        ];
        assert_eq!(worst(&outcomes), ExitStatus::PartWay);
        assert_eq!(worst(&[]), ExitStatus::Ok);
    }

    #[test]
    fn termination_message_fits_the_limit() {
        let lines = vec!["é".repeat(3000)];
        let message = termination_message(&lines);
        assert!(message.len() <= TERMINATION_LOG_LIMIT);
        assert!(message.ends_with("..."));
        assert_eq!(termination_message(&["a".into(), "b".into()]), "a\nb");
    }

    #[test]
    fn termination_log_is_written_only_where_it_exists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("termination-log");
        std::fs::write(&path, "an older and longer message").unwrap();
        write_termination_log(&path, &["ns/a: migrated".into()]);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "ns/a: migrated");
        let missing = dir.path().join("not-created");
        write_termination_log(&missing, &["x".into()]);
        assert!(!missing.exists());
        write_termination_log(&dir.path().join("missing/dir/file"), &["x".into()]);
    }
}
