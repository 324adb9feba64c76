//! Tenant lifecycle: active → deactivated (grace period, reactivation possible)
//! → destroyed (data key shredded, directory removed), and the sweeper that
//! destroys tenants whose grace period has ended. A move to another host:
//! active → moving (writes paused) → moved (answers with where it went) →
//! destroyed after the purge delay; or moving → active when a move is aborted.
//!
//! Transitions are checked here, persisted by `storage`, and survive restarts:
//! the sweeper reads `destroy_after` from the catalog, not from memory.

use std::sync::Arc;
use std::time::Duration;

use crate::audit::{Actor, AuditLog, Event};
use crate::ids::{unix_now, TenantId};
use crate::storage::{MovedTo, NewTenant, Storage, StorageError, TenantRecord, TenantState};

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("tenant not found")]
    NotFound,
    #[error("tenant is {0}; this needs an active tenant")]
    NotActive(&'static str),
    #[error("tenant is {0}; only a deactivated tenant can be reactivated")]
    NotDeactivated(&'static str),
    #[error("tenant is {0}; only a tenant being moved can finish or abort a move")]
    NotMoving(&'static str),
    #[error("tenant is already destroyed")]
    Destroyed,
    #[error("no move waits for the tenant's approval")]
    NoProposedMove,
    #[error("a move to region {0} already waits for the tenant's approval; abort it first")]
    AlreadyProposed(String),
    #[error(transparent)]
    Storage(StorageError),
}

impl From<StorageError> for LifecycleError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::NotFound => LifecycleError::NotFound,
            other => LifecycleError::Storage(other),
        }
    }
}

pub fn create(storage: &Storage, new: NewTenant) -> Result<(TenantRecord, String), LifecycleError> {
    Ok(storage.create_tenant(new)?)
}

/// Removal requested: data kept but not served until `now + grace`.
pub fn deactivate(
    storage: &Storage,
    id: &TenantId,
    grace: Duration,
) -> Result<TenantRecord, LifecycleError> {
    storage.update_tenant(id, |tenant| match tenant.state {
        TenantState::Active => {
            let now = unix_now();
            tenant.state = TenantState::Deactivated;
            tenant.deactivated_at = Some(now);
            tenant.destroy_after = Some(now + grace.as_secs());
            Ok(())
        }
        other => Err(LifecycleError::NotActive(other.as_str())),
    })?
}

pub fn reactivate(storage: &Storage, id: &TenantId) -> Result<TenantRecord, LifecycleError> {
    storage.update_tenant(id, |tenant| match tenant.state {
        TenantState::Deactivated => {
            tenant.state = TenantState::Active;
            tenant.deactivated_at = None;
            tenant.destroy_after = None;
            Ok(())
        }
        other => Err(LifecycleError::NotDeactivated(other.as_str())),
    })?
}

/// A move to another host begins: writes pause (reads go on) so that the
/// backup the target restores from holds every acknowledged write.
pub fn begin_move(
    storage: &Storage,
    id: &TenantId,
    to: MovedTo,
) -> Result<TenantRecord, LifecycleError> {
    storage.update_tenant(id, |tenant| match tenant.state {
        TenantState::Active => {
            tenant.state = TenantState::Moving;
            tenant.moved_to = Some(to.clone());
            tenant.proposed_move = None;
            Ok(())
        }
        other => Err(LifecycleError::NotActive(other.as_str())),
    })?
}

/// An operator proposes a move: nothing changes for the tenant until its
/// admin approves ([`approve_move`]) or aborts it.
pub fn propose_move(
    storage: &Storage,
    id: &TenantId,
    to: MovedTo,
) -> Result<TenantRecord, LifecycleError> {
    storage.update_tenant(id, |tenant| match (tenant.state, &tenant.proposed_move) {
        (TenantState::Active, None) => {
            tenant.proposed_move = Some(to.clone());
            Ok(())
        }
        (TenantState::Active, Some(existing)) => {
            Err(LifecycleError::AlreadyProposed(existing.region.to_string()))
        }
        (other, _) => Err(LifecycleError::NotActive(other.as_str())),
    })?
}

