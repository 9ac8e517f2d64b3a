//! The copy pass: walks the source depth first, one directory open at a time, and makes each
//! entry in the target. Directories and symlinks are made by the walk; regular files go to the
//! workers; second names of an inode are linked once all files are in place; directories get
//! their owner, mode and times last, deepest first, so that nothing written into them later
//! changes their modification time.

use std::collections::HashMap;
use std::fs::{self, DirBuilder, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Context;
use super::entry::{self, Attrs, Kind};
use super::file;
use super::pool::Pool;
use super::progress::Stats;

/// A directory whose attributes are set at the end.
struct Dir {
    src: PathBuf,
    dst: PathBuf,
    attrs: Attrs,
}

/// A second name of an inode already copied: `dst` is linked to `first`.
struct Link {
    src: PathBuf,
    first: PathBuf,
    dst: PathBuf,
}

pub fn copy(ctx: &Arc<Context>, from: &Path, to: &Path, root: &Metadata, workers: usize) {
    let pool = Pool::new("copy", workers);
    let mut dirs = vec![Dir {
        src: from.to_owned(),
        dst: to.to_owned(),
        attrs: Attrs::of(root),
    }];
    let mut seen: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut links: Vec<Link> = Vec::new();
    let mut stack = vec![(from.to_owned(), to.to_owned())];
    while let Some((src_dir, dst_dir)) = stack.pop() {
        let entries = match fs::read_dir(&src_dir) {
            Ok(entries) => entries,
            Err(e) => {
                ctx.fail(&src_dir, "cannot read the directory", e);
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    ctx.fail(&src_dir, "cannot read the directory", e);
                    break;
                }
            };
            let src = entry.path();
            let dst = dst_dir.join(entry.file_name());
            let meta = match fs::symlink_metadata(&src) {
                Ok(meta) => meta,
                Err(e) => {
                    ctx.fail(&src, "cannot stat", e);
                    continue;
                }
            };
            match Kind::of(&meta) {
                Kind::Dir => match make_dir(&dst) {
                    Ok(()) => {
                        Stats::add(&ctx.stats.dirs, 1);
                        dirs.push(Dir {
                            src: src.clone(),
                            dst: dst.clone(),
                            attrs: Attrs::of(&meta),
                        });
                        stack.push((src, dst));
                    }
                    Err(e) => ctx.fail(&src, "cannot create the directory in the copy", e),
                },
                Kind::Symlink => match copy_symlink(ctx, &src, &dst, &meta) {
                    Ok(()) => Stats::add(&ctx.stats.symlinks, 1),
                    Err((what, e)) => ctx.fail(&src, what, e),
                },
                Kind::File => {
                    if meta.nlink() > 1 {
                        let key = (meta.dev(), meta.ino());
                        if let Some(first) = seen.get(&key) {
                            links.push(Link {
                                src,
                                first: first.clone(),
                                dst,
                            });
                            continue;
                        }
                        seen.insert(key, dst.clone());
                    }
                    let ctx = Arc::clone(ctx);
                    pool.run(move || {
                        if let Err((what, e)) = copy_file(&ctx, &src, &dst, &meta) {
                            ctx.fail(&src, what, e);
                        }
                    });
                }
                Kind::Special(kind) => {
                    tracing::warn!(path = %src.display(), kind, "skipped: a {kind} is not copied");
                    Stats::add(&ctx.stats.skipped, 1);
                }
            }
        }
    }
    drop(seen);
    pool.finish();
    for link in links {
        match hard_link(&link.first, &link.dst) {
            Ok(()) => Stats::add(&ctx.stats.hard_links, 1),
            Err(e) => ctx.fail(&link.src, "cannot link in the copy", e),
        }
    }
    for dir in dirs.iter().rev() {
        if let Err((what, e)) = finish_dir(ctx, dir) {
            ctx.fail(&dir.src, what, e);
        }
    }
}

