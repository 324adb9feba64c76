//! What a start must ship. A start after a crash looks at every tenant's
//! log (each one's database opened by the shipper, through the pool); a start
//! after a clean stop looks only at the tenants that stop could not ship or
//! saw written while it shipped, so that a host of many tenants does not
//! open them all at every restart.
//!
//! A binary from before this record neither reads nor removes it. After a
//! downgrade and back, a start that finds a segment shipped after the
//! record was written knows another run wrote meanwhile and looks at every
//! tenant; one whose writes were all lost before they shipped (killed
//! within a segment's seconds) is the case this cannot see.

use super::*;

/// The record a clean stop leaves for the next start (one key).
const CLEAN_STOP: Kind<CleanStop> = Kind::new("log_clean_stop");
const CLEAN_STOP_KEY: &str = "last";

/// What a stop left: the tenants whose logs may still hold changes. Every
/// other tenant's log was empty when it was written: each change is noted in
/// the change feed until its tenant ships, a failed ship stays pending, the
/// stop shipped everything pending and noted, and what was noted or still
/// held by a job (which may write on) when it ended is listed here. Removed
/// by the next start before it ships anything, so a crash after that start
/// makes the one after it look at every tenant again.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CleanStop {
    format: u32,
    at_ms: u64,
    left: Vec<TenantId>,
}

impl ChangeLog {
    /// After a restart: every tenant whose database still holds changes is
    /// shipped, a segment recorded but never registered (a crash between
    /// the two) is registered or forgotten, and one whose spool copy a crash
    /// tore before it reached the disk is forgotten (see `forget_torn`).
    pub fn recover(&self) {
        let segments = SEGMENTS.all(&self.storage.catalog).unwrap_or_default();
        let newest_segment = segments.iter().map(|s| s.created_at).max().unwrap_or(0);
        for record in segments {
            let replicas = self
                .backups
                .replication
                .replicas_of(&self.storage, &record.id);
            if !replicas.is_empty() {
                let unfinished = replicas
                    .iter()
                    .any(|r| !matches!(r.state, ReplicaState::Verified | ReplicaState::Deleting));
                if unfinished
                    && !record.synced
                    && !self
                        .backups
                        .spool
                        .intact(record.tenant.as_str(), &record.id)
                {
                    self.forget_torn(&record);
                }
                continue;
            }
            match self.backups.spool.get(record.tenant.as_str(), &record.id) {
                Ok(Some(stored)) => {
                    if let Err(error) = self.backups.replication.register(&self.storage, &stored) {
                        tracing::error!(%error, segment = %record.id, "register a log segment");
                    }
                }
                _ => {
                    let _ = SEGMENTS.remove(&self.storage.catalog, &record.key());
                }
            }
        }
        // What the last stop left to ship; read once (a crash after this
        // start must not trust it again).
        let clean = CLEAN_STOP
            .get(&self.storage.catalog, CLEAN_STOP_KEY)
            .ok()
            .flatten();
        if clean.is_some() {
            if let Err(error) = CLEAN_STOP.remove(&self.storage.catalog, CLEAN_STOP_KEY) {
                tracing::error!(%error, "forget the last stop's record");
                return self.ship_at_start(None);
            }
        }
        // A segment shipped after that stop: some other run (an older
        // binary, which neither reads nor removes the record) wrote since.
        let clean = clean.filter(|stop| newest_segment <= stop.at_ms / 1000);
        self.ship_at_start(clean);
    }

    /// Marks the tenants whose logs may hold changes as pending: after a
    /// clean stop, those it left (see [`CleanStop`]); otherwise (a crash, a
    /// first start, an older binary's run) all.
    fn ship_at_start(&self, clean: Option<CleanStop>) {
        let now = Instant::now();
        let (mut pending, mut skipped) = (self.pending.lock().expect("pending"), 0);
        for tenant in self.storage.catalog.tenants() {
            if matches!(tenant.state, TenantState::Destroyed | TenantState::Moved) {
                continue;
            }
            let may_hold_changes = clean
                .as_ref()
                .is_none_or(|stop| stop.left.contains(&tenant.id));
            if may_hold_changes {
                pending.insert(tenant.id.clone(), now);
            } else {
                skipped += 1;
            }
        }
        tracing::info!(
            to_look_at = pending.len(),
            skipped,
            clean_stop = clean.is_some(),
            "change logs to ship after the start"
        );
    }

    /// Ships every tenant with changes now (a stop), then records what it
    /// left, so that the next start looks only at those (see [`CleanStop`]).
    /// `record` is false when something may still write unseen (a
    /// background loop that did not stop): the next start then looks at
    /// every tenant.
    pub fn ship_all(&self, record: bool) {
        let mut tenants: Vec<TenantId> = self
            .pending
            .lock()
            .expect("pending")
            .drain()
            .map(|(t, _)| t)
            .collect();
        tenants.extend(self.storage.changes.take());
        tenants.sort();
        tenants.dedup();
        let mut left = Vec::new();
        for tenant in tenants {
            if let Err(error) = self.ship(&tenant) {
                tracing::error!(%error, tenant_id = %tenant, "ship the change log");
                left.push(tenant);
            }
        }
        if !record {
            return;
        }
        // Noted while this shipped, or held by a job that may write on.
        left.extend(self.storage.changes.take());
        left.extend(self.storage.held_tenants());
        left.sort();
        left.dedup();
        let stop = CleanStop {
            format: 1,
            at_ms: crate::ids::unix_now_ms(),
            left,
        };
        match CLEAN_STOP.put(&self.storage.catalog, CLEAN_STOP_KEY, &stop) {
            Ok(()) => tracing::info!(left = stop.left.len(), "change logs shipped at the stop"),
            Err(error) => tracing::error!(%error, "record what the stop left to ship"),
        }
    }

    /// A segment's spool copy is not whole and some region still lacks it.
    /// When its changes are still in the tenant's database (the crash came
    /// before `ship` synced the copy and trimmed the log), they ship again
    /// in a new segment, so this one is tombstoned everywhere; otherwise it
    /// is left for the replicator, which reports the damage on every try.
    fn forget_torn(&self, record: &SegmentRecord) {
        let still_logged = self
            .storage
            .catalog
            .tenant(&record.tenant)
            .and_then(|tenant| self.storage.tenant_db(&tenant).ok())
            .and_then(|db| {
                db.changes_after(record.range.first_seq.saturating_sub(1), 1)
                    .ok()
            })
            .is_some_and(|c| c.first().is_some_and(|c| c.seq == record.range.first_seq));
        if !still_logged {
            tracing::error!(segment = %record.id, tenant_id = %record.tenant, "a log segment's spool copy is damaged and its changes are no longer on this host");
            return;
        }
        tracing::warn!(segment = %record.id, tenant_id = %record.tenant, "a log segment torn by a crash before it reached the disk: its changes ship again");
        let _ = self
            .backups
            .replication
            .tombstone(&self.storage, &record.id, "torn by a crash");
        let _ = SEGMENTS.remove(&self.storage.catalog, &record.key());
    }
}
