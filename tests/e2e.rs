//! `helm install` and `helm upgrade` of examples/app on the local control plane, with the hook Job
//! really running: a [`HookRunner`] runs its pod (in a container of the image that
//! scripts/build-image.sh builds) and writes the pod's status, the Job controller completes or
//! fails the Job (with the chart's `podFailurePolicy`), and Helm goes on or fails. Each test has
//! its own namespace, classes and volumes; hostPath volumes point below /nonexistent.
//!
//! The same scenarios run with the kubectl script that storageclass-migrate replaces as the hook
//! (`script_*` tests) when `STORAGECLASS_MIGRATE_SCRIPT` names it; without it they print that
//! they are skipped. docs/side-by-side.md tabulates where the outcomes differ; each row names the
//! tests here that show both.
//!
//!     scripts/control-plane.sh start /tmp/cp-e2e
//!     STORAGECLASS_MIGRATE_CONTROL_PLANE=/tmp/cp-e2e \
//!       [STORAGECLASS_MIGRATE_SCRIPT=/path/to/kubectl-hook.sh] cargo test --test e2e
//!     scripts/control-plane.sh stop /tmp/cp-e2e
//!
//! helm comes from scripts/build-helm.sh; the charts are copied to target/tmp/e2e-<pid>/ and the
//! app's dependency is built there, so the work tree is not touched (`testkit::helm`). Each
//! hook pod prints its outcome as JSON (`SUMMARY_FORMAT=json` through the chart's `extraEnv`);
//! the termination message keeps the human lines, which two tests pin.
//! `STORAGECLASS_MIGRATE_HOOK_RUNNER=binary` runs the host binary instead of the image.
//!
//! Every scenario is an `async fn scenario(helm: Helm)` run twice, by the tests
//! `scenario::helm_3` and `scenario::helm_4` (`testkit::helm_3_and_4!`): once with Helm 3
//! (scripts/build-helm.sh) and once with Helm 4 (`HELM_MODULE=helm4 scripts/build-helm.sh`).

use std::{fs, io::Read, os::unix::fs::MetadataExt, path::Path, sync::Arc, time::Duration};

use kube::api::{Patch, PatchParams};
use serde_json::json;
use testkit::csi::{DRIVER_A, assert_no_leak};
use testkit::files::{chmod, chown, data_dir};
use testkit::helm::{Helm, HelmOut};
use testkit::helm_3_and_4;
use testkit::hook_runner::{HookRun, How, Rendezvous, RunnerOpts};
use testkit::prelude::*;
use testkit::release::{CLAIM, Hook, JOB, Release, ReleaseOpts, skip_without_script};

/// A Retain volume `<ns>-<suffix>` on `class`.
fn retained(suffix: &str, class: &str) -> Volume {
    Volume::host_path(suffix).class(class)
}

// ------------------------------------------------------------------------------------------
// (1) install

async fn install_runs_the_hook_and_the_claim_binds_on_class_a(helm: Helm) {
    let s = Release::new("e2e-install", Hook::Binary, helm).await;
    let pv = retained("pv-a", &s.a).create(&s).await;
    let claim = s.install(Some(&s.a)).await;

    assert_eq!(claim_class(&claim), Some(s.a.as_str()));
    assert_eq!(volume_name(&claim), Some(pv.name_any().as_str()));
    let run = s.last_run(0);
    assert_eq!(s.runner.runs().len(), 1, "{}", s.runner.report());
    assert_eq!(
        run.termination_message,
        format!("{}/{CLAIM}: nothing to do: claim absent", s.name()),
        "{run}"
    );
    // In-cluster, with the chart's RBAC, as the chart's user.
    assert_eq!(run.service_account, JOB, "{run}");
    assert_eq!(run.bindings, s.chart_bindings(), "{run}");
    assert_eq!(run.user, Some((65532, Some(65532))), "{run}");
    if let How::Image { .. } = run.how {
        // The message above came back through the file mounted for the container.
        assert!(
            run.notes
                .iter()
                .any(|n| n.starts_with("terminationMessagePath /dev/termination-log")),
            "{run}"
        );
    }
    assert_eq!(s.release_status().await, "deployed");
    s.expect_hook_objects_gone().await;
}
helm_3_and_4!(install_runs_the_hook_and_the_claim_binds_on_class_a);

// ------------------------------------------------------------------------------------------
// (2) upgrade to class B; row "class change, Retain volume"

/// Installs on A (a Retain volume), upgrades to B (a volume waits there): the claim is replaced.
/// Returns the scenario, the claim before and after, and the volume on A.
async fn class_change(
    prefix: &str,
    hook: Hook,
    helm: Helm,
) -> (
    Release,
    PersistentVolumeClaim,
    PersistentVolumeClaim,
    PersistentVolume,
) {
    let (s, before, pv_a) = Release::installed(prefix, hook, helm).await;
    let pv_b = get(&s.pvs(), &s.scoped("pv-b")).await;

    let after = s.upgrade_ok(&s.b, &[]).await;
    assert_ne!(after.uid(), before.uid(), "the claim was replaced");
    assert_eq!(claim_class(&after), Some(s.b.as_str()));
    assert_eq!(volume_name(&after), Some(pv_b.name_any().as_str()));
    assert_eq!(s.release_status().await, "deployed");
    (s, before, after, pv_a)
}

