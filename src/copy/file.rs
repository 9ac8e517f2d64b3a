//! The contents of a regular file: copied in the kernel where it can (`copy_file_range`, else
//! `sendfile`, else reads and writes through one buffer), data regions only when the source has
//! holes (`SEEK_DATA`/`SEEK_HOLE`), so that a sparse file stays sparse.

use std::cell::RefCell;
use std::ffi::OsString;
use std::fs::File;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use rustix::fs::{Mode, OFlags, SeekFrom};
use rustix::io::Errno;

/// Opens a file to read, never following a symlink, and without touching its access time where
/// this process may (owner or CAP_FOWNER): neither the source's nor the copy's atime changes.
pub fn open_to_read(path: &Path) -> io::Result<File> {
    let open = |flags: OFlags| {
        OpenOptions::new()
            .read(true)
            .custom_flags(flags.bits() as i32)
            .open(path)
    };
    match open(OFlags::NOFOLLOW | OFlags::NOATIME) {
        Err(e) if e.raw_os_error() == Some(Errno::PERM.raw_os_error()) => open(OFlags::NOFOLLOW),
        other => other,
    }
}

/// The names in a directory, read without touching its access time where this process may.
pub fn names_in(dir: &Path) -> io::Result<Vec<OsString>> {
    let open = |flags: OFlags| {
        rustix::fs::open(
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | flags,
            Mode::empty(),
        )
    };
    let fd = match open(OFlags::NOATIME) {
        Err(Errno::PERM) => open(OFlags::empty())?,
        other => other?,
    };
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(&fd)? {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(std::ffi::OsStr::from_bytes(&name).to_owned());
        }
    }
    Ok(names)
}

/// Size of the buffer of the read-and-write fallback and of the hashing reads.
pub const BUFFER: usize = 1 << 20;

thread_local! {
    static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's buffer of [`BUFFER`] bytes.
pub fn with_buffer<T>(f: impl FnOnce(&mut [u8]) -> T) -> T {
    BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        if buf.len() < BUFFER {
            buf.resize(BUFFER, 0);
        }
        f(&mut buf[..])
    })
}

/// Whether the file may have holes: fewer blocks allocated than its size needs.
pub fn may_be_sparse(meta: &std::fs::Metadata) -> bool {
    meta.blocks().saturating_mul(512) < meta.size()
}

/// Copies all of `src` into the empty file `dst`; returns the bytes of data copied (holes not
/// counted). `sparse`: skip the holes of the source, leaving them holes in the copy.
pub fn copy_contents(src: &File, dst: &File, len: u64, sparse: bool) -> io::Result<u64> {
    if !sparse {
        let copied = copy_range(src, dst, 0, None)?;
        return Ok(copied);
    }
    let mut copied = 0;
    let mut pos = 0u64;
    loop {
        let data = match rustix::fs::seek(src, SeekFrom::Data(pos)) {
            Ok(data) => data,
            Err(Errno::NXIO) => break,
            Err(Errno::INVAL | Errno::NOTSUP) if pos == 0 => {
                // No SEEK_DATA on this filesystem: a plain copy.
                return copy_range(src, dst, 0, None);
            }
            Err(e) => return Err(e.into()),
        };
        let hole = rustix::fs::seek(src, SeekFrom::Hole(data))?;
        copied += copy_range(src, dst, data, Some(hole - data))?;
        pos = hole;
    }
    // The trailing hole, and the size itself when the file ends with one.
    let end = pos.max(len);
    if dst.metadata()?.len() < end {
        dst.set_len(end)?;
    }
    Ok(copied)
}

/// Copies `len` bytes (or up to the end of the source, if `None`) from `offset` of `src` to the
/// same offset of `dst`.
fn copy_range(src: &File, dst: &File, offset: u64, len: Option<u64>) -> io::Result<u64> {
    let mut off_in = offset;
    let mut off_out = offset;
    let end = len.map(|l| offset + l);
    let remaining =
        |at: u64| end.map_or(1 << 30, |end| end.saturating_sub(at).min(1 << 30)) as usize;
    // copy_file_range: in the kernel, and a reflink where the filesystem shares extents.
    loop {
        let want = remaining(off_in);
        if want == 0 {
            break;
        }
        match rustix::fs::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), want) {
            Ok(0) => return Ok(off_in - offset),
            Ok(_) => {}
            Err(Errno::INTR) => {}
            Err(Errno::XDEV | Errno::NOSYS | Errno::OPNOTSUPP | Errno::INVAL | Errno::PERM) => {
                return Ok(off_in - offset + fallback(src, dst, off_in, end)?);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(off_in - offset)
}

/// Reads and writes through this thread's buffer, for filesystems that offer no in-kernel copy.
fn fallback(src: &File, dst: &File, offset: u64, end: Option<u64>) -> io::Result<u64> {
    with_buffer(|buf| {
        let mut at = offset;
        loop {
            let want = end.map_or(buf.len() as u64, |end| {
                end.saturating_sub(at).min(buf.len() as u64)
            }) as usize;
            if want == 0 {
                break;
            }
            let n = match src.read_at(&mut buf[..want], at) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            dst.write_all_at(&buf[..n], at)?;
            at += n as u64;
        }
        Ok(at - offset)
    })
}

/// BLAKE3 of a file's contents, read through this thread's buffer.
pub fn hash(file: &File) -> io::Result<blake3::Hash> {
    with_buffer(|buf| {
        let mut hasher = blake3::Hasher::new();
        let mut at = 0u64;
        loop {
            let n = match file.read_at(buf, at) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            hasher.update(&buf[..n]);
            at += n as u64;
        }
        Ok(hasher.finalize())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn plain_and_sparse_copies_keep_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let src_path = dir.path().join("src");
        let mut src = File::create(&src_path).unwrap();
        src.write_all(&[7u8; 10_000]).unwrap();
        src.set_len(8 << 20).unwrap();
        src.write_all_at(b"tail", (8 << 20) - 4).unwrap();
        drop(src);
        let src = File::open(&src_path).unwrap();
        for sparse in [false, true] {
            let dst_path = dir.path().join(format!("dst-{sparse}"));
            let dst = File::create(&dst_path).unwrap();
            copy_contents(&src, &dst, 8 << 20, sparse).unwrap();
            assert_eq!(dst.metadata().unwrap().len(), 8 << 20);
            let copy = File::open(&dst_path).unwrap();
            assert_eq!(hash(&src).unwrap(), hash(&copy).unwrap(), "sparse={sparse}");
            if sparse {
                assert!(
                    copy.metadata().unwrap().blocks() * 512 < 1 << 20,
                    "holes kept"
                );
            }
        }
    }

    #[test]
    fn fallback_copies_a_range() {
        let dir = tempfile::tempdir().unwrap();
        let src_path = dir.path().join("src");
        std::fs::write(
            &src_path,
            (0..3_000_000u32).map(|i| i as u8).collect::<Vec<_>>(),
        )
        .unwrap();
        let src = File::open(&src_path).unwrap();
        let dst = File::create(dir.path().join("dst")).unwrap();
        assert_eq!(fallback(&src, &dst, 0, None).unwrap(), 3_000_000);
        let copy = File::open(dir.path().join("dst")).unwrap();
        assert_eq!(hash(&src).unwrap(), hash(&copy).unwrap());
    }
}
