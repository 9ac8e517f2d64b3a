package main

import (
	"context"
	"encoding/json"
	"log"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

type driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	name string
	root string
}

// A volume or snapshot id becomes a file name: nothing that could leave the root.
var validID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// defaultCapacity is reported when the claim asks for no size.
const defaultCapacity = 1 << 30

func logCalls(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	if err != nil {
		log.Printf("%s: %v", info.FullMethod, err)
	} else if info.FullMethod != "/csi.v1.Identity/Probe" {
		log.Printf("%s: ok", info.FullMethod)
	}
	return resp, err
}

func (d *driver) volumeDir(id string) string    { return filepath.Join(d.root, "volumes", id) }
func (d *driver) snapshotFile(id string) string { return filepath.Join(d.root, "snapshots", id+".tar") }
func (d *driver) attributesFile(id string) string {
	return filepath.Join(d.root, "attributes", id+".json")
}

func checkID(kind, id string) error {
	if !validID.MatchString(id) {
		return status.Errorf(codes.InvalidArgument, "invalid %s id %q", kind, id)
	}
	return nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// Identity service.

func (d *driver) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: d.name, VendorVersion: version}, nil
}

// Only the controller service: no VOLUME_ACCESSIBILITY_CONSTRAINTS, so the provisioner asks for
// no topology (there are no nodes).
func (d *driver) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	return &csi.GetPluginCapabilitiesResponse{Capabilities: []*csi.PluginCapability{{
		Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{
			Type: csi.PluginCapability_Service_CONTROLLER_SERVICE,
		}},
	}}}, nil
}

func (d *driver) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	return &csi.ProbeResponse{}, nil
}

// Controller service.

func (d *driver) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	var caps []*csi.ControllerServiceCapability
	for _, c := range []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
		csi.ControllerServiceCapability_RPC_MODIFY_VOLUME,
	} {
		caps = append(caps, &csi.ControllerServiceCapability{
			Type: &csi.ControllerServiceCapability_Rpc{Rpc: &csi.ControllerServiceCapability_RPC{Type: c}},
		})
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

// CreateVolume names the volume after the request (pvc-<claim uid>), so a retried request finds
// the volume it already made.
func (d *driver) CreateVolume(_ context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	id := req.GetName()
	if err := checkID("volume", id); err != nil {
		return nil, err
	}
	capacity := req.GetCapacityRange().GetRequiredBytes()
	if capacity == 0 {
		capacity = defaultCapacity
	}
	// The class parameter capacityStep rounds the size up to a multiple of it, as storage
	// systems that allocate in GiB do: the volume is then larger than the claim asked.
	if step, err := strconv.ParseInt(req.GetParameters()["capacityStep"], 10, 64); err == nil && step > 0 {
		capacity = (capacity + step - 1) / step * step
	}
	dir := d.volumeDir(id)
	source := req.GetVolumeContentSource()
	if !exists(dir) {
		tmp := dir + ".creating"
		if err := os.RemoveAll(tmp); err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
		if err := d.fill(tmp, source); err != nil {
			os.RemoveAll(tmp)
			return nil, err
		}
		if err := os.Rename(tmp, dir); err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
		if err := d.writeAttributes(id, req.GetMutableParameters()); err != nil {
			return nil, err
		}
		if err := d.writeOrigin(id, req.GetParameters(), capacity); err != nil {
			return nil, err
		}
	}
	return &csi.CreateVolumeResponse{Volume: &csi.Volume{
		VolumeId:      id,
		CapacityBytes: capacity,
		ContentSource: source,
		VolumeContext: map[string]string{"directory": dir},
	}}, nil
}

// fill makes dir: empty, or with the data of a snapshot or a volume of this driver.
func (d *driver) fill(dir string, source *csi.VolumeContentSource) error {
	if snap := source.GetSnapshot(); snap != nil {
		id := snap.GetSnapshotId()
		if err := checkID("snapshot", id); err != nil {
			return err
		}
		if !exists(d.snapshotFile(id)) {
			return status.Errorf(codes.NotFound, "snapshot %s not found", id)
		}
		return internal(extract(d.snapshotFile(id), dir))
	}
	if vol := source.GetVolume(); vol != nil {
		id := vol.GetVolumeId()
		if err := checkID("volume", id); err != nil {
			return err
		}
		if !exists(d.volumeDir(id)) {
			return status.Errorf(codes.NotFound, "source volume %s not found", id)
		}
		archive := dir + ".clone.tar"
		defer os.Remove(archive)
		if err := archiveDir(d.volumeDir(id), archive); err != nil {
			return internal(err)
		}
		return internal(extract(archive, dir))
	}
	// 0777: the directory is mounted into pods that may run as any user.
	if err := os.Mkdir(dir, 0o777); err != nil {
		return internal(err)
	}
	return internal(os.Chmod(dir, 0o777))
}

func internal(err error) error {
	if err == nil {
		return nil
	}
	return status.Error(codes.Internal, err.Error())
}

func (d *driver) DeleteVolume(_ context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	id := req.GetVolumeId()
	if err := checkID("volume", id); err != nil {
		return nil, err
	}
	if hold := filepath.Join(d.root, "holds", id); exists(hold) {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is held (%s exists)", id, hold)
	}
	if err := os.RemoveAll(d.volumeDir(id)); err != nil {
		return nil, internal(err)
	}
	if err := os.Remove(d.attributesFile(id)); err != nil && !os.IsNotExist(err) {
		return nil, internal(err)
	}
	return &csi.DeleteVolumeResponse{}, nil
}

func (d *driver) ValidateVolumeCapabilities(_ context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if err := checkID("volume", req.GetVolumeId()); err != nil {
		return nil, err
	}
	if !exists(d.volumeDir(req.GetVolumeId())) {
		return nil, status.Errorf(codes.NotFound, "volume %s not found", req.GetVolumeId())
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeCapabilities: req.GetVolumeCapabilities(),
	}}, nil
}

