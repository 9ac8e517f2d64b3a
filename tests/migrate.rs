//! The binary as the hook Job runs it: a subprocess configured by environment variables, against
//! the local control plane, on real classes, volumes bound by the PV controller, pods and service
//! accounts. Every test asserts the exit status, the outcome (result and the kinds and names of
//! what was found, done and left) and the end state read back through the API; a few pin the
//! human summary line.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Event;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use serde_json::json;
use testkit::hold::{Hold, cel_adds, cel_removes};
use testkit::prelude::*;

/// A finalizer of another controller, e.g. a backup tool that holds the claim while it copies.
const BACKUP_FINALIZER: &str = "example.com/backup";
/// The annotation the binary puts on a volume it is to delete, before it deletes the claim.
const DELETE_AFTER_CLAIM: &str = "storageclass-migrate/delete-after-claim";
/// Why an unset or empty DESIRED_STORAGECLASS does nothing.
const NO_CLASS_DESIRED: &str = "no class desired: the chart leaves storageClassName out and Helm leaves it alone (name a class to move claims to it)";
/// A Retain volume with DELETE_RETAINED_PV: its reclaim policy is switched to Delete; the
/// hostPath deleter then refuses (paths outside /tmp), and the volume is left, Failed.
const RECLAIM_SWITCHED: &str = "done volume-marked, claim-deleted, claim-gone, volume-reclaim-delete; left volume-reclaim-failed";
/// The outcome of a migration that keeps the claim's Retain volume.
const KEPT: &str =
    "migrated: found class, volume; done claim-deleted, claim-gone; left volume-kept";

/// The PV controller's `reason` event on the claim, once it has reported it.
async fn claim_event(c: &Cluster, claim: &str, reason: &str) -> Event {
    let events: Api<Event> = Api::namespaced(c.client().clone(), c.name());
    let lp = ListParams::default().fields(&format!(
        "involvedObject.kind=PersistentVolumeClaim,involvedObject.name={claim}"
    ));
    poll(&format!("a {reason} event on claim {claim}"), || async {
        let list = events.list(&lp).await.expect("listing events");
        list.items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some(reason))
    })
    .await
}

/// Runs the binary as the ServiceAccount `sa` with the chart's rules for `claim` (the sets in
/// `when`, less `without`), to move the claim to class B with `extra` settings.
async fn run_as(
    c: &Cluster,
    sa: &str,
    claim: &str,
    when: &[&str],
    without: Option<(&str, &str)>,
    extra: &[(&str, &str)],
) -> Run {
    let access = Account::new(sa)
        .chart(&[claim], c.name(), when, without)
        .create(c)
        .await;
    let run = c
        .migration(claim, extra)
        .kubeconfig(&access.kubeconfig)
        .run()
        .await;
    assert!(
        !run.output().contains(&access.token),
        "the token appears in the output"
    );
    run
}

const EVICT: [&str; 2] = ["always", "inUseEvict"];
const WRITE: [&str; 3] = ["always", "inUseEvict", "writeVolumes"];
/// The rules of STRIP_ALL_FINALIZERS.
const STRIP: [&str; 5] = [
    "always",
    "inUseEvict",
    "patchClaims",
    "writeVolumes",
    "stripAllFinalizers",
];

/// The cases, in a module so that a name filter (`migrate::`) selects exactly them.
mod migrate {
    use super::*;

    // ------------------------------------------------------------------------------------------
    // Nothing to do

    #[tokio::test]
    async fn absent_claim_changes_nothing() {
        let c = Cluster::new("absent").await;
        let (neighbour, pv) = c.bound("neighbour", "Retain").await;
        // A missing target class does not block a fresh install; a run that may delete volumes
        // finds none left by an interrupted run.
        for (class, delete_retained) in [
            (c.b.clone(), "false"),
            (c.ns.scoped("missing"), "false"),
            (c.b.clone(), "true"),
        ] {
            let job = c.migration("data", &[("DESIRED_STORAGECLASS", &class)]);
            let run = job.set("DELETE_RETAINED_PV", delete_retained).run().await;
            let o = run.expect_shape(0, "nothing-to-do");
            assert_eq!(o.detail.as_deref(), Some("claim absent"), "{run}");
            assert_eq!(o.claim, format!("{}/data", c.name()));
        }
        assert!(read(&c.claims(), "data").await.is_none());

        // A namespace that does not exist is bad input, not an absent claim.
        let missing = c.ns.scoped("nowhere");
        let run = c.migrate("data", &[("PVC_NAMESPACE", &missing)]).await;
        let o = run.expect_status(2).outcome();
        assert_eq!(
            (o.claim.as_str(), o.shape().as_str()),
            (format!("{missing}/data").as_str(), "failed"),
            "{run}"
        );
        assert_eq!(o.error(), format!("namespace \"{missing}\" does not exist"));
        c.assert_untouched(&neighbour, &pv).await;
    }

    #[tokio::test]
    async fn nil_class_claim_is_kept() {
        let c = Cluster::new("nil-class").await;
        let _lock = c.no_default_class().await;
        // Binds to a volume without class (pre-bound to it: such volumes are open to every
        // test's claims), so that no later default class is assigned to it.
        let (claim, _) = c
            .bound_with(Claim::new("data"), c.reserved_for("data"))
            .await;
        assert_eq!(claim_class(&claim), None);

        let run = c.migrate("data", &[]).await;
        let o = run.expect_shape(0, "nothing-to-do");
        assert_eq!(
            o.detail.as_deref(),
            Some("storageClassName is unset, Helm can set it")
        );
        assert_unchanged(&c.claims(), &claim).await;
        assert_eq!(claim_class(&get(&c.claims(), "data").await), None);

        // No class desired and no default class: nothing to compare with.
        let other = c.bound("other", "Retain").await.0;
        let run = c.run(&[("PVC_NAME", "other")]).await;
        let o = run.expect_shape(0, "nothing-to-do");
        assert_eq!(o.detail.as_deref(), Some(NO_CLASS_DESIRED), "{run}");
        assert!(
            run.stderr.contains("no class desired"),
            "the log says so\n{run}"
        );
        assert_unchanged(&c.claims(), &other).await;
    }

