//! Command line and environment, in one place, and the validated settings made from them.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{Parser, Subcommand, ValueEnum};

use crate::class::Desired;
use crate::error::Error;
use crate::validate;

const AFTER_HELP: &str = "\
The desired class: a StorageClass name; '-' for no class (storageClassName: \"\"); empty or unset:
nothing to do (Helm leaves an omitted storageClassName alone; name the default class to move to it).

Exit status:
  0  done, or nothing to do
  1  internal error
  2  bad input (nothing was sent to the API)
  3  refused for safety (nothing was changed)
  4  Kubernetes API error: unreachable, unauthorized, forbidden (the denied verb and resource are named); nothing was changed
  5  timed out, or stopped (deadline, SIGTERM), before anything was changed
  6  stopped part-way: something was changed, then a failure, refusal, timeout or signal; a rerun finishes it
  7  copy: an entry could not be copied, or the verification found a difference
With several claims, the status is the highest of theirs.

Script-compatible setting: --in-use force --delete-retained-pv --strip-all-finalizers";

/// Lets `helm upgrade` change a PersistentVolumeClaim's storage class: deletes the claim (and
/// handles its volume by its reclaim policy) when its class differs from the desired one, so the
/// chart can recreate it.
#[derive(Debug, Parser)]
#[command(name = "storageclass-migrate", version, after_help = AFTER_HELP)]
pub struct Args {
    /// Without a command: the hook, as the flags and variables below say
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Claim name, or several separated by commas
    #[arg(long = "pvc", env = "PVC_NAME", value_name = "NAME[,NAME...]")]
    pub pvc: Option<String>,

    /// Label selector picking claims of the release, e.g. app=db,tier in (a,b)
    #[arg(long, short = 'l', env = "PVC_SELECTOR", value_name = "SELECTOR")]
    pub selector: Option<String>,

    /// StatefulSet whose volumeClaimTemplate moves to the desired class, with every claim made
    /// from it (also those a scale-down left); the StatefulSet is deleted, orphaning its pods and
    /// claims, for Helm to create again with the new template
    #[arg(long = "statefulset", env = "STATEFULSET_NAME", value_name = "NAME")]
    pub statefulset: Option<String>,

    /// With --statefulset: the volumeClaimTemplate [default: the StatefulSet's only one; needed
    /// when it has several, or to finish a run interrupted after the StatefulSet was deleted]
    #[arg(long = "template", env = "VOLUME_CLAIM_TEMPLATE", value_name = "NAME")]
    pub template: Option<String>,

    /// Helm release whose claims a selector may pick (its meta.helm.sh annotations must name it)
    #[arg(long, env = "RELEASE_NAME", value_name = "NAME")]
    pub release: Option<String>,

    /// Namespace of the claims [default: the service account's, else the kubeconfig context's]
    #[arg(long, short = 'n', env = "PVC_NAMESPACE", value_name = "NAMESPACE")]
    pub namespace: Option<String>,