async fn upgrade_to_class_b_replaces_the_claim_and_keeps_a_retain_volume(helm: Helm) {
    let (s, _, _, pv_a) = class_change("e2e-change", Hook::Binary, helm).await;
    let run = s.last_run(0);
    assert_eq!(s.runner.runs().len(), 2, "{}", s.runner.report());
    let pv = pv_a.name_any();
    assert_eq!(
        run.termination_message,
        format!(
            "{ns}/{CLAIM}: migrated to class \"{b}\": found class \"{a}\", bound to PV {pv} \
             (Retain); done: claim deleted, claim gone; left: PV {pv} (Retain) with the old data",
            ns = s.name(),
            a = s.a,
            b = s.b
        ),
        "{run}"
    );
    let kept = s.pv(&pv).await.expect("the Retain volume is kept");
    assert_eq!(kept.uid(), pv_a.uid());
    assert_eq!(pv_phase(&kept), Some("Released"));
    s.expect_hook_objects_gone().await;
}
helm_3_and_4!(upgrade_to_class_b_replaces_the_claim_and_keeps_a_retain_volume);

async fn script_upgrade_to_class_b_deletes_a_retain_volume(helm: Helm) {
    if skip_without_script("script_upgrade_to_class_b_deletes_a_retain_volume") {
        return;
    }
    let (s, _, _, pv_a) = class_change("e2e-script-change", Hook::Script, helm).await;
    let run = s.last_run(0);
    // Its finalizer strips fail (kubectl patch has no --ignore-not-found, and `|| true` hides
    // it); the protection controllers let claim and volume go once unused.
    assert!(
        run.output.contains("unknown flag: --ignore-not-found")
            && run.output.contains("Migration complete"),
        "{run}"
    );
    assert!(
        s.pv(&pv_a.name_any()).await.is_none(),
        "the script deleted the Retain volume"
    );
}
helm_3_and_4!(script_upgrade_to_class_b_deletes_a_retain_volume);

/// With get, patch and delete only (no list, watch), `kubectl delete --wait` cannot watch the
/// claim it deleted: it waits out its 60 s and fails; the claim is gone, the upgrade failed.
async fn script_with_get_patch_delete_rbac_fails_after_60s_with_the_claim_gone(helm: Helm) {
    if skip_without_script("script_with_get_patch_delete_rbac_fails_after_60s_with_the_claim_gone")
    {
        return;
    }
    let s = Release::new("e2e-script-rbac", Hook::Script, helm).await;
    let pv_a = retained("pv-a", &s.a).create(&s).await;
    retained("pv-b", &s.b).create(&s).await;
    let out = s
        .helm(
            "install",
            &[
                ("persistence.storageClass", &s.a),
                ("scriptHook.listWatch", "false"),
            ],
            true,
        )
        .await;
    s.expect_ok(&out);
    let out = s.upgrade(&s.b, &[]).await;
    s.expect_hook_failed(&out, "BackoffLimitExceeded").await;
    s.last_run_saying(
        1,
        &[
            "cannot list resource",
            "timed out waiting for the condition",
        ],
    );
    assert!(s.claim().await.is_none(), "the claim was deleted");
    let left = s.pv(&pv_a.name_any()).await.expect("the volume is left");
    assert_eq!(pv_phase(&left), Some("Released"));
    assert_eq!(s.release_status().await, "failed");
}
helm_3_and_4!(script_with_get_patch_delete_rbac_fails_after_60s_with_the_claim_gone);

// ------------------------------------------------------------------------------------------
// (3) upgrade without a change; row "no change"

async fn no_change(prefix: &str, hook: Hook, helm: Helm) -> Release {
    let (s, before, pv) = Release::installed(prefix, hook, helm).await;
    let out = s.helm("upgrade", &[], true).await;
    s.expect_ok(&out);
    let after = s.claim().await.expect("the claim is there");
    assert_eq!(after.uid(), before.uid(), "the claim was kept");
    assert_eq!(volume_name(&after), Some(pv.name_any().as_str()));
    assert_eq!(s.runner.runs().len(), 2, "{}", s.runner.report());
    s
}

async fn upgrade_without_a_change_keeps_the_claim(helm: Helm) {
    let s = no_change("e2e-same", Hook::Binary, helm).await;
    let run = s.last_run(0);
    let o = run.outcome();
    assert_eq!(o.shape(), "nothing-to-do", "{run}");
    assert_eq!(o.detail.as_deref(), Some("already on the desired class"));
    assert_eq!(run.termination_message, o.line(), "{run}");
}
helm_3_and_4!(upgrade_without_a_change_keeps_the_claim);

async fn script_upgrade_without_a_change_keeps_the_claim(helm: Helm) {
    if skip_without_script("script_upgrade_without_a_change_keeps_the_claim") {
        return;
    }
    let s = no_change("e2e-script-same", Hook::Script, helm).await;
    let run = s.last_run(0);
    assert!(run.output.contains("no migration"), "{run}");
}
helm_3_and_4!(script_upgrade_without_a_change_keeps_the_claim);

// ------------------------------------------------------------------------------------------
// (4) the toggle off

async fn without_the_hook_a_class_change_fails_on_the_immutable_claim(helm: Helm) {
    let (s, before, _) = Release::installed("e2e-toggle", Hook::Binary, helm).await;
    let pv_b = get(&s.pvs(), &s.scoped("pv-b")).await;

    let off = [("storageclassMigrate.allowMigration", "false")];
    let out = s.upgrade(&s.b, &off).await;
    s.expect_failed_with(&out, "spec is immutable after creation");
    assert_eq!(
        s.runner.runs().len(),
        1,
        "no hook ran\n{}",
        s.runner.report()
    );
    let kept = s.claim().await.expect("the claim is there");
    assert_eq!(kept.uid(), before.uid());
    assert_eq!(claim_class(&kept), Some(s.a.as_str()));
    assert_eq!(s.release_status().await, "failed");

    // The hook is what makes it work: the same upgrade with it on. (--reuse-values takes the
    // values of the last deployed release, so the class is given again.)
    let on = [("storageclassMigrate.allowMigration", "true")];
    let after = s.upgrade_ok(&s.b, &on).await;
    assert_eq!(claim_class(&after), Some(s.b.as_str()));
    assert_eq!(volume_name(&after), Some(pv_b.name_any().as_str()));
    s.last_run(0);
}
helm_3_and_4!(without_the_hook_a_class_change_fails_on_the_immutable_claim);

