//! The verification pass: walks the source again and compares each entry with the copy: kind,
//! size, mode, owner, modification time, symlink target, hard links, the names in each directory,
//! and the contents of regular files (BLAKE3 of both, on the workers).

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use super::Context;
use super::entry::{Attrs, Kind};
use super::file;
use super::pool::Pool;
use super::progress::Stats;

/// Files larger than this have the copy hashed on a second thread while the source is hashed.
const PARALLEL_HASH: u64 = 16 << 20;

pub fn verify(ctx: &Arc<Context>, from: &Path, to: &Path, workers: usize) {
    let pool = Pool::new("verify", workers);
    // Inode of the source -> inode of its first name in the copy.
    let mut inodes: HashMap<(u64, u64), u64> = HashMap::new();
    compare_root(ctx, from, to);
    let mut stack = vec![(from.to_owned(), to.to_owned())];
    while let Some((src_dir, dst_dir)) = stack.pop() {
        let Ok(entries) = fs::read_dir(&src_dir) else {
            continue; // reported by the copy
        };
        let mut names: HashSet<OsString> = HashSet::new();
        for entry in entries {
            let Ok(entry) = entry else { break };
            let name = entry.file_name();
            let src = entry.path();
            let dst = dst_dir.join(&name);
            names.insert(name);
            if ctx.failed(&src) {
                continue;
            }
            let Ok(meta) = fs::symlink_metadata(&src) else {
                continue;
            };
            let kind = Kind::of(&meta);
            if let Kind::Special(_) = kind {
                continue;
            }
            Stats::add(&ctx.stats.verified, 1);
            let copy = match fs::symlink_metadata(&dst) {
                Ok(copy) => copy,
                Err(e) => {
                    ctx.differ(&src, &format!("missing in the copy ({e})"));
                    continue;
                }
            };
            if !compare(ctx, &src, &meta, &copy) {
                continue;
            }
            match kind {
                Kind::Dir => stack.push((src, dst)),
                Kind::Symlink => match (fs::read_link(&src), fs::read_link(&dst)) {
                    (Ok(a), Ok(b)) if a == b => {}
                    (Ok(a), Ok(b)) => ctx.differ(
                        &src,
                        &format!(
                            "symlink target {} in the copy, {} in the source",
                            b.display(),
                            a.display()
                        ),
                    ),
                    (_, Err(e)) | (Err(e), _) => {
                        ctx.differ(&src, &format!("cannot read the symlink ({e})"))
                    }
                },
                Kind::File => {
                    if meta.nlink() > 1 {
                        let key = (meta.dev(), meta.ino());
                        match inodes.get(&key) {
                            Some(ino) if *ino != copy.ino() => {
                                ctx.differ(&src, "not a hard link to its other names in the copy");
                                continue;
                            }
                            Some(_) => continue, // same inode: its contents are compared once
                            None => {
                                inodes.insert(key, copy.ino());
                            }
                        }
                    }
                    let ctx = Arc::clone(ctx);
                    pool.run(move || compare_contents(&ctx, &src, &dst, meta.len()));
                }
                Kind::Special(_) => {}
            }
        }
        match file::names_in(&dst_dir) {
            Ok(copy_names) => {
                for name in copy_names {
                    if !names.contains(&name) {
                        ctx.differ(&dst_dir.join(name), "in the copy but not in the source");
                    }
                }
            }
            Err(e) => ctx.differ(
                &dst_dir,
                &format!("cannot read the directory of the copy ({e})"),
            ),
        }
    }
    pool.finish();
}

fn compare_root(ctx: &Context, from: &Path, to: &Path) {
    if let (Ok(a), Ok(b)) = (fs::symlink_metadata(from), fs::symlink_metadata(to)) {
        compare(ctx, from, &a, &b);
    }
}

/// Compares what the metadata says; false when the kinds differ (nothing more to compare).
fn compare(ctx: &Context, src: &Path, meta: &Metadata, copy: &Metadata) -> bool {
    let (kind, copy_kind) = (Kind::of(meta), Kind::of(copy));
    if kind != copy_kind {
        ctx.differ(
            src,
            &format!(
                "a {} in the copy, a {} in the source",
                copy_kind.name(),
                kind.name()
            ),
        );
        return false;
    }
    let (a, b) = (Attrs::of(meta), Attrs::of(copy));
    let mut differences = Vec::new();
    if kind == Kind::File && meta.len() != copy.len() {
        differences.push(format!(
            "size {} in the copy, {} in the source",
            copy.len(),
            meta.len()
        ));
    }
    if kind != Kind::Symlink && a.mode != b.mode {
        differences.push(format!(
            "mode {:04o} in the copy, {:04o} in the source",
            b.mode, a.mode
        ));
    }
    if !ctx.owners_skipped() && (a.uid, a.gid) != (b.uid, b.gid) {
        differences.push(format!(
            "owner {}:{} in the copy, {}:{} in the source",
            b.uid, b.gid, a.uid, a.gid
        ));
    }
    if a.mtime != b.mtime {
        differences.push(format!(
            "modification time {}.{:09} in the copy, {}.{:09} in the source",
            b.mtime.0, b.mtime.1, a.mtime.0, a.mtime.1
        ));
    }
    if !differences.is_empty() {
        ctx.differ(src, &differences.join(", "));
    }
    true
}

fn compare_contents(ctx: &Context, src: &Path, dst: &Path, len: u64) {
    let hashes = (|| -> io::Result<(blake3::Hash, blake3::Hash)> {
        let (a, b) = (file::open_to_read(src)?, file::open_to_read(dst)?);
        if len < PARALLEL_HASH {
            return Ok((file::hash(&a)?, file::hash(&b)?));
        }
        std::thread::scope(|scope| {
            let copy = scope.spawn(|| file::hash(&b));
            let source = file::hash(&a)?;
            let copy = copy
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("hashing thread panicked")))?;
            Ok((source, copy))
        })
    })();
    match hashes {
        Ok((a, b)) if a == b => Stats::add(&ctx.stats.verified_bytes, len),
        Ok(_) => ctx.differ(src, "contents differ (BLAKE3)"),
        Err(e) => ctx.differ(src, &format!("cannot read to compare the contents ({e})")),
    }
}
