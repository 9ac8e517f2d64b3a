//! One release of `examples/app` (or `examples/statefulset`) in a namespace of its own, installed
//! and upgraded with helm while a [`HookRunner`] runs its hook Job's pods: the scene of the
//! end-to-end tests.

use std::{io::Write, path::PathBuf, time::Duration};

use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams},
};
use serde_json::Value;

use crate::{
    Cluster,
    api::{get, wait_bound, wait_deleted},
    control_plane::{ControlPlane, client},
    helm::{Helm, HelmOut, SCRIPT_ENV, charts, script_path},
    hook_runner::{HookRun, HookRunner, How, RunnerOpts, say_once},
    namespace::{keep_namespaces, on_own_runtime},
    objects::{Class, Volume},
};

/// The tag scripts/build-image.sh gives the image: the version in the root Cargo.toml.
pub fn image_tag() -> String {
    let manifest = crate::control_plane::repo_root().join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .unwrap_or_else(|e| panic!("reading {}: {e}", manifest.display()));
    text.lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("a version in Cargo.toml")
        .to_owned()
}

/// Helm's `--timeout` (hooks and `--wait`), unless [`ReleaseOpts::timeout`] says otherwise.
pub const HELM_TIMEOUT: &str = "90s";
/// A helm command still running this long after its `--timeout` is killed and fails the test.
const HELM_GRACE: Duration = Duration::from_secs(60);
/// The image the hook pod runs, as scripts/build-image.sh names it.
pub const IMAGE_REPOSITORY: &str = "localhost/storageclass-migrate";
/// The image scripts/build-image.sh builds, by name: `<IMAGE_REPOSITORY>:<image_tag()>`.
pub fn image() -> String {
    format!("{IMAGE_REPOSITORY}:{}", image_tag())
}
/// The image standing for the script's kubectl image; its command runs on the host.
pub const KUBECTL_IMAGE: &str = "bitnami/kubectl";
/// The release name of every test: the claim is `rel-data`, the hook Job
/// `rel-data-storageclass-migrate`.
pub const RELEASE: &str = "rel";
pub const CLAIM: &str = "rel-data";
pub const JOB: &str = "rel-data-storageclass-migrate";

/// Which example chart a release installs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Example {
    /// examples/app: the claim `rel-data`.
    App,
    /// examples/statefulset: the StatefulSet `rel-db` ([`SET`]), claims `data-rel-db-<n>`.
    StatefulSet,
}

/// The StatefulSet of examples/statefulset in a release.
pub const SET: &str = "rel-db";

/// Which hook the chart runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// examples/app as it is: the storageclass-migrate image.
    Binary,
    /// examples/app with the kubectl script as its hook (testkit/charts/script-hook.yaml).
    Script,
}

/// Prints, past the harness's capture, that a script test is skipped; true if it is.
pub fn skip_without_script(test: &str) -> bool {
    if script_path().is_some() {
        return false;
    }
    let _ = writeln!(
        std::io::stderr(),
        "{test}: skipped: set {SCRIPT_ENV}=/path/to/kubectl-hook.sh to run the kubectl script side \
         by side"
    );
    true
}

/// What a [`Release`] is made of; `Default` is what [`Release::new`] makes: the chart with the
/// binary as its hook, Helm 3, classes A and B without a provisioner, the default runner and
/// [`HELM_TIMEOUT`].
#[derive(Clone, Debug)]
pub struct ReleaseOpts {
    pub hook: Hook,
    /// The helm of every command of the release (`install`, `upgrade`, `rollback`, `status`).
    pub helm: Helm,
    pub class_a: Class,
    pub class_b: Class,
    pub runner: RunnerOpts,
    /// helm's `--timeout`, e.g. `"90s"` or `"3m"`.
    pub timeout: String,
    /// The chart (examples/app unless told).
    pub example: Example,
}

