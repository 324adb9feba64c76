//! `POST /v1/tenants/{id}/keys/rotate` and `GET /v1/tenants/{id}/keys/rotations/{rid}`:
//! online data-key rotation as a job (`service::data_keys`).

use std::sync::Arc;

use hyper::{Response, StatusCode};
use serde_json::{json, Value};

use super::{audit_now, blocking, grants, json_response, known_tenant};
use super::{ApiError, AppState, Body};
use crate::audit::Event;
use crate::auth::Principal;
use crate::ids::{rfc3339, TenantId};
use crate::service::data_keys::{DataKeys, DekRotation, RotationRefused};

fn service(state: &AppState) -> Result<Arc<DataKeys>, ApiError> {
    state
        .data_keys
        .clone()
        .ok_or_else(|| ApiError::Unavailable("this host does not rotate data keys".into()))
}

/// The job as the API shows it (not its cursor).
pub fn rotation_json(job: &DekRotation) -> Value {
    json!({
        "id": job.id,
        "tenant": job.tenant.as_str(),
        "state": job.state.as_str(),
        "kind": job.kind,
        "requested_by": job.requested_by,
        "created_at": rfc3339(job.created_at),
        "finished_at": job.finished_at.map(rfc3339),
        "key_id": job.key_id,
        "progress": {
            "records_total": job.records_total,
            "records_resealed": job.records_resealed,
            "changes_resealed": job.changes_resealed,
        },
        "error": job.error,
    })
}

pub async fn rotate(
    state: &Arc<AppState>,
    principal: &Principal,
    id: TenantId,
) -> Result<Response<Body>, ApiError> {
    let keys = service(state)?;
    known_tenant(&state.storage, &id)?;
    let (inner, principal) = (state.clone(), principal.clone());
    let job = blocking(move || {
        // Audited once the checks pass and before the job exists: an audit
        // log that cannot be written leaves nothing to run.
        keys.request(&id, "manual", &principal.person(), |job| {
            audit_now(
                &inner,
                Event::new("key.rotation_requested", grants::actor(&principal))
                    .tenant(&id)
                    .detail("rotation", job.id.as_str())
                    .detail("kind", "manual"),
            )
            .map(|_| ())
        })
    })
    .await?
    .map_err(|refused| match refused {
        RotationRefused::Conflict(message) => ApiError::Conflict(message),
        RotationRefused::Storage(error) => ApiError::from(error),
    })??;
    Ok(json_response(StatusCode::ACCEPTED, &rotation_json(&job)))
}

pub async fn read(
    state: &Arc<AppState>,
    id: TenantId,
    rotation: String,
) -> Result<Response<Body>, ApiError> {
    let keys = service(state)?;
    known_tenant(&state.storage, &id)?;
    let job = blocking(move || keys.job(&id, &rotation))
        .await?
        .ok_or_else(|| ApiError::NotFound("no such rotation".into()))?;
    Ok(json_response(StatusCode::OK, &rotation_json(&job)))
}
