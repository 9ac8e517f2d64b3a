//! What an entry is, the attributes kept for it, and how they are put on the copy: owner first
//! (a chown clears setuid, setgid and file capabilities), then extended attributes, then the mode,
//! then the times (last, so that nothing after them changes the modification time).

use std::fs::Metadata;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use rustix::fs::{AtFlags, CWD, Gid, Mode, Timespec, Timestamps, Uid, XattrFlags};

/// The kinds of entries the copy knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// Block or character device, FIFO or socket: skipped with a warning.
    Special(&'static str),
}

impl Kind {
    pub fn of(meta: &Metadata) -> Self {
        let t = meta.file_type();
        if t.is_file() {
            Kind::File
        } else if t.is_dir() {
            Kind::Dir
        } else if t.is_symlink() {
            Kind::Symlink
        } else if t.is_fifo() {
            Kind::Special("FIFO")
        } else if t.is_socket() {
            Kind::Special("socket")
        } else if t.is_block_device() {
            Kind::Special("block device")
        } else if t.is_char_device() {
            Kind::Special("character device")
        } else {
            Kind::Special("entry of unknown kind")
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::File => "regular file",
            Kind::Dir => "directory",
            Kind::Symlink => "symlink",
            Kind::Special(name) => name,
        }
    }
}

/// The attributes of an entry that the copy keeps and the verification compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attrs {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits with setuid, setgid and sticky (`mode & 0o7777`).
    pub mode: u32,
    pub atime: (i64, i64),
    pub mtime: (i64, i64),
}

impl Attrs {
    pub fn of(meta: &Metadata) -> Self {
        Self {
            uid: meta.uid(),
            gid: meta.gid(),
            mode: meta.mode() & 0o7777,
            atime: (meta.atime(), meta.atime_nsec()),
            mtime: (meta.mtime(), meta.mtime_nsec()),
        }
    }

    fn timestamps(&self) -> Timestamps {
        let spec = |(tv_sec, tv_nsec): (i64, i64)| Timespec { tv_sec, tv_nsec };
        Timestamps {
            last_access: spec(self.atime),
            last_modification: spec(self.mtime),
        }
    }
}

/// Whether a chown that was refused (not root, no CAP_CHOWN) is tolerated: the owners are then
/// left as they come, and the verification does not compare them.
pub fn may_skip_owner(error: &io::Error) -> bool {
    error.raw_os_error() == Some(rustix::io::Errno::PERM.raw_os_error())
        && !rustix::process::geteuid().is_root()
}

/// Owner, mode and times of an open regular file (xattrs come between, see [`copy_xattrs_fd`]).
pub fn set_owner_fd(fd: impl AsFd, attrs: &Attrs) -> io::Result<()> {
    let (uid, gid) = (Uid::from_raw(attrs.uid), Gid::from_raw(attrs.gid));
    rustix::fs::fchown(fd, Some(uid), Some(gid)).map_err(io::Error::from)
}

pub fn set_mode_fd(fd: impl AsFd, attrs: &Attrs) -> io::Result<()> {
    rustix::fs::fchmod(fd, Mode::from_raw_mode(attrs.mode)).map_err(io::Error::from)
}

pub fn set_times_fd(fd: impl AsFd, attrs: &Attrs) -> io::Result<()> {
    rustix::fs::futimens(fd, &attrs.timestamps()).map_err(io::Error::from)
}

