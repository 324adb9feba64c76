//! Refusing early and saying only what is the caller's: bodies declared too
//! large, bodies that never arrive, JSON that says two things, grant state
//! kept from those it is not for, schedule changes in the tenant's proof, and
//! long jobs bounded, their slots freed the moment their callers have the answer.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

use crate::support::{Host, TempDir};

fn host(dir: &TempDir) -> Host {
    let config = dir.path().join("host.toml");
    std::fs::write(
        &config,
        "[api]\nrequest_timeout = \"2s\"\n\n[audit]\ncheckpoint_interval = \"200ms\"\n",
    )
    .unwrap();
    Host::start(
        &dir.path().join("data"),
        &[
            "--config",
            config.to_str().unwrap(),
            "--backup-interval",
            "0s",
        ],
    )
}

/// Sends a request head and `body_part` on a raw connection, then reads
/// whatever the host answers (bounded by a read timeout, never by a sleep).
fn raw(host: &Host, head: &str, body_part: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(host.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    let _ = stream.write_all(body_part);
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    // Read until the head and the declared body are in (the host may keep
    // the connection open).
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
        let text = String::from_utf8_lossy(&raw);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if body.len() >= length {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no answer: {text:?}"));
    (status, text)
}

#[test]
fn oversized_and_trickled_bodies_are_refused_early() {
    let dir = TempDir::new("limits");
    let host = host(&dir);
    let (t, admin) = host.create_tenant("acme", "crm");
    let records = format!("/v1/tenants/{t}/collections/contacts/records");

    // A declared TiB: 413 without the host reading (or waiting for) a byte.
    let (status, text) = raw(
        &host,
        &format!(
            "POST {records} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\nContent-Type: application/json\r\nContent-Length: 1099511627776\r\n\r\n"
        ),
        b"",
    );
    assert_eq!(status, 413, "{text}");
    // The same for an import, against its own (larger) bound.
    let (status, _) = raw(
        &host,
        &format!(
            "POST /v1/tenants/import?name=x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 1099511627776\r\n\r\n",
            host.operator
        ),
        b"",
    );
    assert_eq!(status, 413);
    let (status, _) = raw(
        &host,
        &format!("POST {records} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\nContent-Length: lots\r\n\r\n"),
        b"",
    );
    assert_eq!(status, 400);

    // A restore (a long job) whose body trickles: ended by the normal
    // request timeout with 408, and nothing restored.
    let before = host
        .call("GET", "/v1/tenants", Some(&host.operator), None)
        .value()["tenants"]
        .as_array()
        .unwrap()
        .len();
    let (status, text) = raw(
        &host,
        &format!(
            "POST /v1/tenants/{t}/backups/{}/restore HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n",
            "0".repeat(32),
            host.operator
        ),
        b"{\"name\"",
    );
    assert_eq!(status, 408, "{text}");
    assert!(text.contains("did not arrive"), "{text}");
    let after = host
        .call("GET", "/v1/tenants", Some(&host.operator), None)
        .value()["tenants"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(before, after);
    // The host serves on.
    assert_eq!(host.call("GET", &records, Some(&admin), None).status, 200);
}

#[test]
fn json_naming_a_key_twice_is_refused_and_changes_nothing() {
    let dir = TempDir::new("dup-keys");
    let host = host(&dir);
    let (t, admin) = host.create_tenant("acme", "crm");
    let tokens = || {
        host.call("GET", "/v1/tokens", Some(&host.operator), None)
            .value()["tokens"]
            .as_array()
            .unwrap()
            .len()
    };
    let before = tokens();
    let r = host.call(
        "POST",
        "/v1/tokens",
        Some(&host.operator),
        Some(br#"{"role": "support", "name": "a", "role": "operator"}"#),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.error().contains("twice"), "{}", r.error());
    assert_eq!(tokens(), before);
    let records = format!("/v1/tenants/{t}/collections/contacts/records");
    let r = host.call(
        "POST",
        &records,
        Some(&admin),
        Some(br#"{"name": "Ada", "name": "Eve"}"#),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let listed = host.call("GET", &records, Some(&admin), None).value();
    assert_eq!(listed["records"], json!([]));
}

#[test]
fn grant_state_is_told_only_to_its_engineer_and_schedule_changes_are_in_the_proof() {
    let dir = TempDir::new("grant-words");
    let host = host(&dir);
    let (t, admin) = host.create_tenant("acme", "crm");
    let mint = |role: &str, name: &str| {
        let r = host.json(
            "POST",
            "/v1/tokens",
            Some(&host.operator),
            json!({"role": role, "name": name}),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        r.value()["token"].as_str().unwrap().to_string()
    };
    let alice = mint("support", "alice");
    let bob = mint("support", "bob");
    let r = host.json(
        "POST",
        "/v1/access-requests",
        Some(&alice),
        json!({"tenant": t, "scope": "read", "duration_minutes": 30, "reason": "r", "ticket": "t"}),
    );
    let grant = r.value()["id"].as_str().unwrap().to_string();
    let records = format!("/v1/tenants/{t}/collections/contacts/records");
    let with = |token: &str| {
        host.call_with(
            "GET",
            &records,
            Some(token),
            None,
            &[("X-Coffer-Grant", &grant)],
        )
    };
    // Pending: alice is told so; bob only that it is not his.
    assert!(
        with(&alice).error().contains("pending"),
        "{}",
        with(&alice).text()
    );
    let r = host.call(
        "POST",
        &format!("/v1/access-requests/{grant}/approve"),
        Some(&admin),
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(with(&alice).status, 200);
    let refused = with(&bob);
    assert_eq!(refused.status, 403);
    assert_eq!(refused.error(), "no live grant for this token");

    // A backup agent turns the tenant's scheduled backups off: the tenant's
    // proof shows who did it.
    let agent = mint("backup-agent", "nightly");
    let r = host.json(
        "PUT",
        &format!("/v1/tenants/{t}/backup-schedule"),
        Some(&agent),
        json!({"interval_hours": 0}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let changed = |e: &Value| e["kind"] == "backup.schedule-changed";
    let entries = proof_entries(&host, &t, &admin, |entries| entries.iter().any(changed));
    let kinds: Vec<&Value> = entries.iter().filter(|e| changed(e)).collect();
    assert_eq!(kinds.len(), 1, "no schedule change in the proof");
    assert_eq!(kinds[0]["actor"]["role"], "backup-agent");
    assert_eq!(kinds[0]["actor"]["identity"], "nightly");
    assert_eq!(kinds[0]["details"]["interval_hours"], 0);
}

#[test]
fn after_sigkill_the_verifier_names_the_unsigned_tail_and_the_next_start_signs_it() {
    let dir = TempDir::new("unsigned-tail");
    let config = dir.path().join("slow.toml");
    std::fs::write(&config, "[audit]\ncheckpoint_interval = \"1h\"\n").unwrap();
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--backup-interval",
        "0s",
    ];
    let data = dir.path().join("data");
    let host = Host::start(&data, &args);
    host.create_tenant("acme", "crm");
    host.create_tenant("umbrella", "crm");
    host.kill();
    let verify = |strict: bool| {
        let mut command = std::process::Command::new(crate::support::BIN);
        command.args(["audit", "verify", "--data-dir"]).arg(&data);
        if strict {
            command.arg("--strict");
        }
        command.output().unwrap()
    };
    let out = verify(false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("warning: entries 0.."), "{stderr}");
    let out = verify(true);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim().lines().count(),
        1
    );
    // The next start signs the tail before serving.
    let host = Host::start(&data, &args);
    host.stop();
    let out = verify(true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A flipped byte in an entry is still a broken log, strict or not.
    let entries = data.join("audit/journal/0000000000000000");
    let mut bytes = std::fs::read(&entries).unwrap();
    let at = bytes.len() - 3;
    bytes[at] ^= 0x01;
    std::fs::write(&entries, bytes).unwrap();
    assert!(!verify(false).status.success());
}

/// The tenant's entries in its proof bundle, decoded, once they are under a
/// signed checkpoint and `until` holds for them (polled: checkpoints are
/// signed every 200 ms here).
pub(crate) fn proof_entries(
    host: &Host,
    tenant: &str,
    admin: &str,
    until: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let mut entries = Vec::new();
    for _ in 0..100 {
        let bundle = host
            .call(
                "GET",
                &format!("/v1/tenants/{tenant}/audit-proof"),
                Some(admin),
                None,
            )
            .value();
        entries = bundle["entries"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(e["entry"].as_str().unwrap())
                    .unwrap();
                serde_json::from_slice::<Value>(&bytes).unwrap()
            })
            .collect();
        if until(&entries) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    entries
}

#[test]
fn refused_actions_show_as_refused_in_the_tenants_proof() {
    let dir = TempDir::new("outcomes");
    let host = host(&dir);
    let (t, admin) = host.create_tenant("acme", "crm");
    // Each refused, each with a clear 409.
    let refused = [
        (
            "tenant.reactivate",
            host.call(
                "POST",
                &format!("/v1/tenants/{t}/reactivate"),
                Some(&admin),
                None,
            ),
        ),
        (
            "tenant.upgrade",
            host.json(
                "POST",
                &format!("/v1/tenants/{t}/upgrade"),
                Some(&admin),
                json!({"schema_version": 1}),
            ),
        ),
        (
            "tenant.move",
            host.json(
                "POST",
                &format!("/v1/tenants/{t}/move"),
                Some(&admin),
                json!({"to_region": "mars"}),
            ),
        ),
    ];
    for (action, r) in &refused {
        assert_eq!(r.status, 409, "{action}: {}", r.text());
    }
    // And one that happens.
    let done = host.call("DELETE", &format!("/v1/tenants/{t}"), Some(&admin), None);
    assert_eq!(done.status, 202);
    let r = host.call(
        "POST",
        &format!("/v1/tenants/{t}/reactivate"),
        Some(&admin),
        None,
    );
    assert_eq!(r.status, 200);
    let outcome = |entries: &[Value], action: &str| -> Vec<String> {
        entries
            .iter()
            .filter(|e| e["kind"] == "action.outcome" && e["details"]["action"] == action)
            .map(|e| e["details"]["outcome"].as_str().unwrap().to_string())
            .collect()
    };
    let entries = proof_entries(&host, &t, &admin, |entries| {
        outcome(entries, "tenant.reactivate").len() == 2
    });
    assert_eq!(outcome(&entries, "tenant.reactivate"), ["refused", "done"]);
    assert_eq!(outcome(&entries, "tenant.upgrade"), ["refused"]);
    assert_eq!(outcome(&entries, "tenant.move"), ["refused"]);
    assert_eq!(outcome(&entries, "tenant.deactivate"), ["done"]);
    // No refused action appears as a deed.
    let kinds: Vec<&str> = entries
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "tenant.reactivated").count(),
        1,
        "{kinds:?}"
    );
    assert!(!kinds.contains(&"tenant.upgraded"), "{kinds:?}");
    assert!(!kinds.contains(&"tenant.move-started"), "{kinds:?}");
    let refusal = entries
        .iter()
        .find(|e| e["details"]["action"] == "tenant.upgrade")
        .unwrap();
    assert_eq!(refusal["details"]["status"], 409);
}

/// A tenant of `records` contacts with incompressible notes, loaded offline
/// (as a restore loads) into `data`, so that its export outgrows every socket
/// buffer on the way. Returns (tenant, admin token).
pub(crate) fn large_tenant_offline(data: &std::path::Path, records: u64) -> (String, String) {
    crate::support::tenant_offline(data, records, |i| {
        let mut x = (i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (0..900)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
                    [(x % 64) as usize] as char
            })
            .collect()
    })
}

/// Opens an export and reads nothing (or `read` bytes) of it.
pub(crate) fn open_export(
    host: &Host,
    tenant: &str,
    token: &str,
    read: usize,
) -> (TcpStream, Vec<u8>) {
    let mut stream = TcpStream::connect(host.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "GET /v1/tenants/{tenant}/export HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut got = vec![0u8; read];
    stream.read_exact(&mut got).unwrap();
    (stream, got)
}

#[test]
fn long_jobs_are_bounded_stalled_exports_are_cut_off_and_a_purge_ends_an_export() {
    let dir = TempDir::new("long-jobs");
    let data = dir.path().join("data");
    let (big, big_admin) = large_tenant_offline(&data, 16 * 1024);
    let host = Host::start_configured(
        &data,
        "[limits]\nlong_jobs_per_tenant = 2\nlong_jobs_total = 2\nstall_timeout = \"2s\"\n",
    );
    // Two exports whose clients read nothing hold the tenant's two slots.
    let stalled: Vec<_> = (0..2)
        .map(|_| open_export(&host, &big, &big_admin, 12))
        .collect();
    for (_, head) in &stalled {
        assert!(
            head.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(head)
        );
    }
    let third = host.call(
        "GET",
        &format!("/v1/tenants/{big}/export"),
        Some(&big_admin),
        None,
    );
    assert_eq!(third.status, 429, "{}", third.text());
    assert_eq!(third.header("retry-after"), Some("5"));
    assert!(third.error().contains("long jobs"), "{}", third.error());
    let backup = host.call(
        "POST",
        &format!("/v1/tenants/{big}/backups"),
        Some(&host.operator),
        None,
    );
    assert_eq!(backup.status, 429, "{}", backup.text());
    // The host says so, and still serves.
    let health = host.call("GET", "/healthz", None, None);
    assert_eq!(health.status, 200);
    assert_eq!(health.value()["status"], "degraded", "{}", health.text());
    // Every other tenant is served meanwhile, and operators too.
    let (small, small_admin) = host.create_tenant("small", "crm");
    let records = format!("/v1/tenants/{small}/collections/contacts/records");
    for i in 0..20 {
        let r = host.json(
            "POST",
            &records,
            Some(&small_admin),
            json!({"name": format!("c{i}")}),
        );
        assert_eq!(r.status, 201);
    }
    assert_eq!(
        host.call("GET", &records, Some(&small_admin), None).status,
        200
    );
    assert_eq!(
        host.call("GET", "/v1/tenants", Some(&host.operator), None)
            .status,
        200
    );
    // The stalled clients are cut off after the stall timeout, freeing their slots.
    let mut freed = false;
    for _ in 0..300 {
        if String::from_utf8_lossy(&host.log_text())
            .matches("read nothing")
            .count()
            >= 2
        {
            freed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(freed, "stalled exports were not ended");
    drop(stalled);
    let mut health = Value::Null;
    for _ in 0..50 {
        health = host.call("GET", "/healthz", None, None).value();
        if health["status"] == "ok" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(health["status"], "ok", "{health}");

    // An export being read while the tenant is purged ends without its manifest.
    let (mut reading, _) = open_export(&host, &big, &big_admin, 4096);
    let r = host.call(
        "POST",
        &format!("/v1/tenants/{big}/purge"),
        Some(&host.operator),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let mut rest = Vec::new();
    let _ = reading.read_to_end(&mut rest);
    assert!(
        !crate::support::contains(&rest, b"0\r\n\r\n"),
        "the stream ended as if complete"
    );
    let mut log = String::new();
    for _ in 0..100 {
        log = String::from_utf8_lossy(&host.log_text()).into_owned();
        if log.contains("during the export") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        log.contains("the tenant was destroyed during the export"),
        "{log}"
    );
}

#[test]
fn spellings_of_one_address_collide_on_a_case_insensitive_unique_field() {
    let dir = TempDir::new("unicode");
    let host = host(&dir);
    let (t, admin) = host.create_tenant("acme", "crm");
    let contacts = format!("/v1/tenants/{t}/collections/contacts/records");
    let post = |email: &str| {
        host.json(
            "POST",
            &contacts,
            Some(&admin),
            json!({"name": "someone", "email": email}),
        )
    };
    assert_eq!(post("Ren\u{e9}.Ana@Example.com").status, 201);
    // Decomposed "é", other cases: the same address.
    for variant in [
        "Rene\u{301}.Ana@Example.com",
        "ren\u{e9}.ana@example.com",
        "RENE\u{301}.ANA@EXAMPLE.COM",
    ] {
        let r = post(variant);
        assert_eq!(r.status, 409, "{variant}: {}", r.text());
    }
    let found = host
        .call(
            "GET",
            &format!("{contacts}?email=rene%CC%81.ana%40EXAMPLE.com"),
            Some(&admin),
            None,
        )
        .value();
    let found = found["records"].as_array().unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["email"], "Ren\u{e9}.Ana@Example.com");
    assert_eq!(
        host.call("GET", &contacts, Some(&admin), None).value()["records"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // A v2 tenant with two contacts that differ only in case cannot move to
    // v3 until one of them changes; then it can, and v3 compares as above.
    let r = host.json(
        "POST",
        "/v1/tenants",
        Some(&host.operator),
        json!({"name": "old", "region": "local", "schema": "crm", "schema_version": 2}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let (old, old_admin) = (
        r.value()["id"].as_str().unwrap().to_string(),
        r.value()["admin_token"].as_str().unwrap().to_string(),
    );
    let old_contacts = format!("/v1/tenants/{old}/collections/contacts/records");
    let mut ids = Vec::new();
    for email in ["bo@example.com", "Bo@Example.com"] {
        let r = host.json(
            "POST",
            &old_contacts,
            Some(&old_admin),
            json!({"name": "Bo", "email": email}),
        );
        assert_eq!(r.status, 201, "v2 compares case: {}", r.text());
        ids.push(r.value()["id"].as_str().unwrap().to_string());
    }
    let upgrade = |host: &Host| {
        host.json(
            "POST",
            &format!("/v1/tenants/{old}/upgrade"),
            Some(&old_admin),
            json!({"schema_version": 3}),
        )
    };
    let refused = upgrade(&host);
    assert_eq!(refused.status, 422, "{}", refused.text());
    assert!(
        refused.error().contains("same email"),
        "{}",
        refused.error()
    );
    let info = host.call("GET", &format!("/v1/tenants/{old}"), Some(&old_admin), None);
    assert_eq!(info.value()["schema_version"], 2);
    let r = host.json(
        "PUT",
        &format!("{old_contacts}/{}", ids[1]),
        Some(&old_admin),
        json!({"name": "Bo", "email": "bo.two@example.com"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let done = upgrade(&host);
    assert_eq!(done.status, 200, "{}", done.text());
    let r = host.json(
        "POST",
        &old_contacts,
        Some(&old_admin),
        json!({"name": "Bo", "email": "BO@EXAMPLE.COM"}),
    );
    assert_eq!(r.status, 409, "{}", r.text());
}

#[test]
fn a_finished_export_frees_its_slot_before_the_client_sees_its_end() {
    let dir = TempDir::new("export-slot");
    let host = Host::start_configured(
        &dir.path().join("data"),
        "[limits]\nlong_jobs_per_tenant = 1\nlong_jobs_total = 1\n",
    );
    let (t, a) = host.create_tenant("one-at-a-time", "crm");
    let r = host.json(
        "POST",
        &format!("/v1/tenants/{t}/collections/contacts/records"),
        Some(&a),
        json!({"name": "c"}),
    );
    assert_eq!(r.status, 201);
    // One slot in all: each export asked for the moment the last one was
    // read whole finds the slot free.
    for n in 0..20 {
        let r = host.call("GET", &format!("/v1/tenants/{t}/export"), Some(&a), None);
        assert_eq!(r.status, 200, "export {n}: {}", r.text());
    }
    // So does a job after a backup seen done, and after a restore answered.
    let backup = crate::support::backups::start_backup(&host, &t, &a);
    assert_eq!(backup["state"], "done", "{backup}");
    let backup = backup["id"].as_str().unwrap();
    for n in 0..5 {
        let r = host.json(
            "POST",
            &format!("/v1/tenants/{t}/backups/{backup}/restore"),
            Some(&a),
            json!({"name": format!("copy {n}")}),
        );
        assert_eq!(r.status, 201, "restore {n}: {}", r.text());
        let r = host.call("GET", &format!("/v1/tenants/{t}/export"), Some(&a), None);
        assert_eq!(r.status, 200, "export after restore {n}: {}", r.text());
    }
}
