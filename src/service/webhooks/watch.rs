//! Events that no request makes, audited as they happen so that the
//! dispatcher sends them like any other: a grant or a pending request whose
//! time ran out (`grant.expired`, in the tenant's access log), and a backup
//! region whose oldest unverified copy is older than `region_lag_alert`
//! (`region.lagging`, then `region.recovered`, host-level).
//!
//! Each is audited first and noted after (trees `webhook_expired`,
//! `webhook_lagging`): a kill between the two audits it again on the next
//! round, so an event is told at least once, never lost.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::audit::{Actor, Event};
use crate::grants::{ClosedBecause, GrantState, GRANTS};
use crate::ids::unix_now;
use crate::storage::{Kind, StorageError};

use super::Webhooks;

/// Grants whose expiry was audited (grant id → when).
const EXPIRED: Kind<u64> = Kind::new("webhook_expired");
/// Regions reported lagging (region → since when).
const LAGGING: Kind<u64> = Kind::new("webhook_lagging");

/// How often the watch looks for expired grants.
const EVERY: Duration = Duration::from_secs(1);

impl Webhooks {
    /// Runs [`watch`](Self::watch) when a second has passed since the last;
    /// the regions' lag (a walk of every unverified copy) only every quarter
    /// of `region_lag_alert`, between 1 s and 30 s.
    pub(super) fn watch_if_due(&self) {
        let regions_every = (self.settings.region_lag_alert / 4)
            .clamp(Duration::from_secs(1), Duration::from_secs(30));
        let regions = {
            let mut last = self.last_watch.lock().expect("webhooks poisoned");
            if last.0.is_some_and(|at: Instant| at.elapsed() < EVERY) {
                return;
            }
            last.0 = Some(Instant::now());
            let due = last
                .1
                .is_none_or(|at: Instant| at.elapsed() >= regions_every);
            if due {
                last.1 = Some(Instant::now());
            }
            due
        };
        let watched = self.watch_grants().and_then(|()| {
            if regions {
                self.watch_regions()
            } else {
                Ok(())
            }
        });
        if let Err(error) = watched {
            tracing::error!(%error, "webhook watch");
        }
    }

    /// Audits the expiries and region transitions not yet audited.
    pub fn watch(&self) -> Result<(), StorageError> {
        self.watch_grants()?;
        self.watch_regions()
    }

    fn watch_grants(&self) -> Result<(), StorageError> {
        let catalog = &self.storage.catalog;
        let now = unix_now();
        for grant in GRANTS.all(catalog)? {
            // Closed by a person: audited when it was done.
            if matches!(grant.state, GrantState::Closed { .. }) {
                continue;
            }
            let GrantState::Closed {
                because: ClosedBecause::Expired,
                at,
                ..
            } = grant.state_at(now)
            else {
                continue;
            };
            if EXPIRED.get(catalog, &grant.id)?.is_some() {
                continue;
            }
            let event = Event::new("grant.expired", Actor::host())
                .tenant(&grant.tenant)
                .grant(&grant.id)
                .detail("was", grant.state.name())
                .detail("emergency", grant.emergency)
                .detail("expired_at", crate::ids::rfc3339(at));
            self.audit
                .append(event)
                .map_err(|e| StorageError::Damaged(format!("audit a grant's expiry: {e}")))?;
            EXPIRED.put(catalog, &grant.id, &now)?;
        }
        Ok(())
    }

    fn watch_regions(&self) -> Result<(), StorageError> {
        let Some(replication) = &self.replication else {
            return Ok(());
        };
        let catalog = &self.storage.catalog;
        let limit = self.settings.region_lag_alert.as_secs();
        for lag in replication.lag(&self.storage) {
            let behind = lag.lag_seconds.max(lag.log_lag_seconds);
            let lagging = (lag.behind > 0 || lag.log_behind > 0) && behind >= limit;
            let region = lag.region.as_str();
            let noted = LAGGING.get(catalog, region)?;
            let kind = match (lagging, noted) {
                (true, None) => "region.lagging",
                (false, Some(_)) => "region.recovered",
                _ => continue,
            };
            let mut event = Event::new(kind, Actor::host())
                .detail("region", region)
                .detail("backups_behind", lag.behind)
                .detail("log_segments_behind", lag.log_behind)
                .detail("lag_seconds", behind)
                .detail("failed", lag.failed)
                .detail("threshold_seconds", limit);
            if let Some(error) = &lag.last_error {
                event = event.detail("last_error", json!(truncate(error, 200)));
            }
            self.audit
                .append(event)
                .map_err(|e| StorageError::Damaged(format!("audit a region's lag: {e}")))?;
            if lagging {
                LAGGING.put(catalog, region, &unix_now())?;
            } else {
                LAGGING.remove(catalog, region)?;
            }
        }
        Ok(())
    }
}

fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
