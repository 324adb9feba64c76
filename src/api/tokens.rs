//! Handlers for tokens: mint, list, revoke, and the second operator's
//! approval of a new operator identity. The rules live in `tokens`; each
//! action is audited after its rules passed and before it takes effect.

use std::sync::Arc;

use hyper::{Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::grants::actor;
use super::{blocking, checked_name, json_response, parse_json, ApiError, AppState, Body};
use crate::audit::Event;
use crate::auth::{self, Action, Principal, Role};
use crate::ids::{rfc3339, unix_now, TokenId};
use crate::tokens::{self, TokenError};

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        let message = e.to_string();
        match e {
            TokenError::Denied(_) => ApiError::Forbidden(message),
            TokenError::Conflict(_) => ApiError::Conflict(message),
            TokenError::NotFound => ApiError::NotFound(message),
            TokenError::Invalid(_) => ApiError::Unprocessable(message),
            TokenError::Unaudited(_) => ApiError::Unavailable(message),
            TokenError::Storage(inner) => ApiError::from(inner),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MintTokenRequest {
    role: String,
    name: String,
    /// Seconds until the token stops working.
    #[serde(default)]
    expires_in: Option<u64>,
}

/// The longest `expires_in` accepted: ten years.
const MAX_EXPIRES_IN: u64 = 10 * 366 * 86_400;

/// Appends `event` from a blocking thread: no durable entry, no action.
fn audited(state: &AppState, event: Event) -> Result<(), TokenError> {
    state.audit.append(event).map(|_| ()).map_err(|error| {
        tracing::error!(%error, "audit entry not durable: action refused");
        TokenError::Unaudited(error.to_string())
    })
}

/// `POST /v1/tokens` `{"role","name","expires_in"?}`.
pub async fn mint(
    state: &Arc<AppState>,
    principal: &Principal,
    body: &bytes::Bytes,
) -> Result<Response<Body>, ApiError> {
    let request: MintTokenRequest = parse_json(body)?;
    let role = match request.role.as_str() {
        "operator" => Role::Operator,
        "support" => Role::Support,
        "backup-agent" => Role::BackupAgent,
        "tenant-admin" => Role::TenantAdmin,
        other => {
            return Err(ApiError::Unprocessable(format!(
                "unknown role {other:?}: use support, backup-agent, operator or tenant-admin"
            )))
        }
    };
    auth::authorize(principal, &Action::MintToken(role))
        .map_err(|denied| ApiError::Forbidden(denied.0.into()))?;
    let name = checked_name(&request.name)?;
    let expires_at = match request.expires_in {
        None => None,
        Some(seconds) if (1..=MAX_EXPIRES_IN).contains(&seconds) => Some(unix_now() + seconds),
        Some(_) => {
            return Err(ApiError::Unprocessable(format!(
                "expires_in is seconds, 1 to {MAX_EXPIRES_IN}"
            )))
        }
    };
    let (inner, by) = (state.clone(), principal.clone());
    let minted = blocking(move || {
        tokens::mint(
            &inner.storage,
            &by,
            role,
            &name,
            expires_at,
            |token, awaiting| {
                let mut event = Event::new("token.minted", actor(&by))
                    .detail("token", token.id.as_str())
                    .detail("role", role.as_str())
                    .detail("awaiting_approval", awaiting);
                if let Some(identity) = &token.identity {
                    event = event.detail("identity", identity.as_str());
                }
                if let Some(tenant) = &token.tenant {
                    event = event.tenant(tenant);
                }
                audited(&inner, event)
            },
        )
    })
    .await??;
    let token = &minted.token;
    tracing::info!(token_id = %token.id, role = role.as_str(), awaiting_approval = minted.awaiting_approval, "token minted");
    let mut body = json!({
        "id": token.id.as_str(),
        "token": minted.secret,
        "role": role.as_str(),
        "name": token.name,
        "identity": token.identity,
        "expires_at": token.expires_at.map(rfc3339),
        "state": if minted.awaiting_approval { "pending-approval" } else { "active" },
    });
    if minted.awaiting_approval {
        body["note"] = json!(
            "a new operator identity: this token works once a different operator approves it (POST /v1/tokens/{id}/approve)"
        );
    }
    Ok(json_response(StatusCode::CREATED, &body))
}

/// `GET /v1/tokens`.
pub async fn list(
    state: &Arc<AppState>,
    principal: &Principal,
) -> Result<Response<Body>, ApiError> {
    let (inner, by) = (state.clone(), principal.clone());
    let (tokens, identities) = blocking(move || tokens::list(&inner.storage, &by)).await??;
    let mut body = json!({ "tokens": tokens });
    if principal.role == Role::Operator {
        body["identities"] = json!(identities);
    }
    Ok(json_response(StatusCode::OK, &body))
}

/// `DELETE /v1/tokens/{id}`.
pub async fn revoke(
    state: &Arc<AppState>,
    principal: &Principal,
    id: TokenId,
) -> Result<Response<Body>, ApiError> {
    let (inner, by) = (state.clone(), principal.clone());
    let revoked = blocking(move || {
        tokens::revoke(&inner.storage, &by, &id, |token| {
            let mut event = Event::new("token.revoked", actor(&by))
                .detail("token", token.id.as_str())
                .detail("role", token.role.as_str());
            if let Some(tenant) = &token.tenant {
                event = event.tenant(tenant);
            }
            audited(&inner, event)
        })
    })
    .await??;
    tracing::info!(token_id = %revoked.id, role = revoked.role.as_str(), "token revoked");
    Ok(json_response(
        StatusCode::OK,
        &json!({"id": revoked.id.as_str(), "state": "revoked", "role": revoked.role.as_str(), "name": revoked.name}),
    ))
}

/// `POST /v1/tokens/{id}/approve`: a different operator approves a new
/// operator identity.
pub async fn approve(
    state: &Arc<AppState>,
    principal: &Principal,
    id: TokenId,
) -> Result<Response<Body>, ApiError> {
    let (inner, by) = (state.clone(), principal.clone());
    let identity = blocking(move || {
        tokens::approve_operator(&inner.storage, &by, &id, |identity| {
            audited(
                &inner,
                Event::new("token.operator-approved", actor(&by))
                    .detail("identity", identity.name.as_str())
                    .detail("created_by", identity.created_by.as_str()),
            )
        })
    })
    .await??;
    tracing::warn!(identity = %identity.name, "operator identity approved by a second operator");
    Ok(json_response(
        StatusCode::OK,
        &json!({"identity": identity.name, "role": identity.role.as_str(), "state": "active",
                "created_by": identity.created_by, "approved_by": identity.approved_by}),
    ))
}
