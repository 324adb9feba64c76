//! DR backups: start one, wait until it is done, and until its regions verified it.

use std::time::Duration;

use serde_json::Value;

use super::Host;

pub fn wait_backup_done(host: &Host, tenant: &str, token: &str, backup: &str) -> Value {
    for _ in 0..300 {
        let r = host.call(
            "GET",
            &format!("/v1/tenants/{tenant}/backups/{backup}"),
            Some(token),
            None,
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.value();
        if v["state"] == "done" || v["state"] == "failed" {
            return v;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("backup {backup} did not finish");
}

pub fn start_backup(host: &Host, tenant: &str, token: &str) -> Value {
    let r = host.call(
        "POST",
        &format!("/v1/tenants/{tenant}/backups"),
        Some(token),
        None,
    );
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.value()["state"], "pending");
    let id = r.value()["id"].as_str().unwrap().to_string();
    wait_backup_done(host, tenant, token, &id)
}

/// Polls a backup until every named region reports `verified`; returns it.
pub fn wait_verified(
    host: &Host,
    tenant: &str,
    token: &str,
    backup: &str,
    regions: &[&str],
) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let r = host.call(
            "GET",
            &format!("/v1/tenants/{tenant}/backups/{backup}"),
            Some(token),
            None,
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let value = r.value();
        if regions
            .iter()
            .all(|region| value["regions"][*region]["state"] == "verified")
        {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "backup {backup} not verified in {regions:?}: {value}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
