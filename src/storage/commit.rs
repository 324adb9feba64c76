//! Group commit: many writers that need durability share one `flush()`.
//!
//! A writer applies its batch, takes a ticket, then waits until a flush that began
//! after its batch has finished. Whoever finds no flush running becomes the leader
//! and flushes for everyone who is waiting; the others sleep on a condition
//! variable. With one writer this is one flush per write; with 64 it is one flush
//! per round of however many writes arrived during the previous flush.

use std::sync::{Condvar, Mutex};

#[derive(Default)]
pub struct GroupCommit {
    state: Mutex<State>,
    flushed: Condvar,
}

#[derive(Default)]
struct State {
    /// Tickets handed out so far: one per write that asked for durability.
    issued: u64,
    /// Every ticket up to this one is durable.
    durable: u64,
    flushing: bool,
    /// The error of the last flush, handed to every writer it covered.
    last_error: Option<String>,
}

impl GroupCommit {
    /// Call after the write is applied in memory; returns once it is on disk.
    pub fn wait_durable<E>(&self, flush: impl Fn() -> Result<(), E>) -> Result<(), String>
    where
        E: std::fmt::Display,
    {
        let mut state = self.state.lock().expect("group commit lock poisoned");
        state.issued += 1;
        let ticket = state.issued;
        loop {
            if state.durable >= ticket {
                return match &state.last_error {
                    Some(error) => Err(error.clone()),
                    None => Ok(()),
                };
            }
            if !state.flushing {
                state.flushing = true;
                let covers = state.issued;
                let writes = covers - state.durable;
                drop(state);
                let started = std::time::Instant::now();
                let result = flush().map_err(|e| e.to_string());
                crate::metrics::durable_flush(writes, started.elapsed());
                state = self.state.lock().expect("group commit lock poisoned");
                state.flushing = false;
                state.durable = covers;
                state.last_error = result.err();
                self.flushed.notify_all();
            } else {
                state = self
                    .flushed
                    .wait(state)
                    .expect("group commit lock poisoned");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    #[test]
    fn concurrent_writers_share_flushes_and_all_return() {
        let commit = Arc::new(GroupCommit::default());
        let flushes = Arc::new(AtomicU64::new(0));
        let writers: Vec<_> = (0..32)
            .map(|_| {
                let commit = commit.clone();
                let flushes = flushes.clone();
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        commit
                            .wait_durable(|| {
                                flushes.fetch_add(1, Ordering::SeqCst);
                                std::thread::sleep(std::time::Duration::from_millis(1));
                                Ok::<(), String>(())
                            })
                            .unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        let flushes = flushes.load(Ordering::SeqCst);
        assert!(
            (20..640).contains(&flushes),
            "{flushes} flushes for 640 writes"
        );
    }

    #[test]
    fn a_failed_flush_reaches_the_writer() {
        let commit = GroupCommit::default();
        let result = commit.wait_durable(|| Err::<(), _>("disk on fire"));
        assert_eq!(result, Err("disk on fire".to_string()));
        assert!(commit.wait_durable(|| Ok::<(), String>(())).is_ok());
    }
}
