//! `--data copy` on the local control plane: the claim moves to class B with its data. The old
//! volume is a real directory holding every kind of entry; class B's volumes come from the
//! controller manager's host-path provisioner; the copy Job's pod runs in the image (or the
//! binary on the host) with both claims mounted, by the hook runner. The data is checked on the
//! files: contents, owners, modes, times, links, sparse regions.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job as BatchJob;
use testkit::fault_proxy::{Fault, Gate, Match, Which};
use testkit::files::{assert_same_tree, data_dir, every_kind};
use testkit::hook_runner::{HookRunner, RunnerOpts};
use testkit::prelude::*;
use testkit::release::image;
use testkit::rows::check_rows;

const RECORD: &str = "storageclass-migrate/copy";

/// Claim `data` on class A (Helm's labels and annotations) bound to a Delete volume whose
/// directory holds every kind of entry; class B provisions host-path volumes; a hook runner
/// runs the namespace's Job pods.
struct Scene {
    c: Cluster,
    claim: PersistentVolumeClaim,
    pv: PersistentVolume,
    data: PathBuf,
    xattrs: bool,
    account: ServiceAccountAccess,
    runner: HookRunner,
}

impl Scene {
    async fn new(prefix: &str) -> Scene {
        Self::with(prefix, Class::new("b").host_path_provisioner()).await
    }

    async fn with(prefix: &str, b: Class) -> Scene {
        Self::with_runner(prefix, b, RunnerOpts::default()).await
    }

    async fn with_runner(prefix: &str, b: Class, runner: RunnerOpts) -> Scene {
        let c = Cluster::with_classes(prefix, Class::new("a"), b).await;
        let data = data_dir(&c.scoped("old"));
        let xattrs = every_kind(&data);
        let claim = c
            .claim("data")
            .label("app.kubernetes.io/managed-by", "Helm")
            .of_release("rel", c.name());
        let volume = c.volume_for("data").reclaim("Delete").at(&data);
        let (claim, pv) = c.bound_with(claim, volume).await;
        let account = Account::new("hook")
            .chart(
                &["data"],
                c.name(),
                &["always", "inUseEvict", "keepData", "dataCopy"],
                None,
            )
            .create(&c)
            .await;
        let runner = HookRunner::start(c.name(), runner);
        Scene {
            c,
            claim,
            pv,
            data,
            xattrs,
            account,
            runner,
        }
    }

    /// The migration to class B with the data, as the chart's account.
    fn job(&self, extra: &[(&str, &str)]) -> Job {
        self.c
            .migration(
                "data",
                &[
                    ("DATA_POLICY", "copy"),
                    ("COPY_IMAGE", &image()),
                    ("WAIT_TIMEOUT", "60s"),
                    ("DEADLINE", "4m"),
                ],
            )
            .with(extra)
            .kubeconfig(&self.account.kubeconfig)
    }

    async fn migrate(&self, extra: &[(&str, &str)]) -> Run {
        self.job(extra).run_within(Duration::from_secs(300)).await
    }

    /// The end state of a migration that kept the data: `data` on class B, bound to a new
    /// volume whose directory is the same tree; the old volume kept, Retain; nothing temporary
    /// left. Returns the new volume.
    async fn assert_moved(&self) -> PersistentVolume {
        let c = &self.c;
        let claim = wait_bound(c.client(), c.name(), "data").await;
        assert_made_again(&claim, &self.claim, &c.b);
        let new = get(&c.pvs(), volume_name(&claim).expect("bound")).await;
        assert_ne!(new.uid(), self.pv.uid());
        assert_eq!(reclaim_policy(&new), "Delete", "the class's policy, back");
        assert!(
            !new.annotations()
                .keys()
                .any(|k| k.starts_with("storageclass-migrate/"))
        );
        let compared = assert_same_tree(&self.data, &host_path(&new), self.xattrs, false);
        assert!(compared > 20, "only {compared} entries compared");

        let old = get(&c.pvs(), &self.pv.name_any()).await;
        assert_eq!(old.uid(), self.pv.uid(), "the old volume was replaced");
        assert_eq!(reclaim_policy(&old), "Retain");
        assert!(old.annotations().contains_key(RECORD));
        assert!(
            self.data.join("docs/readme.txt").exists(),
            "the old data is gone"
        );
        for temporary in ["data-migrate-source", "data-migrate-target"] {
            assert!(
                read(&c.claims(), temporary).await.is_none(),
                "{temporary} left"
            );
        }
        let jobs: Api<BatchJob> = Api::namespaced(c.client().clone(), c.name());
        assert!(
            read(&jobs, "data-migrate-copy").await.is_none(),
            "the copy Job left"
        );
        new
    }
}

