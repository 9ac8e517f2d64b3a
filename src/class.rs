//! The desired storage class, as the chart asks for it.

/// What the chart asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Desired {
    /// A StorageClass by name; it must exist before anything is changed.
    Named(String),
    /// Unset or empty: the chart leaves `storageClassName` out, and Helm never changes a field
    /// that both its old and new manifests omit, so no claim needs to move. To move claims to
    /// the cluster's default class, name it.
    Unset,
    /// `-`: explicitly no class, `storageClassName: ""`.
    NoClass,
}

impl Desired {
    /// Taken as given: a value with surrounding spaces is a name, and fails validation.
    pub fn parse(value: Option<&str>) -> Self {
        match value {
            None | Some("") => Desired::Unset,
            Some("-") => Desired::NoClass,
            Some(name) => Desired::Named(name.to_owned()),
        }
    }

    /// The class claims must end up on; None when none is asked for.
    pub fn target(&self) -> Option<Target> {
        match self {
            Desired::Named(name) => Some(Target::Class(name.clone())),
            Desired::NoClass => Some(Target::NoClass),
            Desired::Unset => None,
        }
    }
}

/// The class a claim must end up on.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_desired() {
        assert_eq!(Desired::parse(None), Desired::Unset);
        assert_eq!(Desired::parse(Some("")), Desired::Unset);
        assert_eq!(Desired::parse(Some("-")), Desired::NoClass);
        assert_eq!(Desired::parse(Some("fast")), Desired::Named("fast".into()));
        assert_eq!(Desired::parse(Some(" -")), Desired::Named(" -".into()));
        assert_eq!(Desired::parse(Some(" ")), Desired::Named(" ".into()));
        assert_eq!(Desired::Unset.target(), None);
        assert_eq!(Desired::NoClass.target(), Some(Target::NoClass));
    }

    #[test]
    fn target_class_name() {
        assert_eq!(Target::NoClass.class_name(), "");
        assert_eq!(Target::Class("b".into()).to_string(), "class \"b\"");
    }
}
