#!/usr/bin/env bash
# Moves a claim between two classes of one CSI driver keeping its data by snapshot, on a local
# control plane with its CSI stack (external-provisioner, csi-snapshotter and snapshot-controller
# in front of the test driver, which keeps each volume as a directory of this host): a file
# written into the volume on class "csi-a" is on class "csi-a-fast" afterwards, restored from a
# VolumeSnapshot that the hook took, without any copy pod. Prints the cluster before and after,
# and the hook's summary.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

echo "== building the binary, the control plane and its CSI stack"
cargo build --release --locked --quiet
binary=$root/target/release/storageclass-migrate
dir=$(mktemp -d -t storageclass-migrate-demo.XXXXXX)
stop() {
  scripts/control-plane.sh stop "$dir" >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap stop EXIT
scripts/control-plane.sh start "$dir" --csi
# shellcheck source=/dev/null
source "$dir/env"
k() { "$KUBECTL" --kubeconfig "$KUBECONFIG" "$@"; }
driver=a.csi.storageclass-migrate.test

echo "== a claim on class csi-a (driver $driver), a file in its volume"
k apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: csi-a-fast}
provisioner: $driver
parameters: {tier: fast}
reclaimPolicy: Delete
volumeBindingMode: Immediate
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: data
  namespace: demo
  labels: {app.kubernetes.io/managed-by: Helm}
  annotations: {meta.helm.sh/release-name: demo, meta.helm.sh/release-namespace: demo}
spec:
  storageClassName: csi-a
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
YAML
k wait -n demo pvc/data --for=jsonpath='{.status.phase}'=Bound --timeout=60s >/dev/null
volume_path() { # claim
  local pv handle
  pv=$(k get pvc "$1" -n demo -o jsonpath='{.spec.volumeName}')
  handle=$(k get pv "$pv" -o jsonpath='{.spec.csi.volumeHandle}')
  echo "$dir/csi/$driver/volumes/$handle"
}
old_path=$(volume_path data)
echo "written before the upgrade, $(date -u +%FT%TZ)" >"$old_path/hello.txt"
chown 4321:4322 "$old_path/hello.txt" 2>/dev/null || true
chmod 0640 "$old_path/hello.txt"
cp -p "$old_path/hello.txt" "$dir/hello.txt"
show() {
  k get pvc -n demo -o custom-columns='CLAIM:.metadata.name,CLASS:.spec.storageClassName,VOLUME:.spec.volumeName,PHASE:.status.phase,SOURCE:.spec.dataSource.name'
  k get pv -o custom-columns='VOLUME:.metadata.name,CLASS:.spec.storageClassName,RECLAIM:.spec.persistentVolumeReclaimPolicy,PHASE:.status.phase,CLAIM:.spec.claimRef.name'
  k get volumesnapshot -n demo -o custom-columns='SNAPSHOT:.metadata.name,CLASS:.spec.volumeSnapshotClassName,READY:.status.readyToUse,RELEASE:.metadata.labels.storageclass-migrate/release' 2>/dev/null
}
show

echo "== the hook: PVC_NAME=data PVC_NAMESPACE=demo DESIRED_STORAGECLASS=csi-a-fast DATA_POLICY=snapshot"
PVC_NAME=data PVC_NAMESPACE=demo DESIRED_STORAGECLASS=csi-a-fast DATA_POLICY=snapshot \
  "$binary" --termination-log /dev/null
show
new_path=$(volume_path data)
echo "== the file on class csi-a-fast ($new_path/hello.txt)"
ls -ln "$new_path/hello.txt"
cat "$new_path/hello.txt"
cmp "$dir/hello.txt" "$new_path/hello.txt" &&
  echo "identical to the original, which is kept on the old volume (Retain) and in the snapshot"
