//! `--statefulset` on the local control plane: the StatefulSet controller makes the claims from
//! the template (classes A and B provisioned by the controller manager's host-path provisioner),
//! a [`PodBinder`] binds its pods to a node as the scheduler would (so they use their claims),
//! and the stand-in kubelet finishes evicted pods. The run goes through as the chart's account.
//! After a run, the tests create the StatefulSet again with the new template, as Helm does in
//! the same upgrade, and read back where its claims are.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use testkit::fault_proxy::{Fault, Gate, Match, Which};
use testkit::helm::Helm;
use testkit::hook_runner::{HookRunner, RunnerOpts};
use testkit::prelude::*;
use testkit::release::image;
use testkit::rows::check_rows;

const SET: &str = "db";
/// What the API says to a change of the whole spec that includes a volumeClaimTemplate...
const FORBIDDEN: &str = "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden";
/// ...and to a change of the templates alone (as Kubernetes 1.37 words it).
const IMMUTABLE: &str = "spec.volumeClaimTemplates: Invalid value";

/// A StatefulSet `db` whose claims and pods are in place, with the hook's account.
/// Classes A and B provisioned by the controller manager's host-path provisioner.
fn host_path_classes() -> (Class, Class) {
    (
        Class::new("a").host_path_provisioner(),
        Class::new("b").host_path_provisioner(),
    )
}

struct Scene {
    c: Cluster,
    set: Sts,
    account: ServiceAccountAccess,
    _binder: PodBinder,
    _kubelet: KubeletStandIn,
}

impl Scene {
    /// Classes A and B (host-path provisioned), the binder and the stand-in kubelet; nothing
    /// else yet.
    async fn bare(prefix: &str, when: &[&str]) -> (Cluster, ServiceAccountAccess, PodBinder) {
        Self::bare_with(prefix, host_path_classes(), when).await
    }

    /// As [`Scene::bare`], with these classes A and B.
    async fn bare_with(
        prefix: &str,
        (a, b): (Class, Class),
        when: &[&str],
    ) -> (Cluster, ServiceAccountAccess, PodBinder) {
        let c = Cluster::with_classes(prefix, a, b).await;
        let account = Account::new("hook")
            .chart_statefulset(SET, c.name(), when, None)
            .create(&c)
            .await;
        let binder = PodBinder::start(&c).await;
        (c, account, binder)
    }

    /// The StatefulSet that `make` builds for the cluster, its `replicas` claims bound and pods
    /// Ready; the chart's rules of `when`.
    async fn with(
        prefix: &str,
        replicas: i32,
        when: &[&str],
        make: impl FnOnce(&Cluster) -> Sts,
    ) -> Scene {
        Self::with_classes(prefix, host_path_classes(), replicas, when, make).await
    }

    /// As [`Scene::with`], with these classes A and B.
    async fn with_classes(
        prefix: &str,
        classes: (Class, Class),
        replicas: i32,
        when: &[&str],
        make: impl FnOnce(&Cluster) -> Sts,
    ) -> Scene {
        let (c, account, binder) = Self::bare_with(prefix, classes, when).await;
        let kubelet = KubeletStandIn::start(c.name());
        let set = make(&c);
        set.create(&c).await;
        set.wait_claims(&c, replicas).await;
        set.wait_pods(&c, replicas).await;
        Scene {
            c,
            set,
            account,
            _binder: binder,
            _kubelet: kubelet,
        }
    }

    /// The StatefulSet `db` with `replicas` replicas on class A.
    async fn on_a(prefix: &str, replicas: i32) -> Scene {
        Self::with(prefix, replicas, &["always", "inUseEvict"], |c| {
            Sts::new(SET).replicas(replicas).class(&c.a)
        })
        .await
    }

    /// The run that moves the StatefulSet to class B, as the chart's hook.
    fn job(&self, extra: &[(&str, &str)]) -> Job {
        self.c
            .job(&[
                ("STATEFULSET_NAME", SET),
                ("VOLUME_CLAIM_TEMPLATE", "data"),
                ("DESIRED_STORAGECLASS", &self.c.b),
                ("WAIT_TIMEOUT", "60s"),
            ])
            .with(extra)
            .kubeconfig(&self.account.kubeconfig)
    }

