//! The full backups under a tenant's change log: a restore replays the log
//! onto one, so a tenant gets one when its shipped changes have none yet
//! (`first_base_after`), when the log after the newest grows long
//! (`base_every_changes`), and before its writes become `replicated`.

use super::*;

/// Base backups the host starts for its logs at once, beyond those a
/// `replicated` write waits for.
const BASES_AT_ONCE: usize = 2;

/// Whether a base backup may wait for others to finish first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Starts {
    /// Now, whatever else runs (a `replicated` write waits for it).
    Now,
    /// Only while fewer than [`BASES_AT_ONCE`] run.
    Bounded,
}

/// Whether `jobs` hold a full backup of the tenant's log generation, done
/// (its regions may still be verifying it) or still running.
fn base_among(jobs: &[crate::backup::BackupJob], tenant: &TenantId, generation: &str) -> bool {
    jobs.iter()
        .filter(|j| &j.tenant == tenant)
        .any(|j| match &j.stored {
            Some(stored) => stored
                .covers
                .as_ref()
                .is_some_and(|c| c.generation == generation),
            None => matches!(
                j.state,
                crate::backup::JobState::Pending | crate::backup::JobState::Running
            ),
        })
}

impl ChangeLog {
    /// The host's backup jobs, as the catalog holds them now (none when it
    /// cannot be read: a base is then asked for again, never assumed).
    fn jobs(&self) -> Vec<crate::backup::BackupJob> {
        crate::backup::JOBS
            .all(&self.storage.catalog)
            .unwrap_or_default()
    }

    /// `ensure_base` for every tenant whose wait has run out (a tenant that
    /// shipped once and then went quiet still gets its base).
    pub(super) fn base_the_unbased(self: &Arc<Self>) {
        let due: Vec<(TenantId, String)> = self
            .unbased
            .lock()
            .expect("unbased")
            .iter()
            .filter(|(_, since)| since.elapsed() >= self.settings.first_base_after)
            .map(|(key, _)| key.clone())
            .collect();
        if due.is_empty() {
            return;
        }
        // One read of the jobs for the round, not one per tenant.
        let jobs = self.jobs();
        for (tenant, generation) in due {
            let active = self
                .storage
                .catalog
                .tenant(&tenant)
                .is_some_and(|t| t.state == TenantState::Active);
            if active {
                self.ensure_base_among(&tenant, &generation, &jobs);
            } else {
                self.unbased
                    .lock()
                    .expect("unbased")
                    .remove(&(tenant, generation));
            }
        }
    }

    /// A tenant whose log has shipped for `first_base_after` with no full
    /// backup of its generation under it (a new tenant before its first
    /// scheduled backup, a restored one) gets one: without a base, a restore
    /// from the regions has nothing to replay the log onto, and the shipped
    /// writes would not bring the tenant back. Once a base exists (or is
    /// running) it is not asked again.
    pub(super) fn ensure_base(self: &Arc<Self>, tenant: &TenantId, generation: &str) {
        let key = (tenant.clone(), generation.to_string());
        if self.based.lock().expect("based").contains(&key) {
            return;
        }
        self.ensure_base_among(tenant, generation, &self.jobs());
    }

    /// [`ensure_base`](Self::ensure_base) with the host's backup jobs read.
    fn ensure_base_among(
        self: &Arc<Self>,
        tenant: &TenantId,
        generation: &str,
        jobs: &[crate::backup::BackupJob],
    ) {
        let key = (tenant.clone(), generation.to_string());
        if self.based.lock().expect("based").contains(&key) {
            return;
        }
        if base_among(jobs, tenant, generation) {
            self.unbased.lock().expect("unbased").remove(&key);
            self.based.lock().expect("based").insert(key);
            return;
        }
        let due = {
            let mut unbased = self.unbased.lock().expect("unbased");
            let since = unbased.entry(key.clone()).or_insert_with(Instant::now);
            since.elapsed() >= self.settings.first_base_after
        };
        let started = due
            && self.start_base(
                tenant,
                "the tenant's changes shipped with no full backup under them",
                Starts::Bounded,
            );
        if started {
            // A base that fails is tried again after another wait, not in a
            // loop; one not started (others running) is tried next round.
            if let Some(since) = self.unbased.lock().expect("unbased").get_mut(&key) {
                *since = Instant::now();
            }
        }
    }

    /// Whether the tenant has a full backup of this generation of its log,
    /// done (its regions may still be verifying it) or still running.
    pub(super) fn base_on_its_way(&self, tenant: &TenantId, generation: &str) -> bool {
        base_among(&self.jobs(), tenant, generation)
    }

