//! Sending deliveries: each round, the oldest due delivery of every endpoint
//! with nothing in flight goes out on a thread of its own (at most
//! `PARALLEL` at once), so a slow or dead receiver holds only its own
//! endpoint and never a request or another tenant's deliveries. A failed
//! attempt waits twice as long as the one before (up to `max_backoff`), with
//! jitter; a delivery is tried for `retry_for`, and an endpoint that failed
//! for that long is disabled and the tenant's access log says so.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::audit::{Actor, Event};
use crate::crypto;
use crate::ids::unix_now;
use crate::storage::StorageError;
use crate::tasks::Stop;

use super::{check_url, DeliveryState, Disabled, Webhooks, DELIVERIES, DUE, ENDPOINTS};

/// Attempts in flight at once, host-wide.
const PARALLEL: usize = 8;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Webhooks {
    /// Starts the attempts due now; returns how many started.
    fn send_due(self: &Arc<Self>) -> Result<usize, StorageError> {
        let catalog = &self.storage.catalog;
        let now = now_ms();
        let mut oldest: HashMap<String, (u64, String)> = HashMap::new();
        for key in DUE.keys(catalog)? {
            let Some(next) = DUE.get(catalog, &key)? else {
                continue;
            };
            let endpoint = key.split('/').next().unwrap_or_default().to_string();
            // Per endpoint in order of its keys: the oldest message first.
            oldest.entry(endpoint).or_insert((next, key));
        }
        let mut started = 0;
        for (endpoint, (next, key)) in oldest {
            if next > now {
                continue;
            }
            {
                let mut in_flight = self.in_flight.lock().expect("webhooks poisoned");
                if in_flight.len() >= PARALLEL || !in_flight.insert(endpoint.clone()) {
                    continue;
                }
            }
            let (this, held) = (self.clone(), endpoint.clone());
            let spawned = std::thread::Builder::new()
                .name("coffer-webhook".into())
                .spawn(move || {
                    if let Err(error) = this.attempt(&key) {
                        tracing::error!(%error, "webhook delivery");
                    }
                    this.in_flight
                        .lock()
                        .expect("webhooks poisoned")
                        .remove(&endpoint);
                });
            if spawned.is_err() {
                self.in_flight
                    .lock()
                    .expect("webhooks poisoned")
                    .remove(&held);
            }
            started += 1;
        }
        Ok(started)
    }

    /// One attempt at one delivery, and its outcome recorded.
    fn attempt(&self, key: &str) -> Result<(), StorageError> {
        let catalog = &self.storage.catalog;
        let Some(mut delivery) = DELIVERIES.get(catalog, key)? else {
            return DUE.remove(catalog, key);
        };
        let endpoint_key = format!(
            "{}/{}",
            super::owner(delivery.tenant.as_ref()),
            delivery.endpoint
        );
        let Some(mut endpoint) = ENDPOINTS.get(catalog, &endpoint_key)? else {
            return DUE.remove(catalog, key);
        };
        if endpoint.disabled.is_some() {
            delivery.state = DeliveryState::Failed;
            delivery.last_error = Some("the endpoint is disabled".into());
            DELIVERIES.put(catalog, key, &delivery)?;
            return DUE.remove(catalog, key);
        }
        let now = unix_now();
        let outcome = match check_url(&endpoint.url, &self.settings) {
            Err(why) => Err(why),
            Ok(pinned) => {
                let secret = self.storage.secret(&Self::secret_name(&endpoint.id))?;
                let signature = crypto::webhook_signature(
                    &secret,
                    &delivery.message_id,
                    now,
                    delivery.payload.as_bytes(),
                );
                let (timestamp, signature) = (now.to_string(), format!("v1,{signature}"));
                crate::client::post_webhook(
                    &endpoint.url,
                    &pinned,
                    &[
                        ("content-type", "application/json"),
                        ("webhook-id", &delivery.message_id),
                        ("webhook-timestamp", &timestamp),
                        ("webhook-signature", &signature),
                    ],
                    delivery.payload.as_bytes(),
                    self.settings.timeout,
                )
                .and_then(|status| {
                    if (200..300).contains(&status) {
                        Ok(status)
                    } else {
                        Err(format!("the receiver answered {status}"))
                    }
                })
            }
        };
        delivery.attempts += 1;
        delivery.last_attempt_at = Some(now);
        match outcome {
            Ok(status) => {
                delivery.state = DeliveryState::Delivered;
                delivery.last_status = Some(status);
                delivery.last_error = None;
                delivery.delivered_at = Some(now);
                DELIVERIES.put(catalog, key, &delivery)?;
                DUE.remove(catalog, key)?;
                if endpoint.failing_since.take().is_some() {
                    ENDPOINTS.put(catalog, &endpoint_key, &endpoint)?;
                }
            }
            Err(error) => {
                delivery.last_error = Some(error);
                let since = *endpoint.failing_since.get_or_insert(now);
                let gave_up =
                    now.saturating_sub(delivery.created_at) >= self.settings.retry_for.as_secs();
                if gave_up {
                    delivery.state = DeliveryState::Failed;
                    DUE.remove(catalog, key)?;
                } else {
                    DUE.put(
                        catalog,
                        key,
                        &(now_ms() + backoff(delivery.attempts, self.settings.max_backoff)),
                    )?;
                }
                DELIVERIES.put(catalog, key, &delivery)?;
                if now.saturating_sub(since) >= self.settings.retry_for.as_secs() {
                    endpoint.disabled = Some(Disabled {
                        at: now,
                        reason: format!(
                            "every delivery failed for {} s",
                            self.settings.retry_for.as_secs()
                        ),
                    });
                    let mut event = Event::new("webhook.disabled", Actor::host())
                        .detail("webhook", endpoint.id.as_str())
                        .detail("url", endpoint.url.as_str());
                    if let Some(tenant) = &endpoint.tenant {
                        event = event.tenant(tenant);
                    }
                    if let Err(error) = self.audit.append(event) {
                        tracing::error!(%error, "cannot audit a disabled webhook");
                    }
                }
                ENDPOINTS.put(catalog, &endpoint_key, &endpoint)?;
            }
        }
        Ok(())
    }

    /// Dispatches and sends until `stop`: a round as soon as the audit log
    /// grows, and every 200 ms for the retries that fall due.
    pub async fn run(self: Arc<Self>, stop: Stop) {
        loop {
            // At once when the audit log grew; every 200 ms for retries.
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.audit.grew() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            let this = self.clone();
            let round = crate::tasks::blocking(move || -> Result<(), StorageError> {
                this.watch_if_due();
                while this.dispatch()? > 0 {}
                this.send_due()?;
                Ok(())
            })
            .await;
            match round {
                Ok(Err(error)) => tracing::error!(%error, "webhook round"),
                Err(error) => tracing::error!(%error, "webhook round"),
                Ok(Ok(())) => {}
            }
        }
    }
}

/// The wait after `attempts` failed attempts: 1 s, 2 s, 4 s… up to `cap`,
/// less up to a fifth at random (so receivers back up do not all get the
/// retries at once).
fn backoff(attempts: u32, cap: Duration) -> u64 {
    let full = 1000u64
        .saturating_mul(1 << attempts.saturating_sub(1).min(20))
        .min(cap.as_millis() as u64)
        .max(1);
    let jitter = crypto::random_bytes::<2>()
        .map(|b| u16::from_be_bytes(b) as u64)
        .unwrap_or(0);
    full - full / 5 * jitter / 65_535
}
