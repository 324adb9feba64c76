//! Slots for long jobs (exports, imports, restores, backups, upgrades): a
//! bound per tenant and one for the host. A job beyond them is refused at
//! once with 429 and `Retry-After`. Each long job runs on a thread of its
//! own ([`run_long`]), never on the blocking pool that authentication and the
//! record path use, so stalled exports cannot starve them; the slots bound
//! those threads. Request bodies held in memory have a host-wide budget
//! ([`BodyBudget`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::ApiError;
use crate::config::Limits;
use crate::ids::TenantId;

/// Seconds a refused caller is asked to wait before trying again.
const RETRY_AFTER_SECS: u64 = 5;

pub struct JobSlots {
    limits: Limits,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    total: usize,
    per_tenant: HashMap<TenantId, usize>,
}

/// A held slot; dropping it frees the slot (when the job ends, however).
pub struct JobSlot(Arc<Claim>);

/// Frees a job's slot when dropped, if the job has not freed it already: a
/// streamed export frees its slot the moment its body ends, so a client that
/// has the whole archive can ask for the next one at once.
pub struct SlotRelease(Arc<Claim>);

struct Claim {
    slots: Arc<JobSlots>,
    tenant: Option<TenantId>,
    freed: std::sync::atomic::AtomicBool,
}

impl JobSlots {
    pub fn new(limits: Limits) -> Arc<JobSlots> {
        Arc::new(JobSlots {
            limits,
            held: Mutex::new(Held::default()),
        })
    }

    /// Every host-wide slot is taken: new long jobs are refused.
    pub fn saturated(&self) -> bool {
        self.held.lock().expect("job slots poisoned").total >= self.limits.long_jobs_total
    }

    /// A slot for a long job of `tenant` (or of the host, for imports).
    pub fn take(
        self: &Arc<Self>,
        tenant: Option<&TenantId>,
        what: &str,
    ) -> Result<JobSlot, ApiError> {
        let mut held = self.held.lock().expect("job slots poisoned");
        if held.total >= self.limits.long_jobs_total {
            crate::metrics::refused("long_jobs_host");
            return Err(ApiError::TooBusy {
                message: format!(
                    "the host runs {} long jobs already (its limit); {what} refused, try again shortly",
                    held.total
                ),
                retry_after: RETRY_AFTER_SECS,
            });
        }
        if let Some(tenant) = tenant {
            let mine = held.per_tenant.get(tenant).copied().unwrap_or(0);
            if mine >= self.limits.long_jobs_per_tenant {
                crate::metrics::refused("long_jobs_tenant");
                return Err(ApiError::TooBusy {
                    message: format!(
                        "this tenant runs {mine} long jobs already (exports, backups, restores, upgrades; the limit is {}); {what} refused, try again when one ends",
                        self.limits.long_jobs_per_tenant
                    ),
                    retry_after: RETRY_AFTER_SECS,
                });
            }
            *held.per_tenant.entry(tenant.clone()).or_default() += 1;
        }
        held.total += 1;
        Ok(JobSlot(Arc::new(Claim {
            slots: self.clone(),
            tenant: tenant.cloned(),
            freed: std::sync::atomic::AtomicBool::new(false),
        })))
    }
}

impl JobSlot {
    /// A handle that frees this slot when dropped, before the job's thread ends.
    pub fn release(&self) -> SlotRelease {
        SlotRelease(self.0.clone())
    }
}

impl Claim {
    /// Frees the slot once, whichever of its holders goes first.
    fn free(&self) {
        if self.freed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let mut held = self.slots.held.lock().expect("job slots poisoned");
        held.total -= 1;
        if let Some(tenant) = &self.tenant {
            if let Some(count) = held.per_tenant.get_mut(tenant) {
                *count -= 1;
                if *count == 0 {
                    held.per_tenant.remove(tenant);
                }
            }
        }
    }
}

impl Drop for JobSlot {
    fn drop(&mut self) {
        self.0.free();
    }
}

impl Drop for SlotRelease {
    fn drop(&mut self) {
        self.0.free();
    }
}