    /// The sequence the tenant's newest done full backup of `generation` covers.
    pub(super) fn base_seq(&self, tenant: &TenantId, generation: &str) -> u64 {
        if let Some(seq) = self.bases.lock().expect("bases").get(tenant) {
            return *seq;
        }
        let seq = self
            .jobs()
            .iter()
            .filter(|j| &j.tenant == tenant)
            .filter_map(|j| j.stored.as_ref()?.covers.clone())
            .filter(|c| c.generation == generation)
            .map(|c| c.seq)
            .max()
            .unwrap_or(0);
        self.bases
            .lock()
            .expect("bases")
            .insert(tenant.clone(), seq);
        seq
    }

    /// Starts a full backup when the log after the newest one has grown past
    /// `base_every_changes` (on a thread of its own; one per tenant at once).
    pub(super) fn keep_replay_bounded(
        self: &Arc<Self>,
        tenant: &TenantId,
        generation: &str,
        last: u64,
    ) {
        let base = self.base_seq(tenant, generation);
        if last.saturating_sub(base) >= self.settings.base_every_changes {
            // Not started when others run: asked again after its next ship.
            self.start_base(
                tenant,
                "the log since the last full backup grew long",
                Starts::Bounded,
            );
        }
    }

    /// Starts a full backup of the tenant on a thread of its own (one per
    /// tenant at once); whether it started. A [`Starts::Bounded`] one waits
    /// while [`BASES_AT_ONCE`] are running (a host of many new tenants does
    /// not start a backup thread for each at once); one a `replicated`
    /// write waits for does not.
    pub(super) fn start_base(
        self: &Arc<Self>,
        tenant: &TenantId,
        why: &'static str,
        starts: Starts,
    ) -> bool {
        {
            let mut basing = self.basing.lock().expect("basing");
            if starts == Starts::Bounded && basing.len() >= BASES_AT_ONCE {
                return false;
            }
            if !basing.insert(tenant.clone()) {
                return false;
            }
        }
        let (this, id) = (self.clone(), tenant.clone());
        let started = std::thread::Builder::new()
            .name("coffer-log-base".into())
            .spawn(move || {
                let tenant = id;
                match this.backups.enqueue(&this.storage, &tenant, "log-base") {
                    Ok(job) => {
                        let done =
                            this.backups
                                .run(&this.storage, &this.schemas, job, this.backups.retention_secs);
                        if let Some(covers) = done.stored.as_ref().and_then(|s| s.covers.clone()) {
                            this.bases.lock().expect("bases").insert(tenant.clone(), covers.seq);
                        }
                        tracing::info!(backup_id = %done.id, state = done.state.as_str(), tenant_id = %tenant, why, "full backup for the change log");
                    }
                    Err(error) => tracing::error!(%error, "start a full backup for the log"),
                }
                this.basing.lock().expect("basing").remove(&tenant);
            });
        if started.is_err() {
            self.basing.lock().expect("basing").remove(tenant);
            return false;
        }
        true
    }

    /// A tenant turning `replicated`: its log's base backup is started now
    /// (when none is in the regions yet), so that its first writes need not
    /// wait for all of it.
    pub fn prepare_replicated(self: &Arc<Self>, tenant: &crate::storage::TenantRecord) {
        let Ok(db) = self.storage.tenant_db(tenant) else {
            return;
        };
        if let Some(generation) = db.log_generation() {
            if !self.base_ready(&tenant.id, &generation)
                && !self.base_on_its_way(&tenant.id, &generation)
            {
                self.start_base(
                    &tenant.id,
                    "the tenant's writes became replicated",
                    Starts::Now,
                );
            }
        }
    }

    /// Whether a full backup of this generation of the tenant's log is
    /// verified in enough regions (a restore from the regions has a base).
    pub(super) fn base_ready(&self, tenant: &TenantId, generation: &str) -> bool {
        if self
            .ready
            .lock()
            .expect("ready")
            .contains(&(tenant.clone(), generation.to_string()))
        {
            return true;
        }
        let need = self.need();
        let ready = self
            .jobs()
            .iter()
            .filter(|j| &j.tenant == tenant)
            .filter(|j| {
                j.stored
                    .as_ref()
                    .and_then(|s| s.covers.as_ref())
                    .is_some_and(|c| c.generation == generation)
            })
            .any(|j| {
                self.backups
                    .replication
                    .replicas_of(&self.storage, &j.id)
                    .iter()
                    .filter(|r| r.state == ReplicaState::Verified)
                    .count()
                    >= need
            });
        if ready {
            self.ready
                .lock()
                .expect("ready")
                .insert((tenant.clone(), generation.to_string()));
        }
        ready
    }
}
