//! What a `--statefulset` run does, decided without I/O: which volumeClaimTemplate, which claims
//! belong to it (`<template>-<statefulset>-<ordinal>`, every ordinal, also those a scale-down
//! left behind), whether anything needs doing, and what becomes of the StatefulSet.

use std::fmt;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::ResourceExt;

use crate::class::Target;
use crate::decision::claim_class;

/// Everything read about a StatefulSet and its claims.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The StatefulSet's name, as given.
    pub name: &'a str,
    /// The StatefulSet; None when it does not exist (an interrupted run deleted it, or nothing
    /// created it yet).
    pub set: Option<&'a StatefulSet>,
    /// `--template`, when given.
    pub template: Option<&'a str>,
    /// Claims of the namespace (those named after the StatefulSet are enough).
    pub claims: &'a [PersistentVolumeClaim],
    /// Names of claims for which an interrupted run left work (a copy record, a marked volume):
    /// such a claim may be absent, its work is still due.
    pub unfinished: &'a [String],
    pub target: &'a Target,
}

/// The class of the volumeClaimTemplate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateClass {
    /// `storageClassName` (`""` for no class).
    Class(String),
    /// No `storageClassName`: claims made from it get the default class.
    Unset,
    /// The StatefulSet does not exist: its template cannot be read.
    Unknown,
}

impl fmt::Display for TemplateClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TemplateClass::Class(class) if class.is_empty() => f.write_str("no class (\"\")"),
            TemplateClass::Class(class) => write!(f, "class {class:?}"),
            TemplateClass::Unset => f.write_str("no storageClassName"),
            TemplateClass::Unknown => f.write_str("an unknown class"),
        }
    }
}

/// A claim named after the template and the StatefulSet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub ordinal: u32,
    pub state: MemberState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberState {
    /// Already on the desired class: left alone.
    OnTarget,
    /// On another class: moved.
    Move { class: String },
    /// Being deleted (an interrupted run, or someone else): waited out.
    BeingDeleted,
    /// `storageClassName` unset and no beta annotation: no class to compare; left alone.
    NilClass,
    /// Absent, but an interrupted run left work for it (a copy to finish, a marked volume).
    Unfinished,
}

impl Member {
    /// Whether the run handles this claim.
    pub fn moves(&self) -> bool {
        matches!(
            self.state,
            MemberState::Move { .. } | MemberState::BeingDeleted | MemberState::Unfinished
        )
    }
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = &self.name;
        match &self.state {
            MemberState::OnTarget => write!(f, "claim {name} already on the desired class"),
            MemberState::Move { class } if class.is_empty() => {
                write!(f, "claim {name} on no class (\"\")")
            }
            MemberState::Move { class } => write!(f, "claim {name} on class {class:?}"),
            MemberState::BeingDeleted => write!(f, "claim {name} already being deleted"),
            MemberState::NilClass => write!(
                f,
                "claim {name} without storageClassName (left alone: the StatefulSet reuses it as it is)"
            ),
            MemberState::Unfinished => {
                write!(f, "claim {name} absent, with work an interrupted run left")
            }
        }
    }
}

/// What becomes of the StatefulSet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetStep {
    /// Delete it with `propagationPolicy: Orphan` and a uid precondition: its pods and claims
    /// stay, no controller recreates them while the claims move, and Helm creates it again with
    /// the new template.
    Orphan { uid: String },
    /// Already being deleted (an interrupted run): wait until it is gone.
    AwaitGone { uid: String },
    /// Absent: the claims move, and whoever creates it next does so with the new template.
    Absent,
}

/// The plan of a `--statefulset` run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetPlan {
    pub name: String,
    pub template: String,
    pub template_class: TemplateClass,
    /// `spec.replicas` of the StatefulSet read (None when absent).
    pub replicas: Option<i32>,
    /// Every claim named after the template, by ordinal.
    pub members: Vec<Member>,
    /// None: nothing to do.
    pub step: Option<SetStep>,
}

impl SetPlan {
    /// The claims the run moves (or finishes), by ordinal.
    pub fn moving(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.moves())
            .map(|m| m.name.clone())
            .collect()
    }

    /// Why nothing is to be done (for a plan without a step).
    pub fn nothing_reason(&self) -> String {
        match (&self.template_class, self.members.is_empty()) {
            (TemplateClass::Unknown, true) => format!(
                "StatefulSet {} absent and no claim named {}-{}-<ordinal>",
                self.name, self.template, self.name
            ),
            (TemplateClass::Unknown, false) => format!(
                "StatefulSet {} absent; its claims are on the desired class",
                self.name
            ),
            (_, true) => "the template is on the desired class and there is no claim".into(),
            (_, false) => "the template and every claim are on the desired class".into(),
        }
    }
}

