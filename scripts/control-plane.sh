#!/usr/bin/env bash
# A throw-away Kubernetes control plane for integration tests: etcd, kube-apiserver and
# kube-controller-manager, all listening on 127.0.0.1 only, with their state under one directory.
#
#   control-plane.sh start DIR [--owner-pid PID] [--remove-dir] [--csi]
#       Builds (or reuses) the binaries with build-control-plane.sh, creates certificates and keys,
#       starts the three servers on free ports and waits until they are ready. Writes into DIR:
#         admin.kubeconfig  cluster-admin (O=system:masters) client-certificate kubeconfig, context "local"
#         ca.crt            CA of the serving and client certificates
#         env               shell-sourceable: KUBECONFIG, APISERVER_URL, CA_CERT, ETCD_URL, KUBECTL, ...
#         pids              "name pid starttime" of every process started, used by stop
#         logs/             one log per process
#         csi/              with --csi: each driver's socket, volumes/, snapshots/, attributes/
#       --owner-pid PID  also start a watchdog that stops the control plane once PID has exited.
#       --remove-dir     with --owner-pid: the watchdog also deletes DIR after stopping.
#       --csi            also start a CSI stack (scripts/build-csi.sh builds it, cached): two
#                        instances of the test driver (tools/csi/driver), named
#                        a.csi.storageclass-migrate.test and b.csi.storageclass-migrate.test,
#                        each with its external-provisioner and csi-snapshotter, one
#                        snapshot-controller, the VolumeSnapshot CRDs; a CSIDriver object, a
#                        StorageClass (Immediate binding, Delete) and a default
#                        VolumeSnapshotClass per driver, each named csi-a / csi-b. A driver keeps
#                        each volume as the directory DIR/csi/<driver name>/volumes/<volume
#                        handle>. Start-up waits until a claim of each class is provisioned.
#   control-plane.sh stop DIR
#       Stops exactly the processes recorded in DIR/pids (TERM, then KILL after a grace period).
#   control-plane.sh status DIR
#       Prints each recorded process and whether it is running; exit status 0 if all are.
#
# Environment: CONTROL_PLANE_BIN_DIR (use these binaries instead of building),
# KUBERNETES_VERSION (1.33: build the version pinned in tools/k8s-1.33, not tools/k8s's),
# CONTROL_PLANE_STOP_GRACE (seconds before KILL, default 10),
# CONTROL_PLANE_START_TIMEOUT (seconds per component, default 120),
# CONTROL_PLANE_AUDIT=1 (the apiserver writes one JSON line per request, with user and user agent,
# to DIR/logs/audit.log; used to count the requests a client makes).
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
stop_grace=${CONTROL_PLANE_STOP_GRACE:-10}
start_timeout=${CONTROL_PLANE_START_TIMEOUT:-120}

# The controllers the tests rely on. persistentvolume-binder, the two protection controllers and
# the namespace/serviceaccount/garbage-collector controllers give realistic PVC/PV lifecycles;
# root-ca-certificate-publisher creates the kube-root-ca.crt ConfigMap in every namespace;
# disruption keeps PodDisruptionBudget status current, which the Eviction API requires;
# clusterrole-aggregation fills the aggregated admin/edit/view ClusterRoles; replicaset makes the
# pods of a ReplicaSet, which a budget with maxUnavailable needs to count its pods; statefulset
# makes the pods and claims of a StatefulSet from its templates (there is no scheduler: tests bind
# those pods to a node through pods/binding, as the scheduler would).
#
# kube-controller-manager also runs with --enable-hostpath-provisioner: the PV controller then
# provisions claims of classes with provisioner kubernetes.io/host-path (Immediate binding; no
# scheduler picks a node) itself, as a real directory on this host: /tmp/hostpath_pv/<random uuid>
# (os.MkdirAll, mode 0750 less the umask, owned by the controller manager's user), in a hostPath
# PV pvc-<claim uid> annotated pv.kubernetes.io/provisioned-by: kubernetes.io/host-path. For a
# Delete volume, once released, its deleter removes the directory (os.RemoveAll; it accepts only
# paths matching the unanchored pattern /tmp/.+; it runs for every hostPath volume, with or
# without the flag). Classes with other provisioners are unaffected.
# Directories of volumes still there when the control plane stops stay behind in /tmp/hostpath_pv.
controllers=(
  persistentvolume-binder-controller
  persistentvolumeclaim-protection-controller
  persistentvolume-protection-controller
  garbage-collector-controller
  job-controller
  namespace-controller
  serviceaccount-controller
  ttl-after-finished-controller
  root-ca-certificate-publisher-controller
  disruption-controller
  clusterrole-aggregation-controller
  replicaset-controller
  statefulset-controller
)