/// The tenant's admin agrees to the proposed move: it begins (writes pause).
pub fn approve_move(
    storage: &Storage,
    id: &TenantId,
    approved_by: String,
) -> Result<TenantRecord, LifecycleError> {
    storage.update_tenant(id, |tenant| {
        if tenant.state != TenantState::Active {
            return Err(LifecycleError::NotActive(tenant.state.as_str()));
        }
        let mut to = tenant
            .proposed_move
            .take()
            .ok_or(LifecycleError::NoProposedMove)?;
        to.approved_by = Some(approved_by.clone());
        to.at = unix_now();
        tenant.state = TenantState::Moving;
        tenant.moved_to = Some(to);
        Ok(())
    })?
}

/// The move failed or was called off (by the tenant's admin or an
/// operator): the tenant takes writes here again, and a proposal is dropped.
pub fn abort_move(storage: &Storage, id: &TenantId) -> Result<TenantRecord, LifecycleError> {
    storage.update_tenant(id, |tenant| match tenant.state {
        TenantState::Moving => {
            tenant.state = TenantState::Active;
            tenant.moved_to = None;
            Ok(())
        }
        TenantState::Active if tenant.proposed_move.is_some() => {
            tenant.proposed_move = None;
            Ok(())
        }
        other => Err(LifecycleError::NotMoving(other.as_str())),
    })?
}

/// The target host serves the tenant now: this host answers with where it
/// went, and purges its copy after `purge_delay`.
pub fn complete_move(
    storage: &Storage,
    id: &TenantId,
    purge_delay: Duration,
) -> Result<TenantRecord, LifecycleError> {
    storage.update_tenant(id, |tenant| match tenant.state {
        TenantState::Moving => {
            let now = unix_now();
            tenant.state = TenantState::Moved;
            tenant.destroy_after = Some(now + purge_delay.as_secs());
            if let Some(to) = tenant.moved_to.as_mut() {
                to.at = now;
            }
            Ok(())
        }
        other => Err(LifecycleError::NotMoving(other.as_str())),
    })?
}

/// Destroys a tenant now, whatever its state (operator purge, or the sweeper).
pub fn destroy(storage: &Storage, id: &TenantId) -> Result<TenantRecord, LifecycleError> {
    storage
        .destroy_tenant(id, |t| t.state != TenantState::Destroyed)?
        .ok_or(LifecycleError::Destroyed)
}

/// Every tenant made from `source`'s backups or exports on this host (not
/// a move's copy of itself), in any state.
pub fn copies_of(storage: &Storage, source: &TenantId) -> Vec<TenantRecord> {
    storage
        .catalog
        .tenants()
        .into_iter()
        .filter(|t| &t.id != source && t.copy_of.as_ref().is_some_and(|c| &c.tenant == source))
        .collect()
}

/// A copy that goes with its source: one staff made (an operator's or a
/// backup agent's restore, an operator's import). Copies the tenant's own
/// admin made deliberately stay.
pub fn removed_with_source(copy: &TenantRecord) -> bool {
    copy.copy_of
        .as_ref()
        .is_some_and(|c| c.made_by_role != crate::storage::Role::TenantAdmin)
}

/// Held by whoever destroys a tenant together with its staff copies (a
/// purge, the sweeper), so that the sweeper's pass for orphaned copies never
/// runs between a purge's destruction of the source and of its copies: the
/// purge then reports every copy that went with it, and no copy's
/// destruction is audited twice.
static WITH_COPIES: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `work` holding [`WITH_COPIES`].
pub fn holding_copies<T>(work: impl FnOnce() -> T) -> T {
    let _held = WITH_COPIES.lock().unwrap_or_else(|p| p.into_inner());
    work()
}

