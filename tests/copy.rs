//! `storageclass-migrate copy` on real files, the binary run as a subprocess: every kind of entry,
//! owners other than root, setuid, a sparse file, a symlink loop, hard links, empty directories,
//! extended attributes, a FIFO and a socket, an unreadable file, a rerun after a kill, a copy that
//! no longer matches. Most cases need root (to chown to other users); without it they say so and
//! pass without checking.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use rustix::fs::{AtFlags, CWD, Timespec, Timestamps, XattrFlags};

const BIN: &str = env!("CARGO_BIN_EXE_storageclass-migrate");
const NOBODY: u32 = 65534;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: this test needs root (it chowns files to other users)");
            return;
        }
    };
}

fn copy(from: &Path, to: &Path, extra: &[&str]) -> Output {
    Command::new(BIN)
        .arg("copy")
        .arg("--from")
        .arg(from)
        .arg("--to")
        .arg(to)
        .args(extra)
        .env("RUST_LOG", "info")
        .env("TERMINATION_LOG", "/dev/null")
        .output()
        .expect("run the binary")
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn json_summary(output: &Output) -> serde_json::Value {
    let (stdout, stderr) = text(output);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"))
}

fn set_times(path: &Path, atime: (i64, i64), mtime: (i64, i64)) {
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

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Whether this filesystem takes user.* extended attributes.
fn user_xattrs(dir: &Path) -> bool {
    let probe = dir.join("xattr-probe");
    fs::write(&probe, b"").unwrap();
    let ok = rustix::fs::setxattr(&probe, "user.probe", b"1", XattrFlags::empty()).is_ok();
    fs::remove_file(probe).unwrap();
    ok
}

/// A tree with every kind of entry the copy knows. Returns whether it has xattrs.
fn every_kind(src: &Path) -> bool {
    fs::create_dir_all(src.join("docs/deep/er")).unwrap();
    fs::create_dir(src.join("empty")).unwrap();
    fs::create_dir(src.join("shared")).unwrap();
    fs::create_dir(src.join("private")).unwrap();
    fs::write(src.join("docs/readme.txt"), b"hello\n").unwrap();
    fs::write(src.join("docs/deep/er/data.bin"), vec![42u8; 300_000]).unwrap();
    fs::write(src.join("private/secret"), b"s3cret").unwrap();
    fs::write(src.join("empty-file"), b"").unwrap();
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
    // A sparse file: 64 MiB, three small data regions.
    let sparse = File::create(src.join("sparse.img")).unwrap();
    sparse.set_len(64 << 20).unwrap();
    for at in [0u64, 20 << 20, (64 << 20) - 4096] {
        std::os::unix::fs::FileExt::write_all_at(&sparse, &[1u8; 4096], at).unwrap();
    }
    drop(sparse);
    // Symlinks: relative, absolute and dangling, a loop, one to itself; owned by another user.
    symlink("docs/readme.txt", src.join("link-to-readme")).unwrap();
    symlink("/nonexistent/target", src.join("dangling")).unwrap();
    symlink("loop-b", src.join("loop-a")).unwrap();
    symlink("loop-a", src.join("loop-b")).unwrap();
    symlink("self", src.join("self")).unwrap();
    symlink("..", src.join("docs/deep/up")).unwrap();
    chown(&src.join("link-to-readme"), 1000, 1000);
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
    // Times in the past, with nanoseconds, on files, directories and symlinks; last, so that
    // nothing above changes them.
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
    xattrs
}

/// Every path under `root`, parents before children.
fn walk(root: &Path) -> Vec<PathBuf> {
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

/// Compares the copy with the source entry by entry; returns the number of entries compared.
/// Reading the files to compare them updates their access times: only a first comparison
/// (`atimes`) can compare those.
fn assert_same_tree(src: &Path, dst: &Path, xattrs: bool, atimes: bool) -> usize {
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
            assert_eq!(
                storageclass_migrate::copy::entry::list_xattrs(&path).unwrap(),
                storageclass_migrate::copy::entry::list_xattrs(&copy).unwrap(),
                "{relative:?}: xattrs"
            );
        }
    }
    compared
}

#[test]
fn every_kind_of_entry_is_kept() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    fs::create_dir(&src).unwrap();
    let xattrs = every_kind(&src);
    if !xattrs {
        eprintln!("note: this filesystem has no user.* extended attributes; not checked");
    }
    let before = fs::symlink_metadata(src.join("sparse.img")).unwrap();
    assert!(
        before.blocks() * 512 < before.len() / 4,
        "the source is not sparse"
    );

    let output = copy(&src, &dst, &["--summary-format", "json"]);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    let summary = json_summary(&output);
    assert_eq!(summary["result"], "copied", "{summary}");
    assert_eq!(summary["skipped"], 2, "{summary}");
    assert_eq!(summary["errors"], 0, "{summary}");
    assert_eq!(summary["hard_links"], 2, "{summary}");
    assert_eq!(summary["symlinks"], 6, "{summary}");
    assert_eq!(summary["differences"], 0, "{summary}");
    for skipped in ["fifo", "socket"] {
        assert!(
            stderr
                .lines()
                .any(|l| l.contains("WARN") && l.contains(skipped)),
            "no warning for {skipped}: {stderr}"
        );
    }

    let compared = assert_same_tree(&src, &dst, xattrs, true);
    assert!(compared >= 20, "{compared}");
    let sparse = fs::symlink_metadata(dst.join("sparse.img")).unwrap();
    assert_eq!(sparse.len(), 64 << 20);
    assert!(
        sparse.blocks() * 512 <= 1 << 20,
        "the copy of the sparse file allocates {} bytes",
        sparse.blocks() * 512
    );
    assert_eq!(
        fs::symlink_metadata(dst.join("tool")).unwrap().mode() & 0o7777,
        0o4755
    );
    assert_eq!(
        fs::symlink_metadata(dst.join("shared")).unwrap().mode() & 0o7777,
        0o3777
    );
    assert!(fs::read_dir(dst.join("empty")).unwrap().next().is_none());

    // A second run finds everything identical and changes nothing.
    let again = copy(&src, &dst, &["--summary-format", "json"]);
    assert_eq!(again.status.code(), Some(0), "{:?}", text(&again));
    let summary = json_summary(&again);
    assert_eq!(summary["files"], 0, "{summary}");
    assert!(summary["unchanged"].as_u64().unwrap() >= 6, "{summary}");
    assert_same_tree(&src, &dst, xattrs, false);
}