    #[tokio::test]
    async fn claim_on_desired_class_is_kept() {
        let c = Cluster::new("same-class").await;
        let on_b = Claim::new("data").class(&c.b);
        let (claim, pv) = c.bound_with(on_b, c.volume_for("data").class(&c.b)).await;
        // `-` is no class: a claim with storageClassName "" is on it.
        let no_class = Claim::new("empty").class("");
        let (empty, empty_pv) = c.bound_with(no_class, c.reserved_for("empty")).await;
        for (claim, desired) in [("data", c.b.as_str()), ("empty", "-")] {
            let run = c.migrate(claim, &[("DESIRED_STORAGECLASS", desired)]).await;
            let o = run.expect_shape(0, "nothing-to-do");
            assert_eq!(o.detail.as_deref(), Some("already on the desired class"));
        }
        for (claim, pv) in [(&claim, &pv), (&empty, &empty_pv)] {
            assert_unchanged(&c.claims(), claim).await;
            assert_unchanged(&c.pvs(), pv).await;
        }
    }

    // ------------------------------------------------------------------------------------------
    // The default class

    /// Unset and empty mean "no class desired": nothing to do, whatever the default class (the
    /// script compared with "" and deleted this healthy claim).
    #[tokio::test]
    async fn unset_class_with_the_claims_class_as_default_keeps_the_claim() {
        let c = Cluster::new("default-same").await;
        let _lock = c.no_default_class().await;
        let default = c.default_class("default").await;
        let on_default = Claim::new("data").class(&default.name);
        let volume = c.volume_for("data").class(&default.name);
        let (claim, pv) = c.bound_with(on_default, volume).await;
        for desired in [None, Some("")] {
            let job = c.job(&[("PVC_NAME", "data")]);
            let job = desired.map_or(job.clone(), |d| job.set("DESIRED_STORAGECLASS", d));
            let run = job.run().await;
            let o = run.expect_shape(0, "nothing-to-do");
            assert_eq!(
                o.detail.as_deref(),
                Some(NO_CLASS_DESIRED),
                "{desired:?}\n{run}"
            );
            c.assert_untouched(&claim, &pv).await;
        }
        // Values are taken as given: " " is not a class name.
        let run = c.migrate("data", &[("DESIRED_STORAGECLASS", " ")]).await;
        run.expect(2, &["\" \""]);
        c.assert_untouched(&claim, &pv).await;
    }

    /// A claim on another class than the default is not moved to the default either: Helm never
    /// touches a field that both its manifests omit, so neither does the hook.
    #[tokio::test]
    async fn unset_class_with_another_default_changes_nothing() {
        let c = Cluster::new("default-other").await;
        let _lock = c.no_default_class().await;
        let _default = c.default_class("default").await;
        let (claim, pv) = c.bound("data", "Retain").await;

        let run = c.migrate("data", &[("DESIRED_STORAGECLASS", "")]).await;
        let o = run.expect_shape(0, "nothing-to-do");
        assert_eq!(o.detail.as_deref(), Some(NO_CLASS_DESIRED), "{run}");
        c.assert_untouched(&claim, &pv).await;
    }

