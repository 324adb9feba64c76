//! Handlers for tenants: create, list, read, deactivate, reactivate, purge,
//! upgrade, and a tenant's backup schedule; the tenant's JSON shape.

use std::sync::Arc;

use bytes::Bytes;
use hyper::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::limits::run_long;
use super::{audit, blocking, checked_name, grants, json_response, known_tenant, parse_json};
use super::{ApiError, AppState, Body};
use crate::audit::Event;
use crate::auth::Principal;
use crate::ids::{rfc3339, Region, TenantId};
use crate::lifecycle;
use crate::storage::{NewTenant, TenantRecord, TenantState};

pub async fn set_backup_schedule(
    state: &Arc<AppState>,
    principal: &Principal,
    id: TenantId,
    body: Bytes,
) -> Result<Response<Body>, ApiError> {
    let storage = state.storage.clone();
    let schedule: crate::backup::Schedule = parse_json(&body)?;
    if schedule.interval_hours > 24 * 366 {
        return Err(ApiError::Unprocessable(
            "interval_hours must be at most a year".into(),
        ));
    }
    known_tenant(&storage, &id)?;
    audit(
        state,
        Event::new("backup.schedule-changed", grants::actor(principal))
            .tenant(&id)
            .detail("interval_hours", schedule.interval_hours),
    )
    .await?;
    let saved = schedule.clone();
    blocking(move || crate::backup::SCHEDULES.put(&storage.catalog, id.as_str(), &saved)).await??;
    Ok(json_response(StatusCode::OK, &json!(schedule)))
}

pub async fn upgrade(
    state: &Arc<AppState>,
    principal: &Principal,
    id: TenantId,
    body: Bytes,
) -> Result<Response<Body>, ApiError> {
    let storage = state.storage.clone();
    let request: UpgradeRequest = parse_json(&body)?;
    let tenant = known_tenant(&storage, &id)?;
    crate::service::upgrade::check(&state.schemas, &tenant, request.schema_version)
        .map_err(upgrade_error)?;
    let slot = state.jobs.take(Some(&id), "an upgrade")?;
    audit(
        state,
        Event::new("tenant.upgraded", grants::actor(principal))
            .tenant(&id)
            .detail("schema_version", request.schema_version),
    )
    .await?;
    let inner = state.clone();
    let report = run_long(slot, move || {
        crate::service::upgrade::upgrade(
            &inner.storage,
            &inner.schemas,
            &inner.backups,
            &tenant,
            request.schema_version,
            inner.changelog.as_deref(),
        )
    })
    .await?
    .map_err(upgrade_error)?;
    tracing::info!(
        from = report.from_version,
        to = report.to_version,
        records = report.records,
        "tenant upgraded"
    );
    // The upgraded database logs a new generation: it needs a base of its own.
    super::continuous::start_base_backup(state, &id);
    let tenant = known_tenant(&state.storage, &id)?;
    let mut body = tenant_json(&tenant);
    body["upgrade"] = json!(report);
    Ok(json_response(StatusCode::OK, &body))
}

pub async fn create(
    state: &Arc<AppState>,
    principal: &Principal,
    body: Bytes,
) -> Result<Response<Body>, ApiError> {
    let storage = state.storage.clone();
    let mut request: CreateTenantRequest = parse_json(&body)?;
    let mode = match &request.durability {
        Some(mode) => super::continuous::checked_mode(state, mode)?,
        None => Default::default(),
    };
    let customer_key = request.customer_key.take();
    let mut new = checked_new_tenant(state, request)?;
    let id = TenantId::generate().map_err(ApiError::internal)?;
    new.id = Some(id.clone());
    // Its own key is tried before anything exists: refused, nothing is made.
    if let Some(key) = &customer_key {
        super::customer_keys::probe(state, &id, key).await?;
    }
    audit(
        state,
        Event::new("tenant.created", grants::actor(principal))
            .tenant(&id)
            .detail("schema", new.schema.as_str())
            .detail("schema_version", new.schema_version)
            .detail("region", new.region.as_str()),
    )
    .await?;
    let (tenant, admin_token) = blocking(move || -> Result<_, ApiError> {
        let (tenant, token) = lifecycle::create(&storage, new)?;
        let tenant = if mode == Default::default() {
            tenant
        } else {
            storage.update_tenant(&tenant.id, |t| -> Result<(), ApiError> {
                t.durability = mode;
                Ok(())
            })??
        };
        Ok((tenant, token))
    })
    .await??;
    tracing::info!(tenant_id = %tenant.id, "tenant created");
    if let Some(key) = customer_key {
        if let Err(error) =
            super::customer_keys::attach_new(state, principal, &tenant.id, key).await
        {
            // Nothing was written to it yet: it goes, and the caller is told.
            let (storage, id) = (state.storage.clone(), tenant.id.clone());
            let _ = blocking(move || storage.destroy_tenant(&id, |_| true)).await;
            return Err(error);
        }
    }
    if let (crate::storage::Durability::Replicated, Some(log)) =
        (tenant.durability, &state.changelog)
    {
        let (log, record) = (log.clone(), tenant.clone());
        blocking(move || log.prepare_replicated(&record)).await?;
    }
    let mut body = super::continuous::with_durability(state, &tenant);
    body["admin_token"] = Value::from(admin_token);
    Ok(json_response(StatusCode::CREATED, &body))
}

