# make demo            build, start a local control plane, move a claim from class standard to fast
# make demo-flux       the same move through a Flux HelmRelease (source- and helm-controller run locally)
# make demo-csi        a move between two classes of one CSI driver, the data kept by a VolumeSnapshot
# make test            run all tests against one local control plane (ARGS go to cargo test);
#                      KUBERNETES_VERSION=1.33 for the oldest supported version instead of 1.37
# make test-versions   the control-plane tests against Kubernetes 1.33 (make test covers 1.37)
# make control-plane   build (or reuse) etcd, kube-apiserver, kube-controller-manager, kubectl
.PHONY: demo demo-flux demo-csi test test-versions control-plane

# The oldest supported Kubernetes minor (tools/k8s-1.33); the newest is tools/k8s, make test's.
OLDEST_KUBERNETES = 1.33
# The test files that run the binary against the control plane.
VERSION_TESTS = --test control_plane --test migrate --test preflight --test reliability --test keep \
  --test statefulset --test csi --test snapshot --test e2e --test flux

demo:
	scripts/demo.sh

demo-flux:
	scripts/demo-flux.sh

demo-csi:
	scripts/demo-csi.sh

test:
	scripts/test.sh $(ARGS)

test-versions:
	KUBERNETES_VERSION=$(OLDEST_KUBERNETES) scripts/test.sh $(VERSION_TESTS) $(ARGS)

control-plane:
	scripts/build-control-plane.sh