    /// Desired storage class: a name, '-' for no class; unset or empty: nothing to do
    #[arg(
        long = "storage-class",
        env = "DESIRED_STORAGECLASS",
        value_name = "CLASS"
    )]
    pub storage_class: Option<String>,

    /// What to do when scheduled pods use a claim
    #[arg(long = "in-use", env = "IN_USE_POLICY", value_name = "POLICY", value_enum, default_value_t = InUsePolicy::Evict)]
    pub in_use: InUsePolicy,

    /// Delete a volume whose reclaim policy is Retain (its data is otherwise kept for recovery)
    #[arg(long, env = "DELETE_RETAINED_PV", value_parser = BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    pub delete_retained_pv: bool,

    /// Strip every finalizer of the claim and its volume, as the kubectl script means to (may leak the backing volume)
    #[arg(long, env = "STRIP_ALL_FINALIZERS", value_parser = BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    pub strip_all_finalizers: bool,

    /// What becomes of the data: delete (the claim is recreated empty on the new class), copy
    /// (copied to a volume of the new class, which the claim is recreated on), snapshot
    /// (restored on the new class from a VolumeSnapshot of the old volume; same CSI driver
    /// only) or auto (snapshot where it can, else copy)
    #[arg(long, env = "DATA_POLICY", value_name = "POLICY", value_enum, default_value_t = DataPolicy::Delete)]
    pub data: DataPolicy,

    /// With --data copy or auto: the image the copy Job runs (this binary's own image, FROM scratch)
    #[arg(long, env = "COPY_IMAGE", value_name = "IMAGE")]
    pub copy_image: Option<String>,

    /// With --data copy or auto: run the copy as this uid instead of root with CHOWN, DAC_OVERRIDE,
    /// FOWNER and FSETID (for namespaces that enforce the restricted Pod Security level)
    #[arg(long, env = "COPY_AS_USER", value_name = "UID", value_parser = clap::value_parser!(i64).range(1..=2147483647))]
    pub copy_as_user: Option<i64>,

    /// With --data copy or auto: Secrets (comma-separated names) the copy pod pulls its image with
    #[arg(long, env = "COPY_IMAGE_PULL_SECRETS", value_name = "NAME[,NAME...]")]
    pub copy_image_pull_secrets: Option<String>,

    /// With --data copy or auto: verify the copy (sizes and a content hash) before the claim moves to it
    #[arg(long, env = "COPY_VERIFY", value_parser = BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "true", default_value = "true")]
    pub copy_verify: bool,

    /// With --data copy, snapshot or auto: once the claim is bound to the verified copy (or its
    /// snapshot is ready), give the old volume back its reclaim policy (Delete: its provisioner
    /// deletes it); otherwise it is kept, Retain
    #[arg(long, env = "DELETE_OLD_VOLUME", value_parser = BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    pub delete_old_volume: bool,

    /// With --data snapshot or auto: the VolumeSnapshotClass of the snapshot [default: the one
    /// marked default for the old volume's driver]
    #[arg(long, env = "SNAPSHOT_CLASS", value_name = "NAME")]
    pub snapshot_class: Option<String>,

    /// With --data snapshot or auto: delete the snapshot once the claim made from it is Bound;
    /// otherwise it is kept as a backup, labelled with the claim and release
    #[arg(long, env = "DELETE_SNAPSHOT", value_parser = BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    pub delete_snapshot: bool,

    /// Only read and print the plan; deletes and patches are sent with server-side dry run
    #[arg(long, env = "DRY_RUN", value_parser = BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    pub dry_run: bool,

    /// Longest wait for each step (claim gone, volume gone), e.g. 60s, 2m
    #[arg(long, env = "WAIT_TIMEOUT", value_name = "DURATION", default_value = "60s", value_parser = parse_timeout)]
    pub timeout: Duration,

    /// Deadline of the whole run, e.g. 4m; at it the run stops and reports what it did and left
    #[arg(long, env = "DEADLINE", value_name = "DURATION", default_value = "10m", value_parser = parse_timeout)]
    pub deadline: Duration,

    /// How many claims are handled at once
    #[arg(long, env = "CONCURRENCY", value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrency: u16,

    /// Path to a kubeconfig [default: $KUBECONFIG, ~/.kube/config, else in-cluster]
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// Kubeconfig context to use [default: the current context]
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,

    /// Log format on stderr; filter with RUST_LOG
    #[arg(long, global = true, env = "LOG_FORMAT", value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Summary on stdout: one line of text per claim, or one JSON object per claim
    #[arg(long, global = true, env = "SUMMARY_FORMAT", value_name = "FORMAT", value_enum, default_value_t = SummaryFormat::Text)]
    pub summary_format: SummaryFormat,

    /// File that receives the summary for `kubectl describe pod` (best effort, at most 4 KiB)
    #[arg(
        long,
        global = true,
        env = "TERMINATION_LOG",
        value_name = "PATH",
        default_value = "/dev/termination-log"
    )]
    pub termination_log: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Copy a directory tree into another, keeping what a volume's data needs, then verify it
    #[command(after_help = COPY_AFTER_HELP)]
    Copy(CopyArgs),
}

const COPY_AFTER_HELP: &str = "\
Keeps regular files, directories, symlinks (never followed), hard links, owners and groups (numeric),
modes with setuid/setgid/sticky, access and modification times, sparse regions and extended
attributes (a target that refuses one: a warning). Devices, FIFOs and sockets are skipped with a
warning. A rerun leaves alone the files already identical (kind, size, modification time, mode,
owner). Files are written under a hidden name and renamed into place once complete.