// ------------------------------------------------------------------------------------------
// (5) class unset, the default class is the claim's; row "class left unset"

/// Installs with the class unset while class D is the default: the claim gets D. Then upgrades
/// without a change. Hold [`default_class_lock`] meanwhile.
async fn unset_class(
    prefix: &str,
    hook: Hook,
    helm: Helm,
) -> (Release, PersistentVolumeClaim, String) {
    let s = Release::new(prefix, hook, helm).await;
    let d = Class::new("default")
        .default_class()
        .create(&s)
        .await
        .name_any();
    let pv = retained("pv-d", &d).create(&s).await;
    let before = s.install(None).await;
    assert_eq!(
        claim_class(&before),
        Some(d.as_str()),
        "defaulted by admission"
    );
    assert_eq!(volume_name(&before), Some(pv.name_any().as_str()));

    let out = s.helm("upgrade", &[], false).await;
    s.expect_ok(&out);
    (s, before, pv.name_any())
}

async fn unset_class_equal_to_the_default_deletes_nothing(helm: Helm) {
    let _default = default_class_lock();
    let (s, before, pv) = unset_class("e2e-unset", Hook::Binary, helm).await;
    let run = s.last_run(0);
    assert_eq!(run.outcome().result, "nothing-to-do", "{run}");
    let after = s.claim().await.expect("the claim is there");
    assert_eq!(after.uid(), before.uid());
    assert_eq!(
        pv_phase(&s.pv(&pv).await.expect("the volume is there")),
        Some("Bound")
    );
}
helm_3_and_4!(unset_class_equal_to_the_default_deletes_nothing);

/// The admin switches the cluster's default class between two upgrades of a chart that leaves
/// the class unset: Helm leaves the omitted field alone, and so does the hook.
async fn unset_class_after_the_default_changed_keeps_the_claim(helm: Helm) {
    let _default = default_class_lock();
    let s = Release::new("e2e-default-switch", Hook::Binary, helm).await;
    let old = Class::new("old")
        .default_class()
        .create(&s)
        .await
        .name_any();
    let pv = retained("pv-old", &old).create(&s).await;
    let before = s.install(None).await;
    assert_eq!(claim_class(&before), Some(old.as_str()));
    let classes: Api<k8s_openapi::api::storage::v1::StorageClass> = Api::all(s.client().clone());
    let not_default = serde_json::json!({"metadata": {"annotations": {"storageclass.kubernetes.io/is-default-class": "false"}}});
    classes
        .patch(
            &old,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&not_default),
        )
        .await
        .expect("making the old class not the default");
    Class::new("new").default_class().create(&s).await;

    let out = s.helm("upgrade", &[], false).await;
    s.expect_ok(&out);
    let run = s.last_run(0);
    assert_eq!(run.outcome().result, "nothing-to-do", "{run}");
    let after = s.claim().await.expect("the claim is there");
    assert_eq!(after.uid(), before.uid(), "the claim was kept");
    assert_eq!(claim_class(&after), Some(old.as_str()));
    assert_eq!(
        pv_phase(&s.pv(&pv.name_any()).await.expect("the volume is there")),
        Some("Bound")
    );
}
helm_3_and_4!(unset_class_after_the_default_changed_keeps_the_claim);

async fn script_unset_class_deletes_the_claim_and_its_volume(helm: Helm) {
    if skip_without_script("script_unset_class_deletes_the_claim_and_its_volume") {
        return;
    }
    let _default = default_class_lock();
    let (s, before, pv) = unset_class("e2e-script-unset", Hook::Script, helm).await;
    let run = s.last_run(0);
    assert!(run.output.contains("mismatch"), "{run}");
    let after = s.claim().await.expect("helm created the claim again");
    assert_ne!(
        after.uid(),
        before.uid(),
        "the claim was deleted and recreated"
    );
    assert!(s.pv(&pv).await.is_none(), "its volume was deleted");
}
helm_3_and_4!(script_unset_class_deletes_the_claim_and_its_volume);

// ------------------------------------------------------------------------------------------
// (6) a failing hook: the target class is missing; row "target class missing"

/// The release, its claim and volume, the missing class and helm's answer.
type MissingClass = (
    Release,
    PersistentVolumeClaim,
    PersistentVolume,
    String,
    HelmOut,
);

async fn missing_class(prefix: &str, hook: Hook, helm: Helm) -> MissingClass {
    let (s, before, pv) = Release::installed(prefix, hook, helm).await;
    let missing = s.ns.scoped("missing");
    let out = s.upgrade(&missing, &[]).await;
    (s, before, pv, missing, out)
}

async fn missing_target_class_fails_the_upgrade_and_keeps_claim_and_volume(helm: Helm) {
    let (s, before, pv, missing, out) = missing_class("e2e-missing", Hook::Binary, helm).await;
    s.expect_hook_failed(&out, "PodFailurePolicy").await;
    let run = s.last_run(3);
    // The reason, in the pod's status as the Job keeps it.
    let terminated = s.hook_pod_terminated().await;
    assert_eq!(terminated["exitCode"], json!(3), "{terminated}");
    let message = terminated["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("StorageClass \"{missing}\" does not exist"))
            && message.contains("the old claim is kept"),
        "{terminated}\n{run}"
    );
    // Nothing changed.
    let kept = s.claim().await.expect("the claim is there");
    assert_eq!(kept.uid(), before.uid());
    assert_eq!(claim_class(&kept), Some(s.a.as_str()));
    let pv_now = s.pv(&pv.name_any()).await.expect("the volume is there");
    assert_eq!(pv_phase(&pv_now), Some("Bound"));
    assert_eq!(s.release_status().await, "failed");
}
helm_3_and_4!(missing_target_class_fails_the_upgrade_and_keeps_claim_and_volume);

