//! Customer-managed keys: a tenant's data key wrapped by a key in the
//! tenant's own key service (today OpenBao / Vault Transit; [`Provider`] is
//! the seam for AWS KMS, GCP KMS or a PKCS#11 HSM), inside the master key's
//! wrap (`storage::customer_key`). This service is the host's side of it:
//! the providers by tenant (address, mount and key in the catalog tree
//! `customer_keys`; the token sealed under the master key as the secret
//! `customer-key/<tenant>`, never logged or shown), every unwrap (one
//! Transit call each, which the tenant sees in its own audit log), and the
//! check loop.
//!
//! The check: every `check_interval` each open customer-keyed tenant's
//! stored wrapping is unwrapped once more. A refusal (key disabled or
//! deleted, token revoked) closes the tenant at once; no answer keeps it
//! serving from the key it holds for `unreachable_grace`, then closes it. A
//! closed tenant answers 423 and opens again on the first request after its
//! key answers. Every change of state is audited (`key.revoked`,
//! `key.unreachable`, `key.closed`, `key.live`), so the tenant's webhooks
//! tell it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::audit::{Actor, AuditLog, Event};
use crate::ids::{rfc3339, unix_now, TenantId};
use crate::storage::{KeyService, KeyUnavailable, Kind, Storage, StorageError};
use crate::tasks::Stop;

/// Each customer-keyed tenant's provider, by tenant id.
pub const CUSTOMER_KEYS: Kind<CustomerKey> = Kind::new("customer_keys");

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CustomerKey {
    pub tenant: TenantId,
    /// `transit`.
    pub provider: String,
    pub address: String,
    pub mount: String,
    pub key: String,
    pub attached_at: u64,
    pub attached_by: String,
}

#[derive(Debug, Clone, Copy)]
pub struct CustomerKeySettings {
    pub check_interval: Duration,
    pub unreachable_grace: Duration,
    /// `http://` to a key service on this machine (tests, a local agent).
    pub allow_http_loopback: bool,
    /// One call's time limit.
    pub timeout: Duration,
}

