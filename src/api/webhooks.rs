//! `/v1/tenants/{id}/webhooks…`: a tenant's admin manages its webhook
//! endpoints and reads their delivery logs (`service::webhooks`);
//! `/v1/webhooks…`: operators do the same for the host's own endpoints
//! (every handler takes the owner: a tenant, or `None` for the host).

use std::sync::Arc;

use bytes::Bytes;
use hyper::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{audit, blocking, grants, json_response, known_tenant, parse_json};
use super::{ApiError, AppState, Body};
use crate::audit::Event;
use crate::auth::Principal;
use crate::ids::TenantId;
use crate::service::webhooks::{delivery_json, endpoint_json, WebhookError, Webhooks};

fn service(state: &AppState) -> Result<Arc<Webhooks>, ApiError> {
    state
        .webhooks
        .clone()
        .ok_or_else(|| ApiError::Unavailable("this host sends no webhooks".into()))
}

impl From<WebhookError> for ApiError {
    fn from(e: WebhookError) -> Self {
        match e {
            WebhookError::BadUrl(_) | WebhookError::UnknownEvent(_) => {
                ApiError::Unprocessable(e.to_string())
            }
            WebhookError::NotFound => ApiError::NotFound(e.to_string()),
            WebhookError::Storage(inner) => ApiError::from(inner),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewWebhook {
    url: String,
    #[serde(default)]
    events: Option<Vec<String>>,
}

/// The tenant must exist (no check for the host's own endpoints).
fn known_owner(state: &AppState, owner: Option<&TenantId>) -> Result<(), ApiError> {
    owner.map_or(Ok(()), |id| known_tenant(&state.storage, id).map(|_| ()))
}

fn event_for(kind: &'static str, principal: &Principal, owner: Option<&TenantId>) -> Event {
    let event = Event::new(kind, grants::actor(principal));
    match owner {
        Some(id) => event.tenant(id),
        None => event.detail("scope", "host"),
    }
}

/// `POST /v1/tenants/{id}/webhooks` (or `/v1/webhooks`) → 201 with the
/// signing secret (shown once).
pub async fn create(
    state: &Arc<AppState>,
    principal: &Principal,
    id: Option<TenantId>,
    body: &Bytes,
) -> Result<Response<Body>, ApiError> {
    let hooks = service(state)?;
    let request: NewWebhook = parse_json(body)?;
    known_owner(state, id.as_ref())?;
    // The URL is checked (and resolved) before anything is recorded.
    let settings = hooks.settings;
    let url = request.url.clone();
    blocking(move || crate::service::webhooks::check_url(&url, &settings))
        .await?
        .map_err(ApiError::Unprocessable)?;
    audit(
        state,
        event_for("webhook.created", principal, id.as_ref()).detail("url", request.url.as_str()),
    )
    .await?;
    let by = principal.person();
    let (endpoint, secret) =
        blocking(move || hooks.create(id.as_ref(), &request.url, request.events, &by)).await??;
    let mut body = endpoint_json(&endpoint);
    body["secret"] = Value::from(secret.as_str());
    Ok(json_response(StatusCode::CREATED, &body))
}

pub async fn list(state: &Arc<AppState>, id: Option<TenantId>) -> Result<Response<Body>, ApiError> {
    let hooks = service(state)?;
    known_owner(state, id.as_ref())?;
    let all = blocking(move || hooks.list(id.as_ref())).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"webhooks": all.iter().map(endpoint_json).collect::<Vec<_>>()}),
    ))
}

pub async fn delete(
    state: &Arc<AppState>,
    principal: &Principal,
    id: Option<TenantId>,
    webhook: String,
) -> Result<Response<Body>, ApiError> {
    let hooks = service(state)?;
    known_owner(state, id.as_ref())?;
    let (check, tenant, wid) = (hooks.clone(), id.clone(), webhook.clone());
    blocking(move || check.get(tenant.as_ref(), &wid)).await??;
    audit(
        state,
        event_for("webhook.deleted", principal, id.as_ref()).detail("webhook", webhook.as_str()),
    )
    .await?;
    blocking(move || hooks.delete(id.as_ref(), &webhook)).await??;
    Ok(super::request::empty_response(StatusCode::NO_CONTENT))
}

pub async fn test(
    state: &Arc<AppState>,
    id: Option<TenantId>,
    webhook: String,
) -> Result<Response<Body>, ApiError> {
    let hooks = service(state)?;
    known_owner(state, id.as_ref())?;
    let delivery = blocking(move || hooks.test(id.as_ref(), &webhook)).await??;
    Ok(json_response(
        StatusCode::ACCEPTED,
        &delivery_json(&delivery),
    ))
}

pub async fn deliveries(
    state: &Arc<AppState>,
    id: Option<TenantId>,
    webhook: String,
) -> Result<Response<Body>, ApiError> {
    let hooks = service(state)?;
    known_owner(state, id.as_ref())?;
    let all = blocking(move || hooks.deliveries(id.as_ref(), &webhook)).await??;
    Ok(json_response(
        StatusCode::OK,
        &json!({"deliveries": all.iter().map(delivery_json).collect::<Vec<_>>()}),
    ))
}