/// The same refused hook under `--atomic` (Helm 3) or `--rollback-on-failure` (Helm 4): helm
/// rolls the release back to the revision before, and claim and volume are as they were. With
/// `showLogsOnFailure`, the chart's `helm.sh/hook-output-log-policy: hook-failed` makes helm print
/// the hook's log (which the runner serves from a node, as a kubelet would).
async fn a_refused_hook_rolls_the_release_back(helm: Helm) {
    let opts = ReleaseOpts {
        helm,
        runner: RunnerOpts {
            serve_logs: true,
            ..RunnerOpts::default()
        },
        ..ReleaseOpts::default()
    };
    let s = Release::with("e2e-rollback", opts).await;
    let pv = retained("pv-a", &s.a).create(&s).await;
    let before = s.install(Some(&s.a)).await;
    let installed = s.revision().await;

    let missing = s.ns.scoped("missing");
    let flag = match helm {
        Helm::V3 => "--atomic",
        Helm::V4 => "--rollback-on-failure",
    };
    let logs = [("storageclassMigrate.showLogsOnFailure", "true")];
    let out = s.upgrade_with(&missing, &logs, &[flag]).await;
    s.expect_failed_with(&out, "pre-upgrade hooks failed");
    assert!(out.stderr.contains("has been rolled back"), "{out}");
    let run = s.last_run(3);
    assert!(
        run.notes.iter().any(|n| n.starts_with("bound to node")),
        "{run}"
    );
    // The outcome line of the hook's log, in helm's output: as written by Helm 3, quoted in a
    // log record by Helm 4 (compared without backslashes).
    let refusal = run
        .outcomes()
        .into_iter()
        .find(|o| o.result == "refused")
        .unwrap_or_else(|| panic!("no refusal in the hook's log\n{run}"));
    assert!(
        refusal
            .error
            .as_deref()
            .unwrap_or_default()
            .contains(&missing),
        "{run}"
    );
    let unescaped = |text: &str| text.replace('\\', "");
    let line = run
        .output
        .lines()
        .find(|l| l.starts_with("{\"claim\":"))
        .expect("the outcome line");
    assert!(
        unescaped(&out.stderr).contains(&unescaped(line)),
        "helm does not print the hook's log\n{out}\n{run}"
    );

    // Rolled back: a new revision, deployed, made from the installed one.
    let status = s.status_json().await;
    assert_eq!(status["info"]["status"], "deployed", "{status}");
    assert_eq!(status["version"], installed + 2, "{status}");
    assert_eq!(
        status["info"]["description"],
        format!("Rollback to {installed}"),
        "{status}"
    );
    let kept = s.claim().await.expect("the claim is there");
    assert_eq!(kept.uid(), before.uid());
    assert_eq!(claim_class(&kept), Some(s.a.as_str()));
    let pv_now = s.pv(&pv.name_any()).await.expect("the volume is there");
    assert_eq!(pv_now.uid(), pv.uid());
    assert_eq!(pv_phase(&pv_now), Some("Bound"));
}
helm_3_and_4!(a_refused_hook_rolls_the_release_back);

/// A run stopped part-way (exit 6) is retried by the Job (podFailurePolicy lets 4, 5 and 6
/// count against backoffLimit), and the retry finishes the migration in the same upgrade.
async fn a_part_way_hook_is_retried_by_the_job_and_the_retry_finishes(helm: Helm) {
    let (s, before, _) = Release::installed("e2e-retry", Hook::Binary, helm).await;
    let claims = s.claims();
    let finalizer = serde_json::json!({"metadata": {"finalizers": ["kubernetes.io/pvc-protection", "example.com/backup"]}});
    claims
        .patch(
            CLAIM,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&finalizer),
        )
        .await
        .expect("adding a foreign finalizer");
    let release_the_claim = async {
        poll("the first hook run to stop part-way", || async {
            s.runner
                .runs()
                .iter()
                .any(|r| r.exit_code == 6)
                .then_some(())
        })
        .await;
        remove_finalizer(&claims, CLAIM, "example.com/backup").await;
    };
    let sets = [("storageclassMigrate.timeout", "2s")];
    let (out, ()) = tokio::join!(s.upgrade(&s.b, &sets), release_the_claim);
    s.expect_ok(&out);
    let runs = s.runner.runs();
    let codes: Vec<i32> = runs.iter().skip(1).map(|r| r.exit_code).collect();
    assert_eq!(codes.first(), Some(&6), "{}", s.runner.report());
    assert_eq!(codes.last(), Some(&0), "{}", s.runner.report());
    let after = wait_bound(s.client(), s.name(), CLAIM).await;
    assert_ne!(after.uid(), before.uid());
    assert_eq!(claim_class(&after), Some(s.b.as_str()));
}
helm_3_and_4!(a_part_way_hook_is_retried_by_the_job_and_the_retry_finishes);

