//! `/v1/tenants/{id}/webhooks…`: a tenant's admin manages its webhook
//! endpoints and reads their delivery logs (`service::webhooks`).

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

/// `POST /v1/tenants/{id}/webhooks` → 201 with the signing secret (shown once).
pub async fn create(
    state: &Arc<AppState>,
    principal: &Principal,
    id: TenantId,
    body: &Bytes,
) -> Result<Response<Body>, ApiError> {
    let hooks = service(state)?;
    let request: NewWebhook = parse_json(body)?;
    known_tenant(&state.storage, &id)?;
    // The URL is checked (and resolved) before anything is recorded.
    let settings = hooks.settings;
    let url = request.url.clone();
    blocking(move || crate::service::webhooks::check_url(&url, &settings))
        .await?
        .map_err(ApiError::Unprocessable)?;
    audit(
        state,
        Event::new("webhook.created", grants::actor(principal))
            .tenant(&id)
            .detail("url", request.url.as_str()),
    )
    .await?;
    let by = principal.person();
    let (endpoint, secret) =
        blocking(move || hooks.create(&id, &request.url, request.events, &by)).await??;
    let mut body = endpoint_json(&endpoint);
    body["secret"] = Value::from(secret.as_str());
    Ok(json_response(StatusCode::CREATED, &body))
}

pub async fn list(state: &Arc<AppState>, id: TenantId) -> Result<Response<Body>, ApiError> {
    let hooks = service(state)?;
    known_tenant(&state.storage, &id)?;
    let all = blocking(move || hooks.list(&id)).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"webhooks": all.iter().map(endpoint_json).collect::<Vec<_>>()}),
    ))
}

pub async fn delete(
    state: &Arc<AppState>,
    principal: &Principal,
    id: TenantId,
    webhook: String,
) -> Result<Response<Body>, ApiError> {
    let hooks = service(state)?;
    known_tenant(&state.storage, &id)?;
    let (check, tenant, wid) = (hooks.clone(), id.clone(), webhook.clone());
    blocking(move || check.get(&tenant, &wid)).await??;
    audit(
        state,
        Event::new("webhook.deleted", grants::actor(principal))
            .tenant(&id)
            .detail("webhook", webhook.as_str()),
    )
    .await?;
    blocking(move || hooks.delete(&id, &webhook)).await??;
    Ok(super::request::empty_response(StatusCode::NO_CONTENT))
}

pub async fn test(
    state: &Arc<AppState>,
    id: TenantId,
    webhook: String,
) -> Result<Response<Body>, ApiError> {
    let hooks = service(state)?;
    known_tenant(&state.storage, &id)?;
    let delivery = blocking(move || hooks.test(&id, &webhook)).await??;
    Ok(json_response(
        StatusCode::ACCEPTED,
        &delivery_json(&delivery),
    ))
}

pub async fn deliveries(
    state: &Arc<AppState>,
    id: TenantId,
    webhook: String,
) -> Result<Response<Body>, ApiError> {
    let hooks = service(state)?;
    known_tenant(&state.storage, &id)?;
    let all = blocking(move || hooks.deliveries(&id, &webhook)).await??;
    Ok(json_response(
        StatusCode::OK,
        &json!({"deliveries": all.iter().map(delivery_json).collect::<Vec<_>>()}),
    ))
}