    async fn migrate(&self, extra: &[(&str, &str)]) -> Run {
        self.job(extra).run_within(Duration::from_secs(240)).await
    }

    /// Writes into the volume of each of the first `replicas` claims a file `ordinal` saying
    /// `db-<n>`, owned by 1000+n:2000, mode 0640.
    async fn write_ordinals(&self, replicas: i32) {
        for n in 0..replicas {
            let dir = claim_dir(&self.c, &self.set.claim(n)).await;
            let file = dir.join("ordinal");
            std::fs::write(&file, format!("db-{n}\n")).unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
            std::os::unix::fs::chown(&file, Some(1000 + n as u32), Some(2000)).unwrap();
        }
    }

    /// Each claim (in ordinal order) holds the file of [`Scene::write_ordinals`]: content,
    /// owner and mode.
    async fn assert_ordinals(&self, claims: &[PersistentVolumeClaim]) {
        for (n, claim) in claims.iter().enumerate() {
            let dir = claim_dir(&self.c, &claim.name_any()).await;
            let file = dir.join("ordinal");
            let text = std::fs::read_to_string(&file).unwrap();
            assert_eq!(text, format!("db-{n}\n"), "{}", claim.name_any());
            let meta = std::fs::metadata(&file).unwrap();
            assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
            assert_eq!((meta.uid(), meta.gid()), (1000 + n as u32, 2000));
        }
    }

    async fn set(&self) -> Option<StatefulSet> {
        read(&self.c.sets(), SET).await
    }

    /// Creates the StatefulSet again with its template on class B and `replicas` replicas, as
    /// Helm does in the upgrade, and waits until the claims of its ordinals are bound.
    async fn recreate_on_b(&self, replicas: i32) -> Vec<PersistentVolumeClaim> {
        assert!(self.set().await.is_none(), "the StatefulSet is still there");
        let set = Sts::new(SET).replicas(replicas).class(&self.c.b);
        set.create(&self.c).await;
        let claims = set.wait_claims(&self.c, replicas).await;
        for claim in &claims {
            assert_eq!(
                claim_class(claim),
                Some(self.c.b.as_str()),
                "{}",
                claim.name_any()
            );
        }
        claims
    }
}

/// The outcome of the StatefulSet (the first) and of each claim handled, by claim name.
fn split(run: &Run) -> (Outcome, Vec<(String, Outcome)>) {
    let mut outcomes = run.outcomes();
    assert!(!outcomes.is_empty(), "no outcome\n{run}");
    let set = outcomes.remove(0);
    assert!(
        set.claim.ends_with(&format!("/statefulset/{SET}")),
        "the first outcome is not the StatefulSet's\n{run}"
    );
    let claims = outcomes
        .into_iter()
        .map(|o| (o.claim.rsplit('/').next().unwrap().to_owned(), o))
        .collect();
    (set, claims)
}

fn claim_names(claims: &[(String, Outcome)]) -> Vec<&str> {
    claims.iter().map(|(n, _)| n.as_str()).collect()
}

