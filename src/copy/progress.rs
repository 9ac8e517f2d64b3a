//! Counters shared by the walk and the workers, and the log line that reports them every few
//! seconds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// What the copy did so far; every field only grows.
#[derive(Debug, Default)]
pub struct Stats {
    /// Regular files copied.
    pub files: AtomicU64,
    /// Regular files already identical in the target (a rerun), left as they were.
    pub unchanged: AtomicU64,
    pub dirs: AtomicU64,
    pub symlinks: AtomicU64,
    /// Second and further names of an inode, linked in the copy.
    pub hard_links: AtomicU64,
    /// Bytes of data copied (holes not counted; unchanged files not counted).
    pub bytes: AtomicU64,
    /// Devices, FIFOs and sockets left out.
    pub skipped: AtomicU64,
    /// Entries that could not be copied.
    pub errors: AtomicU64,
    /// Attributes the target could not take (extended attributes, owners without the right to
    /// chown).
    pub warnings: AtomicU64,
    /// Entries compared by the verification.
    pub verified: AtomicU64,
    /// Bytes hashed by the verification (the source's; the copy's are as many).
    pub verified_bytes: AtomicU64,
    /// Differences found by the verification.
    pub differences: AtomicU64,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// A phase of the run, for the progress lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Copy,
    Verify,
}

/// Logs progress every `every` until dropped.
pub struct Reporter {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Reporter {
    pub fn start(stats: Arc<Stats>, phase: Phase, every: Duration) -> Self {
        let (stop, stopped) = mpsc::channel::<()>();
        let start = Instant::now();
        let last = Mutex::new((start, 0u64));
        let thread = thread::Builder::new()
            .name("progress".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    let now = Instant::now();
                    let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
                    let (files, bytes) = match phase {
                        Phase::Copy => (
                            Stats::get(&stats.files) + Stats::get(&stats.unchanged),
                            Stats::get(&stats.bytes),
                        ),
                        Phase::Verify => (
                            Stats::get(&stats.verified),
                            Stats::get(&stats.verified_bytes),
                        ),
                    };
                    let seconds = now.duration_since(last.0).as_secs_f64().max(1e-3);
                    let rate = (bytes.saturating_sub(last.1)) as f64 / seconds / 1048576.0;
                    *last = (now, bytes);
                    match phase {
                        Phase::Copy => tracing::info!(
                            files,
                            bytes,
                            mib_per_s = format!("{rate:.1}"),
                            elapsed_s = start.elapsed().as_secs(),
                            "copying: {files} files, {} MiB, {rate:.1} MiB/s",
                            bytes / 1048576
                        ),
                        Phase::Verify => tracing::info!(
                            entries = files,
                            bytes,
                            mib_per_s = format!("{rate:.1}"),
                            elapsed_s = start.elapsed().as_secs(),
                            "verifying: {files} entries, {} MiB hashed, {rate:.1} MiB/s",
                            bytes / 1048576
                        ),
                    }
                }
            })
            .ok();
        Self {
            stop: Some(stop),
            thread,
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
