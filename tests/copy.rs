//! `storageclass-migrate copy` on real files, the binary run as a subprocess: every kind of entry,
//! owners other than root, setuid, a sparse file, a symlink loop, hard links, empty directories,
//! extended attributes, a FIFO and a socket, an unreadable file, a rerun after a kill, a copy that
//! no longer matches. Most cases need root (to chown to other users); without it they say so and
//! pass without checking.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use testkit::files::{assert_same_tree, chmod, chown, every_kind, set_times, walk};

const BIN: &str = env!("CARGO_BIN_EXE_storageclass-migrate");
const NOBODY: u32 = 65534;

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

#[test]
fn every_kind_of_entry_is_kept() {
    testkit::require_root!("it chowns files to other users");
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
    testkit::require_root!("it chowns files to other users");
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
    testkit::require_root!("it chowns files to other users");
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
