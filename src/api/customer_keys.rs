//! `PUT /v1/tenants/{id}/key` and `DELETE /v1/tenants/{id}/key`: a tenant's
//! own key (customer-managed keys, `service::customer_keys`).

use std::sync::Arc;

use bytes::Bytes;
use hyper::{Response, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use super::{audit, blocking, grants, json_response, known_tenant, parse_json};
use super::{ApiError, AppState, Body};
use crate::audit::Event;
use crate::auth::Principal;
use crate::ids::{unix_now, TenantId};
use crate::service::customer_keys::{CustomerKey, CustomerKeyError, CustomerKeys};
use crate::storage::KeyUnavailable;

fn service(state: &AppState) -> Result<Arc<CustomerKeys>, ApiError> {
    state
        .customer_keys
        .clone()
        .ok_or_else(|| ApiError::Unavailable("this host has no customer-managed keys".into()))
}

impl From<CustomerKeyError> for ApiError {
    fn from(e: CustomerKeyError) -> Self {
        match e {
            CustomerKeyError::BadRequest(why) => ApiError::Unprocessable(why),
            CustomerKeyError::Key(KeyUnavailable::Unreachable(why)) => ApiError::Unprocessable(
                format!("the key service did not answer: {why}; nothing was changed"),
            ),
            CustomerKeyError::Key(why) => {
                ApiError::Unprocessable(format!("{why}; nothing was changed"))
            }
            CustomerKeyError::Storage(inner) => ApiError::from(inner),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AttachKey {
    provider: String,
    address: String,
    mount: String,
    key: String,
    token: String,
}

impl AttachKey {
    fn into_parts(
        self,
        tenant: &TenantId,
        by: String,
    ) -> (CustomerKey, zeroize::Zeroizing<String>) {
        let key = CustomerKey {
            tenant: tenant.clone(),
            provider: self.provider,
            address: self.address,
            mount: self.mount,
            key: self.key,
            attached_at: unix_now(),
            attached_by: by,
        };
        (key, zeroize::Zeroizing::new(self.token))
    }
}

/// A tenant created with its own key (`POST /v1/tenants` with
/// `customer_key`): the key is tried before the tenant exists.
pub(super) async fn probe(
    state: &Arc<AppState>,
    tenant: &TenantId,
    request: &AttachKey,
) -> Result<(), ApiError> {
    let keys = service(state)?;
    let (key, token) = AttachKey {
        provider: request.provider.clone(),
        address: request.address.clone(),
        mount: request.mount.clone(),
        key: request.key.clone(),
        token: request.token.clone(),
    }
    .into_parts(tenant, String::new());
    blocking(move || keys.probe(&key, &token)).await??;
    Ok(())
}

/// Then attached once it exists.
pub(super) async fn attach_new(
    state: &Arc<AppState>,
    principal: &Principal,
    tenant: &TenantId,
    request: AttachKey,
) -> Result<(), ApiError> {
    let keys = service(state)?;
    let (key, token) = request.into_parts(tenant, principal.person());
    let (inner, id) = (keys.clone(), tenant.clone());
    blocking(move || inner.attach(&id, key, token)).await??;
    audit(
        state,
        Event::new("key.attached", grants::actor(principal))
            .tenant(tenant)
            .detail("because", "created with its own key"),
    )
    .await
    .map(|_| ())
}

/// `PUT /v1/tenants/{id}/key` → 200 with the tenant's key as shown (no token).
pub async fn attach(
    state: &Arc<AppState>,
    principal: &Principal,
    id: TenantId,
    body: &Bytes,
) -> Result<Response<Body>, ApiError> {
    let keys = service(state)?;
    let request: AttachKey = parse_json(body)?;
    known_tenant(&state.storage, &id)?;
    audit(
        state,
        Event::new("key.attach_requested", grants::actor(principal))
            .tenant(&id)
            .detail("provider", request.provider.as_str())
            .detail("address", request.address.as_str())
            .detail("key", request.key.as_str()),
    )
    .await?;
    let (key, token) = request.into_parts(&id, principal.person());
    let (inner, tenant) = (keys.clone(), id.clone());
    blocking(move || inner.attach(&tenant, key, token)).await??;
    audit(
        state,
        Event::new("key.attached", grants::actor(principal)).tenant(&id),
    )
    .await?;
    let shown = blocking(move || keys.describe(&id)).await?;
    Ok(json_response(StatusCode::OK, &shown))
}

/// `DELETE /v1/tenants/{id}/key` → 204: the master key alone again.
pub async fn detach(
    state: &Arc<AppState>,
    principal: &Principal,
    id: TenantId,
) -> Result<Response<Body>, ApiError> {
    let keys = service(state)?;
    known_tenant(&state.storage, &id)?;
    let (check, tenant) = (keys.clone(), id.clone());
    if blocking(move || check.attached(&tenant)).await?.is_none() {
        return Err(ApiError::NotFound(
            "the tenant has no key of its own attached".into(),
        ));
    }
    audit(
        state,
        Event::new("key.detached", grants::actor(principal)).tenant(&id),
    )
    .await?;
    blocking(move || keys.detach(&id)).await??;
    Ok(super::request::empty_response(StatusCode::NO_CONTENT))
}

/// The tenant's key as `GET /v1/tenants/{id}` and `/copies` show it.
pub async fn shown(state: &Arc<AppState>, id: &TenantId) -> Value {
    let Some(keys) = state.customer_keys.clone() else {
        return Value::Null;
    };
    let id = id.clone();
    blocking(move || keys.describe(&id))
        .await
        .unwrap_or(Value::Null)
}
