//! Flux: `examples/app` installed and upgraded by a HelmRelease of helm-controller, fetched by
//! source-controller from a chart repository on a loopback port (see `testkit::flux`), while the
//! hook runner runs the hook Job's pods. The class of the claim changes from A to B through the
//! HelmRelease's values:
//!
//! 1. the install on class A becomes Ready;
//! 2. without the hook, the upgrade fails on the immutable claim and the HelmRelease stays failed;
//! 3. with the hook, it becomes Ready with the claim on class B;
//! 4. with upgrade retries and a missing target class, every try's hook refuses (exit 3) and the
//!    release fails for good with nothing deleted;
//! 5. but with the chart's `showLogsOnFailure: true`, helm-controller v1.4.3 exits when that
//!    hook fails (why the chart leaves it off by default).

use serde_json::json;
use testkit::flux::{FluxOpts, FluxRelease, HelmRelease, RELEASE_WAIT};
use testkit::prelude::*;
use testkit::release::CLAIM;

/// Asserts the HelmRelease failed its upgrade for good: not Ready (`ready_reason`: the upgrade's
/// failure, or the rollback that remediated it), the upgrade failed, stalled with its retries
/// used up.
fn assert_upgrade_failed(hr: &HelmRelease, ready_reason: &str) {
    assert_eq!(hr.state("Ready"), Some(("False", ready_reason)), "{hr:#?}");
    assert_eq!(
        hr.state("Released"),
        Some(("False", "UpgradeFailed")),
        "{hr:#?}"
    );
    assert_eq!(
        hr.state("Stalled"),
        Some(("True", "RetriesExceeded")),
        "{hr:#?}"
    );
}

#[tokio::test]
async fn flux_installs_the_release_with_the_claim_on_class_a() {
    let (f, claim, pv) = FluxRelease::installed("flux-install", FluxOpts::default()).await;

    assert_eq!(claim_class(&claim), Some(f.a.as_str()));
    assert_eq!(volume_name(&claim), Some(pv.name_any().as_str()));
    let hr = f.helm_release().await;
    assert_eq!(
        hr.state("Ready"),
        Some(("True", "InstallSucceeded")),
        "{hr:#?}"
    );
    assert_eq!(hr.history_states(), ["deployed"], "{hr:#?}");
    // The hook ran in the install and found nothing to do.
    let run = f.last_run(0);
    assert_eq!(f.runner.runs().len(), 1, "{}", f.report());
    assert_eq!(
        run.termination_message,
        format!("{}/{CLAIM}: nothing to do: claim absent", f.name()),
        "{run}"
    );
}

#[tokio::test]
async fn flux_without_the_hook_fails_on_the_immutable_claim_and_stays_failed() {
    let (f, before, pv) = FluxRelease::installed("flux-toggle", FluxOpts::default()).await;

    f.apply(
        &f.b,
        &[("storageclassMigrate.allowMigration", json!(false))],
    )
    .await;
    let hr = f.wait_stalled().await;
    assert_upgrade_failed(&hr, "UpgradeFailed");
    let message = hr.message("Ready");
    assert!(
        message.contains("spec is immutable after creation"),
        "{message}\n{}",
        f.report()
    );
    assert_eq!(hr.history_states(), ["failed", "deployed"], "{hr:#?}");
    // No hook ran in the upgrade: the one run is the install's.
    assert_eq!(f.runner.runs().len(), 1, "{}", f.report());

    // A further reconcile changes nothing: the release stays failed, the claim on A.
    let again = f.reconcile_again("flux-toggle-again").await;
    assert_upgrade_failed(&again, "UpgradeFailed");
    assert_eq!(again.history_states(), ["failed", "deployed"], "{again:#?}");
    assert_eq!(f.runner.runs().len(), 1, "{}", f.report());
    f.assert_untouched(&before, &pv).await;
}