// ControllerModifyVolume records the parameters of the claim's VolumeAttributesClass; the data
// stays where it is.
func (d *driver) ControllerModifyVolume(_ context.Context, req *csi.ControllerModifyVolumeRequest) (*csi.ControllerModifyVolumeResponse, error) {
	id := req.GetVolumeId()
	if err := checkID("volume", id); err != nil {
		return nil, err
	}
	if !exists(d.volumeDir(id)) {
		return nil, status.Errorf(codes.NotFound, "volume %s not found", id)
	}
	if err := d.writeAttributes(id, req.GetMutableParameters()); err != nil {
		return nil, err
	}
	return &csi.ControllerModifyVolumeResponse{}, nil
}

func (d *driver) writeAttributes(id string, params map[string]string) error {
	if params == nil {
		params = map[string]string{}
	}
	data, err := json.Marshal(params)
	if err != nil {
		return internal(err)
	}
	return internal(os.WriteFile(d.attributesFile(id), data, 0o644))
}

// origin is what <root>/origins/<volume id>.json records of a volume's creation. It stays when
// the volume is deleted, so that a test can tell which volumes its claims had and whether each
// was deleted (no directory) or is still there.
type origin struct {
	Namespace  string            `json:"namespace"`
	Claim      string            `json:"claim"`
	PV         string            `json:"pv"`
	Parameters map[string]string `json:"parameters"`
	Capacity   int64             `json:"capacity"`
}

// The parameters that external-provisioner adds with --extra-create-metadata.
const (
	claimNameKey      = "csi.storage.k8s.io/pvc/name"
	claimNamespaceKey = "csi.storage.k8s.io/pvc/namespace"
	pvNameKey         = "csi.storage.k8s.io/pv/name"
)

func (d *driver) originFile(id string) string { return filepath.Join(d.root, "origins", id+".json") }

func (d *driver) writeOrigin(id string, params map[string]string, capacity int64) error {
	o := origin{
		Namespace:  params[claimNamespaceKey],
		Claim:      params[claimNameKey],
		PV:         params[pvNameKey],
		Parameters: map[string]string{},
		Capacity:   capacity,
	}
	for k, v := range params {
		if k != claimNameKey && k != claimNamespaceKey && k != pvNameKey {
			o.Parameters[k] = v
		}
	}
	data, err := json.Marshal(o)
	if err != nil {
		return internal(err)
	}
	return internal(os.WriteFile(d.originFile(id), data, 0o644))
}

// capacityOf is the size the volume was created with; 0 when unknown.
func (d *driver) capacityOf(id string) int64 {
	data, err := os.ReadFile(d.originFile(id))
	if err != nil {
		return 0
	}
	var o origin
	if json.Unmarshal(data, &o) != nil {
		return 0
	}
	return o.Capacity
}

// CreateSnapshot archives the source volume's directory; the snapshot is named after the request
// (snapshot-<content uid>), so a retried request finds the archive it already wrote.
func (d *driver) CreateSnapshot(_ context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	id, source := req.GetName(), req.GetSourceVolumeId()
	if err := checkID("snapshot", id); err != nil {
		return nil, err
	}
	if err := checkID("volume", source); err != nil {
		return nil, err
	}
	if !exists(d.volumeDir(source)) {
		return nil, status.Errorf(codes.NotFound, "source volume %s not found", source)
	}
	file := d.snapshotFile(id)
	if !exists(file) {
		if err := archiveDir(d.volumeDir(source), file+".tmp"); err != nil {
			os.Remove(file + ".tmp")
			return nil, internal(err)
		}
		if err := os.Rename(file+".tmp", file); err != nil {
			return nil, internal(err)
		}
	}
	// The volume it was taken of, kept after the snapshot is deleted (as origins/ are), so that
	// a test can tell which archives a volume's snapshots left.
	if err := os.WriteFile(filepath.Join(d.root, "snapshot-sources", id), []byte(source), 0o644); err != nil {
		return nil, internal(err)
	}
	info, err := os.Stat(file)
	if err != nil {
		return nil, internal(err)
	}
	return &csi.CreateSnapshotResponse{Snapshot: &csi.Snapshot{
		SnapshotId:     id,
		SourceVolumeId: source,
		// What a volume restored from it needs: the source volume's size, as a block snapshot's.
		SizeBytes:    d.capacityOf(source),
		CreationTime: timestamppb.New(info.ModTime().Truncate(time.Second)),
		ReadyToUse:   true,
	}}, nil
}

func (d *driver) DeleteSnapshot(_ context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	id := req.GetSnapshotId()
	if err := checkID("snapshot", id); err != nil {
		return nil, err
	}
	if err := os.Remove(d.snapshotFile(id)); err != nil && !os.IsNotExist(err) {
		return nil, internal(err)
	}
	return &csi.DeleteSnapshotResponse{}, nil
}
