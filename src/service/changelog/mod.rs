//! Continuous backup: every tenant's change log shipped to every backup
//! region in sealed segments, `replicated` writes held until their segment is
//! verified in enough regions, retention and erasure of the log. Restoring
//! from it is `pitr`.
//!
//! The shipper takes the tenants whose databases logged changes
//! (`Storage::changes`), and for each one, once its oldest unshipped change is
//! `segment_after` old (at once when a `replicated` write waits), seals the
//! changes into a segment in the spool (`backup::segment`), records it
//! (`SEGMENTS`), registers it with replication — which uploads, verifies,
//! retries and catches up exactly as for backups — and only then trims the
//! tenant's local log. A crash before the trim ships the same changes again
//! under a new id: restores take either copy.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::backups::Backups;
use crate::backup::segment::{self, LogRange, SEGMENT_KIND};
use crate::backup::store::StoredBackup;
use crate::backup::{BackupError, HashingWriter};
use crate::crypto;
use crate::ids::{unix_now, unix_now_ms, Region, TenantId};
use crate::replication::ReplicaState;
use crate::schema::Registry;
use crate::storage::{Change, Kind, Storage, StorageError, TenantState};

mod bases;
mod restart;

/// Every segment this host shipped (key: `<tenant>/<segment id>`, so that
/// one tenant's are read without the rest), until retention or erasure
/// removes it everywhere.
pub const SEGMENTS: Kind<SegmentRecord> = Kind::new("log_segments");

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SegmentRecord {
    pub id: String,
    pub tenant: TenantId,
    pub range: LogRange,
    pub created_at: u64,
    /// Its spool copy reached the disk (`ship`'s `sync`): a start need not
    /// check it (see `recover`). Recorded without a flush of its own; a mark
    /// a crash lost only means one more check.
    #[serde(default)]
    pub synced: bool,
}

impl SegmentRecord {
    fn key(&self) -> String {
        format!("{}/{}", self.tenant, self.id)
    }
}

/// A tenant whose ship failed is tried again this much later than its
/// segment would close (see `run`).
const SHIP_RETRY_AFTER: Duration = Duration::from_secs(30);

/// How the log ships (`[changelog]` in the config).
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// A segment closes once its oldest change is this old.
    pub segment_after: Duration,
    /// ...or once it holds this many bytes of sealed changes.
    pub segment_bytes: usize,
    /// `replicated` writes wait for this many regions.
    pub replicated_regions: usize,
    /// How long a `replicated` write waits before it answers 503.
    pub replicated_timeout: Duration,
    /// Seconds segments are kept (the point-in-time window).
    pub retention_secs: u64,
    /// How often retention is checked.
    pub sweep_every: Duration,
    /// A full backup is taken once a tenant's log holds this many changes
    /// after its newest one, so that a restore replays a bounded log.
    pub base_every_changes: u64,
    /// A tenant whose shipped changes have had no full backup under them
    /// this long gets one (see `ensure_base`).
    pub first_base_after: Duration,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            segment_after: Duration::from_secs(2),
            segment_bytes: 4 << 20,
            replicated_regions: 2,
            replicated_timeout: Duration::from_secs(30),
            retention_secs: 30 * 86_400,
            sweep_every: Duration::from_secs(60),
            base_every_changes: 1_000_000,
            first_base_after: Duration::ZERO,
        }
    }
}

/// A point to restore to.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// Everything up to this Unix millisecond.
    At(u64),
    /// Everything up to this sequence.
    Sequence(u64),
    /// As far as the log goes.
    Latest,
}

/// The exact point a restore reached.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RestoredTo {
    pub sequence: u64,
    pub at_ms: u64,
}

/// A tenant's segments on their way to the regions.
#[derive(Default)]
struct Acked {
    /// (segment id, its last sequence, when it was sealed), oldest first.
    waiting: Vec<(String, u64, Instant)>,
    /// Every change up to this one is verified in enough regions.
    upto: u64,
    /// `Replication::verifications` when `upto` was last worked out with
    /// these segments waiting: until it moves, `upto` stands (64 waiters of
    /// one tenant read the replica states once per verification, not each).
    checked: Option<u64>,
}

