//! Handlers for a tenant's records: create, read, replace, delete, list and
//! look up by an indexed field. Every one opens the tenant through
//! `access::open`, the data path's gate.

use std::sync::Arc;

use bytes::Bytes;
use hyper::{Response, StatusCode};
use serde_json::{json, Map, Value};

use super::{allow, blocking, empty_response, json_response, known_tenant, parse_json};
use super::{ApiError, AppState, Body};
use crate::access;
use crate::auth::{Action, Principal};
use crate::ids::{RecordId, TenantId};
use crate::storage::Record;

pub async fn create(
    state: &Arc<AppState>,
    principal: &Principal,
    id: TenantId,
    collection: String,
    body: Bytes,
) -> Result<Response<Body>, ApiError> {
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

pub async fn read(
    state: &Arc<AppState>,
    principal: &Principal,
    id: TenantId,
    collection: String,
    record_id: RecordId,
) -> Result<Response<Body>, ApiError> {
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

pub async fn replace(
    state: &Arc<AppState>,
    principal: &Principal,
    id: TenantId,
    collection: String,
    record_id: RecordId,
    body: Bytes,
) -> Result<Response<Body>, ApiError> {
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

pub async fn delete(
    state: &Arc<AppState>,
    principal: &Principal,
    id: TenantId,
    collection: String,
    record_id: RecordId,
) -> Result<Response<Body>, ApiError> {
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

pub async fn list(
    state: &Arc<AppState>,
    principal: &Principal,
    id: TenantId,
    collection: String,
    query: Vec<(String, String)>,
) -> Result<Response<Body>, ApiError> {
    allow(principal, Action::ReadRecords(&id))?;
    let listing = ListQuery::parse(query)?;
    let state = state.clone();
    let principal = principal.clone();
    blocking(move || {
        let door = open_tenant(&state, &principal, &id)?;
        let (records, next) = match &listing.filter {
            Some((field, value)) => (door.find(&collection, field, value, listing.limit)?, None),
            None => {
                let mut page = door.list(&collection, listing.after.as_ref(), listing.limit + 1)?;
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

pub(crate) fn open_tenant(
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

pub(crate) fn record_json((id, fields): Record) -> Value {
    let mut object = Map::with_capacity(fields.len() + 1);
    object.insert("id".into(), Value::from(id.to_string()));
    object.extend(fields);
    Value::Object(object)
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
