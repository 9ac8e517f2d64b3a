package main

import (
	"archive/tar"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// archiveDir writes the tree under dir (regular files, directories and symlinks, with their
// owners, modes and times) as a tar archive to file.
func archiveDir(dir, file string) error {
	out, err := os.Create(file)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(out)
	err = filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		link := ""
		if info.Mode()&os.ModeSymlink != 0 {
			if link, err = os.Readlink(path); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		// PAX keeps times to the nanosecond, access times included.
		hdr.Format = tar.FormatPAX
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if !info.Mode().IsRegular() {
			return nil
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	})
	if err == nil {
		err = tw.Close()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}

type times struct {
	path          string
	access, modif time.Time
}

// extract recreates under dir (which must not exist) the tree archived in file, with each entry's
// owner, mode and times, as a block-level snapshot would.
func extract(file, dir string) error {
	in, err := os.Open(file)
	if err != nil {
		return err
	}
	defer in.Close()
	tr := tar.NewReader(in)
	var stamps []times
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			// Last entries first: a directory's times are set after its entries are made.
			for i := len(stamps) - 1; i >= 0; i-- {
				if err := setTimes(stamps[i]); err != nil {
					return err
				}
			}
			return nil
		}
		if err != nil {
			return err
		}
		target := filepath.Join(dir, hdr.Name)
		if target != dir && !strings.HasPrefix(target, dir+string(filepath.Separator)) {
			return fmt.Errorf("archive entry %q leaves the volume", hdr.Name)
		}
		mode := os.FileMode(hdr.Mode).Perm()
		special := os.FileMode(0)
		if hdr.Mode&04000 != 0 {
			special |= os.ModeSetuid
		}
		if hdr.Mode&02000 != 0 {
			special |= os.ModeSetgid
		}
		if hdr.Mode&01000 != 0 {
			special |= os.ModeSticky
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, mode); err != nil {
				return err
			}
			if err := os.Chmod(target, mode); err != nil {
				return err
			}
		case tar.TypeSymlink:
			if err := os.Symlink(hdr.Linkname, target); err != nil {
				return err
			}
		case tar.TypeReg:
			f, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
		default:
			return fmt.Errorf("archive entry %q: unsupported type %c", hdr.Name, hdr.Typeflag)
		}
		if err := os.Lchown(target, hdr.Uid, hdr.Gid); err != nil {
			return err
		}
		// A change of owner clears setuid and setgid: the mode goes on after it.
		if hdr.Typeflag != tar.TypeSymlink {
			if err := os.Chmod(target, mode|special); err != nil {
				return err
			}
		}
		access := hdr.AccessTime
		if access.IsZero() {
			access = hdr.ModTime
		}
		stamps = append(stamps, times{target, access, hdr.ModTime})
	}
}

// setTimes sets an entry's access and modification times, a symlink's own.
func setTimes(t times) error {
	spec := []unix.Timespec{unix.NsecToTimespec(t.access.UnixNano()), unix.NsecToTimespec(t.modif.UnixNano())}
	return unix.UtimesNanoAt(unix.AT_FDCWD, t.path, spec, unix.AT_SYMLINK_NOFOLLOW)
}
