//! Continuous backup over HTTP: a tenant's durability mode, `replicated`
//! writes held until their change is in enough regions, and point-in-time
//! restores (`POST /v1/tenants/{id}/restore`).

use std::sync::Arc;

use hyper::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::grants::actor;
use super::limits::run_long;
use super::tenants::tenant_json;
use super::{audit, blocking, json_response, known_tenant, parse_json, ApiError, AppState, Body};
use crate::audit::Event;
use crate::auth::{Principal, Role};
use crate::backup::NewCopy;
use crate::ids::{unix_now_ms, TenantId};
use crate::service::changelog::{self, Target};
use crate::storage::{Durability, TenantRecord};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DurabilityRequest {
    mode: String,
}

/// The host's change log, or why a tenant cannot have what it asked for.
pub(crate) fn checked_mode(state: &AppState, mode: &str) -> Result<Durability, ApiError> {
    let durability = Durability::parse(mode).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "durability {mode:?}: give \"local\" or \"replicated\""
        ))
    })?;
    if durability == Durability::Replicated {
        let Some(log) = &state.changelog else {
            return Err(ApiError::Conflict(
                "this host keeps no change log ([changelog] enabled = false): writes cannot be \
                 replicated"
                    .into(),
            ));
        };
        let regions = state.backups.replication.regions.len();
        if regions < log.settings.replicated_regions {
            return Err(ApiError::Conflict(format!(
                "replicated writes wait for {} backup regions and this host has {regions}",
                log.settings.replicated_regions
            )));
        }
    }
    Ok(durability)
}

/// `PUT /v1/tenants/{id}/durability` `{"mode"}`.
pub async fn set_durability(
    state: &Arc<AppState>,
    principal: &Principal,
    id: TenantId,
    body: &bytes::Bytes,
) -> Result<Response<Body>, ApiError> {
    let request: DurabilityRequest = parse_json(body)?;
    let mode = checked_mode(state, &request.mode)?;
    known_tenant(&state.storage, &id)?;
    audit(
        state,
        Event::new("tenant.durability", actor(principal))
            .tenant(&id)
            .detail("mode", mode.as_str()),
    )
    .await?;
    let storage = state.storage.clone();
    let tenant = blocking(move || {
        storage.update_tenant(&id, |t| -> Result<(), ApiError> {
            t.durability = mode;
            Ok(())
        })
    })
    .await???;
    Ok(json_response(
        StatusCode::OK,
        &with_durability(state, &tenant),
    ))
}

/// A tenant's JSON with its durability: mode and the current loss window.
pub(crate) fn with_durability(state: &AppState, tenant: &TenantRecord) -> Value {
    let mut body = tenant_json(tenant);
    body["durability"] = durability_json(state, tenant);
    body
}

pub(crate) fn durability_json(state: &AppState, tenant: &TenantRecord) -> Value {
    match &state.changelog {
        None => json!({ "mode": tenant.durability.as_str(), "change_log": false }),
        Some(log) => {
            let mut body = json!({
                "mode": tenant.durability.as_str(),
                "change_log": true,
                "segment_seconds": log.settings.segment_after.as_secs_f64(),
                "retention_days": log.settings.retention_secs / 86_400,
            });
            body["loss_window_seconds"] = json!(log.loss_window(&tenant.id).as_secs_f64());
            if tenant.durability == Durability::Replicated {
                body["regions_per_write"] = json!(log.settings.replicated_regions);
            }
            body
        }
    }
}

/// Per region: the newest change safe there (`/copies`, the backup listing).
pub(crate) fn change_log_json(state: &AppState, tenant: &TenantRecord) -> Value {
    let mut body = durability_json(state, tenant);
    if let Some(log) = &state.changelog {
        let regions: serde_json::Map<String, Value> = log
            .safe_points(&tenant.id)
            .into_iter()
            .map(|(region, point)| {
                (
                    region.to_string(),
                    json!({"sequence": point.sequence, "at": rfc3339_ms(point.at_ms)}),
                )
            })
            .collect();
        body["newest_safe_write"] = Value::Object(regions);
    }
    body
}

