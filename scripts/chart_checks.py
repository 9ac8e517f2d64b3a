#!/usr/bin/env python3
"""Render tests of the storageclass-migrate library chart through examples/app and a fixture chart.

Run by scripts/check-chart.sh, which builds helm and the example's dependencies first:

    python3 scripts/chart_checks.py --helm HELM [--helm4 HELM4] --work DIR

Each check prints one line, "ok" or "FAIL" with what was expected and what was found; the last
line is "N passed, N failed". Exit status 1 if any failed. Needs PyYAML.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import traceback

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY = os.path.join(ROOT, "chart-snippet")
EXAMPLE = os.path.join(ROOT, "examples", "app")
RULES = json.load(open(os.path.join(LIBRARY, "rbac-rules.json")))
HOOK_KINDS = ["ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding", "Job"]
RBAC_KINDS = HOOK_KINDS[:-1]
SECRET_LIKE = re.compile(r"token|password", re.I)
# Seconds between the binary's DEADLINE and the Job's activeDeadlineSeconds.
DEADLINE_MARGIN = 15


class CheckFailed(Exception):
    pass


def expect(condition, message):
    if not condition:
        raise CheckFailed(message)


def expect_eq(found, wanted, what):
    if found != wanted:
        raise CheckFailed(f"{what}: wanted {wanted!r}, found {found!r}")


class Helm:
    def __init__(self, binary, work):
        self.binary = binary
        self.work = work
        os.makedirs(work, exist_ok=True)
        home = os.path.join(work, "helm-home")
        # A fresh helm configuration: no repositories, no plugins, as on a new machine.
        self.env = dict(
            os.environ,
            HELM_CONFIG_HOME=os.path.join(home, "config"),
            HELM_CACHE_HOME=os.path.join(home, "cache"),
            HELM_DATA_HOME=os.path.join(home, "data"),
        )

    def run(self, args):
        return subprocess.run(
            [self.binary] + args, env=self.env, capture_output=True, text=True, timeout=120
        )

    def template(self, chart, args=(), release="rel", namespace="apps"):
        result = self.run(["template", release, chart, "--namespace", namespace] + list(args))
        if result.returncode != 0:
            raise CheckFailed(f"helm template {' '.join(args)} failed: {result.stderr.strip()}")
        docs = [d for d in yaml.safe_load_all(result.stdout) if d]
        return docs

    def template_error(self, chart, args=(), release="rel", namespace="apps"):
        result = self.run(["template", release, chart, "--namespace", namespace] + list(args))
        if result.returncode == 0:
            raise CheckFailed(f"helm template {' '.join(args)} succeeded, wanted an error")
        return result.stderr


# ---------------------------------------------------------------------------------------------
# Helpers on rendered documents.


def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def one(docs, kind):
    found = by_kind(docs, kind)
    expect(len(found) == 1, f"wanted one {kind}, found {len(found)}")
    return found[0]


def hook_docs(docs):
    return [d for d in docs if "helm.sh/hook" in (d["metadata"].get("annotations") or {})]


def container(job):
    containers = job["spec"]["template"]["spec"]["containers"]
    expect(len(containers) == 1, f"wanted one container, found {len(containers)}")
    return containers[0]


def env_of(job):
    return {e["name"]: e.get("value") for e in container(job).get("env", [])}


WHEN = ("always", "inUseEvict", "patchClaims", "writeVolumes", "stripAllFinalizers", "keepData",
        "dataCopy", "dataSnapshot", "deleteSnapshot", "statefulSet")
# The data policies that keep the data, and those that may copy it or snapshot it (auto does
# either, so it needs the rules of both).
KEEP_DATA = ("copy", "snapshot", "auto")
COPIES = ("copy", "auto")
SNAPSHOTS = ("snapshot", "auto")


def rule_on(when, in_use="evict", retained=False, strip=False, data="delete", statefulset=None,
            delete_snapshot=False):
    """Whether a rule of rbac-rules.json applies to a setting; the templates' table, written again."""
    expect(when in WHEN, f"rbac-rules.json: unknown when {when!r}")
    return {"always": True,
            "inUseEvict": in_use == "evict",
            "patchClaims": in_use == "force" or strip,
            "writeVolumes": retained or strip,
            "stripAllFinalizers": strip,
            "keepData": data in KEEP_DATA,
            "dataCopy": data in COPIES,
            "dataSnapshot": data in SNAPSHOTS,
            "deleteSnapshot": data in SNAPSHOTS and delete_snapshot,
            "statefulSet": bool(statefulset)}[when]


def expected_rules(section, in_use="evict", retained=False, strip=False, data="delete", claims=None,
                   selector="", namespace="apps", statefulset=None, delete_snapshot=False):
    """The rules of rbac-rules.json for a setting, computed here independently of the templates."""
    rules = []
    for rule in RULES[section]:
        if not rule_on(rule["when"], in_use, retained, strip, data, statefulset, delete_snapshot):
            continue
        out = {k: rule[k] for k in ("apiGroups", "resources", "verbs")}
        if rule.get("limitToClaimNames") and claims and not selector:
            out["resourceNames"] = list(claims)
        if rule.get("limitToNamespace"):
            out["resourceNames"] = [namespace]
        if rule.get("limitToStatefulSetName"):
            out["resourceNames"] = [statefulset]
        rules.append(out)
    return rules


# What the binary sends, by setting (src/claim.rs, src/volume.rs, src/eviction.rs, src/migrate.rs,
# src/run.rs, src/keep/), as (API group, resource) -> verbs; written from the binary, not from
# rbac-rules.json. Every list also stands for the list that starts each watch (a watch of one
# object by a metadata.name field selector lists it first), hence list with watch.
def needed_verbs(in_use="evict", retained=False, strip=False, data="delete", statefulset=False,
                 delete_snapshot=False):
    need = {
        ("", "persistentvolumeclaims"): {"get", "list", "watch", "delete"},
        ("", "pods"): {"list"},
        ("storage.k8s.io", "storageclasses"): {"get"},
        ("", "namespaces"): {"get"},
        ("", "persistentvolumes"): {"get", "list", "watch"},
    }
    if in_use == "force" or strip:
        need[("", "persistentvolumeclaims")].add("patch")  # finalizers of the claim
    if in_use == "evict":
        need[("", "pods/eviction")] = {"create"}
        need[("policy", "poddisruptionbudgets")] = {"list"}
    if retained or strip:
        need[("", "persistentvolumes")].add("patch")  # mark, reclaim policy, finalizers
    if strip:
        need[("", "persistentvolumes")].add("delete")
    if data in KEEP_DATA:
        # src/keep/: the temporary claims (<claim>-migrate-source, and with a copy -target) are
        # created, read, watched until bound or gone, and deleted; the claim is created again.
        # Volumes are patched: reclaim policy and record of the old and the new volume, claimRefs,
        # annotations.
        need[("", "persistentvolumeclaims")].add("create")
        need[("", "persistentvolumes")].add("patch")
    if data in COPIES:
        # The copy Job is created, read, watched until it finishes, and deleted. The copy pod is
        # created as a server-side dry run (Pod Security admission judges pods, not Jobs).
        need[("batch", "jobs")] = {"create", "get", "list", "watch", "delete"}
        need[("", "pods")].add("create")
    if data in SNAPSHOTS:
        # The VolumeSnapshot of the old volume is created, read and watched until ready to use,
        # then kept (or deleted, with deleteSnapshot, once the claim made again is bound); the
        # VolumeSnapshotClasses are read to find the one named or the driver's default.
        need[("snapshot.storage.k8s.io", "volumesnapshots")] = {"create", "get", "list", "watch"}
        if delete_snapshot:
            need[("snapshot.storage.k8s.io", "volumesnapshots")].add("delete")
        need[("snapshot.storage.k8s.io", "volumesnapshotclasses")] = {"get", "list"}
    if statefulset:
        # src/statefulset/mod.rs: read, deleted (as a dry run, then for real), watched until gone.
        need[("apps", "statefulsets")] = {"get", "list", "watch", "delete"}
    return need


# What src/keep/mod.rs `preflight` asks with SelfSubjectAccessReviews before any change, with
# data: copy (and auto, which may copy), as (verb, API group, resource, name or None), for claim
# CLAIM: each must be allowed by some rule (a rule with resourceNames allows only those names).
def copy_preflight_asks(claim):
    asks = []
    for name in (f"{claim}-migrate-source", f"{claim}-migrate-target", claim):
        asks += [(verb, "", "persistentvolumeclaims", name)
                 for verb in ("get", "list", "watch", "delete")]
        # The dry-run creates of the temporary claims (a create names no object to RBAC).
        if name != claim:
            asks.append(("create", "", "persistentvolumeclaims", None))
    asks += [(verb, "batch", "jobs", f"{claim}-migrate-copy")
             for verb in ("get", "list", "watch", "delete")]
    asks += [("create", "batch", "jobs", None), ("create", "", "pods", None),
             ("list", "", "pods", None)]
    asks += [(verb, "", "persistentvolumes", None) for verb in ("get", "patch", "list", "watch")]
    return asks


