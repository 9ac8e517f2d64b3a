//! Nothing changes unless all of it can go through: the plan is checked against the
//! PodDisruptionBudgets the disruption controller computed, every write is sent as a dry run
//! first, a run stops at its deadline or on SIGTERM with a summary of what was done and what is
//! left, and a selector keeps to the release's own claims. Each test runs the binary against the
//! local control plane and checks the end state through the API (and on disk where data goes).

use std::time::Duration;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;
use testkit::prelude::*;

/// A finalizer of another controller, e.g. a backup tool that holds the claim while it copies.
const BACKUP_FINALIZER: &str = "example.com/backup";

// ------------------------------------------------------------------------------------------
// Budgets

/// Running pods labelled `app=web` that mount claim `data`, under the budget `web` with
/// `minAvailable` as given, once the disruption controller has counted them.
async fn web_pods_under_budget(c: &Cluster, pods: &[&str], min_available: i32) -> Vec<Pod> {
    let mut created = Vec::new();
    for pod in pods {
        let user = ClaimUser::new(pod).claim("data").label("app", "web");
        created.push(user.running().create(c).await);
    }
    let budget = Budget::new("web", "app", "web").min_available(min_available);
    budget.create(c).await;
    Budget::wait_computed(c, "web", pods.len() as i32).await;
    created
}

#[tokio::test]
async fn a_budget_allowing_no_disruption_refuses_and_changes_nothing() {
    let (c, claim, pv) = Cluster::with_bound_claim("budget-none", "Retain").await;
    let pod = web_pods_under_budget(&c, &["web-0"], 1).await.remove(0);

    let run = c.migrate("data", &[]).await;
    let o = run.expect_result(3, "refused");
    assert!(
        o.error()
            .contains("PodDisruptionBudget web allows 0 disruption(s)")
            && o.error().contains("web-0"),
        "{run}"
    );
    assert!(!o.changed, "{run}");
    c.assert_untouched(&claim, &pv).await;
    assert_unchanged(&c.pods(), &pod).await;
}

/// Three pods of a ReplicaSet share a ReadWriteMany claim; the budget lets one go at a time.
/// Each eviction alone would pass a dry run; the plan needs all three, so it is refused before
/// the claim is touched.
#[tokio::test]
async fn three_pods_under_a_budget_of_one_are_refused_before_anything_changes() {
    let c = Cluster::new("budget-three").await;
    let (claim, pv) = c
        .bound_with(
            c.claim("data").access_mode("ReadWriteMany"),
            c.volume_for("data")
                .reclaim("Retain")
                .access_mode("ReadWriteMany"),
        )
        .await;
    let node = create_node(&c, "node").await.name_any();
    let replicas: ReplicaSet = from_json(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": ClaimUser::new("web").claim("data").build(&node).spec,
            },
        },
    }));
    create(&Api::namespaced(c.client().clone(), c.name()), &replicas).await;
    let pods = poll("the ReplicaSet's three pods", || async {
        let pods = c.pods().list(&Default::default()).await.ok()?.items;
        (pods.len() == 3).then_some(pods)
    })
    .await;
    for pod in &pods {
        set_running(&c, &pod.name_any()).await;
    }
    Budget::new("web", "app", "web")
        .max_unavailable(1)
        .create(&c)
        .await;
    let budget = poll("the budget to count three healthy pods", || async {
        let budget = Budget::wait_computed(&c, "web", 3).await;
        (budget.status.as_ref()?.current_healthy == 3).then_some(budget)
    })
    .await;
    assert_eq!(budget.status.unwrap().disruptions_allowed, 1);

    let run = c.migrate("data", &[]).await;
    let o = run.expect_result(3, "refused");
    for pod in &pods {
        assert!(o.error().contains(&pod.name_any()), "{run}");
    }
    assert!(
        o.error().contains("PodDisruptionBudget web allows 1"),
        "{run}"
    );
    c.assert_untouched(&claim, &pv).await;
    for pod in &pods {
        let now = get(&c.pods(), &pod.name_any()).await;
        assert!(now.metadata.deletion_timestamp.is_none(), "{now:#?}");
    }
}