impl Default for ReleaseOpts {
    fn default() -> Self {
        ReleaseOpts {
            example: Example::App,
            hook: Hook::Binary,
            helm: Helm::V3,
            class_a: Class::new("a"),
            class_b: Class::new("b"),
            runner: RunnerOpts::default(),
            timeout: HELM_TIMEOUT.into(),
        }
    }
}

/// One release of examples/app in a namespace of its own, with a hook runner for it and classes
/// A and B (no provisioner, Immediate binding, unless given). Derefs to its [`Cluster`].
pub struct Release {
    pub hook: Hook,
    pub example: Example,
    /// The helm that runs its commands.
    pub helm: Helm,
    /// helm's `--timeout`.
    pub timeout: String,
    /// Stopped before the namespace goes.
    pub runner: HookRunner,
    pub c: Cluster,
}

impl std::ops::Deref for Release {
    type Target = Cluster;

    fn deref(&self) -> &Cluster {
        &self.c
    }
}

impl Release {
    /// A release with `hook` run by `helm`, otherwise as [`ReleaseOpts::default`].
    pub async fn new(prefix: &str, hook: Hook, helm: Helm) -> Release {
        Self::with(
            prefix,
            ReleaseOpts {
                hook,
                helm,
                ..ReleaseOpts::default()
            },
        )
        .await
    }

    /// A release as `opts` says, e.g. with Helm 4:
    /// `Release::with("e2e-x", ReleaseOpts { helm: Helm::V4, ..Default::default() })`. Its
    /// namespace is `<prefix>-helm<major>-<unique suffix>`.
    pub async fn with(prefix: &str, opts: ReleaseOpts) -> Release {
        let ReleaseOpts {
            hook,
            helm,
            class_a,
            class_b,
            mut runner,
            timeout,
            example,
        } = opts;
        let prefix = format!("{prefix}-helm{}", helm.major());
        let c = Cluster::with_classes(&prefix, class_a, class_b).await;
        if hook == Hook::Script {
            let kubectl = ControlPlane::get()
                .kubectl
                .clone()
                .expect("the control plane's env names KUBECTL");
            let dir = kubectl.parent().expect("kubectl's directory").to_path_buf();
            runner.host_images.push((KUBECTL_IMAGE.into(), dir));
        }
        Release {
            runner: HookRunner::start(c.name(), runner),
            hook,
            example,
            helm,
            timeout,
            c,
        }
    }

    pub fn chart(&self) -> PathBuf {
        if self.example == Example::StatefulSet {
            return charts().statefulset.clone();
        }
        match self.hook {
            Hook::Binary => charts().app.clone(),
            Hook::Script => charts()
                .script_app
                .clone()
                .expect("the script chart (STORAGECLASS_MIGRATE_SCRIPT)"),
        }
    }

    /// `helm install` (`verb` "install") or `helm upgrade --reuse-values` of the release, with
    /// `--set` of each pair; `--wait` if `wait`.
    pub async fn helm(&self, verb: &str, sets: &[(&str, &str)], wait: bool) -> HelmOut {
        self.helm_with(verb, sets, wait, &[]).await
    }

    /// [`Release::helm`] with more `flags` (e.g. `--atomic`).
    pub async fn helm_with(
        &self,
        verb: &str,
        sets: &[(&str, &str)],
        wait: bool,
        flags: &[&str],
    ) -> HelmOut {
        let mut args: Vec<String> = vec![
            verb.into(),
            RELEASE.into(),
            self.chart().display().to_string(),
            "--namespace".into(),
            self.name().into(),
            "--timeout".into(),
            self.timeout.clone(),
        ];
        if verb == "upgrade" {
            args.push("--reuse-values".into());
        } else {
            let version = image_tag();
            for (k, v) in [
                ("storageclassMigrate.image.repository", IMAGE_REPOSITORY),
                ("storageclassMigrate.image.tag", version.as_str()),
                // The outcome as JSON on the pod's output; the termination message keeps the
                // human lines.
                ("storageclassMigrate.extraEnv[0].name", "SUMMARY_FORMAT"),
                ("storageclassMigrate.extraEnv[0].value", "json"),
            ] {
                args.push("--set".into());
                args.push(format!("{k}={v}"));
            }
        }
        if wait {
            args.push("--wait".into());
        }
        for (k, v) in sets {
            args.push("--set".into());
            args.push(format!("{k}={v}"));
        }
        args.extend(flags.iter().map(|f| f.to_string()));
        self.run_helm(args).await
    }

