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

/// True when moving from class `old` to class `new` changes only `parameters`: same
/// provisioner, binding mode (unset is `Immediate`) and reclaim policy (unset is `Delete`). Such
/// a change (a disk type, IOPS, throughput) can often be made in place with a
/// VolumeAttributesClass (GA in Kubernetes 1.34), if the driver supports ModifyVolume, without
/// moving any data. Only a hint: the migration runs all the same.
pub fn only_parameters_differ(
    old: &k8s_openapi::api::storage::v1::StorageClass,
    new: &k8s_openapi::api::storage::v1::StorageClass,
) -> bool {
    let binding = |c: &k8s_openapi::api::storage::v1::StorageClass| {
        c.volume_binding_mode
            .clone()
            .unwrap_or_else(|| "Immediate".into())
    };
    let reclaim = |c: &k8s_openapi::api::storage::v1::StorageClass| {
        c.reclaim_policy.clone().unwrap_or_else(|| "Delete".into())
    };
    let params =
        |c: &k8s_openapi::api::storage::v1::StorageClass| c.parameters.clone().unwrap_or_default();
    old.provisioner == new.provisioner
        && binding(old) == binding(new)
        && reclaim(old) == reclaim(new)
        && params(old) != params(new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::storage::v1::StorageClass;

    fn class(provisioner: &str, reclaim: Option<&str>, params: &[(&str, &str)]) -> StorageClass {
        StorageClass {
            provisioner: provisioner.into(),
            reclaim_policy: reclaim.map(str::to_string),
            parameters: Some(
                params
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..StorageClass::default()
        }
    }

    #[test]
    fn volume_attributes_class_hint() {
        let gp2 = class("ebs.csi.aws.com", None, &[("type", "gp2")]);
        let gp3 = class("ebs.csi.aws.com", Some("Delete"), &[("type", "gp3")]);
        assert!(
            only_parameters_differ(&gp2, &gp3),
            "unset reclaim policy is Delete"
        );
        // Nothing differs: not a parameters-only change.
        assert!(!only_parameters_differ(&gp2, &gp2.clone()));
        // Another driver, reclaim policy or binding mode: a real move.
        let other = class("disk.csi.azure.com", None, &[("type", "gp3")]);
        assert!(!only_parameters_differ(&gp2, &other));
        let retain = class("ebs.csi.aws.com", Some("Retain"), &[("type", "gp3")]);
        assert!(!only_parameters_differ(&gp2, &retain));
        let mut late = gp3.clone();
        late.volume_binding_mode = Some("WaitForFirstConsumer".into());
        assert!(!only_parameters_differ(&gp2, &late));
        let mut immediate = gp3.clone();
        immediate.volume_binding_mode = Some("Immediate".into());
        assert!(
            only_parameters_differ(&gp2, &immediate),
            "unset binding is Immediate"
        );
    }

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
