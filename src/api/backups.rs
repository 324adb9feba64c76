//! Handlers for exports, backups, restores and imports.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_DISPOSITION, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::grants::actor;
use super::limits::run_long;
use super::stream::{body_reader, channel};
use super::{
    blocking, json_response, known_tenant, parse_json, tenant_json, ApiError, AppState, Body,
};
use crate::access::{self, AccessError, Door};
use crate::audit::Event;
use crate::auth::{Principal, Role};
use crate::backup::{self, BackupError, BackupJob, JobState, JOBS};
use crate::crypto::age::AgeRecipient;
use crate::ids::{rfc3339, unix_now, BackupId, TenantId};
use crate::replication::{Replica, Replication};
use crate::storage::{CopyOf, TenantState};

impl From<BackupError> for ApiError {
    fn from(e: BackupError) -> Self {
        match e {
            BackupError::BadArchive(message) => {
                ApiError::Unprocessable(format!("archive refused: {message}"))
            }
            BackupError::Invalid(message) => ApiError::Unprocessable(message),
            BackupError::NotFound => ApiError::NotFound("backup not found".into()),
            BackupError::Storage(inner) => ApiError::from(inner),
            BackupError::Store(message) => ApiError::Unavailable(message),
            BackupError::Stopped(message) => ApiError::Conflict(message),
            BackupError::Conflict(message) => ApiError::Conflict(message),
            BackupError::KeyUnavailable(message) => ApiError::Locked(message),
            other => ApiError::internal(other),
        }
    }
}

