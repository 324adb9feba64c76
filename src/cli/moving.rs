//! `coffer tenant move`: a tenant moves to a host in another region by
//! backup, restore, switch and purge, driven through both hosts' APIs.
//!
//! 1. The source pauses writes (`moving`): the backup below then holds every
//!    acknowledged write, and nothing written later is lost.
//! 2. The source takes a backup; we wait until the region the target reads
//!    from has it `verified`.
//! 3. The target restores it under the same tenant id (`keep_id`); the
//!    tenant's admin tokens come with it (the sealed envelope carries their
//!    digests), so clients only change the host they call.
//! 4. The counts the target restored are compared with the backup's.
//! 5. The source switches (`moved`) once it has asked the target (with our
//!    token on the source, which the target honours because the tenant's
//!    admin tokens travel with the backup) that it holds the tenant restored
//!    from that backup: it answers every data call with a 308 to the target,
//!    and destroys its copy after its purge delay. The source moves tenants
//!    only to the host its `[hosts]` config names for the target's region.
//!
//! Any failure before the switch aborts the move on the source (writes
//! resume there) and leaves nothing on the target.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::client::Client;

pub fn move_tenant(
    source: &Client,
    target: &Client,
    target_url: &str,
    tenant: &str,
    via: Option<&str>,
    step: &dyn Fn(&str),
) -> anyhow::Result<Value> {
    step("checking both hosts");
    let health = target
        .json("GET", "/healthz", None)
        .context("reach the target host")?;
    let target_region = health["region"]
        .as_str()
        .context("the target host did not say its region")?
        .to_string();
    let via = via
        .map(str::to_string)
        .unwrap_or_else(|| target_region.clone());
    let info = source
        .json("GET", &format!("/v1/tenants/{tenant}"), None)
        .context("read the tenant on the source")?;
    let name = info["name"].as_str().unwrap_or("moved tenant").to_string();
    let copies = source
        .json("GET", &format!("/v1/tenants/{tenant}/copies"), None)
        .context("read the source's backup regions")?;
    let shared = copies["backup_regions"]
        .as_array()
        .is_some_and(|regions| regions.iter().any(|r| r == via.as_str()));
    if !shared {
        bail!(
            "the source does not back up to region {via:?} (it uses {}); pick a region both hosts share with --via",
            copies["backup_regions"]
        );
    }
    step("pausing writes on the source");
    let begun = source
        .json(
            "POST",
            &format!("/v1/tenants/{tenant}/move"),
            Some(&json!({ "to_region": target_region })),
        )
        .context("pause writes on the source")?;
    // The source moves tenants only to the host its config names for the
    // region: that must be the host we are about to restore on.
    let configured = begun["moved_to"]["url"].as_str().unwrap_or_default();
    if begun["state"] != "moving" || configured != target_url.trim_end_matches('/') {
        let _ = source.json("POST", &format!("/v1/tenants/{tenant}/move/abort"), None);
        bail!(
            "the source's configured host for region {target_region} is {configured:?}, not {target_url:?} (or the move waits for the tenant's approval: {}); nothing was moved",
            begun["state"]
        );
    }
    match copy_across(source, target, tenant, &name, &via, step) {
        Ok(copied) => {
            step("switching the source to the target");
            let moved = source
                .json("POST", &format!("/v1/tenants/{tenant}/move/complete"), None)
                .context("switch the source to the target")?;
            Ok(json!({
                "tenant": tenant,
                "region": target_region,
                "url": target_url,
                "backup": copied.0,
                "records": copied.1,
                "source_purges_after": moved["destroy_after"],
            }))
        }
        Err(error) => {
            step("aborting the move");
            let undo = source.json("POST", &format!("/v1/tenants/{tenant}/move/abort"), None);
            match undo {
                Ok(_) => Err(error.context("move aborted; the tenant stays on the source")),
                Err(undo) => Err(error.context(format!(
                    "move failed, and aborting it on the source failed too ({undo}); \
                     the tenant's writes stay paused until POST /v1/tenants/{tenant}/move/abort"
                ))),
            }
        }
    }
}

/// Backup on the source, restore on the target, compare counts. Returns the
/// backup id and the record count.
fn copy_across(
    source: &Client,
    target: &Client,
    tenant: &str,
    name: &str,
    via: &str,
    step: &dyn Fn(&str),
) -> anyhow::Result<(String, u64)> {
    step("backing up on the source");
    let started = source
        .json("POST", &format!("/v1/tenants/{tenant}/backups"), None)
        .context("start the backup on the source")?;
    let backup = started["id"].as_str().context("backup id")?.to_string();
    if started["regions"].get(via).is_none() {
        bail!(
            "the source does not back up to region {via:?}; pick one both hosts share with --via"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(6 * 3600);
    let done = loop {
        let b = source.json(
            "GET",
            &format!("/v1/tenants/{tenant}/backups/{backup}"),
            None,
        )?;
        if b["state"] == "failed" {
            bail!(
                "backup {backup} failed: {}",
                b["error"].as_str().unwrap_or("?")
            );
        }
        if b["state"] == "done" {
            step(&format!(
                "waiting for region {via} to verify backup {backup}"
            ));
        }
        if b["state"] == "done" && b["regions"][via]["state"] == "verified" {
            break b;
        }
        if Instant::now() > deadline {
            bail!(
                "backup {backup} did not reach region {via}: {}",
                b["regions"][via]
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let expected = done["records"].as_u64().context("backup record count")?;
    step("restoring on the target");
    let restored = target
        .json(
            "POST",
            &format!("/v1/tenants/{tenant}/backups/{backup}/restore"),
            Some(&json!({"name": name, "region": via, "keep_id": true})),
        )
        .context("restore on the target")?;
    let got = restored["records"].as_u64().unwrap_or(u64::MAX);
    if restored["id"] != tenant || got != expected {
        let _ = target.json("POST", &format!("/v1/tenants/{tenant}/purge"), None);
        bail!(
            "the target restored {got} records as tenant {}, the backup holds {expected} of {tenant}",
            restored["id"]
        );
    }
    Ok((backup, expected))
}
