//! Runs the pods of Jobs in place of a kubelet, so that Helm hook Jobs really run on the local
//! control plane (which has no scheduler and no kubelet).
//!
//! A [`HookRunner`] watches the pods of one namespace that carry a label selector (by default
//! every pod a Job made: `batch.kubernetes.io/job-name`) and, for each new pod:
//!
//! 1. sets it `Running`, as a kubelet would once the container started;
//! 2. prepares what a kubelet gives the container: its environment (`value`, and `valueFrom`
//!    field, ConfigMap and Secret references), the variables of the `kubernetes` service
//!    (`KUBERNETES_SERVICE_HOST=127.0.0.1`, `KUBERNETES_SERVICE_PORT` of the local apiserver), and
//!    its volume mounts; the projected service-account volume that admission adds gets a token
//!    from the TokenRequest API bound to the pod, `ca.crt` from the namespace's `kube-root-ca.crt`
//!    ConfigMap and `namespace`, so that the program takes its in-cluster path with the RBAC the
//!    chart gave its ServiceAccount. It waits until the apiserver's authoriser has the bindings
//!    of that ServiceAccount (a kubelet's image pull and container start take longer than that);
//! 3. mounts `persistentVolumeClaim` volumes: it waits up to 10 s for the claim (in the pod's
//!    namespace) to be `Bound` (the pod fails to start otherwise, with the reason in its
//!    termination message), reads its PersistentVolume, which must be `hostPath` or `local` with
//!    a directory that exists on this host (as those that kube-controller-manager's hostPath
//!    provisioner makes for classes of [`crate::Class::host_path_provisioner`]), and mounts that
//!    directory itself (not a copy: what the container writes is in the volume) at the
//!    `mountPath`, read-only if the volume mount or the volume's `persistentVolumeClaim.readOnly`
//!    says so. Each such mount is in the run's notes;
//! 4. runs the container as the securityContext says (numeric `runAsUser`/`runAsGroup`, else the
//!    image's user; `runAsNonRoot` checked; `capabilities` dropped and added in image mode), with
//!    a file mounted at `terminationMessagePath`;
//! 5. writes the pod's status: phase `Succeeded` or `Failed`, and the container's
//!    `state.terminated` with exit code, reason and the termination message (the file, or with
//!    `FallbackToLogsOnError` and a failure the tail of the output, as a kubelet does).
//!
//! The Job controller then completes or fails the Job, with its `podFailurePolicy`, and Helm goes
//! on or fails. The pods stay unscheduled (`spec.nodeName` empty): the Job controller counts pods
//! by their phase and container statuses, and the apiserver accepts status writes for unscheduled
//! pods, as Kubernetes' own Job integration tests do. With [`RunnerOpts::serve_logs`] each pod
//! is bound to this process's [`crate::node::LogNode`] first, whose kubelet endpoint then
//! serves the container's output to `kubectl logs` and Helm.
//!
//! How a container runs:
//!
//! * **image** (the default): in a container of the image with buildah (`buildah from
//!   --pull-never`, `buildah run --isolation chroot`, vfs storage, `BUILDAH_ROOT` as for
//!   `scripts/build-image.sh`). buildah's chroot isolation binds the host's `/dev` read-only and
//!   skips mounts below `/dev`, `/proc` and `/sys`; a termination-message path there (the default
//!   `/dev/termination-log`) is mounted at [`RELOCATED_TERMINATION_LOG`] instead and
//!   `TERMINATION_LOG` (the variable storageclass-migrate reads) points there, unless the pod
//!   sets it. Each run says so in its notes. Volumes, claims included, are `buildah run
//!   --volume HOST:PATH[:ro]`; the container's `securityContext.capabilities` are `--cap-drop`
//!   and `--cap-add`, with the result containerd would give (`ALL` spelt out, since buildah
//!   1.28 ignores the adds when `ALL` is dropped; a capability both dropped and added is
//!   dropped, and noted, since buildah refuses both).
//! * **host binary**: where the image cannot be run (no buildah, no such image, or
//!   `STORAGECLASS_MIGRATE_HOOK_RUNNER=binary`), the storageclass-migrate binary built for the
//!   tests runs on the host instead, as the pod's user, with a kubeconfig made from the pod's
//!   token (the host has no `/var/run/secrets/...` to mount it at). A message on the test output
//!   says so.
//! * **host command**: images listed in [`RunnerOpts::host_images`] (a kubectl image for the old
//!   kubectl script) run their `command`/`args` on the host, as the pod's user, with a directory
//!   holding kubectl first on `PATH`, `HOME` in a fresh directory and a kubeconfig made from the
//!   pod's token.
//!
//! On the host (both host modes) there is no mount namespace: each argument equal to a volume's
//! `mountPath`, or starting with `mountPath/`, is rewritten to the host directory (the longest
//! mount path wins; `--opt=/path` and a `mountPath` of `/` are left alone), read-only claims
//! are not enforced (the program could write to the directory), and capabilities are those of
//! the user it runs as. The notes of the run say which of these applied.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs,
    io::{Read, Write},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Condvar, Mutex, OnceLock},
    thread,
    time::{Duration, Instant, SystemTime},
};

use k8s_openapi::api::{
    core::v1::{
        ConfigMap, Container, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Volume,
    },
    rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, Subject},
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    runtime::watcher,
};
use serde_json::{Value, json};

use crate::{
    api::WAIT_TIMEOUT,
    background::{Background, Ready},
    binary::binary_path,
    control_plane::{ControlPlane, client, repo_root},
    kubelet::each_pod,
    node::log_node,
    objects::volume_dir,
    rbac::{request_token, wait_authorized, write_token_kubeconfig},
};

/// `image` or `binary`: how to run storageclass-migrate images (default: `image` where possible).
pub const MODE_ENV: &str = "STORAGECLASS_MIGRATE_HOOK_RUNNER";
/// Where a termination-message file below `/dev`, `/proc` or `/sys` is mounted in image mode.
pub const RELOCATED_TERMINATION_LOG: &str = "/run/termination-log";
/// The kubelet's limit on a termination message.
const MESSAGE_LIMIT: usize = 4096;
/// The kubelet's limits on the log tail used by `FallbackToLogsOnError`.
const FALLBACK_LINES: usize = 80;
const FALLBACK_BYTES: usize = 2048;
/// How long a pod's claim may take to become `Bound` before the pod fails to start.
const CLAIM_BOUND_WAIT: Duration = Duration::from_secs(10);

/// What a [`HookRunner`] watches and how it runs what it finds.
#[derive(Clone, Debug)]
pub struct RunnerOpts {
    /// Label selector of the pods to run.
    pub selector: String,
    /// Images (by prefix) whose command runs on the host, each with the directory to put first
    /// on `PATH` (e.g. `bitnami/kubectl` and the directory of the kubectl built for the tests).
    pub host_images: Vec<(String, PathBuf)>,
    /// Pods wait here, after their RBAC is in place and before they run: runners of several
    /// namespaces sharing one rendezvous run their hooks at the same time.
    pub rendezvous: Option<Arc<Rendezvous>>,
    /// A container running longer is killed (exit status 137).
    pub max_run: Duration,
    /// The first pod of the runner is killed (SIGKILL, exit status 137) after this long, as a
    /// node that loses a pod would; the pods after it run in full.
    pub kill_first: Option<Duration>,
    /// Bind each pod to this process's [`crate::node::LogNode`] before it runs and serve its
    /// output there once it ended, so that its log can be read through the apiserver
    /// (`kubectl logs`, Helm's `helm.sh/hook-output-log-policy`). Off: the pods stay
    /// unscheduled.
    pub serve_logs: bool,
}

