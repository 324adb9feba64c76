//! The control API: the only user of hyper. HTTP/1.1, JSON bodies, bearer tokens.
//!
//! Each request is parsed into an [`Endpoint`], its caller authenticated, the
//! action checked against `auth`'s policy table, and only then dispatched. Errors
//! become `{"error": ...}` in one exhaustive status mapping ([`ApiError::status`]).
//! Blocking work (sled, file I/O) runs through [`blocking`], which keeps the span
//! and runs to completion even if the client hangs up.

mod backups;
mod grants;
mod moves;
mod routes;
mod stream;
mod tokens;

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tracing::Instrument;

pub use routes::{Endpoint, MoveStep};

use crate::access::{self, AccessError};
use crate::audit::{AuditLog, Event};
use crate::auth::{self, Action, AuthError, Principal, Role};
use crate::config::Config;
use crate::ids::{rfc3339, RecordId, Region, TenantId};
use crate::lifecycle::{self, LifecycleError};
use crate::schema::Registry;
use crate::service::Backups;
use crate::storage::{NewTenant, Record, Storage, StorageError, TenantRecord, TenantState};

pub type Body = BoxBody<Bytes, std::io::Error>;

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    /// Also delete every copy of every backup of the tenant, in every region.
    #[serde(default)]
    erase_backups: bool,
}

/// What every handler shares.
pub struct AppState {
    pub storage: Arc<Storage>,
    pub schemas: Registry,
    pub config: Config,
    pub backups: Arc<Backups>,
    pub audit: Arc<AuditLog>,
    /// Decisions on access requests, one at a time (read, decide, store).
    grant_lock: tokio::sync::Mutex<()>,
    next_request: AtomicU64,
}

impl AppState {
    pub fn new(
        storage: Arc<Storage>,
        schemas: Registry,
        config: Config,
        backups: Arc<Backups>,
        audit: Arc<AuditLog>,
    ) -> Self {
        AppState {
            storage,
            schemas,
            config,
            backups,
            audit,
            grant_lock: tokio::sync::Mutex::new(()),
            next_request: AtomicU64::new(1),
        }
    }
}

