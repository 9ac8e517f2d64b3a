//! `flux-controllers NAMESPACE`: starts Flux's source-controller and helm-controller on a local
//! control plane (CRDs applied), serves the chart repository of `examples/app` on a loopback port
//! and runs the Job pods of NAMESPACE in place of a kubelet, as the Flux tests do, until it is
//! stopped (SIGTERM, Ctrl-C; the controllers stop with it). Prints `CHART_REPOSITORY_URL=<url>`
//! once all is running, then each hook pod's run as it ends. For `make demo-flux`.
//!
//! The control plane is the one `STORAGECLASS_MIGRATE_CONTROL_PLANE` names; the controllers' logs
//! go to its `logs/` directory.

use std::io::Write;

use testkit::{
    chart_repo::app_repository,
    flux::controllers,
    hook_runner::{HookRunner, RunnerOpts},
};

fn main() {
    let Some(namespace) = std::env::args().nth(1) else {
        eprintln!("usage: flux-controllers NAMESPACE");
        std::process::exit(2);
    };
    let flux = controllers();
    let repository = app_repository();
    let runner = HookRunner::start(&namespace, RunnerOpts::default());
    for (name, log) in &flux.logs {
        eprintln!("flux: {name} running, log {}", log.display());
    }
    println!("CHART_REPOSITORY_URL={}", repository.url);
    let _ = std::io::stdout().flush();
    runner.print_runs()
}
