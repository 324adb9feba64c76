//! The backup scheduler: every minute (or more often when the host's
//! default interval is shorter), a DR backup for each active tenant whose
//! last one is older than its interval. Each is audited before it starts;
//! when the audit log refuses, the round skips the tenant.

use std::sync::Arc;
use std::time::Duration;

use crate::audit::{Actor, AuditLog, Event};
use crate::ids::TenantId;
use crate::schema::Registry;
use crate::service::Backups;
use crate::storage::Storage;
use crate::tasks::Stop;

/// Runs until `stop` (between two rounds; a round in progress finishes).
pub async fn run_scheduler(
    backups: Arc<Backups>,
    storage: Arc<Storage>,
    schemas: Registry,
    audit: Arc<AuditLog>,
    default: Option<Duration>,
    stop: Stop,
) {
    let default = default.map(|d| d.as_secs());
    // A tenant's own schedule is in hours: a check a minute is enough.
    let every = default.map(|s| s.clamp(1, 60)).unwrap_or(60);
    let mut ticker = tokio::time::interval(Duration::from_secs(every));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let (storage, schemas, backups, audit) = (
            storage.clone(),
            schemas.clone(),
            backups.clone(),
            audit.clone(),
        );
        let round = crate::tasks::blocking(move || {
            let before = |tenant: &TenantId| {
                let event = Event::new("backup.started", Actor::host())
                    .tenant(tenant)
                    .detail("kind", "scheduled");
                match audit.append(event) {
                    Ok(_) => true,
                    Err(error) => {
                        tracing::error!(%error, "cannot audit a scheduled backup; skipped this round");
                        false
                    }
                }
            };
            backups.run_due(&storage, &schemas, default, &before)
        })
        .await;
        if let Err(error) = round {
            tracing::error!(%error, "backup scheduler round failed");
        }
    }
}