/// Longest wait for an audit entry to become durable before the audited
/// action is refused (503): fail closed, never hang.
const AUDIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Records an audit event durably, or refuses with 503.
pub(crate) async fn audit(state: &AppState, event: Event) -> Result<u64, ApiError> {
    let log = state.audit.clone();
    let kind = event.kind;
    match tokio::time::timeout(
        AUDIT_TIMEOUT,
        tokio::task::spawn_blocking(move || log.append(event)),
    )
    .await
    {
        Ok(Ok(Ok(seq))) => Ok(seq),
        Ok(Ok(Err(error))) => {
            tracing::error!(%error, event = kind, "audit entry not durable: action refused");
            Err(ApiError::Unavailable(format!(
                "{error}; the action was not performed"
            )))
        }
        Ok(Err(join)) => Err(ApiError::internal(join)),
        Err(_) => {
            tracing::error!(
                event = kind,
                "audit log did not answer in time: action refused"
            );
            Err(ApiError::Unavailable(
                "audit log did not answer in time; the action was not performed".into(),
            ))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed on this path")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Gone(String),
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    Unavailable(String),
    /// The tenant lives on another host now: 308 to the same path there.
    #[error("{message}")]
    Moved { message: String, location: String },
    /// Logged with its detail; the client sees only `public` and the request id.
    #[error("internal error: {detail}")]
    Internal { public: String, detail: String },
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Moved { .. } => StatusCode::PERMANENT_REDIRECT,
            ApiError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub(crate) fn internal(detail: impl std::fmt::Display) -> Self {
        ApiError::Internal {
            public: "internal error".into(),
            detail: detail.to_string(),
        }
    }

    fn into_response(self, request_id: u64) -> Response<Body> {
        let status = self.status();
        let body = match &self {
            ApiError::Internal { public, detail } => {
                tracing::error!(request_id, error = %detail, "request failed");
                json!({"error": public, "request_id": request_id.to_string()})
            }
            ApiError::Moved { message, location } => {
                json!({"error": message, "location": location})
            }
            other => json!({"error": other.to_string()}),
        };
        let mut response = json_response(status, &body);
        if let ApiError::Moved { location, .. } = &self {
            if let Ok(value) = hyper::header::HeaderValue::from_str(location) {
                response
                    .headers_mut()
                    .insert(hyper::header::LOCATION, value);
            }
        }
        response
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Missing | AuthError::Invalid | AuthError::Revoked | AuthError::Expired => {
                ApiError::Unauthorized(e.to_string())
            }
            AuthError::AwaitingApproval => ApiError::Forbidden(e.to_string()),
            AuthError::Storage(inner) => ApiError::from(inner),
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::NotFound => ApiError::NotFound("not found".into()),
            StorageError::Frozen | StorageError::Exists(_) => ApiError::Conflict(e.to_string()),
            StorageError::Damaged(what) => ApiError::Internal {
                public: format!("{what} is damaged and cannot be opened"),
                detail: format!("damaged: {what}"),
            },
            other => ApiError::internal(other),
        }
    }
}

impl From<AccessError> for ApiError {
    fn from(e: AccessError) -> Self {
        let message = e.to_string();
        match e {
            AccessError::Denied
            | AccessError::NoGrant(_)
            | AccessError::OutOfScope(_)
            | AccessError::ReadOnlyGrant => ApiError::Forbidden(message),
            AccessError::Deactivated | AccessError::Moving(_) => ApiError::Conflict(message),
            AccessError::Moved { location, .. } => ApiError::Moved { message, location },
            AccessError::Destroyed => ApiError::Gone(message),
            AccessError::UnknownCollection(_) | AccessError::RecordNotFound => {
                ApiError::NotFound(message)
            }
            AccessError::Invalid(_) => ApiError::Unprocessable(message),
            AccessError::NotIndexed(_) | AccessError::BadQueryValue(_) => {
                ApiError::BadRequest(message)
            }
            AccessError::Duplicate(_) => ApiError::Conflict(message),
            AccessError::SchemaMissing(..) => ApiError::internal(message),
            AccessError::Storage(inner) => ApiError::from(inner),
        }
    }
}

impl From<LifecycleError> for ApiError {
    fn from(e: LifecycleError) -> Self {
        let message = e.to_string();
        match e {
            LifecycleError::NotFound => ApiError::NotFound(message),
            LifecycleError::NotActive(_)
            | LifecycleError::NotDeactivated(_)
            | LifecycleError::NotMoving(_)
            | LifecycleError::NoProposedMove
            | LifecycleError::AlreadyProposed(_) => ApiError::Conflict(message),
            LifecycleError::Destroyed => ApiError::Gone(message),
            LifecycleError::Storage(inner) => ApiError::from(inner),
        }
    }
}

/// Accepts connections until `shutdown` resolves, then lets in-flight requests
/// finish (up to 10 s) before returning.
pub async fn serve(
    state: Arc<AppState>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        tracing::warn!(%error, "accept connection");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                let service = service_fn(move |request| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(handle(state, request).await) }
                });
                let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down: waiting for in-flight requests");
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(Duration::from_secs(10)) => tracing::warn!("gave up waiting for connections to close"),
    }
    Ok(())
}

async fn handle(state: Arc<AppState>, request: Request<Incoming>) -> Response<Body> {
    let request_id = state.next_request.fetch_add(1, Ordering::Relaxed);
    // Only the path is logged: query strings can carry field values.
    let span = tracing::info_span!(
        "request",
        request_id,
        method = %request.method(),
        path = %request.uri().path(),
        tenant_id = tracing::field::Empty,
    );
    let started = Instant::now();
    // Imports, restores and upgrades move whole tenants: bounded by their own
    // size limits, not by the request timeout.
    let long_running = matches!(
        Endpoint::parse(request.method(), request.uri().path()),
        Ok(Endpoint::ImportTenant | Endpoint::RestoreBackup(..) | Endpoint::UpgradeTenant(_))
    );
    let timeout = if long_running {
        Duration::from_secs(24 * 3600)
    } else {
        state.config.request_timeout
    };
    // A moved tenant's calls are redirected to the same path on its new host.
    let path_and_query = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let response = async {
        let hosts = state.config.hosts.clone();
        match tokio::time::timeout(timeout, route(state, request)).await {
            Ok(Ok(response)) => response,
            // Redirects only ever point at a host the config lists.
            Ok(Err(ApiError::Moved { message, location }))
                if hosts.values().any(|h| h == location.trim_end_matches('/')) =>
            {
                ApiError::Moved {
                    message,
                    location: format!("{}{path_and_query}", location.trim_end_matches('/')),
                }
                .into_response(request_id)
            }
            Ok(Err(ApiError::Moved { .. })) => ApiError::Conflict(
                "the tenant moved to a host this host's config no longer lists; ask the operator where it lives now".into(),
            )
            .into_response(request_id),
            Ok(Err(error)) => error.into_response(request_id),
            Err(_) => ApiError::Unavailable("request timed out".into()).into_response(request_id),
        }
    }
    .instrument(span.clone())
    .await;
    let _enter = span.enter();
    let elapsed_ms = started.elapsed().as_millis() as u64;
    if elapsed_ms > 1000 {
        tracing::warn!(
            status = response.status().as_u16(),
            elapsed_ms,
            "slow request"
        );
    } else {
        tracing::info!(
            status = response.status().as_u16(),
            elapsed_ms,
            "request done"
        );
    }
    response
}

