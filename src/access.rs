//! The data path's own gate: the only way to a tenant's records.
//!
//! [`open`] checks — independently of the HTTP policy table — who is reading
//! and the tenant's state, and answers with a [`Door`] whose type says who:
//!
//! - [`Door::Admin`], a [`TenantAccess`]: the tenant's own admin; records,
//!   and the snapshot a portable export is made from.
//! - [`Door::Grant`], a [`GrantAccess`]: a support engineer through a live
//!   grant of their own, within its scope. Every write takes the [`Receipt`]
//!   of its durable "started" audit entry, and everything read comes back
//!   [`Withheld`], released only against the receipt of the call's outcome
//!   entry: a handler that forgets the audit entry does not compile. Receipts
//!   are made only by `AuditLog::record`, once the entry is durable, and
//!   name the grant they were written for.
//!
//! Every record operation is validated against the tenant's schema version.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::audit::Receipt;
use crate::auth::Principal;
use crate::grants::{Grant, GrantState, Scope, GRANTS};
use crate::ids::unix_now;
use crate::ids::RecordId;
use crate::schema::{self, Collection, RecordError, Registry, Schema};
use crate::storage::{
    Record, Snapshot, Storage, StorageError, TenantDb, TenantRecord, TenantState,
};

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("only the tenant's own admins may reach its records")]
    Denied,
    #[error("no live grant: {0}")]
    NoGrant(String),
    /// The named grant is not this token's (or does not exist): nothing more is said.
    #[error("no live grant for this token")]
    NotYourGrant,
    #[error("the grant does not reach collection {0:?}")]
    OutOfScope(String),
    #[error("the grant is read-only")]
    ReadOnlyGrant,
    #[error("tenant is deactivated: its data is kept but not served until it is reactivated")]
    Deactivated,
    #[error("tenant is destroyed")]
    Destroyed,
    #[error("tenant is moving to region {0}: reads are served, writes resume on the new host")]
    Moving(String),
    #[error("tenant moved to region {region}: ask {location}")]
    Moved { region: String, location: String },
    #[error("unknown collection {0:?}")]
    UnknownCollection(String),
    #[error("record not found")]
    RecordNotFound,
    #[error("{0}")]
    Invalid(#[from] RecordError),
    #[error("field {0:?} is not indexed; look records up by an indexed field")]
    NotIndexed(String),
    #[error("value for {0:?} does not fit the field's type")]
    BadQueryValue(String),
    #[error("another record already has this {0}")]
    Duplicate(String),
    #[error("tenant's schema {0} v{1} is unknown to this host")]
    SchemaMissing(String, u32),
    /// A receipt for another grant's entry (a bug in the caller, refused).
    #[error("the audit receipt is not this grant's")]
    WrongReceipt,
    #[error(transparent)]
    Storage(StorageError),
}

impl From<StorageError> for AccessError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::NotFound => AccessError::RecordNotFound,
            StorageError::Duplicate(field) => AccessError::Duplicate(field),
            other => AccessError::Storage(other),
        }
    }
}

/// Who came in, as a type: the tenant's admin, or support through a grant.
// Made once per request and used at once: the grant's size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Door {
    Admin(TenantAccess),
    Grant(GrantAccess),
}

/// The tenant's records, for one of its own admins.
pub struct TenantAccess {
    db: Arc<TenantDb>,
    schema: Schema,
    /// Set while the tenant moves away: the door opens for reads only.
    read_only: Option<String>,
}

/// The tenant's records, for a support engineer through a live grant: only
/// the grant's collections, writes only with a write grant and the receipt
/// of their "started" entry, and reads withheld until their outcome entry
/// is durable.
pub struct GrantAccess {
    records: TenantAccess,
    grant: Grant,
}

/// Something read through a grant, held back until the call's audit entry
/// is durable.
#[must_use = "a read through a grant is released only against its audit receipt"]
pub struct Withheld<T>(T);

impl<T> Withheld<T> {
    /// The value, once the call's outcome entry is durable (`entry`).
    pub fn release(self, entry: &Receipt) -> T {
        let _ = entry.seq();
        self.0
    }
}

