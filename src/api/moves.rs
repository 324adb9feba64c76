//! Handlers for moving a tenant to the host of another region.
//!
//! A move names a target region; its host comes from the config's
//! `[hosts]`, never from the request. The tenant's admin starts one itself,
//! or approves one an operator proposed; either may abort it until it
//! completes. Completing asks the target host (with the caller's own token)
//! whether it holds the tenant, restored from a backup this host took after
//! writes paused — only then does this host answer with redirects there.

use std::sync::Arc;

use hyper::{Response, StatusCode};
use serde::Deserialize;

use super::grants::actor;
use super::{audit, blocking, json_response, known_tenant, parse_json, tenant_json};
use super::{ApiError, AppState, Body, MoveStep};
use crate::audit::Event;
use crate::auth::Principal;
use crate::backup::{BackupJob, JobState, JOBS};
use crate::ids::{unix_now, Region, TenantId};
use crate::lifecycle;
use crate::storage::{MovedTo, TenantState};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveRequest {
    to_region: String,
}

/// The secret a caller presented, kept only to ask the target host.
pub struct Bearer(pub String);

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bearer([SECRET])")
    }
}

pub async fn step(
    state: &Arc<AppState>,
    principal: &Principal,
    id: TenantId,
    step: MoveStep,
    body: &bytes::Bytes,
    bearer: Option<Bearer>,
) -> Result<Response<Body>, ApiError> {
    let tenant = known_tenant(&state.storage, &id)?;
    let storage = state.storage.clone();
    let kind = match step {
        MoveStep::Begin => "tenant.move-started",
        MoveStep::Approve => "tenant.move-approved",
        MoveStep::Complete => "tenant.moved",
        MoveStep::Abort => "tenant.move-aborted",
    };
    let event = Event::new(kind, actor(principal)).tenant(&id);
    let tenant = match step {
        MoveStep::Begin => {
            let request: MoveRequest = parse_json(body)?;
            let region = Region::parse(&request.to_region)
                .ok_or_else(|| ApiError::Unprocessable("to_region is not a region name".into()))?;
            if region == state.config.region {
                return Err(ApiError::Unprocessable(format!(
                    "the tenant already lives in region {region}"
                )));
            }
            let url = state.config.hosts.get(&region).cloned().ok_or_else(|| {
                ApiError::Conflict(format!(
                    "no host is configured for region {region:?} ([hosts] lists {:?}): a tenant moves only to a host of this fleet",
                    state.config.hosts.keys().map(Region::as_str).collect::<Vec<_>>()
                ))
            })?;
            if tenant.state != TenantState::Active {
                return Err(ApiError::Conflict(format!(
                    "tenant is {}; this needs an active tenant",
                    tenant.state.as_str()
                )));
            }
            let to = MovedTo {
                region: region.clone(),
                url: url.clone(),
                at: unix_now(),
                requested_by: Some(principal.person()),
                approved_by: None,
            };
            let by_tenant = principal.is_admin_of(&id);
            audit(
                state,
                event
                    .detail("to_region", region.as_str())
                    .detail("to_url", url.as_str())
                    .detail("awaiting_tenant", !by_tenant),
            )
            .await?;
            if by_tenant {
                blocking(move || lifecycle::begin_move(&storage, &id, to)).await??
            } else {
                blocking(move || lifecycle::propose_move(&storage, &id, to)).await??
            }
        }
        MoveStep::Approve => {
            let proposed = tenant.proposed_move.as_ref().ok_or_else(|| {
                ApiError::Conflict("no move waits for the tenant's approval".into())
            })?;
            audit(state, event.detail("to_region", proposed.region.as_str())).await?;
            let person = principal.person();
            blocking(move || lifecycle::approve_move(&storage, &id, person)).await??
        }
        MoveStep::Complete => {
            let to = match (&tenant.state, &tenant.moved_to) {
                (TenantState::Moving, Some(to)) => to.clone(),
                (TenantState::Active, _) if tenant.proposed_move.is_some() => {
                    return Err(ApiError::Conflict(
                        "the move waits for the tenant's admin to approve it (POST …/move/approve)"
                            .into(),
                    ))
                }
                (other, _) => {
                    return Err(ApiError::Conflict(format!(
                        "tenant is {}; only a tenant being moved can finish a move",
                        other.as_str()
                    )))
                }
            };
            let backup = confirm_target(state, &id, &to, bearer).await?;
            audit(
                state,
                event
                    .detail("to_region", to.region.as_str())
                    .detail("backup", backup.as_str()),
            )
            .await?;
            let delay = state.config.move_purge_delay;
            blocking(move || lifecycle::complete_move(&storage, &id, delay)).await??
        }
        MoveStep::Abort => {
            let under_way = tenant.state == TenantState::Moving
                || (tenant.state == TenantState::Active && tenant.proposed_move.is_some());
            if !under_way {
                return Err(ApiError::Conflict(format!(
                    "tenant is {}; no move to abort",
                    tenant.state.as_str()
                )));
            }
            audit(state, event).await?;
            blocking(move || lifecycle::abort_move(&storage, &id)).await??
        }
    };
    tracing::info!(step = ?step, state = tenant.state.as_str(), "tenant move");
    Ok(json_response(StatusCode::OK, &tenant_json(&tenant)))
}

/// Asks the target host whether it holds the tenant, restored from a backup
/// this host finished after writes paused (so it holds every acknowledged
/// write). Returns that backup's id.
async fn confirm_target(
    state: &Arc<AppState>,
    id: &TenantId,
    to: &MovedTo,
    bearer: Option<Bearer>,
) -> Result<String, ApiError> {
    if state.config.hosts.get(&to.region) != Some(&to.url) {
        return Err(ApiError::Conflict(format!(
            "the move's target {} is no longer the configured host of region {}",
            to.url, to.region
        )));
    }
    let bearer = bearer.ok_or_else(|| ApiError::Unauthorized("missing bearer token".into()))?;
    let remote = crate::fleet::tenant_on(&to.url, id, &bearer.0)
        .await
        .map_err(|e| {
            ApiError::Conflict(format!(
                "{e}: the move completes only once the target holds the tenant"
            ))
        })?;
    let restored_from = remote["copy_of"]["backup"].as_str().unwrap_or_default();
    let same_tenant = remote["id"].as_str() == Some(id.as_str())
        && remote["region"].as_str() == Some(to.region.as_str())
        && remote["state"] == "active";
    let (inner, tenant) = (state.clone(), id.clone());
    let jobs: Vec<BackupJob> = blocking(move || {
        JOBS.all(&inner.storage.catalog)
            .map(|jobs| jobs.into_iter().filter(|j| j.tenant == tenant).collect())
    })
    .await??;
    let consistent = jobs.iter().any(|job| {
        job.id == restored_from && job.state == JobState::Done && job.created_at >= to.at
    });
    if !same_tenant || !consistent {
        return Err(ApiError::Conflict(format!(
            "the target host {} does not hold the tenant as of this host's last write (it must be restored there from a backup taken after the move began)",
            to.url
        )));
    }
    Ok(restored_from.to_string())
}
