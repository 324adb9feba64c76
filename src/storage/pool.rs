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
    /// Tenants being opened: the gate their opener holds.
    opening: HashMap<TenantId, Arc<Mutex<()>>>,
    tick: u64,
}

impl Pool {
    pub(super) fn new(capacity: usize) -> Self {
        Pool {
            capacity: capacity.max(1),
            inner: Mutex::new(PoolInner::default()),
        }
    }

    /// The tenant's open database, opening it if it is cold. Opening a large
    /// tenant reads its sled log (seconds for a GiB), so it happens outside
    /// the pool's lock, under a gate of that tenant's own: requests for other
    /// tenants never wait for it, and two requests for this one never open it
    /// twice (sled locks its directory).
    pub(super) fn get_or_open(
        &self,
        id: &TenantId,
        open: impl FnOnce() -> Result<TenantDb, StorageError>,
    ) -> Result<Arc<TenantDb>, StorageError> {
        let gate = {
            let mut inner = self.inner.lock().expect("pool lock poisoned");
            if let Some(db) = self.lookup(&mut inner, id) {
                return Ok(db);
            }
            inner.opening.entry(id.clone()).or_default().clone()
        };
        let _opening = gate.lock().expect("pool gate poisoned");
        {
            // Whoever held the gate before may have opened it.
            let mut inner = self.inner.lock().expect("pool lock poisoned");
            if let Some(db) = self.lookup(&mut inner, id) {
                return Ok(db);
            }
        }
        let started = std::time::Instant::now();
        let opened = open().map(Arc::new);
        crate::metrics::tenant_opened(opened.is_ok(), started.elapsed());
        let mut inner = self.inner.lock().expect("pool lock poisoned");
        // Nobody else waits at the gate (its clones are taken under this lock).
        if opened.is_ok() || Arc::strong_count(&gate) == 2 {
            inner.opening.remove(id);
        }
        let db = opened?;
        inner.tick += 1;
        let tick = inner.tick;
        self.admit(&mut inner, id.clone(), db.clone(), tick);
        Ok(db)
    }

