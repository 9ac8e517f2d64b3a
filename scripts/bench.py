#!/usr/bin/env python3
"""Benchmark storageclass-migrate against the kubectl hook script, side by side, on a local
control plane.

Both run as the hook Job runs them (same variables, same service-account identity), interleaved
run by run, in three scenarios: claim absent, claim already on the desired class, migration of a
bound claim with a Delete volume and no pods. The script runs twice: as in its Job (read-only
root, so kubectl cannot keep a discovery cache) and with a warm cache. Measured per run: wall
time, peak RSS of the largest process (ru_maxrss from wait4, which covers the script's kubectl
children) and the API requests made, counted in the apiserver's audit log by user.

    scripts/bench.py --script PATH/TO/kubectl-hook.sh [--runs 9] [--markdown FILE]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVICE_ACCOUNT = ("bench", "hook")
USER = f"system:serviceaccount:{SERVICE_ACCOUNT[0]}:{SERVICE_ACCOUNT[1]}"
CLASS_OLD, CLASS_NEW = "bench-old", "bench-new"
SCENARIOS = ["absent", "same-class", "migrate"]


def run(cmd, **kwargs):
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kwargs)


class Cluster:
    def __init__(self, directory):
        self.dir = Path(directory)
        env = {}
        for line in (self.dir / "env").read_text().splitlines():
            if line.startswith("export "):
                key, _, value = line[len("export "):].partition("=")
                env[key] = value.strip("'\"")
        self.kubeconfig = env["KUBECONFIG"]
        self.kubectl = env["KUBECTL"]
        self.server = env["APISERVER_URL"]
        self.ca = env.get("CA_CERT", str(self.dir / "ca.crt"))
        self.audit = self.dir / "logs" / "audit.log"

    def kubectl_run(self, *args, stdin=None):
        return run([self.kubectl, "--kubeconfig", self.kubeconfig, *args], input=stdin).stdout

    def apply(self, manifest):
        self.kubectl_run("apply", "-f", "-", stdin=manifest)

    def audit_offset(self):
        return self.audit.stat().st_size

    def requests_since(self, offset):
        count = 0
        with self.audit.open() as log:
            log.seek(offset)
            for line in log:
                event = json.loads(line)
                if event.get("user", {}).get("username") == USER and event.get("stage") == "ResponseComplete":
                    count += 1
        return count


def hook_kubeconfig(cluster, path):
    ns, name = SERVICE_ACCOUNT
    cluster.apply(f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {ns}}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: {name}, namespace: {ns}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: bench-hook}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}}
subjects: [{{kind: ServiceAccount, name: {name}, namespace: {ns}}}]
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {{name: {CLASS_OLD}}}
provisioner: kubernetes.io/no-provisioner
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {{name: {CLASS_NEW}}}
provisioner: kubernetes.io/no-provisioner
""")
    token = cluster.kubectl_run("create", "token", name, "-n", ns, "--duration=2h").strip()
    Path(path).write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: local, cluster: {{server: "{cluster.server}", certificate-authority: "{cluster.ca}"}}}}]
users: [{{name: hook, user: {{token: "{token}"}}}}]
contexts: [{{name: hook, context: {{cluster: local, user: hook}}}}]
current-context: hook
""")


def setup(cluster, scenario, ns):
    """Objects for one run in namespace ns; returns nothing, waits until they are ready."""
    manifest = f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n"
    claim = lambda cls: f"""---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: data, namespace: {ns}}}
spec:
  storageClassName: {cls}
  accessModes: [ReadWriteOnce]
  resources: {{requests: {{storage: 1Gi}}}}
"""
    if scenario == "same-class":
        manifest += claim(CLASS_NEW)
    elif scenario == "migrate":
        manifest += f"""---
apiVersion: v1
kind: PersistentVolume
metadata: {{name: {ns}}}
spec:
  storageClassName: {CLASS_OLD}
  capacity: {{storage: 1Gi}}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Delete
  hostPath: {{path: /nonexistent/storageclass-migrate-bench/{ns}}}
  claimRef: {{namespace: {ns}, name: data}}