    /// Runs the release's helm with `args`, killed [`HELM_GRACE`] after the release's timeout.
    pub async fn run_helm(&self, args: Vec<String>) -> HelmOut {
        let timeout = humantime::parse_duration(&self.timeout)
            .unwrap_or_else(|e| panic!("helm timeout {:?}: {e}", self.timeout));
        charts().run(self.helm, args, timeout + HELM_GRACE).await
    }

    /// `helm rollback` of the release to `revision`, with the release's timeout and `flags`
    /// (e.g. Helm 4's `--force-conflicts`).
    pub async fn rollback(&self, revision: u64, flags: &[&str]) -> HelmOut {
        let mut args: Vec<String> = vec![
            "rollback".into(),
            RELEASE.into(),
            revision.to_string(),
            "--namespace".into(),
            self.name().into(),
            "--timeout".into(),
            self.timeout.clone(),
        ];
        args.extend(flags.iter().map(|f| f.to_string()));
        self.run_helm(args).await
    }

    /// Installs the release with its claim on `class` (`None`: class left unset) and waits
    /// until the claim is bound.
    pub async fn install(&self, class: Option<&str>) -> PersistentVolumeClaim {
        let sets: Vec<(&str, &str)> = class
            .map(|c| vec![("persistence.storageClass", c)])
            .unwrap_or_default();
        let out = self.helm("install", &sets, true).await;
        self.expect_ok(&out);
        wait_bound(self.client(), self.name(), CLAIM).await
    }

    /// A release installed on class A: Retain volumes `<ns>-pv-a` on A and `<ns>-pv-b` on B
    /// (for the claim after a class change), the claim bound to the first. Returns the release,
    /// the claim and the volume on A.
    pub async fn installed(
        prefix: &str,
        hook: Hook,
        helm: Helm,
    ) -> (Release, PersistentVolumeClaim, PersistentVolume) {
        let s = Release::new(prefix, hook, helm).await;
        let pv_a = Volume::host_path("pv-a").class(&s.a).create(&s).await;
        Volume::host_path("pv-b").class(&s.b).create(&s).await;
        let claim = s.install(Some(&s.a)).await;
        (s, claim, pv_a)
    }

    /// `helm upgrade --reuse-values` with the claim on `class` and `sets`, without `--wait`.
    pub async fn upgrade(&self, class: &str, sets: &[(&str, &str)]) -> HelmOut {
        self.upgrade_with(class, sets, &[]).await
    }

    /// [`Release::upgrade`] with more `flags` (e.g. `--rollback-on-failure`).
    pub async fn upgrade_with(
        &self,
        class: &str,
        sets: &[(&str, &str)],
        flags: &[&str],
    ) -> HelmOut {
        let mut all = vec![("persistence.storageClass", class)];
        all.extend_from_slice(sets);
        self.helm_with("upgrade", &all, false, flags).await
    }

    /// An upgrade to `class` (with `--wait`) that succeeds; returns the new claim once bound.
    pub async fn upgrade_ok(&self, class: &str, sets: &[(&str, &str)]) -> PersistentVolumeClaim {
        let mut all = vec![("persistence.storageClass", class)];
        all.extend_from_slice(sets);
        let out = self.helm("upgrade", &all, true).await;
        self.expect_ok(&out);
        wait_bound(self.client(), self.name(), CLAIM).await
    }