    /// The database if it is open (in the pool, or still held by a request).
    fn lookup(&self, inner: &mut PoolInner, id: &TenantId) -> Option<Arc<TenantDb>> {
        inner.tick += 1;
        let tick = inner.tick;
        if let Some((db, used)) = inner.open.get_mut(id) {
            *used = tick;
            return Some(db.clone());
        }
        let db = inner.alive.get(id).and_then(Weak::upgrade)?;
        self.admit(inner, id.clone(), db.clone(), tick);
        Some(db)
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

    /// Drops the tenant from the pool (destroyed, moved away, replaced). An
    /// open in progress finishes first, so that it cannot put the database
    /// back afterwards.
    pub(super) fn forget(&self, id: &TenantId) {
        self.under_gate(id, |pool| {
            let mut inner = pool.lock().expect("pool lock poisoned");
            inner.open.remove(id);
            inner.alive.remove(id);
        });
    }

    /// Runs `work` holding `id`'s gate: an open in progress finishes first,
    /// and a request arriving meanwhile waits. `work` takes the pool's lock
    /// itself, only while it looks at the pool.
    fn under_gate<T>(&self, id: &TenantId, work: impl FnOnce(&Mutex<PoolInner>) -> T) -> T {
        let gate = {
            let mut inner = self.inner.lock().expect("pool lock poisoned");
            inner.opening.entry(id.clone()).or_default().clone()
        };
        let _held = gate.lock().expect("pool gate poisoned");
        let done = work(&self.inner);
        let mut inner = self.inner.lock().expect("pool lock poisoned");
        if Arc::strong_count(&gate) == 2 {
            inner.opening.remove(id);
        }
        done
    }

    /// Closes every database that nobody holds and that has `min` changes or
    /// more since it was opened, then runs `closed` on each tenant, still
    /// under that tenant's gate: a request for it waits, then opens it again.
    pub(super) fn close_changed(&self, min: u64, mut closed: impl FnMut(&TenantId)) {
        let ids: Vec<TenantId> = {
            let inner = self.inner.lock().expect("pool lock poisoned");
            inner
                .open
                .iter()
                .filter(|(_, (db, _))| db.changed_since_open() >= min)
                .map(|(id, _)| id.clone())
                .collect()
        };
        for id in ids {
            self.under_gate(&id, |pool| {
                if let Some(db) = Self::take_idle(pool, &id) {
                    drop(db);
                    closed(&id);
                }
            });
        }
    }

    /// Closes the tenant's database if the pool is its only holder; whether
    /// it did. The close (sled's flush, its page cache and page table freed)
    /// happens under the tenant's gate, outside the pool's lock: other
    /// tenants never wait for it, and a request for this one waits at the
    /// gate, then opens it afresh.
    pub(super) fn close_if_idle(&self, id: &TenantId) -> bool {
        self.under_gate(id, |pool| Self::take_idle(pool, id).map(drop).is_some())
    }

    /// Takes the tenant's database out of the pool when nobody else holds it
    /// (clones are taken under this lock, so none appears meanwhile).
    fn take_idle(pool: &Mutex<PoolInner>, id: &TenantId) -> Option<(Arc<TenantDb>, u64)> {
        let mut inner = pool.lock().expect("pool lock poisoned");
        let idle = inner
            .open
            .get(id)
            .is_some_and(|(db, _)| Arc::strong_count(db) == 1);
        if !idle {
            return None;
        }
        inner.alive.remove(id);
        inner.open.remove(id)
    }

    pub(super) fn is_open(&self, id: &TenantId) -> bool {
        let inner = self.inner.lock().expect("pool lock poisoned");
        inner.open.contains_key(id)
            || inner
                .alive
                .get(id)
                .is_some_and(|weak| weak.strong_count() > 0)
    }

    /// Tenants whose database is held outside the pool (by a request or a
    /// job), whether the pool still lists it or evicted it meanwhile.
    pub(super) fn held(&self) -> Vec<TenantId> {
        let inner = self.inner.lock().expect("pool lock poisoned");
        inner
            .alive
            .iter()
            .filter(|(id, weak)| {
                let in_pool = usize::from(inner.open.contains_key(*id));
                weak.strong_count() > in_pool
            })
            .map(|(id, _)| id.clone())
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SecretKey;
    use crate::crypto::{TenantCipher, TenantKeys};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    fn open_in(dir: &std::path::Path, id: &TenantId) -> Result<TenantDb, StorageError> {
        let keys = TenantKeys::new(TenantCipher::new(&SecretKey::generate().unwrap()));
        TenantDb::open(&dir.join(id.as_str()), id.clone(), keys, 1 << 20)
    }

    /// A tenant that takes long to open (here: until the test says so) holds
    /// up nobody but the requests for that same tenant, which all get the one
    /// database it opens.
    #[test]
    fn a_slow_open_blocks_only_its_own_tenant_and_happens_once() {
        let dir = std::env::temp_dir().join(format!("coffer-unit-pool-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let pool = Arc::new(Pool::new(4));
        let (slow, quick) = (TenantId::generate().unwrap(), TenantId::generate().unwrap());
        let opens = Arc::new(AtomicUsize::new(0));
        let (release, released) = mpsc::channel::<()>();
        let (started, opening) = mpsc::channel::<()>();
        let released = Arc::new(Mutex::new(released));
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let (pool, dir, slow, opens) =
                    (pool.clone(), dir.clone(), slow.clone(), opens.clone());
                let (released, started) = (released.clone(), started.clone());
                std::thread::spawn(move || {
                    pool.get_or_open(&slow, || {
                        opens.fetch_add(1, Ordering::SeqCst);
                        started.send(()).unwrap();
                        released.lock().unwrap().recv().unwrap();
                        open_in(&dir, &slow)
                    })
                    .unwrap()
                })
            })
            .collect();
        opening.recv().unwrap();
        // While the slow tenant is being opened (it stays so until released
        // below), another one opens.
        let (done, other) = mpsc::channel();
        {
            let (pool, dir, quick) = (pool.clone(), dir.clone(), quick.clone());
            std::thread::spawn(move || {
                let _ = done.send(pool.get_or_open(&quick, || open_in(&dir, &quick)).unwrap());
            });
        }
        let other = other
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("another tenant opened while the slow one was being opened");
        assert_eq!(other.tenant(), &quick);
        release.send(()).unwrap();
        let dbs: Vec<_> = waiters.into_iter().map(|w| w.join().unwrap()).collect();
        assert_eq!(opens.load(Ordering::SeqCst), 1, "opened once");
        assert!(dbs.iter().all(|db| Arc::ptr_eq(db, &dbs[0])));
        assert_eq!(pool.open_count(), 2);
        drop((dbs, other));
        pool.forget(&slow);
        pool.forget(&quick);
        assert_eq!(pool.open_count(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_failed_open_is_tried_again_by_the_next_request() {
        let dir =
            std::env::temp_dir().join(format!("coffer-unit-pool-retry-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let pool = Pool::new(4);
        let id = TenantId::generate().unwrap();
        let failed = pool.get_or_open(&id, || Err(StorageError::Io("disk unplugged".into())));
        assert!(matches!(failed, Err(StorageError::Io(_))));
        assert_eq!(pool.open_count(), 0);
        let db = pool.get_or_open(&id, || open_in(&dir, &id)).unwrap();
        assert_eq!(db.tenant(), &id);
        drop(db);
        pool.forget(&id);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The newest sled snapshot file's name in a database directory.
    fn newest_snapshot(dir: &std::path::Path) -> Option<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("snap.") && !name.contains("motion"))
            .max()
    }

    /// A database written since it was opened, and held by nobody, is closed
    /// and checkpointed (sled's snapshot then covers its writes); one still
    /// held and one unchanged stay open; the closed one opens again with
    /// everything written.
    #[test]
    fn changed_databases_nobody_holds_are_closed_and_checkpointed() {
        let dir =
            std::env::temp_dir().join(format!("coffer-unit-pool-close-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let key = SecretKey::generate().unwrap();
        let open = |id: &TenantId| {
            let keys = TenantKeys::new(TenantCipher::new(&key));
            TenantDb::open(&dir.join(id.as_str()), id.clone(), keys, 1 << 20)
        };
        let schema = crate::schema::Schema::parse(
            "t",
            "format = 1\nname = \"t\"\nversion = 1\n[collections.people]\nfields.email = { type = \"string\" }\n",
        )
        .unwrap();
        let people = schema.collection("people").unwrap().clone();
        let pool = Pool::new(4);
        let [written, held, unchanged] = [(); 3].map(|_| TenantId::generate().unwrap());
        let mut ids = Vec::new();
        for tenant in [&written, &held] {
            let db = pool.get_or_open(tenant, || open(tenant)).unwrap();
            let fields = serde_json::json!({"email": format!("{tenant}@x")});
            ids.push(
                db.insert("people", &people, fields.as_object().unwrap())
                    .unwrap(),
            );
        }
        drop(pool.get_or_open(&unchanged, || open(&unchanged)).unwrap());
        let holder = pool.get_or_open(&held, || panic!("open already")).unwrap();
        let before = newest_snapshot(&dir.join(written.as_str()));

        let mut closed = Vec::new();
        pool.close_changed(1, |id| {
            assert!(!pool.is_open(id));
            tenant_db::checkpoint(&dir.join(id.as_str())).unwrap();
            closed.push(id.clone());
        });
        assert_eq!(closed, vec![written.clone()]);
        assert!(pool.is_open(&held) && pool.is_open(&unchanged));
        assert!(newest_snapshot(&dir.join(written.as_str())) > before);

        let reopened = pool.get_or_open(&written, || open(&written)).unwrap();
        let (_, fields) = reopened.get("people", &ids[0]).unwrap().unwrap();
        assert_eq!(fields["email"], serde_json::json!(format!("{written}@x")));
        drop((reopened, holder));
        for id in [&written, &held, &unchanged] {
            pool.forget(id);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A database closes only when nothing holds it, and the next request
    /// opens it again from its files (sled locks its directory, so that
    /// open proves the first one closed).
    #[test]
    fn close_if_idle_leaves_a_held_database_and_closes_an_unheld_one() {
        let dir =
            std::env::temp_dir().join(format!("coffer-unit-pool-idle-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let pool = Pool::new(4);
        let id = TenantId::generate().unwrap();
        let key = SecretKey::generate().unwrap();
        let open = || {
            let keys = TenantKeys::new(TenantCipher::new(&key));
            TenantDb::open(&dir.join(id.as_str()), id.clone(), keys, 1 << 20)
        };
        let held = pool.get_or_open(&id, open).unwrap();
        assert_eq!(pool.held(), vec![id.clone()]);
        assert!(!pool.close_if_idle(&id), "a request still holds it");
        assert!(pool.is_open(&id));
        drop(held);
        assert!(pool.held().is_empty(), "only the pool holds it");
        assert!(pool.close_if_idle(&id));
        assert_eq!(pool.open_count(), 0);
        assert!(!pool.close_if_idle(&id), "nothing left to close");
        drop(
            pool.get_or_open(&id, open)
                .expect("opened again: the first one closed"),
        );
        assert!(pool.is_open(&id));
        pool.forget(&id);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
