//! Signed webhooks: a tenant's admin registers endpoints, and every event the
//! tenant must not miss (access requested, approved, denied, revoked,
//! expired; emergencies; admin recoveries; removal; tokens; copies; key
//! rotation; failed backups and drills) is POSTed to them, signed the
//! Standard Webhooks way. Operators register host-level endpoints
//! (`/v1/webhooks`): they hear every tenant's events and the host's own
//! (a backup region failing or lagging, and back; the master key rotated).
//! Events that no request makes (a grant's time running out, a region
//! falling behind) are audited by the watch (`watch`).
//!
//! The audit log is the outbox. The dispatcher reads it from a cursor kept
//! in the catalog (`webhook_cursor`): for each entry of a tenant whose kind
//! is an event, it stores one delivery per matching endpoint (tree
//! `webhook_deliveries`, due ones also in `webhook_due`), and only then moves
//! the cursor. An event is therefore queued once its audit entry is durable,
//! and a kill at any moment loses none (at worst a delivery is stored twice
//! under the same key). Deliveries are sent in the background (`deliver`),
//! at least once, with the same `webhook-id` on every attempt.

mod deliver;
mod guard;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::audit::{AuditLog, Entry};
use crate::crypto::{self, SecretKey};
use crate::ids::{rfc3339, unix_now, TenantId};
use crate::storage::{Kind, Storage, StorageError};

pub use guard::check_url;