#[tokio::test]
async fn a_sufficient_budget_lets_the_pods_go() {
    let (c, _, pv) = Cluster::with_bound_claim("budget-enough", "Retain").await;
    web_pods_under_budget(&c, &["web-0", "web-1"], 0).await;
    let stand_in = KubeletStandIn::start(c.name());

    let run = c.migrate("data", &[("WAIT_TIMEOUT", "30s")]).await;
    let o = run.expect_result(0, "migrated");
    let mut evicted = o.done_names("pod-evicted");
    evicted.sort();
    assert_eq!(evicted, ["web-0", "web-1"], "{run}");
    let mut deleted = stand_in.deleted_pods();
    deleted.sort();
    assert_eq!(deleted, ["web-0", "web-1"]);
    c.assert_gone_and_kept("data", &pv).await;
}

// ------------------------------------------------------------------------------------------
// Stopping: SIGTERM and the run's deadline

/// A claim held by another controller's finalizer: the run deletes it, then waits.
async fn held_claim(prefix: &str) -> (Cluster, PersistentVolumeClaim) {
    let c = Cluster::new(prefix).await;
    let claim = c.claim("data").finalizer(BACKUP_FINALIZER).create(&c).await;
    (c, claim)
}

async fn wait_deleting(c: &Cluster, claim: &str) {
    wait_for(
        &c.claims(),
        claim,
        "the claim to be deleting",
        |pvc: Option<&PersistentVolumeClaim>| {
            pvc.is_some_and(|p| p.metadata.deletion_timestamp.is_some())
        },
    )
    .await;
}

#[tokio::test]
async fn sigterm_mid_wait_reports_what_was_done_and_left() {
    let (c, claim) = held_claim("sigterm").await;
    let binary = c.migration("data", &[("WAIT_TIMEOUT", "60s")]).spawn();
    wait_deleting(&c, "data").await;

    let run = binary.terminate(Duration::from_secs(10)).await;
    let o = run.expect_result(6, "part-way");
    assert_eq!(o.error(), "stopped by SIGTERM", "{run}");
    assert_eq!(o.done_kinds(), ["claim-deleted"], "{run}");
    assert_eq!(o.left_kinds(), ["not-reached"], "{run}");
    assert!(run.termination_log.contains("stopped part-way"), "{run}");

    remove_finalizer(&c.claims(), "data", BACKUP_FINALIZER).await;
    wait_deleted(&c.claims(), "data").await;
    let rerun = c.migrate("data", &[]).await;
    rerun.expect_result(0, "nothing-to-do");
    assert_ne!(
        read(&c.claims(), "data").await.and_then(|p| p.uid()),
        claim.uid()
    );
}

#[tokio::test]
async fn the_run_stops_at_its_deadline_with_a_summary() {
    let (c, _) = held_claim("deadline").await;
    let run = c
        .migration("data", &[("WAIT_TIMEOUT", "60s"), ("DEADLINE", "3s")])
        .run_within(Duration::from_secs(20))
        .await;
    let o = run.expect_result(6, "part-way");
    assert!(
        o.error().starts_with("stopped at the run's deadline (3s)"),
        "{run}"
    );
    assert!(
        o.has_done("claim-deleted") && o.has_left("not-reached"),
        "{run}"
    );
    assert!(run.elapsed < Duration::from_secs(15), "{run}");
}

// ------------------------------------------------------------------------------------------
// What a claim is

/// A claim made before `spec.storageClassName` existed names its class in an annotation.
#[tokio::test]
async fn a_legacy_claim_is_judged_by_its_beta_annotation() {
    let c = Cluster::new("legacy").await;
    let pv = c.volume_for("data").reclaim("Retain").create(&c).await;
    let claim = Claim::new("data")
        .annotation("volume.beta.kubernetes.io/storage-class", &c.a)
        .volume(&pv.name_any())
        .create_bound(&c)
        .await;
    assert_eq!(claim_class(&claim), None);

    let run = c.migrate("data", &[]).await;
    let o = run.expect_result(0, "migrated");
    assert_eq!(o.found_names("class"), [c.a.as_str()], "{run}");
    c.assert_gone_and_kept("data", &pv).await;
}

