#!/usr/bin/env bash
# Moves a claim from class "standard" to class "fast" on a local control plane, as a Helm upgrade
# with the hook would: the hook deletes the claim bound on the old class, the chart recreates it on
# the new one. Prints the cluster before and after, and the hook's summary.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

echo "== building the binary and the control plane"
cargo build --release --locked --quiet
binary=$root/target/release/storageclass-migrate
dir=$(mktemp -d -t storageclass-migrate-demo.XXXXXX)
stop() { scripts/control-plane.sh stop "$dir" >/dev/null 2>&1 || true; rm -rf "$dir"; }
trap stop EXIT
scripts/control-plane.sh start "$dir"
# shellcheck source=/dev/null
source "$dir/env"
k() { "$KUBECTL" --kubeconfig "$KUBECONFIG" "$@"; }

echo "== a claim bound to a volume on class standard"
k apply -f - >/dev/null <<'YAML'
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: standard}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: Immediate
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: fast}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: Immediate
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: demo-standard}
spec:
  storageClassName: standard
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  hostPath: {path: /nonexistent/storageclass-migrate-demo/standard}
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: demo-fast}
spec:
  storageClassName: fast
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  hostPath: {path: /nonexistent/storageclass-migrate-demo/fast}
YAML
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
