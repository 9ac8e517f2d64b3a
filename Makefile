# make demo            build, start a local control plane, move a claim from class standard to fast
# make test            run all tests against one local control plane (ARGS go to cargo test)
# make control-plane   build (or reuse) etcd, kube-apiserver, kube-controller-manager, kubectl
.PHONY: demo test control-plane

demo:
	scripts/demo.sh

test:
	scripts/test.sh $(ARGS)

control-plane:
	scripts/build-control-plane.sh