async fn route(
    state: Arc<AppState>,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let endpoint = Endpoint::parse(request.method(), request.uri().path())?;
    if let Some(tenant) = endpoint.tenant() {
        tracing::Span::current().record("tenant_id", tracing::field::display(tenant));
    }
    if endpoint == Endpoint::Health {
        return Ok(json_response(
            StatusCode::OK,
            &json!({"status": "ok", "region": state.config.region.as_str()}),
        ));
    }
    if endpoint == Endpoint::AuditPublicKey {
        // Public by design: anyone checking a checkpoint needs it.
        return Ok(grants::public_key(&state));
    }
    let auth_header = match request.headers().get(AUTHORIZATION) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| ApiError::Unauthorized("invalid bearer token".into()))?
                .to_string(),
        ),
    };
    let bearer = match &endpoint {
        Endpoint::MoveTenant(_, MoveStep::Complete) => auth_header
            .as_deref()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(|t| moves::Bearer(t.trim().to_string())),
        _ => None,
    };
    let mut principal = {
        let storage = state.storage.clone();
        blocking(move || auth::authenticate(&storage, auth_header.as_deref())).await??
    };
    if let Some(value) = request.headers().get("x-coffer-grant") {
        if principal.role == Role::Support {
            principal.grant = Some(
                value
                    .to_str()
                    .ok()
                    .filter(|v| v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()))
                    .ok_or_else(|| ApiError::BadRequest("X-Coffer-Grant is not a grant id".into()))?
                    .to_string(),
            );
        }
    }
    let query = routes::parse_query(request.uri().query().unwrap_or(""))?;
    if endpoint == Endpoint::ImportTenant {
        // An archive: streamed to the importer, never held whole in memory.
        allow(&principal, Action::ImportTenant)?;
        audit(
            &state,
            Event::new("tenant.imported", grants::actor(&principal)),
        )
        .await?;
        let declared = request
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|length| length > state.config.max_import_bytes) {
            return Err(ApiError::PayloadTooLarge(
                state.config.max_import_bytes as usize,
            ));
        }
        return backups::import(&state, &principal, query, request.into_body()).await;
    }
    let body = read_body(request, state.config.max_body_bytes).await?;
    if let Endpoint::MoveTenant(id, step) = endpoint {
        allow(
            &principal,
            match step {
                MoveStep::Approve => Action::ApproveMove(&id),
                _ => Action::MoveTenant(&id),
            },
        )?;
        return moves::step(&state, &principal, id, step, &body, bearer).await;
    }
    dispatch(&state, &principal, endpoint, query, body).await
}

fn allow(principal: &Principal, action: Action<'_>) -> Result<(), ApiError> {
    auth::authorize(principal, &action).map_err(|denied| ApiError::Forbidden(denied.0.into()))
}

