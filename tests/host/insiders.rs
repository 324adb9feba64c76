//! Trust against one insider: two-person rules count people, not tokens;
//! tokens can be listed, revoked and expire; restored copies are visible and
//! go with their source; parallel restores keep every admin credential.

use serde_json::{json, Value};

use crate::support::backups::start_backup;
use crate::support::{add_staff_offline, Host, Response, TempDir, BIN};

fn records(tenant: &str) -> String {
    format!("/v1/tenants/{tenant}/collections/contacts/records")
}

fn host_with_clock(dir: &TempDir) -> (std::path::PathBuf, Host) {
    let clock = dir.path().join("clock");
    std::fs::write(&clock, "0").unwrap();
    let host = Host::start_with_clock(
        &dir.path().join("data"),
        &["--backup-interval", "0s"],
        &clock,
    );
    (clock, host)
}

fn mint(host: &Host, by: &str, body: Value) -> Response {
    host.json("POST", "/v1/tokens", Some(by), body)
}

fn token_of(r: &Response) -> String {
    assert_eq!(r.status, 201, "{}", r.text());
    r.value()["token"].as_str().unwrap().to_string()
}

fn post(host: &Host, path: &str, token: &str) -> Response {
    host.call("POST", path, Some(token), None)
}

fn emergency(host: &Host, support: &str, tenant: &str) -> String {
    let r = host.json(
        "POST",
        "/v1/access-requests",
        Some(support),
        json!({"tenant": tenant, "scope": "read", "duration_minutes": 30, "emergency": true,
               "reason": "outage", "ticket": "INC-1"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    r.value()["id"].as_str().unwrap().to_string()
}

fn recovery(host: &Host, operator: &str, tenant: &str) -> String {
    let r = host.json(
        "POST",
        &format!("/v1/tenants/{tenant}/admin-recovery"),
        Some(operator),
        json!({"reason": "lost every token", "ticket": "SUP-9"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.value()["state"], "waiting");
    r.value()["id"].as_str().unwrap().to_string()
}

/// The tenant's admin tokens as the tenant sees them.
fn admin_tokens(host: &Host, admin: &str) -> Vec<Value> {
    let r = host.call("GET", "/v1/tokens", Some(admin), None);
    assert_eq!(r.status, 200, "{}", r.text());
    r.value()["tokens"].as_array().unwrap().clone()
}

#[test]
fn one_operator_alone_cannot_act_as_two() {
    let dir = TempDir::new("insiders");
    let data = dir.path().join("data");
    let op2 = add_staff_offline(&data, "operator", "second operator");
    let sue = add_staff_offline(&data, "support", "sue");
    let (clock, host) = host_with_clock(&dir);
    let op1 = host.operator.clone();
    let (t, admin) = host.create_tenant("acme", "crm");
    let r = host.json("POST", &records(&t), Some(&admin), json!({"name": "Ada"}));
    assert_eq!(r.status, 201);

    // One operator mints a "new operator": it works only once a different
    // operator approves it.
    let minted = mint(&host, &op1, json!({"role": "operator", "name": "mallory"}));
    let mallory = token_of(&minted);
    let mallory_id = minted.value()["id"].as_str().unwrap().to_string();
    assert_eq!(minted.value()["state"], "pending-approval");
    let second_self = token_of(&mint(
        &host,
        &op1,
        json!({"role": "operator", "name": "first operator"}),
    ));
    let sam = token_of(&mint(
        &host,
        &op1,
        json!({"role": "support", "name": "sam"}),
    ));
    let approve_mallory = format!("/v1/tokens/{mallory_id}/approve");

    // Each insider attempt: (what, status, error must contain).
    let attempts: Vec<(&str, Response, u16, &str)> = vec![
        (
            "a pending operator token is refused",
            host.call("GET", "/v1/tenants", Some(&mallory), None),
            403,
            "approval",
        ),
        (
            "its creator approves it",
            post(&host, &approve_mallory, &op1),
            403,
            "different operator",
        ),
        (
            "its creator's second token approves it",
            post(&host, &approve_mallory, &second_self),
            403,
            "different operator",
        ),
        (
            "it approves itself",
            post(&host, &approve_mallory, &mallory),
            403,
            "approval",
        ),
        (
            "a token for another operator's identity",
            mint(
                &host,
                &op1,
                json!({"role": "operator", "name": "second operator"}),
            ),
            409,
            "only that operator",
        ),
        (
            "an operator identity reused for another role",
            mint(
                &host,
                &op1,
                json!({"role": "support", "name": "second operator"}),
            ),
            409,
            "one role",
        ),
    ];
    for (what, r, status, message) in &attempts {
        assert_eq!(r.status, *status, "{what}: {}", r.text());
        assert!(r.error().contains(message), "{what}: {}", r.error());
    }

    // An emergency filed by an engineer op1 created: op1 (with either of
    // its tokens) is no second person.
    let sams = emergency(&host, &sam, &t);
    for token in [&op1, &second_self] {
        let r = post(&host, &format!("/v1/access-requests/{sams}/approve"), token);
        assert_eq!(r.status, 403, "{}", r.text());
    }
    let r = post(&host, &format!("/v1/access-requests/{sams}/approve"), &op2);
    assert_eq!(r.value()["state"], "pending", "{}", r.text());

    // A different operator approves mallory: a person now, but one op1
    // created — not the second person after op1.
    let r = post(&host, &approve_mallory, &op2);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        host.call("GET", "/v1/tenants", Some(&mallory), None).status,
        200
    );
    let sues = emergency(&host, &sue, &t);
    let first = post(&host, &format!("/v1/access-requests/{sues}/approve"), &op1);
    assert_eq!(first.value()["state"], "pending", "{}", first.text());
    let related = post(
        &host,
        &format!("/v1/access-requests/{sues}/approve"),
        &mallory,
    );
    assert_eq!(related.status, 403, "{}", related.text());
    let twice = post(
        &host,
        &format!("/v1/access-requests/{sues}/approve"),
        &second_self,
    );
    assert_eq!(twice.status, 409, "{}", twice.text());
    let read = host.call_with(
        "GET",
        &records(&t),
        Some(&sue),
        None,
        &[("X-Coffer-Grant", &sues)],
    );
    assert_eq!(read.status, 403, "no grant yet: {}", read.text());
    // Two distinct people: op1 and op2.
    let done = post(&host, &format!("/v1/access-requests/{sues}/approve"), &op2);
    assert_eq!(done.value()["state"], "active", "{}", done.text());
    assert_eq!(
        done.value()["approvals"],
        json!(["first operator", "second operator"])
    );
    let read = host.call_with(
        "GET",
        &records(&t),
        Some(&sue),
        None,
        &[("X-Coffer-Grant", &sues)],
    );
    assert_eq!(read.status, 200, "{}", read.text());

    // Admin recovery: asked by op1; not before the waiting period; never by
    // op1 again, nor by an identity op1 created; the tenant can cancel.
    let tokens_before = admin_tokens(&host, &admin).len();
    let first_try = recovery(&host, &op1, &t);
    let approve =
        |id: &str, token: &str| post(&host, &format!("/v1/admin-recoveries/{id}/approve"), token);
    let early = approve(&first_try, &op2);
    assert_eq!(early.status, 409, "{}", early.text());
    let log = host
        .call(
            "GET",
            &format!("/v1/tenants/{t}/access-log"),
            Some(&admin),
            None,
        )
        .value();
    assert_eq!(log["admin_recoveries"][0]["state"], "waiting", "{log}");
    let cancelled = post(
        &host,
        &format!("/v1/admin-recoveries/{first_try}/cancel"),
        &admin,
    );
    assert_eq!(cancelled.status, 200, "{}", cancelled.text());
    assert_eq!(cancelled.value()["state"], "cancelled");
    let second_try = recovery(&host, &op1, &t);
    std::fs::write(&clock, (72 * 3600 + 60).to_string()).unwrap();
    assert_eq!(
        approve(&first_try, &op2).status,
        409,
        "cancelled stays cancelled"
    );
    for (who, token) in [
        ("op1", &op1),
        ("op1's second token", &second_self),
        ("op1's creature", &mallory),
    ] {
        let r = approve(&second_try, token);
        assert_eq!(r.status, 403, "{who}: {}", r.text());
    }
    // Another tenant's admin cannot cancel it.
    let (_, other_admin) = host.create_tenant("other", "crm");
    let r = post(
        &host,
        &format!("/v1/admin-recoveries/{second_try}/cancel"),
        &other_admin,
    );
    assert_eq!(r.status, 404, "{}", r.text());
    // Nothing came of the refusals.
    assert_eq!(admin_tokens(&host, &admin).len(), tokens_before);
    // Two distinct people, after the wait: the new admin token works.
    let done = approve(&second_try, &op2);
    assert_eq!(done.status, 200, "{}", done.text());
    let recovered = done.value()["admin_token"].as_str().unwrap().to_string();
    assert_eq!(
        host.call("GET", &records(&t), Some(&recovered), None)
            .status,
        200
    );
    assert_eq!(admin_tokens(&host, &admin).len(), tokens_before + 1);
    // Every step names the people, in the tenant's proof trail.
    let log = host
        .call(
            "GET",
            &format!("/v1/tenants/{t}/access-log"),
            Some(&admin),
            None,
        )
        .value();
    let completed = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "admin-recovery.completed")
        .unwrap_or_else(|| panic!("{log}"));
    assert_eq!(completed["actor"]["identity"], "second operator");
    assert_eq!(completed["details"]["requested_by"], "first operator");
}

#[test]
fn tokens_are_listed_revoked_and_expire() {
    let dir = TempDir::new("token-life");
    let (clock, host) = host_with_clock(&dir);
    let op = host.operator.clone();
    let (t, admin) = host.create_tenant("acme", "crm");
    let support = token_of(&mint(
        &host,
        &op,
        json!({"role": "support", "name": "alice"}),
    ));
    let agent = token_of(&mint(
        &host,
        &op,
        json!({"role": "backup-agent", "name": "nightly"}),
    ));

    // The tenant sees its admin tokens only; staff see staff tokens only.
    let mine = admin_tokens(&host, &admin);
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert_eq!(mine[0]["role"], "tenant-admin");
    assert_eq!(mine[0]["state"], "active");
    assert!(mine[0]["last_used"].is_string(), "{mine:?}");
    let staff = host.call("GET", "/v1/tokens", Some(&op), None).value();
    let roles: Vec<&str> = staff["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["role"].as_str().unwrap())
        .collect();
    assert!(!roles.contains(&"tenant-admin"), "{staff}");
    assert!(
        roles.contains(&"support") && roles.contains(&"backup-agent"),
        "{staff}"
    );
    assert!(
        !staff.to_string().contains(&support),
        "a listing never shows a secret"
    );
    for token in [&support, &agent] {
        assert_eq!(
            host.call("GET", "/v1/tokens", Some(token), None).status,
            403
        );
    }

    // A tenant admin's last token cannot be revoked by accident.
    let initial_id = mine[0]["id"].as_str().unwrap().to_string();
    let r = host.call(
        "DELETE",
        &format!("/v1/tokens/{initial_id}"),
        Some(&admin),
        None,
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.error().contains("last live admin token"), "{}", r.error());
    // A second one, revoked at once: the very next request with it is refused.
    let laptop = mint(
        &host,
        &admin,
        json!({"role": "tenant-admin", "name": "laptop"}),
    );
    let laptop_id = laptop.value()["id"].as_str().unwrap().to_string();
    let laptop = token_of(&laptop);
    assert_eq!(
        host.call("GET", &records(&t), Some(&laptop), None).status,
        200
    );
    let r = host.call(
        "DELETE",
        &format!("/v1/tokens/{laptop_id}"),
        Some(&admin),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let refused = host.call("GET", &records(&t), Some(&laptop), None);
    assert_eq!(refused.status, 401);
    assert!(refused.error().contains("revoked"), "{}", refused.error());
    let again = host.call(
        "DELETE",
        &format!("/v1/tokens/{laptop_id}"),
        Some(&admin),
        None,
    );
    assert_eq!(again.status, 409);
    let listed = admin_tokens(&host, &admin);
    assert_eq!(listed.len(), 2);
    assert!(listed
        .iter()
        .any(|t| t["id"] == laptop_id.as_str() && t["state"] == "revoked"));

    // Nobody reaches tokens that are not theirs to manage.
    let support_id = staff["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["role"] == "support")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, other_admin) = host.create_tenant("other", "crm");
    for (who, token, id) in [
        ("admin on a staff token", &admin, &support_id),
        ("another tenant's admin", &other_admin, &initial_id),
        ("operator on an admin token", &op, &initial_id),
    ] {
        let r = host.call("DELETE", &format!("/v1/tokens/{id}"), Some(token), None);
        assert_eq!(r.status, 404, "{who}: {}", r.text());
    }
    assert_eq!(
        host.call("GET", &records(&t), Some(&admin), None).status,
        200
    );

    // An operator revokes a staff token; the host's last operator token stays.
    let r = host.call(
        "DELETE",
        &format!("/v1/tokens/{support_id}"),
        Some(&op),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        host.call("GET", "/v1/regions", Some(&support), None).status,
        401
    );
    let op_id = staff["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["role"] == "operator")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = host.call("DELETE", &format!("/v1/tokens/{op_id}"), Some(&op), None);
    assert_eq!(r.status, 409, "{}", r.text());

    // Expiry, with the test clock.
    let short = token_of(&mint(
        &host,
        &admin,
        json!({"role": "tenant-admin", "name": "short", "expires_in": 600}),
    ));
    assert_eq!(
        host.call("GET", &records(&t), Some(&short), None).status,
        200
    );
    for bad in [json!(0), json!(-5), json!("1h")] {
        let r = mint(
            &host,
            &admin,
            json!({"role": "tenant-admin", "name": "x", "expires_in": bad}),
        );
        assert_eq!(r.status, 422, "{}", r.text());
    }
    std::fs::write(&clock, "601").unwrap();
    let expired = host.call("GET", &records(&t), Some(&short), None);
    assert_eq!(expired.status, 401);
    assert!(expired.error().contains("expired"), "{}", expired.error());
    assert_eq!(
        host.call("GET", &records(&t), Some(&admin), None).status,
        200
    );

    // The tenant's access log shows its admin tokens minted and revoked.
    let log = host
        .call(
            "GET",
            &format!("/v1/tenants/{t}/access-log"),
            Some(&admin),
            None,
        )
        .value();
    let kinds: Vec<&str> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"token.minted") && kinds.contains(&"token.revoked"),
        "{kinds:?}"
    );

    // The CLI lists and revokes through the API.
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, &admin).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cli = |args: &[&str]| {
        std::process::Command::new(BIN)
            .args(["tokens"])
            .args(args)
            .args(["--url", &host.url(), "--json", "--token-file"])
            .arg(&token_file)
            .output()
            .unwrap()
    };
    let out = cli(&["list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing: Value = serde_json::from_slice(&out.stdout).unwrap();
    let short_id = listing["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "short")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = cli(&["revoke", "--id", &short_id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["revoke", "--id", "not-an-id"]);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim().lines().count(),
        1
    );
}

fn restore(host: &Host, tenant: &str, backup: &str, token: &str, name: &str) -> Response {
    host.json(
        "POST",
        &format!("/v1/tenants/{tenant}/backups/{backup}/restore"),
        Some(token),
        json!({ "name": name }),
    )
}

#[test]
fn restored_copies_are_listed_and_removed_with_their_source() {
    let dir = TempDir::new("copies");
    let host = Host::start(
        &dir.path().join("data"),
        &[
            "--backup-interval",
            "0s",
            "--grace-period",
            "2s",
            "--sweep-interval",
            "200ms",
        ],
    );
    let (t, admin) = host.create_tenant("acme", "crm");
    let r = host.json("POST", &records(&t), Some(&admin), json!({"name": "Ada"}));
    assert_eq!(r.status, 201);
    let backup = start_backup(&host, &t, &host.operator);
    let backup = backup["id"].as_str().unwrap();

    let by_staff = restore(&host, &t, backup, &host.operator, "staff copy");
    assert_eq!(by_staff.status, 201, "{}", by_staff.text());
    assert!(by_staff.value().get("admin_token").is_none());
    let staff_copy = by_staff.value()["id"].as_str().unwrap().to_string();
    let by_tenant = restore(&host, &t, backup, &admin, "my own copy");
    assert_eq!(by_tenant.status, 201, "{}", by_tenant.text());
    let own_copy = by_tenant.value()["id"].as_str().unwrap().to_string();

    let copies = host
        .call(
            "GET",
            &format!("/v1/tenants/{t}/copies"),
            Some(&admin),
            None,
        )
        .value();
    let listed = copies["copies"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{copies}");
    let staff_entry = listed
        .iter()
        .find(|c| c["id"] == staff_copy.as_str())
        .unwrap();
    assert_eq!(staff_entry["made_by_role"], "operator");
    assert_eq!(staff_entry["made_by"], "first operator");
    assert_eq!(staff_entry["backup"], backup);
    assert_eq!(staff_entry["state"], "active");
    assert!(staff_entry["on_removal"]
        .as_str()
        .unwrap()
        .starts_with("destroyed"));
    let own_entry = listed
        .iter()
        .find(|c| c["id"] == own_copy.as_str())
        .unwrap();
    assert!(own_entry["on_removal"]
        .as_str()
        .unwrap()
        .starts_with("kept"));
    // The access log names both tenants of each restore.
    let log = host
        .call(
            "GET",
            &format!("/v1/tenants/{t}/access-log"),
            Some(&admin),
            None,
        )
        .value();
    let restored: Vec<&Value> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "backup.restored")
        .collect();
    assert_eq!(restored.len(), 2, "{log}");
    assert!(restored
        .iter()
        .any(|e| e["details"]["new_tenant"] == staff_copy.as_str()));

    // "Remove my entire database": the staff copy goes with it.
    let r = host.json(
        "POST",
        &format!("/v1/tenants/{t}/purge"),
        Some(&host.operator),
        json!({"erase_backups": true}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.value()["copies_destroyed"], json!([staff_copy]));
    let state = |id: &str| {
        host.call(
            "GET",
            &format!("/v1/tenants/{id}"),
            Some(&host.operator),
            None,
        )
        .value()["state"]
            .clone()
    };
    assert_eq!(state(&staff_copy), "destroyed");
    assert_eq!(state(&own_copy), "active");
    assert!(!host.data_dir.join("tenants").join(&staff_copy).exists());
    let copies = host
        .call(
            "GET",
            &format!("/v1/tenants/{t}/copies"),
            Some(&host.operator),
            None,
        )
        .value();
    let staff_entry = copies["copies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == staff_copy.as_str())
        .cloned()
        .unwrap();
    assert_eq!(staff_entry["state"], "destroyed", "{copies}");

    // The same at the end of a removal's grace period, by the sweeper.
    let (u, u_admin) = host.create_tenant("umbrella", "crm");
    let backup = start_backup(&host, &u, &host.operator);
    let r = restore(
        &host,
        &u,
        backup["id"].as_str().unwrap(),
        &host.operator,
        "u copy",
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let u_copy = r.value()["id"].as_str().unwrap().to_string();
    let r = host.call("DELETE", &format!("/v1/tenants/{u}"), Some(&u_admin), None);
    assert_eq!(r.status, 202, "{}", r.text());
    let mut states = (Value::Null, Value::Null);
    for _ in 0..100 {
        states = (state(&u), state(&u_copy));
        if states.1 == "destroyed" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(states, (json!("destroyed"), json!("destroyed")));
    assert_eq!(state(&own_copy), "active");
}

#[test]
fn parallel_restores_each_inherit_every_admin_credential() {
    let dir = TempDir::new("parallel-restores");
    // Room for 24 long jobs of one tenant at once (the default is 2).
    let config = dir.path().join("many-jobs.toml");
    std::fs::write(
        &config,
        "[limits]\nlong_jobs_per_tenant = 24\nlong_jobs_total = 32\n",
    )
    .unwrap();
    let host = Host::start(
        &dir.path().join("data"),
        &[
            "--config",
            config.to_str().unwrap(),
            "--backup-interval",
            "0s",
        ],
    );
    let (t, admin) = host.create_tenant("acme", "crm");
    let r = host.json("POST", &records(&t), Some(&admin), json!({"name": "Ada"}));
    assert_eq!(r.status, 201);
    let mut admins = vec![admin.clone()];
    for name in ["laptop", "ci"] {
        admins.push(token_of(&mint(
            &host,
            &admin,
            json!({"role": "tenant-admin", "name": name}),
        )));
    }
    let backup = start_backup(&host, &t, &host.operator);
    let backup = backup["id"].as_str().unwrap().to_string();
    let restored: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..24)
            .map(|i| {
                let (host, t, backup) = (&host, &t, &backup);
                scope.spawn(move || {
                    let r = restore(host, t, backup, &host.operator, &format!("copy {i}"));
                    assert_eq!(r.status, 201, "{}", r.text());
                    r.value()["id"].as_str().unwrap().to_string()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for copy in &restored {
        for token in &admins {
            let r = host.call("GET", &records(copy), Some(token), None);
            assert_eq!(r.status, 200, "copy {copy}: {}", r.text());
        }
    }
}
