//! Point-in-time restores: the newest full backup before the point and the
//! change log of its generation after it (`plan`), into a new tenant or in
//! place (`ChangeLog::restore`, `ChangeLog::restore_in_place`). The log
//! itself — shipping, durability, retention — is `changelog`.

use std::collections::BTreeMap;

use super::changelog::{ChangeLog, RestoredTo, Target};
use crate::backup::segment;
use crate::backup::store::StoredBackup;
use crate::backup::{BackupError, NewCopy, Restored};
use crate::ids::{unix_now, TenantId};
use crate::schema::Registry;
use crate::storage::{Change, CopyOf, TenantState};

/// What an in-place restore did.
pub struct InPlace {
    pub tenant: crate::storage::TenantRecord,
    pub records: u64,
    pub reached: RestoredTo,
    /// The backup of the state before: restoring in place to its time undoes.
    pub undo_backup: String,
    pub undo_at_ms: u64,
}

/// The full backup and the segments a point-in-time restore reads.
#[derive(Debug)]
pub struct Plan {
    pub base: StoredBackup,
    pub segments: Vec<StoredBackup>,
    /// The last sequence the plan reaches (an `At` target may stop earlier).
    pub upto: u64,
}

/// Chooses the newest full backup before `target` and the segments of its
/// generation that follow it without a gap.
pub fn plan(
    backups: &[StoredBackup],
    segments: &[StoredBackup],
    target: Target,
) -> Result<Plan, BackupError> {
    let before = |b: &&StoredBackup| {
        let Some(covers) = &b.covers else {
            return false;
        };
        match target {
            Target::At(ms) => covers.at_ms <= ms,
            Target::Sequence(seq) => covers.seq <= seq,
            Target::Latest => true,
        }
    };
    let base = backups
        .iter()
        .filter(before)
        .max_by_key(|b| b.covers.as_ref().map(|c| (c.at_ms, c.seq)))
        .ok_or_else(|| {
            BackupError::Conflict(
                "no full backup taken with the change log on is older than that point: \
                 take a backup, or restore a later point"
                    .into(),
            )
        })?
        .clone();
    let covers = base.covers.clone().expect("filtered on covers");
    let mut mine: Vec<&StoredBackup> = segments
        .iter()
        .filter(|s| {
            s.log
                .as_ref()
                .is_some_and(|l| l.generation == covers.generation && l.last_seq > covers.seq)
        })
        .collect();
    mine.sort_by_key(|s| s.log.as_ref().map(|l| (l.first_seq, l.last_seq)));
    let mut chosen = Vec::new();
    let mut next = covers.seq + 1;
    let stop_seq = match target {
        Target::Sequence(seq) => seq,
        _ => u64::MAX,
    };
    while next <= stop_seq {
        let candidate = mine
            .iter()
            .filter(|s| {
                let l = s.log.as_ref().expect("segments");
                l.first_seq <= next && l.last_seq >= next
            })
            .max_by_key(|s| s.log.as_ref().expect("segments").last_seq);
        let Some(segment) = candidate else {
            let later = mine
                .iter()
                .filter_map(|s| s.log.as_ref())
                .filter(|l| l.first_seq > next)
                .map(|l| l.first_seq)
                .min();
            let wanted_later = match (target, later) {
                (Target::At(ms), Some(_)) => mine
                    .iter()
                    .filter_map(|s| s.log.as_ref())
                    .any(|l| l.first_seq > next && l.first_at_ms <= ms),
                (_, Some(_)) => true,
                (_, None) => false,
            };
            if wanted_later {
                return Err(BackupError::Conflict(format!(
                    "the change log has a gap: changes {next} to {} are in no region",
                    later.expect("a later segment") - 1
                )));
            }
            if let Target::Sequence(seq) = target {
                return Err(BackupError::Conflict(format!(
                    "the change log ends at {}: changes {next} to {seq} are in no region",
                    next - 1
                )));
            }
            break;
        };
        let l = segment.log.as_ref().expect("segments");
        if let Target::At(ms) = target {
            if l.first_at_ms > ms {
                break;
            }
        }
        chosen.push((*segment).clone());
        next = l.last_seq + 1;
    }
    Ok(Plan {
        base,
        segments: chosen,
        upto: next - 1,
    })
}