/// Helm must not apply a dying claim: a claim being deleted is waited out even when it is
/// already on the desired class.
#[tokio::test]
async fn a_claim_being_deleted_on_the_desired_class_is_waited_out() {
    let c = Cluster::new("dying").await;
    Claim::new("data")
        .class(&c.b)
        .finalizer(BACKUP_FINALIZER)
        .create(&c)
        .await;
    c.claims()
        .delete("data", &DeleteParams::default())
        .await
        .expect("deleting the claim");

    let run = c.migrate("data", &[("WAIT_TIMEOUT", "2s")]).await;
    let o = run.expect_result(5, "failed");
    assert!(!o.changed, "{run}");
    assert!(o.has_found("being-deleted"), "{run}");
    assert!(o.error().contains(BACKUP_FINALIZER), "{run}");

    remove_finalizer(&c.claims(), "data", BACKUP_FINALIZER).await;
    let run = c.migrate("data", &[]).await;
    run.expect_result(0, "nothing-to-do");
}

#[tokio::test]
async fn names_and_classes_are_taken_as_given() {
    let (c, claim, pv) = Cluster::with_bound_claim("as-given", "Retain").await;
    for (key, value) in [
        ("PVC_NAME", " data"),
        ("DESIRED_STORAGECLASS", " -"),
        ("DESIRED_STORAGECLASS", " "),
    ] {
        let run = c
            .job(&[("PVC_NAME", "data"), ("DESIRED_STORAGECLASS", &c.b)])
            .set(key, value)
            .run()
            .await;
        run.expect_status(2).expect_single_error_line();
        assert!(
            run.stderr.contains(&format!("{value:?}")),
            "{key}={value:?}\n{run}"
        );
    }
    c.assert_untouched(&claim, &pv).await;
}

// ------------------------------------------------------------------------------------------
// Selector scope

#[tokio::test]
async fn a_selector_takes_only_the_release_own_claims() {
    let c = Cluster::new("scope").await;
    let ns = c.name().to_owned();
    let (_, own_pv) = c
        .bound_with(
            c.claim("data").label("app", "db").of_release("shop", &ns),
            c.volume_for("data").reclaim("Retain"),
        )
        .await;
    // A claim a StatefulSet made from its template: same labels, no Helm annotations.
    let (other, other_pv) = c
        .bound_with(
            c.claim("data-db-0").label("app", "db"),
            c.volume_for("data-db-0").reclaim("Retain"),
        )
        .await;
    let (foreign, foreign_pv) = c
        .bound_with(
            c.claim("cache").label("app", "db").of_release("other", &ns),
            c.volume_for("cache").reclaim("Retain"),
        )
        .await;

    let settings = [
        ("PVC_SELECTOR", "app=db"),
        ("RELEASE_NAME", "shop"),
        ("DESIRED_STORAGECLASS", c.b.as_str()),
    ];
    let run = c.job(&settings).unset("PVC_NAME").run().await;
    run.expect_status(0);
    let outcomes = run.outcomes();
    assert_eq!(outcomes.len(), 1, "{run}");
    assert_eq!(outcomes[0].claim, format!("{ns}/data"));
    assert!(
        run.stderr.contains("data-db-0") && run.stderr.contains("left out of the run"),
        "{run}"
    );
    c.assert_gone_and_kept("data", &own_pv).await;
    c.assert_untouched(&other, &other_pv).await;
    c.assert_untouched(&foreign, &foreign_pv).await;
}

// ------------------------------------------------------------------------------------------
// Retain volumes deleted on request: the backing storage goes too