impl Default for RunnerOpts {
    fn default() -> Self {
        RunnerOpts {
            selector: "batch.kubernetes.io/job-name".into(),
            host_images: vec![],
            rendezvous: None,
            max_run: Duration::from_secs(150),
            kill_first: None,
            serve_logs: false,
        }
    }
}

/// A barrier for `n` parties that gives up after a timeout (a party that never comes must not
/// hang the runners).
#[derive(Debug)]
pub struct Rendezvous {
    n: usize,
    /// (parties waiting in this round, round)
    state: Mutex<(usize, u64)>,
    released: Condvar,
}

impl Rendezvous {
    pub fn new(n: usize) -> Rendezvous {
        Rendezvous {
            n,
            state: Mutex::new((0, 0)),
            released: Condvar::new(),
        }
    }

    /// Waits until `n` parties wait, or `timeout`; true if they met.
    pub fn wait(&self, timeout: Duration) -> bool {
        let mut state = self.state.lock().unwrap();
        let round = state.1;
        state.0 += 1;
        if state.0 == self.n {
            *state = (0, round + 1);
            self.released.notify_all();
            return true;
        }
        let (state, _) = self
            .released
            .wait_timeout_while(state, timeout, |s| s.1 == round)
            .unwrap();
        state.1 != round
    }
}

/// How a container was run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum How {
    /// In a buildah container of the image.
    Image { image: String, id: String },
    /// The test build of storageclass-migrate on the host, and why.
    HostBinary { why: String },
    /// The pod's command on the host, with this directory first on `PATH`.
    HostCommand { path_dir: PathBuf },
    /// Not run: the container could not be set up (reason `StartError`).
    NotRun,
}

/// One pod the runner ran.
#[derive(Clone, Debug)]
pub struct HookRun {
    pub pod: String,
    pub job: Option<String>,
    pub service_account: String,
    pub how: How,
    /// The user and group it ran as (`None`: the image's or the runner's own).
    pub user: Option<(i64, Option<i64>)>,
    pub exit_code: i32,
    pub reason: String,
    /// stdout and stderr, interleaved as written.
    pub output: String,
    /// What went into `state.terminated.message`.
    pub termination_message: String,
    /// Bindings (`RoleBinding/<ns>/<name>`, `ClusterRoleBinding/<name>`) that named the pod's
    /// ServiceAccount when it ran.
    pub bindings: Vec<String>,
    /// Where the run differs from a kubelet's, and other remarks.
    pub notes: Vec<String>,
    pub elapsed: Duration,
}

impl HookRun {
    /// The outcomes storageclass-migrate printed (with `SUMMARY_FORMAT=json`): the lines of the
    /// output that are outcome objects (JSON log lines are not).
    pub fn outcomes(&self) -> Vec<crate::Outcome> {
        self.output
            .lines()
            .filter(|l| l.starts_with("{\"claim\":"))
            .map(|l| crate::Outcome::parse(l).unwrap_or_else(|e| panic!("{e}\n{self}")))
            .collect()
    }

    /// The outcome of the one claim.
    pub fn outcome(&self) -> crate::Outcome {
        let mut outcomes = self.outcomes();
        assert_eq!(outcomes.len(), 1, "expected one outcome\n{self}");
        outcomes.remove(0)
    }
}

impl std::fmt::Display for HookRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "pod {} (job {:?}, service account {}): {:?} as {:?}: exit {} ({}) after {:.1?}",
            self.pod,
            self.job,
            self.service_account,
            self.how,
            self.user,
            self.exit_code,
            self.reason,
            self.elapsed
        )?;
        writeln!(f, "  bindings: {:?}", self.bindings)?;
        for note in &self.notes {
            writeln!(f, "  note: {note}")?;
        }
        writeln!(f, "  termination message: {:?}", self.termination_message)?;
        write!(f, "  output:\n{}", indent(&self.output))
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}

/// Runs the pods of one namespace until dropped. See the module documentation.
pub struct HookRunner {
    namespace: String,
    _task: Background,
    runs: Arc<Mutex<Vec<HookRun>>>,
}

impl HookRunner {
    /// Starts a runner for `namespace`; returns once its watch is established, so that a pod
    /// created next is seen.
    pub fn start(namespace: &str, opts: RunnerOpts) -> HookRunner {
        let runs = Arc::new(Mutex::new(Vec::new()));
        let record = runs.clone();
        let ns = namespace.to_string();
        let (task, _) =
            Background::start(&format!("hook-runner-{ns}"), WAIT_TIMEOUT, move |ready| {
                watch_and_run(ns, opts, record, ready)
            });
        HookRunner {
            namespace: namespace.to_string(),
            _task: task,
            runs,
        }
    }

    /// The pods run so far, in the order they finished.
    pub fn runs(&self) -> Vec<HookRun> {
        self.runs.lock().unwrap().clone()
    }

    /// Prints each run on stdout as it finishes, for ever: the loop of a runner serving a
    /// demo.
    pub fn print_runs(&self) -> ! {
        let mut reported = 0;
        loop {
            thread::sleep(Duration::from_millis(200));
            let runs = self.runs();
            for run in &runs[reported..] {
                println!("{run}");
            }
            reported = runs.len();
            let _ = std::io::stdout().flush();
        }
    }