Exit status:
  0  copied (and verified)
  1  internal error
  2  bad input: a directory is missing, not a directory, or inside the other; nothing was written
  7  incomplete: an entry could not be copied (each is named in the log), or the verification
     found a difference; a rerun copies what is left";

/// `storageclass-migrate copy --from DIR --to DIR`
#[derive(Debug, Clone, clap::Args)]
pub struct CopyArgs {
    /// Directory to copy from (its contents and its own owner, mode and times)
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,

    /// Directory to copy into; made if absent
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,

    /// After copying, compare every entry (kind, size, mode, owner, times, symlink target,
    /// BLAKE3 of contents); --verify=false skips it
    #[arg(long, value_parser = BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "true", default_value = "true")]
    pub verify: bool,

    /// How often progress (files, bytes, rate) is logged, e.g. 5s
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_timeout)]
    pub progress_interval: Duration,

    /// Files copied (and hashed) at once
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub workers: u16,
}

impl CopyArgs {
    pub fn options(&self) -> crate::copy::Options {
        crate::copy::Options {
            from: self.from.clone(),
            to: self.to.clone(),
            verify: self.verify,
            progress_interval: self.progress_interval,
            workers: usize::from(self.workers),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InUsePolicy {
    /// Delete the claim, then evict the pods (PodDisruptionBudgets apply) and wait for the claim to go
    Evict,
    /// Delete the claim and strip kubernetes.io/pvc-protection while pods still mount it
    Force,
    /// Refuse, changing nothing
    Fail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DataPolicy {
    /// Delete the claim; Helm recreates it, empty, on the new class
    Delete,
    /// Copy the data to a volume of the new class and recreate the claim bound to it
    Copy,
    /// Snapshot the old volume and recreate the claim on the new class from the snapshot (the
    /// old volume's CSI driver must be the new class's provisioner)
    Snapshot,
    /// Snapshot where the driver allows it, else copy
    Auto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SummaryFormat {
    /// `<namespace>/<claim>: <result>: found ...; done: ...; left: ...`
    Text,
    /// `{"claim", "status", "result", "changed", "found", "done", "would", "left", ...}`
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn parse_timeout(value: &str) -> Result<Duration, String> {
    let parsed = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => humantime::parse_duration(value)
            .map_err(|e| format!("expected a positive duration such as 60s or 2m ({e})"))?,
    };
    if parsed.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(parsed)
}

/// How to act on the claims that need migrating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policies {
    pub in_use: InUsePolicy,
    pub delete_retained_pv: bool,
    pub strip_all_finalizers: bool,
    pub data: DataPolicy,
}

/// How the copy of `--data copy` runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopySettings {
    pub image: String,
    pub image_pull_secrets: Vec<String>,
    /// None: root with the capabilities the copy needs.
    pub as_user: Option<i64>,
    pub verify: bool,
}

/// How the data of `--data copy`, `snapshot` or `auto` is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeepSettings {
    /// Copy, Snapshot or Auto.
    pub policy: DataPolicy,
    /// Some with copy and auto.
    pub copy: Option<CopySettings>,
    /// `--snapshot-class`, when given.
    pub snapshot_class: Option<String>,
    pub delete_snapshot: bool,
    pub delete_old_volume: bool,
}

/// The StatefulSet of a `--statefulset` run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetTarget {
    pub name: String,
    /// `--template`, when given.
    pub template: Option<String>,
}

/// Where to find the cluster.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
}

/// Settings after validation: every name is known to be well-formed.
#[derive(Debug, Clone)]
pub struct Config {
    pub names: Vec<String>,
    pub selector: Option<String>,
    pub release: Option<String>,
    /// Some with `--statefulset`: the claims are the StatefulSet's.
    pub statefulset: Option<SetTarget>,
    pub namespace: Option<String>,
    pub desired: Desired,
    pub policies: Policies,
    /// Some unless `--data delete`.
    pub keep: Option<KeepSettings>,
    pub dry_run: bool,
    pub timeout: Duration,
    pub deadline: Duration,
    pub concurrency: usize,
    pub connection: Connection,
}

