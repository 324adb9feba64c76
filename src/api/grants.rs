//! Handlers for access requests (break-glass grants), the tenant's access log,
//! its audit proof bundle, and the log's public key.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hyper::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{audit, blocking, json_response, known_tenant, parse_json, ApiError, AppState, Body};
use crate::audit::merkle;
use crate::audit::verify::{Bundle, BundleEntry, Consistency};
use crate::audit::{Actor, Entry, Event};
use crate::auth::{Principal, Role};
use crate::crypto::encode_hex;
use crate::grants::{
    Grant, GrantError, GrantState, Recovery, RecoveryError, Scope, GRANTS, RECOVERIES,
};
use crate::ids::{rfc3339, unix_now, TenantId};
use crate::storage::TenantState;

pub fn actor(principal: &Principal) -> Actor {
    Actor {
        role: principal.role.as_str().to_string(),
        token: Some(principal.token_id.clone()),
        identity: principal.identity.clone(),
    }
}

impl From<GrantError> for ApiError {
    fn from(e: GrantError) -> Self {
        match e {
            GrantError::NotPending(_) | GrantError::Closed | GrantError::AlreadyDecided => {
                ApiError::Conflict(e.to_string())
            }
            _ => ApiError::Forbidden(e.to_string()),
        }
    }
}

