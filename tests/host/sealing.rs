//! Encryption at rest: no plaintext on disk or in logs, sealed values bound to their place, private secret files, master-key rotation through a kill.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use crate::support::records::*;
use crate::support::{contains, files_under, Host, TempDir, BIN};

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