/// Tries to change the template's class, as `helm upgrade` without the hook does (a merge patch of
/// the templates): the API refuses it as invalid ([`FORBIDDEN`] or [`IMMUTABLE`], by version);
/// returns its message.
async fn change_the_template(c: &Cluster, class: &str) -> String {
    let mut set = Sts::new(SET).class(class).build();
    let current = get(&c.sets(), SET).await;
    set.spec.as_mut().unwrap().replicas = current.spec.as_ref().unwrap().replicas;
    let patch = json!({"spec": {"volumeClaimTemplates": set.spec.unwrap().volume_claim_templates}});
    let error = c
        .sets()
        .patch(SET, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .expect_err("the API accepted a new volumeClaimTemplate");
    let kube::Error::Api(status) = error else {
        panic!("not an API error: {error}");
    };
    assert_eq!(status.code, 422, "{status:?}");
    assert!(
        status.message.contains(FORBIDDEN)
            || status.message.contains(IMMUTABLE) && status.message.contains("field is immutable"),
        "{}",
        status.message
    );
    eprintln!("without the hook: {}", status.message);
    status.message
}

#[tokio::test]
async fn delete_moves_every_claim_also_a_scaled_down_one_and_the_template_changes() {
    // Four replicas scaled down to three: data-db-3 stays behind, unused.
    let s = Scene::on_a("sts-delete", 4).await;
    s.set.scale(&s.c, 3).await;
    wait_deleted(&s.c.pods(), "db-3").await;
    // Without the hook, the new template is refused.
    change_the_template(&s.c, &s.c.b).await;

    let run = s.migrate(&[]).await;
    run.expect_status(0);
    let (set, claims) = split(&run);
    assert_eq!(
        set.shape(),
        "migrated: found stateful-set, member, member, member, member; done stateful-set-orphaned, stateful-set-gone; left stateful-set-to-recreate",
        "{run}"
    );
    assert_eq!(
        set.found_names("member"),
        ["data-db-0", "data-db-1", "data-db-2", "data-db-3"]
    );
    assert_eq!(
        claim_names(&claims),
        ["data-db-0", "data-db-1", "data-db-2", "data-db-3"]
    );
    for (name, o) in &claims {
        let evicted = if name == "data-db-3" {
            ""
        } else {
            ", pod-evicted"
        };
        let used = if name == "data-db-3" { "" } else { ", used-by" };
        assert_eq!(
            o.shape(),
            format!(
                "migrated: found class, volume{used}; done claim-deleted{evicted}, claim-gone, volume-reclaimed"
            ),
            "{name}\n{run}"
        );
    }
    for n in 0..4 {
        assert!(read(&s.c.claims(), &s.set.claim(n)).await.is_none());
    }

    // Helm creates it again with the new template: every claim on class B; the scaled-down
    // ordinal comes back on B too when scaled up.
    s.recreate_on_b(3).await;
    assert!(read(&s.c.claims(), "data-db-3").await.is_none());
    Sts::new(SET).scale(&s.c, 4).await;
    let again = wait_bound(s.c.client(), s.c.name(), "data-db-3").await;
    assert_eq!(claim_class(&again), Some(s.c.b.as_str()));

    // Nothing is left to do.
    let rerun = s.migrate(&[]).await;
    let (set, claims) = split(&rerun);
    rerun.expect_status(0);
    assert_eq!(set.result, "nothing-to-do", "{rerun}");
    assert!(claims.is_empty(), "{rerun}");
}

#[tokio::test]
async fn with_when_deleted_delete_no_claim_is_collected_by_the_orphaning_delete() {
    // data-db-0 and data-db-1 exist on class B before the StatefulSet (on A) adopts them; its
    // controller makes data-db-2 on A. With whenDeleted: Delete it puts an owner reference to
    // the StatefulSet on each: a delete that is not orphaning would have them collected.
    let (c, account, binder) = Scene::bare("sts-owned", &["always", "inUseEvict"]).await;
    let kubelet = KubeletStandIn::start(c.name());
    let mut kept = Vec::new();
    for name in ["data-db-0", "data-db-1"] {
        kept.push(Claim::new(name).class(&c.b).create_bound(&c).await);
    }
    let set = Sts::new(SET).class(&c.a).when_deleted("Delete");
    let created = set.create(&c).await;
    set.wait_claims(&c, 3).await;
    set.wait_pods(&c, 3).await;
    for n in 0..3 {
        wait_for(
            &c.claims(),
            &set.claim(n),
            "an owner reference to the StatefulSet",
            |claim| {
                claim.is_some_and(|claim| {
                    claim
                        .owner_references()
                        .iter()
                        .any(|o| o.uid == created.uid().unwrap())
                })
            },
        )
        .await;
    }
    let s = Scene {
        c,
        set,
        account,
        _binder: binder,
        _kubelet: kubelet,
    };

    let run = s.migrate(&[]).await;
    run.expect_status(0);
    let (set, claims) = split(&run);
    assert!(set.has_done("stateful-set-orphaned"), "{run}");
    assert_eq!(claim_names(&claims), ["data-db-2"], "{run}");
    // The claims on B are the same objects, no longer owned, not being deleted; their pods run on.
    for before in &kept {
        let now = get(&s.c.claims(), &before.name_any()).await;
        assert_eq!(now.uid(), before.uid());
        assert!(now.metadata.deletion_timestamp.is_none(), "{now:#?}");
        assert!(now.owner_references().is_empty(), "{now:#?}");
    }
    for pod in ["db-0", "db-1"] {
        let pod = get(&s.c.pods(), pod).await;
        assert!(pod.metadata.deletion_timestamp.is_none(), "{pod:#?}");
        assert!(pod.owner_references().is_empty(), "{pod:#?}");
    }
    assert!(read(&s.c.claims(), "data-db-2").await.is_none());
    let claims = s.recreate_on_b(3).await;
    assert_eq!(claims[0].uid(), kept[0].uid());
    assert_eq!(claims[1].uid(), kept[1].uid());
}

#[tokio::test]
async fn a_budget_that_allows_no_disruption_refuses_before_anything_changes() {
    let s = Scene::on_a("sts-budget", 3).await;
    Budget::new("db", "app", SET).create(&s.c).await;
    Budget::wait_computed(&s.c, "db", 3).await;
    let set_before = s.set().await.unwrap();
    let mut claims_before = Vec::new();
    for n in 0..3 {
        claims_before.push(get(&s.c.claims(), &s.set.claim(n)).await);
    }

    let run = s.migrate(&[]).await;
    run.expect_status(3);
    let (set, claims) = split(&run);
    assert_eq!(set.result, "refused", "{run}");
    assert!(!set.changed && set.done.is_empty(), "{run}");
    assert!(set.error().contains("held back"), "{run}");
    for (name, o) in &claims {
        assert_eq!(o.result, "refused", "{name}\n{run}");
        assert!(!o.changed, "{name}\n{run}");
        assert!(
            o.error().contains("PodDisruptionBudget db"),
            "{name}\n{run}"
        );
    }
    let now = s.set().await.expect("the StatefulSet is still there");
    assert_eq!(now.uid(), set_before.uid());
    assert!(now.metadata.deletion_timestamp.is_none());
    for claim in &claims_before {
        assert_unchanged(&s.c.claims(), claim).await;
    }
    for n in 0..3 {
        let pod = get(&s.c.pods(), &format!("db-{n}")).await;
        assert!(pod.metadata.deletion_timestamp.is_none(), "{pod:#?}");
    }
}

/// `maxUnavailable: 1` allows the eviction of the one pod while its StatefulSet is there; once
/// the StatefulSet is deleted, orphaning the pod, the disruption controller counts pods through
/// their controllers and allows none. Refused before the StatefulSet goes.
#[tokio::test]
async fn a_budget_counting_through_the_statefulset_refuses_before_anything_changes() {
    let s = Scene::on_a("sts-budget-max", 1).await;
    Budget::new("db", "app", SET)
        .max_unavailable(1)
        .create(&s.c)
        .await;
    let computed = Budget::wait_computed(&s.c, "db", 1).await;
    assert_eq!(
        computed.status.as_ref().map(|st| st.disruptions_allowed),
        Some(1),
        "{computed:#?}"
    );
    let set_before = s.set().await.unwrap();
    let claim_before = get(&s.c.claims(), &s.set.claim(0)).await;

    let run = s.migrate(&[]).await;
    run.expect_status(3);
    let (set, claims) = split(&run);
    assert_eq!(set.result, "refused", "{run}");
    assert!(!set.changed && set.done.is_empty(), "{run}");
    let (name, o) = &claims[0];
    assert_eq!(o.result, "refused", "{name}\n{run}");
    assert!(
        o.error().contains("PodDisruptionBudget db") && o.error().contains("no disruption"),
        "{name}\n{run}"
    );
    let now = s.set().await.expect("the StatefulSet is still there");
    assert_eq!(now.uid(), set_before.uid());
    assert_unchanged(&s.c.claims(), &claim_before).await;
    let pod = get(&s.c.pods(), "db-0").await;
    assert!(pod.metadata.deletion_timestamp.is_none(), "{pod:#?}");
}

#[tokio::test]
async fn a_template_already_on_the_new_class_with_an_old_claim_left_moves_that_claim() {
    // data-db-1 was made on class A (an earlier, interrupted change); the template is on B.
    let (c, account, binder) = Scene::bare("sts-left", &["always", "inUseEvict"]).await;
    let kubelet = KubeletStandIn::start(c.name());
    let old = Claim::new("data-db-1").class(&c.a).create_bound(&c).await;
    let set = Sts::new(SET).class(&c.b);
    set.create(&c).await;
    let before = set.wait_claims(&c, 3).await;
    set.wait_pods(&c, 3).await;
    assert_eq!(before[1].uid(), old.uid());
    let s = Scene {
        c,
        set,
        account,
        _binder: binder,
        _kubelet: kubelet,
    };

    let run = s.migrate(&[]).await;
    run.expect_status(0);
    let (set, claims) = split(&run);
    assert_eq!(set.result, "migrated", "{run}");
    assert_eq!(claim_names(&claims), ["data-db-1"], "{run}");
    assert!(claims[0].1.has_done("pod-evicted"), "{run}");
    let after = s.recreate_on_b(3).await;
    assert_eq!(after[0].uid(), before[0].uid());
    assert_ne!(after[1].uid(), old.uid());
    assert_eq!(after[2].uid(), before[2].uid());
}

#[tokio::test]
async fn a_dry_run_says_what_it_would_do_and_changes_nothing() {
    let s = Scene::on_a("sts-dry", 2).await;
    let set_before = s.set().await.unwrap();
    let run = s.migrate(&[("DRY_RUN", "true")]).await;
    run.expect_status(0);
    let (set, claims) = split(&run);
    assert_eq!(
        set.shape(),
        "dry-run: found stateful-set, member, member; would stateful-set-orphaned",
        "{run}"
    );
    assert_eq!(claim_names(&claims), ["data-db-0", "data-db-1"]);
    for (_, o) in &claims {
        assert_eq!(o.result, "dry-run", "{run}");
        assert!(o.has_would("claim-deleted"), "{run}");
    }
    let now = s.set().await.unwrap();
    assert_eq!(now.uid(), set_before.uid());
    assert!(now.metadata.deletion_timestamp.is_none());
}

#[tokio::test]
async fn without_the_statefulset_and_its_template_the_run_is_refused() {
    let s = Scene::on_a("sts-which", 1).await;
    // As a run interrupted after the delete leaves it: the StatefulSet gone, its claims there.
    s.c.sets()
        .delete(
            SET,
            &kube::api::DeleteParams {
                propagation_policy: Some(kube::api::PropagationPolicy::Orphan),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    wait_deleted(&s.c.sets(), SET).await;
    let claim = get(&s.c.claims(), "data-db-0").await;
    let run = s.job(&[]).unset("VOLUME_CLAIM_TEMPLATE").run().await;
    run.expect_status(3);
    let (set, claims) = split(&run);
    assert!(claims.is_empty(), "{run}");
    assert!(set.error().contains("--template"), "{run}");
    assert!(set.error().contains("data-db-0"), "{run}");
    assert_unchanged(&s.c.claims(), &claim).await;
    // With the template named, the rerun moves the claim.
    let run = s.migrate(&[]).await;
    run.expect_status(0);
    s.recreate_on_b(1).await;
}

/// Where a run is killed: the answer the proxy holds when the binary gets SIGKILL.
#[derive(Clone, Copy, Debug)]
enum KillAt {
    /// The StatefulSet's delete, after the apiserver acted.
    SetDeleted,
    /// The second claim's delete, after the apiserver acted: the first claim has moved.
    FirstClaimMoved,
}

#[test]
fn killed_after_the_set_delete_or_the_first_claim_a_rerun_converges() {
    check_rows(
        vec![KillAt::SetDeleted, KillAt::FirstClaimMoved],
        |at| format!("{at:?}"),
        |at| async move {
            let s = Scene::on_a("sts-kill", 3).await;
            let ns = s.c.name();
            let (matcher, which) = match at {
                // The first delete is the pre-flight's (its dryRun is in the query).
                KillAt::SetDeleted => (
                    Match::request(
                        "DELETE",
                        &format!("/apis/apps/v1/namespaces/{ns}/statefulsets/{SET}"),
                    ),
                    Which::Nth(2),
                ),
                KillAt::FirstClaimMoved => (
                    Match::request(
                        "DELETE",
                        &format!("/api/v1/namespaces/{ns}/persistentvolumeclaims/data-db-1"),
                    ),
                    Which::Nth(2),
                ),
            };
            let proxy = FaultProxy::to_apiserver(&s.account.token, ns);
            let gate = Gate::new();
            proxy.on(matcher, which, Fault::HoldAnswer(gate.clone()));
            // One claim at a time: data-db-0 moves whole before data-db-1 is deleted.
            let binary = s
                .job(&[("CONCURRENCY", "1")])
                .kubeconfig(proxy.kubeconfig())
                .spawn();
            gate.arrived(Duration::from_secs(120)).await;
            let killed = binary.kill();
            gate.abandon();
            assert_eq!(killed.code, None, "not killed\n{killed}");
            // The StatefulSet's delete went through (the controller no longer recreates).
            wait_deleted(&s.c.sets(), SET).await;
            if let KillAt::FirstClaimMoved = at {
                assert!(read(&s.c.claims(), "data-db-0").await.is_none());
            }

            let rerun = s.migrate(&[]).await;
            rerun.expect_status(0);
            let (set, claims) = split(&rerun);
            assert!(set.has_found("stateful-set-absent"), "{rerun}");
            let expected: &[&str] = match at {
                KillAt::SetDeleted => &["data-db-0", "data-db-1", "data-db-2"],
                KillAt::FirstClaimMoved => &["data-db-1", "data-db-2"],
            };
            assert_eq!(claim_names(&claims), expected, "{rerun}");
            if let KillAt::FirstClaimMoved = at {
                assert!(claims[0].1.has_found("being-deleted"), "{rerun}");
            }
            for n in 0..3 {
                assert!(read(&s.c.claims(), &s.set.claim(n)).await.is_none());
            }
            s.recreate_on_b(3).await;
        },
    );
}

#[tokio::test]
async fn copy_keeps_each_claims_file_on_the_new_class() {
    testkit::require_root!("the copy keeps owners");
    let s = Scene::with(
        "sts-copy",
        3,
        &["always", "inUseEvict", "keepData", "dataCopy"],
        |c| Sts::new(SET).class(&c.a),
    )
    .await;
    s.write_ordinals(3).await;
    let _runner = HookRunner::start(s.c.name(), RunnerOpts::default());

    let run = s
        .migrate(&[
            ("DATA_POLICY", "copy"),
            ("COPY_IMAGE", &image()),
            ("DEADLINE", "4m"),
        ])
        .await;
    run.expect_status(0);
    let (set_outcome, claims) = split(&run);
    assert_eq!(set_outcome.result, "migrated", "{run}");
    for (name, o) in &claims {
        assert!(o.has_done("claim-recreated"), "{name}\n{run}");
        assert!(o.has_done("data-copied"), "{name}\n{run}");
    }
    // The claims are back, on B, before the StatefulSet; it adopts them by name.
    let claims = s.recreate_on_b(3).await;
    s.assert_ordinals(&claims).await;
}

/// `--data snapshot` with both classes on one CSI driver: each claim is made again on B from a
/// snapshot of its volume, and keeps its file; no volume is leaked.
#[tokio::test]
async fn snapshot_keeps_each_claims_file_on_the_new_class() {
    testkit::require_root!("the files have owners other than root");
    use testkit::csi::{DRIVER_A, assert_no_leak};
    let s = Scene::with_classes(
        "sts-snap",
        (
            Class::new("a").csi(DRIVER_A),
            Class::new("b").csi(DRIVER_A).parameter("tier", "fast"),
        ),
        3,
        &["always", "inUseEvict", "keepData", "dataSnapshot"],
        |c| Sts::new(SET).class(&c.a),
    )
    .await;
    s.write_ordinals(3).await;

    let run = s.migrate(&[("DATA_POLICY", "snapshot")]).await;
    run.expect_status(0);
    let (set_outcome, claims) = split(&run);
    assert_eq!(set_outcome.result, "migrated", "{run}");
    assert_eq!(claims.len(), 3, "{run}");
    for (name, o) in &claims {
        assert!(o.has_done("snapshot-taken"), "{name}\n{run}");
        assert!(o.has_done("claim-recreated"), "{name}\n{run}");
        assert!(o.has_left("snapshot-kept"), "{name}\n{run}");
    }
    let claims = s.recreate_on_b(3).await;
    s.assert_ordinals(&claims).await;
    assert_no_leak(&s.c).await;
}

/// A release of examples/statefulset installed with 4 replicas on class A (both classes
/// host-path provisioned), each claim holding a file `ordinal`, then scaled down to 3
/// (data-rel-db-3 stays behind), with its pod binder and kubelet stand-in. Returns the scene and
/// the StatefulSet as it is then.
async fn helm_scaled_down(
    helm: Helm,
) -> (
    testkit::release::Release,
    PodBinder,
    KubeletStandIn,
    k8s_openapi::api::apps::v1::StatefulSet,
) {
    use testkit::release::{Example, Release, ReleaseOpts, SET as REL_SET};
    let s = Release::with(
        "sts",
        ReleaseOpts {
            helm,
            example: Example::StatefulSet,
            class_a: Class::new("a").host_path_provisioner(),
            class_b: Class::new("b").host_path_provisioner(),
            timeout: "3m".into(),
            ..ReleaseOpts::default()
        },
    )
    .await;
    let binder = PodBinder::start(&s).await;
    let kubelet = KubeletStandIn::start(s.name());
    let set = Sts::new(REL_SET);
    let out = s
        .helm(
            "install",
            &[("persistence.storageClass", &s.a), ("replicas", "4")],
            false,
        )
        .await;
    s.expect_ok(&out);
    set.wait_claims(&s, 4).await;
    set.wait_pods(&s, 4).await;
    let out = s.helm("upgrade", &[("replicas", "3")], false).await;
    s.expect_ok(&out);
    wait_deleted(&s.pods(), &format!("{REL_SET}-3")).await;
    for n in 0..4 {
        let dir = claim_dir(&s, &set.claim(n)).await;
        std::fs::write(dir.join("ordinal"), format!("{n}\n")).unwrap();
    }
    let before = get(&s.sets(), REL_SET).await;
    (s, binder, kubelet, before)
}

/// `helm upgrade` to class B with the hook and `sets`, which must succeed; returns the hook's run,
/// which must have succeeded.
async fn upgrade_to_b(
    s: &testkit::release::Release,
    sets: &[(&str, &str)],
) -> testkit::hook_runner::HookRun {
    let mut all = vec![
        ("persistence.storageClass", s.b.as_str()),
        ("storageclassMigrate.timeout", "60s"),
    ];
    all.extend_from_slice(sets);
    let out = s.helm("upgrade", &all, false).await;
    s.expect_ok(&out);
    let run = s
        .runner
        .runs()
        .into_iter()
        .rfind(|r| r.job.as_deref() == Some("rel-db-storageclass-migrate"))
        .unwrap_or_else(|| panic!("the hook did not run\n{}", s.runner.report()));
    assert_eq!(run.exit_code, 0, "{run}");
    run
}

/// examples/statefulset through `helm upgrade` ([`helm_scaled_down`]): the upgrade to class B
/// fails without the hook and, with it and `data: copy`, brings every claim to B with its file,
/// the StatefulSet back with the new template.
async fn helm_upgrade_moves_the_statefulset_with_its_data(helm: Helm) {
    use testkit::release::SET as REL_SET;
    testkit::require_root!("the copy keeps owners");
    let (s, _binder, _kubelet, before) = helm_scaled_down(helm).await;
    let set = Sts::new(REL_SET);

    // Without the hook: the API refuses the new template, and helm says so.
    let out = s
        .helm(
            "upgrade",
            &[
                ("persistence.storageClass", &s.b),
                ("storageclassMigrate.allowMigration", "false"),
            ],
            false,
        )
        .await;
    s.expect_failed(&out);
    assert!(
        out.stderr.contains(FORBIDDEN) || out.stderr.contains("field is immutable"),
        "{out}"
    );
    eprintln!(
        "helm {} without the hook: {}",
        helm.major(),
        out.stderr.trim()
    );
    assert_eq!(get(&s.sets(), REL_SET).await.uid(), before.uid());

    // With the hook.
    let run = upgrade_to_b(
        &s,
        &[
            ("storageclassMigrate.allowMigration", "true"),
            ("storageclassMigrate.data", "copy"),
        ],
    )
    .await;
    // The termination message (a file, never interleaved with the log as the pod's output can
    // be): the StatefulSet's line, then one per claim; the claims' state is read back below.
    let lines: Vec<&str> = run.termination_message.lines().collect();
    let migrated = |what: &str| format!("{}/{what}: migrated to class {:?}", s.name(), s.b);
    assert!(
        lines[0].starts_with(&migrated(&format!("statefulset/{REL_SET}"))),
        "{run}"
    );
    // Cut at 4 KiB: the claims' lines that fit, in order.
    assert!(lines.len() >= 2, "{run}");
    let whole = if run.termination_message.ends_with("...") {
        &lines[1..lines.len() - 1]
    } else {
        &lines[1..]
    };
    for (n, line) in whole.iter().enumerate() {
        assert!(line.starts_with(&migrated(&set.claim(n as i32))), "{run}");
    }
    let now = get(&s.sets(), REL_SET).await;
    assert_ne!(
        now.uid(),
        before.uid(),
        "the StatefulSet was not created again"
    );
    let template = &now
        .spec
        .as_ref()
        .unwrap()
        .volume_claim_templates
        .as_ref()
        .unwrap()[0];
    assert_eq!(
        template
            .spec
            .as_ref()
            .unwrap()
            .storage_class_name
            .as_deref(),
        Some(s.b.as_str())
    );
    for n in 0..4 {
        let claim = wait_bound(s.client(), s.name(), &set.claim(n)).await;
        assert_eq!(
            claim_class(&claim),
            Some(s.b.as_str()),
            "{}",
            claim.name_any()
        );
        let dir = claim_dir(&s, &set.claim(n)).await;
        let text = std::fs::read_to_string(dir.join("ordinal")).unwrap();
        assert_eq!(text, format!("{n}\n"), "{}", claim.name_any());
    }
    set.wait_pods(&s, 3).await;
}

testkit::helm_3_and_4!(helm_upgrade_moves_the_statefulset_with_its_data);

/// The same upgrade with `data: delete` (the default): the StatefulSet is created again with the
/// new template and makes its claims anew, empty, on class B; the scaled-down ordinal's claim is
/// gone too, so a scale-up makes it on B. The old volumes go with their reclaim policy (Delete).
async fn helm_upgrade_with_delete_makes_the_claims_anew_on_the_new_class(helm: Helm) {
    use testkit::release::SET as REL_SET;
    let (s, _binder, _kubelet, before) = helm_scaled_down(helm).await;
    let set = Sts::new(REL_SET);
    let mut old_volumes = Vec::new();
    for n in 0..4 {
        let claim = get(&s.claims(), &set.claim(n)).await;
        old_volumes.push(volume_name(&claim).expect("bound").to_owned());
    }

    upgrade_to_b(&s, &[]).await;

    let now = get(&s.sets(), REL_SET).await;
    assert_ne!(now.uid(), before.uid(), "the StatefulSet was created again");
    for n in 0..3 {
        let claim = wait_bound(s.client(), s.name(), &set.claim(n)).await;
        assert_eq!(
            claim_class(&claim),
            Some(s.b.as_str()),
            "{}",
            claim.name_any()
        );
        let dir = claim_dir(&s, &set.claim(n)).await;
        assert!(
            !dir.join("ordinal").exists(),
            "{}: a new, empty volume",
            claim.name_any()
        );
    }
    assert!(
        read(&s.claims(), &set.claim(3)).await.is_none(),
        "the scaled-down ordinal's claim is gone, not left on class A"
    );
    for volume in &old_volumes {
        wait_deleted(&s.pvs(), volume).await;
    }
    set.wait_pods(&s, 3).await;
}

testkit::helm_3_and_4!(helm_upgrade_with_delete_makes_the_claims_anew_on_the_new_class);