script_name=control-plane
# shellcheck source=scripts/lib.sh
. "$script_dir/lib.sh"

usage() {
  sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}" >&2
  exit 2
}

now_ms() { echo $((${EPOCHREALTIME/./} / 1000)); }

seconds_since() { # start in ms
  local d=$(($(now_ms) - $1))
  printf '%d.%03ds' $((d / 1000)) $((d % 1000))
}

# "STATE STARTTIME" of a process (fields 3 and 22 of /proc/PID/stat). The start time (clock ticks
# since boot) together with the PID identifies a process, so a recycled PID is never mistaken
# for one of ours.
proc_stat() { # pid
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  # shellcheck disable=SC2086 # split on purpose
  set -- $stat
  echo "$1 ${20}"
}

proc_start() { # pid
  local s
  s=$(proc_stat "$1") || return 1
  echo "${s#* }"
}

# Running (a zombie has exited; it only waits for its parent to reap it).
alive() { # pid
  local s
  s=$(proc_stat "$1") || return 1
  [ "${s%% *}" != Z ]
}

is_ours() { # pid starttime
  local s
  s=$(proc_stat "$1") || return 1
  [ "${s%% *}" != Z ] && [ "${s#* }" = "$2" ]
}

port_in_use() { # port
  local hex
  hex=$(printf '%04X' "$1")
  grep -qE "^ *[0-9]+: [0-9A-F]+:$hex " /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

chosen_ports=" "
free_port() {
  local p i
  for i in $(seq 1 200); do
    p=$((20000 + (RANDOM * 32768 + RANDOM) % 12000)) # 20000-31999, below the ephemeral range
    [[ $chosen_ports == *" $p "* ]] && continue
    port_in_use "$p" && continue
    chosen_ports+="$p "
    echo "$p"
    return 0
  done
  die "no free port found after $i attempts"
}

# ---------------------------------------------------------------------------------------------
# certificates

openssl_quiet() {
  local out
  if ! out=$(openssl "$@" 2>&1); then
    echo "$out" >&2
    die "openssl $1 failed"
  fi
}

new_key() { # file
  openssl_quiet genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"
  chmod 600 "$1"
}

# Signs a certificate for key $2 with subject $3 and the extension lines given after it.
issue_cert() { # name key subject ext...
  local name=$1 key=$2 subject=$3 pki=$dir/pki
  shift 3
  printf '%s\n' '[ext]' "$@" >"$pki/$name.ext"
  openssl_quiet req -new -key "$key" -subj "$subject" -out "$pki/$name.csr"
  openssl_quiet x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 3650 -sha256 \
    -extfile "$pki/$name.ext" -extensions ext -out "$pki/$name.crt"
  rm -f "$pki/$name.csr" "$pki/$name.ext"
}

make_pki() {
  local pki=$dir/pki
  mkdir -p "$pki"
  chmod 700 "$pki"
  new_key "$pki/ca.key"
  printf '%s\n' '[req]' 'distinguished_name=dn' '[dn]' '[ca]' \
    'basicConstraints=critical,CA:TRUE' 'keyUsage=critical,keyCertSign,cRLSign' \
    'subjectKeyIdentifier=hash' >"$pki/ca.cnf"
  openssl_quiet req -x509 -new -key "$pki/ca.key" -subj "/CN=storageclass-migrate-test-ca" \
    -days 3650 -sha256 -config "$pki/ca.cnf" -extensions ca -out "$pki/ca.crt"
  rm -f "$pki/ca.cnf"

  local leaf='basicConstraints=critical,CA:FALSE' usage='keyUsage=critical,digitalSignature'
  local ids='subjectKeyIdentifier=hash' aki='authorityKeyIdentifier=keyid'
  new_key "$pki/serving.key"
  issue_cert serving "$pki/serving.key" "/CN=kube-apiserver" "$leaf" "$usage" "$ids" "$aki" \
    'extendedKeyUsage=serverAuth' \
    'subjectAltName=IP:127.0.0.1,DNS:localhost,IP:10.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local'
  new_key "$pki/admin.key"
  issue_cert admin "$pki/admin.key" "/O=system:masters/CN=admin" "$leaf" "$usage" "$ids" "$aki" \
    'extendedKeyUsage=clientAuth'
  new_key "$pki/kcm.key"
  issue_cert kcm "$pki/kcm.key" "/CN=system:kube-controller-manager" "$leaf" "$usage" "$ids" "$aki" \
    'extendedKeyUsage=clientAuth'
  # Service-account token signing key (ES256).
  new_key "$pki/sa.key"
  openssl_quiet pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub"
  cp "$pki/ca.crt" "$dir/ca.crt"
}

b64() { base64 -w0 <"$1"; }

write_kubeconfig() { # file user cert key
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: $apiserver_url
    certificate-authority-data: $(b64 "$dir/pki/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(b64 "$3")
    client-key-data: $(b64 "$4")
contexts:
- name: local
  context:
    cluster: local
    user: $2
    namespace: default
current-context: local
EOF
  chmod 600 "$1"
}

# ---------------------------------------------------------------------------------------------
# processes

# Starts a server in the background with its output in logs/NAME.log and records it in pids.
launch() { # name binary args...
  local name=$1 pid
  shift
  "$@" </dev/null >>"$dir/logs/$name.log" 2>&1 &
  pid=$!
  echo "$name $pid $(proc_start "$pid")" >>"$dir/pids"
  last_pid=$pid
}

# Polls CHECK (a command) every 100 ms until it succeeds, failing if PID dies or time runs out.
wait_ready() { # name pid check...
  local name=$1 pid=$2 deadline=$(($(now_ms) + start_timeout * 1000))
  shift 2
  until "$@" >/dev/null 2>&1; do
    if ! alive "$pid"; then
      log "$name exited during start-up; last lines of $dir/logs/$name.log:"
      tail -n 30 "$dir/logs/$name.log" >&2 || true
      return 1
    fi
    if (($(now_ms) > deadline)); then
      log "$name not ready after ${start_timeout}s; last lines of $dir/logs/$name.log:"
      tail -n 30 "$dir/logs/$name.log" >&2 || true
      return 1
    fi
    sleep 0.1
  done
}

# After a failed start: true if it failed because its port was taken meanwhile. Either way, the
# attempt's log is set aside and the dead process dropped from pids.
bind_failed() { # name pid
  alive "$2" && return 1 # timed out; still running, so left in pids for stop
  local log=$dir/logs/$1.log rc=1
  grep -qi 'address already in use' "$log" 2>/dev/null && rc=0
  mv "$log" "$log.failed-$(date +%s%N)"
  sed -i "/^$1 $2 /d" "$dir/pids"
  return "$rc"
}

admin_curl() { # url-path
  curl -sf --max-time 5 --cacert "$dir/pki/ca.crt" --cert "$dir/pki/admin.crt" \
    --key "$dir/pki/admin.key" "$apiserver_url$1"
}

start_etcd() {
  local attempt
  for attempt in 1 2 3; do
    etcd_port=$(free_port)
    local peer_port
    peer_port=$(free_port)
    etcd_url=http://127.0.0.1:$etcd_port
    launch etcd "$bin/etcd" --name=test --data-dir="$dir/etcd" \
      --listen-client-urls="$etcd_url" --advertise-client-urls="$etcd_url" \
      --listen-peer-urls="http://127.0.0.1:$peer_port" \
      --initial-advertise-peer-urls="http://127.0.0.1:$peer_port" \
      --initial-cluster="test=http://127.0.0.1:$peer_port" \
      --unsafe-no-fsync --log-level=warn
    wait_ready etcd "$last_pid" curl -sf --max-time 2 "$etcd_url/health" && return 0
    bind_failed etcd "$last_pid" && [ "$attempt" -lt 3 ] || return 1
    log "etcd: port taken, retrying"
    rm -rf "$dir/etcd"
  done
}

# Without --advertise-address, kube-apiserver derives one from the default route and refuses to
# start on a host without one. Loopback is accepted as long as no endpoint reconciler tries to
# publish it in the "kubernetes" Endpoints (--endpoint-reconciler-type=none). Kubelet endpoints
# (for pod logs) are verified against the test CA: the test kit's log node serves with the serving
# certificate (testkit/src/node.rs).
start_apiserver() {
  local attempt audit=()
  if [ "${CONTROL_PLANE_AUDIT:-0}" = 1 ]; then
    cat >"$dir/audit-policy.yaml" <<'YAML'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
  - level: Metadata
YAML
    audit=(--audit-policy-file="$dir/audit-policy.yaml" --audit-log-path="$dir/logs/audit.log"
      --audit-log-format=json --audit-log-mode=blocking)
  fi
  for attempt in 1 2 3; do
    apiserver_port=$(free_port)
    apiserver_url=https://127.0.0.1:$apiserver_port
    launch kube-apiserver "$bin/kube-apiserver" \
      --etcd-servers="$etcd_url" \
      --bind-address=127.0.0.1 --secure-port="$apiserver_port" \
      --advertise-address=127.0.0.1 --endpoint-reconciler-type=none \
      --tls-cert-file="$dir/pki/serving.crt" --tls-private-key-file="$dir/pki/serving.key" \
      --client-ca-file="$dir/pki/ca.crt" \
      --kubelet-certificate-authority="$dir/pki/ca.crt" \
      --authorization-mode=RBAC \
      --service-account-issuer=https://kubernetes.default.svc.cluster.local \
      --service-account-key-file="$dir/pki/sa.pub" \
      --service-account-signing-key-file="$dir/pki/sa.key" \
      --service-cluster-ip-range=10.0.0.0/24 \
      --allow-privileged=true --profiling=false --v=1 "${audit[@]}"
    wait_ready kube-apiserver "$last_pid" admin_curl /readyz && return 0
    bind_failed kube-apiserver "$last_pid" && [ "$attempt" -lt 3 ] || return 1
    log "kube-apiserver: port taken, retrying"
  done
}

start_controller_manager() {
  local attempt
  write_kubeconfig "$dir/pki/kcm.kubeconfig" system:kube-controller-manager \
    "$dir/pki/kcm.crt" "$dir/pki/kcm.key"
  for attempt in 1 2 3; do
    kcm_port=$(free_port)
    launch kube-controller-manager "$bin/kube-controller-manager" \
      --kubeconfig="$dir/pki/kcm.kubeconfig" \
      --bind-address=127.0.0.1 --secure-port="$kcm_port" \
      --tls-cert-file="$dir/pki/serving.crt" --tls-private-key-file="$dir/pki/serving.key" \
      --controllers="$(
        IFS=,
        echo "${controllers[*]}"
      )" \
      --use-service-account-credentials=true \
      --service-account-private-key-file="$dir/pki/sa.key" \
      --root-ca-file="$dir/pki/ca.crt" \
      --enable-hostpath-provisioner=true \
      --leader-elect=false --profiling=false --v=1
    kcm_pid=$last_pid
    wait_ready kube-controller-manager "$kcm_pid" curl -sf --max-time 2 \
      --cacert "$dir/pki/ca.crt" "https://127.0.0.1:$kcm_port/healthz" && return 0
    bind_failed kube-controller-manager "$last_pid" && [ "$attempt" -lt 3 ] || return 1
    log "kube-controller-manager: port taken, retrying"
  done
}

# ---------------------------------------------------------------------------------------------
# the CSI stack (--csi)

csi_names=(a b)
csi_driver_name() { echo "$1.csi.storageclass-migrate.test"; }
csi_sidecars="snapshot-controller csi-provisioner-a csi-snapshotter-a csi-provisioner-b csi-snapshotter-b"
csi_drivers="csi-driver-a csi-driver-b"

kubectl_admin() { "$bin/kubectl" --kubeconfig="$dir/admin.kubeconfig" "$@"; }

start_csi() {
  local sidecars driver_dir n name root
  { read -r sidecars && read -r driver_dir; } < <("$script_dir/build-csi.sh") ||
    die "scripts/build-csi.sh failed"
  log "CSI stack binaries in $sidecars and $driver_dir"

  # The snapshot CRDs before anything watches them (the provisioner sweeps snapshot finalizers).
  kubectl_admin apply --server-side -f "$sidecars/crds" >/dev/null
  kubectl_admin wait --for=condition=Established --timeout=60s \
    crd/volumesnapshotclasses.snapshot.storage.k8s.io \
    crd/volumesnapshotcontents.snapshot.storage.k8s.io \
    crd/volumesnapshots.snapshot.storage.k8s.io >/dev/null

  for n in "${csi_names[@]}"; do
    name=$(csi_driver_name "$n")
    root=$dir/csi/$name
    mkdir -p "$root"
    launch "csi-driver-$n" "$driver_dir/csi-test-driver" --name="$name" \
      --socket="$root/csi.sock" --root="$root"
    wait_ready "csi-driver-$n" "$last_pid" test -S "$root/csi.sock" || return 1
    kubectl_admin apply -f - >/dev/null <<EOF
apiVersion: storage.k8s.io/v1
kind: CSIDriver
metadata: {name: $name}
spec: {attachRequired: false, podInfoOnMount: false}
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: csi-$n}
provisioner: $name
reclaimPolicy: Delete
volumeBindingMode: Immediate
---
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshotClass
metadata:
  name: csi-$n
  annotations: {snapshot.storage.kubernetes.io/is-default-class: "true"}
driver: $name
deletionPolicy: Delete
EOF
    launch "csi-provisioner-$n" "$sidecars/csi-provisioner" --csi-address="$root/csi.sock" \
      --kubeconfig="$dir/admin.kubeconfig" --leader-election=false \
      --extra-create-metadata \
      --kube-api-qps=50 --kube-api-burst=100 --retry-interval-max=30s --v=2
    launch "csi-snapshotter-$n" "$sidecars/csi-snapshotter" --csi-address="$root/csi.sock" \
      --kubeconfig="$dir/admin.kubeconfig" --leader-election=false \
      --kube-api-qps=50 --kube-api-burst=100 --retry-interval-max=30s --v=2
  done
  # Without the VolumeGroupSnapshot CRDs, which nothing here uses, the controller would look for
  # them for 30 s before it takes any snapshot: the feature is off instead.
  launch snapshot-controller "$sidecars/snapshot-controller" \
    --kubeconfig="$dir/admin.kubeconfig" --leader-election=false \
    --feature-gates=CSIVolumeGroupSnapshot=false \
    --kube-api-qps=50 --kube-api-burst=100 --retry-interval-max=30s --v=2

  # Ready when a claim of each class is provisioned (and deleted again with its directory).
  for n in "${csi_names[@]}"; do
    kubectl_admin apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: csi-$n-start-up-check, namespace: default}