def allowed(docs, verb, group, resource, name):
    """Whether the Role or ClusterRole has a rule allowing the request, as RBAC decides it."""
    for kind in ("Role", "ClusterRole"):
        for rule in one(docs, kind)["rules"]:
            if group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]:
                names = rule.get("resourceNames")
                if not names or (name is not None and name in names):
                    return True
    return False


def check_needs(granted, need, what):
    """The granted verbs are exactly what the binary needs: none missing, none more."""
    for key in sorted(set(granted) | set(need)):
        missing = sorted(need.get(key, set()) - granted.get(key, set()))
        extra = sorted(granted.get(key, set()) - need.get(key, set()))
        expect(not missing, f"{what}: {key[0] or 'core'}/{key[1]} lacks {missing}, which the binary sends")
        expect(not extra, f"{what}: {key[0] or 'core'}/{key[1]} grants {extra}, which the binary never sends")


def granted_verbs(docs):
    granted = {}
    for kind in ("Role", "ClusterRole"):
        for rule in one(docs, kind)["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted


def check_rules(docs, **setting):
    expect_eq(one(docs, "Role")["rules"], expected_rules("role", **setting), "Role rules")
    expect_eq(one(docs, "ClusterRole")["rules"], expected_rules("clusterRole", **setting),
              "ClusterRole rules")


def check_hook_structure(docs, release="rel", namespace="apps"):
    """Everything every rendering of one hook must satisfy."""
    hooks = hook_docs(docs)
    expect_eq(sorted(d["kind"] for d in hooks), sorted(HOOK_KINDS), "hook kinds")
    job = one(hooks, "Job")
    job_weight = int(job["metadata"]["annotations"]["helm.sh/hook-weight"])
    for d in hooks:
        a = d["metadata"]["annotations"]
        what = f"{d['kind']} {d['metadata']['name']}"
        expect_eq(a["helm.sh/hook"], "pre-install,pre-upgrade", f"{what} helm.sh/hook")
        expect_eq(a["helm.sh/hook-delete-policy"], "before-hook-creation,hook-succeeded",
                  f"{what} delete policy (a failed Job must stay; no hook-failed)")
        expect(isinstance(a["helm.sh/hook-weight"], str), f"{what}: hook weight must be a string")
        if d["kind"] != "Job":
            expect(int(a["helm.sh/hook-weight"]) < job_weight,
                   f"{what}: weight {a['helm.sh/hook-weight']} not below the Job's {job_weight}")
        if d["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            expect("namespace" not in d["metadata"], f"{what} is cluster-scoped")
            expect(namespace in d["metadata"]["name"] and release in d["metadata"]["name"],
                   f"{what}: cluster-scoped name must carry namespace {namespace} and release {release}")
        else:
            expect_eq(d["metadata"].get("namespace"), namespace, f"{what} namespace")
        expect(len(d["metadata"]["name"]) <= (253 if d["kind"] != "Job" else 63),
               f"{what}: name too long")
        for k, v in (d["metadata"].get("labels") or {}).items():
            expect(isinstance(v, str) and len(v) <= 63, f"{what}: label {k}={v!r} invalid")

    sa = one(hooks, "ServiceAccount")
    role, rb = one(hooks, "Role"), one(hooks, "RoleBinding")
    cr, crb = one(hooks, "ClusterRole"), one(hooks, "ClusterRoleBinding")
    subject = {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": namespace}
    expect_eq(rb["roleRef"], {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                              "name": role["metadata"]["name"]}, "RoleBinding roleRef")
    expect_eq(rb["subjects"], [subject], "RoleBinding subjects")
    expect_eq(crb["roleRef"], {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                               "name": cr["metadata"]["name"]}, "ClusterRoleBinding roleRef")
    expect_eq(crb["subjects"], [subject], "ClusterRoleBinding subjects")
    expect_eq(sa.get("automountServiceAccountToken"), False, "ServiceAccount automount")
    check_job(job, sa["metadata"]["name"])
    return job


def check_job(job, service_account):
    spec = job["spec"]
    # 4 (API error), 5 (timed out) and 6 (part-way) are finished by a rerun: retried twice.
    expect_eq(spec["backoffLimit"], 2, "Job backoffLimit")
    deadline = spec["activeDeadlineSeconds"]
    expect(isinstance(deadline, int) and 0 < deadline < 300,
           f"activeDeadlineSeconds {deadline} must be below helm's default --timeout 300s")
    expect(isinstance(spec.get("ttlSecondsAfterFinished"), int), "ttlSecondsAfterFinished set")
    # 1 (internal error), 2 (bad input), 3 (refused for safety) fail at once; 4, 5 and 6 are
    # counted against backoffLimit (no rule); a disrupted pod is run again without counting.
    expect_eq(spec["podFailurePolicy"], {"rules": [
        {"action": "FailJob", "onExitCodes": {"containerName": "migrate", "operator": "In",
                                               "values": [1, 2, 3]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
    ]}, "podFailurePolicy")
    pod = spec["template"]["spec"]
    expect_eq(pod["restartPolicy"], "Never", "restartPolicy")
    expect_eq(pod["serviceAccountName"], service_account, "serviceAccountName")
    expect_eq(pod["automountServiceAccountToken"], True, "pod automountServiceAccountToken")
    expect_eq(pod["securityContext"], {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                                       "seccompProfile": {"type": "RuntimeDefault"}},
              "pod securityContext")
    c = container(job)
    expect_eq(c["name"], "migrate", "container name (podFailurePolicy refers to it)")
    expect_eq(c["terminationMessagePolicy"], "FallbackToLogsOnError", "terminationMessagePolicy")
    expect_eq(c["securityContext"], {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
        "runAsUser": 65532, "runAsGroup": 65532, "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"}}, "container securityContext")
    r = c["resources"]
    expect("memory" in r["limits"] and "memory" in r["requests"] and "cpu" in r["requests"],
           f"resources need requests and a memory limit: {r}")
    e = env_of(job)
    for name in ("PVC_NAMESPACE", "RELEASE_NAME", "DESIRED_STORAGECLASS", "IN_USE_POLICY",
                 "DELETE_RETAINED_PV", "STRIP_ALL_FINALIZERS", "DATA_POLICY", "DRY_RUN",
                 "WAIT_TIMEOUT", "DEADLINE", "LOG_FORMAT"):
        expect(name in e, f"env {name} missing: {sorted(e)}")
        expect(isinstance(e[name], str), f"env {name} must be a string, is {e[name]!r}")
    expect("PVC_NAME" in e or "PVC_SELECTOR" in e or "STATEFULSET_NAME" in e,
           "env PVC_NAME, PVC_SELECTOR or STATEFULSET_NAME missing")
    # The run's own deadline ends before the Job's, so that the binary reports first.
    expect_eq(e["DEADLINE"], f"{deadline - DEADLINE_MARGIN}s",
              "DEADLINE (activeDeadlineSeconds minus the margin)")
    expect_eq(e["RELEASE_NAME"], job["metadata"]["labels"]["app.kubernetes.io/instance"],
              "RELEASE_NAME (the release's name)")
    for name in e:
        expect(not SECRET_LIKE.search(name), f"env {name} looks like a secret")


# ---------------------------------------------------------------------------------------------
# The checks.

CHECKS = []


def check(function):
    CHECKS.append(function)
    return function


@check
def versions_agree(h):
    cargo = re.search(r'^version = "([^"]+)"', open(os.path.join(ROOT, "Cargo.toml")).read(), re.M)
    library = yaml.safe_load(open(os.path.join(LIBRARY, "Chart.yaml")))
    values = yaml.safe_load(open(os.path.join(LIBRARY, "values.yaml")))
    example = yaml.safe_load(open(os.path.join(EXAMPLE, "Chart.yaml")))
    expect_eq(library["type"], "library", "library chart type")
    expect_eq(library["appVersion"], cargo.group(1), "chart-snippet appVersion vs Cargo.toml version")
    expect_eq(values["image"]["tag"], cargo.group(1), "chart-snippet image.tag vs Cargo.toml version")
    dep = [d for d in example["dependencies"] if d["name"] == library["name"]]
    expect_eq(len(dep), 1, "examples/app dependency on the library")
    expect_eq(dep[0]["version"], library["version"], "examples/app dependency version")
    expect_eq(dep[0]["repository"], "file://../../chart-snippet", "examples/app dependency path")
    expect_eq(dep[0].get("alias"), "storageclassMigrate", "examples/app dependency alias")


@check
def defaults(h):
    docs = h.template(EXAMPLE)
    expect_eq(len(docs), 7, "documents (PVC and six hook objects)")
    pvc = one(docs, "PersistentVolumeClaim")
    expect("helm.sh/hook" not in (pvc["metadata"].get("annotations") or {}), "the PVC is no hook")
    expect_eq(pvc["metadata"]["name"], "rel-data", "claim name")
    expect("storageClassName" not in pvc["spec"], "no class: the cluster default")
    job = check_hook_structure(docs)
    expect_eq(env_of(job), {
        "PVC_NAME": "rel-data", "RELEASE_NAME": "rel", "PVC_NAMESPACE": "apps",
        "DESIRED_STORAGECLASS": "", "IN_USE_POLICY": "evict", "DELETE_RETAINED_PV": "false",
        "STRIP_ALL_FINALIZERS": "false", "DATA_POLICY": "delete", "DRY_RUN": "false",
        "WAIT_TIMEOUT": "60s", "DEADLINE": "225s", "LOG_FORMAT": "json"}, "env")
    expect_eq(job["spec"]["backoffLimit"], 2, "default backoffLimit")
    expect_eq(job["spec"]["activeDeadlineSeconds"], 240, "default activeDeadlineSeconds")
    weights = {d["kind"]: d["metadata"]["annotations"]["helm.sh/hook-weight"] for d in hook_docs(docs)}
    expect_eq(weights, {"ServiceAccount": "-10", "Role": "-10", "RoleBinding": "-10",
                        "ClusterRole": "-10", "ClusterRoleBinding": "-10", "Job": "-5"}, "weights")
    expect_eq(job["metadata"]["annotations"].get("helm.sh/hook-output-log-policy"), None,
              "no hook-output-log-policy by default (it stops Flux's helm-controller v1.4.3)")
    expect_eq(job["metadata"]["name"], "rel-data-storageclass-migrate", "Job name")
    expect_eq(one(docs, "ClusterRole")["metadata"]["name"], "storageclass-migrate:apps:rel:rel-data",
              "ClusterRole name")
    expect_eq(container(job)["image"], "storageclass-migrate:0.1.0", "image")
    expect_eq(container(job)["imagePullPolicy"], "IfNotPresent", "pullPolicy")
    check_rules(docs, claims=["rel-data"])
    # No claim patch (finalizers) by default: only inUse=force and stripAllFinalizers strip them.
    for rule in one(docs, "Role")["rules"]:
        if "persistentvolumeclaims" in rule["resources"]:
            expect("patch" not in rule["verbs"], f"default Role may patch claims: {rule}")
    # No claims, Jobs, pods or snapshots created by default: only the policies that keep the data
    # make them.
    granted = granted_verbs(docs)
    for key in (("", "persistentvolumeclaims"), ("batch", "jobs"), ("", "pods"),
                ("snapshot.storage.k8s.io", "volumesnapshots")):
        expect("create" not in granted.get(key, set()), f"default grants create {key}")
    # Nothing may grant writes on volumes, or anything on secrets, by default.
    for rule in one(docs, "ClusterRole")["rules"]:
        if "persistentvolumes" in rule["resources"]:
            expect(not set(rule["verbs"]) & {"delete", "patch", "update", "create", "*"},
                   f"default ClusterRole may write volumes: {rule}")
    for d in by_kind(docs, "Role") + by_kind(docs, "ClusterRole"):
        for rule in d["rules"]:
            expect("*" not in rule["verbs"] and "*" not in rule["resources"], f"wildcard: {rule}")
            expect("secrets" not in rule["resources"], f"secrets: {rule}")


@check
def in_use_policies(h):
    for policy in ("evict", "force", "fail"):
        docs = h.template(EXAMPLE, ["--set", f"storageclassMigrate.inUse={policy}"])
        check_hook_structure(docs)
        check_rules(docs, in_use=policy, claims=["rel-data"])
        expect_eq(env_of(one(docs, "Job"))["IN_USE_POLICY"], policy, "IN_USE_POLICY")
        role = one(docs, "Role")["rules"]
        evict = any("pods/eviction" in r["resources"] for r in role)
        expect_eq(evict, policy == "evict", f"pods/eviction granted with inUse={policy}")
        budgets = any("poddisruptionbudgets" in r["resources"] for r in role)
        expect_eq(budgets, policy == "evict", f"poddisruptionbudgets granted with inUse={policy}")
        patch = any("persistentvolumeclaims" in r["resources"] and "patch" in r["verbs"]
                    for r in role)
        expect_eq(patch, policy == "force", f"claim patch granted with inUse={policy}")


@check
def volume_writes_only_with_the_two_flags(h):
    for retained, strip in ((False, False), (True, False), (False, True), (True, True)):
        docs = h.template(EXAMPLE, [
            "--set", f"storageclassMigrate.deleteRetainedPV={str(retained).lower()}",
            "--set", f"storageclassMigrate.stripAllFinalizers={str(strip).lower()}"])
        check_hook_structure(docs)
        check_rules(docs, retained=retained, strip=strip, claims=["rel-data"])
        e = env_of(one(docs, "Job"))
        expect_eq((e["DELETE_RETAINED_PV"], e["STRIP_ALL_FINALIZERS"]),
                  (str(retained).lower(), str(strip).lower()), "flags in env")
        verbs = set()
        for rule in one(docs, "ClusterRole")["rules"]:
            if "persistentvolumes" in rule["resources"]:
                verbs |= set(rule["verbs"])
        expect_eq("patch" in verbs, retained or strip,
                  f"PV patch with deleteRetainedPV={retained} stripAllFinalizers={strip}")
        expect_eq("delete" in verbs, strip,
                  f"PV delete with deleteRetainedPV={retained} stripAllFinalizers={strip} "
                  "(deleteRetainedPV lets the provisioner delete)")


COPY_ENV = ("COPY_IMAGE", "COPY_IMAGE_PULL_SECRETS", "COPY_AS_USER", "COPY_VERIFY")
SNAPSHOT_ENV = ("SNAPSHOT_CLASS", "DELETE_SNAPSHOT")
# Every variable of the data-keeping policies: the binary rejects each of them with data: delete.
KEEP_ENV = COPY_ENV + SNAPSHOT_ENV + ("DELETE_OLD_VOLUME",)


@check
def data_copy_renders_its_env_and_rules(h):
    # The defaults: data: delete, and none of the copy's variables (the binary rejects them).
    e = env_of(one(h.template(EXAMPLE), "Job"))
    expect_eq(e["DATA_POLICY"], "delete", "default DATA_POLICY")
    expect_eq(sorted(set(KEEP_ENV) & set(e)), [], "data-keeping variables with data: delete")
    # Even when the copy and snapshot blocks and deleteOldVolume are set: they apply only to
    # the policies that keep the data.
    e = env_of(one(h.template(EXAMPLE, ["--set", "storageclassMigrate.copy.asUser=1000",
                                        "--set", "storageclassMigrate.snapshot.class=csi",
                                        "--set", "storageclassMigrate.snapshot.deleteSnapshot=true",
                                        "--set", "storageclassMigrate.deleteOldVolume=true"]),
                   "Job"))
    expect_eq(sorted(set(KEEP_ENV) & set(e)), [],
              "data-keeping variables with data: delete and their settings set")

    docs = h.template(EXAMPLE, ["--set", "storageclassMigrate.data=copy"])
    job = check_hook_structure(docs)
    e = env_of(job)
    expect_eq(e["DATA_POLICY"], "copy", "DATA_POLICY")
    expect_eq(e["COPY_IMAGE"], container(job)["image"], "COPY_IMAGE: the hook's own image")
    expect_eq((e["COPY_VERIFY"], e["DELETE_OLD_VOLUME"]), ("true", "false"), "copy defaults")
    expect("COPY_AS_USER" not in e, "no COPY_AS_USER by default (root with four capabilities)")
    expect("COPY_IMAGE_PULL_SECRETS" not in e, "no COPY_IMAGE_PULL_SECRETS without pull secrets")
    expect_eq(sorted(set(SNAPSHOT_ENV) & set(e)), [], "snapshot variables with data: copy")
    check_rules(docs, data="copy", claims=["rel-data"])
    check_needs(granted_verbs(docs), needed_verbs(data="copy"), "data: copy")
    for verb, group, resource, name in copy_preflight_asks("rel-data"):
        expect(allowed(docs, verb, group, resource, name),
               f"data: copy: {verb} {group or 'core'}/{resource} {name or ''} not allowed; "
               "the pre-flight asks for it")
    # The hook's own pod stays as restricted as ever: the copy pod is the binary's.
    expect_eq(container(job)["securityContext"]["capabilities"], {"drop": ["ALL"]},
              "hook container capabilities")

    digest = "sha256:" + "b" * 64
    docs = h.template(EXAMPLE, [
        "--set", "storageclassMigrate.data=copy",
        "--set", "storageclassMigrate.image.repository=registry.example.com/tools/scm",
        "--set", f"storageclassMigrate.image.digest={digest}",
        "--set", "storageclassMigrate.copy.asUser=1000",
        "--set", "storageclassMigrate.copy.verify=false",
        "--set", "storageclassMigrate.deleteOldVolume=true",
        "--set", "storageclassMigrate.snapshot.class=csi",
        "--set", "storageclassMigrate.snapshot.deleteSnapshot=true",
        "--set", "storageclassMigrate.imagePullSecrets[0]=regcred",
        "--set", "storageclassMigrate.imagePullSecrets[1].name=mirror"])
    job = one(docs, "Job")
    e = env_of(job)
    expect_eq(e["COPY_IMAGE_PULL_SECRETS"], "regcred,mirror",
              "COPY_IMAGE_PULL_SECRETS: the hook's own pull secrets")
    expect_eq(e["COPY_IMAGE"], f"registry.example.com/tools/scm:0.1.0@{digest}", "COPY_IMAGE")
    expect_eq(e["COPY_IMAGE"], container(job)["image"], "COPY_IMAGE: the hook's own image")
    expect_eq((e["COPY_AS_USER"], e["COPY_VERIFY"], e["DELETE_OLD_VOLUME"]),
              ("1000", "false", "true"), "copy settings in env")
    expect_eq(sorted(set(SNAPSHOT_ENV) & set(e)), [],
              "snapshot variables with data: copy and the snapshot block set")
    check_rules(docs, data="copy", claims=["rel-data"], delete_snapshot=True)
    for name in COPY_ENV + ("DELETE_OLD_VOLUME",):
        expect(isinstance(e[name], str), f"env {name} must be a string, is {e[name]!r}")

    # A selector: the claim rules carry no names at all.
    docs = render_calls(h, [{"selector": "app=db", "storageClass": "fast",
                             "settings": {"data": "copy", "inUse": "fail"}}])
    check_rules(docs, in_use="fail", data="copy", selector="app=db")


@check
def data_snapshot_renders_its_env_and_rules(h):
    docs = h.template(EXAMPLE, ["--set", "storageclassMigrate.data=snapshot"])
    job = check_hook_structure(docs)
    e = env_of(job)
    expect_eq(e["DATA_POLICY"], "snapshot", "DATA_POLICY")
    expect_eq((e["DELETE_SNAPSHOT"], e["DELETE_OLD_VOLUME"]), ("false", "false"),
              "snapshot defaults: the snapshot and the old volume are kept")
    expect("SNAPSHOT_CLASS" not in e, "no SNAPSHOT_CLASS by default (the driver's default class)")
    expect_eq(sorted(set(COPY_ENV) & set(e)), [], "copy variables with data: snapshot")
    check_rules(docs, data="snapshot", claims=["rel-data"])
    check_needs(granted_verbs(docs), needed_verbs(data="snapshot"), "data: snapshot")
    # No Job and no copy pod; the snapshot is kept, so not deleted.
    granted = granted_verbs(docs)
    for key, verb in ((("batch", "jobs"), "create"), (("", "pods"), "create"),
                      (("snapshot.storage.k8s.io", "volumesnapshots"), "delete"),
                      (("", "persistentvolumes"), "delete")):
        expect(verb not in granted.get(key, set()), f"data: snapshot: {verb} {key} granted")

    docs = h.template(EXAMPLE, [
        "--set", "storageclassMigrate.data=snapshot",
        "--set", "storageclassMigrate.snapshot.class=csi-hostpath.snapclass",
        "--set", "storageclassMigrate.snapshot.deleteSnapshot=true",
        "--set", "storageclassMigrate.deleteOldVolume=true",
        "--set", "storageclassMigrate.copy.asUser=1000",
        "--set", "storageclassMigrate.copy.verify=false"])
    job = check_hook_structure(docs)
    e = env_of(job)
    expect_eq((e["SNAPSHOT_CLASS"], e["DELETE_SNAPSHOT"], e["DELETE_OLD_VOLUME"]),
              ("csi-hostpath.snapclass", "true", "true"), "snapshot settings in env")
    expect_eq(sorted(set(COPY_ENV) & set(e)), [],
              "copy variables with data: snapshot and the copy block set")
    for name in SNAPSHOT_ENV + ("DELETE_OLD_VOLUME",):
        expect(isinstance(e[name], str), f"env {name} must be a string, is {e[name]!r}")
    check_rules(docs, data="snapshot", claims=["rel-data"], delete_snapshot=True)
    check_needs(granted_verbs(docs), needed_verbs(data="snapshot", delete_snapshot=True),
                "data: snapshot, snapshot.deleteSnapshot")

    # Through a call's settings, with a selector.
    settings = {"data": "snapshot", "inUse": "fail",
                "snapshot": {"class": "snap", "deleteSnapshot": True}}
    docs = render_calls(h, [{"selector": "app=db", "storageClass": "fast", "settings": settings}])
    e = env_of(one(docs, "Job"))
    expect_eq((e["SNAPSHOT_CLASS"], e["DELETE_SNAPSHOT"]), ("snap", "true"), "settings in env")
    check_rules(docs, in_use="fail", data="snapshot", selector="app=db", delete_snapshot=True)


@check
def data_auto_renders_the_env_and_rules_of_both(h):
    docs = h.template(EXAMPLE, ["--set", "storageclassMigrate.data=auto"])
    job = check_hook_structure(docs)
    e = env_of(job)
    expect_eq(e["DATA_POLICY"], "auto", "DATA_POLICY")
    expect_eq(e["COPY_IMAGE"], container(job)["image"], "COPY_IMAGE: the hook's own image")
    expect_eq((e["COPY_VERIFY"], e["DELETE_SNAPSHOT"], e["DELETE_OLD_VOLUME"]),
              ("true", "false", "false"), "auto defaults")
    expect("SNAPSHOT_CLASS" not in e and "COPY_AS_USER" not in e,
           "no SNAPSHOT_CLASS or COPY_AS_USER by default")
    check_rules(docs, data="auto", claims=["rel-data"])
    check_needs(granted_verbs(docs), needed_verbs(data="auto"), "data: auto")
    # auto may copy: the copy's pre-flight must pass.
    for verb, group, resource, name in copy_preflight_asks("rel-data"):
        expect(allowed(docs, verb, group, resource, name),
               f"data: auto: {verb} {group or 'core'}/{resource} {name or ''} not allowed; "
               "the copy's pre-flight asks for it")

    docs = h.template(EXAMPLE, [
        "--set", "storageclassMigrate.data=auto",
        "--set", "storageclassMigrate.snapshot.class=snap",
        "--set", "storageclassMigrate.snapshot.deleteSnapshot=true",
        "--set", "storageclassMigrate.copy.asUser=1000",
        "--set", "storageclassMigrate.deleteOldVolume=true",
        "--set", "storageclassMigrate.imagePullSecrets[0]=regcred"])
    e = env_of(one(docs, "Job"))
    expect_eq({k: e.get(k) for k in KEEP_ENV}, {
        "COPY_IMAGE": "storageclass-migrate:0.1.0", "COPY_IMAGE_PULL_SECRETS": "regcred",
        "COPY_AS_USER": "1000", "COPY_VERIFY": "true", "SNAPSHOT_CLASS": "snap",
        "DELETE_SNAPSHOT": "true", "DELETE_OLD_VOLUME": "true"}, "auto settings in env")
    check_rules(docs, data="auto", claims=["rel-data"], delete_snapshot=True)
    check_needs(granted_verbs(docs), needed_verbs(data="auto", delete_snapshot=True),
                "data: auto, snapshot.deleteSnapshot")


@check
def keeping_the_data_refuses_to_drop_the_old_volume(h):
    message = ("data: copy, snapshot and auto keep the old volume until the claim is bound to a "
               "new volume holding its data, so data: {0} cannot be combined with {1}, which would "
               "delete that volume; set {2} false (deleteOldVolume lets the old volume go")
    for data in KEEP_DATA:
        for flags, conflict, unset in (
                (["stripAllFinalizers"], "stripAllFinalizers", "stripAllFinalizers"),
                (["deleteRetainedPV"], "deleteRetainedPV", "deleteRetainedPV"),
                (["stripAllFinalizers", "deleteRetainedPV"],
                 "stripAllFinalizers or deleteRetainedPV", "stripAllFinalizers and deleteRetainedPV")):
            args = ["--set", f"storageclassMigrate.data={data}"]
            for flag in flags:
                args += ["--set", f"storageclassMigrate.{flag}=true"]
            err = h.template_error(EXAMPLE, args)
            text = message.format(data, conflict, unset)
            expect(text in err, f"{' '.join(args)}: wanted {text!r}, got {err.strip()!r}")
            expect(len(err) < 1000, f"error too long to read: {err!r}")
        # The same through a call's settings, which bypass the schema.
        err = render_calls_error(h, [{"claim": "data", "settings": {"data": data,
                                                                    "stripAllFinalizers": True}}])
        text = message.format(data, "stripAllFinalizers", "stripAllFinalizers")
        expect(text in err, f"data: {data} via settings: {err}")


@check
def copy_delete_old_volume_has_moved(h):
    text = ("copy.deleteOldVolume has moved to deleteOldVolume, which applies to data: copy, "
            "snapshot and auto alike; set deleteOldVolume: {0} instead and remove "
            "copy.deleteOldVolume")
    for data in ("delete",) + KEEP_DATA:
        for value in ("true", "false"):
            args = ["--set", f"storageclassMigrate.data={data}",
                    "--set", f"storageclassMigrate.copy.deleteOldVolume={value}"]
            err = h.template_error(EXAMPLE, args)
            expect(text.format(value) in err, f"{' '.join(args)}: wanted {text.format(value)!r}, "
                                              f"got {err.strip()!r}")
            expect(len(err) < 1000, f"error too long to read: {err!r}")
    err = render_calls_error(h, [{"claim": "data", "settings": {
        "data": "copy", "copy": {"deleteOldVolume": True}}}])
    expect(text.format("true") in err, f"via settings: {err}")
    # The new place works for every policy that keeps the data.
    for data in KEEP_DATA:
        e = env_of(one(h.template(EXAMPLE, ["--set", f"storageclassMigrate.data={data}",
                                            "--set", "storageclassMigrate.deleteOldVolume=true"]),
                       "Job"))
        expect_eq(e.get("DELETE_OLD_VOLUME"), "true", f"DELETE_OLD_VOLUME with data: {data}")


@check
def toggle_off_renders_no_hook(h):
    docs = h.template(EXAMPLE, ["--set", "storageclassMigrate.allowMigration=false"])
    expect_eq([d["kind"] for d in docs], ["PersistentVolumeClaim"], "kinds with allowMigration=false")
    expect_eq(hook_docs(docs), [], "hook objects with allowMigration=false")


@check
def storage_class_values(h):
    for value, pvc_class, desired in (("fast", "fast", "fast"), ("-", "", "-"), ("", None, "")):
        docs = h.template(EXAMPLE, ["--set-string", f"persistence.storageClass={value}"])
        pvc = one(docs, "PersistentVolumeClaim")
        expect_eq(pvc["spec"].get("storageClassName"), pvc_class, f"PVC class for {value!r}")
        expect_eq(env_of(one(docs, "Job"))["DESIRED_STORAGECLASS"], desired,
                  f"DESIRED_STORAGECLASS for {value!r}")


@check
def claim_name_and_namespace(h):
    docs = h.template(EXAMPLE, ["--set", "persistence.claimName=db-storage"], release="shop",
                      namespace="prod")
    check_hook_structure(docs, release="shop", namespace="prod")
    expect_eq(one(docs, "PersistentVolumeClaim")["metadata"]["name"], "db-storage", "claim name")
    e = env_of(one(docs, "Job"))
    expect_eq((e["PVC_NAME"], e["PVC_NAMESPACE"]), ("db-storage", "prod"), "PVC_NAME, PVC_NAMESPACE")
    check_rules(docs, claims=["db-storage"], namespace="prod")
    expect_eq(one(docs, "Job")["metadata"]["name"], "shop-db-storage-storageclass-migrate", "Job name")


@check
def releases_never_collide(h):
    names = {}
    for release, namespace in (("a", "x-b"), ("a-x", "b"), ("a", "b"), ("a", "c")):
        docs = h.template(EXAMPLE, ["--set", "persistence.claimName=data"], release=release,
                          namespace=namespace)
        for kind in ("ClusterRole", "ClusterRoleBinding"):
            name = one(docs, kind)["metadata"]["name"]
            expect((kind, name) not in names, f"{kind} {name} of {namespace}/{release} collides "
                                              f"with {names.get((kind, name))}")
            names[(kind, name)] = f"{namespace}/{release}"


@check
def image_settings(h):
    digest = "sha256:" + "a" * 64
    docs = h.template(EXAMPLE, [
        "--set", "storageclassMigrate.image.repository=registry.example.com/tools/scm",
        "--set", "storageclassMigrate.image.tag=1.2.3",
        "--set", f"storageclassMigrate.image.digest={digest}",
        "--set", "storageclassMigrate.image.pullPolicy=Always",
        "--set", "storageclassMigrate.imagePullSecrets[0].name=regcred",
        "--set", "storageclassMigrate.imagePullSecrets[1]=other"])
    job = one(docs, "Job")
    expect_eq(container(job)["image"], f"registry.example.com/tools/scm:1.2.3@{digest}", "image")
    expect_eq(container(job)["imagePullPolicy"], "Always", "pullPolicy")
    expect_eq(job["spec"]["template"]["spec"]["imagePullSecrets"],
              [{"name": "regcred"}, {"name": "other"}], "imagePullSecrets")


@check
def scheduling_and_pod_metadata(h):
    values = {"storageclassMigrate": {
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "zone", "operator": "In", "values": ["a"]}]}]}}},
        "podLabels": {"team": "storage"},
        "podAnnotations": {"sidecar.istio.io/inject": "false"},
        "priorityClassName": "system-cluster-critical",
        "resources": {"requests": {"cpu": "50m", "memory": "20Mi"}, "limits": {"memory": "40Mi"}},
        "extraEnv": [{"name": "RUST_LOG", "value": "debug"}],
        "dryRun": True, "timeout": "90s", "activeDeadlineSeconds": 200, "logFormat": "text",
        "ttlSecondsAfterFinished": 600, "hookWeight": 3, "showLogsOnFailure": False}}
    docs = h.template(EXAMPLE, ["--values", write_values(h, "scheduling", values)])
    job = one(docs, "Job")
    pod = job["spec"]["template"]
    s = values["storageclassMigrate"]
    expect_eq(pod["spec"]["nodeSelector"], s["nodeSelector"], "nodeSelector")
    expect_eq(pod["spec"]["tolerations"], s["tolerations"], "tolerations")
    expect_eq(pod["spec"]["affinity"], s["affinity"], "affinity")
    expect_eq(pod["spec"]["priorityClassName"], "system-cluster-critical", "priorityClassName")
    expect_eq(pod["metadata"]["labels"]["team"], "storage", "pod label")
    expect_eq(pod["metadata"]["annotations"], s["podAnnotations"], "pod annotations")
    expect_eq(container(job)["resources"], s["resources"], "resources")
    e = env_of(job)
    expect_eq((e["DRY_RUN"], e["WAIT_TIMEOUT"], e["LOG_FORMAT"], e["RUST_LOG"]),
              ("true", "90s", "text", "debug"), "env from settings")
    expect_eq(job["spec"]["activeDeadlineSeconds"], 200, "activeDeadlineSeconds")
    expect_eq(e["DEADLINE"], "185s", "DEADLINE: activeDeadlineSeconds minus 15s")
    expect_eq(job["spec"]["ttlSecondsAfterFinished"], 600, "ttlSecondsAfterFinished")
    expect_eq(job["metadata"]["annotations"]["helm.sh/hook-weight"], "3", "Job weight")
    expect_eq(one(docs, "Role")["metadata"]["annotations"]["helm.sh/hook-weight"], "-2", "RBAC weight")
    expect("helm.sh/hook-output-log-policy" not in job["metadata"]["annotations"],
           "no output-log policy with showLogsOnFailure=false")
    docs = h.template(EXAMPLE, ["--set", "storageclassMigrate.timeout=100"])
    expect_eq(env_of(one(docs, "Job"))["WAIT_TIMEOUT"], "100s", "a number timeout is seconds")