    /// Of two default classes, admission gives a claim without class the newest; the binary,
    /// told no class, leaves a claim on the older one alone.
    #[tokio::test]
    async fn of_two_default_classes_admission_takes_the_newest_and_the_binary_nothing() {
        let c = Cluster::new("two-defaults").await;
        let _lock = c.no_default_class().await;
        // The older default sorts after the newer one by name, so a tie-break by name alone would
        // pick the older one.
        let older = c.default_class("z-older").await;
        // creationTimestamp has whole seconds: let the next class be created in a later one.
        let next_second = older.created.expect("creationTimestamp") + 1;
        let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        while (now().unwrap().as_secs() as i64) < next_second {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let newer = c.default_class("m-newer").await;
        assert!(newer.created > older.created);
        let probe = Claim::new("probe").create(&c).await;
        assert_eq!(claim_class(&probe), Some(newer.name.as_str()));

        let on_older = Claim::new("data").class(&older.name);
        let volume = c.volume_for("data").class(&older.name);
        let (claim, pv) = c.bound_with(on_older, volume).await;
        let run = c.run(&[("PVC_NAME", "data")]).await;
        let o = run.expect_shape(0, "nothing-to-do");
        assert_eq!(o.detail.as_deref(), Some(NO_CLASS_DESIRED), "{run}");
        c.assert_untouched(&claim, &pv).await;
    }

    #[tokio::test]
    async fn dash_means_no_class() {
        let (c, _, _) = Cluster::with_bound_claim("dash", "Retain").await;
        let run = c.migrate("data", &[("DESIRED_STORAGECLASS", "-")]).await;
        let o = run.expect_shape(0, KEPT);
        assert_eq!(o.detail.as_deref(), Some("no class (\"\")"), "{run}");
        assert!(read(&c.claims(), "data").await.is_none());
    }

    // ------------------------------------------------------------------------------------------
    // Volumes by reclaim policy

    #[tokio::test]
    async fn delete_policy_volume_left_behind_is_named() {
        let (c, _, pv) = Cluster::with_bound_claim("reclaim-delete", "Delete").await;
        let pv_name = pv.name_any();
        let run = c.migrate("data", &[("WAIT_TIMEOUT", "10s")]).await;
        let o = run.expect_status(0).expect_warning().outcome();
        // The hostPath deleter refuses paths outside /tmp: the volume fails to reclaim (or, on a
        // slow controller, is still there at the timeout) and stays.
        let shape = o.shape();
        let left = shape
            .strip_prefix("migrated: found class, volume; done claim-deleted, claim-gone; left ")
            .unwrap_or_else(|| panic!("{run}"));
        assert!(
            left == "volume-reclaim-pending" || left == "volume-reclaim-failed",
            "{run}"
        );
        assert_eq!(o.left[0].name.as_deref(), Some(pv_name.as_str()), "{run}");
        if left == "volume-reclaim-failed" {
            assert!(
                o.left[0]
                    .text
                    .contains("host_path deleter only supports /tmp/"),
                "{run}"
            );
        }
        assert!(read(&c.claims(), "data").await.is_none());
        let kept = get(&c.pvs(), &pv_name).await;
        assert_eq!(kept.uid(), pv.uid());
        assert!(kept.metadata.deletion_timestamp.is_none());
        assert_eq!(kept.finalizers(), pv.finalizers());
    }

    /// The human line, as `kubectl describe pod` shows it: one golden line.
    #[tokio::test]
    async fn retain_policy_volume_is_kept_released() {
        let (c, claim, pv) = Cluster::with_bound_claim("reclaim-retain", "Retain").await;
        let pv_name = pv.name_any();
        let run = c.migration("data", &[]).human().run().await;
        run.expect_status(0);
        let expected = format!(
            "{}/data: migrated to class \"{}\": found class \"{}\", bound to PV {pv_name} (Retain); done: claim deleted, claim gone; left: PV {pv_name} (Retain) with the old data",
            c.name(),
            c.b,
            c.a
        );
        assert_eq!(run.stdout.trim_end(), expected);
        assert_eq!(run.termination_log, expected);
        let released = c.assert_gone_and_kept("data", &pv).await;
        assert_eq!(released.uid(), pv.uid());
        assert!(released.metadata.deletion_timestamp.is_none());
        assert_eq!(
            claim_ref_uid(&released),
            claim.uid().as_deref(),
            "still names the old claim, so the data can be recovered"
        );
    }

    /// With DELETE_RETAINED_PV the volume's reclaim policy is switched to Delete, so that its
    /// provisioner deletes the backing storage too; the in-tree hostPath deleter refuses paths
    /// outside /tmp, so here the volume is left, Failed, and named.
    #[tokio::test]
    async fn retain_policy_volume_deleted_on_request() {
        let (c, _, pv) = Cluster::with_bound_claim("delete-retained", "Retain").await;
        let pv_name = pv.name_any();
        let run = c.migrate("data", &[("DELETE_RETAINED_PV", "true")]).await;
        let o = run.expect_shape(
            0,
            &format!("migrated: found class, volume; {RECLAIM_SWITCHED}"),
        );
        assert_eq!(
            o.done_names("volume-reclaim-delete"),
            [pv_name.as_str()],
            "{run}"
        );
        assert_eq!(
            o.left_names("volume-reclaim-failed"),
            [pv_name.as_str()],
            "{run}"
        );
        c.assert_gone_and_switched_to_delete("data", &pv).await;
    }

    /// A volume as a CSI provisioner leaves it: reclaim Delete, the provisioner's annotation and
    /// finalizer. The provisioner does not run, so the volume is never deleted by it.
    async fn csi_like_cluster(prefix: &str) -> (Cluster, PersistentVolume) {
        let csi = Class::new("a").provisioner(CSI_PROVISIONER);
        let c = Cluster::with_classes(prefix, csi.clone(), csi).await;
        let (_, pv) = c
            .bound_with(c.claim("data"), c.volume_for("data").csi())
            .await;
        let mut finalizers = pv.finalizers().to_vec();
        finalizers.sort();
        assert_eq!(finalizers, [PROVISIONER_FINALIZER, PV_PROTECTION]);
        (c, pv)
    }

    #[tokio::test]
    async fn provisioner_finalizer_is_kept_by_default() {
        let (c, pv) = csi_like_cluster("csi-keep").await;
        let pv_name = pv.name_any();
        let run = c.migrate("data", &[("WAIT_TIMEOUT", "5s")]).await;
        let o = run.expect_status(0).expect_warning().outcome();
        let shape = "migrated: found class, volume; done claim-deleted, claim-gone; left volume-reclaim-pending";
        assert_eq!(o.shape(), shape, "{run}");
        assert_eq!(
            o.left_names("volume-reclaim-pending"),
            [pv_name.as_str()],
            "{run}"
        );
        assert!(o.left[0].text.ends_with("still present after 5s"), "{run}");
        assert!(read(&c.claims(), "data").await.is_none());
        // Waiting for its (absent) provisioner, with the provisioner's finalizer in place.
        let left = wait_pv_phase(c.client(), &pv_name, "Released").await;
        assert_eq!(left.uid(), pv.uid());
        assert!(left.metadata.deletion_timestamp.is_none());
        assert!(
            left.finalizers().iter().any(|f| f == PROVISIONER_FINALIZER),
            "{:?}",
            left.finalizers()
        );
        // Clean-up: nothing else would ever remove it.
        remove_finalizer(&c.pvs(), &pv_name, PROVISIONER_FINALIZER).await;
    }

    #[tokio::test]
    async fn strip_all_finalizers_strips_the_provisioner_finalizer_and_deletes_the_volume() {
        let (c, pv) = csi_like_cluster("csi-strip").await;
        let pv_name = pv.name_any();
        let strip = [("STRIP_ALL_FINALIZERS", "true"), ("WAIT_TIMEOUT", "10s")];
        let run = c.migrate("data", &strip).await;
        let o = run.expect_status(0).expect_warning().outcome();
        // No pod uses the claim, so once it is deleted the PVC protection controller removes
        // kubernetes.io/pvc-protection itself, racing the run's strip, and the run reports the
        // strip only when its own patch removed the finalizer. The controller won in a full run
        // on 1.33, and on 1.37 once in ten with its PersistentVolumeClaimUnusedSinceTime gate off.
        let claim_stripped = o.done_names("claim-finalizer-stripped");
        let claim_step = if claim_stripped.is_empty() {
            ""
        } else {
            assert_eq!(claim_stripped, [PVC_PROTECTION], "{run}");
            " claim-finalizer-stripped,"
        };
        assert_eq!(
            o.shape(),
            format!(
                "migrated: found class, volume; done volume-marked, claim-deleted,{claim_step} \
                 claim-gone, volume-deleted, volume-finalizer-stripped"
            ),
            "{run}"
        );
        let stripped = &o.done.last().expect("done steps").text;
        assert!(stripped.contains(PROVISIONER_FINALIZER), "{run}");
        assert_eq!(o.done_names("volume-deleted"), [pv_name.as_str()], "{run}");
        c.assert_both_gone("data", &pv).await;
    }

    // ------------------------------------------------------------------------------------------
    // Claims in use

    #[tokio::test]
    async fn in_use_evict_deletes_the_claim_then_evicts_the_pod() {
        let (c, _, pv) = Cluster::with_bound_claim("evict", "Retain").await;
        let pod = c.running_pod("user", "data").await;
        let stand_in = KubeletStandIn::start(c.name());
        let run = c.migrate("data", &[("WAIT_TIMEOUT", "30s")]).await;
        let o = run.expect_shape(0, "migrated: found class, volume, used-by; done claim-deleted, pod-evicted, claim-gone; left volume-kept");
        assert_eq!(o.found_names("used-by"), ["user"], "{run}");
        assert!(
            o.found[2]
                .text
                .ends_with(&format!("on node {}", node_of(&pod))),
            "{run}"
        );
        assert_eq!(o.done_names("pod-evicted"), ["user"], "{run}");
        assert_eq!(stand_in.deleted_pods(), ["user"]);
        assert!(read(&c.claims(), "data").await.is_none());
        let after = read(&c.pods(), "user").await;
        assert!(
            after.as_ref().is_none_or(|p| p.uid() != pod.uid()),
            "{after:#?}"
        );
        wait_pv_phase(c.client(), &pv.name_any(), "Released").await;
    }

    #[tokio::test]
    async fn in_use_force_deletes_the_claim_at_once_and_leaves_the_pod() {
        let (c, _, _) = Cluster::with_bound_claim("force", "Retain").await;
        let pod = c.running_pod("user", "data").await;
        let force = [("IN_USE_POLICY", "force"), ("WAIT_TIMEOUT", "10s")];
        let run = c.migrate("data", &force).await;
        let o = run.expect_shape(0, "migrated: found class, volume, used-by; done claim-deleted, claim-finalizer-stripped, claim-gone; left volume-kept");
        assert_eq!(
            o.done_names("claim-finalizer-stripped"),
            [PVC_PROTECTION],
            "{run}"
        );
        let warning = run
            .stderr
            .lines()
            .find(|l| l.contains("WARN") && l.contains(PVC_PROTECTION))
            .unwrap_or_else(|| panic!("no warning about stripping pvc-protection\n{run}"));
        assert!(warning.contains("pod user on node"), "{warning}");
        assert!(read(&c.claims(), "data").await.is_none());
        assert_unchanged(&c.pods(), &pod).await;
    }

    /// A refusal as people read it: one golden line.
    #[tokio::test]
    async fn in_use_fail_refuses_and_changes_nothing() {
        let (c, claim, pv) = Cluster::with_bound_claim("fail", "Retain").await;
        let pod = c.running_pod("user", "data").await;
        let run = c
            .migration("data", &[("IN_USE_POLICY", "fail")])
            .human()
            .run()
            .await;
        run.expect_status(3);
        assert_eq!(
            run.line(),
            format!(
                "{}/data: refused, nothing changed: found class \"{}\": in use by pod user on node {} (--in-use fail); stop them or choose --in-use evict",
                c.name(),
                c.a,
                node_of(&pod)
            )
        );
        c.assert_untouched(&claim, &pv).await;
        assert_unchanged(&c.pods(), &pod).await;
    }

    #[tokio::test]
    async fn claim_already_being_deleted_is_resumed() {
        let (c, claim, pv) = Cluster::with_bound_claim("resume", "Retain").await;
        c.running_pod("user", "data").await;
        // A previous run deleted the claim and stopped; pvc-protection holds it for the pod.
        let precondition = Preconditions {
            uid: claim.uid(),
            resource_version: None,
        };
        c.claims()
            .delete("data", &DeleteParams::default().preconditions(precondition))
            .await
            .expect("deleting the claim");
        assert!(
            get(&c.claims(), "data")
                .await
                .metadata
                .deletion_timestamp
                .is_some()
        );

        let stand_in = KubeletStandIn::start(c.name());
        let run = c.migrate("data", &[("WAIT_TIMEOUT", "30s")]).await;
        run.expect_shape(0, "migrated: found class, being-deleted, volume, used-by; done pod-evicted, claim-gone; left volume-kept");
        assert_eq!(stand_in.deleted_pods(), ["user"]);
        c.assert_gone_and_kept("data", &pv).await;
    }

    // ------------------------------------------------------------------------------------------
    // Refusals and waits

    #[tokio::test]
    async fn volume_of_another_claim_is_refused() {
        let c = Cluster::new("other-claim").await;
        // `owner` is bound to its volume; `data` names that volume in spec.volumeName.
        let (owner, owned_pv) = c.bound("owner", "Retain").await;
        let owned_pv_name = owned_pv.name_any();
        c.claim("data").volume(&owned_pv_name).create(&c).await;

        // A volume released by an earlier claim `again`, and a new claim `again` pinned to it.
        let (old, released) = c.bound("again", "Retain").await;
        let released_name = released.name_any();
        c.claims()
            .delete("again", &DeleteParams::default())
            .await
            .expect("deleting the old claim");
        wait_deleted(&c.claims(), "again").await;
        wait_pv_phase(c.client(), &released_name, "Released").await;
        c.claim("again").volume(&released_name).create(&c).await;

        // The PV controller has seen both claims and left them pending.
        for claim in ["data", "again"] {
            let event = claim_event(&c, claim, "FailedBinding").await;
            let message = event.message.as_deref().unwrap_or_default();
            assert!(
                message.contains("already bound to a different claim"),
                "{event:#?}"
            );
        }
        let data = get(&c.claims(), "data").await;
        let again = get(&c.claims(), "again").await;
        let owned_pv = get(&c.pvs(), &owned_pv_name).await;
        let released = get(&c.pvs(), &released_name).await;
        assert_eq!(pv_phase(&released), Some("Released"));

        let run = c.migrate("data,again", &[]).await;
        let outcomes = run.expect_status(3).outcomes();
        let ns = c.name();
        let refusals: Vec<(&str, &str, String)> = outcomes
            .iter()
            .map(|o| (o.claim.as_str(), o.result.as_str(), o.error().to_owned()))
            .collect();
        assert_eq!(
            refusals,
            [
                (
                    format!("{ns}/data").as_str(),
                    "refused",
                    format!(
                        "PersistentVolume {owned_pv_name} is bound to claim {ns}/owner (uid {}), not to this claim; it is not touched",
                        owner.uid().unwrap()
                    )
                ),
                (
                    format!("{ns}/again").as_str(),
                    "refused",
                    format!(
                        "PersistentVolume {released_name} is bound to claim {ns}/again (uid {}), not to this claim; it is not touched",
                        old.uid().unwrap()
                    )
                ),
            ],
            "{run}"
        );
        assert!(outcomes.iter().all(|o| !o.changed), "{run}");
        for claim in [&data, &again, &owner] {
            assert_unchanged(&c.claims(), claim).await;
        }
        assert_unchanged(&c.pvs(), &owned_pv).await;
        assert_unchanged(&c.pvs(), &released).await;
    }

    #[tokio::test]
    async fn missing_target_class_is_refused() {
        let (c, claim, pv) = Cluster::with_bound_claim("missing-class", "Delete").await;
        let missing = c.ns.scoped("missing");
        let run = c
            .migrate("data", &[("DESIRED_STORAGECLASS", &missing)])
            .await;
        let o = run.expect_status(3).outcome();
        assert_eq!((o.result.as_str(), o.changed), ("refused", false), "{run}");
        assert_eq!(
            o.error(),
            format!(
                "StorageClass \"{missing}\" does not exist; a claim recreated on it would never bind, so the old claim is kept"
            )
        );
        c.assert_untouched(&claim, &pv).await;
    }

    #[tokio::test]
    async fn foreign_finalizer_times_out_then_a_rerun_succeeds() {
        let c = Cluster::new("foreign-timeout").await;
        let held = c.claim("data").finalizer(BACKUP_FINALIZER);
        let (claim, pv) = c.bound_with(held, c.volume_for("data")).await;
        let pv_name = pv.name_any();
        let job = c.migration(
            "data",
            &[("DELETE_RETAINED_PV", "true"), ("WAIT_TIMEOUT", "5s")],
        );
        let run = job.run().await;
        let o = run.expect_status(6).outcome();
        assert_eq!(o.result, "part-way", "{run}");
        assert_eq!(
            o.found_names("foreign-finalizer"),
            [BACKUP_FINALIZER],
            "{run}"
        );
        assert_eq!(o.done_kinds(), ["volume-marked", "claim-deleted"], "{run}");
        assert!(
            o.error().starts_with(&format!(
                "timed out after 5s waiting for claim {}/data to be deleted (finalizers ",
                c.name()
            )) && o.error().contains(BACKUP_FINALIZER),
            "{run}"
        );
        let held = get(&c.claims(), "data").await;
        assert!(held.metadata.deletion_timestamp.is_some());
        assert!(held.finalizers().iter().any(|f| f == BACKUP_FINALIZER));
        // The volume is only marked while the claim exists.
        let marked = get(&c.pvs(), &pv_name).await;
        assert_eq!(pv_phase(&marked), Some("Bound"));
        assert!(marked.metadata.deletion_timestamp.is_none());
        assert_eq!(
            marked.annotations().get(DELETE_AFTER_CLAIM),
            Some(&format!("{}/data/{}", c.name(), claim.uid().unwrap()))
        );

        // A rerun picks the claim up where the first stopped, and waits again.
        let rerun = job.run().await;
        let o = rerun.expect_status(5).outcome();
        assert!(
            o.has_found("being-deleted") && !o.has_done("claim-deleted"),
            "{rerun}"
        );
        assert_eq!(get(&c.claims(), "data").await.uid(), held.uid());

        // The backup tool is done: the claim goes, and the next run finishes the volume.
        remove_finalizer(&c.claims(), "data", BACKUP_FINALIZER).await;
        wait_deleted(&c.claims(), "data").await;
        wait_pv_phase(c.client(), &pv_name, "Released").await;
        let last = job.run().await;
        let o = last.expect_shape(
            0,
            "finished: found claim-absent, marked-volume; done volume-reclaim-delete; left volume-reclaim-failed",
        );
        assert_eq!(
            o.done_names("volume-reclaim-delete"),
            [pv_name.as_str()],
            "{last}"
        );
        c.assert_gone_and_switched_to_delete("data", &pv).await;
        // And then nothing more is done: the volume waits for its provisioner, and each run
        // names it.
        let again = job.run().await;
        let shape = "finished: found claim-absent, marked-volume; left volume-reclaim-failed";
        assert!(!again.expect_shape(0, shape).changed, "{again}");
    }

    #[tokio::test]
    async fn foreign_finalizer_is_waited_for_until_removed() {
        let c = Cluster::new("foreign-wait").await;
        let held = c.claim("data").finalizer(BACKUP_FINALIZER);
        let (_, pv) = c.bound_with(held, c.volume_for("data")).await;
        let settings = [("DELETE_RETAINED_PV", "true"), ("WAIT_TIMEOUT", "60s")];
        let binary = c.migrate("data", &settings);
        let backup_tool = async {
            // The binary deletes the claim, then waits; the backup tool lets go a little later.
            wait_for(&c.claims(), "data", "deletion by the binary", |claim| {
                claim.is_some_and(|c| c.metadata.deletion_timestamp.is_some())
            })
            .await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            remove_finalizer(&c.claims(), "data", BACKUP_FINALIZER).await;
            Instant::now()
        };
        let (run, released_at) = futures::join!(binary, backup_tool);
        let shape = format!("migrated: found class, volume, foreign-finalizer; {RECLAIM_SWITCHED}");
        run.expect_shape(0, &shape);
        // It went on as soon as the claim was gone, not at its timeout.
        assert!(released_at.elapsed() < Duration::from_secs(20), "{run}");
        c.assert_gone_and_switched_to_delete("data", &pv).await;
    }

    /// The claim is replaced between the binary's read and its delete: the binary's
    /// delete-after-claim mark on the volume (sent after the read, before the delete) is held in
    /// the apiserver by a webhook while the test deletes the claim and creates a new one under
    /// the same name. The delete's uid precondition then fails, and the new claim is kept.
    #[tokio::test]
    async fn claim_replaced_between_read_and_delete_is_not_deleted() {
        let (c, old, pv) = Cluster::with_bound_claim("replaced", "Retain").await;
        let pvs = c.pvs();
        let pv_name = pv.name_any();
        let mark = json!({"metadata": {"annotations": {DELETE_AFTER_CLAIM: "probe"}}});
        let dry_run = PatchParams {
            dry_run: true,
            ..PatchParams::default()
        };
        let mark = Patch::Merge(&mark);
        let probe = || pvs.patch(&pv_name, &dry_run, &mark);
        let adds_mark = cel_adds("annotations", DELETE_AFTER_CLAIM);
        let mut held = Hold::install(&c, "persistentvolumes", &adds_mark, probe).await;
        let binary = c.migrate(
            "data",
            &[("DELETE_RETAINED_PV", "true"), ("WAIT_TIMEOUT", "30s")],
        );
        let chart = async {
            // The binary has read the claim and its volume, and is marking the volume.
            let call = held.next_call(Instant::now() + WAIT_TIMEOUT).await;
            c.claims()
                .delete("data", &DeleteParams::default())
                .await
                .expect("deleting the claim");
            wait_deleted(&c.claims(), "data").await;
            let new = c.claim("data").create(&c).await;
            held.close();
            drop(call);
            new
        };
        let (run, new) = futures::join!(binary, chart);
        let o = run.expect_status(3).outcome();
        assert_eq!((o.result.as_str(), o.changed), ("refused", false), "{run}");
        assert_eq!(
            o.error(),
            format!(
                "the claim was replaced after it was read (uid {} is gone); the new claim is not deleted, run again to evaluate it",
                old.uid().unwrap()
            )
        );
        assert_ne!(new.uid(), old.uid());
        assert_unchanged(&c.claims(), &new).await;
        // The volume of the old claim is kept, released.
        let kept = wait_pv_phase(c.client(), &pv_name, "Released").await;
        assert_eq!(kept.uid(), pv.uid());
        assert!(kept.metadata.deletion_timestamp.is_none());
    }

    /// The claim is replaced after the binary deleted it and before it watches for it to go:
    /// with `force`, the binary's patch that strips pvc-protection is held in the apiserver while
    /// the pod goes, the claim goes and a new one is created under the same name. The binary's
    /// patch must not touch the new claim, and its wait must end on the old uid (a wait for "no
    /// claim of that name" would time out on the new one).
    #[tokio::test]
    async fn claim_replaced_while_the_binary_waits_is_left_alone() {
        let (c, old, pv) = Cluster::with_bound_claim("recreated", "Retain").await;
        c.running_pod("user", "data").await;
        c.claim("probe").create(&c).await;
        let claims = c.claims();
        let strip_all = json!({"metadata": {"finalizers": null}});
        let dry_run = PatchParams {
            dry_run: true,
            ..PatchParams::default()
        };
        let strip_all = Patch::Merge(&strip_all);
        let probe = || claims.patch("probe", &dry_run, &strip_all);
        // The binary's pre-flight sends the same patch as a dry run first: only the probe's dry run
        // and the real patch are held.
        let strips = format!(
            "(!request.dryRun || object.metadata.name == 'probe') && {}",
            cel_removes("finalizers", PVC_PROTECTION)
        );
        let mut held = Hold::install(&c, "persistentvolumeclaims", &strips, probe).await;

        let binary = c.migrate(
            "data",
            &[("IN_USE_POLICY", "force"), ("WAIT_TIMEOUT", "10s")],
        );
        let chart = async {
            // The binary has deleted the claim and is stripping pvc-protection.
            let call = held.next_call(Instant::now() + WAIT_TIMEOUT).await;
            held.close();
            let deleting = get(&c.claims(), "data").await;
            assert_eq!(deleting.uid(), old.uid());
            assert!(deleting.metadata.deletion_timestamp.is_some());
            // The pod goes, pvc-protection lets the claim go, the chart creates it again.
            let now = DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            };
            c.pods()
                .delete("user", &now)
                .await
                .expect("deleting the pod");
            wait_deleted(&c.claims(), "data").await;
            let new = c.claim("data").create(&c).await;
            drop(call);
            new
        };
        let (run, new) = futures::join!(binary, chart);
        let o = run.expect_status(0).outcome();
        assert_eq!(o.result, "migrated", "{run}");
        assert_eq!(o.found_kinds(), ["class", "volume", "used-by"], "{run}");
        assert_eq!(o.done_kinds().first(), Some(&"claim-deleted"), "{run}");
        assert_eq!(o.done_kinds().last(), Some(&"claim-gone"), "{run}");
        assert_eq!(o.left_kinds(), ["volume-kept"], "{run}");
        assert_ne!(new.uid(), old.uid());
        assert_unchanged(&c.claims(), &new).await;
        // Never stripped meanwhile either (the pvc-protection controller would have put it back).
        assert_eq!(new.finalizers(), [PVC_PROTECTION]);
        for version in versions_since(&c.claims(), &new).await {
            assert_eq!(version.uid(), new.uid());
            assert_eq!(version.finalizers(), [PVC_PROTECTION], "{version:#?}");
        }
        let kept = wait_pv_phase(c.client(), &pv.name_any(), "Released").await;
        assert_eq!(kept.uid(), pv.uid());
    }

