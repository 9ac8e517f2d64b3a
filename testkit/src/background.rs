//! One stoppable background task: a thread of its own with a current-thread tokio runtime, that
//! runs until its [`Background`] handle is dropped. The kubelet stand-in, the hook runner and the
//! fault proxy each run on one, so that they keep working while a test's runtime waits for a
//! subprocess, and stop (joined) when the test ends, also when it panics.

use std::{sync::mpsc, thread, time::Duration};

use futures::channel::oneshot;

/// The handle of a running background task: dropping it stops the task and joins its thread.
#[derive(Debug)]
pub struct Background {
    name: String,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

/// What a background task sends once it is ready to work (a watch established, a port bound).
#[derive(Debug)]
pub struct Ready<T>(Option<mpsc::Sender<T>>);

impl<T> Ready<T> {
    /// Tells [`Background::start`] that the task is ready; later calls do nothing.
    pub fn send(&mut self, value: T) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(value);
        }
    }
}

impl Background {
    /// Runs `task(ready)` on a new thread named `name` until the handle is dropped (or the task
    /// ends by itself, which is logged). Returns once the task calls [`Ready::send`], with the
    /// value sent; `None` if it did not within `ready_within` or ended first.
    pub fn start<T, F, Fut>(name: &str, ready_within: Duration, task: F) -> (Background, Option<T>)
    where
        T: Send + 'static,
        F: FnOnce(Ready<T>) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = mpsc::channel::<T>();
        let label = name.to_owned();
        let thread = thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    tokio::select! {
                        _ = stop_rx => {}
                        () = task(Ready(Some(ready_tx))) => eprintln!("{label} stopped by itself"),
                    }
                });
            })
            .unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        let value = ready_rx.recv_timeout(ready_within).ok();
        let handle = Background {
            name: name.to_owned(),
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        (handle, value)
    }

    /// The thread's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };

    #[test]
    fn ready_value_comes_back_and_drop_stops_the_task() {
        let stopped = Arc::new(AtomicBool::new(false));
        let flag = stopped.clone();
        let (handle, value) = Background::start(
            "test-task",
            Duration::from_secs(5),
            |mut ready| async move {
                struct SetOnDrop(Arc<AtomicBool>);
                impl Drop for SetOnDrop {
                    fn drop(&mut self) {
                        self.0.store(true, Ordering::SeqCst);
                    }
                }
                let _guard = SetOnDrop(flag);
                ready.send(42);
                futures::future::pending::<()>().await;
            },
        );
        assert_eq!(value, Some(42));
        assert_eq!(handle.name(), "test-task");
        assert!(!stopped.load(Ordering::SeqCst));
        drop(handle);
        assert!(stopped.load(Ordering::SeqCst));
    }
}