/// The copy's own summary line, as the hook reports it (`data-copied`).
fn copy_summary(o: &Outcome) -> String {
    o.done
        .iter()
        .find(|i| i.kind == "data-copied")
        .map(|i| i.text.clone())
        .unwrap_or_else(|| panic!("no data-copied step in {o:?}"))
}

fn reclaim_policy(pv: &PersistentVolume) -> &str {
    pv.spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
        .unwrap_or_default()
}

fn host_path(pv: &PersistentVolume) -> PathBuf {
    volume_dir(pv).expect("a hostPath volume")
}

#[tokio::test]
async fn the_claim_moves_to_class_b_with_its_data() {
    testkit::require_root!("the tree has owners other than root");
    let s = Scene::new("keep").await;
    let run = s.migrate(&[]).await;
    let o = run.expect_result(0, "migrated");
    for kind in [
        "volume-retained",
        "claim-deleted",
        "claim-gone",
        "copy-claim-created",
        "data-copied",
        "claim-recreated",
        "copy-removed",
    ] {
        assert!(o.has_done(kind), "{kind} not done\n{run}");
    }
    let copied = copy_summary(&o);
    assert!(copied.contains("copied"), "{copied}");
    assert_eq!(o.left_names("volume-kept"), [s.pv.name_any().as_str()]);
    s.assert_moved().await;

    // A second run on a finished migration changes nothing.
    let again = s.migrate(&[]).await;
    again.expect_result(0, "nothing-to-do");
}

/// A 1 GiB file and 100,000 small files (1 to 16 KiB, in 100 directories) move whole.
#[tokio::test]
async fn a_large_file_and_many_small_files_move_whole() {
    testkit::require_root!("the tree has owners other than root");
    let s = Scene::new("keep-large").await;
    let data = s.data.clone();
    tokio::task::spawn_blocking(move || {
        write_big_file(&data);
        write_small_files(&data);
    })
    .await
    .unwrap();
    let run = s.migrate(&[]).await;
    let o = run.expect_result(0, "migrated");
    let copied = copy_summary(&o);
    assert!(copied.contains("0 errors"), "{copied}");
    let new = s.assert_moved().await;
    let big = host_path(&new).join("large/one-gib.bin");
    assert_eq!(std::fs::metadata(big).unwrap().len(), 1 << 30);
}

/// A copy pod killed part-way (SIGKILL, as a node losing it would) is run again by its Job, and
/// the second copy finishes what the first began: the same tree, no half-written file left. The
/// 100,000 small files take several seconds to copy, so the kill at 2.5 s lands in the copy.
#[tokio::test]
async fn a_copy_pod_killed_part_way_is_run_again_and_the_copy_completes() {
    testkit::require_root!("the tree has owners other than root");
    let runner = RunnerOpts {
        kill_first: Some(Duration::from_millis(2500)),
        ..RunnerOpts::default()
    };
    let s = Scene::with_runner(
        "keep-pod-kill",
        Class::new("b").host_path_provisioner(),
        runner,
    )
    .await;
    let data = s.data.clone();
    tokio::task::spawn_blocking(move || write_small_files(&data))
        .await
        .unwrap();
    let run = s.migrate(&[]).await;
    run.expect_result(0, "migrated");
    let runs = s.runner.runs();
    assert_eq!(runs.len(), 2, "{}", s.runner.report());
    assert_eq!(
        runs[0].exit_code,
        137,
        "the first copy pod was not killed\n{}",
        s.runner.report()
    );
    assert_eq!(runs[1].exit_code, 0, "{}", s.runner.report());
    s.assert_moved().await;
}

/// Writes `large/one-gib.bin` below `dir`: 1 GiB, every 4 KiB block different.
fn write_big_file(dir: &std::path::Path) {
    use std::io::Write;
    std::fs::create_dir_all(dir.join("large")).unwrap();
    let file = std::fs::File::create(dir.join("large/one-gib.bin")).unwrap();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut block = [0u8; 4096];
    for i in 0u64..(1 << 18) {
        for (j, chunk) in block.chunks_mut(8).enumerate() {
            chunk.copy_from_slice(&(i * 512 + j as u64).to_le_bytes());
        }
        out.write_all(&block).unwrap();
    }
    out.flush().unwrap();
}

