//! The control API: the only user of hyper. HTTP/1.1, JSON bodies, bearer tokens.
//!
//! Each request is parsed into an [`Endpoint`], its caller authenticated, the
//! action checked against `auth`'s policy table, and only then dispatched. Errors
//! become `{"error": ...}` in one exhaustive status mapping ([`ApiError::status`]).
//! Blocking work (sled, file I/O) runs through [`blocking`], which keeps the span
//! and runs to completion even if the client hangs up.
//!
//! Rooms: `server` (the loop, timeouts, redirects), `routes` (request line →
//! `Endpoint`), `error` (the status mapping), `request` (bodies and JSON), and
//! one handler file per area: `tenants`, `records`, `backups` (exports,
//! backups, restores, copies, regions), `grants` (access requests, recoveries,
//! the access log and proofs), `tokens`, `moves`. This file authenticates,
//! audits requests made through a grant, and dispatches.

mod backups;
mod continuous;
mod customer_keys;
mod data_keys;
mod error;
mod grants;
mod limits;
mod moves;
mod panel;
mod records;
mod request;
mod routes;
mod server;
mod sessions;
mod stream;
mod tenants;
pub mod tls;
mod tokens;
mod webhooks;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::header::AUTHORIZATION;
use hyper::{Request, Response, StatusCode};
use serde_json::json;

pub use error::ApiError;
use request::read_body;
pub(crate) use request::{blocking, checked_name, empty_response, json_response, parse_json};
pub use routes::{Endpoint, MoveStep};
pub use server::{serve, serve_metrics};
pub(crate) use tenants::{copy_json, tenant_json};

use crate::audit::{AuditLog, Event};
use crate::auth::{self, Action, Principal, Role};
use crate::config::Config;
use crate::ids::TenantId;
use crate::schema::Registry;
use crate::service::Backups;
use crate::storage::{Storage, TenantRecord};

pub type Body = BoxBody<Bytes, std::io::Error>;

/// What every handler shares.
pub struct AppState {
    pub storage: Arc<Storage>,
    pub schemas: Registry,
    pub config: Config,
    pub backups: Arc<Backups>,
    pub audit: Arc<AuditLog>,
    /// Decisions on access requests, one at a time (read, decide, store).
    grant_lock: tokio::sync::Mutex<()>,
    /// Bounds on long jobs, per tenant and for the host.
    pub(crate) jobs: Arc<limits::JobSlots>,
    /// Bytes of request bodies held in memory, host-wide.
    pub(crate) bodies: limits::BodyBudget,
    next_request: AtomicU64,
    /// Continuous backup, when the host keeps change logs.
    pub changelog: Option<Arc<crate::service::changelog::ChangeLog>>,
    /// Data-key rotations, when the host runs them (`coffer serve` does).
    pub data_keys: Option<Arc<crate::service::data_keys::DataKeys>>,
    /// Tenants' own keys (customer-managed keys), when the host has them.
    pub customer_keys: Option<Arc<crate::service::customer_keys::CustomerKeys>>,
    /// Webhook endpoints and deliveries, when the host sends them.
    pub webhooks: Option<Arc<crate::service::webhooks::Webhooks>>,
    /// Control-panel sessions (in memory).
    pub(crate) sessions: sessions::Sessions,
}

impl AppState {
    pub fn new(
        storage: Arc<Storage>,
        schemas: Registry,
        config: Config,
        backups: Arc<Backups>,
        audit: Arc<AuditLog>,
    ) -> Self {
        let jobs = limits::JobSlots::new(config.limits.clone());
        let bodies = limits::BodyBudget::new(config.limits.buffered_body_bytes);
        AppState {
            storage,
            schemas,
            config,
            backups,
            audit,
            jobs,
            bodies,
            grant_lock: tokio::sync::Mutex::new(()),
            next_request: AtomicU64::new(1),
            changelog: None,
            data_keys: None,
            customer_keys: None,
            webhooks: None,
            sessions: sessions::Sessions::default(),
        }
    }

    pub fn with_webhooks(mut self, webhooks: Arc<crate::service::webhooks::Webhooks>) -> Self {
        self.webhooks = Some(webhooks);
        self
    }

    pub fn with_customer_keys(
        mut self,
        keys: Arc<crate::service::customer_keys::CustomerKeys>,
    ) -> Self {
        self.customer_keys = Some(keys);
        self
    }

    pub fn with_data_keys(mut self, data_keys: Arc<crate::service::data_keys::DataKeys>) -> Self {
        self.data_keys = Some(data_keys);
        self
    }

