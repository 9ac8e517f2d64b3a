#!/usr/bin/env python3
"""Benchmark storageclass-migrate against the kubectl hook script, side by side, on a local
control plane.

Both run as the hook Job runs them (same variables, same service-account identity), interleaved
run by run. Two sets of rows:

  single  one claim, in three scenarios: claim absent, claim already on the desired class,
          migration of a bound claim with a Delete volume and no pods. The script runs twice: as
          in its Job (read-only root, so kubectl cannot keep a discovery cache) and with a warm
          cache.
  many    1, 10 and 100 bound claims of a Helm release, each with its own Delete volume:
          storageclass-migrate runs once, picking them with PVC_SELECTOR and RELEASE_NAME; the
          script (as in its Job) runs once per claim, one after the other, and its figures are
          the sums (wall time, requests) and the largest (peak RSS) of those runs.

Measured per run: wall time, peak RSS of the largest process (ru_maxrss from wait4, which covers
the script's kubectl children) and the API requests made, counted in the apiserver's audit log by
user. Every migration is checked: the claims must be gone afterwards.

    scripts/bench.py --script PATH/TO/kubectl-hook.sh [--runs 9] [--many-runs 5]
                     [--rows single,many] [--claims 1,10,100] [--concurrency N]
                     [--markdown FILE] [--logs DIR]
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
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVICE_ACCOUNT = ("bench", "hook")
USER = f"system:serviceaccount:{SERVICE_ACCOUNT[0]}:{SERVICE_ACCOUNT[1]}"
CLASS_OLD, CLASS_NEW = "bench-old", "bench-new"
SCENARIOS = ["absent", "same-class", "migrate"]
CLAIM_COUNTS = [1, 10, 100]
# The claims of the many-claims rows belong to this Helm release, as a chart's claims do.
RELEASE = "bench"
SELECTOR = f"app.kubernetes.io/instance={RELEASE}"
# Every volume carries its run's namespace, so that teardown finds them all.
VOLUME_LABEL = "storageclass-migrate-bench/namespace"
OURS = "storageclass-migrate"
SCRIPT_IN_JOB = "script (as in its Job)"
# Goals of the many-claims rows: 100 claims in under this many times the wall time of 10, and
# storageclass-migrate's peak RSS under this many MiB.
GOAL_SCALING, GOAL_RSS_MIB = 3, 16


def run(cmd, check=True, **kwargs):
    return subprocess.run(cmd, check=check, text=True, capture_output=True, **kwargs)


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

    def kubectl_run(self, *args, stdin=None, check=True):
        return run([self.kubectl, "--kubeconfig", self.kubeconfig, *args], check=check, input=stdin).stdout

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

    def claims(self, ns):
        return self.kubectl_run("get", "pvc", "-n", ns, "-o", "name").split()


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


def namespace_doc(ns):
    return f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n"


def claim_doc(ns, name, cls, helm=False):
    """A claim; with helm, labelled and annotated as Helm leaves the claims of release RELEASE."""
    metadata = f"{{name: {name}, namespace: {ns}}}"
    if helm:
        key, _, value = SELECTOR.partition("=")
        metadata = f"""
  name: {name}
  namespace: {ns}
  labels: {{app.kubernetes.io/managed-by: Helm, {key}: {value}}}
  annotations: {{meta.helm.sh/release-name: {RELEASE}, meta.helm.sh/release-namespace: {ns}}}"""
    return f"""apiVersion: v1
kind: PersistentVolumeClaim
metadata: {metadata}
spec:
  storageClassName: {cls}
  accessModes: [ReadWriteOnce]
  resources: {{requests: {{storage: 1Gi}}}}
"""


def bound_claim_docs(ns, name, helm=False):
    """A claim on the old class and its own Delete volume, bound to it in advance. The volume's
    hostPath never exists: its reclaim fails at once, as the deleter refuses paths outside /tmp,
    and the volume is left Failed rather than waited out for the whole timeout."""
    volume = f"{ns}-{name}"
    return [
        f"""apiVersion: v1
kind: PersistentVolume
metadata:
  name: {volume}
  labels: {{{VOLUME_LABEL}: {ns}}}
spec:
  storageClassName: {CLASS_OLD}
  capacity: {{storage: 1Gi}}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Delete
  hostPath: {{path: /nonexistent/storageclass-migrate-bench/{volume}}}
  claimRef: {{namespace: {ns}, name: {name}}}
