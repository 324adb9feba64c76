//! Control-panel sessions: a bearer token pasted once into the page is
//! exchanged for a short-lived session cookie (`HttpOnly`, `SameSite=Strict`,
//! `Secure` under TLS), so the token is never kept by the browser. A session
//! holds only the token's digest and acts as that token: every call through
//! it is authorised and audited as the token's, and revoking the token ends
//! it. Calls that change state carry the session's CSRF token in
//! `X-Coffer-CSRF`. Sessions live in the host's memory only: a restart signs
//! everyone out.
//!
//! `POST /v1/sessions` `{"token"}` → 201 and the cookie;
//! `GET /v1/sessions/current` → the session (with its CSRF token);
//! `DELETE /v1/sessions/current` → 204, the session ended on the host.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use hyper::header::{HeaderMap, HeaderValue, COOKIE, SET_COOKIE};
use hyper::{Method, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{audit, blocking, grants, json_response, parse_json};
use super::{ApiError, AppState, Body};
use crate::audit::Event;
use crate::auth::{self, Principal, Role};
use crate::crypto;
use crate::ids::{rfc3339, unix_now};

/// The cookie's name.
pub const COOKIE_NAME: &str = "coffer_session";
/// The header that carries the CSRF token on state changes.
pub const CSRF_HEADER: &str = "x-coffer-csrf";
/// How long a session lasts from sign-in.
const LIFETIME_SECS: u64 = 30 * 60;
/// Sessions held at once; beyond it the oldest go.
const MAX_SESSIONS: usize = 10_000;

#[derive(Clone)]
struct Session {
    /// The digest of the token it was made from (never the token).
    token: [u8; 32],
    csrf: String,
    expires_at: u64,
}

#[derive(Default)]
pub struct Sessions {
    /// By the SHA-256 of the cookie's value.
    live: Mutex<HashMap<[u8; 32], Session>>,
}

/// A request's session, found by its cookie.
pub struct Current {
    key: [u8; 32],
    session: Session,
}

impl Sessions {
    fn insert(&self, session: Session) -> Result<String, ApiError> {
        let id = crypto::encode_hex(&crypto::random_bytes::<32>().map_err(ApiError::internal)?);
        let mut live = self.live.lock().expect("sessions poisoned");
        let now = unix_now();
        live.retain(|_, s| s.expires_at > now);
        while live.len() >= MAX_SESSIONS {
            let oldest = live
                .iter()
                .min_by_key(|(_, s)| s.expires_at)
                .map(|(k, _)| *k)
                .expect("not empty");
            live.remove(&oldest);
        }
        live.insert(crypto::token_digest(&id), session);
        Ok(id)
    }

    /// The session a request's cookie names: `None` without the cookie; 401
    /// when it names no live session.
    pub fn of_request(&self, headers: &HeaderMap) -> Result<Option<Current>, ApiError> {
        let Some(id) = cookie(headers, COOKIE_NAME) else {
            return Ok(None);
        };
        let key = crypto::token_digest(&id);
        let mut live = self.live.lock().expect("sessions poisoned");
        match live.get(&key) {
            Some(session) if session.expires_at > unix_now() => Ok(Some(Current {
                key,
                session: session.clone(),
            })),
            Some(_) => {
                live.remove(&key);
                Err(ApiError::Unauthorized(
                    "the session has expired; sign in again".into(),
                ))
            }
            None => Err(ApiError::Unauthorized(
                "no such session (signed out, or the host restarted); sign in again".into(),
            )),
        }
    }

    fn end(&self, key: &[u8; 32]) {
        self.live.lock().expect("sessions poisoned").remove(key);
    }
}

impl Current {
    /// The principal the session acts as: its token, still live.
    pub async fn principal(&self, state: &AppState) -> Result<Principal, ApiError> {
        let (storage, digest) = (state.storage.clone(), self.session.token);
        let principal = blocking(move || auth::authenticate_digest(&storage, &digest)).await?;
        principal.map_err(|e| {
            state.sessions.end(&self.key);
            ApiError::from(e)
        })
    }

    /// Refuses a state change that does not carry the session's CSRF token.
    pub fn check_csrf(&self, method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
        if matches!(*method, Method::GET | Method::HEAD) {
            return Ok(());
        }
        let sent = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if crypto::constant_time_eq(sent.as_bytes(), self.session.csrf.as_bytes()) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "a change through a session needs its CSRF token in X-Coffer-CSRF".into(),
            ))
        }
    }
}