spec:
  storageClassName: csi-$n
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Mi}}
EOF
  done
  for n in "${csi_names[@]}"; do
    kubectl_admin wait --for=jsonpath='{.status.phase}'=Bound --timeout="${start_timeout}s" \
      "pvc/csi-$n-start-up-check" -n default >/dev/null || {
      log "claim of class csi-$n not provisioned; last lines of $dir/logs/csi-provisioner-$n.log:"
      tail -n 30 "$dir/logs/csi-provisioner-$n.log" >&2 || true
      return 1
    }
  done
  kubectl_admin delete pvc -n default csi-a-start-up-check csi-b-start-up-check \
    --wait=true --timeout=60s >/dev/null
}

watchdog() { # dir owner-pid owner-start remove-dir
  dir=$1
  local owner=$2 owner_start=$3 remove=$4 sleeper=
  trap '[ -z "$sleeper" ] || kill "$sleeper" 2>/dev/null; exit 0' TERM INT
  while is_ours "$owner" "$owner_start"; do
    sleep 1 &
    sleeper=$!
    wait "$sleeper" || true
    sleeper=
  done
  trap - TERM INT
  log "owner process $owner has exited; stopping"
  stop_all
  if [ "$remove" = 1 ] && [ -f "$dir/env" ]; then
    rm -rf "$dir"
  fi
}

