//! `--data snapshot` and `--data auto` on the control plane's CSI stack (`scripts/control-plane.sh
//! start DIR --csi`): the old volume's driver snapshots it (external-snapshotter's
//! snapshot-controller and csi-snapshotter in front of the test driver, which archives the
//! volume's tree with owners, modes and times), and the claim is made again on the new class from
//! the snapshot. The data is checked on the files; every test ends with the leak check of
//! `tests/csi.rs`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::api::DynamicObject;
use testkit::csi::{
    DRIVER_A, DRIVER_B, assert_no_leak, snapshot_archive, snapshot_handle, snapshots, volume_dir,
    wait_deleted, wait_snapshots_deleted,
};
use testkit::fault_proxy::{Fault, Gate, Match, Which};
use testkit::files::{assert_same_tree, chmod, chown, data_dir, plain_tree};
use testkit::hook_runner::{HookRunner, RunnerOpts};
use testkit::prelude::*;
use testkit::release::image;
use testkit::rows::check_rows;

const RECORD: &str = "storageclass-migrate/copy";
const COPIED_TO: &str = "storageclass-migrate/copied-to";
/// The chart's rules for `data: snapshot`.
const SNAPSHOT_RULES: [&str; 4] = ["always", "inUseEvict", "keepData", "dataSnapshot"];

/// Writes [`plain_tree`] into `dir`, whose own owner and mode are set first: the same tree
/// wherever it is written.
fn write_tree(dir: &Path) {
    chown(dir, 0, 0);
    chmod(dir, 0o755);
    plain_tree(dir);
}

/// Claim `data` of release `rel` on class A (driver A), bound, its volume holding
/// [`plain_tree`]; the hook's account has the chart's rules `when`.
struct Scene {
    c: Cluster,
    claim: PersistentVolumeClaim,
    pv: PersistentVolume,
    /// The same tree, written apart: what the new volume must hold.
    expected: PathBuf,
    account: ServiceAccountAccess,
}

impl Scene {
    /// Class B on driver A: a snapshot can carry the data.
    async fn new(prefix: &str) -> Scene {
        Self::with(prefix, Class::new("b").csi(DRIVER_A), &SNAPSHOT_RULES).await
    }

    async fn with(prefix: &str, b: Class, when: &[&str]) -> Scene {
        Self::build(prefix, Class::new("a").csi(DRIVER_A), b, "1Gi", when).await
    }

    /// Classes A and B, the claim requesting `request` of class A.
    async fn build(prefix: &str, a: Class, b: Class, request: &str, when: &[&str]) -> Scene {
        let c = Cluster::with_classes(prefix, a, b).await;
        Claim::new("data")
            .request(request)
            .class(&c.a)
            .label("app.kubernetes.io/managed-by", "Helm")
            .of_release("rel", c.name())
            .create_bound(&c)
            .await;
        write_tree(&claim_dir(&c, "data").await);
        let expected = data_dir(&c.scoped("expected"));
        write_tree(&expected);
        let claim = read(&c.claims(), "data").await.expect("claim data");
        let pv = get(&c.pvs(), volume_name(&claim).expect("bound")).await;
        let account = Account::new("hook")
            .chart(&["data"], c.name(), when, None)
            .create(&c)
            .await;
        Scene {
            c,
            claim,
            pv,
            expected,
            account,
        }
    }

    /// The migration to class B by snapshot, as the chart's account.
    fn job(&self, extra: &[(&str, &str)]) -> Job {
        self.c
            .migration(
                "data",
                &[
                    ("DATA_POLICY", "snapshot"),
                    ("WAIT_TIMEOUT", "60s"),
                    ("DEADLINE", "3m"),
                ],
            )
            .with(extra)
            .kubeconfig(&self.account.kubeconfig)
    }

    async fn migrate(&self, extra: &[(&str, &str)]) -> Run {
        self.job(extra).run_within(Duration::from_secs(240)).await
    }

    /// The end state of a migration that kept the data: `data` made again on class B, with the
    /// labels and annotations Helm gave it, bound to a new volume of driver A that holds the same
    /// tree; nothing temporary left; no volume leaked. Returns the new volume.
    async fn assert_moved(&self) -> PersistentVolume {
        let c = &self.c;
        let claim = wait_bound(c.client(), c.name(), "data").await;
        assert_made_again(&claim, &self.claim, &c.b);
        let source = claim.spec.as_ref().and_then(|s| s.data_source.clone());
        let source = source.expect("the claim is restored from a snapshot");
        assert_eq!(
            (source.kind.as_str(), source.name.as_str()),
            ("VolumeSnapshot", snapshot_name(&self.claim).as_str())
        );
        let new = get(&c.pvs(), volume_name(&claim).expect("bound")).await;
        assert_ne!(new.uid(), self.pv.uid());
        let dir = testkit::objects::volume_dir(&new).expect("a volume of the CSI stack");
        assert!(
            dir.starts_with(volume_dir(DRIVER_A, "")),
            "{}",
            dir.display()
        );
        let compared = assert_same_tree(&self.expected, &dir, false, false);
        assert!(compared > 15, "only {compared} entries compared");
        assert!(
            read(&c.claims(), "data-migrate-source").await.is_none(),
            "the temporary claim is left"
        );
        assert_no_leak(c).await;
        new
    }

