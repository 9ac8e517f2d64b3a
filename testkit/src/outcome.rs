//! The binary's structured outcome: with `--summary-format json` (what [`crate::Job`] passes
//! unless told [`crate::Job::human`]) each claim is one JSON object on its own line of stdout
//! (see `src/summary.rs`). Tests assert on its result, status and the kinds and names of what
//! was found, done, would be done (dry run) and left, not on the wording of the human line.

use std::fmt;

use serde::Deserialize;

/// One fact, step or leftover: a stable `kind` (`claim-deleted`, `volume-kept`, ...), the name
/// of the object it concerns where there is one, and its text in the human line.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Item {
    pub kind: String,
    #[serde(default)]
    pub name: Option<String>,
    pub text: String,
}

/// What became of one claim.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Outcome {
    /// `namespace/name`, or `namespace/-l selector` when a selector picked none.
    pub claim: String,
    /// This claim's exit status.
    pub status: i32,
    /// `nothing-to-do`, `migrated`, `finished`, `dry-run`, `refused`, `failed`, `part-way`.
    pub result: String,
    /// Whether anything in the cluster was changed for this claim.
    pub changed: bool,
    /// Why nothing was done, or the target (`class "b"`, `no class`).
    #[serde(default)]
    pub detail: Option<String>,
    /// The refusal or error that ended the handling.
    #[serde(default)]
    pub error: Option<String>,
    pub found: Vec<Item>,
    pub done: Vec<Item>,
    pub would: Vec<Item>,
    pub left: Vec<Item>,
}

fn kinds(items: &[Item]) -> Vec<&str> {
    items.iter().map(|i| i.kind.as_str()).collect()
}

fn names<'a>(items: &'a [Item], kind: &str) -> Vec<&'a str> {
    items
        .iter()
        .filter(|i| i.kind == kind)
        .filter_map(|i| i.name.as_deref())
        .collect()
}

impl Outcome {
    /// Parses one line of stdout.
    pub fn parse(line: &str) -> Result<Outcome, String> {
        serde_json::from_str(line).map_err(|e| format!("not an outcome ({e}): {line}"))
    }

    /// Every line of a run's stdout; fails on a line that is not an outcome.
    pub fn parse_all(stdout: &str) -> Result<Vec<Outcome>, String> {
        stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(Outcome::parse)
            .collect()
    }

    pub fn found_kinds(&self) -> Vec<&str> {
        kinds(&self.found)
    }

    pub fn done_kinds(&self) -> Vec<&str> {
        kinds(&self.done)
    }

    pub fn would_kinds(&self) -> Vec<&str> {
        kinds(&self.would)
    }

    pub fn left_kinds(&self) -> Vec<&str> {
        kinds(&self.left)
    }

    pub fn has_found(&self, kind: &str) -> bool {
        self.found.iter().any(|i| i.kind == kind)
    }

    pub fn has_done(&self, kind: &str) -> bool {
        self.done.iter().any(|i| i.kind == kind)
    }

    pub fn has_would(&self, kind: &str) -> bool {
        self.would.iter().any(|i| i.kind == kind)
    }

    pub fn has_left(&self, kind: &str) -> bool {
        self.left.iter().any(|i| i.kind == kind)
    }

    /// The names of the found items of `kind`, in order.
    pub fn found_names(&self, kind: &str) -> Vec<&str> {
        names(&self.found, kind)
    }

    pub fn done_names(&self, kind: &str) -> Vec<&str> {
        names(&self.done, kind)
    }

    pub fn would_names(&self, kind: &str) -> Vec<&str> {
        names(&self.would, kind)
    }

    pub fn left_names(&self, kind: &str) -> Vec<&str> {
        names(&self.left, kind)
    }

