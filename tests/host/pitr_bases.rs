//! Full backups under the change log: taken by the host when the log grows
//! long, and when a tenant's shipped changes have none under them yet.

use serde_json::{json, Value};

use crate::pitr::{contact, names, restore, wait_shipped, REGIONS_DIRS};
use crate::support::{eventually, Host, TempDir};

/// The tenant's backups as its admin lists them.
fn backups(host: &Host, tenant: &str, admin: &str) -> Value {
    host.call(
        "GET",
        &format!("/v1/tenants/{tenant}/backups"),
        Some(admin),
        None,
    )
    .value()
}

#[test]
fn a_long_log_gets_a_full_backup_so_that_restores_replay_a_bounded_log() {
    let dir = TempDir::new("pitr-bounded");
    let data = dir.path().join("host");
    let host = Host::start_configured(&data, "[changelog]\nbase_every_changes = 5\n");
    let (tenant, admin) = host.create_tenant("Busy Co", "crm");
    for i in 0..8 {
        contact(&host, &tenant, &admin, &format!("busy-{i}"));
    }
    // Nobody asked for a backup: the log's length did.
    let listed = eventually(
        "a full backup taken for the log",
        || backups(&host, &tenant, &admin),
        |v| {
            v["backups"].as_array().is_some_and(|b| {
                b.iter()
                    .any(|b| b["kind"] == "log-base" && b["state"] == "done")
            })
        },
    );
    assert_eq!(listed["backups"].as_array().unwrap().len(), 1, "{listed}");
    wait_shipped(&host, &tenant, &admin, REGIONS_DIRS);
    let r = restore(&host, &tenant, &admin, json!({"name": "latest"}));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.value()["restored_to"]["sequence"], 8);
    assert_eq!(r.value()["records"], 8);
}

/// A new tenant is restorable from the regions before anyone took a backup:
/// its first shipped changes bring a full backup under them, so the log has
/// a base to replay onto.
#[test]
fn a_new_tenant_restores_from_the_regions_before_any_backup_was_asked_for() {
    let dir = TempDir::new("pitr-new");
    // The change log as configured by default: the base is taken as the
    // first segment ships (`first_base_after` 0 s). No scheduled backups.
    let host = Host::start_configured(&dir.path().join("host"), "");
    let (tenant, admin) = host.create_tenant("New Co", "crm");
    for i in 0..5 {
        contact(&host, &tenant, &admin, &format!("first-{i}"));
    }
    // Nobody asked for a backup; the host takes the log's base by itself.
    let listed = eventually(
        "a base backup verified in every region",
        || backups(&host, &tenant, &admin),
        |v| {
            v["backups"].as_array().is_some_and(|b| {
                b.iter().any(|b| {
                    REGIONS_DIRS
                        .iter()
                        .all(|r| b["regions"][*r]["state"] == "verified")
                })
            })
        },
    );
    assert_eq!(listed["backups"][0]["kind"], "log-base", "{listed}");
    contact(&host, &tenant, &admin, "after-the-base");
    wait_shipped(&host, &tenant, &admin, REGIONS_DIRS);
    let r = restore(
        &host,
        &tenant,
        &admin,
        json!({"name": "New Co, again", "region": "local-2"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let copy = r.value();
    let copy_admin = copy["admin_token"].as_str().unwrap_or(&admin).to_string();
    let mut restored = names(&host, copy["id"].as_str().unwrap(), &copy_admin);
    let mut written = names(&host, &tenant, &admin);
    restored.sort();
    written.sort();
    assert_eq!(restored, written);
    assert_eq!(written.len(), 6);
}