impl ChangeLog {
    /// Every full backup and segment of a tenant this host can read: one
    /// region's, or its spool's and every region's (a fresh host has only the
    /// regions).
    pub fn holdings(
        &self,
        tenant: &str,
        region: Option<&str>,
    ) -> Result<(Vec<StoredBackup>, Vec<StoredBackup>), BackupError> {
        let mut all: BTreeMap<String, StoredBackup> = BTreeMap::new();
        match region {
            Some(name) => {
                let store = self
                    .backups
                    .replication
                    .region(name)
                    .map_err(|e| BackupError::Invalid(e.to_string()))?;
                let listed = self
                    .backups
                    .replication
                    .block_on(store.list(tenant))
                    .map_err(|e| BackupError::Store(format!("region {name}: {e}")))?;
                for stored in listed {
                    all.insert(stored.backup_id.clone(), stored);
                }
            }
            None => {
                for stored in self.backups.spool.list(tenant).unwrap_or_default() {
                    all.insert(stored.backup_id.clone(), stored);
                }
                for (id, (stored, _)) in self.backups.replication.list_everything(tenant) {
                    all.entry(id).or_insert(stored);
                }
            }
        }
        Ok(all.into_values().partition(|s| s.log.is_none()))
    }

    /// Restores `tenant` to `target` into a new tenant: the newest full
    /// backup before it, then its log replayed up to it.
    pub fn restore(
        &self,
        schemas: &Registry,
        tenant: &str,
        target: Target,
        region: Option<&str>,
        copy: NewCopy<'_>,
    ) -> Result<(Restored, RestoredTo), BackupError> {
        let (full, segments) = self.holdings(tenant, region)?;
        let plan = plan(&full, &segments, target)?;
        let covers = plan.base.covers.clone().expect("a base covers a point");
        let (envelope, reader, wrapped) =
            self.backups
                .open_stored_keyed(tenant, &plan.base.backup_id, region)?;
        let mut reached = RestoredTo {
            sequence: covers.seq,
            at_ms: covers.at_ms,
        };
        let copy = NewCopy {
            inherit: if copy.inherit.is_empty() {
                &envelope.admins
            } else {
                copy.inherit
            },
            // A copy of a customer-keyed tenant stays under its key.
            tenant_key: self.backups.tenant_key(wrapped),
            ..copy
        };
        let limits = self.backups.limits;
        let restored = crate::backup::restore_archive_then(
            &self.storage,
            schemas,
            reader,
            copy,
            limits,
            &mut |db, schema| {
                self.replay(tenant, &plan, target, region, db, schema, &mut reached)?;
                db.continue_from(reached.sequence)?;
                Ok(())
            },
        )?;
        Ok((restored, reached))
    }