    // ------------------------------------------------------------------------------------------
    // Dry run

    #[tokio::test]
    async fn dry_run_changes_nothing() {
        let c = Cluster::new("dry-run").await;
        let held = c.claim("data").finalizer(BACKUP_FINALIZER);
        let volume = c.volume_for("data").finalizer(PROVISIONER_FINALIZER);
        let (claim, pv) = c.bound_with(held, volume).await;
        let pv_name = pv.name_any();
        let pod = c.running_pod("user", "data").await;
        // Every step the script's settings would take, each sent with server-side dry run.
        let script = [
            ("IN_USE_POLICY", "force"),
            ("DELETE_RETAINED_PV", "true"),
            ("STRIP_ALL_FINALIZERS", "true"),
            ("DRY_RUN", "true"),
        ];
        let run = c.migrate("data", &script).await;
        let o = run.expect_status(0).outcome();
        let shape = "dry-run: found class, volume, used-by; would volume-marked, claim-deleted, claim-finalizer-stripped, claim-finalizer-stripped, volume-deleted, volume-finalizer-stripped";
        assert_eq!((o.shape().as_str(), o.changed), (shape, false), "{run}");
        assert_eq!(o.would_names("volume-deleted"), [pv_name.as_str()], "{run}");
        c.assert_untouched(&claim, &pv).await;
        assert_unchanged(&c.pods(), &pod).await;
        assert_eq!(pv_phase(&get(&c.pvs(), &pv_name).await), Some("Bound"));
        // Clean-up: let the namespace and the volume go.
        remove_finalizer(&c.claims(), "data", BACKUP_FINALIZER).await;
        remove_finalizer(&c.pvs(), &pv_name, PROVISIONER_FINALIZER).await;
    }