@check
def deadline_fits_the_waits(h):
    """DEADLINE is activeDeadlineSeconds minus 15s, and must exceed twice the timeout."""
    for deadline, timeout, rendered in ((240, "112s", "225s"), (136, "60s", "121s"),
                                        (136, 60, "121s"), (16, "1ms", "1s"),
                                        (290, "2m10s", "275s")):
        docs = h.template(EXAMPLE, [
            "--set", f"storageclassMigrate.activeDeadlineSeconds={deadline}",
            "--set", f"storageclassMigrate.timeout={timeout}"])
        job = check_hook_structure(docs)
        expect_eq(env_of(job)["DEADLINE"], rendered,
                  f"DEADLINE for activeDeadlineSeconds={deadline} timeout={timeout}")
        expect_eq(job["spec"]["activeDeadlineSeconds"], deadline, "activeDeadlineSeconds")
    err = h.template_error(EXAMPLE, ["--set", "storageclassMigrate.activeDeadlineSeconds=275",
                                     "--set", "storageclassMigrate.timeout=2m10s"])
    expect("activeDeadlineSeconds (275) minus 15s" in err and "above 275" in err,
           f"message for a deadline of 260s and waits of 2 x 2m10s: {err!r}")


@check
def openshift_style_uid(h):
    docs = h.template(EXAMPLE, ["--set", "storageclassMigrate.runAsUser=null",
                                "--set", "storageclassMigrate.runAsGroup=null"])
    job = one(docs, "Job")
    for where, sc in (("pod", job["spec"]["template"]["spec"]["securityContext"]),
                      ("container", container(job)["securityContext"])):
        expect("runAsUser" not in sc and "runAsGroup" not in sc, f"{where}: uid left to the platform")
        expect_eq(sc["runAsNonRoot"], True, f"{where}: runAsNonRoot stays")