    /// Every run, for assertion messages.
    pub fn report(&self) -> String {
        let runs = self.runs();
        if runs.is_empty() {
            return format!("hook runner for {}: no pod run", self.namespace);
        }
        runs.iter()
            .map(|r| format!("hook runner for {}: {r}", self.namespace))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

async fn watch_and_run(
    ns: String,
    opts: RunnerOpts,
    record: Arc<Mutex<Vec<HookRun>>>,
    ready: Ready<()>,
) {
    let client = client().await;
    let mut handled = HashSet::new();
    let opts = Arc::new(opts);
    let config = watcher::Config::default().labels(&opts.selector);
    each_pod(&ns, config, ready, |pod| {
        let pending = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_none_or(|p| p == "Pending");
        if pending
            && pod.metadata.deletion_timestamp.is_none()
            && handled.insert(pod.uid().unwrap_or_default())
        {
            let client = client.clone();
            let mut opts = opts.clone();
            if handled.len() == 1
                && let Some(limit) = opts.kill_first
            {
                Arc::make_mut(&mut opts).max_run = limit;
            }
            let record = record.clone();
            tokio::spawn(async move {
                let run = run_pod(&client, &pod, &opts).await;
                record.lock().unwrap().push(run);
            });
        }
        futures::future::ready(())
    })
    .await;
}

// ------------------------------------------------------------------------------------------
// One pod

/// Everything a container run needs, prepared from the pod and the API.
struct Prepared {
    namespace: String,
    container: Container,
    image: String,
    how: How,
    env: Vec<(String, String)>,
    /// (host path, container path, read-only)
    mounts: Vec<(PathBuf, String, bool)>,
    /// `securityContext.capabilities` for buildah: (drop, add).
    capabilities: (Vec<String>, Vec<String>),
    /// The projected service-account token, for kubeconfigs of the host modes.
    token: Option<String>,
    user: Option<(i64, Option<i64>)>,
    argv: Vec<String>,
    termination_log: PathBuf,
    /// Holds the pod's files (volumes, termination message, kubeconfig) until the run is over.
    dir: tempfile::TempDir,
    bindings: Vec<String>,
    notes: Vec<String>,
}

async fn run_pod(client: &Client, pod: &Pod, opts: &RunnerOpts) -> HookRun {
    let started = SystemTime::now();
    let clock = Instant::now();
    let name = pod.name_any();
    let ns = pod.namespace().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let sa = spec
        .service_account_name
        .clone()
        .unwrap_or_else(|| "default".into());
    let job = pod.labels().get("batch.kubernetes.io/job-name").cloned();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let container = spec.containers.first().cloned().unwrap_or_default();
    let node = if opts.serve_logs {
        Some(log_node().await)
    } else {
        None
    };
    let mut bind_error = None;
    if let Some(node) = node {
        bind_error = node.bind(&pods, &name).await.err();
    }

    set_running(&pods, &name, &container, started).await;
    let mut run = HookRun {
        pod: name.clone(),
        job,
        service_account: sa,
        how: How::NotRun,
        user: None,
        exit_code: 128,
        reason: "StartError".into(),
        output: String::new(),
        termination_message: String::new(),
        bindings: vec![],
        notes: vec![],
        elapsed: Duration::ZERO,
    };
    match prepare(client, pod, opts).await {
        Err(message) => run.termination_message = message,
        Ok(prepared) => {
            run.how = prepared.how.clone();
            run.user = prepared.user;
            run.bindings = prepared.bindings.clone();
            run.notes = prepared.notes.clone();
            if let Some(rendezvous) = &opts.rendezvous {
                let rendezvous = rendezvous.clone();
                let met =
                    tokio::task::spawn_blocking(move || rendezvous.wait(Duration::from_secs(30)))
                        .await
                        .unwrap_or(false);
                run.notes.push(if met {
                    "ran together with the other parties of its rendezvous".into()
                } else {
                    "ran alone: the other parties of its rendezvous did not come within 30s".into()
                });
            }
            let max_run = opts.max_run;
            let done = tokio::task::spawn_blocking(move || execute(prepared, max_run))
                .await
                .expect("container run");
            run.exit_code = done.exit_code;
            run.output = done.output;
            run.termination_message = done.termination_message;
            run.reason = if done.exit_code == 0 {
                "Completed".into()
            } else {
                "Error".into()
            };
            run.notes.extend(done.notes);
        }
    }
    run.elapsed = clock.elapsed();
    if let Some(node) = node {
        run.notes.push(match bind_error {
            None => format!("bound to node {}, which serves its log", node.name()),
            Some(e) => format!("binding to node {} failed: {e}", node.name()),
        });
        node.put(pod, &container.name, run.output.as_bytes());
    }
    set_terminated(&pods, &name, &container, &run, started).await;
    run
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

async fn set_running(pods: &Api<Pod>, name: &str, container: &Container, started: SystemTime) {
    let status = json!({"status": {
        "phase": "Running",
        "startTime": rfc3339(started),
        "containerStatuses": [{
            "name": container.name,
            "image": container.image.clone().unwrap_or_default(),
            "imageID": "",
            "ready": true,
            "started": true,
            "restartCount": 0,
            "state": {"running": {"startedAt": rfc3339(started)}},
        }],
    }});
    // The pod may be gone already (the Job deleted meanwhile): nothing to report then.
    let _ = pods
        .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await;
}

async fn set_terminated(
    pods: &Api<Pod>,
    name: &str,
    container: &Container,
    run: &HookRun,
    started: SystemTime,
) {
    let image_id = match &run.how {
        How::Image { id, .. } => format!("buildah://{id}"),
        _ => String::new(),
    };
    let status = json!({"status": {
        "phase": if run.exit_code == 0 { "Succeeded" } else { "Failed" },
        "startTime": rfc3339(started),
        "containerStatuses": [{
            "name": container.name,
            "image": container.image.clone().unwrap_or_default(),
            "imageID": image_id,
            "ready": false,
            "started": false,
            "restartCount": 0,
            "state": {"terminated": {
                "exitCode": run.exit_code,
                "reason": run.reason,
                "message": run.termination_message,
                "startedAt": rfc3339(started),
                "finishedAt": rfc3339(SystemTime::now()),
            }},
        }],
    }});
    if let Err(e) = pods
        .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
    {
        eprintln!("hook runner: writing the status of pod {name}: {e}");
    }
}

async fn prepare(client: &Client, pod: &Pod, opts: &RunnerOpts) -> Result<Prepared, String> {
    let cp = ControlPlane::get();
    let ns = pod.namespace().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    if spec.containers.len() != 1 || spec.init_containers.as_ref().is_some_and(|c| !c.is_empty()) {
        return Err("the hook runner runs pods of exactly one container".into());
    }
    let container = spec.containers[0].clone();
    let image = container.image.clone().unwrap_or_default();
    let mut notes = vec![];
    let how = choose(&image, opts);
    let image_config = match &how {
        How::Image { image, .. } => image_config(image).ok(),
        _ => None,
    };
    if let How::HostBinary { why } = &how {
        say_once(&format!(
            "hook runner: running the host binary {} instead of image {image}: {why}",
            binary_path().display()
        ));
    }
    if let Some(cfg) = &image_config
        && let Some(stale) = &cfg.stale
    {
        say_once(&format!("hook runner: {stale}"));
        notes.push(stale.clone());
    }

    // The user, as the kubelet resolves it: container, then pod securityContext, then image.
    let csc = container.security_context.clone().unwrap_or_default();
    let psc = spec.security_context.clone().unwrap_or_default();
    let uid = csc.run_as_user.or(psc.run_as_user);
    let gid = csc.run_as_group.or(psc.run_as_group);
    let image_uid = image_config
        .as_ref()
        .and_then(|c| c.user.split(':').next().and_then(|u| u.parse::<i64>().ok()));
    let non_root = csc.run_as_non_root.or(psc.run_as_non_root) == Some(true);
    if non_root && uid.or(image_uid) == Some(0) {
        return Err("container's runAsUser breaks non-root policy".into());
    }
    let user = uid.map(|u| (u, gid));

    let dir = tempfile::Builder::new()
        .prefix("storageclass-migrate-hook-")
        .tempdir()
        .map_err(|e| format!("temporary directory: {e}"))?;
    chmod(dir.path(), 0o755);

    // Environment: the kubernetes service's variables, then the container's (which win).
    let port = cp
        .apiserver_url
        .rsplit(':')
        .next()
        .unwrap_or("443")
        .to_string();
    let mut env: Vec<(String, String)> = vec![
        ("KUBERNETES_SERVICE_HOST".into(), "127.0.0.1".into()),
        ("KUBERNETES_SERVICE_PORT".into(), port.clone()),
        ("KUBERNETES_SERVICE_PORT_HTTPS".into(), port.clone()),
        ("KUBERNETES_PORT".into(), format!("tcp://127.0.0.1:{port}")),
        ("HOSTNAME".into(), pod.name_any()),
    ];
    for (k, v) in resolve_env(client, pod, &container).await? {
        env.retain(|(name, _)| *name != k);
        env.push((k, v));
    }

    // Volumes.
    let mut mounts = vec![];
    let mut read_only_claims = vec![];
    let mut token = None;
    let volumes = spec.volumes.clone().unwrap_or_default();
    for (i, mount) in container
        .volume_mounts
        .clone()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        if mount.sub_path.is_some() || mount.sub_path_expr.is_some() {
            return Err(format!(
                "volume mount {}: subPath is not supported",
                mount.name
            ));
        }
        let volume = volumes
            .iter()
            .find(|v| v.name == mount.name)
            .ok_or_else(|| format!("volume mount {}: no such volume", mount.name))?;
        if let Some(source) = &volume.persistent_volume_claim {
            let (pv, host) = claim_dir(client, &ns, &volume.name, &source.claim_name).await?;
            let read_only = mount.read_only == Some(true) || source.read_only == Some(true);
            notes.push(format!(
                "volume {}: claim {} (PV {pv}) is directory {} of this host, mounted at {}{}",
                volume.name,
                source.claim_name,
                host.display(),
                mount.mount_path,
                if read_only { " read-only" } else { "" }
            ));
            if read_only {
                read_only_claims.push(mount.mount_path.clone());
            }
            mounts.push((host, mount.mount_path.clone(), read_only));
            continue;
        }
        let host = dir.path().join(format!("volume-{i}"));
        fs::create_dir(&host).map_err(|e| format!("{}: {e}", host.display()))?;
        chmod(&host, 0o755);
        if let Some(t) = materialize(client, pod, volume, &host).await? {
            token = Some(t);
        }
        mounts.push((
            host,
            mount.mount_path.clone(),
            mount.read_only.unwrap_or(false),
        ));
    }

    // The termination-message file, writable by the container's user.
    let termination_log = dir.path().join("termination-log");
    fs::write(&termination_log, "").map_err(|e| format!("termination log: {e}"))?;
    chmod(&termination_log, 0o666);
    let message_path = container
        .termination_message_path
        .clone()
        .unwrap_or_else(|| "/dev/termination-log".into());
    match &how {
        How::Image { .. } => {
            let special = ["/dev/", "/proc/", "/sys/"]
                .iter()
                .any(|p| message_path.starts_with(p));
            if special {
                notes.push(format!(
                    "terminationMessagePath {message_path} is below a directory that buildah's \
                     chroot isolation binds from the host (mounts there are skipped): mounted at \
                     {RELOCATED_TERMINATION_LOG}, TERMINATION_LOG points there"
                ));
                mounts.push((
                    termination_log.clone(),
                    RELOCATED_TERMINATION_LOG.into(),
                    false,
                ));
                if !env.iter().any(|(k, _)| k == "TERMINATION_LOG") {
                    env.push(("TERMINATION_LOG".into(), RELOCATED_TERMINATION_LOG.into()));
                }
            } else {
                mounts.push((termination_log.clone(), message_path.clone(), false));
            }
        }
        How::HostBinary { .. } | How::HostCommand { .. } => {
            notes.push(format!(
                "on the host: terminationMessagePath {message_path} cannot be mounted; \
                 TERMINATION_LOG points to a file of the runner"
            ));
            if !env.iter().any(|(k, _)| k == "TERMINATION_LOG") {
                env.push((
                    "TERMINATION_LOG".into(),
                    termination_log.display().to_string(),
                ));
            }
        }
        How::NotRun => {}
    }

    // The command, with the kubelet's rules for command, args and the image's entrypoint/cmd.
    let (entrypoint, cmd) = match &image_config {
        Some(c) => (c.entrypoint.clone(), c.cmd.clone()),
        None if matches!(how, How::HostBinary { .. }) => {
            (vec!["/storageclass-migrate".to_string()], vec![])
        }
        None => (vec![], vec![]),
    };
    let mut argv = command_line(&container, &entrypoint, &cmd, &env);
    if argv.is_empty() {
        return Err("no command: neither the container nor the image names one".into());
    }

    // What the container has no mount namespace for on the host.
    let on_host = matches!(how, How::HostBinary { .. } | How::HostCommand { .. });
    if on_host {
        let rewritten = rewrite_mount_paths(&mut argv, &mounts);
        if !rewritten.is_empty() {
            notes.push(format!(
                "on the host there is no mount namespace: arguments naming a mount path were \
                 rewritten to the host directory ({})",
                rewritten.join(", ")
            ));
        }
        if !read_only_claims.is_empty() {
            notes.push(format!(
                "on the host: read-only claims are not enforced ({})",
                read_only_claims.join(", ")
            ));
        }
    }

    // Capabilities: buildah adds and drops them as a container runtime does; on the host the
    // process has what its user has.
    let caps = csc.capabilities.clone().unwrap_or_default();
    let (drop, add) = (caps.drop.unwrap_or_default(), caps.add.unwrap_or_default());
    let mut capabilities = (vec![], vec![]);
    if !drop.is_empty() || !add.is_empty() {
        if on_host {
            notes.push(format!(
                "on the host: securityContext.capabilities (drop {drop:?}, add {add:?}) not \
                 applied: the process has what its user has"
            ));
        } else {
            let (d, a, both) = buildah_capabilities(&drop, &add, &bounding_set());
            if !both.is_empty() {
                notes.push(format!(
                    "capabilities {both:?} are both dropped and added: dropped, as a container \
                     runtime applies drops last (buildah refuses both)"
                ));
            }
            capabilities = (d, a);
        }
    }

    let bindings = wait_for_rbac(client, &ns, &spec.service_account_name.unwrap_or_default()).await;
    Ok(Prepared {
        namespace: ns,
        container,
        image,
        how,
        env,
        mounts,
        capabilities,
        token,
        user,
        argv,
        termination_log,
        dir,
        bindings,
        notes,
    })
}

/// The claim `claim` of namespace `ns` that volume `volume` names: waits up to
/// [`CLAIM_BOUND_WAIT`] for it to be `Bound`, then returns its PersistentVolume's name and the
/// directory of this host that the volume is (`hostPath` or `local`, which must exist).
async fn claim_dir(
    client: &Client,
    ns: &str,
    volume: &str,
    claim: &str,
) -> Result<(String, PathBuf), String> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + CLAIM_BOUND_WAIT;
    let bound = loop {
        let found = claims
            .get_opt(claim)
            .await
            .map_err(|e| format!("volume {volume}: reading claim {ns}/{claim}: {e}"))?;
        let phase = found
            .as_ref()
            .and_then(|c| c.status.as_ref())
            .and_then(|s| s.phase.clone());
        match (found, phase.as_deref()) {
            (Some(c), Some("Bound")) => break c,
            (found, phase) if Instant::now() >= deadline => {
                return Err(match found {
                    None => format!("volume {volume}: claim {ns}/{claim} not found"),
                    Some(_) => format!(
                        "volume {volume}: claim {ns}/{claim} is not Bound after {:?} (phase \
                         {}): the hook runner mounts only bound claims",
                        CLAIM_BOUND_WAIT,
                        phase.unwrap_or("none")
                    ),
                });
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let pv_name = bound
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .ok_or_else(|| format!("volume {volume}: claim {ns}/{claim} is Bound to no volume"))?;
    let pv = Api::<PersistentVolume>::all(client.clone())
        .get(&pv_name)
        .await
        .map_err(|e| format!("volume {volume}: PV {pv_name} of claim {ns}/{claim}: {e}"))?;
    let dir = volume_dir(&pv).ok_or_else(|| {
        format!(
            "volume {volume}: PV {pv_name} of claim {ns}/{claim} is neither hostPath nor local: \
             the hook runner mounts only directories of this host"
        )
    })?;
    if !dir.is_dir() {
        return Err(format!(
            "volume {volume}: PV {pv_name} of claim {ns}/{claim}: {} is no directory of this host",
            dir.display()
        ));
    }
    Ok((pv_name, dir))
}

/// On the host (no mount namespace): each argument equal to a mount path, or below one, names the
/// host directory instead (the longest mount path that matches). Returns `from -> to` of each
/// rewritten argument.
fn rewrite_mount_paths(argv: &mut [String], mounts: &[(PathBuf, String, bool)]) -> Vec<String> {
    let mut done = vec![];
    for arg in argv.iter_mut() {
        let best = mounts
            .iter()
            .filter_map(|(host, path, _)| {
                let path = path.trim_end_matches('/');
                if path.is_empty() {
                    return None;
                }
                let rest = arg.strip_prefix(path)?;
                (rest.is_empty() || rest.starts_with('/')).then_some((path.len(), host, rest))
            })
            .max_by_key(|(len, _, _)| *len);
        if let Some((_, host, rest)) = best {
            let new = format!("{}{rest}", host.display());
            done.push(format!("{arg} -> {new}"));
            *arg = new;
        }
    }
    done
}

/// Every Linux capability by number (linux/capability.h), without `CAP_`.
const CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The capabilities in this process's bounding set: all that a container it starts can have.
fn bounding_set() -> Vec<String> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .unwrap_or(0);
    CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(i, _)| mask >> i & 1 == 1)
        .map(|(_, c)| c.to_string())
        .collect()
}

/// The container's `capabilities` (names with or without `CAP_`, any case) as buildah's
/// `--cap-drop` and `--cap-add` arguments (with `CAP_`, which buildah requires), and the
/// capabilities both dropped and added.
///
/// A container runtime (containerd) starts from its default set, adds all for `add: [ALL]`,
/// removes all for `drop: [ALL]`, then adds the single adds and removes the single drops: a
/// capability in both lists ends up dropped. buildah (1.28) refuses a capability in both lists,
/// ignores the adds when `ALL` is dropped, and fails to add `ALL` where the runner lacks some
/// capability. So `ALL` is spelt out: dropped, it is every capability but those added; added, it
/// is those of the runner's bounding set (`bounding`).
fn buildah_capabilities(
    drop: &[String],
    add: &[String],
    bounding: &[String],
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let norm = |c: &String| {
        let c = c.to_ascii_uppercase();
        c.strip_prefix("CAP_").map(str::to_string).unwrap_or(c)
    };
    let (drop, add): (Vec<String>, Vec<String>) = (
        drop.iter().map(norm).collect(),
        add.iter().map(norm).collect(),
    );
    let has_all = |v: &[String]| v.iter().any(|c| c == "ALL");
    let (drop_all, add_all) = (has_all(&drop), has_all(&add));
    let single = |v: Vec<String>| -> Vec<String> {
        let mut out: Vec<String> = vec![];
        for c in v {
            if c != "ALL" && !out.contains(&c) {
                out.push(c);
            }
        }
        out
    };
    let (drops, adds) = (single(drop), single(add));
    let mut both: Vec<String> = adds.iter().filter(|c| drops.contains(c)).cloned().collect();
    if drop_all && add_all {
        both.push("ALL".into());
    }
    let kept: Vec<String> = adds.into_iter().filter(|c| !drops.contains(c)).collect();
    let (out_drop, out_add) = if drop_all {
        let dropped = CAPABILITIES
            .iter()
            .map(|c| c.to_string())
            .filter(|c| !kept.contains(c))
            .collect();
        (dropped, kept)
    } else if add_all {
        let mut added: Vec<String> = bounding
            .iter()
            .filter(|c| !drops.contains(c))
            .cloned()
            .collect();
        added.extend(kept.into_iter().filter(|c| !bounding.contains(c)));
        (drops, added)
    } else {
        (drops, kept)
    };
    let prefixed = |v: Vec<String>| v.into_iter().map(|c| format!("CAP_{c}")).collect();
    (prefixed(out_drop), prefixed(out_add), both)
}

/// Image mode unless the image is one of the host images, or storageclass-migrate's image
/// cannot be run here.
fn choose(image: &str, opts: &RunnerOpts) -> How {
    if let Some((_, dir)) = opts
        .host_images
        .iter()
        .find(|(prefix, _)| image.starts_with(prefix.as_str()))
    {
        return How::HostCommand {
            path_dir: dir.clone(),
        };
    }
    let ours = image.contains("storageclass-migrate");
    let forced = std::env::var(MODE_ENV).unwrap_or_default();
    if ours && forced == "binary" {
        return How::HostBinary {
            why: format!("{MODE_ENV}=binary"),
        };
    }
    match image_config(image) {
        Ok(cfg) => How::Image {
            image: image.into(),
            id: cfg.id.clone(),
        },
        Err(why) if ours => How::HostBinary { why },
        Err(_) => How::NotRun,
    }
}

/// What the runner needs of an image's configuration.
#[derive(Clone, Debug)]
struct ImageConfig {
    id: String,
    user: String,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    /// A warning if the image is older than the sources it was built from.
    stale: Option<String>,
}

/// `buildah` with the storage options of scripts/build-image.sh.
fn buildah() -> Command {
    let mut cmd = Command::new("buildah");
    cmd.args(["--storage-driver", "vfs"]);
    if let Some(root) = std::env::var_os("BUILDAH_ROOT").filter(|r| !r.is_empty()) {
        let root = PathBuf::from(root);
        cmd.arg("--root").arg(root.join("root"));
        cmd.arg("--runroot").arg(root.join("run"));
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// The image's configuration, looked up once per image and test process.
fn image_config(image: &str) -> Result<ImageConfig, String> {
    static CACHE: OnceLock<Mutex<HashMap<String, Result<ImageConfig, String>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(c) = cache.lock().unwrap().get(image) {
        return c.clone();
    }
    let result = inspect_image(image);
    cache
        .lock()
        .unwrap()
        .insert(image.to_string(), result.clone());
    result
}

fn inspect_image(image: &str) -> Result<ImageConfig, String> {
    let out = buildah()
        .args(["inspect", "--type", "image"])
        .arg(image)
        .output()
        .map_err(|e| format!("buildah is not available ({e})"))?;
    if !out.status.success() {
        return Err(format!(
            "no image {image} in buildah's storage (scripts/build-image.sh builds it): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let info: Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("buildah inspect {image}: {e}"))?;
    let oci = &info["OCIv1"];
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let created = oci["created"].as_str().unwrap_or_default().to_string();
    Ok(ImageConfig {
        id: info["FromImageID"].as_str().unwrap_or_default().into(),
        user: oci["config"]["User"].as_str().unwrap_or_default().into(),
        entrypoint: strings(&oci["config"]["Entrypoint"]),
        cmd: strings(&oci["config"]["Cmd"]),
        stale: staleness(image, &created),
    })
}

/// A warning if a file of src/ (or Cargo.toml, Cargo.lock) is newer than the image.
fn staleness(image: &str, created: &str) -> Option<String> {
    let created = humantime::parse_rfc3339_weak(created.get(..19)?).ok()?;
    let root = repo_root();
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    let mut consider = |path: PathBuf| {
        if let Ok(m) = fs::metadata(&path).and_then(|m| m.modified())
            && newest.as_ref().is_none_or(|(t, _)| m > *t)
        {
            newest = Some((m, path));
        }
    };
    for entry in fs::read_dir(root.join("src")).ok()?.flatten() {
        consider(entry.path());
    }
    consider(root.join("Cargo.toml"));
    consider(root.join("Cargo.lock"));
    let (modified, path) = newest?;
    (modified > created + Duration::from_secs(1)).then(|| {
        format!(
            "image {image} was built at {} but {} changed at {}: it may not hold the current \
             code (scripts/build-image.sh rebuilds it)",
            rfc3339(created),
            path.display(),
            rfc3339(modified)
        )
    })
}

/// Prints a message once per test process, past the test harness's output capture.
pub fn say_once(message: &str) {
    static SAID: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    if SAID
        .get_or_init(Default::default)
        .lock()
        .unwrap()
        .insert(message.to_string())
    {
        let _ = writeln!(std::io::stderr(), "{message}");
    }
}

fn chmod(path: &Path, mode: u32) {
    let _ = fs::set_permissions(path, fs::Permissions::from_mode(mode));
}

fn chown(path: &Path, user: Option<(i64, Option<i64>)>) {
    if let Some((uid, gid)) = user {
        let _ = std::os::unix::fs::chown(
            path,
            u32::try_from(uid).ok(),
            gid.and_then(|g| u32::try_from(g).ok()),
        );
    }
}

/// The container's variables: `value` (with `$(VAR)` references to earlier ones), `valueFrom`
/// (fieldRef, configMapKeyRef, secretKeyRef) and `envFrom`.
async fn resolve_env(
    client: &Client,
    pod: &Pod,
    container: &Container,
) -> Result<Vec<(String, String)>, String> {
    let ns = pod.namespace().unwrap_or_default();
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let mut out: Vec<(String, String)> = vec![];
    for from in container.env_from.clone().unwrap_or_default() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = from.config_map_ref {
            match config_maps.get_opt(&r.name).await {
                Ok(Some(cm)) => {
                    for (k, v) in cm.data.unwrap_or_default() {
                        out.push((format!("{prefix}{k}"), v));
                    }
                }
                _ if r.optional == Some(true) => {}
                other => return Err(format!("envFrom ConfigMap {}: {other:?}", r.name)),
            }
        }
        if let Some(r) = from.secret_ref {
            match secrets.get_opt(&r.name).await {
                Ok(Some(s)) => {
                    for (k, v) in s.data.unwrap_or_default() {
                        out.push((format!("{prefix}{k}"), String::from_utf8_lossy(&v.0).into()));
                    }
                }
                _ if r.optional == Some(true) => {}
                other => return Err(format!("envFrom Secret {}: {other:?}", r.name)),
            }
        }
    }
    for var in container.env.clone().unwrap_or_default() {
        let value = if let Some(value) = var.value {
            expand(&value, &out)
        } else if let Some(from) = var.value_from {
            if let Some(f) = from.field_ref {
                field(pod, &f.field_path)
                    .ok_or_else(|| format!("env {}: fieldRef {}", var.name, f.field_path))?
            } else if let Some(r) = from.config_map_key_ref {
                let cm = config_maps.get_opt(&r.name).await.ok().flatten();
                match cm.and_then(|c| c.data).and_then(|d| d.get(&r.key).cloned()) {
                    Some(v) => v,
                    None if r.optional == Some(true) => continue,
                    None => {
                        return Err(format!(
                            "env {}: key {} of ConfigMap {} not found",
                            var.name, r.key, r.name
                        ));
                    }
                }
            } else if let Some(r) = from.secret_key_ref {
                let s = secrets.get_opt(&r.name).await.ok().flatten();
                match s.and_then(|s| s.data).and_then(|d| d.get(&r.key).cloned()) {
                    Some(v) => String::from_utf8_lossy(&v.0).into(),
                    None if r.optional == Some(true) => continue,
                    None => {
                        return Err(format!(
                            "env {}: key {} of Secret {} not found",
                            var.name, r.key, r.name
                        ));
                    }
                }
            } else {
                return Err(format!(
                    "env {}: this kind of valueFrom is not supported by the hook runner",
                    var.name
                ));
            }
        } else {
            String::new()
        };
        out.retain(|(k, _)| *k != var.name);
        out.push((var.name, value));
    }
    Ok(out)
}

/// `$(NAME)` replaced by the value of an earlier variable; `$$` is a literal `$`.
fn expand(value: &str, vars: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(r) = rest.strip_prefix("$$") {
            out.push('$');
            rest = r;
        } else if let Some(end) = rest.strip_prefix("$(").and_then(|r| r.find(')')) {
            let name = &rest[2..2 + end];
            match vars.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&rest[..3 + end]),
            }
            rest = &rest[3 + end..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    out
}

/// The downward API's fields.
fn field(pod: &Pod, path: &str) -> Option<String> {
    let spec = pod.spec.as_ref();
    let map = |m: &BTreeMap<String, String>, p: &str, prefix: &str| {
        let key = p.strip_prefix(prefix)?.strip_suffix("']")?;
        m.get(key).cloned()
    };
    Some(match path {
        "metadata.name" => pod.name_any(),
        "metadata.namespace" => pod.namespace().unwrap_or_default(),
        "metadata.uid" => pod.uid().unwrap_or_default(),
        "spec.serviceAccountName" => spec?.service_account_name.clone().unwrap_or_default(),
        "spec.nodeName" => spec?.node_name.clone().unwrap_or_default(),
        "status.podIP" | "status.hostIP" => "127.0.0.1".into(),
        p if p.starts_with("metadata.labels['") => map(pod.labels(), p, "metadata.labels['")?,
        p if p.starts_with("metadata.annotations['") => {
            map(pod.annotations(), p, "metadata.annotations['")?
        }
        _ => return None,
    })
}

/// Writes a volume's files under `host`. Returns the service-account token if it holds one.
async fn materialize(
    client: &Client,
    pod: &Pod,
    volume: &Volume,
    host: &Path,
) -> Result<Option<String>, String> {
    let ns = pod.namespace().unwrap_or_default();
    let write = |rel: &str, data: &[u8], mode: i32| -> Result<(), String> {
        let path = host.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        fs::write(&path, data).map_err(|e| format!("{}: {e}", path.display()))?;
        chmod(&path, u32::try_from(mode).unwrap_or(0o644));
        Ok(())
    };
    if volume.empty_dir.is_some() {
        chmod(host, 0o777);
        return Ok(None);
    }
    let Some(projected) = &volume.projected else {
        return Err(format!(
            "volume {}: only projected and emptyDir volumes are supported by the hook runner",
            volume.name
        ));
    };
    let mode = projected.default_mode.unwrap_or(0o644);
    let mut token = None;
    for source in projected.sources.clone().unwrap_or_default() {
        if let Some(t) = source.service_account_token {
            let spec = pod.spec.clone().unwrap_or_default();
            let sa = spec
                .service_account_name
                .unwrap_or_else(|| "default".into());
            let spec = json!({
                "audiences": t.audience.iter().collect::<Vec<_>>(),
                "expirationSeconds": t.expiration_seconds.unwrap_or(3607),
                "boundObjectRef": {
                    "kind": "Pod", "apiVersion": "v1",
                    "name": pod.name_any(), "uid": pod.uid(),
                },
            });
            let issued = request_token(client, &ns, &sa, spec).await?;
            write(&t.path, issued.as_bytes(), mode)?;
            token = Some(issued);
        }
        if let Some(c) = source.config_map {
            let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns)
                .get_opt(&c.name)
                .await
                .map_err(|e| format!("ConfigMap {}: {e}", c.name))?;
            let Some(cm) = cm else {
                if c.optional == Some(true) {
                    continue;
                }
                return Err(format!("ConfigMap {ns}/{} not found", c.name));
            };
            let data = cm.data.unwrap_or_default();
            let items: Vec<(String, String, Option<i32>)> = match c.items {
                Some(items) => items.into_iter().map(|i| (i.key, i.path, i.mode)).collect(),
                None => data.keys().map(|k| (k.clone(), k.clone(), None)).collect(),
            };
            for (key, path, item_mode) in items {
                let value = data
                    .get(&key)
                    .ok_or_else(|| format!("key {key} of ConfigMap {} not found", c.name))?;
                write(&path, value.as_bytes(), item_mode.unwrap_or(mode))?;
            }
        }
        if let Some(d) = source.downward_api {
            for item in d.items.unwrap_or_default() {
                let f = item
                    .field_ref
                    .ok_or("downwardAPI: only fieldRef is supported")?;
                let value = field(pod, &f.field_path)
                    .ok_or_else(|| format!("downwardAPI: field {}", f.field_path))?;
                write(&item.path, value.as_bytes(), item.mode.unwrap_or(mode))?;
            }
        }
        if source.secret.is_some() || source.cluster_trust_bundle.is_some() {
            return Err(format!(
                "volume {}: projected secrets and trust bundles are not supported",
                volume.name
            ));
        }
    }
    Ok(token)
}

/// The kubelet's rules: `command` replaces the image's entrypoint (and drops its cmd), `args`
/// replace the cmd; `$(VAR)` references are expanded in both.
fn command_line(
    container: &Container,
    entrypoint: &[String],
    cmd: &[String],
    env: &[(String, String)],
) -> Vec<String> {
    let command = container.command.clone().unwrap_or_default();
    let args = container.args.clone().unwrap_or_default();
    let (head, tail) = match (command.is_empty(), args.is_empty()) {
        (false, _) => (command, args),
        (true, false) => (entrypoint.to_vec(), args),
        (true, true) => (entrypoint.to_vec(), cmd.to_vec()),
    };
    head.iter()
        .chain(tail.iter())
        .map(|a| expand(a, env))
        .collect()
}

/// Waits until the apiserver's authoriser allows the ServiceAccount the first rule of every
/// role bound to it, and returns the names of those bindings.
async fn wait_for_rbac(client: &Client, ns: &str, sa: &str) -> Vec<String> {
    let names_sa = |subjects: &Option<Vec<Subject>>| {
        subjects.iter().flatten().any(|s| {
            s.kind == "ServiceAccount" && s.name == sa && s.namespace.as_deref() == Some(ns)
        })
    };
    let mut checks: Vec<(PolicyRule, Option<String>)> = vec![];
    let mut bindings = vec![];
    let lp = ListParams::default();
    if let Ok(list) = Api::<RoleBinding>::namespaced(client.clone(), ns)
        .list(&lp)
        .await
    {
        for b in list.items.iter().filter(|b| names_sa(&b.subjects)) {
            bindings.push(format!("RoleBinding/{ns}/{}", b.name_any()));
            let rules = if b.role_ref.kind == "Role" {
                Api::<Role>::namespaced(client.clone(), ns)
                    .get_opt(&b.role_ref.name)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|r| r.rules)
            } else {
                Api::<ClusterRole>::all(client.clone())
                    .get_opt(&b.role_ref.name)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|r| r.rules)
            };
            if let Some(rule) = rules.and_then(|r| r.into_iter().next()) {
                checks.push((rule, Some(ns.to_string())));
            }
        }
    }
    if let Ok(list) = Api::<ClusterRoleBinding>::all(client.clone())
        .list(&lp)
        .await
    {
        for b in list.items.iter().filter(|b| names_sa(&b.subjects)) {
            bindings.push(format!("ClusterRoleBinding/{}", b.name_any()));
            let rules = Api::<ClusterRole>::all(client.clone())
                .get_opt(&b.role_ref.name)
                .await
                .ok()
                .flatten()
                .and_then(|r| r.rules);
            if let Some(rule) = rules.and_then(|r| r.into_iter().next()) {
                checks.push((rule, None));
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for (rule, namespace) in checks {
        let left = deadline.saturating_duration_since(Instant::now());
        wait_authorized(client, ns, sa, &rule, namespace.as_deref(), left).await;
    }
    bindings.sort();
    bindings
}

// ------------------------------------------------------------------------------------------
// Running a container

struct Done {
    exit_code: i32,
    output: String,
    termination_message: String,
    notes: Vec<String>,
}

fn execute(p: Prepared, max_run: Duration) -> Done {
    let mut notes = vec![];
    let log_path = p.dir.path().join("output.log");
    let result = match &p.how {
        How::Image { image, .. } => run_in_image(&p, image, &log_path, max_run),
        How::HostBinary { .. } => {
            let mut argv = p.argv.clone();
            if argv[0].rsplit('/').next() == Some("storageclass-migrate") {
                argv[0] = binary_path().display().to_string();
                run_on_host(&p, &argv, None, &log_path, max_run, &mut notes)
            } else {
                Err(format!(
                    "the host binary replaces only /storageclass-migrate, not {}",
                    argv[0]
                ))
            }
        }
        How::HostCommand { path_dir } => {
            run_on_host(&p, &p.argv, Some(path_dir), &log_path, max_run, &mut notes)
        }
        How::NotRun => Err(format!("image {} cannot be run here", p.image)),
    };
    let output = fs::read(&log_path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let (exit_code, start_error) = match result {
        Ok(code) => (code, None),
        Err(e) => (128, Some(e)),
    };
    let mut message = String::new();
    if let Ok(f) = fs::File::open(&p.termination_log) {
        let mut buf = vec![];
        let _ = f.take(MESSAGE_LIMIT as u64).read_to_end(&mut buf);
        message = String::from_utf8_lossy(&buf).into_owned();
    }
    if let Some(e) = start_error {
        message = e;
    } else if message.is_empty()
        && exit_code != 0
        && p.container.termination_message_policy.as_deref() == Some("FallbackToLogsOnError")
    {
        message = log_tail(&output);
    }
    Done {
        exit_code,
        output,
        termination_message: message,
        notes,
    }
}

/// The last lines of the output, within the kubelet's limits.
fn log_tail(output: &str) -> String {
    let lines: Vec<&str> = output.lines().collect();
    let mut tail = lines[lines.len().saturating_sub(FALLBACK_LINES)..].join("\n");
    if tail.len() > FALLBACK_BYTES {
        let mut start = tail.len() - FALLBACK_BYTES;
        while !tail.is_char_boundary(start) {
            start += 1;
        }
        tail = tail[start..].to_string();
    }
    tail
}

fn run_in_image(p: &Prepared, image: &str, log: &Path, max_run: Duration) -> Result<i32, String> {
    let out = buildah()
        .args(["from", "--pull-never", "--quiet"])
        .arg(image)
        .output()
        .map_err(|e| format!("buildah from: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "buildah from {image}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let container = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let mut cmd = buildah();
    cmd.args(["run", "--isolation", "chroot"]);
    if let Some((uid, gid)) = p.user {
        match gid {
            Some(gid) => cmd.arg("--user").arg(format!("{uid}:{gid}")),
            None => cmd.arg("--user").arg(uid.to_string()),
        };
    }
    if let Some(dir) = &p.container.working_dir {
        cmd.arg("--workingdir").arg(dir);
    }
    for (host, path, ro) in &p.mounts {
        let ro = if *ro { ":ro" } else { "" };
        cmd.arg("--volume")
            .arg(format!("{}:{path}{ro}", host.display()));
    }
    for cap in &p.capabilities.0 {
        cmd.arg("--cap-drop").arg(cap);
    }
    for cap in &p.capabilities.1 {
        cmd.arg("--cap-add").arg(cap);
    }
    for (k, v) in &p.env {
        cmd.arg("--env").arg(format!("{k}={v}"));
    }
    cmd.arg(&container).arg("--").args(&p.argv);
    let result = run_logged(cmd, log, max_run);
    let _ = buildah().args(["rm", &container]).output();
    // buildah reports a failing command on its own stderr too; keep the container's output.
    result
}

fn run_on_host(
    p: &Prepared,
    argv: &[String],
    path_dir: Option<&Path>,
    log: &Path,
    max_run: Duration,
    notes: &mut Vec<String>,
) -> Result<i32, String> {
    let cp = ControlPlane::get();
    let home = p.dir.path().join("home");
    fs::create_dir(&home).map_err(|e| format!("{}: {e}", home.display()))?;
    chmod(&home, 0o700);
    let kubeconfig = home.join("kubeconfig");
    let token = p.token.clone().unwrap_or_default();
    write_token_kubeconfig(
        &kubeconfig,
        &cp.apiserver_url,
        Some(&cp.ca),
        &token,
        &p.namespace,
    );
    chmod(&kubeconfig, 0o600);
    let user = p.user.filter(|_| accessible_to_others(Path::new(&argv[0])));
    if p.user.is_some() && user.is_none() {
        notes.push(format!(
            "{} is not reachable by other users: ran as the runner's own user",
            argv[0]
        ));
    }
    for path in [&home, &kubeconfig] {
        chown(path, user);
    }
    notes.push(format!(
        "ran on the host with a kubeconfig from the pod's token (server {})",
        cp.apiserver_url
    ));
    let mut cmd = match user {
        Some((uid, gid)) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={}", gid.unwrap_or(uid)))
                .arg("--clear-groups")
                .arg("--");
            c.args(argv);
            c
        }
        None => {
            let mut c = Command::new(&argv[0]);
            c.args(&argv[1..]);
            c
        }
    };
    let mut path = String::new();
    if let Some(dir) = path_dir {
        path = format!("{}:", dir.display());
    }
    path.push_str("/usr/local/bin:/usr/bin:/bin");
    cmd.env_clear();
    for (k, v) in &p.env {
        cmd.env(k, v);
    }
    cmd.env("PATH", path)
        .env("HOME", &home)
        .env("KUBECONFIG", &kubeconfig)
        .current_dir(&home);
    run_logged(cmd, log, max_run)
}

/// Whether every directory above `path` lets others through and `path` lets others run it.
fn accessible_to_others(path: &Path) -> bool {
    let Ok(path) = path.canonicalize() else {
        return false;
    };
    let file_ok = fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o001 != 0);
    file_ok
        && path
            .ancestors()
            .skip(1)
            .all(|d| fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
}

/// Runs `cmd` with stdout and stderr into `log` (one file, so their order is kept); kills it
/// after `max_run`. The exit status, or 128 + signal.
fn run_logged(mut cmd: Command, log: &Path, max_run: Duration) -> Result<i32, String> {
    let file = fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = file.try_clone().map_err(|e| e.to_string())?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(file))
        .stderr(Stdio::from(err));
    let mut child = cmd.spawn().map_err(|e| format!("starting {cmd:?}: {e}"))?;
    let deadline = Instant::now() + max_run;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            use std::os::unix::process::ExitStatusExt;
            return Ok(status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(9)));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(137);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn arguments_naming_a_mount_path_name_the_host_directory() {
        let mounts = vec![
            (PathBuf::from("/tmp/hostpath_pv/a"), "/source".into(), true),
            (
                PathBuf::from("/tmp/hostpath_pv/b"),
                "/target/".into(),
                false,
            ),
            (
                PathBuf::from("/tmp/hostpath_pv/c"),
                "/target/inner".into(),
                false,
            ),
            (PathBuf::from("/tmp/root"), "/".into(), false),
        ];
        let mut argv = strings(&[
            "/storageclass-migrate",
            "copy",
            "--from",
            "/source",
            "--to",
            "/target",
            "/source/x/y",
            "/target/inner/z",
            "/sourcefile",
            "--from=/source",
        ]);
        let done = rewrite_mount_paths(&mut argv, &mounts);
        assert_eq!(
            argv,
            strings(&[
                "/storageclass-migrate",
                "copy",
                "--from",
                "/tmp/hostpath_pv/a",
                "--to",
                "/tmp/hostpath_pv/b",
                "/tmp/hostpath_pv/a/x/y",
                "/tmp/hostpath_pv/c/z",
                "/sourcefile",
                "--from=/source",
            ])
        );
        assert_eq!(done.len(), 4, "{done:?}");
        assert_eq!(done[0], "/source -> /tmp/hostpath_pv/a");
    }

    #[test]
    fn capabilities_are_spelt_out_for_buildah() {
        let bounding = strings(&["CHOWN", "KILL", "NET_RAW"]);
        // Single ones: with CAP_, a capability in both lists dropped.
        let (drop, add, both) = buildah_capabilities(
            &strings(&["net_raw", "CAP_KILL"]),
            &strings(&["CAP_NET_RAW", "SYS_ADMIN"]),
            &bounding,
        );
        assert_eq!(drop, strings(&["CAP_NET_RAW", "CAP_KILL"]));
        assert_eq!(add, strings(&["CAP_SYS_ADMIN"]));
        assert_eq!(both, strings(&["NET_RAW"]));
        // Drop ALL: every capability but the ones added.
        let (drop, add, both) = buildah_capabilities(
            &strings(&["ALL"]),
            &strings(&["chown", "CAP_FOWNER"]),
            &bounding,
        );
        assert_eq!(add, strings(&["CAP_CHOWN", "CAP_FOWNER"]));
        assert_eq!(drop.len(), CAPABILITIES.len() - 2);
        assert!(!drop.contains(&"CAP_CHOWN".to_string()), "{drop:?}");
        assert!(drop.contains(&"CAP_DAC_OVERRIDE".to_string()), "{drop:?}");
        assert!(both.is_empty());
        // Add ALL: the bounding set less the drops.
        let (drop, add, _) =
            buildah_capabilities(&strings(&["KILL"]), &strings(&["ALL"]), &bounding);
        assert_eq!(drop, strings(&["CAP_KILL"]));
        assert_eq!(add, strings(&["CAP_CHOWN", "CAP_NET_RAW"]));
        // ALL in both: none.
        let (drop, add, both) =
            buildah_capabilities(&strings(&["ALL"]), &strings(&["ALL"]), &bounding);
        assert_eq!((drop.len(), add.len()), (CAPABILITIES.len(), 0));
        assert_eq!(both, strings(&["ALL"]));
    }
}