/// The whole-database removal reaches every copy staff made: each live one
/// is destroyed (audited for the source and for the copy first; a copy whose
/// entry cannot be made durable is left for the next sweep). Returns the
/// copies destroyed.
pub fn destroy_staff_copies(storage: &Storage, log: &AuditLog, source: &TenantId) -> Vec<TenantId> {
    let mut destroyed = Vec::new();
    for copy in copies_of(storage, source) {
        if copy.state == TenantState::Destroyed || !removed_with_source(&copy) {
            continue;
        }
        let audited = [source, &copy.id].iter().all(|tenant| {
            let event = Event::new("tenant.copy-destroyed", Actor::host())
                .tenant(tenant)
                .detail("source", source.as_str())
                .detail("copy", copy.id.as_str());
            log.append(event).is_ok()
        });
        if !audited {
            tracing::error!(copy = %copy.id, "cannot audit a copy's destruction; will retry");
            continue;
        }
        match storage.destroy_tenant(&copy.id, |t| t.state != TenantState::Destroyed) {
            Ok(Some(_)) => destroyed.push(copy.id.clone()),
            Ok(None) => {}
            Err(error) => {
                tracing::error!(%error, copy = %copy.id, "destroy a staff-made copy; will retry")
            }
        }
    }
    destroyed
}

/// Due for destruction: deactivated past its grace period, or moved away
/// past the purge delay.
fn is_due(t: &TenantRecord, now: u64) -> bool {
    matches!(t.state, TenantState::Deactivated | TenantState::Moved)
        && t.destroy_after.is_some_and(|at| at <= now)
}

/// Destroys every deactivated tenant whose grace period has ended, and every
/// moved tenant whose purge delay has. Returns how many it destroyed.
/// Each destruction is audited first; one that cannot be audited waits for
/// the next sweep.
pub fn sweep(storage: &Storage, log: &AuditLog) -> usize {
    holding_copies(|| sweep_held(storage, log))
}

fn sweep_held(storage: &Storage, log: &AuditLog) -> usize {
    let now = unix_now();
    let due: Vec<TenantId> = storage
        .catalog
        .tenants()
        .into_iter()
        .filter(|t| is_due(t, now))
        .map(|t| t.id)
        .collect();
    let mut destroyed = 0;
    // Copies staff made of a tenant that is gone go too (also retried here
    // when a purge could not finish them).
    let orphaned: Vec<TenantId> = storage
        .catalog
        .tenants()
        .into_iter()
        .filter(|t| t.state == TenantState::Destroyed)
        .map(|t| t.id)
        .filter(|id| {
            copies_of(storage, id)
                .iter()
                .any(|c| c.state != TenantState::Destroyed && removed_with_source(c))
        })
        .collect();
    for id in orphaned {
        destroyed += destroy_staff_copies(storage, log, &id).len();
    }
    for id in due {
        let span = tracing::info_span!("sweep", tenant_id = %id);
        let _enter = span.enter();
        // Checked again under the update lock: a reactivation may have won the race.
        let still_due = |t: &TenantRecord| is_due(t, now);
        let event = Event::new("tenant.destroyed", Actor::host())
            .tenant(&id)
            .detail("reason", "grace period or move purge delay over");
        if let Err(error) = log.append(event) {
            tracing::error!(%error, "cannot audit a destruction; will retry");
            continue;
        }
        match storage.destroy_tenant(&id, still_due) {
            Ok(None) => {}
            Ok(Some(_)) => {
                tracing::info!("grace period over: tenant destroyed");
                destroyed += 1;
                destroyed += destroy_staff_copies(storage, log, &id).len();
            }
            Err(error) => tracing::error!(%error, "destroy tenant after grace period; will retry"),
        }
    }
    destroyed
}

/// Runs [`sweep`] every `interval` until the task is dropped.
pub async fn run_sweeper(
    storage: Arc<Storage>,
    log: Arc<AuditLog>,
    interval: Duration,
    stop: crate::tasks::Stop,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let (storage, log) = (storage.clone(), log.clone());
        if let Err(error) = crate::tasks::blocking(move || sweep(&storage, &log)).await {
            tracing::error!(%error, "lifecycle sweeper task failed");
        }
    }
}
