//! Work off the async threads, one way each: [`blocking`] runs a blocking
//! call on the blocking pool inside the caller's tracing span, and
//! [`Background`] starts the host's long-lived loops (sweeper, scheduler,
//! replicator, checkpointer) with one stop token, and at shutdown asks them
//! to stop and waits for them, so that none is cut off in the middle of a
//! step.

use std::future::Future;
use std::time::Duration;

pub use tokio_util::sync::CancellationToken as Stop;

/// Runs `work` on the blocking pool, inside the current span. The work runs
/// to completion even if the returned future is dropped.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(work)).await
}

/// The nice value of threads that run long jobs (see [`lower_priority`]).
pub const JOB_NICE: i32 = 10;

/// Lowers the calling thread's CPU priority to [`JOB_NICE`] (never raises
/// it), for the rest of its life and for the threads it starts: Linux keeps
/// a nice value per thread, and a new thread inherits its creator's. An
/// export, backup or restore then takes the CPU that requests leave; on two
/// cores, an export's two busy threads otherwise delayed every tenant's
/// writes. Best effort: on failure the job runs at normal priority.
pub fn lower_priority() {
    let me = Some(rustix::thread::gettid());
    // Never higher than it is (a host started at nice 15 stays there).
    if rustix::process::getpriority_process(me).is_ok_and(|nice| nice < JOB_NICE) {
        let _ = rustix::process::setpriority_process(me, JOB_NICE);
    }
}

/// The host's background loops, and the token that stops them.
#[derive(Default)]
pub struct Background {
    stop: Stop,
    running: Vec<(&'static str, tokio::task::JoinHandle<()>)>,
}

impl Background {
    pub fn new() -> Background {
        Background::default()
    }

    /// Starts `task` with the stop token; it should return soon after the
    /// token is cancelled (between two steps, never in the middle of one).
    pub fn spawn<F>(&mut self, name: &'static str, task: impl FnOnce(Stop) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let handle = tokio::spawn(task(self.stop.clone()));
        self.running.push((name, handle));
    }

    /// Cancels the token and waits up to `within` for every loop to return;
    /// a loop that does not is named in the log and abandoned. Returns the
    /// names of those (they may still be in the middle of a step).
    pub async fn stop(self, within: Duration) -> Vec<&'static str> {
        self.stop.cancel();
        let deadline = tokio::time::Instant::now() + within;
        let mut late = Vec::new();
        for (name, handle) in self.running {
            match tokio::time::timeout_at(deadline, handle).await {
                Ok(Ok(())) => tracing::debug!(task = name, "background task stopped"),
                Ok(Err(error)) => tracing::error!(task = name, %error, "background task failed"),
                Err(_) => {
                    late.push(name);
                    tracing::warn!(task = name, "background task did not stop in time")
                }
            }
        }
        late
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// The nice value the system reports for the calling thread.
    fn nice_now() -> i32 {
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap()
    }

    #[test]
    fn a_job_thread_and_the_threads_it_starts_run_at_the_lower_priority() {
        let before = nice_now();
        let (job, child) = std::thread::spawn(|| {
            lower_priority();
            (nice_now(), std::thread::spawn(nice_now).join().unwrap())
        })
        .join()
        .unwrap();
        let lowered = before.max(JOB_NICE);
        assert_eq!((job, child), (lowered, lowered));
        // Only that thread: the one that started it is as it was.
        assert_eq!(nice_now(), before);
    }

    #[tokio::test]
    async fn stop_waits_for_a_loop_to_finish_its_step() {
        let finished = Arc::new(AtomicBool::new(false));
        let mut background = Background::new();
        let done = finished.clone();
        background.spawn("stepper", move |stop| async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                }
                // One step that must not be cut off in the middle.
                blocking(|| std::thread::sleep(Duration::from_millis(20)))
                    .await
                    .unwrap();
            }
            done.store(true, Ordering::SeqCst);
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(background.stop(Duration::from_secs(5)).await.is_empty());
        assert!(finished.load(Ordering::SeqCst));
    }
}