/// Why a `--statefulset` run is refused before anything changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetRefusal {
    /// The StatefulSet has no volumeClaimTemplates.
    NoTemplates { set: String },
    /// `--template` names none of its templates.
    NoSuchTemplate {
        set: String,
        template: String,
        templates: Vec<String>,
    },
    /// Several templates and no `--template`.
    WhichTemplate { set: String, templates: Vec<String> },
    /// The StatefulSet is gone (an interrupted run), no `--template`, and claims are named after
    /// it: which template they belong to cannot be told.
    TemplateUnknown { set: String, claims: Vec<String> },
    /// The StatefulSet was replaced after it was read.
    Replaced { set: String, uid: String },
}

impl fmt::Display for SetRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetRefusal::NoTemplates { set } => {
                write!(f, "StatefulSet {set} has no volumeClaimTemplates")
            }
            SetRefusal::NoSuchTemplate {
                set,
                template,
                templates,
            } => write!(
                f,
                "StatefulSet {set} has no volumeClaimTemplate {template:?} (it has {})",
                templates.join(", ")
            ),
            SetRefusal::WhichTemplate { set, templates } => write!(
                f,
                "StatefulSet {set} has volumeClaimTemplates {}: name one with --template (VOLUME_CLAIM_TEMPLATE)",
                templates.join(", ")
            ),
            SetRefusal::TemplateUnknown { set, claims } => write!(
                f,
                "StatefulSet {set} does not exist, so its template cannot be read, and claims {} are named after it: name the template with --template (VOLUME_CLAIM_TEMPLATE)",
                claims.join(", ")
            ),
            SetRefusal::Replaced { set, uid } => write!(
                f,
                "StatefulSet {set} was replaced after it was read (uid {uid} is gone); the new one is not deleted, run again to evaluate it"
            ),
        }
    }
}

/// The names of the StatefulSet's volumeClaimTemplates.
pub fn templates(set: &StatefulSet) -> Vec<String> {
    set.spec
        .iter()
        .flat_map(|s| s.volume_claim_templates.iter().flatten())
        .map(|t| t.name_any())
        .collect()
}

/// The template the run is about: `--template` (which must be one of the StatefulSet's), else
/// the StatefulSet's only one. None when the StatefulSet is absent and no template is given.
pub fn template_name(
    name: &str,
    set: Option<&StatefulSet>,
    given: Option<&str>,
) -> Result<Option<String>, SetRefusal> {
    let Some(set) = set else {
        return Ok(given.map(str::to_owned));
    };
    let templates = templates(set);
    match (given, templates.as_slice()) {
        (_, []) => Err(SetRefusal::NoTemplates { set: name.into() }),
        (Some(given), _) if templates.iter().any(|t| t == given) => Ok(Some(given.to_owned())),
        (Some(given), _) => Err(SetRefusal::NoSuchTemplate {
            set: name.into(),
            template: given.into(),
            templates,
        }),
        (None, [only]) => Ok(Some(only.clone())),
        (None, _) => Err(SetRefusal::WhichTemplate {
            set: name.into(),
            templates,
        }),
    }
}

/// The class of the template `template` of the StatefulSet.
pub fn template_class(set: Option<&StatefulSet>, template: &str) -> TemplateClass {
    let Some(set) = set else {
        return TemplateClass::Unknown;
    };
    set.spec
        .iter()
        .flat_map(|s| s.volume_claim_templates.iter().flatten())
        .find(|t| t.name_any() == template)
        .and_then(claim_class)
        .map_or(TemplateClass::Unset, |c| TemplateClass::Class(c.to_owned()))
}

/// The ordinal of a claim named `<template>-<set>-<ordinal>`, as the StatefulSet controller
/// names them (a decimal number without leading zeros).
pub fn ordinal(claim: &str, template: &str, set: &str) -> Option<u32> {
    let digits = claim
        .strip_prefix(template)?
        .strip_prefix('-')?
        .strip_prefix(set)?
        .strip_prefix('-')?;
    ordinal_digits(digits)
}