async fn script_missing_target_class_deletes_claim_and_volume(helm: Helm) {
    if skip_without_script("script_missing_target_class_deletes_claim_and_volume") {
        return;
    }
    let (s, before, pv, missing, out) =
        missing_class("e2e-script-missing", Hook::Script, helm).await;
    s.expect_ok(&out);
    s.last_run(0);
    assert!(
        s.pv(&pv.name_any()).await.is_none(),
        "its volume was deleted"
    );
    let after = s.claim().await.expect("helm created the claim again");
    assert_ne!(after.uid(), before.uid());
    assert_eq!(claim_class(&after), Some(missing.as_str()));
    // A claim on a class that does not exist never binds.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = s.claim().await.expect("the claim is there");
    assert_eq!(
        after.status.and_then(|st| st.phase).as_deref(),
        Some("Pending")
    );
}
helm_3_and_4!(script_missing_target_class_deletes_claim_and_volume);

// ------------------------------------------------------------------------------------------
// (7) an app pod uses the claim; row "a pod uses the claim"

/// Installs on A, then starts a pod on a node that mounts the claim (no scheduler: spec.nodeName
/// set directly), and a kubelet stand-in that force-deletes pods once they are evicted.
/// The release, its claim and volume, and the kubelet stand-in.
type InUse = (
    Release,
    PersistentVolumeClaim,
    PersistentVolume,
    KubeletStandIn,
);

async fn in_use(prefix: &str, hook: Hook, helm: Helm) -> InUse {
    let (s, before, pv) = Release::installed(prefix, hook, helm).await;
    s.running_pod("app", CLAIM).await;
    let kubelet = KubeletStandIn::start(s.name());
    (s, before, pv, kubelet)
}

/// The pods the kubelet stand-in force-deleted, but for the hook's own (which it also deletes
/// once Helm deleted their Job).
fn app_pods_deleted(kubelet: &KubeletStandIn) -> Vec<String> {
    kubelet
        .deleted_pods()
        .into_iter()
        .filter(|p| !p.starts_with(JOB))
        .collect()
}

async fn in_use_evict_evicts_the_pod_then_replaces_the_claim(helm: Helm) {
    let (s, before, _, kubelet) = in_use("e2e-evict", Hook::Binary, helm).await;
    let after = s.upgrade_ok(&s.b, &[]).await;
    let run = s.last_run(0);
    assert_eq!(app_pods_deleted(&kubelet), ["app"], "{run}");
    assert!(s.pods().get_opt("app").await.unwrap().is_none());
    assert_eq!(run.outcome().done_names("pod-evicted"), ["app"], "{run}");
    assert_ne!(after.uid(), before.uid());
    assert_eq!(claim_class(&after), Some(s.b.as_str()));
}
helm_3_and_4!(in_use_evict_evicts_the_pod_then_replaces_the_claim);

async fn in_use_fail_refuses_and_the_upgrade_fails(helm: Helm) {
    let (s, before, pv, kubelet) = in_use("e2e-in-use-fail", Hook::Binary, helm).await;
    let out = s
        .upgrade(&s.b, &[("storageclassMigrate.inUse", "fail")])
        .await;
    s.expect_hook_failed(&out, "PodFailurePolicy").await;
    let run = s.last_run(3);
    let terminated = s.hook_pod_terminated().await;
    let message = terminated["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("in use by pod app") && message.contains("--in-use fail"),
        "{terminated}\n{run}"
    );
    assert!(app_pods_deleted(&kubelet).is_empty());
    s.expect_pod_running("app").await;
    let kept = s.claim().await.expect("the claim is there");
    assert_eq!(kept.uid(), before.uid());
    assert_eq!(
        pv_phase(&s.pv(&pv.name_any()).await.expect("the volume")),
        Some("Bound")
    );
}
helm_3_and_4!(in_use_fail_refuses_and_the_upgrade_fails);

/// The script's `kubectl patch --ignore-not-found` fails (kubectl patch has no such flag), so
/// the claim keeps its `kubernetes.io/pvc-protection` finalizer: the delete waits for the pod
/// to go, which nothing asks for, `kubectl delete --wait --timeout=60s` gives up, and the Job
/// fails with the claim left terminating under the running pod.
async fn script_in_use_fails_after_60s_leaving_the_claim_terminating(helm: Helm) {
    if skip_without_script("script_in_use_fails_after_60s_leaving_the_claim_terminating") {
        return;
    }
    let (s, before, pv, kubelet) = in_use("e2e-script-in-use", Hook::Script, helm).await;
    let out = s.upgrade(&s.b, &[]).await;
    s.expect_hook_failed(&out, "BackoffLimitExceeded").await;
    let run = s.last_run_saying(
        1,
        &[
            "unknown flag: --ignore-not-found",
            "timed out waiting for the condition",
        ],
    );
    assert!(run.elapsed >= Duration::from_secs(60), "{run}");
    // The pod was neither evicted nor deleted; the claim waits for it, being deleted.
    assert!(app_pods_deleted(&kubelet).is_empty());
    s.expect_pod_running("app").await;
    let claim = s.claim().await.expect("the claim is still there");
    assert_eq!(claim.uid(), before.uid());
    assert!(claim.metadata.deletion_timestamp.is_some(), "terminating");
    assert_eq!(
        pv_phase(&s.pv(&pv.name_any()).await.expect("the volume")),
        Some("Bound")
    );
    assert_eq!(s.release_status().await, "failed");
}
helm_3_and_4!(script_in_use_fails_after_60s_leaving_the_claim_terminating);

// ------------------------------------------------------------------------------------------
// (8) two releases of the same name in two namespaces at the same time