#[test]
fn a_text_summary_line_and_the_verification_can_be_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    fs::create_dir_all(src.join("a")).unwrap();
    fs::write(src.join("a/f"), b"data").unwrap();
    let output = copy(&src, &dst, &["--verify=false"]);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.contains(": copied: 1 files (0 unchanged), 1 directories"),
        "{stdout}"
    );
    assert!(stdout.contains("not verified"), "{stdout}");
    assert_eq!(fs::read(dst.join("a/f")).unwrap(), b"data");
}

#[test]
fn bad_input_is_exit_status_2_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(src.join("inner")).unwrap();
    fs::write(dir.path().join("file"), b"").unwrap();
    let cases: [(PathBuf, PathBuf, &str); 4] = [
        (dir.path().join("missing"), dir.path().join("t1"), "--from"),
        (
            dir.path().join("file"),
            dir.path().join("t2"),
            "not a directory",
        ),
        (src.clone(), src.join("inner"), "overlap"),
        (src.clone(), dir.path().join("file"), "not a directory"),
    ];
    for (from, to, says) in cases {
        let output = copy(&from, &to, &[]);
        let (stdout, stderr) = text(&output);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{from:?} {to:?}: {stdout}\n{stderr}"
        );
        assert!(
            stdout.starts_with("error: ") && stdout.contains(says),
            "{stdout}"
        );
    }
    assert!(!dir.path().join("t1").exists() && !dir.path().join("t2").exists());
    let output = Command::new(BIN)
        .args(["copy", "--from", "/tmp"])
        .env("TERMINATION_LOG", "/dev/null")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{:?}", text(&output));
}

#[test]
fn a_copy_that_no_longer_matches_fails_the_verification() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"original").unwrap();
    fs::write(src.join("g"), b"other").unwrap();
    assert_eq!(copy(&src, &dst, &[]).status.code(), Some(0));
    // Same size, same times: a rerun takes it for identical; only the hash tells.
    let meta = fs::symlink_metadata(dst.join("f")).unwrap();
    fs::write(dst.join("f"), b"ORIGINAL").unwrap();
    set_times(
        &dst.join("f"),
        (meta.atime(), meta.atime_nsec()),
        (meta.mtime(), meta.mtime_nsec()),
    );
    fs::write(dst.join("extra"), b"not in the source").unwrap();
    let output = copy(&src, &dst, &["--summary-format", "json"]);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(7), "{stdout}\n{stderr}");
    let summary = json_summary(&output);
    assert_eq!(summary["result"], "verification-failed", "{summary}");
    assert_eq!(summary["differences"], 2, "{summary}");
    let differences = summary["difference_list"].to_string();
    assert!(differences.contains("contents differ"), "{differences}");
    assert!(
        differences.contains("extra: in the copy but not in the source"),
        "{differences}"
    );
    assert!(stderr.contains("contents differ"), "{stderr}");
}

