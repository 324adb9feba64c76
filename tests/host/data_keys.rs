//! Online data-key rotation: re-sealed while it serves, through a SIGKILL,
//! resumed to done, every record intact and the old key gone.

use std::collections::BTreeMap;

use base64::Engine;
use serde_json::{json, Value};

use crate::support::records::records_path;
use crate::support::{add_staff_offline, eventually, tenant_offline, Host, TempDir};

/// Every contact of the tenant, by id (paged).
fn contacts(host: &Host, tenant: &str, token: &str) -> BTreeMap<String, Value> {
    let mut all = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("{}?limit=1000&after={a}", records_path(tenant, "contacts")),
            None => format!("{}?limit=1000", records_path(tenant, "contacts")),
        };
        let r = host.call("GET", &path, Some(token), None);
        assert_eq!(r.status, 200, "{}", r.text());
        let page = r.value();
        for record in page["records"].as_array().unwrap() {
            all.insert(record["id"].as_str().unwrap().to_string(), record.clone());
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => return all,
        }
    }
}

fn rotation(host: &Host, tenant: &str, token: &str, id: &str) -> Value {
    let r = host.call(
        "GET",
        &format!("/v1/tenants/{tenant}/keys/rotations/{id}"),
        Some(token),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.value()
}

#[test]
fn a_rotation_killed_half_way_resumes_to_done_with_every_record_and_only_the_new_key() {
    let dir = TempDir::new("dek-rotation");
    let data = dir.path().join("data");
    let (t, a) = tenant_offline(&data, 1500, |i| format!("CANARY-rotate-{i}"));
    let support = add_staff_offline(&data, "support", "sam");
    let config = "[data_keys]\nbatch_records = 25\nbatch_pause = \"40ms\"\n";
    let host = Host::start_configured(&data, config);
    let before = contacts(&host, &t, &a);
    assert_eq!(before.len(), 1500);

    // Only the tenant's admins and operators rotate its key.
    let path = format!("/v1/tenants/{t}/keys/rotate");
    assert_eq!(host.call("POST", &path, Some(&support), None).status, 403);
    let r = host.call("POST", &path, Some(&a), None);
    assert_eq!(r.status, 202, "{}", r.text());
    let job = r.value()["id"].as_str().unwrap().to_string();
    let again = host.call("POST", &path, Some(&host.operator), None);
    assert_eq!(again.status, 409, "{}", again.text());

    // Writes go on during the rotation: new records and changed ones.
    let ids: Vec<String> = before.keys().cloned().collect();
    let mut written = BTreeMap::new();
    for i in 0..30 {
        let r = host.json(
            "POST",
            &records_path(&t, "contacts"),
            Some(&a),
            json!({"name": format!("during {i}"), "email": format!("during{i}@example.com")}),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        written.insert(r.value()["id"].as_str().unwrap().to_string(), i);
        let id = &ids[i * 50];
        let r = host.json(
            "PUT",
            &format!("{}/{id}", records_path(&t, "contacts")),
            Some(&a),
            json!({"name": format!("changed {i}"), "email": format!("changed{i}@example.com")}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // Killed while it is half way.
    let seen = eventually(
        "the rotation re-sealed some records",
        || rotation(&host, &t, &a, &job),
        |j| j["progress"]["records_resealed"].as_u64().unwrap_or(0) > 0 || j["state"] == "done",
    );
    assert_eq!(seen["state"], "running", "{seen}");
    assert_eq!(seen["key_id"], 1);
    host.kill();

    // Resumed by the next start, and done.
    let host = Host::start_configured(&data, config);
    let done = eventually(
        "the rotation resumed and ended",
        || rotation(&host, &t, &a, &job),
        |j| j["state"] == "done" || j["state"] == "failed",
    );
    assert_eq!(done["state"], "done", "{done}");
    // Counted when the job began: the writes above may have come first.
    let total = done["progress"]["records_total"].as_u64().unwrap();
    assert!((1500..=1530).contains(&total), "{done}");

    // Every record as written, found by its index, and still unique.
    let after = contacts(&host, &t, &a);
    assert_eq!(after.len(), 1530);
    for (i, id) in ids.iter().enumerate() {
        let record = &after[id];
        if i % 50 == 0 && i / 50 < 30 {
            assert_eq!(record["name"], format!("changed {}", i / 50));
        } else {
            assert_eq!(record, &before[id]);
        }
    }
    for (id, i) in &written {
        assert_eq!(after[id]["name"], format!("during {i}"));
    }
    let untouched = before[&ids[7]]["email"].as_str().unwrap();
    for email in [untouched, "during3@example.com", "changed2@example.com"] {
        let r = host.call(
            "GET",
            &format!("{}?email={email}", records_path(&t, "contacts")),
            Some(&a),
            None,
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.value()["records"].as_array().unwrap().len(), 1, "{email}");
    }
    let old_email = before[&ids[0]]["email"].as_str().unwrap();
    let gone = host.call(
        "GET",
        &format!("{}?email={old_email}", records_path(&t, "contacts")),
        Some(&a),
        None,
    );
    assert_eq!(
        gone.value()["records"],
        json!([]),
        "a changed value's old entry"
    );
    let duplicate = host.json(
        "POST",
        &records_path(&t, "contacts"),
        Some(&a),
        json!({"name": "dup", "email": before[&ids[9]]["email"]}),
    );
    assert_eq!(duplicate.status, 409, "{}", duplicate.text());
    // The tenant's proof holds the request and the outcome.
    let kinds = || {
        let proof = host.call(
            "GET",
            &format!("/v1/tenants/{t}/audit-proof"),
            Some(&a),
            None,
        );
        assert_eq!(proof.status, 200, "{}", proof.text());
        proof.value()["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(e["entry"].as_str().unwrap())
                    .unwrap();
                serde_json::from_slice::<Value>(&bytes).unwrap()["kind"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect::<Vec<_>>()
    };
    eventually("the rotation in the tenant's proof", kinds, |kinds| {
        kinds.iter().any(|k| k == "key.rotation_requested")
            && kinds.iter().any(|k| k == "key.rotated")
    });
    host.stop();

    // On disk: every sealed value names the new key; the old one is shredded.
    let keyring = coffer::keys::load(&data, &coffer::keys::KeySource::DataDir).unwrap();
    let storage = coffer::storage::Storage::open(&data, keyring, 8, 1 << 20).unwrap();
    let record = storage
        .catalog
        .tenant(&coffer::ids::TenantId::parse(&t).unwrap())
        .unwrap();
    assert_eq!(record.wrapped_dek.as_ref().unwrap().key_id, 1);
    assert!(record.rotating_to.is_none());
    let db = storage.tenant_db(&record).unwrap();
    let counts = db.sealed_key_ids().unwrap();
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>(),
        vec![1],
        "{counts:?}"
    );
    assert!(counts[&1] >= 1530, "{counts:?}");
}

#[test]
fn a_scheduled_rotation_runs_by_itself_and_the_tenant_shows_its_new_key() {
    let dir = TempDir::new("dek-scheduled");
    let data = dir.path().join("data");
    let host = Host::start_configured(
        &data,
        "[data_keys]\nrotate_every = \"2s\"\ncheck_interval = \"200ms\"\n",
    );
    let (t, a) = host.create_tenant("Scheduled", "crm");
    let r = host.json(
        "POST",
        &records_path(&t, "contacts"),
        Some(&a),
        json!({"name": "kept", "email": "kept@example.com"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.value()["id"].as_str().unwrap().to_string();
    let tenant = eventually(
        "the schedule rotated the tenant's key",
        || {
            host.call("GET", &format!("/v1/tenants/{t}"), Some(&a), None)
                .value()
        },
        |v| {
            v["data_key"]["key_id"].as_u64().unwrap_or(0) >= 1 && v["data_key"]["rotating"] == false
        },
    );
    assert_eq!(tenant["collections"]["contacts"], 1, "{tenant}");
    let r = host.call(
        "GET",
        &format!("{}/{id}", records_path(&t, "contacts")),
        Some(&a),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.value()["name"], "kept");
}
