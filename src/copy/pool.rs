//! A few worker threads fed through a bounded queue, so that the walk never runs far ahead of
//! the copying (memory stays flat however large the tree).

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread;

type Job = Box<dyn FnOnce() + Send>;

pub struct Pool {
    send: Option<SyncSender<Job>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Pool {
    /// `workers` threads; at most `workers * 64` jobs wait.
    pub fn new(name: &str, workers: usize) -> Self {
        let workers = workers.max(1);
        let (send, receive) = sync_channel::<Job>(workers * 64);
        let receive = Arc::new(Mutex::new(receive));
        let threads = (0..workers)
            .map(|i| {
                let receive: Arc<Mutex<Receiver<Job>>> = Arc::clone(&receive);
                thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(move || {
                        loop {
                            let job = {
                                let receive = receive.lock().unwrap_or_else(|e| e.into_inner());
                                receive.recv()
                            };
                            match job {
                                Ok(job) => job(),
                                Err(_) => break,
                            }
                        }
                    })
                    .expect("cannot start a worker thread")
            })
            .collect();
        Self {
            send: Some(send),
            threads,
        }
    }

    /// Queues a job; waits while the queue is full.
    pub fn run(&self, job: impl FnOnce() + Send + 'static) {
        if let Some(send) = &self.send {
            // The workers only stop once the sender is gone, so the send cannot fail.
            let _ = send.send(Box::new(job));
        }
    }

    /// Waits until every queued job has run.
    pub fn finish(mut self) {
        self.join();
    }

    fn join(&mut self) {
        drop(self.send.take());
        for thread in self.threads.drain(..) {
            if let Err(panic) = thread.join() {
                std::panic::resume_unwind(panic);
            }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.join();
    }
}