@check
def existing_service_account(h):
    docs = h.template(EXAMPLE, ["--set", "storageclassMigrate.rbac.create=false",
                                "--set", "storageclassMigrate.serviceAccountName=migrator"])
    expect_eq(sorted(d["kind"] for d in hook_docs(docs)), ["Job"], "only the Job without rbac.create")
    expect_eq(one(docs, "Job")["spec"]["template"]["spec"]["serviceAccountName"], "migrator", "SA")
    err = h.template_error(EXAMPLE, ["--set", "storageclassMigrate.rbac.create=false"])
    expect("set serviceAccountName" in err, f"message for a missing serviceAccountName: {err}")


@check
def old_kubernetes_has_no_pod_failure_policy(h):
    docs = h.template(EXAMPLE, ["--kube-version", "1.25.0"])
    expect("podFailurePolicy" not in one(docs, "Job")["spec"], "no podFailurePolicy before 1.26")
    docs = h.template(EXAMPLE, ["--kube-version", "1.26.0"])
    expect("podFailurePolicy" in one(docs, "Job")["spec"], "podFailurePolicy from 1.26")


# Values the schema, or failing that the templates, must reject: (helm args, text of the error).
REJECTED = [
    (["--set", "storageclassMigrate.inUse=bogus"],
     "at '/inUse': value must be one of 'evict', 'force', 'fail'"),
    (["--set", "storageclassMigrate.timeout=-5s"], "at '/timeout': '-5s' does not match pattern"),
    (["--set", "storageclassMigrate.timeout=-5"], "at '/timeout': minimum: got -5, want 1"),
    (["--set", "storageclassMigrate.timeout=0s"], "timeout must be positive"),
    (["--set", "storageclassMigrate.timeout=1 minute"], "at '/timeout'"),
    (["--set", "storageclassMigrate.inuse=fail"], "additional properties 'inuse' not allowed"),
    (["--set-string", "storageclassMigrate.dryRun=yes"], "at '/dryRun': got string, want boolean"),
    (["--set", "storageclassMigrate.activeDeadlineSeconds=-1"], "at '/activeDeadlineSeconds'"),
    (["--set", "storageclassMigrate.backoffLimit=-1"], "at '/backoffLimit'"),
    (["--set", "storageclassMigrate.image.pullPolicy=Sometimes"], "at '/image/pullPolicy'"),
    (["--set", "storageclassMigrate.image.digest=latest"], "at '/image/digest'"),
    (["--set", "storageclassMigrate.runAsUser=0"], "at '/runAsUser'"),
    (["--set", "storageclassMigrate.data=keep"],
     "at '/data': value must be one of 'delete', 'copy', 'snapshot', 'auto'"),
    (["--set", "storageclassMigrate.copy.asUser=0"], "at '/copy/asUser'"),
    (["--set", "storageclassMigrate.copy.asUser=1.5"], "at '/copy/asUser'"),
    (["--set-string", "storageclassMigrate.copy.verify=yes"],
     "at '/copy/verify': got string, want boolean"),
    (["--set", "storageclassMigrate.copy.deleteOldvolume=true"],
     "additional properties 'deleteOldvolume' not allowed"),
    (["--set", "storageclassMigrate.data=copy", "--set", "storageclassMigrate.stripAllFinalizers=true"],
     "data: copy, snapshot and auto keep the old volume until the claim is bound to a new volume "
     "holding its data, so data: copy cannot be combined with stripAllFinalizers"),
    (["--set", "storageclassMigrate.data=snapshot",
      "--set", "storageclassMigrate.deleteRetainedPV=true"],
     "so data: snapshot cannot be combined with deleteRetainedPV"),
    (["--set", "storageclassMigrate.copy.deleteOldVolume=true"],
     "copy.deleteOldVolume has moved to deleteOldVolume"),
    (["--set-string", "storageclassMigrate.deleteOldVolume=yes"],
     "at '/deleteOldVolume': got string, want boolean"),
    (["--set", "storageclassMigrate.snapshot.class=Fast_Snapshots"],
     "at '/snapshot/class': 'Fast_Snapshots' does not match pattern"),
    (["--set", "storageclassMigrate.snapshot.class=a..b"], "at '/snapshot/class'"),
    (["--set", "storageclassMigrate.snapshot.class="], "at '/snapshot/class': '' does not match"),
    (["--set", "storageclassMigrate.snapshot.class=" + "a" * 254],
     "at '/snapshot/class': maxLength: got 254, want 253"),
    (["--set", "storageclassMigrate.snapshot.class=5"], "at '/snapshot/class': got number"),
    (["--set-string", "storageclassMigrate.snapshot.deleteSnapshot=yes"],
     "at '/snapshot/deleteSnapshot': got string, want boolean"),
    (["--set", "storageclassMigrate.snapshot.deleteSnapshots=true"],
     "additional properties 'deleteSnapshots' not allowed"),
    (["--set", "storageclassMigrate.timeout=2m"],
     "the run's deadline, activeDeadlineSeconds (240) minus 15s for the pod's start and the "
     "report, must exceed twice the timeout (2m: one wait for the claim, one for its volume); "
     "raise activeDeadlineSeconds above 255 or lower timeout"),
    # A deadline of 225s leaves room for two waits of 112s, not of 113s.
    (["--set", "storageclassMigrate.timeout=113s"], "raise activeDeadlineSeconds above 241"),
    (["--set", "storageclassMigrate.activeDeadlineSeconds=135"],
     "activeDeadlineSeconds (135) minus 15s"),
    (["--set", "persistence.claimName=Bad_Name"], "at '/persistence/claimName': 'Bad_Name'"),
    (["--set", "persistence.size=lots"], "at '/persistence/size': 'lots'"),
]