    /// The old volume, kept: Released, Retain, its data there, marked as carried over.
    async fn assert_old_volume_kept(&self) {
        let c = &self.c;
        let old = wait_pv_phase(c.client(), &self.pv.name_any(), "Released").await;
        assert_eq!(old.uid(), self.pv.uid());
        let policy = old
            .spec
            .as_ref()
            .unwrap()
            .persistent_volume_reclaim_policy
            .as_deref();
        assert_eq!(policy, Some("Retain"));
        let to = old
            .annotations()
            .get(COPIED_TO)
            .expect("marked as carried over");
        assert!(to.contains(&snapshot_name(&self.claim)), "{to}");
        let dir = testkit::objects::volume_dir(&old).expect("a volume of the CSI stack");
        assert_same_tree(&self.expected, &dir, false, false);
    }

    /// The snapshot the run took, if it is there.
    async fn snapshot(&self) -> Option<DynamicObject> {
        let name = snapshot_name(&self.claim);
        snapshots(&self.c)
            .get_opt(&name)
            .await
            .unwrap_or_else(|e| panic!("reading VolumeSnapshot {name}: {e}"))
    }
}

/// `<claim>-migrated-<the first 8 characters of its uid>`.
fn snapshot_name(claim: &PersistentVolumeClaim) -> String {
    let uid = claim.uid().expect("a claim read from the API");
    format!("{}-migrated-{}", claim.name_any(), &uid[..8])
}

#[tokio::test]
async fn snapshot_keeps_every_file_and_the_claim_as_helm_made_it() {
    testkit::require_root!("the tree has owners other than root");
    let s = Scene::new("snap").await;
    let run = s.migrate(&[]).await;
    let o = run.expect_shape(
        0,
        "migrated: found class, volume; done volume-retained, claim-deleted, claim-gone, \
         copy-claim-created, snapshot-taken, claim-recreated, copy-removed; \
         left snapshot-kept, volume-kept",
    );
    let name = snapshot_name(&s.claim);
    assert_eq!(o.done_names("snapshot-taken"), [name.as_str()], "{run}");
    assert_eq!(o.left_names("snapshot-kept"), [name.as_str()], "{run}");
    s.assert_moved().await;
    s.assert_old_volume_kept().await;

    // The snapshot stays, a backup labelled with the claim and its release, from the driver's
    // default class; the driver's archive is there.
    let snapshot = s.snapshot().await.expect("the snapshot is kept");
    let labels = snapshot.labels();
    assert_eq!(
        labels.get("storageclass-migrate/claim").map(String::as_str),
        Some("data")
    );
    assert_eq!(
        labels
            .get("storageclass-migrate/release")
            .map(String::as_str),
        Some("rel")
    );
    assert_eq!(
        labels.get("storageclass-migrate/claim-uid"),
        s.claim.uid().as_ref()
    );
    assert_eq!(snapshot.data["spec"]["volumeSnapshotClassName"], "csi-a");
    let (driver, handle) = snapshot_handle(&s.c, &snapshot).await;
    assert_eq!(driver, DRIVER_A);
    assert!(snapshot_archive(DRIVER_A, &handle).is_file());

    // Done: a rerun has nothing to do.
    let again = s.migrate(&[]).await;
    again.expect_result(0, "nothing-to-do");
}

#[tokio::test]
async fn delete_snapshot_and_delete_old_volume_leave_only_the_new_volume() {
    testkit::require_root!("the tree has owners other than root");
    let rules = [&SNAPSHOT_RULES[..], &["deleteSnapshot"]].concat();
    let s = Scene::with("snap-delete", Class::new("b").csi(DRIVER_A), &rules).await;
    let handle =
        s.pv.spec
            .as_ref()
            .unwrap()
            .csi
            .as_ref()
            .unwrap()
            .volume_handle
            .clone();
    let run = s
        .migrate(&[("DELETE_SNAPSHOT", "true"), ("DELETE_OLD_VOLUME", "true")])
        .await;
    let o = run.expect_status(0).outcome();
    let name = snapshot_name(&s.claim);
    assert_eq!(o.done_names("snapshot-deleted"), [name.as_str()], "{run}");
    assert_eq!(
        o.done_names("volume-reclaim-restored"),
        [s.pv.name_any().as_str()],
        "{run}"
    );
    assert!(
        !o.has_left("snapshot-kept") && !o.has_left("volume-kept"),
        "{run}"
    );
    s.assert_moved().await;
    // The old volume goes through its driver; so does the snapshot's archive.
    wait_deleted(DRIVER_A, &handle).await;
    assert!(s.snapshot().await.is_none(), "the snapshot is left");
    let taken = wait_snapshots_deleted(DRIVER_A, &handle).await;
    assert_eq!(taken.len(), 1, "one snapshot of the old volume: {taken:?}");
    assert_no_leak(&s.c).await;
}

