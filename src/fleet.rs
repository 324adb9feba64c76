//! The fleet: the other Coffer hosts this one knows (`[hosts]` in the
//! config, one per region), and the one call a host makes to another —
//! asking a move's target whether it holds the tenant, before the source
//! points anyone there.
//!
//! Moves go only to configured hosts, and redirects only ever point at
//! them: a tenant's requests are never sent to an address one operator
//! typed.

use std::time::Duration;

use serde_json::Value;

use crate::ids::TenantId;

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("the target host {0} did not answer: {1}")]
    Unreachable(String, String),
    #[error("the target host {host} answered {status} for the tenant")]
    Refused { host: String, status: u16 },
    #[error("the target host {0} answered something that is not a tenant")]
    Garbled(String),
}

/// `GET {host}/v1/tenants/{id}` on another host with the caller's own bearer
/// token (a tenant's admin tokens travel with its backups, so they work on
/// the target too). No redirects are followed.
pub async fn tenant_on(host: &str, tenant: &TenantId, bearer: &str) -> Result<Value, FleetError> {
    // reqwest is built without a default TLS provider; ring is ours already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(15))
        .build()
        .map_err(|e| FleetError::Unreachable(host.to_string(), e.to_string()))?;
    let response = client
        .get(format!("{host}/v1/tenants/{tenant}"))
        .bearer_auth(bearer)
        .send()
        .await
        .map_err(|e| FleetError::Unreachable(host.to_string(), e.to_string()))?;
    let status = response.status().as_u16();
    if status != 200 {
        return Err(FleetError::Refused {
            host: host.to_string(),
            status,
        });
    }
    let body = response
        .bytes()
        .await
        .map_err(|e| FleetError::Unreachable(host.to_string(), e.to_string()))?;
    serde_json::from_slice(&body).map_err(|_| FleetError::Garbled(host.to_string()))
}