""" + claim(CLASS_OLD)
    cluster.apply(manifest)
    if scenario == "migrate":
        cluster.kubectl_run("wait", "-n", ns, "pvc/data", "--for=jsonpath={.status.phase}=Bound", "--timeout=60s")


def teardown(cluster, ns):
    cluster.kubectl_run("delete", "namespace", ns, "--wait=false", "--ignore-not-found")
    pv = cluster.kubectl_run("get", "pv", ns, "--ignore-not-found", "-o", "name").strip()
    if pv:
        cluster.kubectl_run("patch", "pv", ns, "--type=merge", "-p", '{"metadata":{"finalizers":null}}')
        cluster.kubectl_run("delete", "pv", ns, "--ignore-not-found", "--wait=false")


def run_measured(cmd, env):
    """Runs cmd, returning (exit status, seconds, peak RSS in KiB, stdout, stderr).

    The peak RSS comes from GNU time, which reads it with wait4 like this script would, but as a
    small C program: a child forked from Python would count Python's own pages, since the kernel
    keeps the high-water mark across exec.
    """
    with tempfile.NamedTemporaryFile(mode="r") as rss:
        start = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss.name, *cmd], env=env, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        peak = int(rss.read().strip().splitlines()[-1])
    return proc.returncode, elapsed, peak, proc.stdout, proc.stderr


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--script", required=True, help="the kubectl hook script to compare with")
    parser.add_argument("--runs", type=int, default=9, help="runs per scenario and candidate")
    parser.add_argument("--binary", default=str(ROOT / "target/release/storageclass-migrate"))
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args()

    script = Path(args.script).resolve()
    if not script.is_file():
        sys.exit(f"bench: no script at {script}")
    if args.binary == str(ROOT / "target/release/storageclass-migrate"):
        subprocess.run(["cargo", "build", "--release", "--locked", "--quiet"], cwd=ROOT, check=True)

    work = Path(tempfile.mkdtemp(prefix="storageclass-migrate-bench."))
    cp_dir = work / "control-plane"
    env = dict(os.environ, CONTROL_PLANE_AUDIT="1")
    subprocess.run([ROOT / "scripts/control-plane.sh", "start", cp_dir, "--owner-pid", str(os.getpid())], env=env, check=True)
    try:
        cluster = Cluster(cp_dir)
        kubeconfig = work / "hook.kubeconfig"
        hook_kubeconfig(cluster, kubeconfig)
        kubectl_dir = str(Path(cluster.kubectl).parent)
        job_home, warm_home = work / "job-home", work / "home"
        job_home.mkdir()
        warm_home.mkdir()
        base = {"PATH": f"{kubectl_dir}:/usr/bin:/bin", "KUBECONFIG": str(kubeconfig), "LANG": "C.UTF-8"}
        candidates = {
            "storageclass-migrate": ([args.binary, "--termination-log", "/dev/null"], dict(base, HOME=str(job_home))),
            # A read-only root filesystem: kubectl cannot create its discovery cache, so every
            # call discovers the API again.
            "script (as in its Job)": (
                ["bash", str(script)],
                dict(base, HOME=str(job_home), KUBECACHEDIR="/dev/null/cache"),
            ),
            "script (warm cache)": (["bash", str(script)], dict(base, HOME=str(warm_home))),
        }
        results = {(s, c): [] for s in SCENARIOS for c in candidates}
        # One untimed run each warms the kubectl cache and the page cache.
        sequence = [(0, s) for s in SCENARIOS] + [(i, s) for i in range(1, args.runs + 1) for s in SCENARIOS]
        for i, scenario in sequence:
            for name, (cmd, cenv) in candidates.items():
                ns = f"b{i}-{SCENARIOS.index(scenario)}-{list(candidates).index(name)}"
                setup(cluster, scenario, ns)
                desired = CLASS_NEW
                cenv = dict(cenv, PVC_NAME="data", PVC_NAMESPACE=ns, DESIRED_STORAGECLASS=desired)
                offset = cluster.audit_offset()
                status, seconds, rss, out, err = run_measured(cmd, cenv)
                requests = cluster.requests_since(offset)
                if status != 0 or requests == 0:
                    sys.exit(f"bench: {name} failed in {scenario} (exit {status}, {requests} requests):\n{out}\n{err}")
                if scenario == "migrate" and cluster.kubectl_run("get", "pvc", "data", "-n", ns, "--ignore-not-found", "-o", "name"):
                    sys.exit(f"bench: {name} left the claim in {scenario}:\n{out}\n{err}")
                if i > 0:
                    results[(scenario, name)].append((seconds, rss, requests))
                teardown(cluster, ns)
            print(f"bench: run {i} {scenario} done", file=sys.stderr)
        table = render(results, candidates, args.runs)
        print(table)
        if args.markdown:
            Path(args.markdown).write_text(table + "\n")
    finally:
        subprocess.run([ROOT / "scripts/control-plane.sh", "stop", cp_dir], check=False)
        shutil.rmtree(work, ignore_errors=True)


def render(results, candidates, runs):
    lines = [
        f"{runs} runs per cell, interleaved; wall time in ms; peak RSS of the largest process in MiB; "
        "API requests from the audit log.",
        "",
        "| scenario | candidate | median ms | min ms | max ms | peak RSS MiB | requests | time ratio script/ours | RSS ratio | request ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    ours = "storageclass-migrate"
    for scenario in SCENARIOS:
        base = results[(scenario, ours)]
        base_time = statistics.median(r[0] for r in base)
        base_rss = statistics.median(r[1] for r in base)
        base_req = statistics.median(r[2] for r in base)
        for name in candidates:
            rows = results[(scenario, name)]
            times = [r[0] * 1000 for r in rows]
            rss = statistics.median(r[1] for r in rows)
            req = statistics.median(r[2] for r in rows)
            ratio = lambda a, b: "" if name == ours else f"{a / b:.1f}x"
            lines.append(
                f"| {scenario} | {name} | {statistics.median(times):.0f} | {min(times):.0f} | {max(times):.0f} "
                f"| {rss / 1024:.1f} | {req:g} | {ratio(statistics.median(times) / 1000, base_time)} "
                f"| {ratio(rss, base_rss)} | {ratio(req, base_req)} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