""",
        claim_doc(ns, name, CLASS_OLD, helm),
    ]


def apply_and_wait(cluster, ns, docs, bound):
    """Creates the namespace ns and docs in one apply; waits until all claims are Bound."""
    cluster.apply("---\n".join([namespace_doc(ns), *docs]))
    if bound:
        timeout = 60 + bound  # seconds: the binder handles the claims a few at a time
        cluster.kubectl_run("wait", "-n", ns, "pvc", "--all", "--for=jsonpath={.status.phase}=Bound",
                            f"--timeout={timeout}s")


def set_up_single(cluster, scenario, ns, candidate):
    """Objects for one single-claim run (claim "data") in namespace ns; returns the variables of
    the candidate's one run."""
    docs = {
        "absent": [],
        "same-class": [claim_doc(ns, "data", CLASS_NEW)],
        "migrate": bound_claim_docs(ns, "data"),
    }[scenario]
    apply_and_wait(cluster, ns, docs, bound=1 if scenario == "migrate" else 0)
    return [{"PVC_NAME": "data"}]


def set_up_many(cluster, count, ns, candidate):
    """count bound claims of the release in namespace ns; returns the variables of the
    candidate's runs: storageclass-migrate picks them all by selector, the script one by one."""
    names = [f"data-{i}" for i in range(count)]
    apply_and_wait(cluster, ns, [doc for name in names for doc in bound_claim_docs(ns, name, helm=True)], count)
    if candidate == OURS:
        return [{"PVC_SELECTOR": SELECTOR, "RELEASE_NAME": RELEASE}]
    return [{"PVC_NAME": name} for name in names]