/// One cookie's value from the `Cookie` headers.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn session_json(principal: &Principal, session: &Session) -> Value {
    json!({
        "role": principal.role.as_str(),
        "tenant": principal.tenant.as_ref().map(|t| t.as_str()),
        "identity": principal.identity,
        "name": principal.name,
        "csrf": session.csrf,
        "expires_at": rfc3339(session.expires_at),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    token: String,
}

/// `POST /v1/sessions`: a tenant admin's or an operator's token for a session.
pub async fn create(
    state: &Arc<AppState>,
    body: &bytes::Bytes,
) -> Result<Response<Body>, ApiError> {
    let request: SignIn = parse_json(body)?;
    let header = format!("Bearer {}", request.token.trim());
    let storage = state.storage.clone();
    let principal = blocking(move || auth::authenticate(&storage, Some(&header))).await??;
    if !matches!(principal.role, Role::TenantAdmin | Role::Operator) {
        return Err(ApiError::Forbidden(
            "the control panel is for tenant admins and operators".into(),
        ));
    }
    let session = Session {
        token: crypto::token_digest(request.token.trim()),
        csrf: crypto::encode_hex(&crypto::random_bytes::<32>().map_err(ApiError::internal)?),
        expires_at: unix_now() + LIFETIME_SECS,
    };
    let mut event = Event::new("session.created", grants::actor(&principal));
    if let Some(tenant) = &principal.tenant {
        event = event.tenant(tenant);
    }
    audit(state, event).await?;
    let id = state.sessions.insert(session.clone())?;
    let mut response = json_response(StatusCode::CREATED, &session_json(&principal, &session));
    let secure = if state.config.tls.is_some() {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{COOKIE_NAME}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={LIFETIME_SECS}{secure}"
    );
    response.headers_mut().insert(
        SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(ApiError::internal)?,
    );
    Ok(response)
}

/// `GET /v1/sessions/current`.
pub fn read(principal: &Principal, current: &Current) -> Response<Body> {
    json_response(StatusCode::OK, &session_json(principal, &current.session))
}

/// `DELETE /v1/sessions/current`: ended on the host, the cookie cleared.
pub async fn end(
    state: &Arc<AppState>,
    principal: &Principal,
    current: &Current,
) -> Result<Response<Body>, ApiError> {
    let mut event = Event::new("session.ended", grants::actor(principal));
    if let Some(tenant) = &principal.tenant {
        event = event.tenant(tenant);
    }
    audit(state, event).await?;
    state.sessions.end(&current.key);
    let mut response = super::request::empty_response(StatusCode::NO_CONTENT);
    response.headers_mut().insert(
        SET_COOKIE,
        HeaderValue::from_static("coffer_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_among_others_and_an_empty_one_is_none() {
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_static("a=1; coffer_session=abc ; b=2"),
        );
        assert_eq!(cookie(&headers, COOKIE_NAME).as_deref(), Some("abc"));
        headers.insert(COOKIE, HeaderValue::from_static("coffer_session="));
        assert_eq!(cookie(&headers, COOKIE_NAME), None);
    }

    #[test]
    fn an_unknown_session_is_refused_and_csrf_is_checked_on_changes() {
        let sessions = Sessions::default();
        let id = sessions
            .insert(Session {
                token: [1; 32],
                csrf: "c".repeat(64),
                expires_at: unix_now() + 60,
            })
            .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_str(&format!("coffer_session={id}")).unwrap(),
        );
        let current = sessions.of_request(&headers).unwrap().unwrap();
        assert!(current.check_csrf(&Method::GET, &headers).is_ok());
        assert_eq!(
            current
                .check_csrf(&Method::POST, &headers)
                .unwrap_err()
                .status(),
            StatusCode::FORBIDDEN
        );
        headers.insert(CSRF_HEADER, HeaderValue::from_str(&"c".repeat(64)).unwrap());
        assert!(current.check_csrf(&Method::DELETE, &headers).is_ok());
        sessions.end(&current.key);
        assert_eq!(
            sessions.of_request(&headers).err().unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
    }
}
