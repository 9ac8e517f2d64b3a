//! `hook-runner NAMESPACE`: runs the Job pods of one namespace of a local control plane in
//! place of a kubelet, as the tests do, until it is stopped (SIGTERM, Ctrl-C); prints each pod's
//! run as it ends. For `make demo` and for trying the hook by hand on the local control plane.
//!
//! The control plane is the one `STORAGECLASS_MIGRATE_CONTROL_PLANE` names (a directory of
//! `scripts/control-plane.sh start`). Pods of the storageclass-migrate image run in the image
//! with buildah where it is built (`scripts/build-image.sh`), else the binary that
//! `STORAGECLASS_MIGRATE_BINARY` names runs on the host (see the hook runner's documentation).

use testkit::hook_runner::{HookRunner, RunnerOpts};

fn main() {
    let Some(namespace) = std::env::args().nth(1) else {
        eprintln!("usage: hook-runner NAMESPACE");
        std::process::exit(2);
    };
    let runner = HookRunner::start(&namespace, RunnerOpts::default());
    eprintln!("hook-runner: running the Job pods of namespace {namespace}");
    runner.print_runs()
}
