//! Integration tests: the real `coffer` binary, real sled files, real sockets.
//!
//! Over 800 lines because the first-plan scenarios (isolation, crash safety,
//! lifecycle, bad input) still live here; one file per subject under
//! `tests/host/` is the open part of the structure work.

#[path = "host/access.rs"]
mod access;
#[path = "host/backups.rs"]
mod backups;
#[path = "host/insiders.rs"]
mod insiders;
#[path = "host/limits.rs"]
mod limits;
#[path = "host/neighbours.rs"]
mod neighbours;
#[path = "host/replication.rs"]
mod replication;
mod support;

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use support::{contains, files_under, Host, TempDir, BIN};

/// (method, path, body, the callers that succeed and their status)
type MatrixRow<'a> = (&'a str, String, Option<&'a [u8]>, Vec<(&'a str, u16)>);
/// (method, path, token, body, expected status, fragment of the error message)
type BadInputCase<'a> = (&'a str, String, &'a str, Vec<u8>, u16, &'a str);

fn contact(name: &str, email: &str) -> Value {
    json!({"name": name, "email": email})
}

fn records_path(tenant: &str, collection: &str) -> String {
    format!("/v1/tenants/{tenant}/collections/{collection}/records")
}

fn record_count(host: &Host, tenant: &str, token: &str, collection: &str) -> usize {
    let r = host.call(
        "GET",
        &format!("{}?limit=1000", records_path(tenant, collection)),
        Some(token),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.value()["records"].as_array().unwrap().len()
}

#[test]
fn no_plaintext_on_disk_or_in_logs() {
    let dir = TempDir::new("plaintext");
    let data = dir.path().join("data");
    let host = Host::start(&data, &[]);
    let (crm, crm_admin) = host.create_tenant("Plaintext Co", "crm");
    let (desk, desk_admin) = host.create_tenant("Desk Co", "helpdesk");
    let canaries = [
        "CANARY-name-7f3a",
        "canary-email-7f3a@example.com",
        "CANARY-phone-7f3a",
        "CANARY-notes-7f3a",
        "CANARY-company-7f3a",
        "CANARY-nested-7f3a",
        "CANARY-ticket-7f3a",
        "CANARY-message-7f3a",
    ];
    let r = host.json(
        "POST",
        &records_path(&crm, "contacts"),
        Some(&crm_admin),
        json!({"name": canaries[0], "email": canaries[1], "phone": canaries[2], "notes": canaries[3],
               "tags": [canaries[5]]}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = host.json(
        "POST",
        &records_path(&crm, "companies"),
        Some(&crm_admin),
        json!({"name": canaries[4], "domain": canaries[4], "address": {"street": canaries[5]}}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = host.json(
        "POST",
        &records_path(&desk, "customers"),
        Some(&desk_admin),
        json!({"name": canaries[0], "email": canaries[1]}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let customer = r.value()["id"].as_str().unwrap().to_string();
    let r = host.json(
        "POST",
        &records_path(&desk, "tickets"),
        Some(&desk_admin),
        json!({"customer_id": customer, "subject": canaries[6], "status": "open", "metadata": {"x": canaries[5]}}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let ticket = r.value()["id"].as_str().unwrap().to_string();
    let r = host.json(
        "POST",
        &records_path(&desk, "messages"),
        Some(&desk_admin),
        json!({"ticket_id": ticket, "author": canaries[0], "body": canaries[7]}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    // A lookup by the canary value, so its query string passes through the server.
    let r = host.call(
        "GET",
        &format!("{}?email={}", records_path(&crm, "contacts"), canaries[1]),
        Some(&crm_admin),
        None,
    );
    assert_eq!(r.value()["records"].as_array().unwrap().len(), 1);
    // An update and a delete leave old versions behind in a log-structured store.
    let id = r.value()["records"][0]["id"].as_str().unwrap().to_string();
    let mut updated = r.value()["records"][0].clone();
    updated["notes"] = json!(format!("{} again", canaries[3]));
    let r = host.json(
        "PUT",
        &format!("{}/{id}", records_path(&crm, "contacts")),
        Some(&crm_admin),
        updated,
    );
    assert_eq!(r.status, 200, "{}", r.text());

    let log_path = host.log.clone();
    host.stop();
    let log = std::fs::read(&log_path).unwrap();
    assert!(!log.is_empty(), "the server logged nothing");
    let mut searched = 0;
    for file in files_under(&data).into_iter().chain([log_path.clone()]) {
        let bytes = std::fs::read(&file).unwrap();
        searched += bytes.len();
        for canary in canaries {
            assert!(
                !contains(&bytes, canary.as_bytes()),
                "{canary} found in {}",
                file.display()
            );
        }
        for token in [&crm_admin, &desk_admin] {
            assert!(
                !contains(&bytes, token.as_bytes()),
                "a token found in {}",
                file.display()
            );
        }
    }
    // Both tenants' sled files and the catalog were among the bytes searched.
    let searched_dirs = files_under(&data)
        .iter()
        .filter(|f| f.file_name().is_some_and(|n| n == "db"))
        .count();
    assert_eq!(searched_dirs, 3, "catalog + two tenant databases");
    assert!(searched > 2_000, "searched only {searched} bytes");
    let _ = std::fs::remove_file(log_path);
}

#[test]
fn sealed_values_moved_elsewhere_fail_to_open() {
    use coffer::ids::{RecordId, TenantId};
    let dir = TempDir::new("moved");
    let data = dir.path().join("data");
    let host = Host::start(&data, &[]);
    let (t1, a1) = host.create_tenant("one", "crm");
    let (t2, a2) = host.create_tenant("two", "crm");
    let make = |tenant: &str, admin: &str, collection: &str, body: Value| {
        let r = host.json("POST", &records_path(tenant, collection), Some(admin), body);
        assert_eq!(r.status, 201, "{}", r.text());
        r.value()["id"].as_str().unwrap().to_string()
    };
    let source = make(
        &t1,
        &a1,
        "contacts",
        contact("Source", "source@example.com"),
    );
    let victim = make(
        &t1,
        &a1,
        "contacts",
        contact("Victim", "victim@example.com"),
    );
    let company = make(&t1, &a1, "companies", json!({"name": "Acme"}));
    let other_tenant = make(&t2, &a2, "contacts", contact("Other", "other@example.com"));
    host.stop();

    // Someone with the disk copies sealed bytes between places.
    {
        let keyring = coffer::keys::load(&data, &coffer::keys::KeySource::DataDir).unwrap();
        let storage = coffer::storage::Storage::open(&data, keyring, 8, 1 << 20).unwrap();
        let db1 = storage
            .tenant_db(
                &storage
                    .catalog
                    .tenant(&TenantId::parse(&t1).unwrap())
                    .unwrap(),
            )
            .unwrap();
        let db2 = storage
            .tenant_db(
                &storage
                    .catalog
                    .tenant(&TenantId::parse(&t2).unwrap())
                    .unwrap(),
            )
            .unwrap();
        let rid = |s: &str| RecordId::parse(s).unwrap();
        let sealed = db1.raw_record("contacts", &rid(&source)).unwrap().unwrap();
        db1.put_raw_record("contacts", &rid(&victim), &sealed)
            .unwrap(); // another record
        db1.put_raw_record("companies", &rid(&company), &sealed)
            .unwrap(); // another collection
        db2.put_raw_record("contacts", &rid(&other_tenant), &sealed)
            .unwrap(); // another tenant
    }

    let host = Host::start(&data, &[]);
    let get = |tenant: &str, admin: &str, collection: &str, id: &str| {
        host.call(
            "GET",
            &format!("{}/{id}", records_path(tenant, collection)),
            Some(admin),
            None,
        )
    };
    assert_eq!(get(&t1, &a1, "contacts", &source).status, 200);
    for (tenant, admin, collection, id) in [
        (&t1, &a1, "contacts", &victim),
        (&t1, &a1, "companies", &company),
        (&t2, &a2, "contacts", &other_tenant),
    ] {
        let r = get(tenant, admin, collection, id);
        assert_eq!(r.status, 500, "{}", r.text());
        let error = r.error();
        assert!(
            error.contains("damaged") && error.contains(id.as_str()),
            "{error}"
        );
        assert!(
            !r.text().contains("Source"),
            "moved plaintext leaked: {}",
            r.text()
        );
    }
}

/// Every endpoint × every kind of caller. `None` in the table means "any 4xx
/// except the ones listed as success"; the point is that no cross-tenant or
/// staff access to records ever succeeds.
#[test]
fn isolation_matrix() {
    let dir = TempDir::new("matrix");
    let host = Host::start(&dir.path().join("data"), &[]);
    let (mine, admin) = host.create_tenant("mine", "crm");
    let (theirs, their_admin) = host.create_tenant("theirs", "crm");
    let mint = |role: &str| {
        let r = host.json(
            "POST",
            "/v1/tokens",
            Some(&host.operator),
            json!({"role": role, "name": role}),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        r.value()["token"].as_str().unwrap().to_string()
    };
    let support = mint("support");
    let agent = mint("backup-agent");
    let record = {
        let r = host.json(
            "POST",
            &records_path(&mine, "contacts"),
            Some(&admin),
            contact("Mine", "mine@example.com"),
        );
        r.value()["id"].as_str().unwrap().to_string()
    };
    let records = records_path(&mine, "contacts");
    let one = format!("{records}/{record}");
    let new_contact = serde_json::to_vec(&contact("New", "new@example.com")).unwrap();
    let replaced = serde_json::to_vec(&contact("Mine", "mine@example.com")).unwrap();
    let tenant_body =
        serde_json::to_vec(&json!({"name": "x", "region": "local", "schema": "crm"})).unwrap();

    // (name, token) — the callers.
    let callers: Vec<(&str, Option<&str>)> = vec![
        ("none", None),
        (
            "wrong",
            Some("coffer_0000000000000000000000000000000000000000000000000000000000000000"),
        ),
        ("other-admin", Some(&their_admin)),
        ("operator", Some(&host.operator)),
        ("support", Some(&support)),
        ("backup-agent", Some(&agent)),
        ("admin", Some(&admin)),
    ];
    // (method, path, body, callers that succeed with their status)
    let reactivate = format!("/v1/tenants/{mine}/reactivate");
    let endpoints: Vec<MatrixRow> = vec![
        ("GET", "/v1/tenants".into(), None, vec![("operator", 200)]),
        (
            "POST",
            "/v1/tenants".into(),
            Some(&tenant_body),
            vec![("operator", 201)],
        ),
        (
            "GET",
            format!("/v1/tenants/{mine}"),
            None,
            vec![("operator", 200), ("admin", 200)],
        ),
        (
            "POST",
            records.clone(),
            Some(&new_contact),
            vec![("admin", 201)],
        ),
        ("GET", records.clone(), None, vec![("admin", 200)]),
        (
            "GET",
            format!("{records}?email=mine%40example.com"),
            None,
            vec![("admin", 200)],
        ),
        ("GET", one.clone(), None, vec![("admin", 200)]),
        ("PUT", one.clone(), Some(&replaced), vec![("admin", 200)]),
        // Reactivating an active tenant is a conflict for those allowed to try.
        (
            "POST",
            reactivate,
            None,
            vec![("operator", 409), ("admin", 409)],
        ),
        (
            "GET",
            format!("/v1/tenants/{mine}/copies"),
            None,
            vec![("operator", 200), ("admin", 200)],
        ),
        (
            "GET",
            "/v1/regions".into(),
            None,
            vec![("operator", 200), ("backup-agent", 200)],
        ),
        (
            "GET",
            "/v1/regions/local/tenants".into(),
            None,
            vec![("operator", 200), ("backup-agent", 200)],
        ),
        (
            "GET",
            format!("/v1/tenants/{mine}/access-log"),
            None,
            vec![("admin", 200)],
        ),
        // Finishing a move that never began is a conflict for those allowed to try.
        (
            "POST",
            format!("/v1/tenants/{mine}/move/complete"),
            None,
            vec![("operator", 409), ("admin", 409)],
        ),
    ];
    for (method, path, body, allowed) in &endpoints {
        for (caller, token) in &callers {
            let r = host.call(method, path, *token, *body);
            let expected = allowed.iter().find(|(c, _)| c == caller).map(|(_, s)| *s);
            match (expected, *caller) {
                (Some(status), _) => assert_eq!(
                    r.status,
                    status,
                    "{method} {path} as {caller}: {}",
                    r.text()
                ),
                (None, "none" | "wrong") => {
                    assert_eq!(r.status, 401, "{method} {path} as {caller}")
                }
                (None, _) => assert_eq!(r.status, 403, "{method} {path} as {caller}: {}", r.text()),
            }
            if r.status >= 400 {
                assert!(
                    r.value()["error"].is_string(),
                    "{method} {path}: error body {}",
                    r.text()
                );
            }
        }
    }
    // The other tenant's admin reaches its own tenant, never ours, by any path.
    assert_eq!(
        host.call(
            "GET",
            &format!("/v1/tenants/{theirs}"),
            Some(&their_admin),
            None
        )
        .status,
        200
    );
    for (method, path) in [
        ("DELETE", one.clone()),
        ("DELETE", format!("/v1/tenants/{mine}")),
        ("POST", format!("/v1/tenants/{mine}/purge")),
    ] {
        for token in [&their_admin, &support, &agent] {
            let r = host.call(method, &path, Some(token), None);
            assert_eq!(r.status, 403, "{method} {path}: {}", r.text());
        }
    }
    // Operators cannot delete records or purge through a tenant's admin door either.
    assert_eq!(
        host.call("DELETE", &one, Some(&host.operator), None).status,
        403
    );
    // Token minting side doors: operators never mint tenant-admin tokens.
    let r = host.json(
        "POST",
        "/v1/tokens",
        Some(&host.operator),
        json!({"role": "tenant-admin", "name": "x"}),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    for token in [&support, &agent] {
        let r = host.json(
            "POST",
            "/v1/tokens",
            Some(token),
            json!({"role": "operator", "name": "x"}),
        );
        assert_eq!(r.status, 403);
    }
    // A tenant admin mints an admin token for its own tenant, and it works only there.
    let r = host.json(
        "POST",
        "/v1/tokens",
        Some(&admin),
        json!({"role": "tenant-admin", "name": "second"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let second = r.value()["token"].as_str().unwrap().to_string();
    assert_eq!(host.call("GET", &one, Some(&second), None).status, 200);
    assert_eq!(
        host.call("GET", &format!("/v1/tenants/{theirs}"), Some(&second), None)
            .status,
        403
    );
    // Nothing written by the refused calls: our tenant holds the first record and the admin's one.
    assert_eq!(record_count(&host, &mine, &admin, "contacts"), 2);
    assert_eq!(record_count(&host, &theirs, &their_admin, "contacts"), 0);
    // Deleting works for the admin, last.
    assert_eq!(host.call("DELETE", &one, Some(&admin), None).status, 204);
    assert_eq!(host.call("GET", &one, Some(&admin), None).status, 404);
}

#[test]
fn acknowledged_writes_survive_sigkill_and_restart_keeps_state() {
    let dir = TempDir::new("durable");
    let data = dir.path().join("data");
    let host = Host::start(&data, &[]);
    let (tenant, admin) = host.create_tenant("durable", "crm");
    let (gone, gone_admin) = host.create_tenant("deactivated", "crm");
    assert_eq!(
        host.call(
            "DELETE",
            &format!("/v1/tenants/{gone}"),
            Some(&gone_admin),
            None
        )
        .status,
        202
    );
    let support = host.json(
        "POST",
        "/v1/tokens",
        Some(&host.operator),
        json!({"role": "support", "name": "s"}),
    );
    let support = support.value()["token"].as_str().unwrap().to_string();

    // Concurrent writers; the host is killed right after the last 201.
    let addr = host.addr;
    let path = records_path(&tenant, "contacts");
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (path, admin) = (path.clone(), admin.clone());
            std::thread::spawn(move || {
                (0..10)
                    .map(|i| {
                        let body = serde_json::to_vec(&contact(
                            &format!("w{w}-{i}"),
                            &format!("w{w}-{i}@x"),
                        ))
                        .unwrap();
                        let r = support::http(addr, "POST", &path, Some(&admin), Some(&body), &[]);
                        assert_eq!(r.status, 201, "{}", r.text());
                        r.value()["id"].as_str().unwrap().to_string()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let acknowledged: Vec<String> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    host.kill();

    let host = Host::start(&data, &[]);
    for id in &acknowledged {
        let r = host.call("GET", &format!("{path}/{id}"), Some(&admin), None);
        assert_eq!(
            r.status,
            200,
            "acknowledged record {id} lost after SIGKILL: {}",
            r.text()
        );
    }
    assert_eq!(record_count(&host, &tenant, &admin, "contacts"), 80);
    // Tenants, tokens and states survived too.
    let r = host.call(
        "GET",
        &format!("/v1/tenants/{gone}"),
        Some(&host.operator),
        None,
    );
    assert_eq!(r.value()["state"], "deactivated");
    assert!(r.value()["destroy_after"].is_string());
    let r = host.call("GET", &format!("/v1/tenants/{tenant}"), Some(&admin), None);
    assert_eq!(r.value()["state"], "active");
    assert_eq!(
        host.call("GET", "/v1/tenants", Some(&support), None).status,
        403,
        "support token still known and still not an operator"
    );
    assert_eq!(
        host.call("GET", "/v1/tenants", Some(&host.operator), None)
            .status,
        200
    );
}

#[test]
fn lifecycle_deactivate_reactivate_expire_and_purge() {
    let dir = TempDir::new("lifecycle");
    let data = dir.path().join("data");
    let host = Host::start(
        &data,
        &["--grace-period", "2s", "--sweep-interval", "200ms"],
    );
    let (tenant, admin) = host.create_tenant("lifecycle", "crm");
    let path = records_path(&tenant, "contacts");
    let r = host.json(
        "POST",
        &path,
        Some(&admin),
        contact("Kept", "kept@example.com"),
    );
    let id = r.value()["id"].as_str().unwrap().to_string();
    let one = format!("{path}/{id}");

    let r = host.call(
        "DELETE",
        &format!("/v1/tenants/{tenant}"),
        Some(&admin),
        None,
    );
    assert_eq!(r.status, 202);
    assert!(r.value()["destroy_after"].as_str().unwrap().ends_with('Z'));
    let r = host.call("GET", &one, Some(&admin), None);
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.error().contains("deactivated"));
    assert_eq!(
        host.json("POST", &path, Some(&admin), contact("No", "no@x"))
            .status,
        409
    );
    assert_eq!(
        host.call(
            "DELETE",
            &format!("/v1/tenants/{tenant}"),
            Some(&admin),
            None
        )
        .status,
        409
    );

    let r = host.call(
        "POST",
        &format!("/v1/tenants/{tenant}/reactivate"),
        Some(&admin),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.value()["state"], "active");
    let r = host.call("GET", &one, Some(&admin), None);
    assert_eq!(r.status, 200);
    assert_eq!(r.value()["name"], "Kept");

    // Grace period runs out: the sweeper destroys the tenant and its directory.
    let tenant_dir = data.join("tenants").join(&tenant);
    assert!(tenant_dir.is_dir());
    assert_eq!(
        host.call(
            "DELETE",
            &format!("/v1/tenants/{tenant}"),
            Some(&admin),
            None
        )
        .status,
        202
    );
    let mut state = String::new();
    for _ in 0..100 {
        let r = host.call(
            "GET",
            &format!("/v1/tenants/{tenant}"),
            Some(&host.operator),
            None,
        );
        state = r.value()["state"].as_str().unwrap().to_string();
        // The key is shredded (state "destroyed") first, the directory moved
        // away right after: wait for both.
        if state == "destroyed" && !tenant_dir.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(state, "destroyed");
    assert!(!tenant_dir.exists(), "tenant directory still there");
    // Its tokens died with it; reactivation is impossible.
    assert_eq!(host.call("GET", &one, Some(&admin), None).status, 401);
    let r = host.call(
        "POST",
        &format!("/v1/tenants/{tenant}/reactivate"),
        Some(&host.operator),
        None,
    );
    assert_eq!(r.status, 409);

    // Purge: destroyed at once, whatever the state.
    let (other, other_admin) = host.create_tenant("purged", "helpdesk");
    let r = host.call(
        "POST",
        &format!("/v1/tenants/{other}/purge"),
        Some(&host.operator),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.value()["state"], "destroyed");
    assert!(!data.join("tenants").join(&other).exists());
    assert_eq!(
        host.call(
            "GET",
            &format!("/v1/tenants/{other}"),
            Some(&other_admin),
            None
        )
        .status,
        401
    );
    assert_eq!(
        host.call(
            "POST",
            &format!("/v1/tenants/{other}/purge"),
            Some(&host.operator),
            None
        )
        .status,
        410
    );

    // Destroyed stays destroyed across a restart, and the wrapped key is gone.
    host.stop();
    let host = Host::start(&data, &[]);
    let r = host.call(
        "GET",
        &format!("/v1/tenants/{other}"),
        Some(&host.operator),
        None,
    );
    assert_eq!(r.value()["state"], "destroyed");
    let catalog: Vec<u8> = files_under(&data.join("catalog"))
        .iter()
        .flat_map(|f| std::fs::read(f).unwrap())
        .collect();
    assert!(contains(&catalog, other.as_bytes()));
}

#[test]
fn master_key_rotation_survives_a_kill_midway() {
    let dir = TempDir::new("rotate");
    let data = dir.path().join("data");
    let host = Host::start(&data, &[]);
    let tenants: Vec<(String, String, String)> = (0..24)
        .map(|i| {
            let (t, a) = host.create_tenant(&format!("t{i}"), "crm");
            let r = host.json(
                "POST",
                &records_path(&t, "contacts"),
                Some(&a),
                contact(&format!("n{i}"), &format!("{i}@x")),
            );
            (t, a, r.value()["id"].as_str().unwrap().to_string())
        })
        .collect();
    host.stop();
    let key_files = |data: &Path| -> usize {
        std::fs::read_dir(data.join("keys"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".key")
            })
            .count()
    };
    assert_eq!(key_files(&data), 1);

    // Offline rotation, paced, killed part-way.
    let mut child = Command::new(BIN)
        .args(["keys", "rotate", "--pace-ms", "100", "--data-dir"])
        .arg(&data)
        .spawn()
        .unwrap();
    // Wait until the new key is on file, let a few tenants be re-wrapped, then kill.
    for _ in 0..200 {
        if key_files(&data) == 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    std::thread::sleep(std::time::Duration::from_millis(350));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        key_files(&data),
        2,
        "old and new key must both be on file mid-rotation"
    );

    let check_all = |host: &Host| {
        for (t, a, id) in &tenants {
            let r = host.call(
                "GET",
                &format!("{}/{id}", records_path(t, "contacts")),
                Some(a),
                None,
            );
            assert_eq!(r.status, 200, "tenant {t}: {}", r.text());
        }
    };
    let host = Host::start(&data, &[]);
    check_all(&host);
    host.stop();

    // Running it again finishes the job and retires every old key.
    let out = Command::new(BIN)
        .args(["keys", "rotate", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("24 tenant keys re-wrapped"));
    assert_eq!(key_files(&data), 1);

    // And online, through the API, with the host serving.
    let host = Host::start(&data, &[]);
    check_all(&host);
    let (t0, a0, _) = &tenants[0];
    assert_eq!(
        host.call("POST", "/v1/keys/rotate", Some(a0), None).status,
        403
    );
    let r = host.call("POST", "/v1/keys/rotate", Some(&host.operator), None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.value()["rewrapped"], 24);
    assert_eq!(key_files(&data), 1);
    check_all(&host);
    let r = host.json(
        "POST",
        &records_path(t0, "contacts"),
        Some(a0),
        contact("after", "after@x"),
    );
    assert_eq!(r.status, 201);
    host.stop();
    let host = Host::start(&data, &[]);
    check_all(&host);
}

#[test]
fn secret_files_must_be_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("perms");
    let key = dir.path().join("master.key");
    std::fs::write(&key, "11".repeat(32)).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let data = dir.path().join("data");
    let error = Host::try_start(&data, &["--master-key-file", key.to_str().unwrap()])
        .err()
        .unwrap();
    assert!(error.contains("0600"), "{error}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let host = Host::start(&data, &["--master-key-file", key.to_str().unwrap()]);
    let (t, a) = host.create_tenant("external key", "crm");
    assert_eq!(
        host.json(
            "POST",
            &records_path(&t, "contacts"),
            Some(&a),
            contact("k", "k@x")
        )
        .status,
        201
    );
    let mode = std::fs::metadata(data.join("operator.token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0);
    assert!(
        !data.join("keys").exists(),
        "an external key must not create a keyring"
    );
    // Rotation of an external key is refused with a clear message.
    let r = host.call("POST", "/v1/keys/rotate", Some(&host.operator), None);
    assert_eq!(r.status, 409);
    assert!(r.error().contains("outside Coffer"));
    host.stop();
    // The wrong key: the host starts, but the tenant's data does not open.
    std::fs::write(&key, "22".repeat(32)).unwrap();
    let host = Host::start(&data, &["--master-key-file", key.to_str().unwrap()]);
    let r = host.call("GET", &records_path(&t, "contacts"), Some(&a), None);
    assert_eq!(r.status, 500, "{}", r.text());
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let dir = TempDir::new("badinput");
    let host = Host::start(&dir.path().join("data"), &[]);
    let (tenant, admin) = host.create_tenant("bad input", "crm");
    let path = records_path(&tenant, "contacts");
    let r = host.json(
        "POST",
        &path,
        Some(&admin),
        contact("Taken", "taken@example.com"),
    );
    let existing = r.value()["id"].as_str().unwrap().to_string();
    let one = format!("{path}/{existing}");
    let big = format!("{{\"name\": \"{}\"}}", "x".repeat(2 << 20));
    let other_tenant = "0".repeat(32);
    let missing_record = "1".repeat(32);
    let op = host.operator.clone();

    // (method, path, token, body, expected status, message fragment)
    let cases: Vec<BadInputCase> = vec![
        (
            "POST",
            path.clone(),
            &admin,
            b"{not json".to_vec(),
            400,
            "malformed JSON",
        ),
        ("POST", path.clone(), &admin, b"".to_vec(), 400, "JSON"),
        (
            "POST",
            path.clone(),
            &admin,
            b"[1,2]".to_vec(),
            422,
            "object",
        ),
        (
            "POST",
            path.clone(),
            &admin,
            br#"{"name": 42}"#.to_vec(),
            422,
            "must be a string",
        ),
        (
            "POST",
            path.clone(),
            &admin,
            br#"{"email": "a@b"}"#.to_vec(),
            422,
            "missing required field",
        ),
        (
            "POST",
            path.clone(),
            &admin,
            br#"{"name": "a", "age": 3}"#.to_vec(),
            422,
            "unknown field",
        ),
        (
            "POST",
            path.clone(),
            &admin,
            br#"{"name": "a", "id": "x"}"#.to_vec(),
            422,
            "unknown field",
        ),
        (
            "POST",
            path.clone(),
            &admin,
            br#"{"name": "Dup", "email": "taken@example.com"}"#.to_vec(),
            409,
            "email",
        ),
        (
            "POST",
            path.clone(),
            &admin,
            big.into_bytes(),
            413,
            "larger than",
        ),
        (
            "POST",
            records_path(&tenant, "nope"),
            &admin,
            br#"{"name": "a"}"#.to_vec(),
            404,
            "unknown collection",
        ),
        (
            "POST",
            records_path(&other_tenant, "contacts"),
            &op,
            br#"{"name": "a"}"#.to_vec(),
            403,
            "",
        ),
        (
            "GET",
            format!("{path}/{missing_record}"),
            &admin,
            vec![],
            404,
            "not found",
        ),
        (
            "GET",
            format!("{path}/not-an-id"),
            &admin,
            vec![],
            404,
            "not found",
        ),
        (
            "PUT",
            format!("{path}/{missing_record}"),
            &admin,
            br#"{"name": "a"}"#.to_vec(),
            404,
            "not found",
        ),
        (
            "PUT",
            one.clone(),
            &admin,
            br#"{"name": 1}"#.to_vec(),
            422,
            "must be a string",
        ),
        (
            "PUT",
            one.clone(),
            &admin,
            br#"{"name": "a", "id": "0000"}"#.to_vec(),
            422,
            "unknown field",
        ),
        (
            "GET",
            format!("{path}?phone=1"),
            &admin,
            vec![],
            400,
            "not indexed",
        ),
        (
            "GET",
            format!("{path}?limit=0"),
            &admin,
            vec![],
            400,
            "limit",
        ),
        (
            "GET",
            format!("{path}?limit=abc"),
            &admin,
            vec![],
            400,
            "limit",
        ),
        (
            "GET",
            format!("{path}?after=zzz"),
            &admin,
            vec![],
            400,
            "after",
        ),
        (
            "GET",
            format!("{path}?email=%zz"),
            &admin,
            vec![],
            400,
            "percent",
        ),
        (
            "GET",
            format!("/v1/tenants/{other_tenant}"),
            &op,
            vec![],
            404,
            "unknown tenant",
        ),
        (
            "POST",
            "/v1/tenants".into(),
            &op,
            br#"{"name": "x", "region": "local"}"#.to_vec(),
            422,
            "schema",
        ),
        (
            "POST",
            "/v1/tenants".into(),
            &op,
            br#"{"name": "x", "region": "local", "schema": "nope"}"#.to_vec(),
            422,
            "unknown schema",
        ),
        (
            "POST",
            "/v1/tenants".into(),
            &op,
            br#"{"name": "x", "region": "local", "schema": "crm", "schema_version": 9}"#.to_vec(),
            422,
            "no version",
        ),
        (
            "POST",
            "/v1/tenants".into(),
            &op,
            br#"{"name": "x", "region": "mars", "schema": "crm"}"#.to_vec(),
            422,
            "serves region",
        ),
        (
            "POST",
            "/v1/tenants".into(),
            &op,
            br#"{"name": "", "region": "local", "schema": "crm"}"#.to_vec(),
            422,
            "name",
        ),
        (
            "POST",
            "/v1/tenants".into(),
            &op,
            br#"{"name": "x", "region": "local", "schema": "crm", "extra": 1}"#.to_vec(),
            422,
            "unknown field",
        ),
        (
            "POST",
            "/v1/tokens".into(),
            &op,
            br#"{"role": "god", "name": "x"}"#.to_vec(),
            422,
            "unknown role",
        ),
        ("PATCH", one.clone(), &admin, vec![], 405, "method"),
        (
            "GET",
            "/v2/whatever".into(),
            &admin,
            vec![],
            404,
            "no such endpoint",
        ),
    ];
    for (method, path, token, body, status, fragment) in cases {
        let r = host.call(method, &path, Some(token), Some(&body));
        assert_eq!(r.status, status, "{method} {path}: {}", r.text());
        let error = r.error();
        assert!(
            error.contains(fragment),
            "{method} {path}: {error:?} lacks {fragment:?}"
        );
    }
    // Nothing changed: one contact, unchanged; one tenant.
    assert_eq!(record_count(&host, &tenant, &admin, "contacts"), 1);
    let r = host.call("GET", &one, Some(&admin), None);
    assert_eq!(r.value()["name"], "Taken");
    let r = host.call("GET", "/v1/tenants", Some(&op), None);
    assert_eq!(r.value()["tenants"].as_array().unwrap().len(), 1);
    // Unique values are freed by updates and deletes.
    let r = host.json(
        "PUT",
        &one,
        Some(&admin),
        contact("Taken", "moved@example.com"),
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        host.json(
            "POST",
            &path,
            Some(&admin),
            contact("Dup", "taken@example.com")
        )
        .status,
        201
    );
    let r = host.call(
        "GET",
        &format!("{path}?email=moved%40example.com"),
        Some(&admin),
        None,
    );
    assert_eq!(r.value()["records"][0]["id"], existing.as_str());
    let r = host.call(
        "GET",
        &format!("{path}?email=taken%40example.com"),
        Some(&admin),
        None,
    );
    assert_eq!(r.value()["records"][0]["name"], "Dup");
    // The server never answered 500 to any of that.
    let log = String::from_utf8_lossy(&host.log_text()).into_owned();
    assert!(!log.contains("status=500"), "a 500 was logged");
}

#[test]
fn many_tenants_with_a_small_pool_of_open_databases() {
    let dir = TempDir::new("pool");
    let host = Host::start(&dir.path().join("data"), &["--open-tenants-max", "2"]);
    let tenants: Vec<(String, String)> = (0..6)
        .map(|i| host.create_tenant(&format!("p{i}"), "helpdesk"))
        .collect();
    for round in 0..3 {
        for (i, (t, a)) in tenants.iter().enumerate() {
            let body = json!({"name": format!("c{round}"), "email": format!("{i}-{round}@x")});
            let r = host.json("POST", &records_path(t, "customers"), Some(a), body);
            assert_eq!(r.status, 201, "{}", r.text());
        }
    }
    for (i, (t, a)) in tenants.iter().enumerate() {
        assert_eq!(record_count(&host, t, a, "customers"), 3);
        let r = host.call(
            "GET",
            &format!("{}?email={i}-1%40x", records_path(t, "customers")),
            Some(a),
            None,
        );
        assert_eq!(r.value()["records"][0]["name"], "c1");
    }
}

#[test]
fn every_field_type_round_trips_and_is_found_by_its_index() {
    let dir = TempDir::new("types");
    let host = Host::start(&dir.path().join("data"), &[]);
    let (t, a) = host.create_tenant("types", "crm");
    let company = json!({"name": "Acme", "domain": "acme.test", "employees": 42, "address": {"street": ["1", 2, null], "ok": true}});
    let r = host.json(
        "POST",
        &records_path(&t, "companies"),
        Some(&a),
        company.clone(),
    );
    assert_eq!(r.status, 201);
    let deal = json!({"title": "Big", "value": 12.5, "won": false, "close_date": "2026-12-01T00:00:00Z", "stage": "won"});
    let r = host.json("POST", &records_path(&t, "deals"), Some(&a), deal.clone());
    assert_eq!(r.status, 201, "{}", r.text());
    let bad_date = json!({"title": "Bad", "close_date": "tomorrow"});
    assert_eq!(
        host.json("POST", &records_path(&t, "deals"), Some(&a), bad_date)
            .status,
        422
    );
    let r = host.call(
        "GET",
        &format!("{}?domain=acme.test", records_path(&t, "companies")),
        Some(&a),
        None,
    );
    let found = &r.value()["records"][0];
    for key in ["name", "domain", "employees", "address"] {
        assert_eq!(found[key], company[key], "{key}");
    }
    let r = host.call(
        "GET",
        &format!("{}?stage=won", records_path(&t, "deals")),
        Some(&a),
        None,
    );
    let found = &r.value()["records"][0];
    for key in ["title", "value", "won", "close_date"] {
        assert_eq!(found[key], deal[key], "{key}");
    }
    // A tenant pinned to v1 of crm writes v1 records: deals have "amount", not "value".
    let r = host.json(
        "POST",
        "/v1/tenants",
        Some(&host.operator),
        json!({"name": "old", "region": "local", "schema": "crm", "schema_version": 1}),
    );
    assert_eq!(r.value()["schema_version"], 1);
    let (t1, a1) = (
        r.value()["id"].as_str().unwrap().to_string(),
        r.value()["admin_token"].as_str().unwrap().to_string(),
    );
    assert_eq!(
        host.json(
            "POST",
            &records_path(&t1, "deals"),
            Some(&a1),
            json!({"title": "x", "amount": 1.0})
        )
        .status,
        201
    );
    assert_eq!(
        host.json(
            "POST",
            &records_path(&t1, "deals"),
            Some(&a1),
            json!({"title": "x", "value": 1.0})
        )
        .status,
        422
    );
    assert_eq!(
        host.json(
            "POST",
            &records_path(&t1, "activities"),
            Some(&a1),
            json!({"kind": "call"})
        )
        .status,
        404
    );
}
