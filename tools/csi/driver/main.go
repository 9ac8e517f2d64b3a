// csi-test-driver is the CSI driver that the local control plane runs for the tests
// (scripts/control-plane.sh start DIR --csi). It serves the Identity and Controller services of
// the CSI spec over a unix socket, for external-provisioner and csi-snapshotter, and keeps every
// volume as a plain directory so that tests and the hook runner can read and write its data:
//
//	<root>/volumes/<volume id>           a volume (the id is the name the provisioner asks for,
//	                                     pvc-<claim uid>, so it is also the PV's volumeHandle)
//	<root>/snapshots/<snapshot id>.tar   a snapshot: a tar archive of the volume's directory
//	<root>/attributes/<volume id>.json   the mutable parameters last applied to the volume (from a
//	                                     VolumeAttributesClass, at creation or by ModifyVolume)
//	<root>/origins/<volume id>.json      the claim and parameters it was created for; kept after
//	                                     the volume is deleted
//	<root>/holds/<volume id>             while present, DeleteVolume fails (FailedPrecondition),
//	                                     as for a disk still attached to a node
//
// CreateVolume makes an empty directory, or fills it from a snapshot or another volume of this
// driver (a clone); DeleteVolume removes it. There is no Node service: the tests have no kubelet,
// the hook runner mounts the directories itself. One program serves any number of drivers, one
// process per name.
package main

import (
	"flag"
	"log"
	"net"
	"os"
	"path/filepath"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
)

// version is reported by GetPluginInfo.
const version = "1.0.0"

func main() {
	name := flag.String("name", "", "driver name, as in the CSIDriver object and StorageClass provisioner")
	socket := flag.String("socket", "", "path of the unix socket to serve on (replaced if present)")
	root := flag.String("root", "", "directory holding volumes/, snapshots/, attributes/, origins/ and holds/")
	flag.Parse()
	if *name == "" || *socket == "" || *root == "" {
		flag.Usage()
		os.Exit(2)
	}
	d := &driver{name: *name, root: *root}
	for _, sub := range []string{"volumes", "snapshots", "snapshot-sources", "attributes", "origins", "holds"} {
		if err := os.MkdirAll(filepath.Join(*root, sub), 0o755); err != nil {
			log.Fatal(err)
		}
	}
	if err := os.Remove(*socket); err != nil && !os.IsNotExist(err) {
		log.Fatal(err)
	}
	listener, err := net.Listen("unix", *socket)
	if err != nil {
		log.Fatal(err)
	}
	server := grpc.NewServer(grpc.UnaryInterceptor(logCalls))
	csi.RegisterIdentityServer(server, d)
	csi.RegisterControllerServer(server, d)
	log.Printf("driver %s serving on %s, volumes under %s", *name, *socket, *root)
	log.Fatal(server.Serve(listener))
}