/// After a durable write: a `replicated` tenant's write answers only once
/// its change is verified in enough regions (503 when that takes too long;
/// the write stays on this host and ships).
pub(crate) async fn hold_for_regions(state: &AppState, tenant: &TenantId) -> Result<(), ApiError> {
    let Some(log) = &state.changelog else {
        return Ok(());
    };
    let Some(record) = state.storage.catalog.tenant(tenant) else {
        return Ok(());
    };
    if record.durability != Durability::Replicated {
        return Ok(());
    }
    let db = state.storage.tenant_db(&record)?;
    let Some(generation) = db.log_generation() else {
        return Ok(());
    };
    let seq = db.last_seq();
    if log.wait_replicated(tenant, &generation, seq).await {
        Ok(())
    } else {
        Err(ApiError::Unavailable(format!(
            "the write is durable on this host but not yet verified in {} regions: it will ship; \
             check before writing it again",
            log.settings.replicated_regions
        )))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PitrRequest {
    /// The new tenant's name (not for `in_place`).
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    at: Option<String>,
    #[serde(default)]
    sequence: Option<u64>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    in_place: bool,
}

/// `POST /v1/tenants/{id}/restore`: the newest full backup before the point,
/// then the change log up to it, into a new tenant.
pub async fn restore(
    state: &Arc<AppState>,
    principal: &Principal,
    id: TenantId,
    body: &bytes::Bytes,
) -> Result<Response<Body>, ApiError> {
    let request: PitrRequest = parse_json(body)?;
    let Some(log) = state.changelog.clone() else {
        return Err(ApiError::Conflict(
            "this host keeps no change log: restore a backup instead".into(),
        ));
    };
    let target = match (&request.at, request.sequence) {
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "give \"at\" or \"sequence\", not both".into(),
            ))
        }
        (Some(at), None) => Target::At(parse_time(at)?),
        (None, Some(seq)) => Target::Sequence(seq),
        (None, None) => Target::Latest,
    };
    if let Some(region) = &request.region {
        if state.backups.replication.region(region).is_err() {
            return Err(ApiError::Unprocessable(format!(
                "no backup region {region:?} on this host"
            )));
        }
    }
    if request.in_place {
        if request.name.is_some() {
            return Err(ApiError::BadRequest(
                "a restore \"in_place\" keeps the tenant's name: leave out \"name\"".into(),
            ));
        }
        return restore_in_place(state, principal, id, target, request.region, log).await;
    }
    let name = super::checked_name(request.name.as_deref().ok_or_else(|| {
        ApiError::Unprocessable("give the new tenant a \"name\" (or restore \"in_place\")".into())
    })?)?;
    let mint = principal.role == Role::TenantAdmin && principal.is_admin_of(&id);
    let slot = state.jobs.take(Some(&id), "a restore")?;
    let new_id = TenantId::generate().map_err(ApiError::internal)?;
    audit(
        state,
        Event::new("tenant.restored_to_point", actor(principal))
            .tenant(&id)
            .detail("new_tenant", new_id.as_str())
            .detail("target", target_text(target)),
    )
    .await?;
    let copy_of = crate::service::pitr::copy_of(&id, principal.person(), principal.role);
    let inner = state.clone();
    let source = id.clone();
    let (restored, reached) = run_long(slot, move || {
        log.restore(
            &inner.schemas,
            source.as_str(),
            target,
            request.region.as_deref(),
            NewCopy {
                name,
                keep_id: Some(new_id),
                region: inner.backups.region.clone(),
                inherit: &[],
                mint_token: mint,
                copy_of: Some(copy_of),
                tenant_key: None,
            },
        )
    })
    .await??;
    tracing::info!(new_tenant = %restored.tenant.id, sequence = reached.sequence, "restored to a point in time");
    start_base_backup(state, &restored.tenant.id);
    let mut body = with_durability(state, &restored.tenant);
    if let Some(token) = restored.token {
        body["admin_token"] = Value::from(token);
    }
    body["records"] = Value::from(restored.records);
    body["counts"] = json!(restored.counts);
    body["restored_to"] = json!({
        "sequence": reached.sequence,
        "at": rfc3339_ms(reached.at_ms),
    });
    Ok(json_response(StatusCode::CREATED, &body))
}

