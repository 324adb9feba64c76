//! Slots for long jobs (exports, imports, restores, backups, upgrades): a
//! bound per tenant and one for the host. A job beyond them is refused at
//! once with 429 and `Retry-After`, so that long work can never fill the
//! blocking pool that authentication and the record path use.

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
pub struct JobSlot {
    slots: Arc<JobSlots>,
    tenant: Option<TenantId>,
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
        Ok(JobSlot {
            slots: self.clone(),
            tenant: tenant.cloned(),
        })
    }
}

impl Drop for JobSlot {
    fn drop(&mut self) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_per_tenant_and_in_all_and_freed_on_drop() {
        let slots = JobSlots::new(Limits {
            long_jobs_per_tenant: 2,
            long_jobs_total: 3,
            stall_timeout: std::time::Duration::from_secs(1),
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
}