    #[tokio::test]
    async fn dry_run_does_not_evict() {
        let (c, claim, pv) = Cluster::with_bound_claim("dry-run-evict", "Delete").await;
        let pod = c.running_pod("user", "data").await;
        let stand_in = KubeletStandIn::start(c.name());
        let run = c.migrate("data", &[("DRY_RUN", "yes")]).await;
        let o = run.expect_shape(0, "dry-run: found class, volume, used-by; would claim-deleted, pod-evicted; left volume-reclaim-pending");
        assert_eq!(o.would_names("pod-evicted"), ["user"], "{run}");
        assert!(!o.changed && o.done.is_empty(), "{run}");
        c.assert_untouched(&claim, &pv).await;
        assert_unchanged(&c.pods(), &pod).await;
        assert!(stand_in.deleted_pods().is_empty());
    }

    // ------------------------------------------------------------------------------------------
    // Several claims

    /// The claims named, then the release's claims that the selector picks, each once; a run
    /// changes nothing unless every claim can go through: one claim refused holds back the others.
    #[tokio::test]
    async fn selector_and_names_a_refused_claim_holds_back_the_others() {
        let c = Cluster::new("selector").await;
        let db = |name: &str| c.claim(name).label("app", "db").of_release("rel", c.name());
        let (c1, pv1) = c.bound_with(db("c1"), c.volume_for("c1")).await;
        let (c2, pv2) = c.bound_with(db("c2"), c.volume_for("c2")).await;
        let on_b = db("c3").class(&c.b);
        let (c3, pv3) = c.bound_with(on_b, c.volume_for("c3").class(&c.b)).await;
        // Labelled, but not of the release: never picked.
        let stranger = c.claim("c4").label("app", "db");
        let (c4, pv4) = c.bound_with(stranger, c.volume_for("c4")).await;
        let (c5, pv5) = c.bound("c5", "Retain").await;
        let (c6, pv6) = c.bound("c6", "Retain").await;
        let pod = c.running_pod("user", "c5").await;

        let settings = [
            ("PVC_SELECTOR", "app=db"),
            ("RELEASE_NAME", "rel"),
            ("IN_USE_POLICY", "fail"),
        ];
        let run = c.migrate("c5,c6", &settings).await;
        let ns = c.name();
        let outcomes: Vec<(String, i32, String)> = run
            .expect_status(3)
            .outcomes()
            .into_iter()
            .map(|o| (o.claim.clone(), o.status, o.shape()))
            .collect();
        let row = |claim: &str, status: i32, shape: &str| {
            (format!("{ns}/{claim}"), status, shape.to_owned())
        };
        let held_back = "refused: found class, volume";
        assert_eq!(
            outcomes,
            [
                row("c5", 3, "refused: found class"),
                row("c6", 3, held_back),
                row("c1", 3, held_back),
                row("c2", 3, held_back),
                row("c3", 0, "nothing-to-do"),
            ],
            "{run}"
        );
        for o in &run.outcomes()[1..4] {
            assert!(
                o.error()
                    .starts_with("held back: c5 of this run could not go through"),
                "{run}"
            );
        }
        for (claim, pv) in [
            (&c1, &pv1),
            (&c2, &pv2),
            (&c3, &pv3),
            (&c4, &pv4),
            (&c5, &pv5),
            (&c6, &pv6),
        ] {
            c.assert_untouched(claim, pv).await;
        }
        assert_unchanged(&c.pods(), &pod).await;

        let none = [("PVC_SELECTOR", "app=none"), ("RELEASE_NAME", "rel")];
        let run = c
            .run(&[none[0], none[1], ("DESIRED_STORAGECLASS", &c.b)])
            .await;
        let o = run.expect_status(0).outcome();
        assert_eq!(o.claim, format!("{ns}/-l app=none"), "{run}");
        assert_eq!(
            o.detail.as_deref(),
            Some("no claim of the release matches the selector"),
            "{run}"
        );
    }