    /// The result and the kinds of every list, in one line that reads like the summary:
    /// `migrated: found class, volume; done claim-deleted, claim-gone; left volume-kept`
    /// (empty lists left out). One `assert_eq!` pins what a run did.
    pub fn shape(&self) -> String {
        let mut shape = self.result.clone();
        let mut sep = ": ";
        for (label, items) in [
            ("found", &self.found),
            ("done", &self.done),
            ("would", &self.would),
            ("left", &self.left),
        ] {
            if !items.is_empty() {
                shape.push_str(&format!("{sep}{label} {}", kinds(items).join(", ")));
                sep = "; ";
            }
        }
        shape
    }

    /// The error, or `""`.
    pub fn error(&self) -> &str {
        self.error.as_deref().unwrap_or_default()
    }

    /// The human line, as the binary writes it for this outcome (and into the termination
    /// message): `<claim>: <result>[ to <detail>|: <detail>]: found ...; done: ...; would: ...;
    /// left: ...[: <error>]`.
    pub fn line(&self) -> String {
        let result = match self.result.as_str() {
            "nothing-to-do" => "nothing to do",
            "migrated" => "migrated",
            "finished" => "finished an interrupted migration",
            "dry-run" => "dry run, would migrate",
            "refused" => "refused, nothing changed",
            "failed" => "failed, nothing changed",
            "part-way" => "stopped part-way, run again to finish",
            other => other,
        };
        let mut line = format!("{}: {result}", self.claim);
        if let Some(detail) = &self.detail {
            let joint = match self.result.as_str() {
                "migrated" | "dry-run" => " to ",
                _ => ": ",
            };
            line.push_str(joint);
            line.push_str(detail);
        }
        let join = |items: &[Item]| {
            items
                .iter()
                .map(|i| i.text.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
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
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.line())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIGRATED: &str = r#"{"claim":"apps/data","status":0,"result":"migrated","changed":true,"detail":"class \"b\"","found":[{"kind":"class","name":"a","text":"class \"a\""},{"kind":"volume","name":"pv-1","text":"bound to PV pv-1 (Retain)"}],"done":[{"kind":"claim-deleted","name":"data","text":"claim deleted"},{"kind":"claim-gone","name":"data","text":"claim gone"}],"would":[],"left":[{"kind":"volume-kept","name":"pv-1","text":"PV pv-1 (Retain) with the old data"}]}"#;

    #[test]
    fn kinds_and_names_are_read() {
        let o = Outcome::parse(MIGRATED).unwrap();
        assert_eq!(o.status, 0);
        assert_eq!(o.result, "migrated");
        assert!(o.changed);
        assert_eq!(o.found_kinds(), ["class", "volume"]);
        assert_eq!(o.done_kinds(), ["claim-deleted", "claim-gone"]);
        assert!(o.has_done("claim-deleted") && !o.has_done("pod-evicted"));
        assert_eq!(o.left_names("volume-kept"), ["pv-1"]);
        assert_eq!(o.found_names("class"), ["a"]);
        assert!(o.would.is_empty() && o.error().is_empty());
        assert_eq!(
            o.shape(),
            "migrated: found class, volume; done claim-deleted, claim-gone; left volume-kept"
        );
    }

    #[test]
    fn the_human_line_is_rebuilt() {
        let o = Outcome::parse(MIGRATED).unwrap();
        assert_eq!(
            o.line(),
            "apps/data: migrated to class \"b\": found class \"a\", bound to PV pv-1 (Retain); done: claim deleted, claim gone; left: PV pv-1 (Retain) with the old data"
        );
        let absent = Outcome::parse(
            r#"{"claim":"apps/data","status":0,"result":"nothing-to-do","changed":false,"detail":"claim absent","found":[],"done":[],"would":[],"left":[]}"#,
        )
        .unwrap();
        assert_eq!(absent.line(), "apps/data: nothing to do: claim absent");
    }

    #[test]
    fn a_human_line_is_not_an_outcome() {
        assert!(Outcome::parse("apps/data: nothing to do: claim absent").is_err());
    }
}