/// `"in_place": true`: the tenant itself goes back to the point; its state
/// before is kept as a backup first, and the answer says how to undo.
async fn restore_in_place(
    state: &Arc<AppState>,
    principal: &Principal,
    id: TenantId,
    target: Target,
    region: Option<String>,
    log: Arc<changelog::ChangeLog>,
) -> Result<Response<Body>, ApiError> {
    let tenant = known_tenant(&state.storage, &id)?;
    let slot = state.jobs.take(Some(&id), "a restore")?;
    audit(
        state,
        Event::new("tenant.restored_in_place", actor(principal))
            .tenant(&id)
            .detail("target", target_text(target)),
    )
    .await?;
    let inner = state.clone();
    let done = run_long(slot, move || {
        log.restore_in_place(&inner.schemas, &tenant, target, region.as_deref())
    })
    .await??;
    tracing::info!(sequence = done.reached.sequence, "restored in place");
    start_base_backup(state, &id);
    let mut body = with_durability(state, &done.tenant);
    body["records"] = Value::from(done.records);
    body["restored_to"] = json!({
        "sequence": done.reached.sequence,
        "at": rfc3339_ms(done.reached.at_ms),
    });
    body["undo"] = json!({
        "backup": done.undo_backup,
        "restore": {"in_place": true, "at": rfc3339_ms(done.undo_at_ms)},
    });
    Ok(json_response(StatusCode::OK, &body))
}

fn target_text(target: Target) -> String {
    match target {
        Target::At(ms) => format!("at {}", rfc3339_ms(ms)),
        Target::Sequence(seq) => format!("sequence {seq}"),
        Target::Latest => "latest".to_string(),
    }
}

/// A new log generation starts with a full backup of its own, so that the
/// restored tenant's log has a base from the point it was restored to.
pub(crate) fn start_base_backup(state: &Arc<AppState>, tenant: &TenantId) {
    if state.changelog.is_none() {
        return;
    }
    let inner = state.clone();
    let tenant = tenant.clone();
    std::thread::Builder::new()
        .name("coffer-base-backup".into())
        .spawn(move || match inner.backups.enqueue(&inner.storage, &tenant, "base") {
            Ok(job) => {
                let done = inner
                    .backups
                    .run(&inner.storage, &inner.schemas, job, inner.backups.retention_secs);
                tracing::info!(backup_id = %done.id, state = done.state.as_str(), tenant_id = %tenant, "base backup of a restored tenant");
            }
            Err(error) => tracing::error!(%error, "start a base backup"),
        })
        .map(|_| ())
        .unwrap_or_else(|error| tracing::error!(%error, "start a base backup"));
}

/// RFC 3339 with milliseconds (the change log's precision).
pub fn rfc3339_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

fn parse_time(text: &str) -> Result<u64, ApiError> {
    let at = humantime::parse_rfc3339_weak(text).map_err(|_| {
        ApiError::BadRequest(format!(
            "\"at\" {text:?} is not an RFC 3339 time (e.g. 2026-12-02T14:05:00Z)"
        ))
    })?;
    let ms = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| ApiError::BadRequest("\"at\" is before 1970".into()))?
        .as_millis() as u64;
    if ms > unix_now_ms() + 60_000 {
        return Err(ApiError::BadRequest("\"at\" is in the future".into()));
    }
    Ok(ms)
}
