#!/usr/bin/env python3
"""Downtime of a whole data-keeping migration (DATA_POLICY=copy) against the size of the data, on a
local control plane.

For each size, a claim on class `dt-old` is bound to a volume whose directory holds that much data
(files of random bytes, up to 128 MiB each); the hook moves it to class `dt-new`, whose volumes the
controller manager's host-path provisioner makes. The copy Job's pod runs on this host by the test
kit's hook runner (`target/release/hook-runner`, the binary on the host: no image needed). The
downtime is the time from the claim's delete to the claim bound again to the copy, both read off
the hook's JSON log ("claim deleted", "claim made again, bound to the copy"); there are no pods, so
no eviction comes first. Also measured: the whole run's wall time. The copy is verified (the
default). Each run's copy is checked to hold as many bytes as the original.

    scripts/bench-downtime.py [--sizes-mib 64,256,1024] [--runs 3] [--markdown FILE]

Not run in CI.
"""

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from bench import Cluster  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_copy", ROOT / "scripts/bench-copy.py")
bench_copy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_copy)

OLD, NEW = "dt-old", "dt-new"


def timestamp(line):
    return datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")).timestamp()


def downtime_from_log(stderr):
    """Seconds from "claim deleted" to "claim made again, bound to the copy" in the JSON log."""
    marks = {}
    for raw in stderr.splitlines():
        try:
            line = json.loads(raw)
        except json.JSONDecodeError:
            continue
        message = line.get("message") or line.get("fields", {}).get("message", "")
        if message in ("claim deleted", "claim made again, bound to the copy"):
            marks[message] = timestamp(line)
    if len(marks) != 2:
        return None
    return marks["claim made again, bound to the copy"] - marks["claim deleted"]


def tree_bytes(path):
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def one_run(cluster, binary, runner, work, ns, mib):
    data = work / "volumes" / ns
    bench_copy.make_large(data, mib)
    cluster.apply(f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {ns}}}
---
apiVersion: v1
kind: PersistentVolume
metadata: {{name: {ns}-old}}
spec:
  storageClassName: {OLD}
  capacity: {{storage: {mib}Mi}}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Delete
  hostPath: {{path: {data}}}
  claimRef: {{namespace: {ns}, name: data}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: data, namespace: {ns}}}
spec:
  storageClassName: {OLD}
  accessModes: [ReadWriteOnce]
  resources: {{requests: {{storage: {mib}Mi}}}}
""")
    cluster.kubectl_run("wait", "-n", ns, "pvc/data", "--for=jsonpath={.status.phase}=Bound", "--timeout=60s")
    env = dict(os.environ, STORAGECLASS_MIGRATE_CONTROL_PLANE=str(cluster.dir),
               STORAGECLASS_MIGRATE_BINARY=binary, STORAGECLASS_MIGRATE_HOOK_RUNNER="binary")
    hook_runner = subprocess.Popen([runner, ns], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        hook = dict(os.environ, KUBECONFIG=cluster.kubeconfig, PVC_NAME="data", PVC_NAMESPACE=ns,
                    DESIRED_STORAGECLASS=NEW, DATA_POLICY="copy", COPY_IMAGE="localhost/storageclass-migrate:bench",
                    LOG_FORMAT="json", DEADLINE="20m", WAIT_TIMEOUT="120s")
        start = time.perf_counter()
        proc = subprocess.run([binary, "--termination-log", "/dev/null"], env=hook, capture_output=True, text=True)
        wall = time.perf_counter() - start
    finally:
        hook_runner.terminate()
        hook_runner.wait()
    downtime = downtime_from_log(proc.stderr)
    if proc.returncode != 0 or downtime is None:
        sys.exit(f"bench-downtime: the hook failed in {ns} (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr[-3000:]}")
    new_volume = cluster.kubectl_run("get", "pvc", "data", "-n", ns, "-o", "jsonpath={.spec.volumeName}").strip()
    new_path = cluster.kubectl_run("get", "pv", new_volume, "-o", "jsonpath={.spec.hostPath.path}").strip()
    if tree_bytes(new_path) != tree_bytes(data):
        sys.exit(f"bench-downtime: the copy in {new_path} does not hold the {mib} MiB of {data}")
    cluster.kubectl_run("delete", "namespace", ns, "--wait=true", "--timeout=120s")
    cluster.kubectl_run("delete", "pv", f"{ns}-old", new_volume, "--ignore-not-found", "--wait=false")
    shutil.rmtree(data, ignore_errors=True)
    return downtime, wall


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mib", default="64,256,1024")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes_mib.split(",")]

    subprocess.run(["cargo", "build", "--release", "--locked", "--quiet"], cwd=ROOT, check=True)
    subprocess.run(["cargo", "build", "--release", "--locked", "--quiet", "-p", "testkit", "--bin", "hook-runner"],
                   cwd=ROOT, check=True)
    binary = str(ROOT / "target/release/storageclass-migrate")
    runner = str(ROOT / "target/release/hook-runner")
    work = Path(tempfile.mkdtemp(prefix="bench-downtime-", dir="/var/tmp"))
    cp_dir = work / "control-plane"
    subprocess.run([ROOT / "scripts/control-plane.sh", "start", cp_dir, "--owner-pid", str(os.getpid())], check=True)
    results = {mib: [] for mib in sizes}
    try:
        cluster = Cluster(cp_dir)
        cluster.apply(f"""
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {{name: {OLD}}}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: Immediate
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {{name: {NEW}}}
provisioner: kubernetes.io/host-path
volumeBindingMode: Immediate
""")
        for i in range(args.runs):
            for mib in sizes:
                results[mib].append(one_run(cluster, binary, runner, work, f"dt{i}-{mib}", mib))
                print(f"bench-downtime: run {i} {mib} MiB: downtime {results[mib][-1][0]:.2f}s", file=sys.stderr)
    finally:
        subprocess.run([ROOT / "scripts/control-plane.sh", "stop", cp_dir], check=False)
        shutil.rmtree(work, ignore_errors=True)
    lines = [
        f"{args.runs} runs per size; downtime from the claim's delete to the claim bound again to the copy "
        "(the hook's JSON log); the copy verified.",
        "",
        "| data | median downtime s | min s | max s | whole run median s | MiB/s over the downtime |",
        "|---|---|---|---|---|---|",
    ]
    for mib in sizes:
        down = [r[0] for r in results[mib]]
        wall = [r[1] for r in results[mib]]
        median = statistics.median(down)
        lines.append(f"| {mib} MiB | {median:.2f} | {min(down):.2f} | {max(down):.2f} | "
                     f"{statistics.median(wall):.2f} | {mib / median:.0f} |")
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")


if __name__ == "__main__":
    main()