type Failure = (&'static str, io::Error);

fn at(what: &'static str) -> impl FnOnce(io::Error) -> Failure {
    move |e| (what, e)
}

/// Makes `dst` a directory, replacing whatever else is there.
fn make_dir(dst: &Path) -> io::Result<()> {
    match fs::symlink_metadata(dst) {
        Ok(meta) if meta.is_dir() => {
            if !rustix::process::geteuid().is_root() && meta.mode() & 0o700 != 0o700 {
                // A rerun without root: the previous run made it read-only.
                fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() | 0o700))?;
            }
            Ok(())
        }
        Ok(_) => {
            fs::remove_file(dst)?;
            DirBuilder::new().mode(0o700).create(dst)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => DirBuilder::new().mode(0o700).create(dst),
        Err(e) => Err(e),
    }
}

use std::os::unix::fs::PermissionsExt;

/// Removes whatever is at `dst`, if anything.
fn remove(dst: &Path) -> io::Result<()> {
    match fs::symlink_metadata(dst) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(dst),
        Ok(_) => fs::remove_file(dst),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn copy_symlink(ctx: &Context, src: &Path, dst: &Path, meta: &Metadata) -> Result<(), Failure> {
    let target = fs::read_link(src).map_err(at("cannot read the symlink"))?;
    let same = fs::symlink_metadata(dst).is_ok_and(|m| m.file_type().is_symlink())
        && fs::read_link(dst).is_ok_and(|t| t == target);
    if !same {
        remove(dst).map_err(at("cannot replace the entry in the copy"))?;
        std::os::unix::fs::symlink(&target, dst)
            .map_err(at("cannot create the symlink in the copy"))?;
    }
    let attrs = Attrs::of(meta);
    ctx.owner(dst, entry::set_owner_path(dst, &attrs))
        .map_err(at("cannot set the owner in the copy"))?;
    ctx.xattrs(dst, entry::copy_xattrs_path(src, dst))
        .map_err(at("cannot copy extended attributes"))?;
    entry::set_times_path(dst, &attrs).map_err(at("cannot set the times in the copy"))
}

/// Whether `dst` already holds what the copy would write for a file with `meta`: a rerun
/// leaves it as it is. A file is renamed into place only once complete, with its times set last.
fn identical(meta: &Metadata, dst: &Path, owners: bool) -> bool {
    let Ok(existing) = fs::symlink_metadata(dst) else {
        return false;
    };
    let (a, b) = (Attrs::of(meta), Attrs::of(&existing));
    existing.is_file()
        && existing.len() == meta.len()
        && a.mtime == b.mtime
        && a.mode == b.mode
        && (!owners || (a.uid, a.gid) == (b.uid, b.gid))
}

/// The name a file is written under before it is renamed into place: hidden, next to it.
pub fn partial_name(dst: &Path) -> PathBuf {
    let name = dst.file_name().unwrap_or_default().as_encoded_bytes();
    let partial = if name.len() <= 200 {
        let mut partial = b".".to_vec();
        partial.extend_from_slice(name);
        partial.extend_from_slice(PARTIAL_SUFFIX.as_bytes());
        partial
    } else {
        format!(".{}{PARTIAL_SUFFIX}", &blake3::hash(name).to_hex()[..32]).into_bytes()
    };
    // SAFETY: made of a name from the OS and ASCII.
    dst.with_file_name(unsafe { std::ffi::OsStr::from_encoded_bytes_unchecked(&partial) })
}

pub const PARTIAL_SUFFIX: &str = ".scm-partial";

fn copy_file(ctx: &Context, src: &Path, dst: &Path, meta: &Metadata) -> Result<(), Failure> {
    if identical(meta, dst, !ctx.owners_skipped()) {
        Stats::add(&ctx.stats.unchanged, 1);
        return Ok(());
    }
    let input = file::open_to_read(src).map_err(at("cannot open the file"))?;
    let partial = partial_name(dst);
    let output = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&partial)
        .map_err(at("cannot create the file in the copy"))?;
    let written = (|| {
        let attrs = Attrs::of(meta);
        let bytes = file::copy_contents(&input, &output, meta.len(), file::may_be_sparse(meta))
            .map_err(at("cannot copy the contents"))?;
        ctx.owner(dst, entry::set_owner_fd(&output, &attrs))
            .map_err(at("cannot set the owner in the copy"))?;
        ctx.xattrs(dst, entry::copy_xattrs_fd(&input, &output))
            .map_err(at("cannot copy extended attributes"))?;
        entry::set_mode_fd(&output, &attrs).map_err(at("cannot set the mode in the copy"))?;
        entry::set_times_fd(&output, &attrs).map_err(at("cannot set the times in the copy"))?;
        drop(output);
        if fs::symlink_metadata(dst).is_ok_and(|m| m.is_dir()) {
            fs::remove_dir_all(dst).map_err(at("cannot replace the entry in the copy"))?;
        }
        fs::rename(&partial, dst).map_err(at("cannot rename the file into place"))?;
        Ok(bytes)
    })();
    match written {
        Ok(bytes) => {
            Stats::add(&ctx.stats.files, 1);
            Stats::add(&ctx.stats.bytes, bytes);
            Ok(())
        }
        Err(failure) => {
            let _ = fs::remove_file(&partial);
            Err(failure)
        }
    }
}