# Sends SIGNAL to the recorded processes named in the arguments; waits up to GRACE seconds for
# them to exit. Returns non-zero if some are still running.
signal_and_wait() { # signal grace names...
  local sig=$1 grace=$2 name pid start deadline alive
  shift 2
  while read -r name pid start; do
    [[ " $* " == *" $name "* ]] || continue
    [ "$pid" = "$$" ] && continue # a watchdog stopping the control plane
    if is_ours "$pid" "$start"; then kill "-$sig" "$pid" 2>/dev/null || true; fi
  done <"$dir/pids"
  deadline=$(($(now_ms) + grace * 1000))
  while :; do
    alive=0
    while read -r name pid start; do
      [[ " $* " == *" $name "* ]] || continue
      [ "$pid" = "$$" ] && continue
      if is_ours "$pid" "$start"; then alive=1; fi
    done <"$dir/pids"
    [ "$alive" = 0 ] && return 0
    (($(now_ms) > deadline)) && return 1
    sleep 0.05
  done
}

stop_all() {
  [ -f "$dir/pids" ] || return 0
  local t0 group
  t0=$(now_ms)
  # Controller manager and apiserver first, so neither logs a storm of etcd errors.
  # The CSI sidecars before their drivers, all before the servers they talk to.
  for group in "watchdog $csi_sidecars" "$csi_drivers" \
    "kube-controller-manager kube-apiserver" "etcd"; do
    # shellcheck disable=SC2086 # group is a list of names
    if ! signal_and_wait TERM "$stop_grace" $group; then
      log "still running after ${stop_grace}s: sending KILL to $group"
      # shellcheck disable=SC2086
      signal_and_wait KILL 10 $group || die "processes of $dir survived KILL"
    fi
  done
  # They have exited; whoever inherited them (usually init) reaps them shortly. Wait for that,
  # so that nothing of ours, not even a zombie, is left in the process table.
  local name pid start deadline=$(($(now_ms) + 5000))
  while read -r name pid start; do
    [ "$pid" = "$$" ] && continue
    while [ "$(proc_start "$pid" 2>/dev/null)" = "$start" ] && (($(now_ms) < deadline)); do
      sleep 0.05
    done
  done <"$dir/pids"
  mv "$dir/pids" "$dir/pids.stopped"
  log "stopped in $(seconds_since "$t0")"
}