    /// Restores `tenant` to `target` in place. Writes are held meanwhile; the
    /// log so far goes to the spool, and the current state is kept first as a
    /// full backup (`pre-restore`) — restoring in place to its time undoes
    /// this. The tenant's sequence continues after the newest change it had,
    /// in a new generation. Returns the tenant, how many records it holds,
    /// the point reached and the undo backup (id, time).
    pub fn restore_in_place(
        &self,
        schemas: &Registry,
        tenant: &crate::storage::TenantRecord,
        target: Target,
        region: Option<&str>,
    ) -> Result<InPlace, BackupError> {
        if tenant.state != TenantState::Active {
            return Err(BackupError::Conflict(format!(
                "the tenant is {}: only an active tenant is restored in place",
                tenant.state.as_str()
            )));
        }
        let db = self.storage.tenant_db(tenant)?;
        db.freeze();
        let outcome = (|| {
            self.ship(&tenant.id)?;
            let job = self
                .backups
                .enqueue(&self.storage, &tenant.id, "pre-restore")?;
            let job = self
                .backups
                .run(&self.storage, schemas, job, self.backups.retention_secs);
            let undo = match (
                &job.state,
                job.stored.as_ref().and_then(|s| s.covers.clone()),
            ) {
                (crate::backup::JobState::Done, Some(covers)) => (job.id.clone(), covers),
                _ => {
                    return Err(BackupError::Conflict(format!(
                        "the backup of the current state failed, so nothing was restored: {}",
                        job.error.unwrap_or_default()
                    )))
                }
            };
            let (full, segments) = self.holdings(tenant.id.as_str(), region)?;
            let plan = plan(&full, &segments, target)?;
            let covers = plan.base.covers.clone().expect("a base covers a point");
            let (_, reader) =
                self.backups
                    .open_stored(tenant.id.as_str(), &plan.base.backup_id, region)?;
            let mut reached = RestoredTo {
                sequence: covers.seq,
                at_ms: covers.at_ms,
            };
            let newest = db.last_seq();
            let (record, records) = crate::backup::restore_in_place_then(
                &self.storage,
                schemas,
                reader,
                tenant,
                self.backups.limits,
                &mut |staged, schema| {
                    self.replay(
                        tenant.id.as_str(),
                        &plan,
                        target,
                        region,
                        staged,
                        schema,
                        &mut reached,
                    )?;
                    staged.continue_from(newest.max(reached.sequence))?;
                    Ok(())
                },
            )?;
            Ok(InPlace {
                tenant: record,
                records,
                reached,
                undo_backup: undo.0,
                undo_at_ms: undo.1.at_ms,
            })
        })();
        if outcome.is_err() {
            db.thaw();
        }
        outcome
    }

    /// Replays the plan's segments on the staged tenant up to `target`.
    #[allow(clippy::too_many_arguments)]
    fn replay(
        &self,
        tenant: &str,
        plan: &Plan,
        target: Target,
        region: Option<&str>,
        db: &crate::storage::TenantDb,
        schema: &crate::schema::Schema,
        reached: &mut RestoredTo,
    ) -> Result<(), BackupError> {
        for segment in &plan.segments {
            for change in self.read_segment(tenant, segment, region)? {
                if change.seq <= reached.sequence {
                    continue;
                }
                let past = match target {
                    Target::At(ms) => change.at_ms > ms,
                    Target::Sequence(seq) => change.seq > seq,
                    Target::Latest => false,
                };
                if past {
                    return Ok(());
                }
                let collection = schema.collection(&change.collection).ok_or_else(|| {
                    BackupError::BadArchive(format!(
                        "change {} names collection {:?}, which the schema lacks",
                        change.seq, change.collection
                    ))
                })?;
                db.replay(collection, &change)?;
                *reached = RestoredTo {
                    sequence: change.seq,
                    at_ms: change.at_ms,
                };
            }
        }
        Ok(())
    }

    fn read_segment(
        &self,
        tenant: &str,
        segment: &StoredBackup,
        region: Option<&str>,
    ) -> Result<Vec<Change>, BackupError> {
        let reader = self.backups.open_raw(tenant, &segment.backup_id, region)?;
        segment::read_segment(
            reader,
            self.backups.backup_key(),
            self.backups.outer(),
            segment,
        )
    }
}

/// Who made a point-in-time copy.
pub fn copy_of(source: &TenantId, made_by: String, role: crate::storage::Role) -> CopyOf {
    CopyOf {
        tenant: source.clone(),
        backup: None,
        kind: "point-in-time restore".into(),
        made_by,
        made_by_role: role,
        at: unix_now(),
    }
}
