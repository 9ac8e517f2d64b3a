//! Files on this machine for the tests that copy data: a tree with every kind of entry a
//! volume can hold (owners other than root, setuid, sparse regions, symlink loops, hard links,
//! extended attributes, a FIFO and a socket), and an entry-by-entry comparison of two trees.
//! Most of it needs root (to chown to other users): see [`is_root`].

use std::collections::HashMap;
use std::fs::{self, File};
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, Timespec, Timestamps, XattrFlags};

/// Whether this process may chown files to other users.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Skips the test unless it runs as root ([`is_root`]): it returns at once, saying on stderr
/// why it needs root, e.g. `require_root!("the tree has owners other than root")`.
#[macro_export]
macro_rules! require_root {
    ($why:expr) => {
        if !$crate::files::is_root() {
            eprintln!("skipped: this test needs root ({})", $why);
            return;
        }
    };
}

pub fn set_times(path: &Path, atime: (i64, i64), mtime: (i64, i64)) {
    let spec = |(tv_sec, tv_nsec)| Timespec { tv_sec, tv_nsec };
    rustix::fs::utimensat(
        CWD,
        path,
        &Timestamps {
            last_access: spec(atime),
            last_modification: spec(mtime),
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

pub fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
}

pub fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Whether this filesystem takes user.* extended attributes.
/// Whether the filesystem of `dir` takes user extended attributes.
pub fn user_xattrs(dir: &Path) -> bool {
    let probe = dir.join("xattr-probe");
    fs::write(&probe, b"").unwrap();
    let ok = rustix::fs::setxattr(&probe, "user.probe", b"1", XattrFlags::empty()).is_ok();
    fs::remove_file(probe).unwrap();
    ok
}

/// Directories, regular files and symlinks, with owners other than root, setuid, setgid and
/// sticky bits, and times in the past: the entries that any snapshot of a volume keeps.
pub fn plain_tree(src: &Path) {
    plain_entries(src);
    past_times(src);
}

/// A tree with every kind of entry the copy knows: [`plain_tree`]'s, and a sparse file, hard
/// links, a FIFO, a socket and extended attributes. Returns whether it has xattrs.
pub fn every_kind(src: &Path) -> bool {
    plain_entries(src);
    // A sparse file: 64 MiB, three small data regions.
    let sparse = File::create(src.join("sparse.img")).unwrap();
    sparse.set_len(64 << 20).unwrap();
    for at in [0u64, 20 << 20, (64 << 20) - 4096] {
        std::os::unix::fs::FileExt::write_all_at(&sparse, &[1u8; 4096], at).unwrap();
    }
    drop(sparse);
    // Hard links: three names of one inode, one in another directory.
    fs::write(src.join("docs/linked"), b"one inode, three names").unwrap();
    fs::hard_link(src.join("docs/linked"), src.join("docs/linked-2")).unwrap();
    fs::hard_link(src.join("docs/linked"), src.join("docs/deep/linked-3")).unwrap();
    // A FIFO and a socket: skipped with a warning each.
    rustix::fs::mknodat(
        CWD,
        src.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let socket = std::os::unix::net::UnixListener::bind(src.join("socket")).unwrap();
    drop(socket);
    // Extended attributes, where the filesystem has them.
    let xattrs = user_xattrs(src);
    if xattrs {
        rustix::fs::setxattr(
            src.join("docs/readme.txt"),
            "user.origin",
            b"class-a",
            XattrFlags::empty(),
        )
        .unwrap();
        rustix::fs::setxattr(src.join("docs"), "user.dir", b"yes", XattrFlags::empty()).unwrap();
    }
    past_times(src);
    xattrs
}

fn plain_entries(src: &Path) {
    fs::create_dir_all(src.join("docs/deep/er")).unwrap();
    fs::create_dir(src.join("empty")).unwrap();
    fs::create_dir(src.join("shared")).unwrap();
    fs::create_dir(src.join("private")).unwrap();
    fs::write(src.join("docs/readme.txt"), b"hello\n").unwrap();
    fs::write(src.join("docs/deep/er/data.bin"), vec![42u8; 300_000]).unwrap();
    fs::write(src.join("private/secret"), b"s3cret").unwrap();
    fs::write(src.join("empty-file"), b"").unwrap();
    // 1 MiB that no compression or zero detection can shortcut.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let noise: Vec<u8> = (0..1 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    fs::write(src.join("noise.bin"), noise).unwrap();
    chown(&src.join("noise.bin"), 4321, 4322);
    chmod(&src.join("noise.bin"), 0o640);
    // Owners other than root, setuid, setgid and sticky.
    fs::write(src.join("tool"), b"#!/bin/true\n").unwrap();
    chown(&src.join("tool"), 1000, 1000);
    chmod(&src.join("tool"), 0o4755);
    chown(&src.join("docs"), 1234, 5678);
    chown(&src.join("docs/readme.txt"), 1234, 5678);
    chmod(&src.join("docs/readme.txt"), 0o640);
    chown(&src.join("private"), 999, 999);
    chmod(&src.join("private"), 0o700);
    chown(&src.join("private/secret"), 999, 999);
    chmod(&src.join("private/secret"), 0o400);
    chmod(&src.join("shared"), 0o3777);
    // Symlinks: relative, absolute and dangling, a loop, one to itself; owned by another user.
    symlink("docs/readme.txt", src.join("link-to-readme")).unwrap();
    symlink("/nonexistent/target", src.join("dangling")).unwrap();
    symlink("loop-b", src.join("loop-a")).unwrap();
    symlink("loop-a", src.join("loop-b")).unwrap();
    symlink("self", src.join("self")).unwrap();
    symlink("..", src.join("docs/deep/up")).unwrap();
    chown(&src.join("link-to-readme"), 1000, 1000);
}

/// Times in the past, with nanoseconds, on every entry (files, directories, symlinks); set last,
/// so that nothing else changes them.
fn past_times(src: &Path) {
    let mut n = 0;
    for entry in walk(src) {
        n += 1;
        set_times(
            &entry,
            (1_500_000_000 + n, 123_456_789),
            (1_400_000_000 + n * 1000, 987_654_321),
        );
    }
    set_times(src, (1_500_000_000, 1), (1_400_000_000, 2));
}

/// Every path under `root`, parents before children.
pub fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<PathBuf> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            if fs::symlink_metadata(&path).unwrap().is_dir() {
                stack.push(path.clone());
            }
            out.push(path);
        }
    }
    // Deepest first for the times: a child's times never change its parent's mtime, but
    // setting them in this order is what a person would do too.
    out.reverse();
    out
}