    pub fn with_changelog(
        mut self,
        changelog: Option<Arc<crate::service::changelog::ChangeLog>>,
    ) -> Self {
        self.changelog = changelog;
        self
    }
}

/// Longest wait for an audit entry to become durable before the audited
/// action is refused (503): fail closed, never hang.
const AUDIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Records an audit event durably from a blocking thread, or refuses with
/// 503; the receipt proves the entry is durable.
pub(crate) fn audit_now(state: &AppState, event: Event) -> Result<crate::audit::Receipt, ApiError> {
    let kind = event.kind;
    state.audit.record(event).map_err(|error| {
        tracing::error!(%error, event = kind, "audit entry not durable: action refused");
        ApiError::Unavailable(format!("{error}; the action was not performed"))
    })
}

/// Records an audit event durably, or refuses with 503.
pub(crate) async fn audit(state: &AppState, event: Event) -> Result<u64, ApiError> {
    let log = state.audit.clone();
    let kind = event.kind;
    match tokio::time::timeout(
        AUDIT_TIMEOUT,
        crate::tasks::blocking(move || log.append(event)),
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

async fn route(
    state: Arc<AppState>,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let endpoint = Endpoint::parse(request.method(), request.uri().path())?;
    if let Some(tenant) = endpoint.tenant() {
        tracing::Span::current().record("tenant_id", tracing::field::display(tenant));
    }
    if endpoint == Endpoint::Health {
        return Ok(health(&state));
    }
    if endpoint == Endpoint::AuditPublicKey {
        // Public by design: anyone checking a checkpoint needs it.
        return Ok(grants::public_key(&state));
    }
    if let Endpoint::Panel(file) = &endpoint {
        return panel::serve(file);
    }
    // A declared body beyond the limit is refused before anything is read
    // or done.
    let limit = if endpoint == Endpoint::ImportTenant {
        state.config.max_import_bytes
    } else {
        state.config.max_body_bytes as u64
    };
    let declared = request
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .map(|v| v.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()));
    match declared {
        Some(None) => {
            return Err(ApiError::BadRequest(
                "Content-Length is not a number".into(),
            ))
        }
        Some(Some(length)) if length > limit => return Err(ApiError::PayloadTooLarge(limit)),
        _ => {}
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
    if endpoint == Endpoint::CreateSession {
        // JSON only: a form on another site cannot send it (no login CSRF).
        let json = request
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("application/json"));
        if !json {
            return Err(ApiError::BadRequest(
                "POST /v1/sessions takes application/json".into(),
            ));
        }
        let (body, _held) = tokio::time::timeout(
            state.config.request_timeout,
            read_body(request, state.config.max_body_bytes, &state.bodies),
        )
        .await
        .map_err(|_| {
            ApiError::RequestTimeout("the request body did not arrive in time".into())
        })??;
        return sessions::create(&state, &body).await;
    }
    // A bearer token, or else a control-panel session's cookie (whose
    // changes must carry its CSRF token).
    let session = match auth_header {
        Some(_) => None,
        None => state.sessions.of_request(request.headers())?,
    };
    let mut principal = match &session {
        Some(current) => {
            current.check_csrf(request.method(), request.headers())?;
            current.principal(&state).await?
        }
        None => {
            let storage = state.storage.clone();
            blocking(move || auth::authenticate(&storage, auth_header.as_deref())).await??
        }
    };
    if matches!(endpoint, Endpoint::ReadSession | Endpoint::EndSession) {
        let current = session.ok_or_else(|| {
            ApiError::Unauthorized("no session: sign in through the control panel".into())
        })?;
        return match endpoint {
            Endpoint::ReadSession => Ok(sessions::read(&principal, &current)),
            _ => sessions::end(&state, &principal, &current).await,
        };
    }
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
    // State changes record their outcome after the action: a refused or
    // failed one shows as such in the tenant's proof, never as done.
    let change = endpoint.state_change();
    let concerns = endpoint.tenant().cloned();
    let who = principal.clone();
    let inner = state.clone();
    let result: Result<Response<Body>, ApiError> = async move {
        let state = inner;
        if let routes::Check::Action(action) = endpoint.check() {
            allow(&principal, action)?;
        }
        let query = routes::parse_query(request.uri().query().unwrap_or(""))?;
        if endpoint == Endpoint::ImportTenant {
            // An archive: streamed to the importer, never held whole in memory.
            audit(
                &state,
                Event::new("tenant.imported", grants::actor(&principal)),
            )
            .await?;
            return backups::import(&state, &principal, query, request.into_body()).await;
        }
        // Bodies arrive within the normal request timeout on every endpoint; long
        // jobs run only once the body is in.
        let (body, _held) = tokio::time::timeout(
            state.config.request_timeout,
            read_body(request, state.config.max_body_bytes, &state.bodies),
        )
        .await
        .map_err(|_| {
            ApiError::RequestTimeout(format!(
                "the request body did not arrive within {} s",
                state.config.request_timeout.as_secs()
            ))
        })??;
        if let Endpoint::MoveTenant(id, step) = endpoint {
            return moves::step(&state, &principal, id, step, &body, bearer).await;
        }
        dispatch(&state, &principal, endpoint, query, body).await
    }
    .await;
    if let Some(action) = change {
        record_outcome(&state, &who, action, concerns.as_ref(), &result).await;
    }
    result
}

/// `GET /healthz`: `ok`, or `degraded` with the reasons — 503 when the
/// audit log refuses appends (no audited action can happen), 200 when only
/// long jobs are saturated (records are still served).
fn health(state: &AppState) -> Response<Body> {
    let mut reasons = Vec::new();
    let mut status = StatusCode::OK;
    if let Some(error) = state.audit.failure() {
        reasons.push(format!("the audit log refuses appends: {error}"));
        status = StatusCode::SERVICE_UNAVAILABLE;
    }
    if state.jobs.saturated() {
        reasons.push("every long-job slot is taken: exports, backups and restores get 429".into());
    }
    let mut body = json!({
        "status": if reasons.is_empty() { "ok" } else { "degraded" },
        "region": state.config.region.as_str(),
    });
    if !reasons.is_empty() {
        body["reasons"] = json!(reasons);
    }
    json_response(status, &body)
}

/// The outcome entry of a state change: `done`, `refused` (4xx) or
/// `failed` (5xx), with the status. Written after the action; when it cannot
/// be written the action stands (its own entry was durable before it ran)
/// and the failure is logged.
async fn record_outcome(
    state: &Arc<AppState>,
    principal: &Principal,
    action: &'static str,
    tenant: Option<&crate::ids::TenantId>,
    result: &Result<Response<Body>, ApiError>,
) {
    let status = match result {
        Ok(response) => response.status().as_u16(),
        Err(error) => error.status().as_u16(),
    };
    let outcome = match status {
        0..=399 => "done",
        400..=499 => "refused",
        _ => "failed",
    };
    let mut event = Event::new("action.outcome", grants::actor(principal))
        .detail("action", action)
        .detail("outcome", outcome)
        .detail("status", status);
    if let Some(tenant) = tenant {
        event = event.tenant(tenant);
    }
    if let Err(error) = audit(state, event).await {
        tracing::error!(%error, action, "could not record an action's outcome");
    }
}

fn allow(principal: &Principal, action: Action<'_>) -> Result<(), ApiError> {
    auth::authorize(principal, &action).map_err(|denied| ApiError::Forbidden(denied.0.into()))
}

/// The handler of each endpoint, its caller already checked (`Endpoint::check`).
/// Calls on records made through a grant write their own audit entries
/// (`records::run`): the data path's types ask for the receipts.
async fn dispatch(
    state: &Arc<AppState>,
    principal: &Principal,
    endpoint: Endpoint,
    query: Vec<(String, String)>,
    body: Bytes,
) -> Result<Response<Body>, ApiError> {
    let storage = state.storage.clone();
    match endpoint {
        Endpoint::AuditPublicKey => Ok(grants::public_key(state)),
        Endpoint::RequestAccess => grants::request(state, principal, &body).await,
        Endpoint::ReadAccessRequest(id) => grants::read(state, principal, id).await,
        Endpoint::DecideAccessRequest(id, decision) => {
            grants::decide(state, principal, id, decision).await
        }
        Endpoint::RequestAdminRecovery(id) => {
            grants::request_recovery(state, principal, id, &body).await
        }
        Endpoint::ApproveAdminRecovery(id) => grants::approve_recovery(state, principal, id).await,
        Endpoint::CancelAdminRecovery(id) => grants::cancel_recovery(state, principal, id).await,
        Endpoint::MintToken => tokens::mint(state, principal, &body).await,
        Endpoint::ListTokens => tokens::list(state, principal).await,
        Endpoint::RevokeToken(id) => tokens::revoke(state, principal, id).await,
        Endpoint::ApproveToken(id) => tokens::approve(state, principal, id).await,
        Endpoint::AccessLog(id) => grants::access_log(state, principal, id).await,
        Endpoint::AuditProof(id) => grants::audit_proof(state, principal, id, query).await,
        Endpoint::Health
        | Endpoint::ImportTenant
        | Endpoint::Panel(_)
        | Endpoint::CreateSession
        | Endpoint::ReadSession
        | Endpoint::EndSession => {
            unreachable!("answered before the body is read")
        }
        Endpoint::ExportTenant(id) => {
            known_tenant(&storage, &id)?;
            audit(
                state,
                Event::new("tenant.exported", grants::actor(principal)).tenant(&id),
            )
            .await?;
            backups::export(state, principal, id, query).await
        }
        Endpoint::StartBackup(id) => {
            known_tenant(&storage, &id)?;
            audit(
                state,
                Event::new("backup.started", grants::actor(principal)).tenant(&id),
            )
            .await?;
            backups::start(state, id).await
        }
        Endpoint::ListBackups(id) => backups::list(state, id).await,
        Endpoint::ReadBackup(id, backup) => backups::read(state, id, backup).await,
        Endpoint::Copies(id) => backups::copies(state, id).await,
        Endpoint::ListRegions => backups::regions(state).await,
        Endpoint::RegionTenants(region) => backups::region_tenants(state, region).await,
        Endpoint::ListDrills => backups::drills(state).await,
        Endpoint::PendingApprovals => grants::pending_approvals(state).await,
        Endpoint::SetBackupSchedule(id) => {
            tenants::set_backup_schedule(state, principal, id, body).await
        }
        Endpoint::UpgradeTenant(id) => tenants::upgrade(state, principal, id, body).await,
        Endpoint::RotateDataKey(id) => data_keys::rotate(state, principal, id).await,
        Endpoint::AttachKey(id) => customer_keys::attach(state, principal, id, &body).await,
        Endpoint::DetachKey(id) => customer_keys::detach(state, principal, id).await,
        Endpoint::CreateWebhook(id) => webhooks::create(state, principal, Some(id), &body).await,
        Endpoint::ListWebhooks(id) => webhooks::list(state, Some(id)).await,
        Endpoint::DeleteWebhook(id, w) => webhooks::delete(state, principal, Some(id), w).await,
        Endpoint::TestWebhook(id, w) => webhooks::test(state, Some(id), w).await,
        Endpoint::WebhookDeliveries(id, w) => webhooks::deliveries(state, Some(id), w).await,
        Endpoint::CreateHostWebhook => webhooks::create(state, principal, None, &body).await,
        Endpoint::ListHostWebhooks => webhooks::list(state, None).await,
        Endpoint::DeleteHostWebhook(w) => webhooks::delete(state, principal, None, w).await,
        Endpoint::TestHostWebhook(w) => webhooks::test(state, None, w).await,
        Endpoint::HostWebhookDeliveries(w) => webhooks::deliveries(state, None, w).await,
        Endpoint::ReadKeyRotation(id, rotation) => data_keys::read(state, id, rotation).await,
        Endpoint::SetDurability(id) => {
            continuous::set_durability(state, principal, id, &body).await
        }
        Endpoint::PointInTimeRestore(id) => continuous::restore(state, principal, id, &body).await,
        Endpoint::RestoreBackup(id, backup) => {
            backups::restore(state, principal, id, backup, &body).await
        }
        Endpoint::CreateTenant => tenants::create(state, principal, body).await,
        Endpoint::ListTenants => tenants::list(state).await,
        Endpoint::ReadTenant(id) => tenants::read(state, id).await,
        Endpoint::DeactivateTenant(id) => tenants::deactivate(state, principal, id).await,
        Endpoint::ReactivateTenant(id) => tenants::reactivate(state, principal, id).await,
        Endpoint::MoveTenant(..) => unreachable!("answered before dispatch"),
        Endpoint::PurgeTenant(id) => tenants::purge(state, principal, id, body).await,
        Endpoint::CreateRecord(id, collection) => {
            records::create(state, principal, id, collection, body).await
        }
        Endpoint::ReadRecord(id, collection, record_id) => {
            records::read(state, principal, id, collection, record_id).await
        }
        Endpoint::ReplaceRecord(id, collection, record_id) => {
            records::replace(state, principal, id, collection, record_id, body).await
        }
        Endpoint::DeleteRecord(id, collection, record_id) => {
            records::delete(state, principal, id, collection, record_id).await
        }
        Endpoint::ListRecords(id, collection) => {
            records::list(state, principal, id, collection, query).await
        }
        Endpoint::RotateMasterKey => {
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