    /// Asserts that helm failed saying `reason` (e.g. `BackoffLimitExceeded`).
    pub fn expect_failed_with(&self, out: &HelmOut, reason: &str) {
        self.expect_failed(out);
        assert!(
            out.stderr.contains(reason),
            "helm does not say {reason:?}\n{out}"
        );
    }

    /// Asserts that helm failed on the pre-upgrade hook, whose Job failed with condition reason
    /// `reason` (`PodFailurePolicy`, `BackoffLimitExceeded`) as read from the API. Helm 3 names
    /// the reason; Helm 4 says `Job Failed`.
    pub async fn expect_hook_failed(&self, out: &HelmOut, reason: &str) {
        self.expect_failed_with(out, "pre-upgrade hooks failed");
        let said = match self.helm {
            Helm::V3 => reason,
            Helm::V4 => "Job Failed",
        };
        assert!(
            out.stderr.contains(said),
            "helm does not say {said:?}\n{out}"
        );
        let jobs: Api<Job> = Api::namespaced(self.client().clone(), self.name());
        let job = get(&jobs, JOB).await;
        let failed = job
            .status
            .and_then(|st| st.conditions)
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "Failed" && c.status == "True");
        assert_eq!(
            failed.and_then(|c| c.reason).as_deref(),
            Some(reason),
            "the hook Job's Failed condition\n{}",
            self.runner.report()
        );
    }

    /// The last hook run, which must have ended with `code` and printed every fragment.
    pub fn last_run_saying(&self, code: i32, fragments: &[&str]) -> HookRun {
        let run = self.last_run(code);
        for fragment in fragments {
            assert!(
                run.output.contains(fragment),
                "the hook did not print {fragment:?}\n{run}"
            );
        }
        run
    }

    /// The bindings the chart makes for the hook's ServiceAccount, as [`HookRun::bindings`]
    /// names them: the hook is bound to its own namespace's objects only.
    pub fn chart_bindings(&self) -> [String; 2] {
        [
            format!(
                "ClusterRoleBinding/storageclass-migrate:{}:{RELEASE}:{CLAIM}",
                self.name()
            ),
            format!("RoleBinding/{}/{JOB}", self.name()),
        ]
    }

    /// Asserts that pod `name` is there and not being deleted.
    pub async fn expect_pod_running(&self, name: &str) {
        let pod = self.pods().get_opt(name).await.expect("reading the pod");
        let pod = pod.unwrap_or_else(|| panic!("pod {name} is gone\n{}", self.runner.report()));
        assert!(
            pod.metadata.deletion_timestamp.is_none(),
            "pod {name} is being deleted"
        );
    }

    pub fn expect_ok(&self, out: &HelmOut) {
        assert!(out.ok(), "{out}\n{}", self.runner.report());
    }

    pub fn expect_failed(&self, out: &HelmOut) {
        assert!(
            !out.ok(),
            "expected helm to fail\n{out}\n{}",
            self.runner.report()
        );
    }

    /// The runs of the hook so far; the last one must have ended with `code`.
    pub fn last_run(&self, code: i32) -> HookRun {
        let runs = self.runner.runs();
        let last = runs
            .last()
            .cloned()
            .unwrap_or_else(|| panic!("no hook pod ran\n{}", self.runner.report()));
        assert_eq!(last.exit_code, code, "{}", self.runner.report());
        if let How::Image { image, .. } = &last.how {
            say_once(&format!(
                "e2e: hook pods of storageclass-migrate run in image {image} (buildah, chroot \
                 isolation)"
            ));
        }
        last
    }

    pub async fn claim(&self) -> Option<PersistentVolumeClaim> {
        self.claims()
            .get_opt(CLAIM)
            .await
            .expect("reading the claim")
    }

    pub async fn pv(&self, name: &str) -> Option<k8s_openapi::api::core::v1::PersistentVolume> {
        self.pvs().get_opt(name).await.expect("reading a volume")
    }

    /// The release's status as `helm status` reports it (`deployed`, `failed`, ...).
    pub async fn release_status(&self) -> String {
        let v = self.status_json().await;
        v["info"]["status"].as_str().unwrap_or_default().to_string()
    }

    /// The release's revision as `helm status` reports it.
    pub async fn revision(&self) -> u64 {
        let v = self.status_json().await;
        v["version"]
            .as_u64()
            .unwrap_or_else(|| panic!("no version in {v}"))
    }

    /// `helm status --output json` of the release.
    pub async fn status_json(&self) -> Value {
        let out = self
            .run_helm(vec![
                "status".into(),
                RELEASE.into(),
                "--namespace".into(),
                self.name().into(),
                "--output".into(),
                "json".into(),
            ])
            .await;
        assert!(out.ok(), "{out}");
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("helm status JSON: {e}\n{out}"))
    }

    /// `state.terminated` of the newest hook pod, read back from the API.
    pub async fn hook_pod_terminated(&self) -> Value {
        let lp = ListParams::default().labels(&format!("batch.kubernetes.io/job-name={JOB}"));
        let mut pods = self.pods().list(&lp).await.expect("listing pods").items;
        pods.sort_by_key(|p| p.metadata.creation_timestamp.clone());
        let pod = pods
            .last()
            .unwrap_or_else(|| panic!("no pod of job {JOB}\n{}", self.runner.report()));
        let status = serde_json::to_value(pod.status.clone()).unwrap();
        status["containerStatuses"][0]["state"]["terminated"].clone()
    }

    /// After a hook that succeeded: Helm deleted the Job and the RBAC objects
    /// (`hook-succeeded`).
    pub async fn expect_hook_objects_gone(&self) {
        let jobs: Api<Job> = Api::namespaced(self.client().clone(), self.name());
        wait_deleted(&jobs, JOB).await;
        let sas: Api<ServiceAccount> = Api::namespaced(self.client().clone(), self.name());
        let left: Vec<String> = sas
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|s| s.name_any())
            .filter(|n| n != "default")
            .collect();
        assert!(left.is_empty(), "service accounts left: {left:?}");
        let prefix = format!("storageclass-migrate:{}:", self.name());
        let roles: Api<ClusterRole> = Api::all(self.client().clone());
        let left: Vec<String> = roles
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|r| r.name_any())
            .filter(|n| n.starts_with(&prefix))
            .collect();
        assert!(left.is_empty(), "cluster roles left: {left:?}");
    }
}

