//! The data path's own gate: the only way to a tenant's records.
//!
//! A [`TenantAccess`] can only be made by [`open`], which checks — independently of
//! the HTTP policy table — that the principal is the tenant's own admin and that
//! the tenant is active. Every record operation goes through it and is validated
//! against the tenant's schema version. (Support engineers will reach records here
//! through approved, audited grants; until then, nobody but the admins does.)

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::auth::Principal;
use crate::grants::{Grant, GrantState, Scope, GRANTS_TREE};
use crate::ids::unix_now;
use crate::ids::RecordId;
use crate::schema::{self, Collection, RecordError, Registry, Schema};
use crate::storage::{Record, Storage, StorageError, TenantDb, TenantRecord, TenantState};

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

/// An open door to one tenant's records, for one principal.
pub struct TenantAccess {
    db: Arc<TenantDb>,
    schema: Schema,
    /// Set while the tenant moves away: the door opens for reads only.
    read_only: Option<String>,
    /// Set when opened through a grant: its scope and collections.
    grant: Option<Grant>,
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
) -> Result<TenantAccess, AccessError> {
    let grant = if principal.is_admin_of(&tenant.id) {
        None
    } else {
        let Some(id) = principal.grant.as_deref() else {
            return Err(AccessError::Denied);
        };
        // Whether a grant exists, and in which state, is said only to the
        // engineer it is for; anyone else learns only that it is not theirs.
        let not_yours = || AccessError::NotYourGrant;
        let grant: Grant = storage
            .catalog
            .get_json(GRANTS_TREE, id)?
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
    Ok(TenantAccess {
        db: storage.tenant_db(tenant)?,
        schema,
        read_only,
        grant,
    })
}

impl TenantAccess {
    /// The grant this door was opened with, if any.
    pub fn grant(&self) -> Option<&Grant> {
        self.grant.as_ref()
    }

    fn collection(&self, name: &str) -> Result<&Collection, AccessError> {
        if let Some(grant) = &self.grant {
            if !grant.reaches(name) {
                return Err(AccessError::OutOfScope(name.to_string()));
            }
        }
        self.schema
            .collection(name)
            .ok_or_else(|| AccessError::UnknownCollection(name.to_string()))
    }

    fn writable(&self) -> Result<(), AccessError> {
        if self.grant.as_ref().is_some_and(|g| g.scope == Scope::Read) {
            return Err(AccessError::ReadOnlyGrant);
        }
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
