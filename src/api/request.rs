//! Request and response plumbing shared by every handler: bodies, JSON,
//! names, and the blocking helper that keeps the span.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use serde_json::Value;

use super::limits::{BodyBudget, BodyBytes};
use super::{ApiError, Body};

pub(crate) fn checked_name(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
        return Err(ApiError::Unprocessable(
            "name must be 1 to 200 printable characters".into(),
        ));
    }
    Ok(name.to_string())
}

/// Runs blocking work on the blocking pool, inside the current span. The work
/// runs to completion even if the request's future is dropped.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    crate::tasks::blocking(work)
        .await
        .map_err(ApiError::internal)
}

/// Reads a whole body of at most `limit` bytes, each chunk counted against
/// the host's budget for buffered bodies (held until the returned guard goes).
pub(crate) async fn read_body(
    request: Request<Incoming>,
    limit: usize,
    budget: &BodyBudget,
) -> Result<(Bytes, Option<BodyBytes>), ApiError> {
    let mut body = Limited::new(request.into_body(), limit);
    let mut held = None;
    let mut parts = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
                return Err(ApiError::PayloadTooLarge(limit as u64))
            }
            Err(error) => return Err(ApiError::BadRequest(format!("read request body: {error}"))),
        };
        if let Ok(data) = frame.into_data() {
            budget.take(&mut held, data.len())?;
            parts.extend_from_slice(&data);
        }
    }
    Ok((parts.freeze(), held))
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::BadRequest("request body must be JSON".into()));
    }
    // serde_json keeps the last of two equal keys: a body that says two
    // things is refused instead.
    if let Err(error) = serde_json::from_slice::<NoDuplicateKeys>(body) {
        if error.classify() == serde_json::error::Category::Data {
            return Err(ApiError::BadRequest(format!("malformed JSON: {error}")));
        }
    }
    serde_json::from_slice(body).map_err(|error| match error.classify() {
        serde_json::error::Category::Data => {
            ApiError::Unprocessable(format!("invalid request: {error}"))
        }
        _ => ApiError::BadRequest(format!("malformed JSON: {error}")),
    })
}

/// Any JSON value, refused when an object names one key twice (at any depth).
struct NoDuplicateKeys;

impl<'de> serde::Deserialize<'de> for NoDuplicateKeys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NoDuplicateKeysVisitor)
    }
}

struct NoDuplicateKeysVisitor;

impl<'de> serde::de::Visitor<'de> for NoDuplicateKeysVisitor {
    type Value = NoDuplicateKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<NoDuplicateKeys, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_i64<E>(self, _: i64) -> Result<NoDuplicateKeys, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_u64<E>(self, _: u64) -> Result<NoDuplicateKeys, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_f64<E>(self, _: f64) -> Result<NoDuplicateKeys, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_str<E>(self, _: &str) -> Result<NoDuplicateKeys, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_unit<E>(self) -> Result<NoDuplicateKeys, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> Result<NoDuplicateKeys, A::Error> {
        while seq.next_element::<NoDuplicateKeys>()?.is_some() {}
        Ok(NoDuplicateKeys)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> Result<NoDuplicateKeys, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!(
                    "the key {key:?} appears twice in one object"
                )));
            }
            map.next_value::<NoDuplicateKeys>()?;
        }
        Ok(NoDuplicateKeys)
    }
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

pub(crate) fn empty_response(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_named_twice_is_refused_at_any_depth() {
        let ok =
            Bytes::from_static(br#"{"a": 1, "b": [{"a": 2}, {"a": 3}], "c": {"a": {"b": 1}}}"#);
        assert!(parse_json::<Value>(&ok).is_ok());
        for bad in [
            &br#"{"role": "support", "role": "operator"}"#[..],
            br#"{"a": {"x": 1, "x": 2}}"#,
            br#"[{"k": 1, "k": 1}]"#,
        ] {
            let error = parse_json::<Value>(&Bytes::from_static(bad)).unwrap_err();
            assert_eq!(error.status(), StatusCode::BAD_REQUEST, "{error}");
            assert!(error.to_string().contains("appears twice"), "{error}");
        }
        let malformed = parse_json::<Value>(&Bytes::from_static(b"{")).unwrap_err();
        assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    }
}