/// A key service that wraps and unwraps one tenant's keys.
pub trait Provider: Send + Sync {
    fn encrypt(&self, plain: &[u8]) -> Result<Vec<u8>, KeyUnavailable>;
    fn decrypt(&self, wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyUnavailable>;
}

/// OpenBao / Vault Transit: `POST {address}/v1/{mount}/encrypt/{key}` and
/// `…/decrypt/{key}` with a token allowed exactly those two.
pub struct Transit {
    address: String,
    mount: String,
    key: String,
    token: Zeroizing<String>,
    timeout: Duration,
}

impl std::fmt::Debug for Transit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transit")
            .field("address", &self.address)
            .field("mount", &self.mount)
            .field("key", &self.key)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl Transit {
    fn call(&self, operation: &str, body: Value) -> Result<Value, KeyUnavailable> {
        let path = format!("{}/{operation}/{}", self.mount, self.key);
        let (status, answer) =
            crate::client::key_service_call(&self.address, &path, &self.token, &body, self.timeout)
                .map_err(KeyUnavailable::Unreachable)?;
        let errors = || {
            answer["errors"]
                .as_array()
                .map(|e| {
                    e.iter()
                        .filter_map(Value::as_str)
                        .map(|s| s.trim().replace('\n', " "))
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_default()
        };
        match status {
            200..=299 => Ok(answer),
            // Sealed, or failing: not an answer about the key.
            500..=599 => Err(KeyUnavailable::Unreachable(format!(
                "{operation} answered {status} {}",
                errors()
            ))),
            _ => Err(KeyUnavailable::Refused(format!(
                "{operation} answered {status} {}",
                errors()
            ))),
        }
    }
}

impl Provider for Transit {
    fn encrypt(&self, plain: &[u8]) -> Result<Vec<u8>, KeyUnavailable> {
        let encoded = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(plain));
        let answer = self.call("encrypt", json!({ "plaintext": encoded.as_str() }))?;
        answer["data"]["ciphertext"]
            .as_str()
            .map(|c| c.as_bytes().to_vec())
            .ok_or_else(|| KeyUnavailable::Refused("encrypt gave no ciphertext".into()))
    }

    fn decrypt(&self, wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyUnavailable> {
        let ciphertext = std::str::from_utf8(wrapped)
            .map_err(|_| KeyUnavailable::Refused("the stored wrapping is not Transit's".into()))?;
        let answer = self.call("decrypt", json!({ "ciphertext": ciphertext }))?;
        let plain = answer["data"]["plaintext"]
            .as_str()
            .ok_or_else(|| KeyUnavailable::Refused("decrypt gave no plaintext".into()))?;
        base64::engine::general_purpose::STANDARD
            .decode(plain)
            .map(Zeroizing::new)
            .map_err(|_| KeyUnavailable::Refused("decrypt gave no plaintext".into()))
    }
}

/// What the host knows of a tenant's key now.
#[derive(Debug, Clone, Default)]
pub struct KeyStatus {
    pub last_ok: Option<u64>,
    pub last_check: Option<u64>,
    pub unreachable_since: Option<u64>,
    pub revoked_since: Option<u64>,
    pub closed: bool,
    pub reason: Option<String>,
}

impl KeyStatus {
    pub fn state(&self) -> &'static str {
        if self.revoked_since.is_some() {
            "revoked"
        } else if self.unreachable_since.is_some() {
            "unreachable"
        } else {
            "live"
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CustomerKeyError {
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Key(#[from] KeyUnavailable),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

pub struct CustomerKeys {
    storage: Arc<Storage>,
    audit: Arc<AuditLog>,
    pub settings: CustomerKeySettings,
    status: Mutex<HashMap<TenantId, KeyStatus>>,
    /// Calls made to key services since the host started.
    pub calls: AtomicU64,
}

fn secret_name(tenant: &TenantId) -> String {
    format!("customer-key/{tenant}")
}

impl CustomerKeys {
    pub fn new(
        storage: Arc<Storage>,
        audit: Arc<AuditLog>,
        settings: CustomerKeySettings,
    ) -> CustomerKeys {
        CustomerKeys {
            storage,
            audit,
            settings,
            status: Mutex::new(HashMap::new()),
            calls: AtomicU64::new(0),
        }
    }

    /// Checks a key service's address: `https://`, or `http://` to loopback
    /// when allowed; no user-info, path, query.
    pub fn check_address(&self, address: &str) -> Result<(), String> {
        let parsed = url::Url::parse(address).map_err(|e| format!("address: {e}"))?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err("the address carries no user name or password".into());
        }
        if !matches!(parsed.path(), "" | "/") || parsed.query().is_some() {
            return Err("give the key service's base address (https://host[:port])".into());
        }
        let host = parsed.host_str().ok_or("the address names a host")?;
        match parsed.scheme() {
            "https" => Ok(()),
            "http" if self.settings.allow_http_loopback => {
                let loopback = (host.trim_matches(['[', ']']), parsed.port().unwrap_or(80))
                    .to_socket_addrs_all_loopback();
                if loopback {
                    Ok(())
                } else {
                    Err(
                        "http:// only to this machine; a key service is reached over https://"
                            .into(),
                    )
                }
            }
            _ => Err("a key service is reached over https://".into()),
        }
    }

    fn provider_for(&self, tenant: &TenantId) -> Result<Transit, KeyUnavailable> {
        let found = CUSTOMER_KEYS
            .get(&self.storage.catalog, tenant.as_str())
            .ok()
            .flatten()
            .ok_or(KeyUnavailable::NoService)?;
        let token = self
            .storage
            .secret_text(&secret_name(tenant))
            .map_err(|_| KeyUnavailable::NoService)?;
        Ok(self.transit(&found, token))
    }

    fn transit(&self, key: &CustomerKey, token: Zeroizing<String>) -> Transit {
        Transit {
            address: key.address.trim_end_matches('/').to_string(),
            mount: key.mount.trim_matches('/').to_string(),
            key: key.key.clone(),
            token,
            timeout: self.settings.timeout,
        }
    }

    /// The provider of a tenant, if its data key is wrapped by one.
    pub fn attached(&self, tenant: &TenantId) -> Option<CustomerKey> {
        let record = self.storage.catalog.tenant(tenant)?;
        if !record.wrapped_dek.as_ref().is_some_and(|w| w.customer) {
            return None;
        }
        CUSTOMER_KEYS
            .get(&self.storage.catalog, tenant.as_str())
            .ok()
            .flatten()
    }

    pub fn status(&self, tenant: &TenantId) -> KeyStatus {
        let mut status = self
            .status
            .lock()
            .expect("status poisoned")
            .get(tenant)
            .cloned()
            .unwrap_or_default();
        status.closed = self.storage.closed_because(tenant).is_some();
        status
    }

    /// The provider as `GET /v1/tenants/{id}` and `/copies` show it (never
    /// the token).
    pub fn describe(&self, tenant: &TenantId) -> Value {
        let Some(key) = self.attached(tenant) else {
            return Value::Null;
        };
        let status = self.status(tenant);
        json!({
            "provider": key.provider,
            "address": key.address,
            "mount": key.mount,
            "key": key.key,
            "attached_at": rfc3339(key.attached_at),
            "state": status.state(),
            "closed": status.closed,
            "last_successful_check": status.last_ok.map(rfc3339),
            "last_check": status.last_check.map(rfc3339),
            "unreachable_since": status.unreachable_since.map(rfc3339),
            "revoked_since": status.revoked_since.map(rfc3339),
            "reason": status.reason,
        })
    }

    /// Attaches the tenant's key: tried first (a round trip through it),
    /// then stored, then the data key wrapped by it in one durable write.
    /// For the key already attached, replaces its token (tried first on the
    /// stored wrapping).
    pub fn attach(
        &self,
        tenant: &TenantId,
        key: CustomerKey,
        token: Zeroizing<String>,
    ) -> Result<(), CustomerKeyError> {
        // Already under this very key: a new token for it (an old one
        // expires), taken once it opens the stored wrapping.
        if let Some(current) = self.attached(tenant) {
            if (&current.address, &current.mount, &current.key)
                != (&key.address, &key.mount, &key.key)
            {
                return Err(CustomerKeyError::Storage(StorageError::Exists(
                    "the tenant's data key is already wrapped by another key of its own; detach it first".into(),
                )));
            }
            let transit = self.transit(&key, token.clone());
            let inner = self.storage.customer_wrapping(tenant)?;
            self.calls.fetch_add(1, Ordering::Relaxed);
            transit.decrypt(&inner)?;
            self.storage.put_secret_text(&secret_name(tenant), &token)?;
            return Ok(());
        }
        self.probe(&key, &token)?;
        self.storage.put_secret_text(&secret_name(tenant), &token)?;
        CUSTOMER_KEYS.put(&self.storage.catalog, tenant.as_str(), &key)?;
        self.storage.attach_customer_key(tenant)?;
        self.status.lock().expect("status poisoned").insert(
            tenant.clone(),
            KeyStatus {
                last_ok: Some(unix_now()),
                last_check: Some(unix_now()),
                ..Default::default()
            },
        );
        Ok(())
    }

    /// Checks a key's description and sends a random value through it and
    /// back: what an attach tries before it changes anything.
    pub fn probe(
        &self,
        key: &CustomerKey,
        token: &Zeroizing<String>,
    ) -> Result<(), CustomerKeyError> {
        if key.provider != "transit" {
            return Err(CustomerKeyError::BadRequest(format!(
                "provider {:?}: this host speaks \"transit\" (OpenBao, Vault)",
                key.provider
            )));
        }
        self.check_address(&key.address)
            .map_err(CustomerKeyError::BadRequest)?;
        for (name, value) in [("mount", &key.mount), ("key", &key.key)] {
            let ok = !value.is_empty()
                && value.len() <= 128
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
                && !value.contains("..");
            if !ok {
                return Err(CustomerKeyError::BadRequest(format!(
                    "{name}: letters, digits, '-', '_', '.', '/' (at most 128)"
                )));
            }
        }
        if token.is_empty() || token.len() > 4096 {
            return Err(CustomerKeyError::BadRequest(
                "token: give the key service's token".into(),
            ));
        }
        let transit = self.transit(key, token.clone());
        let probe = crate::crypto::random_bytes::<32>().map_err(StorageError::from)?;
        self.calls.fetch_add(2, Ordering::Relaxed);
        let wrapped = transit.encrypt(&probe)?;
        let back = transit.decrypt(&wrapped)?;
        if back.as_slice() != probe {
            return Err(CustomerKeyError::Key(KeyUnavailable::Refused(
                "the key service gave back other bytes than it was given".into(),
            )));
        }
        Ok(())
    }

    /// Back to the master key alone; the key must answer.
    pub fn detach(&self, tenant: &TenantId) -> Result<(), CustomerKeyError> {
        self.storage.detach_customer_key(tenant)?;
        CUSTOMER_KEYS.remove(&self.storage.catalog, tenant.as_str())?;
        self.storage.remove_secret(&secret_name(tenant))?;
        self.status.lock().expect("status poisoned").remove(tenant);
        Ok(())
    }

    /// Records an outcome, closes the tenant when it must, and audits a
    /// change of state. `from_check`: the check loop's call, outside any
    /// open (it may drop the tenant from the pool); else a cold open's,
    /// which only marks the tenant closed (its open fails anyway).
    fn note(&self, tenant: &TenantId, outcome: &Result<(), KeyUnavailable>, from_check: bool) {
        let now = unix_now();
        let was_closed = self.storage.closed_because(tenant).is_some();
        let mut audit: Option<Event> = None;
        let mut close: Option<String> = None;
        {
            let mut all = self.status.lock().expect("status poisoned");
            let status = all.entry(tenant.clone()).or_default();
            status.last_check = Some(now);
            match outcome {
                Ok(()) => {
                    let was_down = status.revoked_since.is_some()
                        || status.unreachable_since.is_some()
                        || was_closed;
                    status.last_ok = Some(now);
                    status.unreachable_since = None;
                    status.revoked_since = None;
                    status.reason = None;
                    if was_down {
                        audit = Some(Event::new("key.live", Actor::host()).tenant(tenant));
                    }
                }
                Err(KeyUnavailable::Unreachable(why)) => {
                    status.reason = Some(why.clone());
                    let first = status.unreachable_since.is_none();
                    let since = *status.unreachable_since.get_or_insert(now);
                    if first {
                        audit = Some(
                            Event::new("key.unreachable", Actor::host())
                                .tenant(tenant)
                                .detail("reason", why.as_str())
                                .detail(
                                    "closes_after_seconds",
                                    self.settings.unreachable_grace.as_secs(),
                                ),
                        );
                    }
                    if from_check
                        && now.saturating_sub(since) >= self.settings.unreachable_grace.as_secs()
                    {
                        close = Some(format!(
                            "its key service has been unreachable since {} ({why})",
                            rfc3339(since)
                        ));
                        if !was_closed {
                            audit = Some(
                                Event::new("key.closed", Actor::host())
                                    .tenant(tenant)
                                    .detail("reason", "unreachable past the grace")
                                    .detail("unreachable_since", rfc3339(since)),
                            );
                        }
                    }
                }
                Err(error) => {
                    let why = error.to_string();
                    status.reason = Some(why.clone());
                    if status.revoked_since.is_none() {
                        status.revoked_since = Some(now);
                        audit = Some(
                            Event::new("key.revoked", Actor::host())
                                .tenant(tenant)
                                .detail("reason", why.as_str()),
                        );
                    }
                    close = Some(why);
                }
            }
        }
        if let Some(why) = close {
            if from_check {
                self.storage.close_tenant(tenant, &why);
            } else {
                self.storage.mark_closed(tenant, &why);
            }
            if !was_closed {
                tracing::warn!(tenant_id = %tenant, reason = %why, "tenant closed: its key is unavailable");
            }
        }
        if let Some(event) = audit {
            if let Err(error) = self.audit.append(event) {
                tracing::error!(%error, tenant_id = %tenant, "cannot audit a customer key's change");
            }
        }
    }

    /// One round of checks: each open customer-keyed tenant whose last check
    /// is `check_interval` old.
    pub fn check_due(&self) {
        let now = unix_now();
        let every = self.settings.check_interval.as_secs();
        let keys: Vec<CustomerKey> = CUSTOMER_KEYS.all(&self.storage.catalog).unwrap_or_default();
        for key in keys {
            let tenant = &key.tenant;
            // One catalog read a key a round: what the tenant's record says.
            let wrapped = match self.storage.catalog.tenant(tenant) {
                Some(record) => record.wrapped_dek,
                // A copy being restored has its key before it is published;
                // one never published is forgotten after an hour.
                None if now.saturating_sub(key.attached_at) <= 3600 => continue,
                None => None,
            };
            let Some(wrapped) = wrapped else {
                // Destroyed (or never published): its key service's token goes too.
                let _ = self.storage.remove_secret(&secret_name(tenant));
                let _ = CUSTOMER_KEYS.remove(&self.storage.catalog, tenant.as_str());
                continue;
            };
            // Detached, or not open (nothing in memory to check).
            if !wrapped.customer || !self.storage.is_open(tenant) {
                continue;
            }
            let last = self.status(tenant).last_check.unwrap_or(0);
            if now.saturating_sub(last) < every {
                continue;
            }
            let outcome = match self.storage.check_customer_key(tenant) {
                Ok(()) => Ok(()),
                Err(StorageError::KeyUnavailable(why)) => Err(why),
                Err(error) => {
                    tracing::error!(%error, tenant_id = %tenant, "customer key check");
                    continue;
                }
            };
            self.note(tenant, &outcome, true);
        }
    }

    /// Checks until `stop`, on a thread of its own: a check waits on the
    /// tenant's key service, and neither the async workers nor the blocking
    /// pool that requests use should wait with it (nor it for them).
    pub async fn run_loop(self: Arc<Self>, stop: Stop) {
        let tick = self
            .settings
            .check_interval
            .clamp(Duration::from_millis(200), Duration::from_secs(1));
        let (this, halt) = (self.clone(), stop.clone());
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("coffer-key-checks".into())
            .spawn(move || {
                while !halt.is_cancelled() {
                    let began = std::time::Instant::now();
                    this.check_due();
                    while began.elapsed() < tick && !halt.is_cancelled() {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
                let _ = done.send(());
            });
        match spawned {
            Ok(_) => {
                let _ = finished.await;
            }
            Err(error) => tracing::error!(%error, "cannot start the customer key checks"),
        }
    }
}

impl KeyService for CustomerKeys {
    fn wrap(&self, tenant: &TenantId, key: &[u8]) -> Result<Vec<u8>, KeyUnavailable> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.provider_for(tenant)?.encrypt(key)
    }

    fn unwrap(
        &self,
        tenant: &TenantId,
        wrapped: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyUnavailable> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let outcome = self.provider_for(tenant)?.decrypt(wrapped);
        // A check's outcome is noted by the check (which may close an open
        // tenant); a cold open's here.
        if !self.storage.is_open(tenant) {
            let noted = outcome.as_ref().map(|_| ()).map_err(Clone::clone);
            self.note(tenant, &noted, false);
        }
        outcome
    }
}

/// What a backup's or segment's header carries for its tenant's own key:
/// how to reach it (with the token: the whole is sealed under the backup
/// key) and the key service's ciphertext of the backup's key.
#[derive(Serialize, Deserialize)]
struct BackupWrap {
    provider: String,
    address: String,
    mount: String,
    key: String,
    token: String,
    ciphertext: String,
}

impl Drop for BackupWrap {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.token.zeroize();
    }
}

impl crate::backup::sealed::OuterKey for CustomerKeys {
    fn wrap_for(&self, tenant: &TenantId, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        let Some(attached) = self.attached(tenant) else {
            return Ok(None);
        };
        let token = self
            .storage
            .secret_text(&secret_name(tenant))
            .map_err(|e| format!("the tenant's key service token: {e}"))?;
        let transit = self.transit(&attached, token.clone());
        self.calls.fetch_add(1, Ordering::Relaxed);
        let ciphertext = transit.encrypt(key).map_err(|e| e.to_string())?;
        let wrap = BackupWrap {
            provider: attached.provider,
            address: attached.address,
            mount: attached.mount,
            key: attached.key,
            token: token.to_string(),
            ciphertext: String::from_utf8(ciphertext).map_err(|_| "a ciphertext".to_string())?,
        };
        Ok(Some(serde_json::to_vec(&wrap).map_err(|e| e.to_string())?))
    }

    fn unwrap(&self, _tenant: &str, wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
        let wrap: BackupWrap =
            serde_json::from_slice(wrapped).map_err(|_| "its wrapping is damaged".to_string())?;
        self.check_address(&wrap.address)?;
        let transit = Transit {
            address: wrap.address.trim_end_matches('/').to_string(),
            mount: wrap.mount.trim_matches('/').to_string(),
            key: wrap.key.clone(),
            token: Zeroizing::new(wrap.token.clone()),
            timeout: self.settings.timeout,
        };
        self.calls.fetch_add(1, Ordering::Relaxed);
        transit
            .decrypt(wrap.ciphertext.as_bytes())
            .map_err(|e| e.to_string())
    }

    fn prepare(&self, tenant: &TenantId, wrapped: &[u8]) -> Result<(), String> {
        let wrap: BackupWrap =
            serde_json::from_slice(wrapped).map_err(|_| "its wrapping is damaged".to_string())?;
        let key = CustomerKey {
            tenant: tenant.clone(),
            provider: wrap.provider.clone(),
            address: wrap.address.clone(),
            mount: wrap.mount.clone(),
            key: wrap.key.clone(),
            attached_at: unix_now(),
            attached_by: "restore".into(),
        };
        let token = Zeroizing::new(wrap.token.clone());
        self.probe(&key, &token).map_err(|e| e.to_string())?;
        self.storage
            .put_secret_text(&secret_name(tenant), &token)
            .map_err(|e| e.to_string())?;
        CUSTOMER_KEYS
            .put(&self.storage.catalog, tenant.as_str(), &key)
            .map_err(|e| e.to_string())?;
        let event = Event::new("key.attached", Actor::host())
            .tenant(tenant)
            .detail(
                "because",
                "a copy restored from a customer-keyed tenant's backup",
            );
        if let Err(error) = self.audit.append(event) {
            tracing::error!(%error, "cannot audit a customer key's attach");
        }
        Ok(())
    }
}

/// Whether every address a host name resolves to is loopback.
trait AllLoopback {
    fn to_socket_addrs_all_loopback(&self) -> bool;
}

impl AllLoopback for (&str, u16) {
    fn to_socket_addrs_all_loopback(&self) -> bool {
        use std::net::ToSocketAddrs;
        match self.to_socket_addrs() {
            Ok(addresses) => {
                let all: Vec<_> = addresses.collect();
                !all.is_empty() && all.iter().all(|a| a.ip().is_loopback())
            }
            Err(_) => false,
        }
    }
}
