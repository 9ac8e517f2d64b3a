//! The desired storage class and how it is resolved, the way the apiserver resolves a default.

use k8s_openapi::api::storage::v1::StorageClass;
use kube::ResourceExt;

const DEFAULT_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";
const DEFAULT_ANNOTATION_BETA: &str = "storageclass.beta.kubernetes.io/is-default-class";

/// What the chart asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Desired {
    /// A StorageClass by name; it must exist before anything is changed.
    Named(String),
    /// Unset or empty: whatever class the cluster's default is.
    Default,
    /// `-`: explicitly no class, `storageClassName: ""`.
    NoClass,
}

impl Desired {
    pub fn parse(value: Option<&str>) -> Self {
        match value.map(str::trim) {
            None | Some("") => Desired::Default,
            Some("-") => Desired::NoClass,
            Some(name) => Desired::Named(name.to_owned()),
        }
    }
}

/// The class a claim must end up on, once the default is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A named class.
    Class(String),
    /// No class: `storageClassName: ""`.
    NoClass,
}

impl Target {
    /// The value of `spec.storageClassName` that a claim on this target carries.
    pub fn class_name(&self) -> &str {
        match self {
            Target::Class(name) => name,
            Target::NoClass => "",
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Class(name) => write!(f, "class {name:?}"),
            Target::NoClass => f.write_str("no class (\"\")"),
        }
    }
}

/// Whether a class is marked as the default, by the GA or the beta annotation.
pub fn is_default(class: &StorageClass) -> bool {
    let annotations = class.annotations();
    [DEFAULT_ANNOTATION, DEFAULT_ANNOTATION_BETA]
        .iter()
        .any(|key| annotations.get(*key).is_some_and(|v| v == "true"))
}

/// The cluster's default class: of the classes marked default, the newest, then the first by name,
/// as the DefaultStorageClass admission plugin picks it.
pub fn default_class(classes: &[StorageClass]) -> Option<&StorageClass> {
    classes.iter().filter(|c| is_default(c)).min_by(|a, b| {
        let created = |c: &StorageClass| c.metadata.creation_timestamp.as_ref().map(|t| t.0);
        created(b)
            .cmp(&created(a))
            .then_with(|| a.name_any().cmp(&b.name_any()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use k8s_openapi::jiff::Timestamp;

    fn class(name: &str, created: i64, annotation: Option<(&str, &str)>) -> StorageClass {
        StorageClass {
            metadata: ObjectMeta {
                name: Some(name.into()),
                creation_timestamp: Some(Time(Timestamp::from_second(created).unwrap())),
                annotations: annotation.map(|(k, v)| [(k.to_owned(), v.to_owned())].into()),
                ..Default::default()
            },
            provisioner: "example.com/none".into(),
            ..Default::default()
        }
    }

    #[test]
    fn parse_desired() {
        assert_eq!(Desired::parse(None), Desired::Default);
        assert_eq!(Desired::parse(Some(" ")), Desired::Default);
        assert_eq!(Desired::parse(Some("-")), Desired::NoClass);
        assert_eq!(Desired::parse(Some("fast")), Desired::Named("fast".into()));
    }

    #[test]
    fn no_default() {
        let classes = [
            class("a", 1, None),
            class("b", 2, Some((DEFAULT_ANNOTATION, "false"))),
        ];
        assert!(default_class(&classes).is_none());
    }

    #[test]
    fn beta_annotation_counts() {
        let classes = [
            class("a", 1, None),
            class("b", 2, Some((DEFAULT_ANNOTATION_BETA, "true"))),
        ];
        assert_eq!(default_class(&classes).unwrap().name_any(), "b");
    }

    #[test]
    fn newest_default_wins_then_name() {
        let classes = [
            class("old", 1, Some((DEFAULT_ANNOTATION, "true"))),
            class("new-b", 5, Some((DEFAULT_ANNOTATION, "true"))),
            class("new-a", 5, Some((DEFAULT_ANNOTATION_BETA, "true"))),
            class("newest-not-default", 9, None),
        ];
        assert_eq!(default_class(&classes).unwrap().name_any(), "new-a");
    }

    #[test]
    fn target_class_name() {
        assert_eq!(Target::NoClass.class_name(), "");
        assert_eq!(Target::Class("b".into()).to_string(), "class \"b\"");
    }
}
