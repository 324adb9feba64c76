//! Handlers for a tenant's records: create, read, replace, delete, list and
//! look up by an indexed field. Every one opens the tenant through
//! `access::open`, the data path's gate, and calls made through a grant
//! write their audit entries here: the door's types ask for them.

use std::sync::Arc;

use bytes::Bytes;
use hyper::{Response, StatusCode};
use serde_json::{json, Map, Value};

use super::{allow, audit_now, blocking, empty_response, json_response, known_tenant, parse_json};
use super::{ApiError, AppState, Body};
use crate::access::{self, AccessError, Door, GrantAccess, TenantAccess, Withheld};
use crate::audit::{Event, Receipt};
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
    let record: Value = parse_json(&body)?;
    let (held, tenant) = (state.clone(), id.clone());
    let (state, principal) = (state.clone(), principal.clone());
    let record_id = blocking(move || {
        let call = Call::write("POST", &id, &collection, None, StatusCode::CREATED);
        run(
            &state,
            &principal,
            call,
            |door| door.insert(&collection, &record),
            |door, started| door.insert(started?, &collection, &record),
        )
    })
    .await??;
    super::continuous::hold_for_regions(&held, &tenant).await?;
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
    let (state, principal) = (state.clone(), principal.clone());
    let record = blocking(move || {
        let call = Call::read(&id, &collection, Some(&record_id));
        run(
            &state,
            &principal,
            call,
            |door| door.get(&collection, &record_id),
            |door, _| door.get(&collection, &record_id),
        )
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
    let record: Value = parse_json(&body)?;
    let (held, tenant) = (state.clone(), id.clone());
    let (state, principal) = (state.clone(), principal.clone());
    let stored = blocking(move || {
        let call = Call::write("PUT", &id, &collection, Some(&record_id), StatusCode::OK);
        run(
            &state,
            &principal,
            call,
            |door| {
                door.replace(&collection, &record_id, &record)?;
                door.get(&collection, &record_id)
            },
            |door, started| door.replace(started?, &collection, &record_id, &record),
        )
    })
    .await??;
    super::continuous::hold_for_regions(&held, &tenant).await?;
    Ok(json_response(StatusCode::OK, &record_json(stored)))
}

pub async fn delete(
    state: &Arc<AppState>,
    principal: &Principal,
    id: TenantId,
    collection: String,
    record_id: RecordId,
) -> Result<Response<Body>, ApiError> {
    let (held, tenant) = (state.clone(), id.clone());
    let (state, principal) = (state.clone(), principal.clone());
    blocking(move || {
        let call = Call::write(
            "DELETE",
            &id,
            &collection,
            Some(&record_id),
            StatusCode::NO_CONTENT,
        );
        run(
            &state,
            &principal,
            call,
            |door| door.delete(&collection, &record_id),
            |door, started| door.delete(started?, &collection, &record_id),
        )
    })
    .await??;
    super::continuous::hold_for_regions(&held, &tenant).await?;
    Ok(empty_response(StatusCode::NO_CONTENT))
}

pub async fn list(
    state: &Arc<AppState>,
    principal: &Principal,
    id: TenantId,
    collection: String,
    query: Vec<(String, String)>,
) -> Result<Response<Body>, ApiError> {
    let listing = ListQuery::parse(query)?;
    let (state, principal) = (state.clone(), principal.clone());
    let (records, next) = blocking(move || -> Result<_, ApiError> {
        let call = Call::read(&id, &collection, None);
        let after = listing.after.as_ref();
        match &listing.filter {
            Some((field, value)) => run(
                &state,
                &principal,
                call,
                |door| door.find(&collection, field, value, listing.limit),
                |door, _| door.find(&collection, field, value, listing.limit),
            )
            .map(|found| (found, None)),
            None => {
                let mut page = run(
                    &state,
                    &principal,
                    call,
                    |door| door.list(&collection, after, listing.limit + 1),
                    |door, _| door.list(&collection, after, listing.limit + 1),
                )?;
                let more = page.len() > listing.limit;
                page.truncate(listing.limit);
                let next = more
                    .then(|| page.last().map(|(id, _)| id.to_string()))
                    .flatten();
                Ok((page, next))
            }
        }
    })
    .await??;
    let records: Vec<Value> = records.into_iter().map(record_json).collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({"records": records, "next": next}),
    ))
}