cmd_start() {
  local owner='' remove=0 csi=0
  dir=${1:-}
  [ -n "$dir" ] || usage
  shift
  while [ $# -gt 0 ]; do
    case $1 in
    --owner-pid)
      owner=${2:?--owner-pid needs a PID}
      shift 2
      ;;
    --remove-dir)
      remove=1
      shift
      ;;
    --csi)
      csi=1
      shift
      ;;
    *) usage ;;
    esac
  done
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  [[ $dir == *[\'\ ]* ]] && die "DIR must not contain quotes or spaces: $dir"
  if [ -f "$dir/pids" ]; then
    die "$dir already has a control plane (stop it first)"
  fi
  local owner_start=''
  if [ -n "$owner" ]; then
    owner_start=$(proc_start "$owner") || die "owner process $owner does not exist"
  fi

  local t0 t
  t0=$(now_ms)
  if [ -n "${CONTROL_PLANE_BIN_DIR:-}" ]; then
    bin=$CONTROL_PLANE_BIN_DIR
  else
    bin=$("$script_dir/build-control-plane.sh")
  fi
  for b in etcd kube-apiserver kube-controller-manager kubectl; do
    [ -x "$bin/$b" ] || die "missing $bin/$b"
  done
  log "binaries in $bin ($(seconds_since "$t0"))"

  rm -rf "$dir/etcd" "$dir/logs" "$dir/pki" "$dir/env" "$dir/admin.kubeconfig" "$dir/csi"
  mkdir -p "$dir/logs"
  : >"$dir/pids"
  # From here on, a failure stops whatever was already started.
  trap 'stop_all >/dev/null 2>&1 || true' EXIT

  t=$(now_ms)
  make_pki
  log "certificates generated in $(seconds_since "$t")"

  t=$(now_ms)
  start_etcd || die "etcd did not start"
  log "etcd ready in $(seconds_since "$t") at $etcd_url"

  t=$(now_ms)
  start_apiserver || die "kube-apiserver did not start"
  log "kube-apiserver ready in $(seconds_since "$t") at $apiserver_url"
  write_kubeconfig "$dir/admin.kubeconfig" admin "$dir/pki/admin.crt" "$dir/pki/admin.key"

  t=$(now_ms)
  start_controller_manager || die "kube-controller-manager did not start"
  # Healthy and actually reconciling: the serviceaccount controller has created the default
  # ServiceAccount and the root CA publisher its ConfigMap.
  wait_ready kube-controller-manager "$kcm_pid" \
    admin_curl /api/v1/namespaces/default/serviceaccounts/default ||
    die "kube-controller-manager is not reconciling"
  wait_ready kube-controller-manager "$kcm_pid" \
    admin_curl /api/v1/namespaces/default/configmaps/kube-root-ca.crt ||
    die "kube-controller-manager is not reconciling"
  log "kube-controller-manager ready in $(seconds_since "$t")"

  local csi_env=''
  if [ "$csi" = 1 ]; then
    t=$(now_ms)
    start_csi || die "the CSI stack did not start"
    csi_env="export CSI_ROOT='$dir/csi'"
    log "CSI stack ready in $(seconds_since "$t")"
  fi

  cat >"$dir/env" <<EOF
export CONTROL_PLANE_DIR='$dir'
export KUBECONFIG='$dir/admin.kubeconfig'
export APISERVER_URL='$apiserver_url'
export CA_CERT='$dir/ca.crt'
export ETCD_URL='$etcd_url'
export KUBECTL='$bin/kubectl'
export CONTROL_PLANE_BIN_DIR='$bin'
$csi_env
EOF

  if [ -n "$owner" ]; then
    nohup "${BASH_SOURCE[0]}" __watchdog "$dir" "$owner" "$owner_start" "$remove" \
      </dev/null >>"$dir/logs/watchdog.log" 2>&1 &
    echo "watchdog $! $(proc_start $!)" >>"$dir/pids"
  fi
  trap - EXIT
  log "ready in $(seconds_since "$t0") (source $dir/env)"
}

cmd_stop() {
  dir=${1:-}
  [ -n "$dir" ] || usage
  [ -d "$dir" ] || die "no such directory: $dir"
  if [ ! -f "$dir/pids" ]; then
    log "nothing running in $dir"
    return 0
  fi
  stop_all
}

cmd_status() {
  dir=${1:-}
  [ -n "$dir" ] || usage
  [ -f "$dir/pids" ] || {
    echo "not running"
    return 1
  }
  local name pid start rc=0
  while read -r name pid start; do
    if is_ours "$pid" "$start"; then
      echo "$name $pid running"
    else
      echo "$name $pid exited"
      rc=1
    fi
  done <"$dir/pids"
  [ -f "$dir/env" ] && cat "$dir/env"
  return "$rc"
}

case ${1:-} in
start)
  shift
  cmd_start "$@"
  ;;
stop)
  shift
  cmd_stop "$@"
  ;;
status)
  shift
  cmd_status "$@"
  ;;
__watchdog)
  shift
  watchdog "$@"
  ;;
*) usage ;;
esac