/// With DELETE_RETAINED_PV the Retain volume's policy is switched to Delete, so the volume's
/// deleter removes the data: here kube-controller-manager's hostPath deleter, which removes
/// directories below /tmp. Deleting the object alone would leave the directory behind.
#[tokio::test]
async fn a_retained_volume_deleted_on_request_takes_its_data_with_it() {
    let c = Cluster::new("reclaim-data").await;
    let dir = std::path::PathBuf::from(format!("/tmp/{}-pv-data", c.name()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("old-data"), b"kept until the volume goes").unwrap();
    let pv: PersistentVolume = from_json(json!({
        "metadata": {"name": c.scoped("pv-data"), "labels": c.owner_labels()},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": c.a,
            "hostPath": {"path": dir.to_str().unwrap()},
        },
    }));
    let pv = create(&c.pvs(), &pv).await;
    c.claim("data").create_bound(&c).await;

    let run = c
        .migrate(
            "data",
            &[("DELETE_RETAINED_PV", "true"), ("WAIT_TIMEOUT", "30s")],
        )
        .await;
    let o = run.expect_result(0, "migrated");
    assert_eq!(
        o.done_kinds(),
        [
            "volume-marked",
            "claim-deleted",
            "claim-gone",
            "volume-reclaim-delete",
            "volume-reclaimed"
        ],
        "{run}"
    );
    assert!(read(&c.pvs(), &pv.name_any()).await.is_none());
    assert!(!dir.exists(), "{} is still there", dir.display());
}

// ------------------------------------------------------------------------------------------
// Least privilege by setting

/// Whether the ServiceAccount may do `verb` on `resource` in the namespace.
async fn may(c: &Cluster, sa: &str, verb: &str, group: &str, resource: &str) -> bool {
    let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
    let review: SubjectAccessReview = from_json(json!({
        "spec": {
            "user": format!("system:serviceaccount:{}:{sa}", c.name()),
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{}", c.name())],
            "resourceAttributes": {
                "namespace": c.name(), "verb": verb, "group": group,
                "resource": resource, "subresource": subresource, "name": "data",
            },
        },
    }));
    let reviews: Api<SubjectAccessReview> = Api::all(c.client().clone());
    let answer = reviews
        .create(&PostParams::default(), &review)
        .await
        .expect("a subject access review");
    answer.status.is_some_and(|s| s.allowed)
}

/// Each setting is granted the rules it uses and none of those it does not: the verbs of the
/// other settings are forbidden.
#[tokio::test]
async fn each_setting_gets_only_the_verbs_it_uses() {
    let c = Cluster::new("least").await;
    let verbs = [
        ("create", "", "pods/eviction", "inUseEvict"),
        ("list", "policy", "poddisruptionbudgets", "inUseEvict"),
        ("patch", "", "persistentvolumeclaims", "patchClaims"),
        ("patch", "", "persistentvolumes", "writeVolumes"),
        ("delete", "", "persistentvolumes", "stripAllFinalizers"),
    ];
    let settings: [(&str, &[&str]); 4] = [
        ("evict", &["always", "inUseEvict"]),
        ("force", &["always", "patchClaims"]),
        ("retained", &["always", "inUseEvict", "writeVolumes"]),
        (
            "strip",
            &[
                "always",
                "inUseEvict",
                "patchClaims",
                "writeVolumes",
                "stripAllFinalizers",
            ],
        ),
    ];
    for (sa, when) in settings {
        Account::new(sa)
            .chart(&["data"], c.name(), when, None)
            .create(&c)
            .await;
        for (verb, group, resource, needed_by) in verbs {
            assert_eq!(
                may(&c, sa, verb, group, resource).await,
                when.contains(&needed_by),
                "setting {sa}: {verb} {resource}"
            );
        }
        assert!(
            !may(&c, sa, "list", "storage.k8s.io", "storageclasses").await,
            "{sa}"
        );
        assert!(
            may(&c, sa, "delete", "", "persistentvolumeclaims").await,
            "{sa}"
        );
    }
}