/// Requests made through a grant are audited: writes before they happen
/// (no durable entry, no write), every request with its outcome before the
/// answer leaves (no durable entry, no data).
async fn dispatch(
    state: &Arc<AppState>,
    principal: &Principal,
    endpoint: Endpoint,
    query: Vec<(String, String)>,
    body: Bytes,
) -> Result<Response<Body>, ApiError> {
    let through_grant = principal.grant.clone().and_then(|grant| {
        let (method, tenant, collection, record) = match &endpoint {
            Endpoint::CreateRecord(t, c) => ("POST", t, c, None),
            Endpoint::ListRecords(t, c) => ("GET", t, c, None),
            Endpoint::ReadRecord(t, c, r) => ("GET", t, c, Some(r)),
            Endpoint::ReplaceRecord(t, c, r) => ("PUT", t, c, Some(r)),
            Endpoint::DeleteRecord(t, c, r) => ("DELETE", t, c, Some(r)),
            _ => return None,
        };
        let mut event = Event::new("grant.access", grants::actor(principal))
            .tenant(tenant)
            .grant(&grant)
            .detail("method", method)
            .detail("collection", collection.as_str());
        if let Some(record) = record {
            event = event.detail("record", record.as_str());
        }
        Some((method, event))
    });
    let Some((method, event)) = through_grant else {
        return dispatch_endpoint(state, principal, endpoint, query, body).await;
    };
    if method != "GET" {
        audit(state, event.clone().detail("outcome", "started")).await?;
    }
    let result = dispatch_endpoint(state, principal, endpoint, query, body).await;
    let status = match &result {
        Ok(response) => response.status().as_u16(),
        Err(error) => error.status().as_u16(),
    };
    audit(state, event.detail("outcome", status)).await?;
    result
}