pub struct ChangeLog {
    pub storage: Arc<Storage>,
    pub backups: Arc<Backups>,
    schemas: Registry,
    pub settings: LogSettings,
    /// Per tenant: the sequence its newest full backup covers (as far as
    /// this host knows), and tenants whose base backup is running.
    bases: Mutex<HashMap<TenantId, u64>>,
    basing: Mutex<std::collections::HashSet<TenantId>>,
    /// (tenant, generation) with a full backup verified in enough regions.
    ready: Mutex<std::collections::HashSet<(TenantId, String)>>,
    /// (tenant, generation) with a full backup done or running (see
    /// `ensure_base`).
    based: Mutex<std::collections::HashSet<(TenantId, String)>>,
    /// (tenant, generation) shipping with no base yet, and since when.
    unbased: Mutex<HashMap<(TenantId, String), Instant>>,
    /// Tenants with unshipped changes, and since when.
    pending: Mutex<HashMap<TenantId, Instant>>,
    /// Tenants a `replicated` write waits for.
    urgent: Mutex<Vec<TenantId>>,
    wake: tokio::sync::Notify,
    /// Per tenant: segments shipped but not yet verified in enough regions
    /// (id, last sequence), and the sequence verified so far.
    acked: Mutex<HashMap<TenantId, Acked>>,
}

impl ChangeLog {
    pub fn new(
        storage: Arc<Storage>,
        backups: Arc<Backups>,
        schemas: Registry,
        settings: LogSettings,
    ) -> ChangeLog {
        ChangeLog {
            storage,
            backups,
            schemas,
            settings,
            bases: Mutex::new(HashMap::new()),
            basing: Mutex::new(std::collections::HashSet::new()),
            ready: Mutex::new(std::collections::HashSet::new()),
            based: Mutex::new(std::collections::HashSet::new()),
            unbased: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            urgent: Mutex::new(Vec::new()),
            wake: tokio::sync::Notify::new(),
            acked: Mutex::new(HashMap::new()),
        }
    }