    // ------------------------------------------------------------------------------------------
    // RBAC: the rules of chart-snippet/rbac-rules.json, and nothing more

    #[tokio::test]
    async fn rbac_rules_are_enough() {
        let c = Cluster::new("rbac").await;

        // DELETE_RETAINED_PV: the volume rules are needed too.
        let (_, pv) = c.bound("data", "Retain").await;
        let delete_pv = [("DELETE_RETAINED_PV", "true")];
        let run = run_as(&c, "hook-write", "data", &WRITE, None, &delete_pv).await;
        let o = run.expect_status(0).outcome();
        assert_eq!(
            o.done_names("volume-reclaim-delete"),
            [pv.name_any().as_str()],
            "{run}"
        );
        c.assert_gone_and_switched_to_delete("data", &pv).await;

        // Default settings, with a pod to evict.
        let (_, pv) = c.bound("web", "Retain").await;
        c.running_pod("user", "web").await;
        let stand_in = KubeletStandIn::start(c.name());
        let run = run_as(&c, "hook", "web", &EVICT, None, &[("WAIT_TIMEOUT", "30s")]).await;
        run.expect_shape(0, "migrated: found class, volume, used-by; done claim-deleted, pod-evicted, claim-gone; left volume-kept");
        assert_eq!(stand_in.deleted_pods(), ["user"]);
        c.assert_gone_and_kept("web", &pv).await;
    }