/// Checks the principal (the tenant's admin, or a support engineer with a
/// live grant of theirs for this tenant) and the tenant's state, then opens
/// the tenant's database. The grant is read from the catalog here, on every
/// request: revocation and expiry take effect on the next one.
pub fn open(
    storage: &Storage,
    schemas: &Registry,
    principal: &Principal,
    tenant: &TenantRecord,
) -> Result<Door, AccessError> {
    let grant = if principal.is_admin_of(&tenant.id) {
        None
    } else {
        let Some(id) = principal.grant.as_deref() else {
            return Err(AccessError::Denied);
        };
        // Whether a grant exists, and in which state, is said only to the
        // engineer it is for; anyone else learns only that it is not theirs.
        let not_yours = || AccessError::NotYourGrant;
        let grant: Grant = GRANTS
            .get(&storage.catalog, id)?
            .filter(|g: &Grant| g.tenant == tenant.id && g.requester == principal.token_id)
            .ok_or_else(not_yours)?;
        let now = unix_now();
        if !grant.live_for(principal, now) {
            return Err(AccessError::NoGrant(format!(
                "the grant is {}",
                match grant.state_at(now) {
                    GrantState::Closed { because, .. } => format!(
                        "closed ({})",
                        serde_json::to_value(because)
                            .unwrap_or_default()
                            .as_str()
                            .unwrap_or("")
                    ),
                    other => other.name().to_string(),
                }
            )));
        }
        Some(grant)
    };
    let mut read_only = None;
    match tenant.state {
        TenantState::Active => {}
        TenantState::Moving => {
            read_only = Some(
                tenant
                    .moved_to
                    .as_ref()
                    .map(|m| m.region.to_string())
                    .unwrap_or_default(),
            )
        }
        TenantState::Deactivated => return Err(AccessError::Deactivated),
        TenantState::Destroyed => return Err(AccessError::Destroyed),
        TenantState::Moved => {
            let to = tenant.moved_to.as_ref();
            return Err(AccessError::Moved {
                region: to.map(|m| m.region.to_string()).unwrap_or_default(),
                location: to.map(|m| m.url.clone()).unwrap_or_default(),
            });
        }
    }
    let schema = schemas
        .get(&tenant.schema, tenant.schema_version)
        .map_err(|_| AccessError::SchemaMissing(tenant.schema.clone(), tenant.schema_version))?
        .clone();
    let records = TenantAccess {
        db: storage.tenant_db(tenant)?,
        schema,
        read_only,
    };
    Ok(match grant {
        None => Door::Admin(records),
        Some(grant) => Door::Grant(GrantAccess { records, grant }),
    })
}

impl TenantAccess {
    /// A consistent snapshot of the tenant and its schema: what a portable
    /// export is written from (admins only: a grant never exports).
    pub fn snapshot(&self) -> Result<(Snapshot, Schema), AccessError> {
        Ok((self.db.snapshot()?, self.schema.clone()))
    }

    fn collection(&self, name: &str) -> Result<&Collection, AccessError> {
        self.schema
            .collection(name)
            .ok_or_else(|| AccessError::UnknownCollection(name.to_string()))
    }

    fn writable(&self) -> Result<(), AccessError> {
        match &self.read_only {
            Some(region) => Err(AccessError::Moving(region.clone())),
            None => Ok(()),
        }
    }

    pub fn insert(&self, collection: &str, record: &Value) -> Result<RecordId, AccessError> {
        self.writable()?;
        let spec = self.collection(collection)?;
        let fields = validated(spec, record, None)?;
        Ok(self.db.insert(collection, spec, &fields)?)
    }

    pub fn replace(
        &self,
        collection: &str,
        id: &RecordId,
        record: &Value,
    ) -> Result<(), AccessError> {
        self.writable()?;
        let spec = self.collection(collection)?;
        let fields = validated(spec, record, Some(id))?;
        Ok(self.db.replace(collection, spec, id, &fields)?)
    }

    pub fn delete(&self, collection: &str, id: &RecordId) -> Result<(), AccessError> {
        self.writable()?;
        let spec = self.collection(collection)?;
        Ok(self.db.delete(collection, spec, id)?)
    }