/// Runs a long job on a thread of its own (`coffer-job`), inside the current
/// span. The slot is the proof that the job is counted (these threads are
/// bounded by the host's long-job limit) and is held until the job's work
/// ends, freed before its answer is handed over; the job runs to completion
/// even if the returned future is dropped.
pub fn run_long<T: Send + 'static>(
    slot: JobSlot,
    work: impl FnOnce() -> T + Send + 'static,
) -> impl std::future::Future<Output = Result<T, ApiError>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let span = tracing::Span::current();
    // Inside the runtime's context, as a blocking-pool thread would be.
    let runtime = tokio::runtime::Handle::try_current().ok();
    let spawned = std::thread::Builder::new()
        .name("coffer-job".into())
        .spawn(move || {
            crate::tasks::lower_priority();
            let _context = runtime.as_ref().map(|r| r.enter());
            let answer = span.in_scope(work);
            // Freed before the answer goes: a caller who has it may start
            // the next job at once.
            drop(slot);
            let _ = tx.send(answer);
        });
    async move {
        spawned.map_err(|error| {
            ApiError::Unavailable(format!("cannot start a thread for the job: {error}"))
        })?;
        rx.await
            .map_err(|_| ApiError::internal("the long job's thread ended without an answer"))
    }
}

/// The host-wide budget of request-body bytes held in memory at once: a
/// body that would go beyond it is refused with 429 and `Retry-After`
/// instead of growing the process.
pub struct BodyBudget {
    bytes: Arc<tokio::sync::Semaphore>,
}

/// Bytes of the budget held by one body; given back when dropped.
pub struct BodyBytes(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

impl BodyBudget {
    pub fn new(bytes: usize) -> BodyBudget {
        BodyBudget {
            bytes: Arc::new(tokio::sync::Semaphore::new(bytes)),
        }
    }

    /// Takes `n` more bytes for a body that already holds `held`.
    pub fn take(&self, held: &mut Option<BodyBytes>, n: usize) -> Result<(), ApiError> {
        let n = u32::try_from(n).map_err(|_| ApiError::PayloadTooLarge(u32::MAX as u64))?;
        let permit = self.bytes.clone().try_acquire_many_owned(n).map_err(|_| {
            crate::metrics::refused("request_memory");
            ApiError::TooBusy {
                message:
                    "the host holds as many request bytes as it allows at once; try again shortly"
                        .into(),
                retry_after: 1,
            }
        })?;
        match held {
            Some(BodyBytes(existing)) => existing.merge(permit),
            None => *held = Some(BodyBytes(permit)),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_per_tenant_and_in_all_and_freed_on_drop() {
        let slots = JobSlots::new(Limits {
            long_jobs_per_tenant: 2,
            long_jobs_total: 3,
            stall_timeout: std::time::Duration::from_secs(1),
            buffered_body_bytes: 1 << 20,
            job_max_bytes_per_s: None,
        });
        let (a, b) = (TenantId::generate().unwrap(), TenantId::generate().unwrap());
        let first = slots.take(Some(&a), "export").unwrap();
        let _second = slots.take(Some(&a), "export").unwrap();
        let refused = slots.take(Some(&a), "export").err().unwrap();
        assert_eq!(refused.status().as_u16(), 429);
        let _third = slots.take(Some(&b), "backup").unwrap();
        assert!(slots.take(Some(&b), "backup").is_err(), "host-wide bound");
        drop(first);
        assert!(slots.take(Some(&a), "export").is_ok());
    }

    #[test]
    fn a_release_frees_its_slot_once_before_the_job_ends() {
        let slots = JobSlots::new(Limits {
            long_jobs_per_tenant: 1,
            long_jobs_total: 2,
            stall_timeout: std::time::Duration::from_secs(1),
            buffered_body_bytes: 1 << 20,
            job_max_bytes_per_s: None,
        });
        let a = TenantId::generate().unwrap();
        let job = slots.take(Some(&a), "export").unwrap();
        let release = job.release();
        assert!(slots.take(Some(&a), "export").is_err());
        drop(release);
        let next = slots.take(Some(&a), "export").unwrap();
        // The first job's thread ends later: it must not free the second's slot.
        drop(job);
        assert!(slots.take(Some(&a), "export").is_err());
        drop(next);
        assert!(slots.take(Some(&a), "export").is_ok());
    }

    #[test]
    fn the_body_budget_refuses_beyond_its_bytes_and_refills_when_bodies_go() {
        let budget = BodyBudget::new(1000);
        let (mut first, mut second) = (None, None);
        budget.take(&mut first, 600).unwrap();
        budget.take(&mut first, 300).unwrap();
        let refused = budget.take(&mut second, 200).err().unwrap();
        assert_eq!(refused.status().as_u16(), 429);
        drop(first);
        budget.take(&mut second, 1000).unwrap();
    }
}