#[tokio::test]
async fn flux_with_the_hook_moves_the_claim_to_class_b() {
    let (f, before, _pv) = FluxRelease::installed("flux-upgrade", FluxOpts::default()).await;
    let pv_b = get(&f.pvs(), &f.scoped("pv-b")).await;

    f.apply(&f.b, &[]).await;
    let hr = f.wait_ready().await;
    assert_eq!(
        hr.state("Ready"),
        Some(("True", "UpgradeSucceeded")),
        "{hr:#?}"
    );
    assert_eq!(
        hr.state("Released"),
        Some(("True", "UpgradeSucceeded")),
        "{hr:#?}"
    );
    assert_eq!(hr.history_states(), ["deployed", "superseded"], "{hr:#?}");

    let after = wait_bound(f.client(), f.name(), CLAIM).await;
    assert_ne!(after.uid(), before.uid(), "the claim was replaced");
    assert_eq!(claim_class(&after), Some(f.b.as_str()));
    assert_eq!(volume_name(&after), Some(pv_b.name_any().as_str()));
    let run = f.last_run(0);
    assert_eq!(f.runner.runs().len(), 2, "{}", f.report());
    assert_eq!(run.outcome().result, "migrated", "{run}");
}

#[tokio::test]
async fn flux_retries_a_refused_hook_then_fails_keeping_claim_and_volume() {
    let retries = 2;
    let opts = FluxOpts {
        upgrade: json!({"remediation": {"retries": retries}}),
        ..FluxOpts::default()
    };
    let (f, before, pv) = FluxRelease::installed("flux-missing", opts).await;
    let missing = f.ns.scoped("missing");

    // The chart's default: no `helm.sh/hook-output-log-policy`, which would stop
    // helm-controller v1.4.3 (the last test).
    f.apply(&missing, &[]).await;
    let hr = f.wait_stalled().await;
    assert_upgrade_failed(&hr, "RollbackSucceeded");
    let message = hr.message("Released");
    assert!(
        message.contains("pre-upgrade hooks failed") && message.contains("PodFailurePolicy"),
        "{message}\n{}",
        f.report()
    );
    let status = hr.status.as_ref().expect("a status");
    assert_eq!(status.upgrade_failures, Some(retries + 1), "{hr:#?}");
    // Each failed try was rolled back to the release on class A: the release in the cluster is
    // the last rollback, revision 1 + (upgrade + rollback) per try.
    assert_eq!(
        hr.state("Remediated"),
        Some(("True", "RollbackSucceeded")),
        "{hr:#?}"
    );
    let newest = &status.history[0];
    assert_eq!(newest["status"], "deployed", "{hr:#?}");
    assert_eq!(newest["version"], json!(1 + 2 * (retries + 1)), "{hr:#?}");

    // The install's run, then one refused run (exit 3) per try of the upgrade.
    let runs = f.runner.runs();
    let codes: Vec<i32> = runs.iter().map(|r| r.exit_code).collect();
    let mut expected = vec![0];
    expected.extend([3].repeat(retries as usize + 1));
    assert_eq!(codes, expected, "{}", f.report());
    for run in &runs[1..] {
        assert_eq!(run.outcome().result, "refused", "{run}");
    }
    f.assert_untouched(&before, &pv).await;
}

/// With the chart's `showLogsOnFailure: true`, the refused hook's Job carries
/// `helm.sh/hook-output-log-policy: hook-failed`, and helm-controller v1.4.3 exits on a nil
/// pointer collecting its log: every release it manages stops with it. (Its own helm-controller,
/// so that the shared one keeps working for the other tests.) Nothing is deleted even so.
#[tokio::test]
async fn flux_helm_controller_exits_on_a_failed_hook_that_shows_its_log() {
    let opts = FluxOpts {
        own_helm_controller: true,
        ..FluxOpts::default()
    };
    let (f, before, pv) = FluxRelease::installed("flux-crash", opts).await;
    let own = f.own.as_ref().expect("its own helm-controller");

    let logs = [("storageclassMigrate.showLogsOnFailure", json!(true))];
    f.apply(&f.ns.scoped("missing"), &logs).await;
    let status = own.wait_exit(RELEASE_WAIT).await;
    let log = own.log_text();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(2),
        "{log}\n{}",
        f.report()
    );
    assert!(
        log.contains("nil pointer dereference") && log.contains("OutputContainerLogsForPodList"),
        "{log}"
    );
    f.last_run(3);
    f.assert_untouched(&before, &pv).await;
}