    #[tokio::test]
    async fn rbac_without_claim_delete_is_forbidden_and_changes_nothing() {
        let (c, claim, pv) = Cluster::with_bound_claim("rbac-no-claim-delete", "Retain").await;
        let without = Some(("persistentvolumeclaims", "delete"));
        let run = run_as(&c, "hook", "data", &EVICT, without, &[]).await;
        let o = run.expect_status(4).outcome();
        assert_eq!((o.result.as_str(), o.changed), ("failed", false), "{run}");
        assert!(o.has_found("class"), "{run}");
        assert!(
            o.error().contains(&format!(
                "delete persistentvolumeclaims \"data\" in namespace \"{}\": HTTP 403 Forbidden",
                c.name()
            )) && o
                .error()
                .contains("cannot delete resource \"persistentvolumeclaims\""),
            "{run}"
        );
        c.assert_untouched(&claim, &pv).await;
    }

    #[tokio::test]
    async fn rbac_without_class_get_is_forbidden_and_changes_nothing() {
        let (c, claim, pv) = Cluster::with_bound_claim("rbac-no-class-get", "Retain").await;
        let without = Some(("storageclasses", "get"));
        let run = run_as(&c, "hook", "data", &EVICT, without, &[]).await;
        let o = run.expect_status(4).outcome();
        assert_eq!((o.result.as_str(), o.changed), ("failed", false), "{run}");
        let denied = format!("get storageclasses \"{}\": HTTP 403 Forbidden", c.b);
        assert!(o.error().contains(&denied), "{run}");
        c.assert_untouched(&claim, &pv).await;
    }

