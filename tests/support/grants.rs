//! Break-glass grants: hosts with staff, minting, asking, deciding, and calls made with a grant.

use super::{Host, TempDir};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

pub fn records(tenant: &str, collection: &str) -> String {
    format!("/v1/tenants/{tenant}/collections/{collection}/records")
}

/// A host with checkpoints every 200 ms and a clock the test moves.
pub fn host(dir: &TempDir, name: &str, clock: &Path) -> Host {
    let config = dir.path().join(format!("{name}.toml"));
    std::fs::write(&config, "[audit]\ncheckpoint_interval = \"200ms\"\n").unwrap();
    Host::start_with_clock(
        &dir.path().join(name),
        &[
            "--config",
            config.to_str().unwrap(),
            "--backup-interval",
            "0s",
        ],
        clock,
    )
}

/// A host in `dir/data` whose clock the test moves by writing `dir/clock`.
pub fn host_with_clock(dir: &TempDir) -> (PathBuf, Host) {
    let clock = dir.path().join("clock");
    std::fs::write(&clock, "0").unwrap();
    let host = host(dir, "data", &clock);
    (clock, host)
}

pub fn mint(host: &Host, role: &str, name: &str) -> String {
    let r = host.json(
        "POST",
        "/v1/tokens",
        Some(&host.operator),
        json!({"role": role, "name": name}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    r.value()["token"].as_str().unwrap().to_string()
}

pub fn ask(host: &Host, support: &str, body: Value) -> crate::support::Response {
    host.json("POST", "/v1/access-requests", Some(support), body)
}

pub fn request_id(host: &Host, support: &str, tenant: &str, scope: &str, extra: Value) -> String {
    let mut body = json!({"tenant": tenant, "scope": scope, "duration_minutes": 30,
                          "reason": "customer reports missing invoices", "ticket": "SUP-1234"});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let r = ask(host, support, body);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.value()["state"], "pending");
    r.value()["id"].as_str().unwrap().to_string()
}

pub fn decide(host: &Host, who: &str, grant: &str, step: &str) -> crate::support::Response {
    host.call(
        "POST",
        &format!("/v1/access-requests/{grant}/{step}"),
        Some(who),
        None,
    )
}

pub fn with_grant(
    host: &Host,
    method: &str,
    path: &str,
    token: &str,
    grant: &str,
    body: Option<&[u8]>,
) -> crate::support::Response {
    host.call_with(
        method,
        path,
        Some(token),
        body,
        &[("X-Coffer-Grant", grant)],
    )
}

pub fn count(host: &Host, tenant: &str, admin: &str, collection: &str) -> usize {
    let r = host.call(
        "GET",
        &format!("{}?limit=1000", records(tenant, collection)),
        Some(admin),
        None,
    );
    r.value()["records"].as_array().unwrap().len()
}
