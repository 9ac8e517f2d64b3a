//! `storageclass-migrate copy --from DIR --to DIR`: copies a directory tree with everything a
//! volume's data needs kept (regular files, directories, symlinks, hard links, owners, modes with
//! setuid/setgid/sticky, times, sparse regions, extended attributes), then verifies the copy.
//!
//! [`tree`] is the copy pass, [`verify`] the verification, [`entry`] the attributes of an entry,
//! [`file`] the contents of a file, [`pool`] the workers and [`progress`] the counters and the
//! progress log. A rerun after an interruption leaves alone the files already identical (same
//! kind, size, modification time, mode and owner): a file is written under a hidden name and
//! renamed into place once complete, so a half-written file never looks complete.
//!
//! One entry that cannot be copied (an unreadable file) is reported with its path and the copy
//! goes on; the run then ends as incomplete. Devices, FIFOs and sockets are skipped with a
//! warning each.

pub mod entry;
pub mod file;
pub mod pool;
pub mod progress;
pub mod tree;
pub mod verify;

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::ExitStatus;
use progress::{Phase, Reporter, Stats};

/// At most this many failures and differences are kept for the summary (all are logged).
const KEPT: usize = 100;
/// At most this many warnings about attributes the target refused are logged.
const WARNINGS_LOGGED: u64 = 20;

/// What to copy, and how.
#[derive(Debug, Clone)]
pub struct Options {
    pub from: PathBuf,
    pub to: PathBuf,
    pub verify: bool,
    pub progress_interval: Duration,
    pub workers: usize,
}

/// Why a copy could not start or could not go on at all.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The directories given cannot be used; nothing was written.
    #[error("{0}")]
    Input(String),
    /// The target directory could not be made or opened.
    #[error("{}: {what}: {source}", .path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

impl CopyError {
    pub fn exit_status(&self) -> ExitStatus {
        match self {
            CopyError::Input(_) => ExitStatus::BadInput,
            CopyError::Io { .. } => ExitStatus::CopyIncomplete,
        }
    }
}

/// State shared by the walk and the workers.
pub struct Context {
    pub stats: Arc<Stats>,
    /// Source paths that could not be copied (the verification leaves them out).
    failed: Mutex<HashSet<PathBuf>>,
    errors: Mutex<Vec<String>>,
    differences: Mutex<Vec<String>>,
    /// A chown was refused (not root): owners are not kept, nor compared.
    owners_skipped: AtomicBool,
    warnings_logged: AtomicU64,
}

impl Context {
    fn new() -> Self {
        Self {
            stats: Arc::new(Stats::default()),
            failed: Mutex::new(HashSet::new()),
            errors: Mutex::new(Vec::new()),
            differences: Mutex::new(Vec::new()),
            owners_skipped: AtomicBool::new(false),
            warnings_logged: AtomicU64::new(0),
        }
    }

    /// An entry that could not be copied: logged with its path, counted, and the copy goes on.
    pub fn fail(&self, path: &Path, what: &str, error: io::Error) {
        let line = format!("{}: {what}: {error}", path.display());
        tracing::error!(path = %path.display(), "{what}: {error}");
        Stats::add(&self.stats.errors, 1);
        lock(&self.failed).insert(path.to_owned());
        let mut errors = lock(&self.errors);
        if errors.len() < KEPT {
            errors.push(line);
        }
    }

    pub fn failed(&self, path: &Path) -> bool {
        lock(&self.failed).contains(path)
    }

    /// A difference between the source and the copy found by the verification.
    pub fn differ(&self, path: &Path, what: &str) {
        tracing::error!(path = %path.display(), "verification: {what}");
        Stats::add(&self.stats.differences, 1);
        let mut differences = lock(&self.differences);
        if differences.len() < KEPT {
            differences.push(format!("{}: {what}", path.display()));
        }
    }

    pub fn owners_skipped(&self) -> bool {
        self.owners_skipped.load(Ordering::Relaxed)
    }

    /// The result of a chown: a refusal without root is a warning (owners are then not kept).
    pub fn owner(&self, path: &Path, result: io::Result<()>) -> io::Result<()> {
        match result {
            Err(e) if entry::may_skip_owner(&e) => {
                if !self.owners_skipped.swap(true, Ordering::Relaxed) {
                    tracing::warn!(path = %path.display(), "owners are not kept: this process may not change them ({e})");
                }
                Stats::add(&self.stats.warnings, 1);
                Ok(())
            }
            other => other,
        }
    }

    /// The result of copying extended attributes: the target refusing one is a warning.
    pub fn xattrs(&self, path: &Path, result: io::Result<entry::XattrOutcome>) -> io::Result<()> {
        if let entry::XattrOutcome::Unsupported(why) = result? {
            Stats::add(&self.stats.warnings, 1);
            let logged = self.warnings_logged.fetch_add(1, Ordering::Relaxed);
            if logged < WARNINGS_LOGGED {
                tracing::warn!(path = %path.display(), "extended attribute not kept: {why}");
            } else if logged == WARNINGS_LOGGED {
                tracing::warn!("further warnings about extended attributes are not logged");
            }
        }
        Ok(())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// How a copy ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Result {
    /// Everything copied (and, with `--verify`, verified).
    Copied,
    /// Some entries could not be copied; they are named in the log and the summary.
    Incomplete,
    /// The verification found differences.
    VerificationFailed,
}

/// What a copy did; printed as the summary line (or JSON object).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub from: PathBuf,
    pub to: PathBuf,
    pub result: Result,
    /// The process's exit status.
    pub status: ExitStatus,
    pub files: u64,
    pub unchanged: u64,
    pub directories: u64,
    pub symlinks: u64,
    pub hard_links: u64,
    pub bytes: u64,
    pub skipped: u64,
    pub errors: u64,
    pub warnings: u64,
    pub verified: Option<u64>,
    pub differences: u64,
    pub seconds: f64,
    /// The first failures and differences (all are in the log).
    pub error_list: Vec<String>,
    pub difference_list: Vec<String>,
}