async fn dispatch_endpoint(
    state: &Arc<AppState>,
    principal: &Principal,
    endpoint: Endpoint,
    query: Vec<(String, String)>,
    body: Bytes,
) -> Result<Response<Body>, ApiError> {
    let storage = state.storage.clone();
    match endpoint {
        Endpoint::AuditPublicKey => Ok(grants::public_key(state)),
        Endpoint::RequestAccess => {
            allow(principal, Action::RequestAccess)?;
            grants::request(state, principal, &body).await
        }
        Endpoint::ReadAccessRequest(id) => {
            allow(principal, Action::HandleAccessRequest)?;
            grants::read(state, principal, id).await
        }
        Endpoint::DecideAccessRequest(id, decision) => {
            allow(principal, Action::HandleAccessRequest)?;
            grants::decide(state, principal, id, decision).await
        }
        Endpoint::RequestAdminRecovery(id) => {
            allow(principal, Action::AdminRecovery)?;
            grants::request_recovery(state, principal, id, &body).await
        }
        Endpoint::ApproveAdminRecovery(id) => {
            allow(principal, Action::AdminRecovery)?;
            grants::approve_recovery(state, principal, id).await
        }
        Endpoint::CancelAdminRecovery(id) => {
            allow(principal, Action::CancelAdminRecovery)?;
            grants::cancel_recovery(state, principal, id).await
        }
        Endpoint::MintToken => tokens::mint(state, principal, &body).await,
        Endpoint::ListTokens => {
            allow(principal, Action::ManageTokens)?;
            tokens::list(state, principal).await
        }
        Endpoint::RevokeToken(id) => {
            allow(principal, Action::ManageTokens)?;
            tokens::revoke(state, principal, id).await
        }
        Endpoint::ApproveToken(id) => {
            allow(principal, Action::ApproveOperator)?;
            tokens::approve(state, principal, id).await
        }
        Endpoint::AccessLog(id) => {
            allow(principal, Action::ReadAuditTrail(&id))?;
            grants::access_log(state, principal, id).await
        }
        Endpoint::AuditProof(id) => {
            allow(principal, Action::ReadAuditTrail(&id))?;
            grants::audit_proof(state, principal, id, query).await
        }
        Endpoint::Health | Endpoint::ImportTenant => {
            unreachable!("answered before the body is read")
        }
        Endpoint::ExportTenant(id) => {
            allow(principal, Action::ExportTenant(&id))?;
            known_tenant(&storage, &id)?;
            audit(
                state,
                Event::new("tenant.exported", grants::actor(principal)).tenant(&id),
            )
            .await?;
            backups::export(state, id, query).await
        }
        Endpoint::StartBackup(id) => {
            allow(principal, Action::Backups(&id))?;
            known_tenant(&storage, &id)?;
            audit(
                state,
                Event::new("backup.started", grants::actor(principal)).tenant(&id),
            )
            .await?;
            backups::start(state, id).await
        }
        Endpoint::ListBackups(id) => {
            allow(principal, Action::Backups(&id))?;
            backups::list(state, id).await
        }
        Endpoint::ReadBackup(id, backup) => {
            allow(principal, Action::Backups(&id))?;
            backups::read(state, id, backup).await
        }
        Endpoint::Copies(id) => {
            allow(principal, Action::ReadCopies(&id))?;
            backups::copies(state, id).await
        }
        Endpoint::ListRegions => {
            allow(principal, Action::ReadRegions)?;
            backups::regions(state).await
        }
        Endpoint::RegionTenants(region) => {
            allow(principal, Action::ReadRegions)?;
            backups::region_tenants(state, region).await
        }
        Endpoint::SetBackupSchedule(id) => {
            allow(principal, Action::Backups(&id))?;
            let schedule: crate::backup::Schedule = parse_json(&body)?;
            if schedule.interval_hours > 24 * 366 {
                return Err(ApiError::Unprocessable(
                    "interval_hours must be at most a year".into(),
                ));
            }
            known_tenant(&storage, &id)?;
            let saved = schedule.clone();
            blocking(move || {
                storage
                    .catalog
                    .put_json(crate::backup::SCHEDULES_TREE, id.as_str(), &saved)
            })
            .await??;
            Ok(json_response(StatusCode::OK, &json!(schedule)))
        }
        Endpoint::UpgradeTenant(id) => {
            allow(principal, Action::UpgradeTenant(&id))?;
            let request: UpgradeRequest = parse_json(&body)?;
            let tenant = known_tenant(&storage, &id)?;
            audit(
                state,
                Event::new("tenant.upgraded", grants::actor(principal))
                    .tenant(&id)
                    .detail("schema_version", request.schema_version),
            )
            .await?;
            let inner = state.clone();
            let report = blocking(move || {
                crate::service::upgrade::upgrade(
                    &inner.storage,
                    &inner.schemas,
                    &inner.backups,
                    &tenant,
                    request.schema_version,
                )
            })
            .await?
            .map_err(|e| match e {
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
            })?;
            tracing::info!(
                from = report.from_version,
                to = report.to_version,
                records = report.records,
                "tenant upgraded"
            );
            let tenant = known_tenant(&state.storage, &id)?;
            let mut body = tenant_json(&tenant);
            body["upgrade"] = json!(report);
            Ok(json_response(StatusCode::OK, &body))
        }
        Endpoint::RestoreBackup(id, backup) => {
            allow(principal, Action::RestoreBackup(&id))?;
            backups::restore(state, principal, id, backup, &body).await
        }
        Endpoint::CreateTenant => {
            allow(principal, Action::CreateTenant)?;
            let request: CreateTenantRequest = parse_json(&body)?;
            let mut new = checked_new_tenant(state, request)?;
            let id = TenantId::generate().map_err(ApiError::internal)?;
            new.id = Some(id.clone());
            audit(
                state,
                Event::new("tenant.created", grants::actor(principal))
                    .tenant(&id)
                    .detail("schema", new.schema.as_str())
                    .detail("schema_version", new.schema_version)
                    .detail("region", new.region.as_str()),
            )
            .await?;
            let (tenant, admin_token) =
                blocking(move || lifecycle::create(&storage, new)).await??;
            tracing::info!(tenant_id = %tenant.id, "tenant created");
            let mut body = tenant_json(&tenant);
            body["admin_token"] = Value::from(admin_token);
            Ok(json_response(StatusCode::CREATED, &body))
        }
        Endpoint::ListTenants => {
            allow(principal, Action::ListTenants)?;
            let tenants: Vec<Value> = storage.catalog.tenants().iter().map(tenant_json).collect();
            Ok(json_response(
                StatusCode::OK,
                &json!({ "tenants": tenants }),
            ))
        }
        Endpoint::ReadTenant(id) => {
            allow(principal, Action::ReadTenant(&id))?;
            let tenant = known_tenant(&storage, &id)?;
            Ok(json_response(StatusCode::OK, &tenant_json(&tenant)))
        }
        Endpoint::DeactivateTenant(id) => {
            allow(principal, Action::DeactivateTenant(&id))?;
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
        Endpoint::ReactivateTenant(id) => {
            allow(principal, Action::ReactivateTenant(&id))?;
            known_tenant(&storage, &id)?;
            audit(
                state,
                Event::new("tenant.reactivated", grants::actor(principal)).tenant(&id),
            )
            .await?;
            let tenant = blocking(move || lifecycle::reactivate(&storage, &id)).await??;
            tracing::info!("tenant reactivated");
            Ok(json_response(StatusCode::OK, &tenant_json(&tenant)))
        }
        Endpoint::MoveTenant(..) => unreachable!("answered before dispatch"),
        Endpoint::PurgeTenant(id) => {
            allow(principal, Action::PurgeTenant(&id))?;
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
            let log = state.audit.clone();
            let (tenant, erasing, copies) = blocking(move || -> Result<_, ApiError> {
                let tenant = if existing.state == crate::storage::TenantState::Destroyed {
                    if !request.erase_backups {
                        return Err(ApiError::Gone("tenant is already destroyed".into()));
                    }
                    existing
                } else {
                    lifecycle::destroy(&storage, &id)?
                };
                let erasing = if request.erase_backups {
                    Some(replication.erase_tenant(&storage, &id)?)
                } else {
                    None
                };
                // The whole database goes: every copy staff restored of it too.
                let copies = lifecycle::destroy_staff_copies(&storage, &log, &id);
                Ok((tenant, erasing, copies))
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
            body["copies_destroyed"] =
                json!(copies.iter().map(TenantId::as_str).collect::<Vec<_>>());
            Ok(json_response(StatusCode::OK, &body))
        }
        Endpoint::CreateRecord(id, collection) => {
            allow(principal, Action::WriteRecords(&id))?;
            let record: Value = parse_json(&body)?;
            let state = state.clone();
            let principal = principal.clone();
            let record_id = blocking(move || {
                let door = open_tenant(&state, &principal, &id)?;
                door.insert(&collection, &record).map_err(ApiError::from)
            })
            .await??;
            Ok(json_response(
                StatusCode::CREATED,
                &json!({ "id": record_id.as_str() }),
            ))
        }
        Endpoint::ReadRecord(id, collection, record_id) => {
            allow(principal, Action::ReadRecords(&id))?;
            let state = state.clone();
            let principal = principal.clone();
            let record = blocking(move || {
                let door = open_tenant(&state, &principal, &id)?;
                door.get(&collection, &record_id).map_err(ApiError::from)
            })
            .await??;
            Ok(json_response(StatusCode::OK, &record_json(record)))
        }
        Endpoint::ReplaceRecord(id, collection, record_id) => {
            allow(principal, Action::WriteRecords(&id))?;
            let record: Value = parse_json(&body)?;
            let state = state.clone();
            let principal = principal.clone();
            let stored = blocking(move || {
                let door = open_tenant(&state, &principal, &id)?;
                door.replace(&collection, &record_id, &record)?;
                door.get(&collection, &record_id).map_err(ApiError::from)
            })
            .await??;
            Ok(json_response(StatusCode::OK, &record_json(stored)))
        }
        Endpoint::DeleteRecord(id, collection, record_id) => {
            allow(principal, Action::WriteRecords(&id))?;
            let state = state.clone();
            let principal = principal.clone();
            blocking(move || {
                let door = open_tenant(&state, &principal, &id)?;
                door.delete(&collection, &record_id).map_err(ApiError::from)
            })
            .await??;
            Ok(empty_response(StatusCode::NO_CONTENT))
        }
        Endpoint::ListRecords(id, collection) => {
            allow(principal, Action::ReadRecords(&id))?;
            let listing = ListQuery::parse(query)?;
            let state = state.clone();
            let principal = principal.clone();
            blocking(move || {
                let door = open_tenant(&state, &principal, &id)?;
                let (records, next) = match &listing.filter {
                    Some((field, value)) => {
                        (door.find(&collection, field, value, listing.limit)?, None)
                    }
                    None => {
                        let mut page =
                            door.list(&collection, listing.after.as_ref(), listing.limit + 1)?;
                        let more = page.len() > listing.limit;
                        page.truncate(listing.limit);
                        let next = more
                            .then(|| page.last().map(|(id, _)| id.to_string()))
                            .flatten();
                        (page, next)
                    }
                };
                let records: Vec<Value> = records.into_iter().map(record_json).collect();
                Ok(json_response(
                    StatusCode::OK,
                    &json!({"records": records, "next": next}),
                ))
            })
            .await?
        }
        Endpoint::RotateMasterKey => {
            allow(principal, Action::RotateMasterKey)?;
            let source = state.config.key_source.clone();
            audit(state, Event::new("keys.rotated", grants::actor(principal))).await?;
            let report = blocking(move || {
                crate::service::key_rotation::rotate(&storage, &source, |_, _| {})
            })
            .await?
            .map_err(|e| ApiError::Conflict(format!("{e:#}")))?;
            tracing::info!(new_kek_id = %report.new_kek_id, rewrapped = report.rewrapped, "master key rotated");
            Ok(json_response(StatusCode::OK, &json!(report)))
        }
    }
}

pub(crate) fn known_tenant(storage: &Storage, id: &TenantId) -> Result<TenantRecord, ApiError> {
    storage
        .catalog
        .tenant(id)
        .ok_or_else(|| ApiError::NotFound("unknown tenant".into()))
}

fn open_tenant(
    state: &AppState,
    principal: &Principal,
    id: &TenantId,
) -> Result<access::TenantAccess, ApiError> {
    let tenant = known_tenant(&state.storage, id)?;
    Ok(access::open(
        &state.storage,
        &state.schemas,
        principal,
        &tenant,
    )?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTenantRequest {
    name: String,
    region: String,
    schema: String,
    #[serde(default)]
    schema_version: Option<u32>,
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

pub(crate) fn checked_name(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
        return Err(ApiError::Unprocessable(
            "name must be 1 to 200 printable characters".into(),
        ));
    }
    Ok(name.to_string())
}

struct ListQuery {
    limit: usize,
    after: Option<RecordId>,
    filter: Option<(String, String)>,
}

impl ListQuery {
    const DEFAULT_LIMIT: usize = 100;
    const MAX_LIMIT: usize = 1000;

    fn parse(query: Vec<(String, String)>) -> Result<ListQuery, ApiError> {
        let mut listing = ListQuery {
            limit: Self::DEFAULT_LIMIT,
            after: None,
            filter: None,
        };
        for (key, value) in query {
            match key.as_str() {
                "limit" => {
                    listing.limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=Self::MAX_LIMIT).contains(n))
                        .ok_or_else(|| {
                            ApiError::BadRequest(format!("limit must be 1 to {}", Self::MAX_LIMIT))
                        })?
                }
                "after" => {
                    listing.after = Some(RecordId::parse(&value).ok_or_else(|| {
                        ApiError::BadRequest("after must be a record id from \"next\"".into())
                    })?)
                }
                _ if listing.filter.is_some() => {
                    return Err(ApiError::BadRequest(
                        "look up by one field at a time".into(),
                    ))
                }
                _ => listing.filter = Some((key, value)),
            }
        }
        if listing.filter.is_some() && listing.after.is_some() {
            return Err(ApiError::BadRequest(
                "after pages full listings, not lookups".into(),
            ));
        }
        Ok(listing)
    }
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

fn record_json((id, fields): Record) -> Value {
    let mut object = Map::with_capacity(fields.len() + 1);
    object.insert("id".into(), Value::from(id.to_string()));
    object.extend(fields);
    Value::Object(object)
}

/// Runs blocking work on the blocking pool, inside the current span. The work
/// runs to completion even if the request's future is dropped.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(work))
        .await
        .map_err(ApiError::internal)
}

async fn read_body(request: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    match Limited::new(request.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::PayloadTooLarge(limit))
        }
        Err(error) => Err(ApiError::BadRequest(format!("read request body: {error}"))),
    }
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::BadRequest("request body must be JSON".into()));
    }
    serde_json::from_slice(body).map_err(|error| match error.classify() {
        serde_json::error::Category::Data => {
            ApiError::Unprocessable(format!("invalid request: {error}"))
        }
        _ => ApiError::BadRequest(format!("malformed JSON: {error}")),
    })
}

pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let bytes = Bytes::from(serde_json::to_vec(body).expect("JSON values always serialise"));
    let mut response = Response::new(Full::new(bytes).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn empty_response(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response
}