impl Drop for Release {
    /// The chart's cluster-scoped hook objects are left behind when a hook fails; they carry the
    /// namespace in their names. Pods on a node are deleted at once: no kubelet would confirm
    /// their graceful deletion, and the namespace would never go.
    fn drop(&mut self) {
        if keep_namespaces() {
            return;
        }
        let prefix = format!("storageclass-migrate:{}:", self.name());
        let ns = self.name().to_string();
        on_own_runtime(std::time::Duration::from_secs(20), move || async move {
            let client = client().await;
            let dp = DeleteParams::background();
            let lp = ListParams::default();
            let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
            let now = DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::background()
            };
            for p in pods.list(&lp).await.map(|l| l.items).unwrap_or_default() {
                let _ = pods.delete(&p.name_any(), &now).await;
            }
            let crbs: Api<ClusterRoleBinding> = Api::all(client.clone());
            for b in crbs.list(&lp).await.map(|l| l.items).unwrap_or_default() {
                if b.name_any().starts_with(&prefix) {
                    let _ = crbs.delete(&b.name_any(), &dp).await;
                }
            }
            let crs: Api<ClusterRole> = Api::all(client);
            for r in crs.list(&lp).await.map(|l| l.items).unwrap_or_default() {
                if r.name_any().starts_with(&prefix) {
                    let _ = crs.delete(&r.name_any(), &dp).await;
                }
            }
        });
    }
}