impl Args {
    pub fn config(&self) -> Result<Config, Error> {
        let names = split_names(self.pvc.as_deref())?;
        let selector = non_empty(self.selector.as_deref());
        if let Some(selector) = &selector {
            validate::label_selector(selector).map_err(Error::Input)?;
        }
        let statefulset = self.statefulset_target()?;
        if statefulset.is_some() && (!names.is_empty() || selector.is_some()) {
            return Err(Error::Input(
                "STATEFULSET_NAME (--statefulset) finds the claims by the StatefulSet's template: leave PVC_NAME and PVC_SELECTOR unset".into(),
            ));
        }
        if names.is_empty() && selector.is_none() && statefulset.is_none() {
            return Err(Error::Input(
                "no claim given: set PVC_NAME (or --pvc), PVC_SELECTOR (or --selector) or STATEFULSET_NAME (or --statefulset)".into(),
            ));
        }
        let release = non_empty(self.release.as_deref());
        if let Some(release) = &release {
            validate::dns_subdomain("release name", release).map_err(Error::Input)?;
        }
        if selector.is_some() && release.is_none() {
            return Err(Error::Input(
                "a selector picks only the claims of a Helm release: set RELEASE_NAME (or --release)"
                    .into(),
            ));
        }
        let namespace = non_empty(self.namespace.as_deref());
        if let Some(namespace) = &namespace {
            validate::dns_label("namespace", namespace).map_err(Error::Input)?;
        }
        let desired = Desired::parse(self.storage_class.as_deref());
        if let Desired::Named(class) = &desired {
            validate::dns_subdomain("storage class", class).map_err(Error::Input)?;
        }
        let keep = self.keep_settings()?;
        if let Some(context) = &self.context
            && context.trim().is_empty()
        {
            return Err(Error::Input("--context must not be empty".into()));
        }
        Ok(Config {
            names,
            selector,
            release,
            statefulset,
            namespace,
            desired,
            policies: Policies {
                in_use: self.in_use,
                delete_retained_pv: self.delete_retained_pv,
                strip_all_finalizers: self.strip_all_finalizers,
                data: self.data,
            },
            keep,
            dry_run: self.dry_run,
            timeout: self.timeout,
            deadline: self.deadline,
            concurrency: usize::from(self.concurrency),
            connection: Connection {
                kubeconfig: self.kubeconfig.clone(),
                context: self.context.clone(),
            },
        })
    }
}

impl Args {
    fn statefulset_target(&self) -> Result<Option<SetTarget>, Error> {
        let template = non_empty(self.template.as_deref());
        let Some(name) = non_empty(self.statefulset.as_deref()) else {
            if template.is_some() {
                return Err(Error::Input(
                    "VOLUME_CLAIM_TEMPLATE (--template) applies only with STATEFULSET_NAME (--statefulset)".into(),
                ));
            }
            return Ok(None);
        };
        validate::dns_subdomain("StatefulSet name", &name).map_err(Error::Input)?;
        if let Some(template) = &template {
            validate::dns_label("volumeClaimTemplate name", template).map_err(Error::Input)?;
        }
        Ok(Some(SetTarget { name, template }))
    }

    fn keep_settings(&self) -> Result<Option<KeepSettings>, Error> {
        let policy = self.data;
        let copies = matches!(policy, DataPolicy::Copy | DataPolicy::Auto);
        let snapshots = matches!(policy, DataPolicy::Snapshot | DataPolicy::Auto);
        let misplaced = [
            (
                !copies && self.copy_image.is_some(),
                "COPY_IMAGE",
                "copy or auto",
            ),
            (
                !copies && self.copy_as_user.is_some(),
                "COPY_AS_USER",
                "copy or auto",
            ),
            (
                !copies && self.copy_image_pull_secrets.is_some(),
                "COPY_IMAGE_PULL_SECRETS",
                "copy or auto",
            ),
            (
                policy == DataPolicy::Delete && self.delete_old_volume,
                "DELETE_OLD_VOLUME",
                "copy, snapshot or auto",
            ),
            (
                !snapshots && self.snapshot_class.is_some(),
                "SNAPSHOT_CLASS",
                "snapshot or auto",
            ),
            (
                !snapshots && self.delete_snapshot,
                "DELETE_SNAPSHOT",
                "snapshot or auto",
            ),
        ];
        if let Some((_, name, policies)) = misplaced.iter().find(|(set, ..)| *set) {
            return Err(Error::Input(format!(
                "{name} applies only with DATA_POLICY={policies} (--data)"
            )));
        }
        if policy == DataPolicy::Delete {
            return Ok(None);
        }
        let data = policy.to_possible_value().expect("no value is skipped");
        let data = data.get_name();
        if self.strip_all_finalizers || self.delete_retained_pv {
            return Err(Error::Input(format!(
                "--data {data} keeps the old volume until the data is safe on the new class: it cannot be combined with --strip-all-finalizers or --delete-retained-pv (use --delete-old-volume)"
            )));
        }
        let snapshot_class = non_empty(self.snapshot_class.as_deref());
        if let Some(class) = &snapshot_class {
            validate::dns_subdomain("VolumeSnapshotClass", class).map_err(Error::Input)?;
        }
        let copy = if copies {
            Some(self.copy_settings(data)?)
        } else {
            None
        };
        Ok(Some(KeepSettings {
            policy,
            copy,
            snapshot_class,
            delete_snapshot: self.delete_snapshot,
            delete_old_volume: self.delete_old_volume,
        }))
    }