@check
def both_schemas_apply(h):
    err = h.template_error(EXAMPLE, ["--set", "storageclassMigrate.inUse=bogus",
                                     "--set", "persistence.size=lots"])
    for text in ("app:\n- at '/persistence/size'",
                 "storageclassMigrate:\n- at '/inUse': value must be one of"):
        expect(text in err, f"wanted {text!r} in {err!r}")


@check
def bad_values_are_rejected_clearly(h):
    for args, text in REJECTED:
        err = h.template_error(EXAMPLE, args)
        expect(text in err, f"{' '.join(args)}: wanted an error containing {text!r}, got {err.strip()!r}")
        expect(len(err) < 1000, f"{' '.join(args)}: error too long to read: {err!r}")


@check
def lint_passes_with_value_sets(h):
    for args in ([], ["--set", "storageclassMigrate.inUse=fail"],
                 ["--set", "storageclassMigrate.allowMigration=false"],
                 ["--set", "storageclassMigrate.data=copy"],
                 ["--set", "storageclassMigrate.data=copy",
                  "--set", "storageclassMigrate.copy.asUser=1000"],
                 ["--set", "storageclassMigrate.data=snapshot"],
                 ["--set", "storageclassMigrate.data=snapshot",
                  "--set", "storageclassMigrate.snapshot.class=snap",
                  "--set", "storageclassMigrate.snapshot.deleteSnapshot=true",
                  "--set", "storageclassMigrate.deleteOldVolume=true"],
                 ["--set", "storageclassMigrate.data=auto"]):
        result = h.run(["lint", "--strict", EXAMPLE] + args)
        expect(result.returncode == 0, f"helm lint --strict {args}: {result.stdout}{result.stderr}")
    result = h.run(["lint", "--strict", EXAMPLE, "--set", "storageclassMigrate.inUse=bogus"])
    expect(result.returncode != 0, "helm lint accepts inUse=bogus")