pub async fn list(state: &Arc<AppState>) -> Result<Response<Body>, ApiError> {
    let storage = state.storage.clone();
    let tenants: Vec<Value> = storage.catalog.tenants().iter().map(tenant_json).collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({ "tenants": tenants }),
    ))
}

pub async fn read(state: &Arc<AppState>, id: TenantId) -> Result<Response<Body>, ApiError> {
    let storage = state.storage.clone();
    let tenant = known_tenant(&storage, &id)?;
    let mut body = super::continuous::with_durability(state, &tenant);
    if let Some(wrapped) = &tenant.wrapped_dek {
        body["data_key"] =
            json!({"key_id": wrapped.key_id, "rotating": tenant.rotating_to.is_some()});
        // Records per collection (the panel's overview).
        let (inner, record) = (state.clone(), tenant.clone());
        let counts = blocking(move || -> Result<_, ApiError> {
            let schema = inner
                .schemas
                .get(&record.schema, record.schema_version)
                .map_err(ApiError::internal)?;
            let db = match inner.storage.tenant_db(&record) {
                // Closed (its own key unavailable): the rest is still shown.
                Err(crate::storage::StorageError::KeyUnavailable(_)) => return Ok(None),
                other => other?,
            };
            Ok(Some(db.record_counts(
                schema.collections.keys().map(String::as_str),
            )?))
        })
        .await??;
        body["collections"] = json!(counts);
    }
    body["customer_key"] = super::customer_keys::shown(state, &tenant.id).await;
    Ok(json_response(StatusCode::OK, &body))
}

pub async fn deactivate(
    state: &Arc<AppState>,
    principal: &Principal,
    id: TenantId,
) -> Result<Response<Body>, ApiError> {
    let storage = state.storage.clone();
    known_tenant(&storage, &id)?;
    let grace = state.config.grace_period;
    audit(
        state,
        Event::new("tenant.deactivated", grants::actor(principal)).tenant(&id),
    )
    .await?;
    let tenant = blocking(move || lifecycle::deactivate(&storage, &id, grace)).await??;
    tracing::info!(destroy_after = tenant.destroy_after, "tenant deactivated");
    Ok(json_response(StatusCode::ACCEPTED, &tenant_json(&tenant)))
}

pub async fn reactivate(
    state: &Arc<AppState>,
    principal: &Principal,
    id: TenantId,
) -> Result<Response<Body>, ApiError> {
    let storage = state.storage.clone();
    let tenant = known_tenant(&storage, &id)?;
    // Checked again under the update lock; checked here so that a refused
    // reactivation is never recorded as one.
    if tenant.state != TenantState::Deactivated {
        return Err(ApiError::from(lifecycle::LifecycleError::NotDeactivated(
            tenant.state.as_str(),
        )));
    }
    audit(
        state,
        Event::new("tenant.reactivated", grants::actor(principal)).tenant(&id),
    )
    .await?;
    let tenant = blocking(move || lifecycle::reactivate(&storage, &id)).await??;
    tracing::info!("tenant reactivated");
    Ok(json_response(StatusCode::OK, &tenant_json(&tenant)))
}