async fn two_releases_in_two_namespaces_at_once_keep_apart(helm: Helm) {
    let opts = ReleaseOpts {
        helm,
        runner: RunnerOpts {
            rendezvous: Some(Arc::new(Rendezvous::new(2))),
            ..RunnerOpts::default()
        },
        ..ReleaseOpts::default()
    };
    let one = Release::with("e2e-two-1", opts.clone()).await;
    let two = Release::with("e2e-two-2", opts).await;
    for s in [&one, &two] {
        retained("pv-a", &s.a).create(s).await;
        retained("pv-b", &s.b).create(s).await;
    }
    // Both installs, then both upgrades, at the same time: each pair of hook pods runs only
    // once both exist (the runners share a rendezvous).
    let (a1, a2) = (
        [("persistence.storageClass", one.a.as_str())],
        [("persistence.storageClass", two.a.as_str())],
    );
    let (x, y) = tokio::join!(
        one.helm("install", &a1, true),
        two.helm("install", &a2, true),
    );
    one.expect_ok(&x);
    two.expect_ok(&y);
    let (b1, b2) = (
        [("persistence.storageClass", one.b.as_str())],
        [("persistence.storageClass", two.b.as_str())],
    );
    let (x, y) = tokio::join!(
        one.helm("upgrade", &b1, true),
        two.helm("upgrade", &b2, true),
    );
    one.expect_ok(&x);
    two.expect_ok(&y);
    for s in [&one, &two] {
        let run = s.last_run(0);
        assert_eq!(run.outcome().result, "migrated", "{run}");
        assert!(
            run.notes
                .iter()
                .any(|n| n.starts_with("ran together with the other")),
            "{run}"
        );
        let claim = wait_bound(s.client(), s.name(), CLAIM).await;
        assert_eq!(claim_class(&claim), Some(s.b.as_str()));
        // Each hook was bound only to its own namespace's objects.
        assert_eq!(run.bindings, s.chart_bindings(), "{run}");
        s.expect_hook_objects_gone().await;
    }
}
helm_3_and_4!(two_releases_in_two_namespaces_at_once_keep_apart);

// ------------------------------------------------------------------------------------------
// Row "the volume carries its provisioner's finalizer"

/// Class A as a CSI driver's: the volume has reclaim policy Delete, the provisioner's annotation
/// and finalizer; the provisioner does not run here. Installs on A and upgrades to B (whose
/// volume waits there; `--wait` only if `wait`).
async fn provisioner_finalizer(
    prefix: &str,
    hook: Hook,
    helm: Helm,
    wait: bool,
) -> (Release, PersistentVolume, HelmOut) {
    let opts = ReleaseOpts {
        hook,
        helm,
        class_a: Class::new("a").provisioner(CSI_PROVISIONER),
        ..ReleaseOpts::default()
    };
    let s = Release::with(prefix, opts).await;
    let pv = retained("pv-a", &s.a).csi().create(&s).await;
    retained("pv-b", &s.b).create(&s).await;
    s.install(Some(&s.a)).await;
    let out = s
        .helm(
            "upgrade",
            &[
                ("persistence.storageClass", &s.b),
                ("storageclassMigrate.timeout", "3s"),
            ],
            wait,
        )
        .await;
    (s, pv, out)
}

/// Removes the provisioner's finalizer, which no provisioner will ever remove here.
async fn release_volume(s: &Release, name: &str) {
    let _ = s
        .pvs()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await;
}

async fn provisioner_finalizer_is_left_to_the_provisioner(helm: Helm) {
    let (s, pv, out) = provisioner_finalizer("e2e-csi", Hook::Binary, helm, true).await;
    s.expect_ok(&out);
    let after = wait_bound(s.client(), s.name(), CLAIM).await;
    assert_eq!(claim_class(&after), Some(s.b.as_str()));
    let run = s.last_run(0);
    let name = pv.name_any();
    let o = run.outcome();
    assert_eq!(
        o.left_names("volume-reclaim-pending"),
        [name.as_str()],
        "{run}"
    );
    assert!(o.left[0].text.ends_with("still present after 3s"), "{run}");
    let left = s
        .pv(&name)
        .await
        .expect("the volume waits for its provisioner");
    assert!(left.metadata.deletion_timestamp.is_none());
    assert!(
        left.finalizers().iter().any(|f| f == PROVISIONER_FINALIZER),
        "{:?}",
        left.finalizers()
    );
    release_volume(&s, &name).await;
}
helm_3_and_4!(provisioner_finalizer_is_left_to_the_provisioner);

/// The script's `kubectl patch --ignore-not-found` fails, so the provisioner's finalizer stays:
/// `kubectl delete pv --wait --timeout=60s` waits for a provisioner that does not run here, gives
/// up, and the upgrade fails with the claim already gone.
async fn script_provisioner_finalizer_fails_after_60s_with_the_claim_gone(helm: Helm) {
    if skip_without_script("script_provisioner_finalizer_fails_after_60s_with_the_claim_gone") {
        return;
    }
    let (s, pv, out) = provisioner_finalizer("e2e-script-csi", Hook::Script, helm, false).await;
    s.expect_hook_failed(&out, "BackoffLimitExceeded").await;
    s.last_run_saying(
        1,
        &[
            "unknown flag: --ignore-not-found",
            "timed out waiting for the condition",
        ],
    );
    assert!(s.claim().await.is_none(), "the claim was deleted");
    let name = pv.name_any();
    let left = s
        .pv(&name)
        .await
        .expect("the volume waits for its provisioner");
    assert!(left.metadata.deletion_timestamp.is_some(), "being deleted");
    assert!(
        left.finalizers().iter().any(|f| f == PROVISIONER_FINALIZER),
        "{:?}",
        left.finalizers()
    );
    assert_eq!(s.release_status().await, "failed");
    release_volume(&s, &name).await;
}
helm_3_and_4!(script_provisioner_finalizer_fails_after_60s_with_the_claim_gone);