/// `GET /v1/tenants/{id}/export`: the portable archive, streamed as it is made.
pub async fn export(
    state: &Arc<AppState>,
    principal: &Principal,
    id: TenantId,
    query: Vec<(String, String)>,
) -> Result<Response<Body>, ApiError> {
    let mut recipient = None;
    for (key, value) in &query {
        match key.as_str() {
            "recipient" => {
                recipient = Some(
                    AgeRecipient::parse(value).map_err(|e| ApiError::BadRequest(e.to_string()))?,
                )
            }
            other => return Err(ApiError::BadRequest(format!("unknown parameter {other:?}"))),
        }
    }
    // Through the data path's gate, like every read of records: only the
    // tenant's own admin gets a door that exports.
    let tenant = known_tenant(&state.storage, &id)?;
    let slot = state.jobs.take(Some(&id), "an export")?;
    let (snapshot, schema) = {
        let (inner, principal, tenant) = (state.clone(), principal.clone(), tenant.clone());
        blocking(move || -> Result<_, ApiError> {
            match access::open(&inner.storage, &inner.schemas, &principal, &tenant) {
                Ok(Door::Admin(door)) => Ok(door.snapshot()?),
                Ok(Door::Grant(_)) => Err(ApiError::Forbidden(
                    "a grant reads records; only the tenant's own admins export".into(),
                )),
                Err(AccessError::Deactivated) => Err(ApiError::Conflict(
                    "tenant is deactivated: reactivate it to export".into(),
                )),
                Err(error) => Err(error.into()),
            }
        })
        .await??
    };
    // A purge or removal request ends the export: the archive stops before
    // its manifest, visibly incomplete.
    let (watch, watched) = (state.storage.clone(), id.clone());
    let still_wanted = Box::new(move || {
        watch
            .catalog
            .still_serving(&watched, "export")
            .map_err(|why| format!("{why}; the archive is incomplete"))
    });
    let (writer, body) = channel(
        state.config.limits.stall_timeout,
        still_wanted,
        slot.release(),
    );
    let export_tenant = tenant.clone();
    let encrypted = recipient.is_some();
    let storage = state.storage.clone();
    let writing = run_long(slot, move || {
        match write_export(
            writer,
            recipient.as_ref(),
            &export_tenant,
            &schema,
            &snapshot,
        ) {
            Ok(records) => {
                tracing::info!(records, encrypted = recipient.is_some(), "export streamed")
            }
            Err((writer, error)) => {
                tracing::warn!(%error, "export stopped");
                if let Some(writer) = writer {
                    writer.fail(error);
                }
            }
        }
        // What sled kept of the tenant for this read goes with its database
        // when the host's memory is above its high mark.
        drop(snapshot);
        storage.after_whole_read(&export_tenant.id);
    });
    tokio::spawn(writing);
    let mut response = Response::new(body.boxed());
    let (content_type, extension) = if encrypted {
        ("application/octet-stream", "tar.zst.age")
    } else {
        ("application/zstd", "tar.zst")
    };
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    let file = format!(
        "attachment; filename=\"coffer-{}-{}.{extension}\"",
        slug(&tenant.name),
        &rfc3339(crate::ids::unix_now())[..10]
    );
    if let Ok(value) = HeaderValue::from_str(&file) {
        response.headers_mut().insert(CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

/// Writes the archive, encrypted to `recipient` when given. On failure, hands
/// the writer back (when it still exists) so the body can end with an error.
fn write_export(
    mut writer: super::stream::ChannelWriter,
    recipient: Option<&AgeRecipient>,
    tenant: &crate::storage::TenantRecord,
    schema: &crate::schema::Schema,
    snapshot: &crate::storage::Snapshot,
) -> Result<u64, (Option<super::stream::ChannelWriter>, String)> {
    use std::io::Write;
    match recipient {
        None => match backup::export::write_archive(&mut writer, tenant, schema, snapshot) {
            Ok(summary) => {
                writer.flush().map_err(|e| (None, e.to_string()))?;
                Ok(summary.records)
            }
            Err(e) => Err((Some(writer), e.to_string())),
        },
        Some(recipient) => {
            let mut age = crate::crypto::age::encrypt(writer, recipient)
                .map_err(|e| (None, e.to_string()))?;
            let summary = backup::export::write_archive(&mut age, tenant, schema, snapshot)
                .map_err(|e| (None, e.to_string()))?;
            let mut writer = age.finish().map_err(|e| (None, e.to_string()))?;
            writer.flush().map_err(|e| (None, e.to_string()))?;
            Ok(summary.records)
        }
    }
}

fn slug(name: &str) -> String {
    let slug: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let slug = slug.trim_matches('-').to_string();
    if slug.is_empty() {
        "tenant".into()
    } else {
        slug.chars().take(40).collect()
    }
}

/// `POST /v1/tenants/{id}/backups`: 202 and a job that runs in the background.
pub async fn start(state: &Arc<AppState>, id: TenantId) -> Result<Response<Body>, ApiError> {
    let tenant = known_tenant(&state.storage, &id)?;
    if tenant.state == TenantState::Destroyed {
        return Err(ApiError::Gone("tenant is destroyed".into()));
    }
    let slot = state.jobs.take(Some(&id), "a backup")?;
    let job = {
        let (state, id) = (state.clone(), id.clone());
        blocking(move || state.backups.enqueue(&state.storage, &id, "manual")).await??
    };
    let body = job_json(&job, &[], &state.backups.replication);
    let runner = state.clone();
    let release = slot.release();
    let running = run_long(slot, move || {
        let retain = runner.backups.retention_secs;
        let done = runner.backups.run_then_free(
            &runner.storage,
            &runner.schemas,
            job,
            retain,
            move || drop(release),
        );
        tracing::info!(backup_id = %done.id, state = done.state.as_str(), "backup finished");
    });
    tokio::spawn(running);
    Ok(json_response(StatusCode::ACCEPTED, &body))
}

/// Jobs this host ran for the tenant with their replicas; for a tenant this
/// host does not know (disaster recovery on a new host), the backups found in
/// its regions' stores. Call from a blocking thread.
fn backups_of(state: &AppState, id: &TenantId) -> Result<Vec<Value>, ApiError> {
    let mut jobs: Vec<BackupJob> = JOBS
        .all(&state.storage.catalog)?
        .into_iter()
        .filter(|j| &j.tenant == id)
        .collect();
    jobs.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    let replication = &state.backups.replication;
    let mut out: Vec<Value> = jobs
        .iter()
        .map(|job| {
            job_json(
                job,
                &replication.replicas_of(&state.storage, &job.id),
                replication,
            )
        })
        .collect();
    if jobs.is_empty() && state.storage.catalog.tenant(id).is_none() {
        for (stored, regions) in replication.list_everywhere(id.as_str()).into_values() {
            let job = BackupJob {
                format: 1,
                id: stored.backup_id.clone(),
                tenant: id.clone(),
                kind: stored.kind.clone(),
                state: JobState::Done,
                created_at: stored.created_at,
                finished_at: Some(stored.created_at),
                error: None,
                stored: Some(stored),
            };
            let mut body = job_json(&job, &[], replication);
            for region in replication.regions.iter().map(|r| &r.name) {
                let found = if regions.contains(region) {
                    "replicated"
                } else {
                    "missing"
                };
                body["regions"][region.as_str()] = json!({ "state": found });
            }
            out.push(body);
        }
    }
    Ok(out)
}

pub async fn list(state: &Arc<AppState>, id: TenantId) -> Result<Response<Body>, ApiError> {
    let known = state.storage.catalog.tenant(&id);
    let inner = state.clone();
    let (backups, log) = blocking(move || -> Result<_, ApiError> {
        let log = known
            .as_ref()
            .map(|t| super::continuous::change_log_json(&inner, t));
        Ok((backups_of(&inner, &id)?, log))
    })
    .await??;
    if log.is_none() && backups.is_empty() {
        return Err(ApiError::NotFound("unknown tenant".into()));
    }
    let mut body = json!({ "backups": backups });
    if let Some(log) = log {
        body["change_log"] = log;
    }
    Ok(json_response(StatusCode::OK, &body))
}

pub async fn read(
    state: &Arc<AppState>,
    id: TenantId,
    backup: BackupId,
) -> Result<Response<Body>, ApiError> {
    let inner = state.clone();
    let backups = blocking(move || backups_of(&inner, &id)).await??;
    backups
        .into_iter()
        .find(|b| b["id"] == backup.as_str())
        .map(|b| json_response(StatusCode::OK, &b))
        .ok_or_else(|| ApiError::NotFound("backup not found".into()))
}

/// A backup as the API shows it: the job, and one entry per backup region.
fn job_json(job: &BackupJob, replicas: &[Replica], replication: &Replication) -> Value {
    let mut regions = serde_json::Map::new();
    for region in &replication.regions {
        let entry = match replicas.iter().find(|r| r.region == region.name) {
            Some(replica) => replica.to_json(),
            None => match job.state {
                JobState::Failed => json!({ "state": "failed", "error": job.error }),
                _ => json!({ "state": "pending" }),
            },
        };
        regions.insert(region.name.to_string(), entry);
    }
    let mut body = json!({
        "id": job.id,
        "tenant": job.tenant.as_str(),
        "kind": job.kind,
        "state": job.state.as_str(),
        "created_at": rfc3339(job.created_at),
        "regions": regions,
    });
    if let Some(error) = &job.error {
        body["error"] = Value::from(error.clone());
    }
    if let Some(at) = job.finished_at {
        body["finished_at"] = Value::from(rfc3339(at));
    }
    if let Some(stored) = &job.stored {
        body["records"] = Value::from(stored.records);
        body["size"] = Value::from(stored.archive_size);
        body["sha256"] = Value::from(stored.archive_sha256.clone());
        body["retain_until"] = Value::from(rfc3339(stored.retain_until));
    }
    body
}

/// `GET /v1/tenants/{id}/copies`: every place the tenant's data is.
pub async fn copies(state: &Arc<AppState>, id: TenantId) -> Result<Response<Body>, ApiError> {
    let tenant = known_tenant(&state.storage, &id)?;
    let tenant_id = id.clone();
    let inner = state.clone();
    let body = blocking(move || -> Result<Value, ApiError> {
        let backups = backups_of(&inner, &id)?;
        let erased = crate::replication::ERASED.get(&inner.storage.catalog, id.as_str())?
            .is_some();
        let spool: Vec<String> = inner
            .backups
            .spool
            .list(id.as_str())?
            .into_iter()
            .filter(|s| s.log.is_none())
            .map(|s| s.backup_id)
            .collect();
        let live = tenant.state != TenantState::Destroyed;
        let change_log = super::continuous::change_log_json(&inner, &tenant);
        // Every tenant restored or imported from this one, and what its
        // removal does to each.
        let copies: Vec<Value> = crate::lifecycle::copies_of(&inner.storage, &id)
            .iter()
            .map(|copy| {
                let mut entry = super::copy_json(copy.copy_of.as_ref().expect("a copy"));
                entry["id"] = json!(copy.id.as_str());
                entry["name"] = json!(copy.name);
                entry["state"] = json!(copy.state.as_str());
                entry["on_removal"] = json!(if crate::lifecycle::removed_with_source(copy) {
                    "destroyed with this tenant (made by staff)"
                } else {
                    "kept (made by the tenant's own admin)"
                });
                entry
            })
            .collect();
        Ok(json!({
            "tenant": id.as_str(),
            "hosting_region": tenant.region.as_str(),
            "database": {
                "region": inner.config.region.as_str(),
                "state": tenant.state.as_str(),
                "present": live,
            },
            "backup_regions": inner.backups.replication.regions.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            "backups": backups.iter().map(|b| json!({
                "id": b["id"],
                "kind": b["kind"],
                "created_at": b["created_at"],
                "retain_until": b["retain_until"],
                "regions": b["regions"],
                "on_host_spool": spool.iter().any(|s| b["id"] == s.as_str()),
            })).collect::<Vec<_>>(),
            "change_log": change_log,
            "last_drill": crate::service::drills::DRILLS
                .get(&inner.storage.catalog, id.as_str())?
                .map(|d| drill_json(&d)),
            "backups_erased": erased,
            "copies_remaining": backups.len(),
            "copies": copies,
        }))
    })
    .await??;
    let mut body = body;
    body["customer_key"] = super::customer_keys::shown(state, &tenant_id).await;
    Ok(json_response(StatusCode::OK, &body))
}

/// `GET /v1/regions`: each backup region, its store and its replication lag.
pub async fn regions(state: &Arc<AppState>) -> Result<Response<Body>, ApiError> {
    let inner = state.clone();
    let lag = blocking(move || inner.backups.replication.lag(&inner.storage)).await?;
    let regions: Vec<Value> = lag
        .iter()
        .map(|l| {
            json!({
                "region": l.region.as_str(),
                "store": l.location,
                "behind": l.behind,
                "failed": l.failed,
                "deleting": l.deleting,
                "oldest_unreplicated": l.oldest_unreplicated.map(rfc3339),
                "lag_seconds": l.lag_seconds,
                "log_behind": l.log_behind,
                "log_lag_seconds": l.log_lag_seconds,
                "last_error": l.last_error,
            })
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({ "host_region": state.config.region.as_str(), "regions": regions }),
    ))
}

/// `GET /v1/regions/{r}/tenants`: the tenants with backups in a region's store
/// (disaster recovery: what a new host can restore).
pub async fn region_tenants(
    state: &Arc<AppState>,
    region: String,
) -> Result<Response<Body>, ApiError> {
    let store_name = state
        .backups
        .replication
        .region(&region)
        .map_err(|_| ApiError::NotFound(format!("no backup region {region:?} on this host")))?
        .name
        .clone();
    let inner = state.clone();
    let tenants = blocking(move || -> Result<Vec<Value>, ApiError> {
        let replication = &inner.backups.replication;
        let store = replication
            .region(store_name.as_str())
            .expect("checked above");
        let ids = replication
            .block_on(store.tenants())
            .map_err(|e| ApiError::Unavailable(format!("region {store_name}: {e}")))?;
        let mut out = Vec::new();
        for id in ids {
            let backups = replication
                .block_on(store.list(&id))
                .map_err(|e| ApiError::Unavailable(format!("region {store_name}: {e}")))?;
            if backups.is_empty() {
                continue;
            }
            out.push(json!({
                "id": id,
                "backups": backups.iter().map(|b| json!({
                    "id": b.backup_id,
                    "created_at": rfc3339(b.created_at),
                    "records": b.records,
                    "size": b.archive_size,
                })).collect::<Vec<_>>(),
            }));
        }
        Ok(out)
    })
    .await??;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "region": region, "tenants": tenants }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreRequest {
    name: String,
    #[serde(default)]
    region: Option<String>,
    /// Keep the source tenant's id (a region move): refused when a tenant
    /// with that id exists on this host.
    #[serde(default)]
    keep_id: bool,
}

/// `POST /v1/tenants/{id}/backups/{bid}/restore`: a new tenant from a backup.
/// The new tenant's admins are the source tenant's admins; a token is returned
/// only to one of them.
pub async fn restore(
    state: &Arc<AppState>,
    principal: &Principal,
    id: TenantId,
    backup: BackupId,
    body: &bytes::Bytes,
) -> Result<Response<Body>, ApiError> {
    let request: RestoreRequest = parse_json(body)?;
    let name = super::checked_name(&request.name)?;
    if let Some(region) = &request.region {
        if state.backups.replication.region(region).is_err() {
            let known: Vec<&str> = state
                .backups
                .replication
                .regions
                .iter()
                .map(|r| r.name.as_str())
                .collect();
            return Err(ApiError::Unprocessable(format!(
                "no backup region {region:?} on this host (it has {known:?})"
            )));
        }
    }
    let mint = principal.role == Role::TenantAdmin && principal.is_admin_of(&id);
    let slot = state.jobs.take(Some(&id), "a restore")?;
    // The new tenant's id is chosen first, so that the audit entry (written
    // before anything is restored) names both tenants.
    let new_id = if request.keep_id {
        id.clone()
    } else {
        TenantId::generate().map_err(ApiError::internal)?
    };
    let copy_of = CopyOf {
        tenant: id.clone(),
        backup: Some(backup.to_string()),
        kind: if request.keep_id { "move" } else { "restore" }.into(),
        made_by: principal.person(),
        made_by_role: principal.role,
        at: unix_now(),
    };
    super::audit(
        state,
        Event::new("backup.restored", actor(principal))
            .tenant(&id)
            .detail("backup", backup.as_str())
            .detail("new_tenant", new_id.as_str())
            .detail("kind", copy_of.kind.as_str()),
    )
    .await?;
    let inner = state.clone();
    let restored = run_long(slot, move || {
        inner.backups.restore(
            &inner.storage,
            &inner.schemas,
            id.as_str(),
            backup.as_str(),
            request.region.as_deref(),
            name,
            Some(new_id),
            mint,
            Some(copy_of),
        )
    })
    .await??;
    tracing::info!(new_tenant = %restored.tenant.id, records = restored.records, "backup restored into a new tenant");
    // Its database logs a new generation: a base for point-in-time restores.
    super::continuous::start_base_backup(state, &restored.tenant.id);
    let mut body = tenant_json(&restored.tenant);
    if let Some(token) = restored.token {
        body["admin_token"] = Value::from(token);
    }
    body["records"] = Value::from(restored.records);
    body["counts"] = json!(restored.counts);
    Ok(json_response(StatusCode::CREATED, &body))
}

/// `POST /v1/tenants/import?name=N`: a new tenant from a portable export.
pub async fn import(
    state: &Arc<AppState>,
    principal: &Principal,
    query: Vec<(String, String)>,
    body: Incoming,
) -> Result<Response<Body>, ApiError> {
    let name = query
        .iter()
        .find(|(k, _)| k == "name")
        .map(|(_, v)| super::checked_name(v))
        .transpose()?
        .ok_or_else(|| ApiError::BadRequest("give the new tenant a name: ?name=".into()))?;
    // Recorded as a copy of the tenant the export came from, when that
    // tenant lives here (the manifest names it).
    let copy = CopyOf {
        tenant: TenantId::parse(&"0".repeat(32)).expect("a valid placeholder id"),
        backup: None,
        kind: "import".into(),
        made_by: principal.person(),
        made_by_role: principal.role,
        at: unix_now(),
    };
    let limit = state.config.max_import_bytes;
    let slot = state.jobs.take(None, "an import")?;
    let reader = body_reader(body, limit, state.config.limits.stall_timeout);
    let exceeded = reader.exceeded.clone();
    let inner = state.clone();
    let result = run_long(slot, move || {
        backup::restore_archive(
            &inner.storage,
            &inner.schemas,
            std::io::BufReader::with_capacity(256 * 1024, reader),
            name,
            None,
            inner.config.region.clone(),
            inner.backups.limits,
            &[],
            true,
            Some(copy),
            None,
        )
    })
    .await?;
    if exceeded.load(Ordering::SeqCst) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let restored = result?;
    tracing::info!(new_tenant = %restored.tenant.id, records = restored.records, "portable export imported");
    super::continuous::start_base_backup(state, &restored.tenant.id);
    let mut body = tenant_json(&restored.tenant);
    body["admin_token"] = Value::from(restored.token.unwrap_or_default());
    body["records"] = Value::from(restored.records);
    Ok(json_response(StatusCode::CREATED, &body))
}

/// `GET /v1/drills`: the newest restore drill of every tenant on the host.
pub async fn drills(state: &Arc<AppState>) -> Result<Response<Body>, ApiError> {
    let inner = state.clone();
    let drills = blocking(move || -> Result<Vec<Value>, ApiError> {
        let live = |id: &TenantId| {
            inner
                .storage
                .catalog
                .tenant(id)
                .is_some_and(|t| t.state != TenantState::Destroyed)
        };
        Ok(crate::service::drills::DRILLS
            .all(&inner.storage.catalog)?
            .iter()
            .filter(|d| live(&d.tenant))
            .map(drill_json)
            .collect())
    })
    .await??;
    Ok(json_response(StatusCode::OK, &json!({ "drills": drills })))
}

fn drill_json(drill: &crate::service::drills::DrillRecord) -> Value {
    json!({
        "tenant": drill.tenant.as_str(),
        "backup_id": drill.backup_id,
        "backup_created_at": rfc3339(drill.backup_created_at),
        "region": drill.region,
        "at": rfc3339(drill.at),
        "duration_ms": drill.duration_ms,
        "outcome": drill.outcome,
        "error": drill.error,
        "records": drill.records,
    })
}