# ---------------------------------------------------------------------------------------------
# The fixture chart: calls of the include that examples/app does not make.

FIXTURE_TEMPLATE = """\
{{- range .Values.calls }}
{{- $args := deepCopy . }}
{{- if hasKey $args "valuesKey" }}
{{- $_ := set $args "values" (index $.Values (get $args "valuesKey")) }}
{{- $_ := unset $args "valuesKey" }}
{{- end }}
{{- $_ := set $args "context" $ }}
{{ include "storageclass-migrate.hook" $args }}
{{- end }}
"""


def fixture(h, alias="storageclassMigrate"):
    chart = os.path.join(h.work, f"fixture-{alias or 'noalias'}")
    if os.path.isdir(os.path.join(chart, "charts")):
        return chart
    shutil.rmtree(chart, ignore_errors=True)
    os.makedirs(os.path.join(chart, "templates"))
    dependency = {"name": "storageclass-migrate", "version": "0.1.0",
                  "repository": "file://" + LIBRARY}
    if alias:
        dependency["alias"] = alias
    with open(os.path.join(chart, "Chart.yaml"), "w") as f:
        yaml.safe_dump({"apiVersion": "v2", "name": "fixture", "version": "0.0.1",
                        "dependencies": [dependency]}, f)
    with open(os.path.join(chart, "values.yaml"), "w") as f:
        f.write("calls: []\n")
    with open(os.path.join(chart, "templates", "hooks.yaml"), "w") as f:
        f.write(FIXTURE_TEMPLATE)
    result = h.run(["dependency", "build", chart])
    expect(result.returncode == 0, f"helm dependency build fixture: {result.stderr}")
    return chart