def teardown(cluster, ns):
    """Deletes the namespace and the volumes of the run, waiting until the volumes are gone."""
    cluster.kubectl_run("delete", "namespace", ns, "--wait=false", "--ignore-not-found")
    selector = f"{VOLUME_LABEL}={ns}"
    volumes = cluster.kubectl_run("get", "pv", "-l", selector, "-o", "name").split()
    if volumes:
        cluster.kubectl_run("delete", "pv", "-l", selector, "--wait=false")
        # Deleting first: the protection controller adds its finalizer back to a live volume. A
        # volume may go meanwhile, so the patch may fail; the wait tells.
        cluster.kubectl_run("patch", *volumes, "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False)
        cluster.kubectl_run("wait", "--for=delete", "pv", "-l", selector, "--timeout=120s")


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


def measure(cluster, name, cmd, envs, what, log=None):
    """Runs cmd once per environment in envs, one after the other; returns (seconds, peak RSS in
    KiB, requests): the total time, the largest peak and the total requests. Exits on a failure.
    With log (a path), what the runs printed goes there."""
    seconds, rss, requests = 0.0, 0, 0
    for env in envs:
        offset = cluster.audit_offset()
        status, elapsed, peak, out, err = run_measured(cmd, env)
        made = cluster.requests_since(offset)
        if log:
            with open(log, "a") as file:
                file.write(f"{out}{err}")
        if status != 0 or made == 0:
            sys.exit(f"bench: {name} failed in {what} (exit {status}, {made} requests):\n{out}\n{err}")
        seconds, rss, requests = seconds + elapsed, max(rss, peak), requests + made
    return seconds, rss, requests


def check_claims_gone(cluster, name, ns, what):
    left = cluster.claims(ns)
    if left:
        sys.exit(f"bench: {name} left {len(left)} claim(s) in {what}: {' '.join(left[:5])}")


def claims_row(count):
    return f"{count} claim{'s' if count > 1 else ''}"


def bench(cluster, candidates, rows, runs, warm_up, prefix, logs):
    """Runs every row for every candidate, interleaved run by run, and returns the measurements
    by (row, candidate). rows maps a row's name to (set_up, migrates): set_up(ns, candidate)
    creates the row's objects in namespace ns and returns the variables of each run of the
    candidate; with migrates, every claim must be gone afterwards. Run 0, over the rows in
    warm_up only, is not timed: it warms the kubectl cache and the page cache."""
    results = {}
    sequence = [(0, row) for row in warm_up] + [(i, row) for i in range(1, runs + 1) for row in rows]
    for i, row in sequence:
        set_up, migrates = rows[row]
        for index, (name, (cmd, env)) in enumerate(candidates.items()):
            ns = f"{prefix}{i}-{list(rows).index(row)}-{index}"
            envs = [dict(env, PVC_NAMESPACE=ns, DESIRED_STORAGECLASS=CLASS_NEW, **extra) for extra in set_up(ns, name)]
            log = logs / f"{ns}.log" if logs and name == OURS else None
            measured = measure(cluster, name, cmd, envs, row, log)
            if migrates:
                check_claims_gone(cluster, name, ns, row)
            if i > 0:
                results.setdefault((row, name), []).append(measured)
            teardown(cluster, ns)
        print(f"bench: run {i} {row} done", file=sys.stderr)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--script", required=True, help="the kubectl hook script to compare with")
    parser.add_argument("--runs", type=int, default=9, help="runs per single-claim scenario and candidate")
    parser.add_argument("--many-runs", type=int, default=5, help="runs per claim count and candidate")
    parser.add_argument("--rows", default="single,many", help="which rows: single, many or both (comma-separated)")
    parser.add_argument("--claims", default=",".join(map(str, CLAIM_COUNTS)), help="claim counts of the many-claims rows")
    parser.add_argument("--concurrency", type=int, help="CONCURRENCY for storageclass-migrate [default: its own]")
    parser.add_argument("--binary", default=str(ROOT / "target/release/storageclass-migrate"))
    parser.add_argument("--markdown", help="also write the tables to this file")
    parser.add_argument("--logs", type=Path, help="keep the output of every storageclass-migrate run in this directory")
    args = parser.parse_args()

    rows = set(args.rows.split(","))
    if not rows or not rows <= {"single", "many"}:
        parser.error("--rows takes single, many or single,many")
    counts = sorted({int(n) for n in args.claims.split(",")})
    if args.logs:
        args.logs.mkdir(parents=True, exist_ok=True)
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
        ours_env = dict(base, HOME=str(job_home))
        if args.concurrency:
            ours_env["CONCURRENCY"] = str(args.concurrency)
        candidates = {
            OURS: ([args.binary, "--termination-log", "/dev/null"], ours_env),
            # A read-only root filesystem: kubectl cannot create its discovery cache, so every
            # call discovers the API again.
            SCRIPT_IN_JOB: (["bash", str(script)], dict(base, HOME=str(job_home), KUBECACHEDIR="/dev/null/cache")),
            "script (warm cache)": (["bash", str(script)], dict(base, HOME=str(warm_home))),
        }
        tables = []
        if "single" in rows:
            single = {s: (partial(set_up_single, cluster, s), s == "migrate") for s in SCENARIOS}
            results = bench(cluster, candidates, single, args.runs, SCENARIOS, "b", args.logs)
            tables.append(render(results, list(candidates), list(single), args.runs, "scenario", "interleaved"))
        if "many" in rows:
            # The script as its Job runs it: the warm cache made no difference for one claim.
            scripted = {name: candidates[name] for name in (OURS, SCRIPT_IN_JOB)}
            many = {claims_row(n): (partial(set_up_many, cluster, n), True) for n in counts}
            # Warming up with the smallest set only: setting up many claims takes a while.
            results = bench(cluster, scripted, many, args.many_runs, list(many)[:1], "m", args.logs)
            tables.append(
                render(results, list(scripted), list(many), args.many_runs, "claims",
                       "interleaved; storageclass-migrate runs once by selector, the script once per claim "
                       "(its time and requests summed, its peak RSS the largest)")
                + "\n\n" + goals(results, counts)
            )
        text = "\n\n".join(tables)
        print(text)
        if args.markdown:
            Path(args.markdown).write_text(text + "\n")
    finally:
        subprocess.run([ROOT / "scripts/control-plane.sh", "stop", cp_dir], check=False)
        shutil.rmtree(work, ignore_errors=True)


def render(results, candidates, row_names, runs, row_label, how):
    lines = [
        f"{runs} runs per cell, {how}; wall time in ms; peak RSS of the largest process in MiB; "
        "API requests from the audit log.",
        "",
        f"| {row_label} | candidate | median ms | min ms | max ms | peak RSS MiB | requests "
        "| time ratio script/ours | RSS ratio | request ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in row_names:
        base = results[(row, OURS)]
        base_time = statistics.median(r[0] for r in base)
        base_rss = statistics.median(r[1] for r in base)
        base_req = statistics.median(r[2] for r in base)
        for name in candidates:
            rows = results[(row, name)]
            times = [r[0] * 1000 for r in rows]
            rss = statistics.median(r[1] for r in rows)
            req = statistics.median(r[2] for r in rows)
            ratio = lambda a, b: "" if name == OURS else f"{a / b:.1f}x"
            lines.append(
                f"| {row} | {name} | {statistics.median(times):.0f} | {min(times):.0f} | {max(times):.0f} "
                f"| {rss / 1024:.1f} | {req:g} | {ratio(statistics.median(times) / 1000, base_time)} "
                f"| {ratio(rss, base_rss)} | {ratio(req, base_req)} |"
            )
    return "\n".join(lines)


def goals(results, counts):
    """Whether storageclass-migrate meets the many-claims goals, in words."""
    verdict = lambda ok: "met" if ok else "missed"
    ours = {n: results[(claims_row(n), OURS)] for n in counts}
    peak = max(r[1] for rows in ours.values() for r in rows) / 1024
    lines = [f"- Peak RSS of storageclass-migrate, largest of all runs: {peak:.1f} MiB "
             f"(goal: under {GOAL_RSS_MIB} MiB): {verdict(peak < GOAL_RSS_MIB)}."]
    if 10 in ours and 100 in ours:
        median = lambda n: statistics.median(r[0] for r in ours[n])
        scaling = median(100) / median(10)
        lines.insert(0, f"- Wall time of storageclass-migrate, 100 claims / 10 claims (medians): "
                        f"{median(100) * 1000:.0f} ms / {median(10) * 1000:.0f} ms = {scaling:.2f}x "
                        f"(goal: under {GOAL_SCALING}x): {verdict(scaling < GOAL_SCALING)}.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
