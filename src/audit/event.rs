//! What the log records: events as callers build them, entries as stored,
//! who did it, and the receipt of a durable entry.

use super::*;

/// Who did it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Actor {
    pub role: String,
    /// The token's id (never the token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The person: a staff identity (tenant admins have none; their token
    /// id stands for them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

impl Actor {
    pub fn host() -> Actor {
        Actor {
            role: "host".into(),
            token: None,
            identity: None,
        }
    }
}

/// Proof that an entry is durable in the log; made only by
/// [`AuditLog::record`].
#[derive(Debug)]
pub struct Receipt {
    pub(super) seq: u64,
    pub(super) grant: Option<String>,
}

impl Receipt {
    /// The entry's position in the log.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The grant the entry was written for, if any.
    pub fn grant(&self) -> Option<&str> {
        self.grant.as_deref()
    }
}

/// An event to record.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: &'static str,
    pub tenant: Option<TenantId>,
    pub actor: Actor,
    pub grant: Option<String>,
    /// Ids, states, counts: nothing sensitive.
    pub details: Map<String, Value>,
    /// Stored as HMAC-SHA256 under the tenant's audit key.
    pub sensitive: Vec<(&'static str, String)>,
}

impl Event {
    pub fn new(kind: &'static str, actor: Actor) -> Event {
        Event {
            kind,
            tenant: None,
            actor,
            grant: None,
            details: Map::new(),
            sensitive: Vec::new(),
        }
    }

    pub fn tenant(mut self, tenant: &TenantId) -> Event {
        self.tenant = Some(tenant.clone());
        self
    }

    pub fn grant(mut self, grant: &str) -> Event {
        self.grant = Some(grant.to_string());
        self
    }

    pub fn detail(mut self, key: &str, value: impl Into<Value>) -> Event {
        self.details.insert(key.to_string(), value.into());
        self
    }

    pub fn sensitive(mut self, key: &'static str, value: &str) -> Event {
        self.sensitive.push((key, value.to_string()));
        self
    }
}

/// An entry as stored (the exact JSON bytes are the Merkle leaf).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub seq: u64,
    /// Unix milliseconds.
    pub at: u64,
    /// Hex leaf hash of entry `seq - 1` (empty for the first).
    pub prev: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The tenant's previous entry: a tenant's entries form a chain of their
    /// own, so a proof bundle with one of them left out does not verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_prev: Option<u64>,
    pub actor: Actor,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub details: Map<String, Value>,
    /// Sensitive identifiers, as hex HMAC-SHA256 under the tenant's key.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub hmac: Map<String, Value>,
}
