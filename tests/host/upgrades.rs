//! Schema upgrades: a backup first, every record migrated, a clean failure.

use serde_json::json;

use crate::support::records::*;
use crate::support::{Host, TempDir};

#[test]
fn upgrade_backs_up_first_migrates_every_record_and_fails_cleanly() {
    let dir = TempDir::new("upgrade");
    let store = dir.path().join("store");
    let host = Host::start(
        &dir.path().join("data"),
        &["--backup-store", store.to_str().unwrap()],
    );
    let r = host.json(
        "POST",
        "/v1/tenants",
        Some(&host.operator),
        json!({"name": "Old", "region": "local", "schema": "crm", "schema_version": 1}),
    );
    let (t, a) = (
        r.value()["id"].as_str().unwrap().to_string(),
        r.value()["admin_token"].as_str().unwrap().to_string(),
    );
    let contact = host.json(
        "POST",
        &records_path(&t, "contacts"),
        Some(&a),
        json!({"name": "Ada", "email": "ada@x"}),
    );
    let contact = contact.value()["id"].as_str().unwrap().to_string();
    let deal = host.json(
        "POST",
        &records_path(&t, "deals"),
        Some(&a),
        json!({"title": "Big", "amount": 12.5}),
    );
    let deal = deal.value()["id"].as_str().unwrap().to_string();

    // Refusals change nothing.
    let upgrade = |version: u32| {
        host.json(
            "POST",
            &format!("/v1/tenants/{t}/upgrade"),
            Some(&a),
            json!({"schema_version": version}),
        )
    };
    assert_eq!(upgrade(1).status, 409);
    assert_eq!(upgrade(9).status, 422);
    assert_eq!(
        host.json(
            "POST",
            &format!("/v1/tenants/{t}/upgrade"),
            Some(&host.operator),
            json!({"version": 2})
        )
        .status,
        422
    );
    let (_, other_admin) = host.create_tenant("Other", "crm");
    assert_eq!(
        host.json(
            "POST",
            &format!("/v1/tenants/{t}/upgrade"),
            Some(&other_admin),
            json!({"schema_version": 2})
        )
        .status,
        403
    );

    // A failing pre-upgrade backup leaves the tenant exactly as it was, writable.
    // (The spool, where a backup is sealed before replication, is broken.)
    let spool = dir.path().join("data").join("backups");
    let tenants_dir = spool.join("tenants");
    std::fs::create_dir_all(&spool).unwrap();
    let _ = std::fs::remove_dir_all(&tenants_dir);
    std::fs::write(&tenants_dir, b"not a directory").unwrap();
    let r = upgrade(2);
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.error().contains("nothing was changed"));
    let info = host
        .call("GET", &format!("/v1/tenants/{t}"), Some(&a), None)
        .value();
    assert_eq!(info["schema_version"], 1);
    let r = host.call(
        "GET",
        &format!("{}/{deal}", records_path(&t, "deals")),
        Some(&a),
        None,
    );
    assert_eq!(r.value()["amount"], 12.5);
    assert_eq!(
        host.json(
            "POST",
            &records_path(&t, "contacts"),
            Some(&a),
            json!({"name": "After failure"})
        )
        .status,
        201
    );
    std::fs::remove_file(&tenants_dir).unwrap();

    // The real upgrade: backup first, every record migrated, indexes and ids kept.
    let r = upgrade(2);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.value();
    assert_eq!(v["schema_version"], 2);
    assert_eq!(v["upgrade"]["records"], 3);
    let backup = v["upgrade"]["backup_id"].as_str().unwrap().to_string();
    let r = host.call(
        "GET",
        &format!("{}/{deal}", records_path(&t, "deals")),
        Some(&a),
        None,
    );
    assert_eq!(r.value()["value"], 12.5);
    assert!(r.value().get("amount").is_none());
    let r = host.call(
        "GET",
        &format!("{}/{contact}", records_path(&t, "contacts")),
        Some(&a),
        None,
    );
    assert_eq!(r.value()["do_not_contact"], false);
    let r = host.call(
        "GET",
        &format!("{}?email=ada%40x", records_path(&t, "contacts")),
        Some(&a),
        None,
    );
    assert_eq!(r.value()["records"][0]["id"], contact.as_str());
    assert_eq!(
        host.json(
            "POST",
            &records_path(&t, "activities"),
            Some(&a),
            json!({"kind": "call", "at": "2026-11-23T10:00:00Z"})
        )
        .status,
        201
    );
    let r = host.call(
        "GET",
        &format!("/v1/tenants/{t}/backups/{backup}"),
        Some(&a),
        None,
    );
    assert_eq!(r.value()["kind"], "pre-upgrade");
    assert_eq!(r.value()["state"], "done");
    // The pre-upgrade backup restores the tenant as it was before (v1).
    let r = host.json(
        "POST",
        &format!("/v1/tenants/{t}/backups/{backup}/restore"),
        Some(&a),
        json!({"name": "before upgrade"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.value()["schema_version"], 1);
    // The upgrade survives a restart.
    host.stop();
    let host = Host::start(
        &dir.path().join("data"),
        &["--backup-store", store.to_str().unwrap()],
    );
    let r = host.call(
        "GET",
        &format!("{}/{deal}", records_path(&t, "deals")),
        Some(&a),
        None,
    );
    assert_eq!(r.value()["value"], 12.5);
}