/// Writes `small/NN/NNNNN` below `dir`: 100,000 files of 1 to 16 KiB in 100 directories.
fn write_small_files(dir: &std::path::Path) {
    for d in 0..100 {
        let sub = dir.join(format!("small/{d:02}"));
        std::fs::create_dir_all(&sub).unwrap();
        for f in 0..1000 {
            let n = d * 1000 + f;
            let len = 1024 + (n * 7919) % (15 * 1024);
            let byte = (n % 251) as u8;
            std::fs::write(sub.join(format!("{n:05}")), vec![byte; len]).unwrap();
        }
    }
}

#[tokio::test]
async fn with_delete_old_volume_the_old_volume_goes_to_its_provisioner() {
    testkit::require_root!("the tree has owners other than root");
    let s = Scene::new("keep-delete-old").await;
    let run = s.migrate(&[("DELETE_OLD_VOLUME", "true")]).await;
    let o = run.expect_result(0, "migrated");
    assert!(o.has_done("volume-reclaim-restored"), "{run}");
    assert!(!o.has_left("volume-kept"), "{run}");
    let claim = wait_bound(s.c.client(), s.c.name(), "data").await;
    let new = get(&s.c.pvs(), volume_name(&claim).unwrap()).await;
    assert_same_tree(&s.data, &host_path(&new), s.xattrs, false);
    // Delete, released: the binder hands it to the deleter, which refuses a path outside /tmp
    // and marks it Failed; the policy is what matters.
    let old = get(&s.c.pvs(), &s.pv.name_any()).await;
    assert_eq!(reclaim_policy(&old), "Delete");
}

#[tokio::test]
async fn a_class_that_provisions_nothing_is_refused_before_anything_changes() {
    let s = Scene::with("keep-no-provisioner", Class::new("b")).await;
    let run = s.migrate(&[]).await;
    run.expect_error(3, "refused", &["cannot keep the data", "no provisioner"]);
    s.c.assert_untouched(&s.claim, &s.pv).await;
}

#[tokio::test]
async fn without_the_copy_rules_the_run_is_denied_before_anything_changes() {
    let s = Scene::new("keep-no-rules").await;
    let account = Account::new("plain")
        .chart(&["data"], s.c.name(), &["always", "inUseEvict"], None)
        .create(&s.c)
        .await;
    let run = s.job(&[]).kubeconfig(&account.kubeconfig).run().await;
    run.expect_status(4);
    s.c.assert_untouched(&s.claim, &s.pv).await;
}

#[tokio::test]
async fn restricted_pod_security_refuses_a_root_copy_and_takes_a_user_copy() {
    let s = Scene::new("keep-restricted").await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(s.c.client().clone());
    let label = serde_json::json!({"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": "restricted"
    }}});
    namespaces
        .patch(
            s.c.name(),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&label),
        )
        .await
        .expect("label the namespace");
    let run = s.migrate(&[]).await;
    run.expect_error(3, "refused", &["PodSecurity", "COPY_AS_USER"]);
    s.c.assert_untouched(&s.claim, &s.pv).await;

    let dry = s
        .migrate(&[("COPY_AS_USER", "1000"), ("DRY_RUN", "true")])
        .await;
    let o = dry.expect_result(0, "dry-run");
    assert!(o.has_would("data-copied"), "{dry}");
    s.c.assert_untouched(&s.claim, &s.pv).await;
}

/// A copy that fails (here: as a user that may not write the new volume, which the host-path
/// provisioner makes root's, mode 0750) stops the run part-way with the copy's own error; the
/// old data stays on the Retain volume, and a rerun (as root) finishes the migration.
#[tokio::test]
async fn a_failed_copy_stops_part_way_keeping_the_old_data_and_a_rerun_finishes() {
    testkit::require_root!("the tree has owners other than root");
    let s = Scene::new("keep-fail").await;
    let run = s.migrate(&[("COPY_AS_USER", "1000")]).await;
    let o = run.expect_error(
        6,
        "part-way",
        &["the copy Job data-migrate-copy failed", "/target"],
    );
    assert!(
        o.has_done("claim-gone") && !o.has_done("data-copied"),
        "{run}"
    );
    assert!(read(&s.c.claims(), "data").await.is_none());
    let old = get(&s.c.pvs(), &s.pv.name_any()).await;
    assert_eq!(reclaim_policy(&old), "Retain");
    assert!(s.data.join("docs/readme.txt").exists());

    let rerun = s.migrate(&[]).await;
    let o = rerun.expect_result(0, "finished");
    assert!(
        o.has_found("copy-record") && o.has_done("data-copied"),
        "{rerun}"
    );
    s.assert_moved().await;
}