// ------------------------------------------------------------------------------------------
// (9) data: copy

/// The file the test writes into the volume on class A: its name, size, owner and mode.
const PAYLOAD: &str = "payload.bin";
const PAYLOAD_SIZE: usize = 45_321;
const PAYLOAD_OWNER: (u32, u32) = (4321, 4322);
const PAYLOAD_MODE: u32 = 0o640;

/// `size` random bytes.
fn random_bytes(size: usize) -> Vec<u8> {
    let mut bytes = vec![0; size];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("reading /dev/urandom");
    bytes
}

/// Asserts that `dir` holds the payload: the same bytes, owner and mode.
/// Upgrades to class B with `data: <data>`; the hook must have migrated the claim, its old
/// volume switched to Retain, the data kept by `how` (`data-copied`, `snapshot-taken`) and the
/// claim made again. Returns the claim after the upgrade and the hook's run.
async fn upgrade_keeping(s: &Release, data: &str, how: &str) -> (PersistentVolumeClaim, HookRun) {
    let after = s
        .upgrade_ok(&s.b, &[("storageclassMigrate.data", data)])
        .await;
    let run = s.last_run(0);
    let o = run.outcome();
    assert_eq!(o.result, "migrated", "{run}");
    for kind in ["volume-retained", "claim-deleted", how, "claim-recreated"] {
        assert!(o.has_done(kind), "{kind} not done\n{run}");
    }
    (after, run)
}

/// Writes [`PAYLOAD`] into `dir`: random bytes, owned by [`PAYLOAD_OWNER`], mode
/// [`PAYLOAD_MODE`]. Returns the bytes.
fn write_payload(dir: &Path) -> Vec<u8> {
    let payload = random_bytes(PAYLOAD_SIZE);
    let file = dir.join(PAYLOAD);
    fs::write(&file, &payload).unwrap();
    chown(&file, PAYLOAD_OWNER.0, PAYLOAD_OWNER.1);
    chmod(&file, PAYLOAD_MODE);
    payload
}

fn assert_payload(dir: &Path, bytes: &[u8], what: &str) {
    let path = dir.join(PAYLOAD);
    let meta = fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("{what}: {path:?}: {e}"));
    assert!(meta.is_file(), "{what}: {path:?} is not a file");
    assert!(
        fs::read(&path).unwrap() == bytes,
        "{what}: {path:?}: other bytes"
    );
    assert_eq!((meta.uid(), meta.gid()), PAYLOAD_OWNER, "{what}: owner");
    assert_eq!(meta.mode() & 0o7777, PAYLOAD_MODE, "{what}: mode");
}

fn reclaim_policy(pv: &PersistentVolume) -> &str {
    pv.spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
        .unwrap_or_default()
}

/// The field managers of an object with their operations, e.g. `helm (Apply)`.
fn managers(claim: &PersistentVolumeClaim) -> Vec<String> {
    claim
        .managed_fields()
        .iter()
        .map(|m| {
            format!(
                "{} ({})",
                m.manager.as_deref().unwrap_or_default(),
                m.operation.as_deref().unwrap_or_default()
            )
        })
        .collect()
}