    pub fn get(&self, collection: &str, id: &RecordId) -> Result<Record, AccessError> {
        self.collection(collection)?;
        self.db
            .get(collection, id)?
            .ok_or(AccessError::RecordNotFound)
    }

    pub fn list(
        &self,
        collection: &str,
        after: Option<&RecordId>,
        limit: usize,
    ) -> Result<Vec<Record>, AccessError> {
        self.collection(collection)?;
        Ok(self.db.list(collection, after, limit)?)
    }

    pub fn find(
        &self,
        collection: &str,
        field: &str,
        raw_value: &str,
        limit: usize,
    ) -> Result<Vec<Record>, AccessError> {
        let spec = self.collection(collection)?;
        let field_spec = spec
            .fields
            .get(field)
            .filter(|f| f.is_indexed())
            .ok_or_else(|| AccessError::NotIndexed(field.to_string()))?;
        let value = schema::parse_query_value(field_spec, raw_value)
            .ok_or_else(|| AccessError::BadQueryValue(field.to_string()))?;
        Ok(self.db.find(collection, field, field_spec, &value, limit)?)
    }
}

impl GrantAccess {
    pub fn grant(&self) -> &Grant {
        &self.grant
    }

    fn reaches(&self, collection: &str) -> Result<(), AccessError> {
        if self.grant.reaches(collection) {
            Ok(())
        } else {
            Err(AccessError::OutOfScope(collection.to_string()))
        }
    }

    /// A write needs a write grant and the receipt of this grant's durable
    /// "started" entry.
    fn may_write(&self, collection: &str, started: &Receipt) -> Result<(), AccessError> {
        self.reaches(collection)?;
        if self.grant.scope == Scope::Read {
            return Err(AccessError::ReadOnlyGrant);
        }
        if started.grant() != Some(self.grant.id.as_str()) {
            return Err(AccessError::WrongReceipt);
        }
        Ok(())
    }

    pub fn insert(
        &self,
        started: &Receipt,
        collection: &str,
        record: &Value,
    ) -> Result<Withheld<RecordId>, AccessError> {
        self.may_write(collection, started)?;
        self.records.insert(collection, record).map(Withheld)
    }

    pub fn replace(
        &self,
        started: &Receipt,
        collection: &str,
        id: &RecordId,
        record: &Value,
    ) -> Result<Withheld<Record>, AccessError> {
        self.may_write(collection, started)?;
        self.records.replace(collection, id, record)?;
        self.records.get(collection, id).map(Withheld)
    }

    pub fn delete(
        &self,
        started: &Receipt,
        collection: &str,
        id: &RecordId,
    ) -> Result<Withheld<()>, AccessError> {
        self.may_write(collection, started)?;
        self.records.delete(collection, id).map(Withheld)
    }

    pub fn get(&self, collection: &str, id: &RecordId) -> Result<Withheld<Record>, AccessError> {
        self.reaches(collection)?;
        self.records.get(collection, id).map(Withheld)
    }

    pub fn list(
        &self,
        collection: &str,
        after: Option<&RecordId>,
        limit: usize,
    ) -> Result<Withheld<Vec<Record>>, AccessError> {
        self.reaches(collection)?;
        self.records.list(collection, after, limit).map(Withheld)
    }

    pub fn find(
        &self,
        collection: &str,
        field: &str,
        raw_value: &str,
        limit: usize,
    ) -> Result<Withheld<Vec<Record>>, AccessError> {
        self.reaches(collection)?;
        self.records
            .find(collection, field, raw_value, limit)
            .map(Withheld)
    }
}

/// Validates a record body. An `"id"` member is accepted only when it names the
/// record being replaced (so a GET result can be PUT back); it is never stored.
fn validated(
    spec: &Collection,
    record: &Value,
    id: Option<&RecordId>,
) -> Result<Map<String, Value>, AccessError> {
    let mut fields = record.as_object().ok_or(RecordError::NotAnObject)?.clone();
    if let Some(given) = fields.remove("id") {
        let matches = id.is_some_and(|id| given.as_str() == Some(id.as_str()));
        if !matches {
            return Err(RecordError::UnknownField("id".into()).into());
        }
    }
    fields.retain(|_, v| !v.is_null());
    spec.validate(&Value::Object(fields.clone()))?;
    Ok(fields)
}