/// A volume larger than its claim (class A's driver allocates in steps of 64 MiB; the claim asks
/// for 10 MiB): external-provisioner restores a snapshot only into a claim at least its restore
/// size, so the claim made again asks for that size, and is bound with the data.
#[tokio::test]
async fn a_volume_larger_than_its_claim_is_restored_at_the_snapshot_size() {
    testkit::require_root!("the tree has owners other than root");
    let step = (64u64 << 20).to_string();
    let a = Class::new("a")
        .csi(DRIVER_A)
        .parameter("capacityStep", &step);
    let b = Class::new("b").csi(DRIVER_A);
    let s = Scene::build("snap-size", a, b, "10Mi", &SNAPSHOT_RULES).await;
    let capacity = s.pv.spec.as_ref().unwrap().capacity.as_ref().unwrap()["storage"]
        .0
        .clone();
    assert_eq!(capacity, "64Mi", "the driver rounded the volume up");

    let run = s.migrate(&[]).await;
    let o = run.expect_status(0).outcome();
    assert!(o.has_done("claim-recreated"), "{run}");
    s.assert_moved().await;
    let claim = read(&s.c.claims(), "data")
        .await
        .expect("the claim made again");
    let requested = &claim.spec.unwrap().resources.unwrap().requests.unwrap()["storage"].0;
    assert!(
        ["64Mi", "67108864"].contains(&requested.as_str()),
        "the claim asks for {requested}"
    );
}

#[tokio::test]
async fn a_snapshot_across_drivers_is_refused_naming_copy() {
    let s = Scene::with("snap-cross", Class::new("b").csi(DRIVER_B), &SNAPSHOT_RULES).await;
    let run = s.migrate(&[]).await;
    run.expect_error(
        3,
        "refused",
        &[
            "restored only by the driver that took it",
            "DATA_POLICY=copy",
        ],
    );
    s.c.assert_untouched(&s.claim, &s.pv).await;
    assert!(s.snapshot().await.is_none());
    assert_no_leak(&s.c).await;
}

/// Refused before any change: a snapshot class that does not exist, or one of another driver.
#[tokio::test]
async fn a_snapshot_class_that_cannot_snapshot_the_volume_is_refused() {
    let s = Scene::new("snap-class").await;
    for (class, fragment) in [("nope", "does not exist"), ("csi-b", "is for driver")] {
        let run = s.migrate(&[("SNAPSHOT_CLASS", class)]).await;
        run.expect_error(3, "refused", &[fragment]);
        s.c.assert_untouched(&s.claim, &s.pv).await;
    }
}

#[tokio::test]
async fn without_the_snapshot_rules_the_run_is_denied_before_anything_changes() {
    let s = Scene::with(
        "snap-rbac",
        Class::new("b").csi(DRIVER_A),
        &["always", "inUseEvict", "keepData"],
    )
    .await;
    let run = s.migrate(&[]).await;
    run.expect_error(4, "failed", &["volumesnapshot"]);
    s.c.assert_untouched(&s.claim, &s.pv).await;
    assert!(s.snapshot().await.is_none());
}

#[tokio::test]
async fn a_dry_run_says_it_would_snapshot_and_changes_nothing() {
    let s = Scene::new("snap-dry").await;
    let run = s.migrate(&[("DRY_RUN", "true")]).await;
    let o = run.expect_status(0).outcome();
    assert!(o.has_would("snapshot-taken"), "{run}");
    assert!(o.has_would("volume-retained"), "{run}");
    s.c.assert_untouched(&s.claim, &s.pv).await;
    assert!(s.snapshot().await.is_none());
}

/// A new class that binds on first use: the claim is made from the snapshot and left Pending for
/// the chart's pod; the snapshot is kept even with `DELETE_SNAPSHOT`, since the restore still
/// needs it.
#[tokio::test]
async fn a_class_that_binds_on_first_use_keeps_the_snapshot_for_the_restore() {
    let rules = [&SNAPSHOT_RULES[..], &["deleteSnapshot"]].concat();
    let b = Class::new("b").csi(DRIVER_A).wait_for_first_consumer();
    let s = Scene::with("snap-wffc", b, &rules).await;
    let run = s.migrate(&[("DELETE_SNAPSHOT", "true")]).await;
    let o = run.expect_status(0).outcome();
    assert!(o.has_left("snapshot-kept"), "{run}");
    assert!(!o.has_done("snapshot-deleted"), "{run}");
    let claim = read(&s.c.claims(), "data")
        .await
        .expect("the claim made again");
    assert_eq!(
        claim.status.and_then(|s| s.phase).as_deref(),
        Some("Pending")
    );
    assert!(s.snapshot().await.is_some());
    assert_no_leak(&s.c).await;
}