/// Compares the copy with the source entry by entry, and checks that the copy holds nothing the
/// source does not; returns the number of entries compared.
/// Reading the files to compare them updates their access times: only a first comparison
/// (`atimes`) can compare those.
pub fn assert_same_tree(src: &Path, dst: &Path, xattrs: bool, atimes: bool) -> usize {
    for path in walk(dst) {
        let relative = path.strip_prefix(dst).unwrap();
        assert!(
            fs::symlink_metadata(src.join(relative)).is_ok(),
            "{relative:?}: in the copy, not in the source (a leftover of an interrupted copy?)"
        );
    }
    let mut inodes: HashMap<u64, u64> = HashMap::new();
    let mut compared = 0;
    for path in walk(src).into_iter().chain([src.to_owned()]) {
        let relative = path.strip_prefix(src).unwrap();
        let copy = dst.join(relative);
        let a = fs::symlink_metadata(&path).unwrap();
        let ft = a.file_type();
        if !(ft.is_file() || ft.is_dir() || ft.is_symlink()) {
            assert!(
                fs::symlink_metadata(&copy).is_err(),
                "{relative:?}: a special file was copied"
            );
            continue;
        }
        let b = fs::symlink_metadata(&copy).unwrap_or_else(|e| panic!("{relative:?}: {e}"));
        compared += 1;
        assert_eq!(a.file_type(), b.file_type(), "{relative:?}: kind");
        assert_eq!(
            (a.uid(), a.gid()),
            (b.uid(), b.gid()),
            "{relative:?}: owner"
        );
        assert_eq!(
            (a.mtime(), a.mtime_nsec()),
            (b.mtime(), b.mtime_nsec()),
            "{relative:?}: mtime"
        );
        if ft.is_symlink() {
            assert_eq!(fs::read_link(&path).unwrap(), fs::read_link(&copy).unwrap());
            continue;
        }
        assert_eq!(a.mode(), b.mode(), "{relative:?}: mode");
        if ft.is_file() && atimes {
            assert_eq!(
                (a.atime(), a.atime_nsec()),
                (b.atime(), b.atime_nsec()),
                "{relative:?}: atime"
            );
        }
        if ft.is_file() {
            assert_eq!(a.len(), b.len(), "{relative:?}: size");
            assert!(
                fs::read(&path).unwrap() == fs::read(&copy).unwrap(),
                "{relative:?}: contents"
            );
            assert!(
                b.blocks() <= a.blocks() + 8,
                "{relative:?}: {} blocks in the copy, {} in the source",
                b.blocks(),
                a.blocks()
            );
            assert_eq!(a.nlink(), b.nlink(), "{relative:?}: links");
            if let Some(ino) = inodes.insert(a.ino(), b.ino()) {
                assert_eq!(
                    ino,
                    b.ino(),
                    "{relative:?}: not the same inode as its other names"
                );
            }
        }
        if xattrs {
            assert_eq!(xattrs_of(&path), xattrs_of(&copy), "{relative:?}: xattrs");
        }
    }
    compared
}

/// The extended attributes of an entry (not followed), sorted by name, with their values.
pub fn xattrs_of(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut names = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(path, &mut names).unwrap_or(0);
    let mut out: Vec<(String, Vec<u8>)> = names[..n]
        .split(|b| *b == 0)
        .filter(|name| !name.is_empty())
        .map(|name| {
            let name = String::from_utf8_lossy(name).into_owned();
            let mut value = vec![0u8; 65536];
            let len = rustix::fs::lgetxattr(path, name.as_str(), &mut value).unwrap_or(0);
            value.truncate(len);
            (name, value)
        })
        .collect();
    out.sort();
    out
}

/// A directory for a volume whose data a test writes and checks: `target/test-volumes/<name>`,
/// made empty. Not below `/tmp/`, where the controller manager's hostPath deleter removes the
/// directories of released Delete volumes.
pub fn data_dir(name: &str) -> PathBuf {
    let dir = crate::repo_root().join("target/test-volumes").join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}