#[test]
fn an_unreadable_file_is_named_and_the_rest_is_copied() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o755);
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::create_dir_all(src.join("closed/inside")).unwrap();
    fs::create_dir(&dst).unwrap();
    fs::write(src.join("readable"), b"fine").unwrap();
    fs::write(src.join("sub/also-readable"), b"fine too").unwrap();
    fs::write(src.join("sub/unreadable"), b"secret").unwrap();
    for path in walk(&src).into_iter().chain([src.clone(), dst.clone()]) {
        chown(&path, NOBODY, NOBODY);
    }
    chmod(&src.join("sub/unreadable"), 0o000);
    chmod(&src.join("closed"), 0o311);

    // The copy runs as that user, as it does where the namespace is `restricted`.
    let output = Command::new(BIN)
        .args(["copy", "--summary-format", "json", "--from"])
        .arg(&src)
        .arg("--to")
        .arg(&dst)
        .env("TERMINATION_LOG", "/dev/null")
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(7), "{stdout}\n{stderr}");
    let summary = json_summary(&output);
    assert_eq!(summary["result"], "incomplete", "{summary}");
    assert_eq!(summary["errors"], 2, "{summary}");
    assert_eq!(summary["differences"], 0, "{summary}");
    let errors = summary["error_list"].to_string();
    assert!(
        errors.contains("sub/unreadable: cannot open the file"),
        "{errors}"
    );
    assert!(
        errors.contains("closed: cannot read the directory"),
        "{errors}"
    );
    assert!(stderr.contains("sub/unreadable"), "{stderr}");
    assert_eq!(fs::read(dst.join("readable")).unwrap(), b"fine");
    assert_eq!(
        fs::read(dst.join("sub/also-readable")).unwrap(),
        b"fine too"
    );
    assert!(!dst.join("sub/unreadable").exists());
    assert!(
        !fs::read_dir(dst.join("sub")).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".scm-partial")),
        "a partial file was left"
    );
}

#[test]
fn a_rerun_after_a_kill_finishes_the_copy() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    fs::create_dir_all(src.join("big")).unwrap();
    for i in 0..4 {
        let mut f = File::create(src.join(format!("big/{i}.bin"))).unwrap();
        let block: Vec<u8> = (0..1 << 20).map(|b: u32| (b ^ i) as u8).collect();
        for _ in 0..48 {
            f.write_all(&block).unwrap();
        }
    }
    let total_small = 3000;
    for d in 0..10 {
        fs::create_dir_all(src.join(format!("small/{d}"))).unwrap();
        for f in 0..total_small / 10 {
            fs::write(
                src.join(format!("small/{d}/{f}")),
                format!("file {d}/{f}\n").repeat(f % 50 + 1),
            )
            .unwrap();
        }
    }
    chown(&src.join("small/3"), 1000, 1000);

    let mut child = Command::new(BIN)
        .arg("copy")
        .arg("--from")
        .arg(&src)
        .arg("--to")
        .arg(&dst)
        .args(["--workers", "1", "--verify=false"])
        .env("TERMINATION_LOG", "/dev/null")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    // Kill it once some files are in place, well before all are.
    // Files in place (not the partial ones), counted while the copy renames them.
    let copied = || {
        let Ok(dirs) = fs::read_dir(dst.join("small")) else {
            return 0;
        };
        dirs.flatten()
            .filter_map(|d| fs::read_dir(d.path()).ok())
            .flat_map(|entries| entries.flatten())
            .filter(|e| !e.file_name().to_string_lossy().ends_with(".scm-partial"))
            .count()
    };
    let mut killed = false;
    for _ in 0..20_000 {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if copied() >= 50 {
            child.kill().unwrap();
            killed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let status = child.wait().unwrap();
    if !killed {
        eprintln!("note: the first run ended ({status}) before it could be killed part-way");
    }

    let output = copy(&src, &dst, &["--summary-format", "json"]);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    let summary = json_summary(&output);
    assert_eq!(summary["differences"], 0, "{summary}");
    let (files, unchanged) = (
        summary["files"].as_u64().unwrap(),
        summary["unchanged"].as_u64().unwrap(),
    );
    assert_eq!(files + unchanged, total_small as u64 + 4, "{summary}");
    if killed {
        assert!(
            unchanged >= 1,
            "the rerun copied everything again: {summary}"
        );
        assert!(files >= 1, "the first run was not part-way: {summary}");
    }
    assert_same_tree(&src, &dst, false, false);
}

#[test]
fn the_hook_without_a_command_is_unchanged() {
    let output = Command::new(BIN)
        .env_clear()
        .env("TERMINATION_LOG", "/dev/null")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stdout.is_empty(),
        "the hook's stdout holds summaries only: {stdout}"
    );
    assert!(stderr.contains("no claim given"), "{stderr}");
    let help = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("copy") && help.contains("--pvc"), "{help}");
}
