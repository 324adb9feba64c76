//! API errors and the one exhaustive status mapping; conversions from each
//! room's errors.

use hyper::{Response, StatusCode};
use serde_json::json;

use super::{json_response, Body};
use crate::access::AccessError;
use crate::auth::AuthError;
use crate::lifecycle::LifecycleError;
use crate::storage::StorageError;

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
    PayloadTooLarge(u64),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    Unavailable(String),
    /// The tenant's own key is unavailable (customer-managed keys): 423.
    #[error("{0}")]
    Locked(String),
    /// A bound on long jobs was reached: 429 with `Retry-After`.
    #[error("{message}")]
    TooBusy { message: String, retry_after: u64 },
    /// The request (or its body) did not arrive, or was not answered, in time.
    #[error("{0}")]
    RequestTimeout(String),
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
            ApiError::Locked(_) => StatusCode::LOCKED,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooBusy { .. } => StatusCode::TOO_MANY_REQUESTS,
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

    pub(crate) fn into_response(self, request_id: u64) -> Response<Body> {
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
        if let ApiError::TooBusy { retry_after, .. } = &self {
            response
                .headers_mut()
                .insert(hyper::header::RETRY_AFTER, (*retry_after).into());
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
            StorageError::KeyUnavailable(why) => ApiError::Locked(format!(
                "this tenant is closed: its own key is unavailable ({why}); it opens again once the key is live"
            )),
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
            | AccessError::NotYourGrant
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
            AccessError::SchemaMissing(..) | AccessError::WrongReceipt => {
                ApiError::internal(message)
            }
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