/// `auto`: a snapshot between classes of one driver, a copy across drivers (the copy Job run by
/// the hook runner, the image's binary copying between the drivers' directories).
#[tokio::test]
async fn auto_snapshots_on_one_driver_and_copies_across_drivers() {
    testkit::require_root!("the tree has owners other than root");
    let auto = [("DATA_POLICY", "auto"), ("COPY_IMAGE", &image())];
    let rules = [&SNAPSHOT_RULES[..], &["dataCopy"]].concat();
    let same = Scene::with("auto-same", Class::new("b").csi(DRIVER_A), &rules).await;
    let run = same.migrate(&auto).await;
    let o = run.expect_status(0).outcome();
    assert!(
        o.has_done("snapshot-taken") && !o.has_done("data-copied"),
        "{run}"
    );
    same.assert_moved().await;

    let cross = Scene::with("auto-cross", Class::new("b").csi(DRIVER_B), &rules).await;
    let _runner = HookRunner::start(cross.c.name(), RunnerOpts::default());
    let run = cross.migrate(&auto).await;
    let o = run.expect_status(0).outcome();
    assert!(
        o.has_done("data-copied") && !o.has_done("snapshot-taken"),
        "{run}"
    );
    let claim = wait_bound(cross.c.client(), cross.c.name(), "data").await;
    let new = get(&cross.c.pvs(), volume_name(&claim).expect("bound")).await;
    let dir = testkit::objects::volume_dir(&new).expect("a volume of the CSI stack");
    assert!(
        dir.starts_with(volume_dir(DRIVER_B, "")),
        "{}",
        dir.display()
    );
    assert_same_tree(&cross.expected, &dir, false, false);
    assert!(cross.snapshot().await.is_none());
    assert_no_leak(&cross.c).await;
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
    /// The snapshot, created: the snapshot controller goes on without the hook.
    SnapshotCreated,
    /// The claim, created again from the snapshot.
    ClaimCreated,
    /// The temporary claim's delete, after the apiserver acted.
    SourceDeleted,
    /// The old volume marked as carried over, after the apiserver acted.
    OldVolumeSettled,
}

#[test]
fn killed_at_each_step_a_rerun_finishes_with_the_data() {
    testkit::require_root!("the tree has owners other than root");
    let rows = [
        KillAt::Protect,
        KillAt::ClaimDeleted,
        KillAt::SourceCreated,
        KillAt::SnapshotCreated,
        KillAt::ClaimCreated,
        KillAt::SourceDeleted,
        KillAt::OldVolumeSettled,
    ];
    check_rows(
        rows.to_vec(),
        |at| format!("{at:?}"),
        |at| async move {
            let s = Scene::new("snap-kill").await;
            let ns = s.c.name();
            let claims = format!("/api/v1/namespaces/{ns}/persistentvolumeclaims");
            let snapshots =
                format!("/apis/snapshot.storage.k8s.io/v1/namespaces/{ns}/volumesnapshots");
            let pv = format!("/api/v1/persistentvolumes/{}", s.pv.name_any());
            let (matcher, which, hold_answer) = match at {
                KillAt::Protect => (Match::write("PATCH", &pv), Which::Nth(1), false),
                // The first delete is the pre-flight's (its dryRun is in the body).
                KillAt::ClaimDeleted => (
                    Match::request("DELETE", &format!("{claims}/data")),
                    Which::Nth(2),
                    true,
                ),
                KillAt::SourceCreated => (Match::write("POST", &claims), Which::Nth(1), true),
                KillAt::SnapshotCreated => (Match::write("POST", &snapshots), Which::Nth(1), true),
                KillAt::ClaimCreated => (Match::write("POST", &claims), Which::Nth(2), true),
                KillAt::SourceDeleted => (
                    Match::request("DELETE", &format!("{claims}/data-migrate-source")),
                    Which::Nth(1),
                    true,
                ),
                // Retain and record, the claimRef to the temporary claim, then the mark.
                KillAt::OldVolumeSettled => (Match::write("PATCH", &pv), Which::Nth(3), true),
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
            s.assert_old_volume_kept().await;
            let old = get(&s.c.pvs(), &s.pv.name_any()).await;
            assert!(old.annotations().contains_key(RECORD));
            assert!(s.snapshot().await.is_some());
        },
    );
}