pub async fn purge(
    state: &Arc<AppState>,
    principal: &Principal,
    id: TenantId,
    body: Bytes,
) -> Result<Response<Body>, ApiError> {
    let storage = state.storage.clone();
    let request: PurgeRequest = if body.is_empty() {
        PurgeRequest::default()
    } else {
        parse_json(&body)?
    };
    let existing = known_tenant(&storage, &id)?;
    audit(
        state,
        Event::new("tenant.purged", grants::actor(principal))
            .tenant(&id)
            .detail("erase_backups", request.erase_backups),
    )
    .await?;
    let replication = state.backups.replication.clone();
    let changelog = state.changelog.clone();
    let log = state.audit.clone();
    let (tenant, erasing, copies) = blocking(move || {
        lifecycle::holding_copies(|| -> Result<_, ApiError> {
            let tenant = if existing.state == crate::storage::TenantState::Destroyed {
                if !request.erase_backups {
                    return Err(ApiError::Gone("tenant is already destroyed".into()));
                }
                existing
            } else {
                lifecycle::destroy(&storage, &id)?
            };
            let erasing = if request.erase_backups {
                if let Some(log) = &changelog {
                    log.erase(&id)?;
                }
                Some(replication.erase_tenant(&storage, &id)?)
            } else {
                None
            };
            // The whole database goes: every copy staff restored of it too.
            let copies = lifecycle::destroy_staff_copies(&storage, &log, &id);
            Ok((tenant, erasing, copies))
        })
    })
    .await??;
    tracing::info!(erase_backups = request.erase_backups, "tenant purged");
    let mut body = tenant_json(&tenant);
    if let Some(count) = erasing {
        tracing::info!(
            backups = count,
            "erasing every copy of the tenant's backups"
        );
        body["backups_erasing"] = Value::from(count);
    }
    body["copies_destroyed"] = json!(copies.iter().map(TenantId::as_str).collect::<Vec<_>>());
    Ok(json_response(StatusCode::OK, &body))
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    /// Also delete every copy of every backup of the tenant, in every region.
    #[serde(default)]
    erase_backups: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTenantRequest {
    name: String,
    region: String,
    schema: String,
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    durability: Option<String>,
    /// The tenant's own key from the start (customer-managed keys).
    #[serde(default)]
    customer_key: Option<super::customer_keys::AttachKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpgradeRequest {
    schema_version: u32,
}

fn checked_new_tenant(
    state: &AppState,
    request: CreateTenantRequest,
) -> Result<NewTenant, ApiError> {
    let name = checked_name(&request.name)?;
    let region = Region::parse(&request.region).ok_or_else(|| {
        ApiError::Unprocessable(format!("region {:?} is not a region label", request.region))
    })?;
    if region != state.config.region {
        return Err(ApiError::Unprocessable(format!(
            "this host serves region {:?}, not {:?}",
            state.config.region.as_str(),
            region.as_str()
        )));
    }
    let schema = match request.schema_version {
        Some(version) => state.schemas.get(&request.schema, version),
        None => state.schemas.newest(&request.schema),
    }
    .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    Ok(NewTenant {
        id: None,
        name,
        region,
        schema: schema.name.clone(),
        schema_version: schema.version,
    })
}

pub(crate) fn tenant_json(tenant: &TenantRecord) -> Value {
    let mut body = json!({
        "id": tenant.id.as_str(),
        "name": tenant.name,
        "region": tenant.region.as_str(),
        "schema": tenant.schema,
        "schema_version": tenant.schema_version,
        "state": tenant.state.as_str(),
        "created_at": rfc3339(tenant.created_at),
    });
    if let Some(at) = tenant.destroy_after {
        body["destroy_after"] = Value::from(rfc3339(at));
    }
    if let (TenantState::Destroyed, Some(at)) = (tenant.state, tenant.destroyed_at) {
        body["destroyed_at"] = Value::from(rfc3339(at));
    }
    if let Some(to) = &tenant.moved_to {
        body["moved_to"] = json!({"region": to.region.as_str(), "url": to.url,
                                  "requested_by": to.requested_by, "approved_by": to.approved_by});
    }
    if let Some(to) = &tenant.proposed_move {
        body["proposed_move"] = json!({"region": to.region.as_str(), "url": to.url,
                                       "requested_by": to.requested_by,
                                       "state": "awaiting-tenant-approval"});
    }
    if let Some(copy) = &tenant.copy_of {
        body["copy_of"] = copy_json(copy);
    }
    body
}

pub(crate) fn copy_json(copy: &crate::storage::CopyOf) -> Value {
    json!({
        "tenant": copy.tenant.as_str(),
        "backup": copy.backup,
        "kind": copy.kind,
        "made_by": copy.made_by,
        "made_by_role": copy.made_by_role.as_str(),
        "at": rfc3339(copy.at),
    })
}

fn upgrade_error(e: crate::service::upgrade::UpgradeError) -> ApiError {
    match e {
        crate::service::upgrade::UpgradeError::NotActive(_)
        | crate::service::upgrade::UpgradeError::NotNewer { .. } => {
            ApiError::Conflict(e.to_string())
        }
        crate::service::upgrade::UpgradeError::UnknownVersion(_)
        | crate::service::upgrade::UpgradeError::RecordDoesNotFit { .. } => {
            ApiError::Unprocessable(e.to_string())
        }
        crate::service::upgrade::UpgradeError::BackupFailed(_) => {
            ApiError::Unavailable(e.to_string())
        }
        crate::service::upgrade::UpgradeError::Storage(inner) => ApiError::from(inner),
        crate::service::upgrade::UpgradeError::Backup(inner) => ApiError::from(inner),
    }
}