/// Owner of a path, never following a symlink.
pub fn set_owner_path(path: &Path, attrs: &Attrs) -> io::Result<()> {
    let (uid, gid) = (Uid::from_raw(attrs.uid), Gid::from_raw(attrs.gid));
    rustix::fs::chownat(CWD, path, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(io::Error::from)
}

/// Mode of a directory (symlinks have none on Linux).
pub fn set_mode_path(path: &Path, attrs: &Attrs) -> io::Result<()> {
    rustix::fs::chmod(path, Mode::from_raw_mode(attrs.mode)).map_err(io::Error::from)
}

/// Times of a path, never following a symlink.
pub fn set_times_path(path: &Path, attrs: &Attrs) -> io::Result<()> {
    rustix::fs::utimensat(CWD, path, &attrs.timestamps(), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(io::Error::from)
}

/// Why extended attributes were not all copied, when that is not an error of the copy.
#[derive(Debug)]
pub enum XattrOutcome {
    /// All copied (or there were none).
    Copied,
    /// The target refused one: its filesystem has no xattrs, or not that namespace (the name and
    /// the reason are given); a warning, not a failure.
    Unsupported(String),
}

fn unsupported(error: &rustix::io::Errno) -> bool {
    use rustix::io::Errno;
    // EPERM: a namespace the target refuses for this kind of entry or this process (user.* on a
    // symlink, trusted.* without CAP_SYS_ADMIN).
    matches!(*error, Errno::NOTSUP | Errno::PERM | Errno::ACCESS)
}

/// The names in a list returned by listxattr: NUL-terminated, one after another.
fn names(list: &[u8]) -> impl Iterator<Item = &[u8]> {
    list.split(|b| *b == 0).filter(|n| !n.is_empty())
}

fn grow_list(len: usize) -> Vec<u8> {
    vec![0; len.max(256)]
}

/// Copies the extended attributes of `src` (an open file) onto `dst` (another).
pub fn copy_xattrs_fd(src: impl AsFd, dst: impl AsFd) -> io::Result<XattrOutcome> {
    let (src, dst) = (src.as_fd(), dst.as_fd());
    let mut list = [0u8; 1024];
    let list: Vec<u8> = match rustix::fs::flistxattr(src, &mut list[..]) {
        Ok(0) => return Ok(XattrOutcome::Copied),
        Ok(n) => list[..n].to_vec(),
        Err(rustix::io::Errno::RANGE) => {
            let mut big = grow_list(rustix::fs::flistxattr_query(src)?);
            let n = rustix::fs::flistxattr(src, &mut big[..])?;
            big.truncate(n);
            big
        }
        Err(rustix::io::Errno::NOTSUP) => return Ok(XattrOutcome::Copied),
        Err(e) => return Err(e.into()),
    };
    let mut outcome = XattrOutcome::Copied;
    for name in names(&list) {
        let value = read_value(
            |buf| rustix::fs::fgetxattr(src, name, buf),
            || rustix::fs::fgetxattr_query(src, name),
        )?;
        let Some(value) = value else { continue };
        if let Err(e) = rustix::fs::fsetxattr(dst, name, &value, XattrFlags::empty()) {
            if unsupported(&e) {
                outcome = XattrOutcome::Unsupported(format!(
                    "{}: {}",
                    String::from_utf8_lossy(name),
                    io::Error::from(e)
                ));
            } else {
                return Err(e.into());
            }
        }
    }
    Ok(outcome)
}

/// Copies the extended attributes of the path `src` onto `dst`, never following symlinks.
pub fn copy_xattrs_path(src: &Path, dst: &Path) -> io::Result<XattrOutcome> {
    let mut list = [0u8; 1024];
    let list: Vec<u8> = match rustix::fs::llistxattr(src, &mut list[..]) {
        Ok(0) => return Ok(XattrOutcome::Copied),
        Ok(n) => list[..n].to_vec(),
        Err(rustix::io::Errno::RANGE) => {
            let mut big = grow_list(rustix::fs::llistxattr_query(src)?);
            let n = rustix::fs::llistxattr(src, &mut big[..])?;
            big.truncate(n);
            big
        }
        Err(rustix::io::Errno::NOTSUP) => return Ok(XattrOutcome::Copied),
        Err(e) => return Err(e.into()),
    };
    let mut outcome = XattrOutcome::Copied;
    for name in names(&list) {
        let value = read_value(
            |buf| rustix::fs::lgetxattr(src, name, buf),
            || rustix::fs::lgetxattr_query(src, name),
        )?;
        let Some(value) = value else { continue };
        if let Err(e) = rustix::fs::lsetxattr(dst, name, &value, XattrFlags::empty()) {
            if unsupported(&e) {
                outcome = XattrOutcome::Unsupported(format!(
                    "{}: {}",
                    String::from_utf8_lossy(name),
                    io::Error::from(e)
                ));
            } else {
                return Err(e.into());
            }
        }
    }
    Ok(outcome)
}

/// One attribute's value; `None` when it went away meanwhile.
fn read_value(
    get: impl Fn(&mut [u8]) -> rustix::io::Result<usize>,
    query: impl Fn() -> rustix::io::Result<usize>,
) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 4096];
    loop {
        match get(&mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(rustix::io::Errno::RANGE) => buf = vec![0u8; query()?.max(buf.len() * 2)],
            Err(rustix::io::Errno::NODATA) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

/// The extended attributes of a path, sorted by name (for the verification and the tests).
pub fn list_xattrs(path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let len = match rustix::fs::llistxattr_query(path) {
        Ok(len) => len,
        Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut list = grow_list(len);
    let n = rustix::fs::llistxattr(path, &mut list[..])?;
    list.truncate(n);
    let mut out = Vec::new();
    for name in names(&list) {
        let value = read_value(
            |buf| rustix::fs::lgetxattr(path, name, buf),
            || rustix::fs::lgetxattr_query(path, name),
        )?;
        if let Some(value) = value {
            out.push((name.to_vec(), value));
        }
    }
    out.sort();
    Ok(out)
}