    /// Ships until `stop`.
    pub async fn run(self: Arc<Self>, stop: crate::tasks::Stop) {
        let mut last_sweep = Instant::now();
        let mut last_housekeeping = Instant::now();
        loop {
            if last_sweep.elapsed() >= self.settings.sweep_every {
                last_sweep = Instant::now();
                let this = self.clone();
                match crate::tasks::blocking(move || this.sweep_retention()).await {
                    Ok(Ok(0)) => {}
                    Ok(Ok(n)) => tracing::info!(segments = n, "log retention: segments tombstoned"),
                    Ok(Err(error)) => tracing::error!(%error, "log retention"),
                    Err(error) => tracing::error!(%error, "log retention"),
                }
            }
            let mut due = self.due().into_iter();
            while let Some(tenant) = due.next() {
                // A stop ends the round between two tenants: the rest go back
                // to pending, for the stop's own `ship_all`.
                if stop.is_cancelled() {
                    let mut pending = self.pending.lock().expect("pending");
                    for rest in std::iter::once(tenant).chain(due.by_ref()) {
                        pending.entry(rest).or_insert_with(Instant::now);
                    }
                    break;
                }
                let this = self.clone();
                let id = tenant.clone();
                let shipped = crate::tasks::blocking(move || {
                    let shipped = this.ship(&id);
                    if let Ok(n) = &shipped {
                        if *n > 0 {
                            this.after_ship(&id);
                        }
                    }
                    shipped
                })
                .await;
                let error = match shipped {
                    Ok(Ok(_)) => continue,
                    Ok(Err(error)) => error.to_string(),
                    Err(error) => error.to_string(),
                };
                tracing::error!(%error, tenant_id = %tenant, "ship the change log; tried again later");
                // Its changes are still in its database: pending again, so
                // that it is tried again (and a stop still sees it).
                self.pending
                    .lock()
                    .expect("pending")
                    .insert(tenant, Instant::now() + SHIP_RETRY_AFTER);
            }
            // Housekeeping, not on every wake (a busy `replicated` tenant
            // wakes the shipper once a batch).
            if last_housekeeping.elapsed() >= Duration::from_millis(100) {
                last_housekeeping = Instant::now();
                let this = self.clone();
                let _ = crate::tasks::blocking(move || {
                    this.prune();
                    this.base_the_unbased();
                })
                .await;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    /// Moves the tenants that logged changes since the last look into `pending`.
    fn absorb(&self) {
        let now = Instant::now();
        let mut pending = self.pending.lock().expect("pending");
        for tenant in self.storage.changes.take() {
            pending.entry(tenant).or_insert(now);
        }
    }

    /// Tenants whose segment should close now.
    fn due(&self) -> Vec<TenantId> {
        let now = Instant::now();
        self.absorb();
        let mut pending = self.pending.lock().expect("pending");
        let mut urgent = std::mem::take(&mut *self.urgent.lock().expect("urgent"));
        // Group commit for `replicated` writes: one segment in flight per
        // tenant; what arrives meanwhile waits for it and goes as one batch
        // (unless the one in flight is stuck: a region down).
        // Its waiters ask again once the one in flight is verified.
        urgent.retain(|tenant| !self.in_flight(tenant));
        urgent.sort();
        urgent.dedup();
        let mut due: Vec<TenantId> = pending
            .iter()
            .filter(|(t, since)| {
                urgent.contains(t) || now.duration_since(**since) >= self.settings.segment_after
            })
            .map(|(t, _)| t.clone())
            .collect();
        for tenant in urgent {
            if !due.contains(&tenant) {
                due.push(tenant);
            }
        }
        for tenant in &due {
            pending.remove(tenant);
        }
        due
    }

    fn after_ship(self: &Arc<Self>, tenant: &TenantId) {
        let Some(record) = self.storage.catalog.tenant(tenant) else {
            return;
        };
        if record.state != TenantState::Active {
            return;
        }
        if let Ok(db) = self.storage.tenant_db(&record) {
            if let Some(generation) = db.log_generation() {
                self.ensure_base(tenant, &generation);
                self.keep_replay_bounded(tenant, &generation, db.last_seq());
            }
        }
    }

    /// Seals a tenant's logged changes into segments and hands them to
    /// replication; returns how many changes went.
    pub fn ship(&self, tenant: &TenantId) -> Result<u64, BackupError> {
        let Some(record) = self.storage.catalog.tenant(tenant) else {
            return Ok(0);
        };
        if record.wrapped_dek.is_none() {
            return Ok(0);
        }
        let db = self.storage.tenant_db(&record)?;
        let Some(generation) = db.log_generation() else {
            return Ok(0);
        };
        // What was logged when this began: writes arriving meanwhile wait for
        // the next segment instead of trailing tiny ones after this one.
        let upto = db.last_seq();
        let mut shipped = 0;
        loop {
            let mut changes = db.changes_after(0, self.settings.segment_bytes)?;
            changes.retain(|c| c.seq <= upto);
            let (Some(first), Some(last)) = (changes.first(), changes.last()) else {
                return Ok(shipped);
            };
            let range = LogRange {
                generation: generation.clone(),
                first_seq: first.seq,
                last_seq: last.seq,
                first_at_ms: first.at_ms,
                last_at_ms: last.at_ms,
                schema: record.schema.clone(),
                schema_version: record.schema_version,
            };
            let record = self.write_segment(tenant, &range, &changes)?;
            let id = record.id.clone();
            {
                // Its writes wait for the regions from now on, not for the
                // spool's fsyncs and the trim below (four fsyncs and the
                // tenant's flush that a `replicated` batch needs no part of).
                let mut acked = self.acked.lock().expect("acked");
                let entry = acked.entry(tenant.clone()).or_default();
                entry.waiting.push((id.clone(), last.seq, Instant::now()));
                // Its replicas may be verified already: look again.
                entry.checked = None;
            }
            self.backups.spool.sync(tenant.as_str(), &id)?;
            let synced = SegmentRecord {
                synced: true,
                ..record
            };
            // Unless retention or an erasure took the record meanwhile.
            if SEGMENTS
                .get(&self.storage.catalog, &synced.key())?
                .is_some()
            {
                SEGMENTS.put_unflushed(&self.storage.catalog, &synced.key(), &synced)?;
            }
            db.trim_log(last.seq)?;
            shipped += changes.len() as u64;
        }
    }

    fn write_segment(
        &self,
        tenant: &TenantId,
        range: &LogRange,
        changes: &[Change],
    ) -> Result<SegmentRecord, BackupError> {
        let raw: [u8; 16] = crypto::random_bytes()?;
        let id = format!("{}{}", segment::SEGMENT_ID_PREFIX, crypto::encode_hex(&raw));
        let spool = &self.backups.spool;
        let (file, _) = spool.create_archive(tenant.as_str(), &id)?;
        let hashing = HashingWriter::new(std::io::BufWriter::new(file));
        let hashing = segment::write_segment(
            hashing,
            self.backups.backup_key(),
            self.backups.outer(),
            &raw,
            tenant,
            range,
            changes,
        )?;
        let (size, sha256, buffered) = hashing.finish();
        // Reaches the disk at `ship`'s `sync`, before the changes leave the
        // tenant's database; uploading starts at once.
        buffered
            .into_inner()
            .map_err(|e| BackupError::Io(e.to_string()))?;
        let now = unix_now();
        let stored = StoredBackup {
            format: 1,
            backup_id: id.clone(),
            tenant_id: tenant.to_string(),
            created_at: now,
            kind: SEGMENT_KIND.into(),
            retain_until: now + self.settings.retention_secs,
            archive_size: size,
            archive_sha256: sha256,
            records: changes.len() as u64,
            covers: None,
            log: Some(range.clone()),
        };
        let record = SegmentRecord {
            id: id.clone(),
            tenant: tenant.clone(),
            range: range.clone(),
            created_at: now,
            synced: false,
        };
        SEGMENTS.put(&self.storage.catalog, &record.key(), &record)?;
        spool.publish_unsynced(&stored)?;
        self.backups.replication.register(&self.storage, &stored)?;
        tracing::debug!(segment = %id, first = range.first_seq, last = range.last_seq, "log segment sealed");
        Ok(record)
    }

    /// Regions a change must be verified in to count as safe.
    fn need(&self) -> usize {
        self.settings
            .replicated_regions
            .min(self.backups.replication.regions.len())
            .max(1)
    }

    /// The sequence verified in at least `need()` regions.
    fn verified_upto(&self, tenant: &TenantId) -> u64 {
        let need = self.need();
        let seen = self.backups.replication.verifications();
        let mut acked = self.acked.lock().expect("acked");
        let entry = acked.entry(tenant.clone()).or_default();
        if entry.checked == Some(seen) {
            return entry.upto;
        }
        entry.checked = Some(seen);
        while let Some((id, last, _)) = entry.waiting.first().cloned() {
            let verified = self
                .backups
                .replication
                .replicas_of(&self.storage, &id)
                .iter()
                .filter(|r| r.state == ReplicaState::Verified)
                .count();
            if verified < need {
                break;
            }
            entry.upto = entry.upto.max(last);
            entry.waiting.remove(0);
        }
        entry.upto
    }

    /// How long the tenant's oldest acknowledged change not yet verified in
    /// enough regions has waited: what losing this host now would cost.
    pub fn loss_window(&self, tenant: &TenantId) -> Duration {
        self.absorb();
        self.verified_upto(tenant);
        let unshipped = self
            .pending
            .lock()
            .expect("pending")
            .get(tenant)
            .map(|since| since.elapsed());
        let in_flight = self
            .acked
            .lock()
            .expect("acked")
            .get(tenant)
            .and_then(|a| a.waiting.first().map(|(_, _, at)| at.elapsed()));
        unshipped
            .into_iter()
            .chain(in_flight)
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// Drops what every tenant has verified from memory.
    fn prune(&self) {
        let tenants: Vec<TenantId> = self.acked.lock().expect("acked").keys().cloned().collect();
        for tenant in tenants {
            self.verified_upto(&tenant);
        }
    }

    /// Waits until the tenant's change `seq` is verified in enough regions,
    /// and a full backup of its log's generation too (without one the log
    /// restores nothing: one is started when missing); `false` when the wait
    /// timed out (the write stays on this host and ships).
    pub async fn wait_replicated(
        self: &Arc<Self>,
        tenant: &TenantId,
        generation: &str,
        seq: u64,
    ) -> bool {
        let deadline = Instant::now() + self.settings.replicated_timeout;
        self.urgent.lock().expect("urgent").push(tenant.clone());
        self.wake.notify_one();
        loop {
            let based = self.base_ready(tenant, generation);
            // One base: a done one whose regions are still verifying it is
            // waited for, not taken again.
            if !based && !self.base_on_its_way(tenant, generation) {
                self.start_base(
                    tenant,
                    "a replicated tenant's log needs a base in the regions",
                    bases::Starts::Now,
                );
            }
            if based && self.verified_upto(tenant) >= seq {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::select! {
                _ = self.backups.replication.verified.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            // Not covered yet: the next batch (everything written while the
            // one in flight travels) ships as soon as that one is verified.
            // Asked for by the waiters that find nothing in flight, not on
            // every wake of every waiter (each ask wakes the shipper).
            if !self.in_flight(tenant) {
                self.urgent.lock().expect("urgent").push(tenant.clone());
                self.wake.notify_one();
            }
        }
    }

    /// Whether a segment of the tenant is on its way to the regions and not
    /// stuck there (a region down): what arrives meanwhile waits for it.
    fn in_flight(&self, tenant: &TenantId) -> bool {
        self.acked
            .lock()
            .expect("acked")
            .get(tenant)
            .and_then(|a| a.waiting.last())
            .is_some_and(|(_, _, at)| at.elapsed() < Duration::from_secs(2))
    }

    /// Per region: the newest change of the tenant verified there (sequence
    /// and time), from this host's segment records.
    pub fn safe_points(&self, tenant: &TenantId) -> BTreeMap<Region, RestoredTo> {
        let mut out: BTreeMap<Region, RestoredTo> = BTreeMap::new();
        let mine = SEGMENTS
            .with_prefix(&self.storage.catalog, &format!("{tenant}/"))
            .unwrap_or_default();
        for record in mine {
            for replica in self
                .backups
                .replication
                .replicas_of(&self.storage, &record.id)
            {
                if replica.state != ReplicaState::Verified {
                    continue;
                }
                let point = out.entry(replica.region.clone()).or_insert(RestoredTo {
                    sequence: 0,
                    at_ms: 0,
                });
                if record.range.last_seq > point.sequence {
                    point.sequence = record.range.last_seq;
                    point.at_ms = record.range.last_at_ms;
                }
            }
        }
        out
    }

    /// Tombstones the segments no restore inside the window needs: older
    /// than the window, and covered by a kept full backup of their generation
    /// that is itself older than the window (a restore to the window's first
    /// moment starts there). Segments of erased tenants go too. Returns how many.
    pub fn sweep_retention(&self) -> Result<usize, StorageError> {
        let now_ms = unix_now_ms();
        let window_start = now_ms.saturating_sub(self.settings.retention_secs * 1000);
        let jobs = crate::backup::JOBS.all(&self.storage.catalog)?;
        let mut count = 0;
        for record in SEGMENTS.all(&self.storage.catalog)? {
            let erased = crate::replication::ERASED
                .get(&self.storage.catalog, record.tenant.as_str())?
                .is_some();
            let old = record.range.last_at_ms < window_start;
            let covered = jobs.iter().any(|job| {
                job.tenant == record.tenant
                    && job
                        .stored
                        .as_ref()
                        .and_then(|s| s.covers.as_ref())
                        .is_some_and(|c| {
                            c.generation == record.range.generation
                                && c.seq >= record.range.last_seq
                                && c.at_ms <= window_start
                        })
            });
            let generation_has_backups = jobs.iter().any(|job| {
                job.tenant == record.tenant
                    && job
                        .stored
                        .as_ref()
                        .and_then(|s| s.covers.as_ref())
                        .is_some_and(|c| c.generation == record.range.generation)
            });
            if erased || (old && (covered || !generation_has_backups)) {
                let why = if erased { "erased" } else { "retention" };
                self.backups
                    .replication
                    .tombstone(&self.storage, &record.id, why)?;
                SEGMENTS.remove(&self.storage.catalog, &record.key())?;
                count += 1;
            }
        }
        Ok(count)
    }

    /// Erases the tenant's log everywhere (purge): every segment tombstoned.
    pub fn erase(&self, tenant: &TenantId) -> Result<usize, StorageError> {
        let mut count = 0;
        for record in SEGMENTS.all(&self.storage.catalog)? {
            if &record.tenant == tenant {
                self.backups
                    .replication
                    .tombstone(&self.storage, &record.id, "erased")?;
                SEGMENTS.remove(&self.storage.catalog, &record.key())?;
                count += 1;
            }
        }
        Ok(count)
    }
}