    fn copy_settings(&self, data: &str) -> Result<CopySettings, Error> {
        let Some(image) = non_empty(self.copy_image.as_deref()) else {
            return Err(Error::Input(format!(
                "--data {data} needs the image to run the copy in: set COPY_IMAGE (or --copy-image)"
            )));
        };
        if image.trim() != image || image.contains(char::is_whitespace) {
            return Err(Error::Input(format!(
                "copy image {image:?} contains spaces"
            )));
        }
        let mut image_pull_secrets = Vec::new();
        if let Some(names) = non_empty(self.copy_image_pull_secrets.as_deref()) {
            for name in names.split(',') {
                validate::dns_subdomain("image pull secret", name).map_err(Error::Input)?;
                image_pull_secrets.push(name.to_owned());
            }
        }
        Ok(CopySettings {
            image,
            image_pull_secrets,
            as_user: self.copy_as_user,
            verify: self.copy_verify,
        })
    }
}

/// The value as given, when there is one; values are never trimmed, so a name with spaces is
/// bad input rather than quietly another name.
fn non_empty(value: Option<&str>) -> Option<String> {
    value.filter(|v| !v.is_empty()).map(str::to_owned)
}

fn split_names(value: Option<&str>) -> Result<Vec<String>, Error> {
    let Some(value) = non_empty(value) else {
        return Ok(Vec::new());
    };
    let mut names: Vec<String> = Vec::new();
    for name in value.split(',') {
        if name.is_empty() {
            return Err(Error::Input(format!(
                "claim list {value:?} has an empty name"
            )));
        }
        validate::dns_subdomain("claim name", name).map_err(Error::Input)?;
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("storageclass-migrate").chain(args.iter().copied()))
    }

    #[test]
    fn names_are_split_and_deduplicated() {
        let config = parse(&["--pvc", "a,b,a", "--storage-class", "fast"])
            .unwrap()
            .config()
            .unwrap();
        assert_eq!(config.names, ["a", "b"]);
        assert_eq!(config.desired, Desired::Named("fast".into()));
    }

    #[test]
    fn values_are_never_trimmed() {
        for (flag, value, quoted) in [
            ("--pvc", " data", "\" data\""),
            ("--pvc", "a, b", "\" b\""),
            ("--storage-class", " fast", "\" fast\""),
            ("--storage-class", " -", "\" -\""),
            ("--storage-class", " ", "\" \""),
            ("-n", "apps ", "\"apps \""),
        ] {
            let mut args = vec!["--pvc", "data", flag, value];
            if flag == "--pvc" {
                args.drain(..2);
            }
            let error = parse(&args).unwrap().config().unwrap_err();
            assert!(
                matches!(error, Error::Input(_)),
                "{flag} {value:?}: {error}"
            );
            assert!(
                error.to_string().contains(quoted),
                "{flag} {value:?}: {error}"
            );
        }
    }

    #[test]
    fn bad_names_are_input_errors() {
        for pvc in ["a,,b", "Data", "a_b"] {
            let error = parse(&["--pvc", pvc]).unwrap().config().unwrap_err();
            assert!(matches!(error, Error::Input(_)), "{pvc}: {error}");
        }
        let error = parse(&["--pvc", "a", "-n", "Bad"])
            .unwrap()
            .config()
            .unwrap_err();
        assert!(
            error.to_string().starts_with("namespace \"Bad\""),
            "{error}"
        );
        let error = parse(&["--pvc", "a", "--storage-class", "no_such"])
            .unwrap()
            .config()
            .unwrap_err();
        assert!(
            error.to_string().starts_with("storage class \"no_such\""),
            "{error}"
        );
        let error = parse(&["--selector", "app in x"])
            .unwrap()
            .config()
            .unwrap_err();
        assert!(
            error.to_string().starts_with("invalid label selector"),
            "{error}"
        );
    }

    #[test]
    fn a_claim_or_selector_is_required() {
        let error = parse(&[]).unwrap().config().unwrap_err();
        assert!(error.to_string().starts_with("no claim given"), "{error}");
        let error = parse(&["-l", "app=db"]).unwrap().config().unwrap_err();
        assert!(error.to_string().contains("RELEASE_NAME"), "{error}");
        let config = parse(&["-l", "app=db", "--release", "shop"])
            .unwrap()
            .config()
            .unwrap();
        assert_eq!(config.release.as_deref(), Some("shop"));
    }

    #[test]
    fn desired_class_forms() {
        let desired = |v: &[&str]| {
            parse(&[&["--pvc", "a"], v].concat())
                .unwrap()
                .config()
                .unwrap()
                .desired
        };
        assert_eq!(desired(&[]), Desired::Unset);
        assert_eq!(desired(&["--storage-class", ""]), Desired::Unset);
        assert_eq!(desired(&["--storage-class", "-"]), Desired::NoClass);
    }

    #[test]
    fn timeouts() {
        assert_eq!(
            parse(&["--timeout", "90"]).unwrap().timeout,
            Duration::from_secs(90)
        );
        assert_eq!(
            parse(&["--timeout", "2m"]).unwrap().timeout,
            Duration::from_secs(120)
        );
        for bad in ["-5s", "0", "soon", "0s"] {
            assert!(parse(&["--timeout", bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn boolean_flags_take_values() {
        let args = parse(&[
            "--dry-run",
            "--delete-retained-pv=false",
            "--strip-all-finalizers=yes",
        ])
        .unwrap();
        assert!(args.dry_run);
        assert!(!args.delete_retained_pv);
        assert!(args.strip_all_finalizers);
    }

    #[test]
    fn without_a_command_the_hook_flags_work_as_before() {
        let args = parse(&["--pvc", "data", "--storage-class", "fast"]).unwrap();
        assert!(args.command.is_none());
        assert_eq!(args.pvc.as_deref(), Some("data"));
    }

    #[test]
    fn data_copy_settings() {
        let config = |v: &[&str]| parse(&[&["--pvc", "a"], v].concat()).unwrap().config();
        assert_eq!(config(&[]).unwrap().keep, None);
        let keep = config(&[
            "--data",
            "copy",
            "--copy-image",
            "img:1",
            "--copy-image-pull-secrets",
            "a,b",
            "--copy-as-user",
            "1000",
        ])
        .unwrap()
        .keep
        .unwrap();
        assert!(!keep.delete_old_volume && !keep.delete_snapshot);
        let copy = keep.copy.unwrap();
        assert_eq!(copy.image, "img:1");
        assert_eq!(copy.image_pull_secrets, ["a", "b"]);
        assert_eq!(copy.as_user, Some(1000));
        assert!(copy.verify);
        let bad = |v: &[&str]| config(v).unwrap_err().to_string();
        let copy_with = |v: &[&str]| bad(&[&["--data", "copy", "--copy-image", "i"], v].concat());
        assert!(bad(&["--data", "copy"]).contains("COPY_IMAGE"));
        assert!(bad(&["--copy-image", "img:1"]).contains("only with DATA_POLICY=copy"));
        assert!(copy_with(&["--delete-retained-pv"]).contains("cannot be combined"));
        assert!(copy_with(&["--copy-image-pull-secrets", "a,"]).contains("image pull secret"));
        assert!(parse(&["--copy-as-user", "0"]).is_err());
    }

    #[test]
    fn data_snapshot_and_auto_settings() {
        let config = |v: &[&str]| parse(&[&["--pvc", "a"], v].concat()).unwrap().config();
        let keep = config(&[
            "--data",
            "snapshot",
            "--snapshot-class",
            "fast-snaps",
            "--delete-snapshot",
            "--delete-old-volume",
        ])
        .unwrap()
        .keep
        .unwrap();
        assert_eq!(keep.policy, DataPolicy::Snapshot);
        assert_eq!(keep.copy, None);
        assert_eq!(keep.snapshot_class.as_deref(), Some("fast-snaps"));
        assert!(keep.delete_snapshot && keep.delete_old_volume);
        let bad = |v: &[&str]| config(v).unwrap_err().to_string();
        assert!(bad(&["--data", "auto"]).contains("--data auto needs the image"));
        let auto = config(&["--data", "auto", "--copy-image", "i"])
            .unwrap()
            .keep
            .unwrap();
        assert_eq!(auto.copy.unwrap().image, "i");
        assert!(bad(&["--snapshot-class", "s"]).contains("SNAPSHOT_CLASS applies only"));
        assert!(
            bad(&["--data", "copy", "--copy-image", "i", "--delete-snapshot"])
                .contains("DELETE_SNAPSHOT applies only with DATA_POLICY=snapshot or auto")
        );
        assert!(bad(&["--data", "snapshot", "--copy-image", "i"]).contains("COPY_IMAGE"));
        assert!(
            bad(&["--data", "snapshot", "--snapshot-class", "Bad_Name"])
                .contains("VolumeSnapshotClass")
        );
        assert!(
            bad(&["--data", "snapshot", "--strip-all-finalizers"])
                .contains("--data snapshot keeps")
        );
        assert!(bad(&["--delete-old-volume"]).contains("copy, snapshot or auto"));
    }

    #[test]
    fn copy_command() {
        let args = parse(&[
            "copy",
            "--from",
            "/a",
            "--to",
            "/b",
            "--summary-format",
            "json",
        ])
        .unwrap();
        assert_eq!(args.summary_format, SummaryFormat::Json);
        let Some(Command::Copy(copy)) = args.command else {
            panic!("not the copy command");
        };
        let options = copy.options();
        assert_eq!(options.from, PathBuf::from("/a"));
        assert!(options.verify);
        assert_eq!(options.progress_interval, Duration::from_secs(5));
        let Some(Command::Copy(copy)) = parse(&[
            "copy",
            "--from=/a",
            "--to=/b",
            "--verify=false",
            "--progress-interval=1m",
        ])
        .unwrap()
        .command
        else {
            panic!("not the copy command");
        };
        assert!(!copy.verify);
        assert_eq!(copy.progress_interval, Duration::from_secs(60));
        assert!(parse(&["copy", "--from", "/a"]).is_err());
    }

    #[test]
    fn statefulset_settings() {
        let config = |v: &[&str]| parse(v).unwrap().config();
        let set = config(&["--statefulset", "db", "--storage-class", "b"])
            .unwrap()
            .statefulset
            .unwrap();
        assert_eq!(set.name, "db");
        assert_eq!(set.template, None);
        let set = config(&["--statefulset", "db", "--template", "data"])
            .unwrap()
            .statefulset
            .unwrap();
        assert_eq!(set.template.as_deref(), Some("data"));
        assert_eq!(config(&["--pvc", "a"]).unwrap().statefulset, None);
        let bad = |v: &[&str]| config(v).unwrap_err();
        for (args, fragment) in [
            (
                &["--template", "data", "--pvc", "a"][..],
                "only with STATEFULSET_NAME",
            ),
            (&["--statefulset", "db", "--pvc", "a"][..], "leave PVC_NAME"),
            (
                &["--statefulset", "db", "-l", "app=db", "--release", "r"][..],
                "leave PVC_NAME",
            ),
            (&["--statefulset", "Db"][..], "StatefulSet name \"Db\""),
            (
                &["--statefulset", "db", "--template", "a.b"][..],
                "volumeClaimTemplate name",
            ),
        ] {
            let error = bad(args);
            assert!(matches!(error, Error::Input(_)), "{args:?}: {error}");
            assert!(error.to_string().contains(fragment), "{args:?}: {error}");
        }
        assert!(bad(&[]).to_string().contains("STATEFULSET_NAME"));
    }

    #[test]
    fn policies() {
        assert_eq!(parse(&[]).unwrap().in_use, InUsePolicy::Evict);
        assert_eq!(
            parse(&["--in-use", "fail"]).unwrap().in_use,
            InUsePolicy::Fail
        );
        assert!(parse(&["--in-use", "later"]).is_err());
    }
}
