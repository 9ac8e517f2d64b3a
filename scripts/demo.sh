#!/usr/bin/env bash
# Moves a claim from class "standard" to class "fast" on a local control plane, as a Helm upgrade
# with the hook would: the hook deletes the claim bound on the old class, the chart recreates it on
# the new one. Then again with DATA_POLICY=copy: a file written into the volume on class
# "standard" is on class "provisioned" afterwards (the copy Job's pod runs on this host, by the
# test kit's hook runner, in place of a kubelet). Prints the cluster before and after, and the
# hook's summaries.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

echo "== building the binary and the control plane"
cargo build --release --locked --quiet
cargo build --release --locked --quiet -p testkit --bin hook-runner
binary=$root/target/release/storageclass-migrate
dir=$(mktemp -d -t storageclass-migrate-demo.XXXXXX)
runner_pid="" new_path=""
stop() {
  if [ -n "$runner_pid" ]; then kill "$runner_pid" 2>/dev/null || true; fi
  scripts/control-plane.sh stop "$dir" >/dev/null 2>&1 || true
  rm -rf "$dir"
  # The directory the controller manager's host-path provisioner made for the copy.
  case $new_path in /tmp/hostpath_pv/?*) rm -rf "$new_path" ;; esac
}
trap stop EXIT
scripts/control-plane.sh start "$dir"
# shellcheck source=/dev/null
source "$dir/env"
k() { "$KUBECTL" --kubeconfig "$KUBECONFIG" "$@"; }

echo "== a claim bound to a volume on class standard"
k apply -f scripts/demo-objects.yaml >/dev/null
claim() { # class
  k apply -f - >/dev/null <<YAML
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data, namespace: demo}
spec:
  storageClassName: $1
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
YAML
  k wait -n demo pvc/data --for=jsonpath='{.status.phase}'=Bound --timeout=60s >/dev/null
}
claim standard
show() {
  k get pvc -n demo -o custom-columns='CLAIM:.metadata.name,CLASS:.spec.storageClassName,VOLUME:.spec.volumeName,PHASE:.status.phase,UID:.metadata.uid'
  k get pv -o custom-columns='VOLUME:.metadata.name,CLASS:.spec.storageClassName,RECLAIM:.spec.persistentVolumeReclaimPolicy,PHASE:.status.phase,CLAIM:.spec.claimRef.name'
}
show

echo "== what the upgrade alone gets"
k patch pvc data -n demo --type=merge -p '{"spec":{"storageClassName":"fast"}}' 2>&1 | head -n 1 | sed 's/^/   /' || true

echo "== the hook: PVC_NAME=data PVC_NAMESPACE=demo DESIRED_STORAGECLASS=fast"
PVC_NAME=data PVC_NAMESPACE=demo DESIRED_STORAGECLASS=fast "$binary" --termination-log /dev/null

echo "== the chart recreates the claim on class fast"
claim fast
show
echo "== the old volume demo-standard (Retain) is kept, Released, with the old data"

echo
echo "== keeping the data: a claim on class standard whose volume holds a file"
volume=$dir/volumes/standard
mkdir -p "$volume"
echo "written before the upgrade, $(date -u +%FT%TZ)" >"$volume/hello.txt"
chmod 0640 "$volume/hello.txt"
k apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Namespace
metadata: {name: demo-copy}
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: provisioned}
provisioner: kubernetes.io/host-path
volumeBindingMode: Immediate
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: demo-copy-standard}
spec:
  storageClassName: standard
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Delete
  hostPath: {path: $volume}
  claimRef: {namespace: demo-copy, name: data}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: data
  namespace: demo-copy
  labels: {app.kubernetes.io/managed-by: Helm}
  annotations: {meta.helm.sh/release-name: demo, meta.helm.sh/release-namespace: demo-copy}
spec:
  storageClassName: standard
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
YAML
k wait -n demo-copy pvc/data --for=jsonpath='{.status.phase}'=Bound --timeout=60s >/dev/null
show_copy() {
  k get pvc -n demo-copy -o custom-columns='CLAIM:.metadata.name,CLASS:.spec.storageClassName,VOLUME:.spec.volumeName,PHASE:.status.phase,UID:.metadata.uid'
  k get pv -o custom-columns='VOLUME:.metadata.name,CLASS:.spec.storageClassName,RECLAIM:.spec.persistentVolumeReclaimPolicy,PHASE:.status.phase,CLAIM:.spec.claimRef.name,PATH:.spec.hostPath.path' | grep -e '^VOLUME' -e demo-copy -e pvc-
}
show_copy

echo "== the hook: PVC_NAME=data PVC_NAMESPACE=demo-copy DESIRED_STORAGECLASS=provisioned DATA_POLICY=copy"
STORAGECLASS_MIGRATE_CONTROL_PLANE=$dir STORAGECLASS_MIGRATE_BINARY=$binary \
  STORAGECLASS_MIGRATE_HOOK_RUNNER=binary "$root/target/release/hook-runner" demo-copy \
  >"$dir/hook-runner.log" 2>&1 &
runner_pid=$!
PVC_NAME=data PVC_NAMESPACE=demo-copy DESIRED_STORAGECLASS=provisioned DATA_POLICY=copy \
  COPY_IMAGE=localhost/storageclass-migrate:demo "$binary" --termination-log /dev/null
show_copy
new_volume=$(k get pvc data -n demo-copy -o jsonpath='{.spec.volumeName}')
new_path=$(k get pv "$new_volume" -o jsonpath='{.spec.hostPath.path}')
echo "== the file on class provisioned ($new_path/hello.txt)"
ls -ln "$new_path/hello.txt"
cat "$new_path/hello.txt"
cmp "$volume/hello.txt" "$new_path/hello.txt" && echo "identical to the original, which is kept on demo-copy-standard (Retain)"