/// Links `dst` to the inode at `first`, unless it already is.
fn hard_link(first: &Path, dst: &Path) -> io::Result<()> {
    let first_meta = fs::symlink_metadata(first)?;
    if let Ok(meta) = fs::symlink_metadata(dst) {
        if (meta.dev(), meta.ino()) == (first_meta.dev(), first_meta.ino()) {
            return Ok(());
        }
        remove(dst)?;
    }
    fs::hard_link(first, dst)
}

fn finish_dir(ctx: &Context, dir: &Dir) -> Result<(), Failure> {
    ctx.owner(&dir.dst, entry::set_owner_path(&dir.dst, &dir.attrs))
        .map_err(at("cannot set the owner in the copy"))?;
    ctx.xattrs(&dir.dst, entry::copy_xattrs_path(&dir.src, &dir.dst))
        .map_err(at("cannot copy extended attributes"))?;
    entry::set_mode_path(&dir.dst, &dir.attrs).map_err(at("cannot set the mode in the copy"))?;
    entry::set_times_path(&dir.dst, &dir.attrs).map_err(at("cannot set the times in the copy"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_names_are_hidden_siblings_within_name_max() {
        assert_eq!(
            partial_name(Path::new("/t/a/data.db")),
            Path::new("/t/a/.data.db.scm-partial")
        );
        let long = "x".repeat(255);
        let partial = partial_name(&Path::new("/t").join(&long));
        let name = partial.file_name().unwrap().len();
        assert!(name < 255, "{name}");
        assert_eq!(partial.parent(), Some(Path::new("/t")));
    }

    #[test]
    fn a_file_is_identical_only_with_the_same_size_time_mode_and_owner() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::write(&a, b"hello").unwrap();
        assert!(!identical(&fs::metadata(&a).unwrap(), &b, true));
        fs::write(&b, b"hello").unwrap();
        let meta = fs::metadata(&a).unwrap();
        let attrs = Attrs::of(&meta);
        entry::set_times_path(&b, &attrs).unwrap();
        assert!(identical(&meta, &b, true));
        fs::set_permissions(&b, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(identical(&meta, &b, true), attrs.mode == 0o600);
        entry::set_mode_path(&b, &attrs).unwrap();
        fs::write(&b, b"hellO!").unwrap();
        entry::set_times_path(&b, &attrs).unwrap();
        assert!(!identical(&meta, &b, true), "size differs");
    }
}