/// One call on a tenant's records, as its audit entries name it.
struct Call<'a> {
    method: &'static str,
    tenant: &'a TenantId,
    collection: &'a str,
    record: Option<&'a RecordId>,
    /// The status the call answers when it succeeds.
    done: StatusCode,
}

impl<'a> Call<'a> {
    fn read(tenant: &'a TenantId, collection: &'a str, record: Option<&'a RecordId>) -> Self {
        Call {
            method: "GET",
            tenant,
            collection,
            record,
            done: StatusCode::OK,
        }
    }

    fn write(
        method: &'static str,
        tenant: &'a TenantId,
        collection: &'a str,
        record: Option<&'a RecordId>,
        done: StatusCode,
    ) -> Self {
        Call {
            method,
            tenant,
            collection,
            record,
            done,
        }
    }

    fn writes(&self) -> bool {
        self.method != "GET"
    }

    fn action(&self) -> Action<'a> {
        if self.writes() {
            Action::WriteRecords(self.tenant)
        } else {
            Action::ReadRecords(self.tenant)
        }
    }

    fn event(&self, principal: &Principal, grant: &str) -> Event {
        let mut event = Event::new("grant.access", super::grants::actor(principal))
            .tenant(self.tenant)
            .grant(grant)
            .detail("method", self.method)
            .detail("collection", self.collection);
        if let Some(record) = self.record {
            event = event.detail("record", record.as_str());
        }
        event
    }
}

/// Runs a call on a tenant's records, through the data path's gate: as the
/// tenant's admin (`admin`), or through a grant (`grant`), where a write is
/// handed the receipt of its durable "started" entry (reads get none: an
/// `Err` a write turns into a refusal) and nothing read or written is
/// released before the durable entry of the call's outcome. A refused call
/// made with a grant is recorded with its status too.
fn run<T>(
    state: &AppState,
    principal: &Principal,
    call: Call<'_>,
    admin: impl FnOnce(&TenantAccess) -> Result<T, AccessError>,
    grant: impl FnOnce(&GrantAccess, Result<&Receipt, AccessError>) -> Result<Withheld<T>, AccessError>,
) -> Result<T, ApiError> {
    let opened = allow(principal, call.action()).and_then(|()| {
        let tenant = known_tenant(&state.storage, call.tenant)?;
        Ok(access::open(
            &state.storage,
            &state.schemas,
            principal,
            &tenant,
        )?)
    });
    match opened {
        Ok(Door::Admin(door)) => admin(&door).map_err(ApiError::from),
        Ok(Door::Grant(door)) => {
            let event = call.event(principal, &door.grant().id);
            let started = if call.writes() {
                Some(audit_now(
                    state,
                    event.clone().detail("outcome", "started"),
                )?)
            } else {
                None
            };
            let result = grant(&door, started.as_ref().ok_or(AccessError::WrongReceipt))
                .map_err(ApiError::from);
            let status = match &result {
                Ok(_) => call.done.as_u16(),
                Err(error) => error.status().as_u16(),
            };
            let outcome = audit_now(state, event.detail("outcome", status))?;
            result.map(|withheld| withheld.release(&outcome))
        }
        Err(error) => {
            if let Some(grant) = principal.grant.as_deref() {
                if !principal.is_admin_of(call.tenant) {
                    let status = error.status().as_u16();
                    audit_now(
                        state,
                        call.event(principal, grant).detail("outcome", status),
                    )?;
                }
            }
            Err(error)
        }
    }
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