/// Installs with the claim on class A, bound to a volume whose directory on this host holds a
/// file (random bytes, another owner, mode 0640); upgrades to class B (host-path provisioned)
/// with `data: copy`; then upgrades again without a change, then rolls back to the revision on
/// class A. The same with either helm.
async fn data_copy_keeps_the_file(helm: Helm) {
    testkit::require_root!("the file belongs to another user");
    let s = Release::with(
        "e2e-copy",
        ReleaseOpts {
            helm,
            class_b: Class::new("b").host_path_provisioner(),
            // The hook waits for the copy Job, whose pod the runner runs in the image too.
            timeout: "3m".into(),
            ..ReleaseOpts::default()
        },
    )
    .await;
    // Class A's volume is a directory of this host; Delete, as a provisioner would leave it:
    // the hook switches it to Retain before the claim goes.
    let old_dir = data_dir(&s.scoped("old"));
    let pv_a = Volume::host_path("pv-a")
        .class(&s.a)
        .reclaim("Delete")
        .reserved_for(s.name(), CLAIM)
        .at(&old_dir)
        .create(&s)
        .await;
    let before = s.install(Some(&s.a)).await;
    assert_eq!(volume_name(&before), Some(pv_a.name_any().as_str()));
    let revision_a = s.revision().await;

    let payload = write_payload(&old_dir);

    // The upgrade to class B keeps the data.
    let (after, run) = upgrade_keeping(&s, "copy", "data-copied").await;
    let o = run.outcome();
    assert_eq!(
        o.left_names("volume-kept"),
        [pv_a.name_any().as_str()],
        "{run}"
    );
    let copy_pods: Vec<_> = s
        .runner
        .runs()
        .into_iter()
        .filter(|r| r.job.as_deref() == Some("rel-data-migrate-copy"))
        .collect();
    assert!(
        copy_pods.len() == 1 && copy_pods[0].exit_code == 0,
        "the copy Job's pod ran once and succeeded\n{}",
        s.runner.report()
    );
    assert_eq!(s.release_status().await, "deployed");

    assert_made_again(&after, &before, &s.b);
    let pv_b = get(&s.pvs(), volume_name(&after).expect("bound")).await;
    assert_eq!(
        pv_b.spec.as_ref().unwrap().storage_class_name.as_deref(),
        Some(s.b.as_str())
    );
    let new_dir = volume_dir(&pv_b).expect("a host-path volume");
    assert!(new_dir.starts_with("/tmp/hostpath_pv"), "{new_dir:?}");
    assert_payload(&new_dir, &payload, "the copy on class B");
    // The old volume is kept, Retain, with the data.
    let old = s
        .pv(&pv_a.name_any())
        .await
        .expect("the old volume is kept");
    assert_eq!(old.uid(), pv_a.uid());
    assert_eq!(reclaim_policy(&old), "Retain");
    assert_payload(&old_dir, &payload, "the old volume");
    s.expect_hook_objects_gone().await;

    // Helm adopted the claim the hook made: an upgrade without a change keeps it (Helm 3's
    // three-way patch changes nothing; Helm 4's server-side apply meets no conflict).
    let out = s.helm("upgrade", &[], true).await;
    s.expect_ok(&out);
    let run = s.last_run(0);
    assert_eq!(run.outcome().result, "nothing-to-do", "{run}");
    let adopted = s.claim().await.expect("the claim is there");
    assert_eq!(adopted.uid(), after.uid(), "the claim was kept");
    assert_eq!(volume_name(&adopted), Some(pv_b.name_any().as_str()));
    if helm == Helm::V4 {
        assert!(
            managers(&adopted).iter().any(|m| m == "helm (Apply)"),
            "Helm 4 applied the claim server-side: {:?}",
            managers(&adopted)
        );
    }
    assert_eq!(s.release_status().await, "deployed");

    // Rollback to the revision on class A. Helm 3 patches the claim back to class A, which the
    // apiserver refuses: the class is immutable. Helm 4 applies it server-side, and the apply
    // conflicts first: the class is also the field of the hook, which made the claim; with
    // --force-conflicts it reaches the same immutable field. Either way the claim stays on
    // class B with the data, and the old volume is still there.
    let immutable = "spec is immutable after creation";
    if helm == Helm::V4 {
        let out = s.rollback(revision_a, &[]).await;
        s.expect_failed(&out);
        assert!(
            out.stderr.contains("Apply failed with 1 conflict")
                && out.stderr.contains("using v1: .spec.storageClassName")
                && !out.stderr.contains(immutable),
            "helm 4 does not say the apply conflicts on the class\n{out}"
        );
        assert_eq!(s.release_status().await, "failed");
    }
    let flags: &[&str] = match helm {
        Helm::V3 => &[],
        Helm::V4 => &["--force-conflicts"],
    };
    let out = s.rollback(revision_a, flags).await;
    s.expect_failed(&out);
    assert!(
        out.stderr.contains(immutable),
        "helm does not say the claim is immutable\n{out}"
    );
    assert_eq!(s.release_status().await, "failed");
    let kept = s.claim().await.expect("the claim is there");
    assert_eq!(kept.uid(), after.uid());
    assert_eq!(claim_class(&kept), Some(s.b.as_str()));
    assert_eq!(volume_name(&kept), Some(pv_b.name_any().as_str()));
    assert_payload(&new_dir, &payload, "the copy on class B after the rollback");
    let old = s
        .pv(&pv_a.name_any())
        .await
        .expect("the old volume is kept");
    assert_eq!(reclaim_policy(&old), "Retain");
    assert_payload(&old_dir, &payload, "the old volume after the rollback");
}
helm_3_and_4!(data_copy_keeps_the_file);

/// Installs with the claim on class A of CSI driver A (the control plane's CSI stack), writes a
/// file into its volume (random bytes, another owner, mode 0640), and upgrades to class B of the
/// same driver with `data: snapshot`: the hook snapshots the old volume and makes the claim
/// again from the snapshot, which Helm adopts. The same with either helm.
async fn data_snapshot_keeps_the_file(helm: Helm) {
    testkit::require_root!("the file belongs to another user");
    let s = Release::with(
        "e2e-snap",
        ReleaseOpts {
            helm,
            class_a: Class::new("a").csi(DRIVER_A),
            class_b: Class::new("b").csi(DRIVER_A).parameter("tier", "fast"),
            ..ReleaseOpts::default()
        },
    )
    .await;
    let before = s.install(Some(&s.a)).await;
    let pv_a = get(&s.pvs(), volume_name(&before).expect("bound")).await;
    let old_dir = claim_dir(&s, CLAIM).await;
    let payload = write_payload(&old_dir);

    let (after, run) = upgrade_keeping(&s, "snapshot", "snapshot-taken").await;
    let o = run.outcome();
    assert!(!o.has_done("data-copied"), "no copy Job\n{run}");
    let snapshot = o.left_names("snapshot-kept");
    assert_eq!(snapshot.len(), 1, "{run}");
    assert_eq!(s.release_status().await, "deployed");

    assert_made_again(&after, &before, &s.b);
    let source = after.spec.as_ref().and_then(|s| s.data_source.clone());
    assert_eq!(source.map(|s| s.name).as_deref(), Some(snapshot[0]));
    let new_dir = claim_dir(&s, CLAIM).await;
    assert_ne!(new_dir, old_dir);
    assert_payload(&new_dir, &payload, "the volume restored on class B");
    let old = s
        .pv(&pv_a.name_any())
        .await
        .expect("the old volume is kept");
    assert_eq!(reclaim_policy(&old), "Retain");
    assert_payload(&old_dir, &payload, "the old volume");
    s.expect_hook_objects_gone().await;

    // Helm adopted the claim the hook made from the snapshot.
    let out = s.helm("upgrade", &[], true).await;
    s.expect_ok(&out);
    assert_eq!(s.last_run(0).outcome().result, "nothing-to-do");
    let adopted = s.claim().await.expect("the claim is there");
    assert_eq!(adopted.uid(), after.uid(), "the claim was kept");
    assert_eq!(s.release_status().await, "deployed");
    assert_no_leak(&s).await;
}
helm_3_and_4!(data_snapshot_keeps_the_file);
