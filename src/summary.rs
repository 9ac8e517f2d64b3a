//! What a run reports: one line per claim on stdout, and the same lines in the termination
//! message file that `kubectl describe pod` shows.

use std::path::Path;

use crate::error::ExitStatus;

/// The termination message file holds at most this much; the kubelet truncates the rest.
pub const TERMINATION_LOG_LIMIT: usize = 4096;

/// What became of one claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub claim: String,
    pub status: ExitStatus,
    pub line: String,
}

/// Builds the summary line of a claim: what was found, what was done, what was left.
#[derive(Debug, Clone, Default)]
pub struct Report {
    found: Vec<String>,
    done: Vec<String>,
    left: Vec<String>,
    changed: bool,
}

impl Report {
    pub fn found(&mut self, fact: impl Into<String>) {
        self.found.push(fact.into());
    }

    /// A step that changed the cluster.
    pub fn done(&mut self, step: impl Into<String>) {
        self.done.push(step.into());
        self.changed = true;
    }

    /// A step sent with server-side dry run: reported, but nothing changed.
    pub fn would(&mut self, step: impl Into<String>) {
        self.done.push(step.into());
    }

    pub fn changed(&self) -> bool {
        self.changed
    }

    pub fn left(&mut self, item: impl Into<String>) {
        self.left.push(item.into());
    }

    /// `<result>: found <facts>; done: <steps>; left: <items>`, empty parts omitted.
    pub fn line(&self, result: &str) -> String {
        let mut line = result.to_owned();
        if !self.found.is_empty() {
            line.push_str(": found ");
            line.push_str(&self.found.join(", "));
        }
        for (label, items) in [("done", &self.done), ("left", &self.left)] {
            if !items.is_empty() {
                line.push_str(&format!("; {label}: {}", items.join(", ")));
            }
        }
        line
    }
}

impl Outcome {
    pub fn new(claim: &str, status: ExitStatus, line: String) -> Self {
        Self {
            claim: claim.to_owned(),
            status,
            line: format!("{claim}: {line}"),
        }
    }
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

    #[test]
    fn report_line_omits_empty_parts() {
        let mut report = Report::default();
        assert_eq!(report.line("nothing to do"), "nothing to do");
        report.found("class \"a\"");
        report.found("bound to PV pv-1 (Retain)");
        report.done("deleted the claim");
        report.left("PV pv-1 (Retain) Released with the old data");
        assert_eq!(
            report.line("migrated to class \"b\""),
            "migrated to class \"b\": found class \"a\", bound to PV pv-1 (Retain); done: deleted the claim; left: PV pv-1 (Retain) Released with the old data"
        );
    }

    #[test]
    fn worst_status_wins() {
        let outcomes = [
            Outcome::new("ns/a", ExitStatus::Ok, "x".into()),
            Outcome::new("ns/b", ExitStatus::Timeout, "y".into()),
            Outcome::new("ns/c", ExitStatus::Refused, "z".into()),
        ];
        assert_eq!(worst(&outcomes), ExitStatus::Timeout);
        assert_eq!(worst(&[]), ExitStatus::Ok);
        assert_eq!(outcomes[0].line, "ns/a: x");
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
