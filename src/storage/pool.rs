//! The bounded pool of open tenant databases (least recently used evicted).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use crate::ids::TenantId;

use super::*;

/// A bounded set of open tenant databases, least recently used evicted first.
/// sled keeps file handles and a page cache per open database, so a host with
/// many tenants keeps only `capacity` open and reopens cold ones on demand. An
/// evicted database that a request still holds stays reachable through `alive`
/// so that it is never opened twice (sled locks its directory).
pub(super) struct Pool {
    capacity: usize,
    inner: Mutex<PoolInner>,
}

#[derive(Default)]
struct PoolInner {
    open: HashMap<TenantId, (Arc<TenantDb>, u64)>,
    alive: HashMap<TenantId, Weak<TenantDb>>,
    tick: u64,
}

impl Pool {
    pub(super) fn new(capacity: usize) -> Self {
        Pool {
            capacity: capacity.max(1),
            inner: Mutex::new(PoolInner::default()),
        }
    }

    pub(super) fn get_or_open(
        &self,
        id: &TenantId,
        open: impl FnOnce() -> Result<TenantDb, StorageError>,
    ) -> Result<Arc<TenantDb>, StorageError> {
        let mut inner = self.inner.lock().expect("pool lock poisoned");
        inner.tick += 1;
        let tick = inner.tick;
        if let Some((db, used)) = inner.open.get_mut(id) {
            *used = tick;
            return Ok(db.clone());
        }
        let db = match inner.alive.get(id).and_then(Weak::upgrade) {
            Some(db) => db,
            None => Arc::new(open()?),
        };
        self.admit(&mut inner, id.clone(), db.clone(), tick);
        Ok(db)
    }

    pub(super) fn insert(&self, id: TenantId, db: Arc<TenantDb>) {
        let mut inner = self.inner.lock().expect("pool lock poisoned");
        inner.tick += 1;
        let tick = inner.tick;
        self.admit(&mut inner, id, db, tick);
    }

    fn admit(&self, inner: &mut PoolInner, id: TenantId, db: Arc<TenantDb>, tick: u64) {
        inner.alive.insert(id.clone(), Arc::downgrade(&db));
        inner.open.insert(id, (db, tick));
        while inner.open.len() > self.capacity {
            let coldest = inner
                .open
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(id, _)| id.clone())
                .expect("pool over capacity is not empty");
            inner.open.remove(&coldest);
        }
        if inner.alive.len() > 2 * self.capacity {
            inner.alive.retain(|_, weak| weak.strong_count() > 0);
        }
    }

    pub(super) fn forget(&self, id: &TenantId) {
        let mut inner = self.inner.lock().expect("pool lock poisoned");
        inner.open.remove(id);
        inner.alive.remove(id);
    }

    pub(super) fn open_count(&self) -> usize {
        let inner = self.inner.lock().expect("pool lock poisoned");
        inner
            .alive
            .values()
            .filter(|weak| weak.strong_count() > 0)
            .count()
    }
}