#[tokio::test]
async fn bad_copy_settings_are_bad_input() {
    let c = Cluster::new("keep-input").await;
    let rows: &[(&[(&str, &str)], &str)] = &[
        (&[("DATA_POLICY", "copy")], "COPY_IMAGE"),
        (
            &[
                ("DATA_POLICY", "copy"),
                ("COPY_IMAGE", "x"),
                ("STRIP_ALL_FINALIZERS", "true"),
            ],
            "cannot be combined",
        ),
        (&[("COPY_IMAGE", "x")], "applies only with DATA_POLICY=copy"),
        (&[("DATA_POLICY", "move")], "invalid value 'move'"),
    ];
    for (settings, fragment) in rows {
        let run = c.migrate("data", settings).await;
        run.expect_status(2);
        assert!(run.output().contains(fragment), "{fragment:?}\n{run}");
    }
}

/// Where a run is killed: the request the proxy holds (or whose answer it holds) when the
/// binary gets SIGKILL.
#[derive(Clone, Copy, Debug)]
enum KillAt {
    /// The switch of the old volume to Retain, before it reaches the apiserver.
    Protect,
    /// The claim's delete, after the apiserver acted.
    ClaimDeleted,
    /// The temporary claim that holds the old volume, created.
    SourceCreated,
    /// The copy Job, created: the copy runs on without the hook.
    JobCreated,
    /// The temporary claim on class B, being deleted after the copy.
    TargetDeleted,
    /// The claim, created again on class B.
    ClaimCreated,
    /// The copy Job's removal, after the apiserver acted.
    JobRemoved,
}

#[test]
fn killed_at_each_step_a_rerun_finishes_with_the_data() {
    testkit::require_root!("the tree has owners other than root");
    let rows = [
        KillAt::Protect,
        KillAt::ClaimDeleted,
        KillAt::SourceCreated,
        KillAt::JobCreated,
        KillAt::TargetDeleted,
        KillAt::ClaimCreated,
        KillAt::JobRemoved,
    ];
    check_rows(
        rows.to_vec(),
        |at| format!("{at:?}"),
        |at| async move {
            let s = Scene::new("keep-kill").await;
            let ns = s.c.name();
            let claims = format!("/api/v1/namespaces/{ns}/persistentvolumeclaims");
            let jobs = format!("/apis/batch/v1/namespaces/{ns}/jobs");
            let (matcher, which, hold_answer) = match at {
                KillAt::Protect => (
                    Match::write(
                        "PATCH",
                        &format!("/api/v1/persistentvolumes/{}", s.pv.name_any()),
                    ),
                    Which::Nth(1),
                    false,
                ),
                // The first delete is the pre-flight's (its dryRun is in the body).
                KillAt::ClaimDeleted => (
                    Match::request("DELETE", &format!("{claims}/data")),
                    Which::Nth(2),
                    true,
                ),
                KillAt::SourceCreated => (Match::write("POST", &claims), Which::Nth(1), true),
                KillAt::JobCreated => (Match::write("POST", &jobs), Which::Nth(1), true),
                KillAt::TargetDeleted => (
                    Match::request("DELETE", &format!("{claims}/data-migrate-target")),
                    Which::Nth(1),
                    false,
                ),
                KillAt::ClaimCreated => (Match::write("POST", &claims), Which::Nth(3), true),
                KillAt::JobRemoved => (
                    Match::request("DELETE", &format!("{jobs}/data-migrate-copy")),
                    Which::Nth(1),
                    true,
                ),
            };
            let proxy = FaultProxy::to_apiserver(&s.account.token, ns);
            let gate = Gate::new();
            let fault = if hold_answer {
                Fault::HoldAnswer(gate.clone())
            } else {
                Fault::Hold(gate.clone())
            };
            proxy.on(matcher, which, fault);
            let binary = s.job(&[]).kubeconfig(proxy.kubeconfig()).spawn();
            gate.arrived(Duration::from_secs(120)).await;
            let killed = binary.kill();
            gate.abandon();
            assert_eq!(killed.code, None, "not killed\n{killed}");

            let rerun = s.migrate(&[]).await;
            rerun.expect_status(0);
            s.assert_moved().await;
        },
    );
}