/// Endpoints by `<tenant>/<id>`, host-level ones by `host/<id>`.
pub const ENDPOINTS: Kind<WebhookEndpoint> = Kind::new("webhooks");
/// Every delivery by `<endpoint>/<message id>`.
pub const DELIVERIES: Kind<Delivery> = Kind::new("webhook_deliveries");
/// Deliveries not yet done (keys of `DELIVERIES`) → when next to try (ms).
const DUE: Kind<u64> = Kind::new("webhook_due");
/// The next audit entry the dispatcher reads.
const CURSOR: Kind<u64> = Kind::new("webhook_cursor");

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebhookEndpoint {
    pub id: String,
    /// Whose endpoint: a tenant's, or (`None`) the host's operators'.
    #[serde(default)]
    pub tenant: Option<TenantId>,
    pub url: String,
    /// Event types it wants; `None`: all.
    pub events: Option<Vec<String>>,
    pub created_at: u64,
    pub created_by: String,
    /// Since when every attempt failed (a success clears it).
    #[serde(default)]
    pub failing_since: Option<u64>,
    /// Set when it failed for `retry_for`: nothing more is sent to it.
    #[serde(default)]
    pub disabled: Option<Disabled>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Disabled {
    pub at: u64,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    Pending,
    Delivered,
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delivery {
    pub endpoint: String,
    #[serde(default)]
    pub tenant: Option<TenantId>,
    /// The `webhook-id`: the same on every attempt.
    pub message_id: String,
    pub event: String,
    /// The audit entry it tells of (`None` for a test message).
    pub audit_seq: Option<u64>,
    /// The exact body signed and sent.
    pub payload: String,
    pub created_at: u64,
    pub attempts: u32,
    pub state: DeliveryState,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub last_attempt_at: Option<u64>,
    pub delivered_at: Option<u64>,
}

impl Delivery {
    fn key(&self) -> String {
        format!("{}/{}", self.endpoint, self.message_id)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct WebhookSettings {
    /// `http://` to loopback receivers (tests, a local relay).
    pub allow_http_loopback: bool,
    /// Receivers on private and link-local addresses.
    pub allow_private: bool,
    /// How long a delivery is tried, and an endpoint failing this long is disabled.
    pub retry_for: Duration,
    /// The longest wait between two attempts.
    pub max_backoff: Duration,
    /// One attempt's time limit.
    pub timeout: Duration,
    /// A backup region this far behind (its oldest unverified copy) is
    /// reported to the host's endpoints as lagging.
    pub region_lag_alert: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("{0}")]
    BadUrl(String),
    #[error("unknown event type {0:?}")]
    UnknownEvent(String),
    #[error("no such webhook")]
    NotFound,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The event types, and the audit entry kinds they come from.
pub const EVENTS: &[(&str, &str)] = &[
    ("grant.requested", "access.requested"),
    ("grant.approved", "access.emergency_approval"),
    ("grant.activated", "access.approved"),
    ("grant.denied", "access.denied"),
    ("grant.revoked", "access.revoked"),
    ("grant.withdrawn", "access.withdrawn"),
    ("grant.expired", "access.expired"),
    ("admin-recovery.requested", "admin_recovery.requested"),
    ("admin-recovery.approved", "admin_recovery.approved"),
    ("admin-recovery.cancelled", "admin_recovery.cancelled"),
    ("admin-recovery.completed", "admin_recovery.completed"),
    ("tenant.deactivated", "removal.requested"),
    ("tenant.reactivated", "removal.cancelled"),
    ("tenant.destroyed", "tenant.destroyed"),
    ("token.minted", "token.minted"),
    ("token.revoked", "token.revoked"),
    ("backup.restored", "copy.made"),
    ("key.rotated", "key.rotated"),
    ("key.rotation_failed", "key.rotation_failed"),
    ("backup.drilled", "drill.failed"),
    ("backup.failed", "backup.failed"),
    // The tenant's own key (customer-managed keys).
    ("key.attached", "key.attached"),
    ("key.detached", "key.detached"),
    ("key.revoked", "key.unavailable"),
    ("key.closed", "key.unavailable"),
    ("key.unreachable", "key.unreachable"),
    ("key.live", "key.live"),
    ("webhook.disabled", "webhook.disabled"),
    // The host's own: sent to host-level endpoints only.
    ("region.lagging", "region.lagging"),
    ("region.recovered", "region.recovered"),
    ("keys.rotated", "master-key.rotated"),
    ("token.operator-approved", "operator.approved"),
];

/// The event an audit entry is, if it is one.
fn event_of(entry: &Entry) -> Option<&'static str> {
    let (_, event) = EVENTS.iter().find(|(kind, _)| *kind == entry.kind)?;
    match *event {
        "access.requested" if entry.details.get("emergency") == Some(&Value::Bool(true)) => {
            Some("access.emergency")
        }
        "drill.failed" if entry.details.get("outcome") != Some(&json!("failed")) => None,
        event => Some(event),
    }
}

pub struct Webhooks {
    pub(crate) storage: Arc<Storage>,
    pub(crate) audit: Arc<AuditLog>,
    pub(crate) settings: WebhookSettings,
    /// The backup regions the watch reports on (none: no region events).
    replication: Option<Arc<crate::replication::Replication>>,
    /// Endpoints with an attempt in flight (one at a time each).
    in_flight: std::sync::Mutex<std::collections::HashSet<String>>,
    /// When the watch last looked at grants, and at the regions.
    last_watch: std::sync::Mutex<(Option<std::time::Instant>, Option<std::time::Instant>)>,
}

impl Webhooks {
    pub fn new(storage: Arc<Storage>, audit: Arc<AuditLog>, settings: WebhookSettings) -> Self {
        Webhooks {
            storage,
            audit,
            settings,
            replication: None,
            in_flight: Default::default(),
            last_watch: Default::default(),
        }
    }

    /// Reports on these backup regions' lag (`region.lagging`, `region.recovered`).
    pub fn watching(mut self, replication: Arc<crate::replication::Replication>) -> Self {
        self.replication = Some(replication);
        self
    }

    fn secret_name(id: &str) -> String {
        format!("webhook/{id}")
    }

    /// Registers an endpoint; returns it and its signing secret (shown once).
    pub fn create(
        &self,
        tenant: Option<&TenantId>,
        url: &str,
        events: Option<Vec<String>>,
        by: &str,
    ) -> Result<(WebhookEndpoint, zeroize::Zeroizing<String>), WebhookError> {
        check_url(url, &self.settings).map_err(WebhookError::BadUrl)?;
        if let Some(events) = &events {
            for event in events {
                if !EVENTS.iter().any(|(_, e)| e == event)
                    && event != "access.emergency"
                    && event != "webhook.test"
                {
                    return Err(WebhookError::UnknownEvent(event.clone()));
                }
            }
        }
        let id = crypto::encode_hex(&crypto::random_bytes::<16>().map_err(StorageError::from)?);
        let secret = SecretKey::generate().map_err(StorageError::from)?;
        self.storage.put_secret(&Self::secret_name(&id), &secret)?;
        let endpoint = WebhookEndpoint {
            id,
            tenant: tenant.cloned(),
            url: url.to_string(),
            events,
            created_at: unix_now(),
            created_by: by.to_string(),
            failing_since: None,
            disabled: None,
        };
        ENDPOINTS.put(&self.storage.catalog, &endpoint_key(&endpoint), &endpoint)?;
        Ok((endpoint, crypto::webhook_secret_text(&secret)))
    }

    pub fn list(&self, tenant: Option<&TenantId>) -> Vec<WebhookEndpoint> {
        ENDPOINTS
            .with_prefix(&self.storage.catalog, &format!("{}/", owner(tenant)))
            .unwrap_or_default()
    }

    pub fn get(
        &self,
        tenant: Option<&TenantId>,
        id: &str,
    ) -> Result<WebhookEndpoint, WebhookError> {
        ENDPOINTS
            .get(&self.storage.catalog, &format!("{}/{id}", owner(tenant)))?
            .ok_or(WebhookError::NotFound)
    }

    /// Removes an endpoint, its secret and its pending deliveries.
    pub fn delete(&self, tenant: Option<&TenantId>, id: &str) -> Result<(), WebhookError> {
        let endpoint = self.get(tenant, id)?;
        ENDPOINTS.remove(&self.storage.catalog, &endpoint_key(&endpoint))?;
        self.storage.remove_secret(&Self::secret_name(id))?;
        for key in DUE.keys(&self.storage.catalog)? {
            if key.starts_with(&format!("{id}/")) {
                DUE.remove(&self.storage.catalog, &key)?;
            }
        }
        Ok(())
    }

    /// The endpoint's deliveries, newest first.
    pub fn deliveries(
        &self,
        tenant: Option<&TenantId>,
        id: &str,
    ) -> Result<Vec<Delivery>, WebhookError> {
        self.get(tenant, id)?;
        let mut all = DELIVERIES.with_prefix(&self.storage.catalog, &format!("{id}/"))?;
        all.sort_by(|a, b| (b.created_at, &b.message_id).cmp(&(a.created_at, &a.message_id)));
        Ok(all)
    }

    /// Queues a test message to the endpoint.
    pub fn test(&self, tenant: Option<&TenantId>, id: &str) -> Result<Delivery, WebhookError> {
        let endpoint = self.get(tenant, id)?;
        let message_id = format!(
            "msg_test_{}",
            crypto::encode_hex(&crypto::random_bytes::<8>().map_err(StorageError::from)?)
        );
        let payload = json!({
            "type": "webhook.test",
            "timestamp": rfc3339(unix_now()),
            "data": {"tenant": tenant.map(TenantId::as_str), "audit_seq": null},
        });
        let delivery = self.queue(&endpoint, message_id, "webhook.test", None, &payload)?;
        Ok(delivery)
    }

    fn queue(
        &self,
        endpoint: &WebhookEndpoint,
        message_id: String,
        event: &str,
        audit_seq: Option<u64>,
        payload: &Value,
    ) -> Result<Delivery, StorageError> {
        let delivery = Delivery {
            endpoint: endpoint.id.clone(),
            tenant: endpoint.tenant.clone(),
            message_id,
            event: event.to_string(),
            audit_seq,
            payload: payload.to_string(),
            created_at: unix_now(),
            attempts: 0,
            state: DeliveryState::Pending,
            last_status: None,
            last_error: None,
            last_attempt_at: None,
            delivered_at: None,
        };
        DELIVERIES.put_unflushed(&self.storage.catalog, &delivery.key(), &delivery)?;
        DUE.put(&self.storage.catalog, &delivery.key(), &0)?;
        Ok(delivery)
    }

    /// Sets the cursor at the log's end on the host's first start with
    /// webhooks (no history is sent). Call before the API serves: an event
    /// audited after this is never skipped.
    pub fn start_cursor(&self) -> Result<(), StorageError> {
        if CURSOR.get(&self.storage.catalog, "audit")?.is_none() {
            CURSOR.put(&self.storage.catalog, "audit", &self.audit.size())?;
        }
        Ok(())
    }

    /// Queues the deliveries of the audit entries after the cursor; returns
    /// how many.
    pub fn dispatch(&self) -> Result<usize, StorageError> {
        let catalog = &self.storage.catalog;
        let size = self.audit.size();
        let Some(from) = CURSOR.get(catalog, "audit")? else {
            CURSOR.put(catalog, "audit", &size)?;
            return Ok(0);
        };
        if from >= size {
            return Ok(0);
        }
        let endpoints = ENDPOINTS.all(catalog)?;
        if endpoints.is_empty() {
            // Nobody to tell: move on without reading the entries back (an
            // endpoint registered later gets only what comes after it).
            CURSOR.put(catalog, "audit", &size)?;
            return Ok(0);
        }
        let upto = size.min(from + 1000);
        let seqs: Vec<u64> = (from..upto).collect();
        let entries = self
            .audit
            .read_entries(&seqs)
            .map_err(|e| StorageError::Damaged(format!("the audit log: {e}")))?;
        let mut queued = 0;
        for bytes in entries {
            let Ok(entry) = serde_json::from_slice::<Entry>(&bytes) else {
                continue;
            };
            let Some(event) = event_of(&entry) else {
                continue;
            };
            let tenant = entry.tenant.as_deref();
            let payload = json!({
                "type": event,
                "timestamp": rfc3339(entry.at / 1000),
                "data": {
                    "tenant": tenant,
                    "audit_seq": entry.seq,
                    "audit_kind": entry.kind,
                    "actor": {"role": entry.actor.role, "identity": entry.actor.identity},
                    "grant": entry.grant,
                    "details": entry.details,
                },
            });
            // A tenant's endpoints hear its own events; the host's hear all.
            for endpoint in endpoints.iter().filter(|e| {
                e.tenant.as_ref().is_none_or(|t| Some(t.as_str()) == tenant)
                    && e.disabled.is_none()
                    && entry.at / 1000 >= e.created_at
                    && e.events
                        .as_ref()
                        .is_none_or(|wanted| wanted.iter().any(|w| w == event))
            }) {
                self.queue(
                    endpoint,
                    format!("msg_{:012}", entry.seq),
                    event,
                    Some(entry.seq),
                    &payload,
                )?;
                queued += 1;
            }
        }
        // Durable deliveries first, then the cursor past them.
        catalog.flush()?;
        CURSOR.put(catalog, "audit", &upto)?;
        Ok(queued)
    }
}

/// Whose endpoints a key names: the tenant, or `host` (no tenant id is
/// that short).
fn owner(tenant: Option<&TenantId>) -> &str {
    tenant.map_or("host", TenantId::as_str)
}

fn endpoint_key(endpoint: &WebhookEndpoint) -> String {
    format!("{}/{}", owner(endpoint.tenant.as_ref()), endpoint.id)
}

/// The endpoint as the API shows it (never its secret).
pub fn endpoint_json(endpoint: &WebhookEndpoint) -> Value {
    json!({
        "id": endpoint.id,
        "url": endpoint.url,
        "events": endpoint.events,
        "created_at": rfc3339(endpoint.created_at),
        "created_by": endpoint.created_by,
        "failing_since": endpoint.failing_since.map(rfc3339),
        "disabled": endpoint.disabled.as_ref().map(|d| json!({"at": rfc3339(d.at), "reason": d.reason})),
    })
}

pub fn delivery_json(delivery: &Delivery) -> Value {
    json!({
        "id": delivery.message_id,
        "event": delivery.event,
        "audit_seq": delivery.audit_seq,
        "state": match delivery.state {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        },
        "attempts": delivery.attempts,
        "created_at": rfc3339(delivery.created_at),
        "last_attempt_at": delivery.last_attempt_at.map(rfc3339),
        "last_status": delivery.last_status,
        "last_error": delivery.last_error,
        "delivered_at": delivery.delivered_at.map(rfc3339),
    })
}