    /// Evictions are sent as dry runs before the claim is deleted: without the right to evict,
    /// nothing is changed (the claim is not left being deleted), and a rerun with it migrates.
    #[tokio::test]
    async fn rbac_without_eviction_is_forbidden_and_changes_nothing() {
        let (c, claim, pv) = Cluster::with_bound_claim("rbac-no-evict", "Retain").await;
        let pod = c.running_pod("user", "data").await;
        let settings = [("WAIT_TIMEOUT", "30s")];
        let without = Some(("pods/eviction", "create"));
        let run = run_as(&c, "hook", "data", &EVICT, without, &settings).await;
        let o = run.expect_result(4, "failed");
        assert!(!o.changed, "{run}");
        assert!(
            o.error().starts_with(&format!(
                "create pods/eviction \"user\" in namespace \"{}\": HTTP 403 Forbidden",
                c.name()
            )) && o
                .error()
                .contains("cannot create resource \"pods/eviction\""),
            "{run}"
        );
        c.assert_untouched(&claim, &pv).await;
        assert_unchanged(&c.pods(), &pod).await;

        let stand_in = KubeletStandIn::start(c.name());
        let rerun = run_as(&c, "hook-fixed", "data", &EVICT, None, &settings).await;
        rerun.expect_shape(0, "migrated: found class, volume, used-by; done claim-deleted, pod-evicted, claim-gone; left volume-kept");
        assert_eq!(stand_in.deleted_pods(), ["user"]);
        c.assert_gone_and_kept("data", &pv).await;
    }

    /// The volume is marked before the claim is deleted: without the right to patch volumes,
    /// nothing is changed.
    #[tokio::test]
    async fn rbac_without_volume_patch_is_forbidden_and_changes_nothing() {
        let (c, claim, pv) = Cluster::with_bound_claim("rbac-no-pv-patch", "Retain").await;
        let without = Some(("persistentvolumes", "patch"));
        let delete_pv = [("DELETE_RETAINED_PV", "true")];
        let run = run_as(&c, "hook", "data", &WRITE, without, &delete_pv).await;
        let o = run.expect_status(4).outcome();
        assert_eq!((o.result.as_str(), o.changed), ("failed", false), "{run}");
        assert!(o.done.is_empty(), "{run}");
        let denied = format!(
            "patch persistentvolumes \"{}\": HTTP 403 Forbidden",
            pv.name_any()
        );
        assert!(o.error().contains(&denied), "{run}");
        assert!(
            o.error()
                .contains("cannot patch resource \"persistentvolumes\""),
            "{run}"
        );
        c.assert_untouched(&claim, &pv).await;
    }

    /// STRIP_ALL_FINALIZERS deletes the volume after the claim; its delete is sent as a dry run
    /// before anything changes, so a denied volume delete leaves everything as it was. Once the
    /// rule is restored, a rerun migrates.
    #[tokio::test]
    async fn rbac_without_volume_delete_is_forbidden_and_changes_nothing() {
        let (c, claim, pv) = Cluster::with_bound_claim("rbac-no-pv-delete", "Retain").await;
        let pv_name = pv.name_any();
        let strip = [("STRIP_ALL_FINALIZERS", "true")];
        let without = Some(("persistentvolumes", "delete"));
        let run = run_as(&c, "hook", "data", &STRIP, without, &strip).await;
        let o = run.expect_result(4, "failed");
        assert!(!o.changed, "{run}");
        let denied = format!("delete persistentvolumes \"{pv_name}\": HTTP 403 Forbidden");
        assert!(o.error().starts_with(&denied), "{run}");
        assert!(
            o.error()
                .contains("cannot delete resource \"persistentvolumes\""),
            "{run}"
        );
        c.assert_untouched(&claim, &pv).await;

        let rerun = run_as(&c, "hook-fixed", "data", &STRIP, None, &strip).await;
        let o = rerun.expect_result(0, "migrated");
        assert_eq!(
            o.done_names("volume-deleted"),
            [pv_name.as_str()],
            "{rerun}"
        );
        c.assert_both_gone("data", &pv).await;
    }
}