def write_values(h, name, values):
    path = os.path.join(h.work, f"values-{name}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(values, f)
    return path


def render_calls(h, calls, extra=None, alias="storageclassMigrate", **kw):
    values = {"calls": calls}
    values.update(extra or {})
    return h.template(fixture(h, alias), ["--values", write_values(h, "calls", values)], **kw)


def render_calls_error(h, calls, alias="storageclassMigrate"):
    path = write_values(h, "calls", {"calls": calls})
    return h.template_error(fixture(h, alias), ["--values", path])


def jobs_by_name(docs):
    return {j["metadata"]["name"]: j for j in by_kind(docs, "Job")}


@check
def several_claims_in_one_job(h):
    docs = render_calls(h, [{"claims": ["data", "logs"], "storageClass": "fast"}])
    check_hook_structure(docs)
    expect_eq(env_of(one(docs, "Job"))["PVC_NAME"], "data,logs", "PVC_NAME list")
    check_rules(docs, claims=["data", "logs"])


@check
def selector_has_no_resource_names(h):
    docs = render_calls(h, [{"selector": "app.kubernetes.io/instance=rel", "storageClass": "fast"}])
    check_hook_structure(docs)
    e = env_of(one(docs, "Job"))
    expect_eq(e.get("PVC_SELECTOR"), "app.kubernetes.io/instance=rel", "PVC_SELECTOR")
    expect("PVC_NAME" not in e, "no PVC_NAME with only a selector")
    check_rules(docs, selector="app.kubernetes.io/instance=rel")
    pvc_rule = [r for r in one(docs, "Role")["rules"] if "persistentvolumeclaims" in r["resources"]]
    expect(pvc_rule and "resourceNames" not in pvc_rule[0], f"selector rule: {pvc_rule}")
    # Names and a selector together: the selector may pick any claim, so no resourceNames either.
    docs = render_calls(h, [{"claim": "data", "selector": "tier=db", "storageClass": "fast"}])
    e = env_of(one(docs, "Job"))
    expect_eq((e.get("PVC_NAME"), e.get("PVC_SELECTOR")), ("data", "tier=db"), "both in env")
    check_rules(docs, claims=["data"], selector="tier=db")


@check
def statefulset_renders_its_env_and_rules(h):
    for data in ("delete",) + KEEP_DATA:
        docs = render_calls(h, [{"statefulSet": "db", "template": "data", "storageClass": "fast",
                                 "settings": {"data": data}}])
        job = check_hook_structure(docs)
        e = env_of(job)
        expect_eq((e.get("STATEFULSET_NAME"), e.get("VOLUME_CLAIM_TEMPLATE")), ("db", "data"),
                  "STATEFULSET_NAME and VOLUME_CLAIM_TEMPLATE")
        expect("PVC_NAME" not in e and "PVC_SELECTOR" not in e, "no claims with a StatefulSet")
        expect_eq(job["metadata"]["name"], "rel-db-storageclass-migrate", "named after the StatefulSet")
        check_rules(docs, data=data, statefulset="db")
        check_needs(granted_verbs(docs), needed_verbs(data=data, statefulset=True),
                    f"statefulSet, data: {data}")
        expect(allowed(docs, "delete", "apps", "statefulsets", "db"), "delete of the StatefulSet")
        expect(not allowed(docs, "delete", "apps", "statefulsets", "other"),
               "delete of another StatefulSet")
        expect(allowed(docs, "delete", "", "persistentvolumeclaims", "data-db-7"),
               "delete of a claim of any ordinal")


@check
def two_calls_with_per_call_settings(h):
    docs = render_calls(h, [
        {"claim": "data", "storageClass": "fast"},
        {"claim": "cache", "storageClass": "-",
         "settings": {"inUse": "force", "stripAllFinalizers": True, "allowMigration": True}},
        {"claim": "keep", "storageClass": "x", "settings": {"allowMigration": False}},
    ], extra={"storageclassMigrate": {"inUse": "fail"}})
    jobs = jobs_by_name(docs)
    expect_eq(sorted(jobs), ["rel-cache-storageclass-migrate", "rel-data-storageclass-migrate"],
              "one Job per enabled call")
    expect_eq(env_of(jobs["rel-data-storageclass-migrate"])["IN_USE_POLICY"], "fail",
              "chart-wide setting")
    e = env_of(jobs["rel-cache-storageclass-migrate"])
    expect_eq((e["IN_USE_POLICY"], e["STRIP_ALL_FINALIZERS"], e["DESIRED_STORAGECLASS"]),
              ("force", "true", "-"), "per-call settings")
    for kind in HOOK_KINDS:
        names = [d["metadata"]["name"] for d in by_kind(docs, kind)]
        expect_eq(len(set(names)), 2, f"distinct {kind} names: {names}")


@check
def settings_override_the_values_defaults(h):
    docs = render_calls(h, [{"claim": "data", "settings": {"allowMigration": False}}])
    expect_eq(hook_docs(docs), [], "settings allowMigration=false renders nothing")
    docs = render_calls(h, [{"claim": "data", "settings": {"showLogsOnFailure": True}}])
    expect_eq(one(docs, "Job")["metadata"]["annotations"].get("helm.sh/hook-output-log-policy"),
              "hook-failed", "settings showLogsOnFailure=true")


@check
def long_names_are_cut_with_a_hash(h):
    long_claim = "a-very-long-claim-name-that-goes-on-and-on-and-on-well-past-sixty-three"
    claims = [long_claim + "-1", long_claim + "-2"]
    docs = render_calls(h, [{"claim": c} for c in claims],
                        release="a-release-name-that-is-also-rather-long")
    for kind in HOOK_KINDS:
        names = [d["metadata"]["name"] for d in by_kind(docs, kind)]
        expect_eq(len(set(names)), 2, f"distinct {kind} names: {names}")
        for name in names:
            expect(len(name) <= 63 or kind.startswith("Cluster"), f"{kind} name {name} too long")
            expect(re.fullmatch(r"[a-z0-9]([-a-z0-9.:]*[a-z0-9])?", name), f"{kind} name {name}")
    for role in by_kind(docs, "Role"):
        granted = [r.get("resourceNames") for r in role["rules"]
                   if "persistentvolumeclaims" in r["resources"]]
        expect(granted in ([[claims[0]]], [[claims[1]]]), f"{role['metadata']['name']}: {granted}")


@check
def values_argument_and_unaliased_dependency(h):
    # Without the alias, the settings live under "storageclass-migrate".
    docs = render_calls(h, [{"claim": "data"}], alias=None,
                        extra={"storageclass-migrate": {"inUse": "force"}})
    expect_eq(env_of(one(docs, "Job"))["IN_USE_POLICY"], "force", "unaliased settings")
    # With another alias, the call passes them.
    docs = render_calls(h, [{"claim": "data", "valuesKey": "migrate"}], alias="migrate",
                        extra={"migrate": {"inUse": "fail"}})
    expect_eq(env_of(one(docs, "Job"))["IN_USE_POLICY"], "fail", "settings passed as values")
    err = render_calls_error(h, [{"claim": "data"}], alias="migrate")
    expect("no settings found" in err, f"message without settings: {err}")


# Calls the templates must reject: (call, text of the error).
BAD_CALLS = [
    ({}, "no claim given"),
    ({"statefulSet": "db", "template": "data", "claim": "data"}, "leave \"claim\", \"claims\" and \"selector\" out"),
    ({"template": "data", "claim": "data"}, "\"template\" goes with \"statefulSet\""),
    ({"statefulSet": "db"}, "\"template\" \"\" is not a valid name"),
    ({"statefulSet": "db", "template": "a.b"}, "\"template\" \"a.b\" is not a valid name"),
    ({"claim": "Data"}, "\"Data\" is not a valid claim name"),
    ({"claim": "a,b"}, "\"a,b\" is not a valid claim name"),
    ({"claims": "data"}, "\"claims\" must be a list"),
    ({"claim": "data", "storageClass": 5}, "\"storageClass\" must be a string"),
    ({"claim": "data", "pvc": "x"}, "unknown argument \"pvc\""),
    ({"claim": "data", "settings": {"inUse": "maybe"}}, "inUse must be one of evict, force, fail"),
    ({"claim": "data", "settings": {"timeout": "-5s"}}, "timeout must be a positive duration"),
    ({"claim": "data", "settings": {"timeout": -5}}, "timeout must be positive"),
    ({"claim": "data", "settings": {"dryRun": "true"}}, "dryRun must be true or false"),
    ({"claim": "data", "settings": {"data": "keep"}},
     "data must be delete, copy, snapshot or auto; got keep"),
    ({"claim": "data", "settings": {"data": "snapshot", "snapshot": {"class": "Fast_Snapshots"}}},
     "snapshot.class must name a VolumeSnapshotClass (lowercase letters, digits, '-' and '.', at "
     "most 253 characters), or be null for the default class of the volume's driver; got "
     "Fast_Snapshots"),
    ({"claim": "data", "settings": {"data": "auto", "snapshot": {"class": ""}}},
     "snapshot.class must name a VolumeSnapshotClass"),
    ({"claim": "data", "settings": {"data": "auto", "snapshot": {"class": 5}}},
     "snapshot.class must name a VolumeSnapshotClass"),
    ({"claim": "data", "settings": {"data": "snapshot", "snapshot": {"deleteSnapshot": "yes"}}},
     "snapshot.deleteSnapshot must be true or false"),
    ({"claim": "data", "settings": {"data": "snapshot", "snapshot": "csi"}},
     "snapshot must be a map (class, deleteSnapshot)"),
    ({"claim": "data", "settings": {"data": "auto", "deleteOldVolume": "yes"}},
     "deleteOldVolume must be true or false"),
    ({"claim": "data", "settings": {"data": "auto", "copy": {"verify": "yes"}}},
     "copy.verify must be true or false"),
    ({"claim": "data", "settings": {"data": "copy", "deleteRetainedPV": True}},
     "cannot be combined with deleteRetainedPV"),
    ({"claim": "data", "settings": {"data": "copy", "copy": {"asUser": 0}}},
     "copy.asUser must be a uid from 1 to 2147483647, or null"),
    ({"claim": "data", "settings": {"data": "copy", "copy": {"asUser": "1000"}}},
     "copy.asUser must be a uid"),
    ({"claim": "data", "settings": {"data": "copy", "copy": {"verify": "yes"}}},
     "copy.verify must be true or false"),
    ({"claim": "data", "settings": {"activeDeadlineSeconds": 100}},
     "activeDeadlineSeconds (100) minus 15s for the pod's start and the report, must exceed "
     "twice the timeout"),
    ({"claim": "data", "settings": {"activeDeadlineSeconds": 15, "timeout": "1ms"}},
     "activeDeadlineSeconds (15) minus 15s"),
]


@check
def bad_calls_are_rejected_clearly(h):
    for call, text in BAD_CALLS:
        err = render_calls_error(h, [call])
        expect(text in err, f"{call}: wanted an error containing {text!r}, got {err.strip()!r}")


# Every setting the templates render: the policies that keep the data exclude deleteRetainedPV
# and stripAllFinalizers; snapshot.deleteSnapshot is tried with the policies that snapshot.
# (inUse, deleteRetainedPV, stripAllFinalizers, data, snapshot.deleteSnapshot)
SETTINGS = [(in_use, retained, strip, data, delete_snapshot)
            for in_use in ("evict", "force", "fail")
            for retained in (False, True) for strip in (False, True)
            for data in ("delete",) + KEEP_DATA
            for delete_snapshot in ((False, True) if data in SNAPSHOTS else (False,))
            if data == "delete" or not (retained or strip)]


def setting_values(in_use, retained, strip, data, delete_snapshot):
    values = {"inUse": in_use, "deleteRetainedPV": retained, "stripAllFinalizers": strip,
              "data": data}
    if delete_snapshot:
        values["snapshot"] = {"class": None, "deleteSnapshot": True}
    return values


@check
def rules_match_json_for_every_setting(h):
    n = 0
    for in_use, retained, strip, data, delete_snapshot in SETTINGS:
        for call in ({"claims": ["data", "logs"]}, {"selector": "app=db"},
                     {"statefulSet": "db", "template": "data"}):
            settings = setting_values(in_use, retained, strip, data, delete_snapshot)
            docs = render_calls(h, [dict(call, settings=settings)], namespace="ns-x")
            check_rules(docs, in_use=in_use, retained=retained, strip=strip, data=data,
                        claims=call.get("claims"), selector=call.get("selector", ""),
                        namespace="ns-x", statefulset=call.get("statefulSet"),
                        delete_snapshot=delete_snapshot)
            check_needs(granted_verbs(docs),
                        needed_verbs(in_use, retained, strip, data, "statefulSet" in call,
                                     delete_snapshot),
                        f"{settings}")
            if data in COPIES:
                for claim in call.get("claims", ["any"]):
                    for verb, group, resource, name in copy_preflight_asks(claim):
                        expect(allowed(docs, verb, group, resource, name),
                               f"{settings}: {verb} {group or 'core'}/{resource} {name or ''} "
                               "not allowed; the pre-flight asks for it")
            n += 1
    expect_eq(n, 81, "combinations (12 settings with data: delete, 3 with copy, 6 each with "
                     "snapshot and auto; each with claims, a selector and a StatefulSet)")


@check
def settings_get_no_verb_they_do_not_need(h):
    """For each setting, every verb some other setting needs, and this one does not, is absent."""
    every = {}
    for in_use, retained, strip, data, delete_snapshot in SETTINGS:
        need = needed_verbs(in_use, retained, strip, data, delete_snapshot=delete_snapshot)
        for key, verbs in need.items():
            every.setdefault(key, set()).update(verbs)
    n = 0
    for in_use, retained, strip, data, delete_snapshot in SETTINGS:
        docs = render_calls(h, [{"claim": "data", "settings": setting_values(
            in_use, retained, strip, data, delete_snapshot)}])
        granted = granted_verbs(docs)
        need = needed_verbs(in_use, retained, strip, data, delete_snapshot=delete_snapshot)
        what = (f"inUse={in_use} deleteRetainedPV={retained} stripAllFinalizers={strip} "
                f"data={data} snapshot.deleteSnapshot={delete_snapshot}")
        for (group, resource), verbs in sorted(every.items()):
            for verb in sorted(verbs - need.get((group, resource), set())):
                expect(verb not in granted.get((group, resource), set()),
                       f"{what}: {verb} {group or 'core'}/{resource} granted but not needed")
                n += 1
        # And nothing outside what any setting needs.
        for key, verbs in granted.items():
            expect(verbs <= every.get(key, set()), f"{what}: {key} {verbs} beyond any setting's needs")
    expect(n > 0, "no absent verb checked")
    # The least privileged setting, spelled out: no claim patch, no volume writes, no evictions
    # or budgets, and no list of storage classes (the default class is never looked up).
    granted = granted_verbs(render_calls(h, [{"claim": "data", "settings": {"inUse": "fail"}}]))
    for key, verb in ((("", "persistentvolumeclaims"), "patch"), (("", "persistentvolumes"), "patch"),
                      (("", "persistentvolumes"), "delete"), (("", "pods/eviction"), "create"),
                      (("policy", "poddisruptionbudgets"), "list"),
                      (("storage.k8s.io", "storageclasses"), "list"),
                      (("", "persistentvolumeclaims"), "create"), (("", "pods"), "create"),
                      (("batch", "jobs"), "create"), (("batch", "jobs"), "delete"),
                      (("snapshot.storage.k8s.io", "volumesnapshots"), "create"),
                      (("snapshot.storage.k8s.io", "volumesnapshotclasses"), "list")):
        expect(verb not in granted.get(key, set()), f"inUse=fail: {verb} {key} granted")
    # Keeping the data never deletes a volume, and never patches the claim (inUse force aside);
    # a snapshot is deleted only with snapshot.deleteSnapshot.
    for data in KEEP_DATA:
        granted = granted_verbs(render_calls(h, [{"claim": "data", "settings": {
            "inUse": "fail", "data": data}}]))
        for key, verb in ((("", "persistentvolumeclaims"), "patch"),
                          (("", "persistentvolumes"), "delete"),
                          (("snapshot.storage.k8s.io", "volumesnapshots"), "delete")):
            expect(verb not in granted.get(key, set()),
                   f"inUse=fail data={data}: {verb} {key} granted")


def run_checks(h, label, only=None):
    passed = failed = 0
    for function in CHECKS:
        if only and function.__name__ not in only:
            continue
        name = f"{label}: {function.__name__}"
        try:
            function(h)
        except CheckFailed as e:
            failed += 1
            print(f"FAIL {name}: {e}", flush=True)
        except Exception:  # noqa: BLE001 - any crash is a failure of that check
            failed += 1
            print(f"FAIL {name}: crashed:\n{traceback.format_exc()}", flush=True)
        else:
            passed += 1
            print(f"ok   {name}", flush=True)
    return passed, failed


def same_rendering(h3, h4):
    """Helm 4 renders the same objects as helm 3 for a few value sets."""
    passed = failed = 0
    for args in ([], ["--set", "storageclassMigrate.inUse=fail",
                      "--set", "storageclassMigrate.deleteRetainedPV=true"],
                 ["--set", "storageclassMigrate.allowMigration=false"],
                 ["--set", "storageclassMigrate.data=copy",
                  "--set", "storageclassMigrate.copy.asUser=1000"],
                 ["--set", "storageclassMigrate.data=auto",
                  "--set", "storageclassMigrate.snapshot.class=snap",
                  "--set", "storageclassMigrate.snapshot.deleteSnapshot=true",
                  "--set", "storageclassMigrate.deleteOldVolume=true"]):
        name = f"helm4: same objects as helm 3 for {args or 'defaults'}"
        try:
            expect_eq(h4.template(EXAMPLE, args), h3.template(EXAMPLE, args), "objects")
        except CheckFailed as e:
            failed += 1
            print(f"FAIL {name}: {e}", flush=True)
        else:
            passed += 1
            print(f"ok   {name}", flush=True)
    return passed, failed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--helm", required=True)
    parser.add_argument("--helm4")
    parser.add_argument("--work", required=True)
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)

    h3 = Helm(args.helm, os.path.join(args.work, "helm3"))
    passed, failed = run_checks(h3, "helm3")
    if args.helm4:
        h4 = Helm(args.helm4, os.path.join(args.work, "helm4"))
        # The schema and template checks, and identical output.
        p, f = run_checks(h4, "helm4", only={
            "defaults", "toggle_off_renders_no_hook", "bad_values_are_rejected_clearly",
            "lint_passes_with_value_sets", "two_calls_with_per_call_settings", "both_schemas_apply",
            "bad_calls_are_rejected_clearly", "data_copy_renders_its_env_and_rules",
            "data_snapshot_renders_its_env_and_rules", "data_auto_renders_the_env_and_rules_of_both",
            "keeping_the_data_refuses_to_drop_the_old_volume", "copy_delete_old_volume_has_moved"})
        passed, failed = passed + p, failed + f
        p, f = same_rendering(h3, h4)
        passed, failed = passed + p, failed + f
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