impl From<RecoveryError> for ApiError {
    fn from(e: RecoveryError) -> Self {
        match e {
            RecoveryError::Waiting(_) | RecoveryError::NotOpen(_) => {
                ApiError::Conflict(e.to_string())
            }
            RecoveryError::OperatorsOnly
            | RecoveryError::SamePerson
            | RecoveryError::NotTheTenantsAdmin => ApiError::Forbidden(e.to_string()),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessRequest {
    tenant: String,
    scope: String,
    duration_minutes: u64,
    reason: String,
    ticket: String,
    #[serde(default)]
    collections: Option<Vec<String>>,
    #[serde(default)]
    emergency: bool,
}

fn text_field(name: &str, value: &str) -> Result<String, ApiError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(ApiError::Unprocessable(format!("{name} is required")));
    }
    if value.len() > 2000 || value.chars().any(|c| c.is_control() && c != '\n') {
        return Err(ApiError::Unprocessable(format!(
            "{name} must be at most 2000 characters of text"
        )));
    }
    Ok(value.to_string())
}

pub fn grant_json(grant: &Grant, now: u64) -> Value {
    let state = grant.state_at(now);
    let mut body = json!({
        "id": grant.id,
        "tenant": grant.tenant.as_str(),
        "requester": grant.requester_name,
        "requester_token": grant.requester,
        "scope": grant.scope.as_str(),
        "collections": grant.collections,
        "duration_minutes": grant.duration_minutes,
        "reason": grant.reason,
        "ticket": grant.ticket,
        "emergency": grant.emergency,
        "requested_at": rfc3339(grant.requested_at),
        "state": state.name(),
    });
    match state {
        GrantState::Pending { approvals } => {
            body["approvals"] = json!(approvals);
            body["expires_at"] = rfc3339(grant.pending_until).into();
        }
        GrantState::Active {
            approvals,
            from,
            until,
        } => {
            body["approvals"] = json!(approvals);
            body["active_from"] = rfc3339(from).into();
            body["active_until"] = rfc3339(until).into();
        }
        GrantState::Closed { because, at, by } => {
            body["closed"] = json!({"because": because, "at": rfc3339(at), "by": by});
        }
    }
    body
}

/// `POST /v1/access-requests`: a support engineer asks for a grant.
pub async fn request(
    state: &Arc<AppState>,
    principal: &Principal,
    body: &bytes::Bytes,
) -> Result<Response<Body>, ApiError> {
    let request: AccessRequest = parse_json(body)?;
    let tenant_id = TenantId::parse(&request.tenant)
        .ok_or_else(|| ApiError::Unprocessable("tenant is not a tenant id".into()))?;
    let tenant = known_tenant(&state.storage, &tenant_id).map_err(|_| {
        ApiError::Unprocessable(format!("no tenant {} on this host", request.tenant))
    })?;
    if tenant.state != TenantState::Active {
        return Err(ApiError::Conflict(format!(
            "tenant is {}: no access is granted to it",
            tenant.state.as_str()
        )));
    }
    let scope = match request.scope.as_str() {
        "read" => Scope::Read,
        "read-write" => Scope::ReadWrite,
        other => {
            return Err(ApiError::Unprocessable(format!(
                "scope {other:?}: use \"read\" or \"read-write\""
            )))
        }
    };
    let policy = &state.config.access;
    if request.emergency && scope != Scope::Read {
        return Err(ApiError::Unprocessable(
            "an emergency grant is read-only: ask for scope \"read\"".into(),
        ));
    }
    let cap = if request.emergency {
        policy.max_emergency_minutes
    } else {
        policy.max_minutes
    };
    if request.duration_minutes == 0 || request.duration_minutes > cap {
        return Err(ApiError::Unprocessable(format!(
            "duration_minutes must be 1 to {cap}{}",
            if request.emergency {
                " for an emergency"
            } else {
                ""
            }
        )));
    }
    let reason = text_field("reason", &request.reason)?;
    let ticket = text_field("ticket", &request.ticket)?;
    if let Some(collections) = &request.collections {
        let schema = state
            .schemas
            .get(&tenant.schema, tenant.schema_version)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        if collections.is_empty() {
            return Err(ApiError::Unprocessable(
                "collections, when given, names at least one".into(),
            ));
        }
        for c in collections {
            if schema.collection(c).is_none() {
                return Err(ApiError::Unprocessable(format!(
                    "the tenant has no collection {c:?}"
                )));
            }
        }
    }
    let now = unix_now();
    let grant = Grant {
        format: 1,
        id: encode_hex(&crate::crypto::random_bytes::<16>().map_err(ApiError::internal)?),
        tenant: tenant.id.clone(),
        requester: principal.token_id.clone(),
        requester_name: principal.name.clone(),
        requester_identity: principal.identity.clone(),
        requester_sponsors: principal.sponsors.clone(),
        approver_sponsors: Vec::new(),
        scope,
        collections: request.collections,
        duration_minutes: request.duration_minutes,
        reason,
        ticket,
        emergency: request.emergency,
        requested_at: now,
        pending_until: now + policy.pending_expiry.as_secs(),
        state: GrantState::Pending {
            approvals: Vec::new(),
        },
    };
    audit(
        state,
        Event::new("grant.requested", actor(principal))
            .tenant(&tenant.id)
            .grant(&grant.id)
            .detail("scope", scope.as_str())
            .detail("duration_minutes", grant.duration_minutes)
            .detail("emergency", grant.emergency)
            .detail("collections", json!(grant.collections))
            .sensitive("reason", &grant.reason)
            .sensitive("ticket", &grant.ticket),
    )
    .await?;
    let stored = grant.clone();
    let storage = state.storage.clone();
    blocking(move || GRANTS.put(&storage.catalog, &stored.id, &stored)).await??;
    tracing::info!(grant_id = %grant.id, tenant_id = %grant.tenant, emergency = grant.emergency, "access requested");
    Ok(json_response(StatusCode::CREATED, &grant_json(&grant, now)))
}

fn load(state: &AppState, id: &str) -> Result<Grant, ApiError> {
    GRANTS
        .get(&state.storage.catalog, id)?
        .ok_or_else(|| ApiError::NotFound("no such access request".into()))
}

/// Who may see a request: its requester, the tenant's admins, operators.
fn may_see(principal: &Principal, grant: &Grant) -> bool {
    principal.token_id == grant.requester
        || principal.is_admin_of(&grant.tenant)
        || principal.role == Role::Operator
}

pub async fn read(
    state: &Arc<AppState>,
    principal: &Principal,
    id: String,
) -> Result<Response<Body>, ApiError> {
    let grant = load(state, &id)?;
    if !may_see(principal, &grant) {
        return Err(ApiError::NotFound("no such access request".into()));
    }
    Ok(json_response(
        StatusCode::OK,
        &grant_json(&grant, unix_now()),
    ))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Deny,
    Revoke,
    Withdraw,
}

/// `POST /v1/access-requests/{id}/approve|deny|revoke|withdraw`. The
/// transition is audited before it is stored: if the audit log cannot take
/// it, nothing changes.
pub async fn decide(
    state: &Arc<AppState>,
    principal: &Principal,
    id: String,
    decision: Decision,
) -> Result<Response<Body>, ApiError> {
    let _guard = state.grant_lock.lock().await;
    let mut grant = load(state, &id)?;
    if !may_see(principal, &grant) {
        return Err(ApiError::NotFound("no such access request".into()));
    }
    let now = unix_now();
    let before = grant.state_at(now).name();
    match decision {
        Decision::Approve => grant.approve(principal, now)?,
        Decision::Deny => grant.deny(principal, now)?,
        Decision::Revoke => grant.revoke(principal, now)?,
        Decision::Withdraw => grant.withdraw(principal, now)?,
    }
    let after = grant.state_at(now);
    let kind = match (decision, &after) {
        (Decision::Approve, GrantState::Active { .. }) => "grant.activated",
        (Decision::Approve, _) => "grant.approved",
        (Decision::Deny, _) => "grant.denied",
        (Decision::Revoke, _) => "grant.revoked",
        (Decision::Withdraw, _) => "grant.withdrawn",
    };
    let mut event = Event::new(kind, actor(principal))
        .tenant(&grant.tenant)
        .grant(&grant.id)
        .detail("from", before)
        .detail("to", after.name())
        .detail("emergency", grant.emergency);
    if let GrantState::Active { until, .. } = &after {
        event = event.detail("until", rfc3339(*until));
    }
    audit(state, event).await?;
    let stored = grant.clone();
    let storage = state.storage.clone();
    blocking(move || GRANTS.put(&storage.catalog, &stored.id, &stored)).await??;
    tracing::info!(grant_id = %grant.id, tenant_id = %grant.tenant, event = kind, "access request decided");
    Ok(json_response(StatusCode::OK, &grant_json(&grant, now)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecoveryRequest {
    reason: String,
    ticket: String,
}

fn recovery_json(r: &Recovery, now: u64) -> Value {
    json!({
        "id": r.id,
        "tenant": r.tenant.as_str(),
        "state": r.state_at(now),
        "requested_by": r.requested_by,
        "approved_by": r.approved_by,
        "reason": r.reason,
        "ticket": r.ticket,
        "requested_at": rfc3339(r.requested_at),
        "ready_at": rfc3339(r.ready_at),
        "expires_at": rfc3339(r.pending_until),
        "completed_at": r.completed_at.map(rfc3339),
        "cancelled": r.cancelled.as_ref().map(|c| json!({"at": rfc3339(c.at), "by": c.by})),
    })
}

/// `GET /v1/approvals` (operators): what waits for a second operator —
/// emergency access requests still pending, and admin recoveries not yet
/// carried out, cancelled or expired.
pub async fn pending_approvals(state: &Arc<AppState>) -> Result<Response<Body>, ApiError> {
    let inner = state.clone();
    let body = blocking(move || -> Result<Value, ApiError> {
        let now = unix_now();
        let mut emergencies: Vec<Grant> = GRANTS
            .all(&inner.storage.catalog)?
            .into_iter()
            .filter(|g| g.emergency && matches!(g.state_at(now), GrantState::Pending { .. }))
            .collect();
        emergencies.sort_by_key(|g| g.requested_at);
        let mut recoveries: Vec<Recovery> = RECOVERIES
            .all(&inner.storage.catalog)?
            .into_iter()
            .filter(|r| matches!(r.state_at(now), "waiting" | "ready"))
            .collect();
        recoveries.sort_by_key(|r| r.requested_at);
        Ok(json!({
            "emergency_requests": emergencies.iter().map(|g| grant_json(g, now)).collect::<Vec<_>>(),
            "admin_recoveries": recoveries.iter().map(|r| recovery_json(r, now)).collect::<Vec<_>>(),
        }))
    })
    .await??;
    Ok(json_response(StatusCode::OK, &body))
}

/// `POST /v1/tenants/{id}/admin-recovery`: an operator asks to mint a new
/// admin token for a tenant that lost every one; a second operator approves.
pub async fn request_recovery(
    state: &Arc<AppState>,
    principal: &Principal,
    tenant: TenantId,
    body: &bytes::Bytes,
) -> Result<Response<Body>, ApiError> {
    let request: RecoveryRequest = parse_json(body)?;
    let record = known_tenant(&state.storage, &tenant)?;
    if record.state != TenantState::Active {
        return Err(ApiError::Conflict(format!(
            "tenant is {}: no admin is recovered for it",
            record.state.as_str()
        )));
    }
    let now = unix_now();
    let ready_at = now + state.config.access.admin_recovery_wait.as_secs();
    let recovery = Recovery {
        format: 1,
        id: encode_hex(&crate::crypto::random_bytes::<16>().map_err(ApiError::internal)?),
        tenant: tenant.clone(),
        requested_by: principal.person(),
        requested_by_sponsors: principal.sponsors.clone(),
        reason: text_field("reason", &request.reason)?,
        ticket: text_field("ticket", &request.ticket)?,
        requested_at: now,
        ready_at,
        pending_until: ready_at + state.config.access.pending_expiry.as_secs(),
        approved_by: None,
        completed_at: None,
        cancelled: None,
    };
    audit(
        state,
        Event::new("admin-recovery.requested", actor(principal))
            .tenant(&tenant)
            .grant(&recovery.id)
            .detail("ready_at", rfc3339(ready_at))
            .sensitive("reason", &recovery.reason)
            .sensitive("ticket", &recovery.ticket),
    )
    .await?;
    let stored = recovery.clone();
    let storage = state.storage.clone();
    blocking(move || RECOVERIES.put(&storage.catalog, &stored.id, &stored)).await??;
    tracing::warn!(recovery_id = %recovery.id, tenant_id = %tenant, "admin recovery requested");
    Ok(json_response(
        StatusCode::CREATED,
        &recovery_json(&recovery, now),
    ))
}

fn load_recovery(state: &AppState, id: &str) -> Result<Recovery, ApiError> {
    RECOVERIES
        .get(&state.storage.catalog, id)?
        .ok_or_else(|| ApiError::NotFound("no such admin recovery".into()))
}

/// `POST /v1/admin-recoveries/{id}/approve`: a second operator identity,
/// after the waiting period; answers with the new admin token, once.
pub async fn approve_recovery(
    state: &Arc<AppState>,
    principal: &Principal,
    id: String,
) -> Result<Response<Body>, ApiError> {
    let _guard = state.grant_lock.lock().await;
    let mut recovery = load_recovery(state, &id)?;
    let now = unix_now();
    recovery.approve(principal, now)?;
    let tenant = known_tenant(&state.storage, &recovery.tenant)?;
    if tenant.state != TenantState::Active {
        return Err(ApiError::Conflict(format!(
            "tenant is {}: no admin is recovered for it",
            tenant.state.as_str()
        )));
    }
    audit(
        state,
        Event::new("admin-recovery.completed", actor(principal))
            .tenant(&recovery.tenant)
            .grant(&recovery.id)
            .detail("requested_by", recovery.requested_by.as_str()),
    )
    .await?;
    let (stored, storage) = (recovery.clone(), state.storage.clone());
    let by = principal.person();
    let secret = blocking(move || -> Result<String, ApiError> {
        RECOVERIES.put(&storage.catalog, &stored.id, &stored)?;
        let (_, secret) = storage.issue_token(crate::storage::NewToken::admin(
            &stored.tenant,
            "recovered admin",
            &by,
        ))?;
        Ok(secret)
    })
    .await??;
    tracing::warn!(recovery_id = %recovery.id, tenant_id = %recovery.tenant, "admin recovered by two operators");
    let mut body = recovery_json(&recovery, now);
    body["admin_token"] = Value::from(secret);
    Ok(json_response(StatusCode::OK, &body))
}

/// `POST /v1/admin-recoveries/{id}/cancel`: the tenant's admin ends a
/// recovery before it is carried out.
pub async fn cancel_recovery(
    state: &Arc<AppState>,
    principal: &Principal,
    id: String,
) -> Result<Response<Body>, ApiError> {
    let _guard = state.grant_lock.lock().await;
    let mut recovery = load_recovery(state, &id)?;
    if !principal.is_admin_of(&recovery.tenant) {
        return Err(ApiError::NotFound("no such admin recovery".into()));
    }
    let now = unix_now();
    recovery.cancel(principal, now)?;
    audit(
        state,
        Event::new("admin-recovery.cancelled", actor(principal))
            .tenant(&recovery.tenant)
            .grant(&recovery.id),
    )
    .await?;
    let (stored, storage) = (recovery.clone(), state.storage.clone());
    blocking(move || RECOVERIES.put(&storage.catalog, &stored.id, &stored)).await??;
    tracing::warn!(recovery_id = %recovery.id, tenant_id = %recovery.tenant, "admin recovery cancelled by the tenant");
    Ok(json_response(
        StatusCode::OK,
        &recovery_json(&recovery, now),
    ))
}

/// Entries the tenant's access log shows: grants and accesses through them,
/// admin recoveries, admin tokens minted and revoked, copies made of it,
/// and moves.
fn in_access_log(kind: &str) -> bool {
    [
        "grant.",
        "admin-recovery.",
        "token.",
        "webhook.",
        "key.",
        "tenant.move",
        "tenant.moved",
    ]
    .iter()
    .any(|prefix| kind.starts_with(prefix))
        || matches!(
            kind,
            "backup.restored" | "tenant.imported" | "tenant.copy-destroyed"
        )
}

/// `GET /v1/tenants/{id}/access-log`: every grant of the tenant and every
/// access made through one (reading it is itself audited).
pub async fn access_log(
    state: &Arc<AppState>,
    principal: &Principal,
    tenant: TenantId,
) -> Result<Response<Body>, ApiError> {
    known_tenant(&state.storage, &tenant)?;
    audit(
        state,
        Event::new("audit.access-log-read", actor(principal)).tenant(&tenant),
    )
    .await?;
    let inner = state.clone();
    let body = blocking(move || -> Result<Value, ApiError> {
        let now = unix_now();
        let mut grants: Vec<Grant> = GRANTS.all(&inner.storage.catalog)?
            .into_iter()
            .filter(|g| g.tenant == tenant)
            .collect();
        grants.sort_by_key(|g| g.requested_at);
        let mut recoveries: Vec<Recovery> = RECOVERIES.all(&inner.storage.catalog)?
            .into_iter()
            .filter(|r| r.tenant == tenant)
            .collect();
        recoveries.sort_by_key(|r| r.requested_at);
        let entries = inner
            .audit
            .tenant_entries(&tenant)
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        let mut events = Vec::new();
        for (_, bytes) in entries {
            let entry: Entry = serde_json::from_slice(&bytes).map_err(ApiError::internal)?;
            if !in_access_log(&entry.kind) {
                continue;
            }
            events.push(json!({
                "seq": entry.seq,
                "at": rfc3339(entry.at / 1000),
                "kind": entry.kind,
                "grant": entry.grant,
                "actor": entry.actor,
                "details": entry.details,
            }));
        }
        Ok(json!({
            "tenant": tenant.as_str(),
            "grants": grants.iter().map(|g| grant_json(g, now)).collect::<Vec<_>>(),
            "admin_recoveries": recoveries.iter().map(|r| recovery_json(r, now)).collect::<Vec<_>>(),
            "events": events,
        }))
    })
    .await??;
    Ok(json_response(StatusCode::OK, &body))
}

/// `GET /v1/tenants/{id}/audit-proof[?seen=N,…]`: the tenant's entries with
/// inclusion proofs against the newest signed checkpoint, and consistency
/// proofs from the tree sizes the tenant saw before.
pub async fn audit_proof(
    state: &Arc<AppState>,
    principal: &Principal,
    tenant: TenantId,
    query: Vec<(String, String)>,
) -> Result<Response<Body>, ApiError> {
    let mut seen = Vec::new();
    for (key, value) in &query {
        match key.as_str() {
            "seen" => {
                for part in value.split(',').filter(|p| !p.is_empty()) {
                    seen.push(part.parse::<u64>().map_err(|_| {
                        ApiError::BadRequest("seen is a list of tree sizes".into())
                    })?);
                }
            }
            other => return Err(ApiError::BadRequest(format!("unknown parameter {other:?}"))),
        }
    }
    known_tenant(&state.storage, &tenant)?;
    audit(
        state,
        Event::new("audit.proof-read", actor(principal)).tenant(&tenant),
    )
    .await?;
    let inner = state.clone();
    let bundle = blocking(move || -> Result<Bundle, ApiError> {
        let log = &inner.audit;
        let (size, note) = log.latest_checkpoint().ok_or_else(|| {
            ApiError::Unavailable("no signed checkpoint yet; try again in a few seconds".into())
        })?;
        let unavailable = |e: crate::audit::AuditError| ApiError::Unavailable(e.to_string());
        let mine: Vec<(u64, Vec<u8>)> = log
            .tenant_entries(&tenant)
            .map_err(unavailable)?
            .into_iter()
            .filter(|(s, _)| *s < size)
            .collect();
        // Every proof against one snapshot of the tree (its tiles cached).
        let prover = log.prover();
        let view = prover.view();
        let hex = |proof: Vec<crate::audit::merkle::Hash>| -> Vec<String> {
            proof.iter().map(|h| encode_hex(h)).collect()
        };
        let damaged = |e: String| ApiError::Unavailable(format!("audit log: {e}"));
        let mut entries = Vec::with_capacity(mine.len());
        for (seq, bytes) in mine {
            entries.push(BundleEntry {
                seq,
                entry: B64.encode(&bytes),
                proof: hex(merkle::inclusion_proof(&view, seq, size).map_err(damaged)?),
            });
        }
        let mut consistency = Vec::new();
        for from in seen {
            if from == 0 || from > size {
                return Err(ApiError::Unprocessable(format!(
                    "seen size {from} is not between 1 and the checkpoint's {size}"
                )));
            }
            consistency.push(Consistency {
                from,
                root: encode_hex(&merkle::root(&view, from).map_err(damaged)?),
                proof: hex(merkle::consistency_proof(&view, from, size).map_err(damaged)?),
            });
        }
        Ok(Bundle {
            format: 1,
            tenant: tenant.to_string(),
            origin: log.origin().to_string(),
            verifier_key: log.verifier_key(),
            checkpoint: note,
            size,
            entries,
            consistency,
        })
    })
    .await??;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::to_value(&bundle).map_err(ApiError::internal)?,
    ))
}

/// `GET /v1/audit/public-key`: the key checkpoints are signed with.
pub fn public_key(state: &AppState) -> Response<Body> {
    json_response(
        StatusCode::OK,
        &json!({"origin": state.audit.origin(), "key": state.audit.verifier_key()}),
    )
}