impl Report {
    /// One line for people: `copy A -> B: copied: ...`.
    pub fn line(&self) -> String {
        let result = match self.result {
            Result::Copied => "copied",
            Result::Incomplete => "incomplete",
            Result::VerificationFailed => "verification failed",
        };
        let verified = match self.verified {
            Some(n) => format!("verified {n} entries, {} differences", self.differences),
            None => "not verified".into(),
        };
        let mut line = format!(
            "copy {} -> {}: {result}: {} files ({} unchanged), {} directories, {} symlinks, {} hard links, {} bytes ({:.1} MiB), {} skipped, {} errors, {} warnings; {verified}; {:.1}s",
            self.from.display(),
            self.to.display(),
            self.files + self.unchanged,
            self.unchanged,
            self.directories,
            self.symlinks,
            self.hard_links,
            self.bytes,
            self.bytes as f64 / 1048576.0,
            self.skipped,
            self.errors,
            self.warnings,
            self.seconds,
        );
        if let Some(first) = self.error_list.first().or(self.difference_list.first()) {
            line.push_str(&format!("; first: {first}"));
        }
        line
    }

    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// Checks the directories: the source must be a directory, the target a directory or absent
/// (it is then made), and neither inside the other.
fn check(options: &Options) -> std::result::Result<fs::Metadata, CopyError> {
    let from = &options.from;
    let meta = fs::metadata(from)
        .map_err(|e| CopyError::Input(format!("--from {}: {e}", from.display())))?;
    if !meta.is_dir() {
        return Err(CopyError::Input(format!(
            "--from {}: not a directory",
            from.display()
        )));
    }
    match fs::metadata(&options.to) {
        Ok(to) if !to.is_dir() => {
            return Err(CopyError::Input(format!(
                "--to {}: not a directory",
                options.to.display()
            )));
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(&options.to).map_err(|source| CopyError::Io {
                path: options.to.clone(),
                what: "cannot create the target directory",
                source,
            })?;
        }
        Err(e) => {
            return Err(CopyError::Input(format!(
                "--to {}: {e}",
                options.to.display()
            )));
        }
    }
    let canonical = |path: &Path| {
        fs::canonicalize(path).map_err(|e| CopyError::Input(format!("{}: {e}", path.display())))
    };
    let (from, to) = (canonical(from)?, canonical(&options.to)?);
    if to.starts_with(&from) || from.starts_with(&to) {
        return Err(CopyError::Input(format!(
            "--from {} and --to {} overlap: neither may be inside the other",
            from.display(),
            to.display()
        )));
    }
    Ok(meta)
}

/// Copies `options.from` into `options.to`, then verifies the copy if asked.
pub fn run(options: &Options) -> std::result::Result<Report, CopyError> {
    let start = Instant::now();
    let root = check(options)?;
    let ctx = Arc::new(Context::new());
    let workers = options.workers.max(1);
    tracing::info!(
        from = %options.from.display(),
        to = %options.to.display(),
        workers,
        "copying"
    );
    {
        let _progress = Reporter::start(
            Arc::clone(&ctx.stats),
            Phase::Copy,
            options.progress_interval,
        );
        tree::copy(&ctx, &options.from, &options.to, &root, workers);
    }
    let stats = &ctx.stats;
    tracing::info!(
        files = Stats::get(&stats.files),
        unchanged = Stats::get(&stats.unchanged),
        bytes = Stats::get(&stats.bytes),
        errors = Stats::get(&stats.errors),
        seconds = format!("{:.1}", start.elapsed().as_secs_f64()),
        "copy pass done"
    );
    let verified = if options.verify {
        let _progress = Reporter::start(
            Arc::clone(&ctx.stats),
            Phase::Verify,
            options.progress_interval,
        );
        verify::verify(&ctx, &options.from, &options.to, workers);
        Some(Stats::get(&stats.verified))
    } else {
        None
    };
    let errors = Stats::get(&stats.errors);
    let differences = Stats::get(&stats.differences);
    let (result, status) = if differences > 0 {
        (Result::VerificationFailed, ExitStatus::CopyIncomplete)
    } else if errors > 0 {
        (Result::Incomplete, ExitStatus::CopyIncomplete)
    } else {
        (Result::Copied, ExitStatus::Ok)
    };
    Ok(Report {
        from: options.from.clone(),
        to: options.to.clone(),
        result,
        status,
        files: Stats::get(&stats.files),
        unchanged: Stats::get(&stats.unchanged),
        directories: Stats::get(&stats.dirs),
        symlinks: Stats::get(&stats.symlinks),
        hard_links: Stats::get(&stats.hard_links),
        bytes: Stats::get(&stats.bytes),
        skipped: Stats::get(&stats.skipped),
        errors,
        warnings: Stats::get(&stats.warnings),
        verified,
        differences,
        seconds: start.elapsed().as_secs_f64(),
        error_list: lock(&ctx.errors).clone(),
        difference_list: lock(&ctx.differences).clone(),
    })
}