fn ordinal_digits(digits: &str) -> Option<u32> {
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    canonical.then(|| digits.parse().ok()).flatten()
}

/// Whether the claim is named `<something>-<set>-<ordinal>`: named after some template of the
/// StatefulSet. Used to keep a list short and, with the StatefulSet gone and no template given,
/// to tell that claims may belong to it.
pub fn named_after(claim: &str, set: &str) -> bool {
    let Some((rest, digits)) = claim.rsplit_once('-') else {
        return false;
    };
    let Some(template) = rest.strip_suffix(set).and_then(|t| t.strip_suffix('-')) else {
        return false;
    };
    !template.is_empty() && ordinal_digits(digits).is_some()
}

/// The plan, or why the run is refused. Nothing to do (no step) when the template is on the
/// desired class (or the StatefulSet is absent) and every claim of it is on the desired class,
/// none being deleted and none with unfinished work.
pub fn plan(facts: Facts<'_>) -> Result<SetPlan, SetRefusal> {
    let name = facts.name;
    let Some(template) = template_name(name, facts.set, facts.template)? else {
        let mut claims: Vec<String> = facts
            .claims
            .iter()
            .map(|c| c.name_any())
            .chain(facts.unfinished.iter().cloned())
            .filter(|c| named_after(c, name))
            .collect();
        claims.sort();
        claims.dedup();
        if !claims.is_empty() {
            return Err(SetRefusal::TemplateUnknown {
                set: name.into(),
                claims,
            });
        }
        return Ok(SetPlan {
            name: name.into(),
            template: "<template>".into(),
            template_class: TemplateClass::Unknown,
            replicas: None,
            members: Vec::new(),
            step: None,
        });
    };
    let target = facts.target.class_name();
    let mut members: Vec<Member> = facts
        .claims
        .iter()
        .filter_map(|claim| {
            let ordinal = ordinal(&claim.name_any(), &template, name)?;
            let state = match claim_class(claim) {
                _ if claim.metadata.deletion_timestamp.is_some() => MemberState::BeingDeleted,
                None => MemberState::NilClass,
                Some(class) if class == target => MemberState::OnTarget,
                Some(class) => MemberState::Move {
                    class: class.to_owned(),
                },
            };
            Some(Member {
                name: claim.name_any(),
                ordinal,
                state,
            })
        })
        .collect();
    for claim in facts.unfinished {
        let present = members.iter().any(|m| &m.name == claim);
        if let (false, Some(ordinal)) = (present, ordinal(claim, &template, name)) {
            members.push(Member {
                name: claim.clone(),
                ordinal,
                state: MemberState::Unfinished,
            });
        }
    }
    members.sort_by_key(|m| m.ordinal);
    let template_class = template_class(facts.set, &template);
    let template_moves = match &template_class {
        TemplateClass::Class(class) => class != target,
        TemplateClass::Unset => true,
        TemplateClass::Unknown => false,
    };
    let work = template_moves || members.iter().any(Member::moves);
    let step = match facts.set {
        _ if !work => None,
        None => Some(SetStep::Absent),
        Some(set) => {
            let uid = set.uid().unwrap_or_default();
            Some(if set.metadata.deletion_timestamp.is_some() {
                SetStep::AwaitGone { uid }
            } else {
                SetStep::Orphan { uid }
            })
        }
    };
    Ok(SetPlan {
        name: name.into(),
        template,
        template_class,
        replicas: facts.set.and_then(|s| s.spec.as_ref()?.replicas),
        members,
        step,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;

    const B: &str = "b";

    fn set(templates: &[(&str, Option<&str>)]) -> StatefulSet {
        let templates: Vec<_> = templates
            .iter()
            .map(|(name, class)| {
                json!({"metadata": {"name": name}, "spec": {"storageClassName": class, "accessModes": ["ReadWriteOnce"]}})
            })
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": "db", "namespace": "apps", "uid": "set-uid"},
            "spec": {
                "replicas": 3,
                "serviceName": "db",
                "selector": {"matchLabels": {"app": "db"}},
                "template": {"metadata": {"labels": {"app": "db"}}},
                "volumeClaimTemplates": templates,
            }
        }))
        .unwrap()
    }

    fn claim(name: &str, class: Option<&str>) -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "apps", "uid": format!("{name}-uid")},
            "spec": {"storageClassName": class},
        }))
        .unwrap()
    }

    fn deleting(mut claim: PersistentVolumeClaim) -> PersistentVolumeClaim {
        claim.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        claim
    }

    fn target() -> Target {
        Target::Class(B.into())
    }

    fn facts<'a>(
        set: Option<&'a StatefulSet>,
        template: Option<&'a str>,
        claims: &'a [PersistentVolumeClaim],
        unfinished: &'a [String],
        target: &'a Target,
    ) -> Facts<'a> {
        Facts {
            name: "db",
            set,
            template,
            claims,
            unfinished,
            target,
        }
    }

    fn states(plan: &SetPlan) -> Vec<(&str, &MemberState)> {
        plan.members
            .iter()
            .map(|m| (m.name.as_str(), &m.state))
            .collect()
    }

    #[test]
    fn ordinals_follow_the_controllers_names() {
        assert_eq!(ordinal("data-db-0", "data", "db"), Some(0));
        assert_eq!(ordinal("data-db-12", "data", "db"), Some(12));
        for other in [
            "data-db-",
            "data-db-01",
            "data-db-1a",
            "data-db--1",
            "data-dbx-1",
            "logs-db-1",
            "data-db-1-x",
            "data-db-99999999999",
            "xdata-db-1",
        ] {
            assert_eq!(ordinal(other, "data", "db"), None, "{other}");
        }
        assert_eq!(ordinal("my-data-my-db-3", "my-data", "my-db"), Some(3));
        assert!(named_after("data-db-0", "db"));
        assert!(named_after("my-data-db-7", "db"));
        assert!(!named_after("db-0", "db"));
        assert!(!named_after("-db-0", "db"));
        assert!(!named_after("data-db-00", "db"));
        assert!(!named_after("data-web-0", "db"));
    }

    #[test]
    fn the_template_is_the_given_one_or_the_only_one() {
        let one = set(&[("data", Some("a"))]);
        let two = set(&[("data", Some("a")), ("logs", Some("a"))]);
        assert_eq!(
            template_name("db", Some(&one), None),
            Ok(Some("data".into()))
        );
        assert_eq!(
            template_name("db", Some(&two), Some("logs")),
            Ok(Some("logs".into()))
        );
        assert!(matches!(
            template_name("db", Some(&two), None),
            Err(SetRefusal::WhichTemplate { .. })
        ));
        assert!(matches!(
            template_name("db", Some(&one), Some("logs")),
            Err(SetRefusal::NoSuchTemplate { .. })
        ));
        assert!(matches!(
            template_name("db", Some(&set(&[])), None),
            Err(SetRefusal::NoTemplates { .. })
        ));
        assert_eq!(
            template_name("db", None, Some("data")),
            Ok(Some("data".into()))
        );
        assert_eq!(template_name("db", None, None), Ok(None));
        let error = template_name("db", Some(&two), None)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("--template (VOLUME_CLAIM_TEMPLATE)"),
            "{error}"
        );
    }

    #[test]
    fn every_ordinal_belongs_also_those_a_scale_down_left() {
        let sts = set(&[("data", Some("a"))]);
        let claims = [
            claim("data-db-3", Some("a")),
            claim("data-db-0", Some("a")),
            claim("data-db-1", Some(B)),
            claim("logs-db-0", Some("a")),
            claim("data-web-0", Some("a")),
            claim("other", Some("a")),
        ];
        let target = target();
        let plan = plan(facts(Some(&sts), None, &claims, &[], &target)).unwrap();
        assert_eq!(plan.template, "data");
        assert_eq!(plan.template_class, TemplateClass::Class("a".into()));
        assert_eq!(plan.replicas, Some(3));
        let moving = MemberState::Move { class: "a".into() };
        assert_eq!(
            states(&plan),
            [
                ("data-db-0", &moving),
                ("data-db-1", &MemberState::OnTarget),
                ("data-db-3", &moving),
            ]
        );
        assert_eq!(plan.moving(), ["data-db-0", "data-db-3"]);
        assert_eq!(
            plan.step,
            Some(SetStep::Orphan {
                uid: "set-uid".into()
            })
        );
    }

    #[test]
    fn nothing_to_do_when_the_template_and_every_claim_are_on_the_class() {
        let sts = set(&[("data", Some(B))]);
        let claims = [claim("data-db-0", Some(B)), claim("data-db-5", Some(B))];
        let target = target();
        let plan = plan(facts(Some(&sts), None, &claims, &[], &target)).unwrap();
        assert_eq!(plan.step, None);
        assert!(plan.moving().is_empty());
        assert_eq!(
            plan.nothing_reason(),
            "the template and every claim are on the desired class"
        );
    }

    #[test]
    fn the_template_alone_or_a_claim_alone_is_work() {
        let target = target();
        // The template on the old class, every claim on the new one: the StatefulSet goes.
        let old_template = set(&[("data", Some("a"))]);
        let on_b = [claim("data-db-0", Some(B))];
        let plan = plan(facts(Some(&old_template), None, &on_b, &[], &target)).unwrap();
        assert!(matches!(plan.step, Some(SetStep::Orphan { .. })));
        assert!(plan.moving().is_empty());
        // A template without storageClassName cannot be given one: the StatefulSet goes.
        let unset = set(&[("data", None)]);
        let plan = super::plan(facts(Some(&unset), None, &on_b, &[], &target)).unwrap();
        assert_eq!(plan.template_class, TemplateClass::Unset);
        assert!(matches!(plan.step, Some(SetStep::Orphan { .. })));
        // The template already on the new class, one claim left on the old one.
        let new_template = set(&[("data", Some(B))]);
        let mixed = [claim("data-db-0", Some(B)), claim("data-db-1", Some("a"))];
        let plan = super::plan(facts(Some(&new_template), None, &mixed, &[], &target)).unwrap();
        assert!(matches!(plan.step, Some(SetStep::Orphan { .. })));
        assert_eq!(plan.moving(), ["data-db-1"]);
    }

    #[test]
    fn a_rerun_finds_the_claims_without_the_statefulset() {
        let target = target();
        let claims = [
            claim("data-db-0", Some(B)),
            deleting(claim("data-db-1", Some("a"))),
            claim("data-db-2", Some("a")),
        ];
        let unfinished = ["data-db-3".to_owned(), "elsewhere".to_owned()];
        let plan = plan(facts(None, Some("data"), &claims, &unfinished, &target)).unwrap();
        assert_eq!(plan.template_class, TemplateClass::Unknown);
        assert_eq!(plan.step, Some(SetStep::Absent));
        assert_eq!(plan.moving(), ["data-db-1", "data-db-2", "data-db-3"]);
        assert_eq!(plan.members[3].state, MemberState::Unfinished);
        assert_eq!(plan.replicas, None);
        // Everything moved: nothing left, the StatefulSet still absent.
        let moved = [claim("data-db-0", Some(B))];
        let plan = super::plan(facts(None, Some("data"), &moved, &[], &target)).unwrap();
        assert_eq!(plan.step, None);
        assert!(
            plan.nothing_reason().contains("absent"),
            "{}",
            plan.nothing_reason()
        );
    }

    #[test]
    fn without_the_statefulset_and_its_template_claims_named_after_it_are_refused() {
        let target = target();
        let claims = [claim("data-db-1", Some("a")), claim("unrelated", Some("a"))];
        let refusal = plan(facts(None, None, &claims, &[], &target)).unwrap_err();
        assert_eq!(
            refusal,
            SetRefusal::TemplateUnknown {
                set: "db".into(),
                claims: vec!["data-db-1".into()]
            }
        );
        // No claim named after it: a fresh install, nothing to do.
        let plan = super::plan(facts(None, None, &claims[1..], &[], &target)).unwrap();
        assert_eq!(plan.step, None);
        assert!(plan.members.is_empty());
    }

    #[test]
    fn a_statefulset_being_deleted_is_waited_out() {
        let mut sts = set(&[("data", Some("a"))]);
        sts.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        let target = target();
        let claims = [claim("data-db-0", Some("a"))];
        let plan = plan(facts(Some(&sts), None, &claims, &[], &target)).unwrap();
        assert_eq!(
            plan.step,
            Some(SetStep::AwaitGone {
                uid: "set-uid".into()
            })
        );
    }

    #[test]
    fn claims_without_a_class_are_left_alone_and_no_class_is_a_target() {
        let sts = set(&[("data", Some(""))]);
        let claims = [claim("data-db-0", None), claim("data-db-1", Some(""))];
        let plan = plan(facts(Some(&sts), None, &claims, &[], &Target::NoClass)).unwrap();
        assert_eq!(
            states(&plan),
            [
                ("data-db-0", &MemberState::NilClass),
                ("data-db-1", &MemberState::OnTarget)
            ]
        );
        assert_eq!(plan.step, None);
    }
}
