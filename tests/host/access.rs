//! Break-glass grants and the tamper-evident audit log, end to end.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{add_staff_offline, contains, Host, TempDir, BIN};

fn records(tenant: &str, collection: &str) -> String {
    format!("/v1/tenants/{tenant}/collections/{collection}/records")
}

/// A host with checkpoints every 200 ms and a clock the test moves.
fn host(dir: &TempDir, name: &str, clock: &Path) -> Host {
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
fn host_with_clock(dir: &TempDir) -> (PathBuf, Host) {
    let clock = dir.path().join("clock");
    std::fs::write(&clock, "0").unwrap();
    let host = host(dir, "data", &clock);
    (clock, host)
}

fn mint(host: &Host, role: &str, name: &str) -> String {
    let r = host.json(
        "POST",
        "/v1/tokens",
        Some(&host.operator),
        json!({"role": role, "name": name}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    r.value()["token"].as_str().unwrap().to_string()
}

fn ask(host: &Host, support: &str, body: Value) -> crate::support::Response {
    host.json("POST", "/v1/access-requests", Some(support), body)
}

fn request_id(host: &Host, support: &str, tenant: &str, scope: &str, extra: Value) -> String {
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

fn decide(host: &Host, who: &str, grant: &str, step: &str) -> crate::support::Response {
    host.call(
        "POST",
        &format!("/v1/access-requests/{grant}/{step}"),
        Some(who),
        None,
    )
}

fn with_grant(
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

fn count(host: &Host, tenant: &str, admin: &str, collection: &str) -> usize {
    let r = host.call(
        "GET",
        &format!("{}?limit=1000", records(tenant, collection)),
        Some(admin),
        None,
    );
    r.value()["records"].as_array().unwrap().len()
}

#[test]
fn grant_cases_each_refused_or_allowed_in_the_data_path() {
    let dir = TempDir::new("grants");
    // Staff whose identities the disk vouches for: no operator of this host
    // created alice, so both operators count for her emergency.
    let support = add_staff_offline(&dir.path().join("data"), "support", "alice");
    let op2 = add_staff_offline(&dir.path().join("data"), "operator", "second operator");
    let (clock, host) = host_with_clock(&dir);
    let (t, admin) = host.create_tenant("acme", "crm");
    let (other, other_admin) = host.create_tenant("other", "crm");
    let canary = "CANARY-grant-9d1e";
    let r = host.json(
        "POST",
        &records(&t, "contacts"),
        Some(&admin),
        json!({"name": canary}),
    );
    assert_eq!(r.status, 201);
    let contact = r.value()["id"].as_str().unwrap().to_string();
    host.json(
        "POST",
        &records(&t, "deals"),
        Some(&admin),
        json!({"title": "deal"}),
    );
    let support2 = mint(&host, "support", "bob");
    let new_contact = serde_json::to_vec(&json!({"name": "written by support"})).unwrap();

    // Grants in every state, each used by its requester.
    let pending = request_id(&host, &support, &t, "read", json!({}));
    let denied = request_id(&host, &support, &t, "read", json!({}));
    assert_eq!(
        decide(&host, &admin, &denied, "deny").value()["state"],
        "closed"
    );
    let revoked = request_id(&host, &support, &t, "read", json!({}));
    assert_eq!(
        decide(&host, &admin, &revoked, "approve").value()["state"],
        "active"
    );
    assert_eq!(
        decide(&host, &host.operator, &revoked, "revoke").value()["state"],
        "closed"
    );
    let read = request_id(
        &host,
        &support,
        &t,
        "read",
        json!({"collections": ["contacts"]}),
    );
    assert_eq!(decide(&host, &admin, &read, "approve").status, 200);
    let write = request_id(&host, &support, &t, "read-write", json!({}));
    assert_eq!(decide(&host, &admin, &write, "approve").status, 200);
    let other_tenants = request_id(&host, &support, &other, "read", json!({}));
    assert_eq!(
        decide(&host, &other_admin, &other_tenants, "approve").status,
        200
    );
    let emergency = request_id(&host, &support, &t, "read", json!({"emergency": true}));
    assert_eq!(
        decide(&host, &host.operator, &emergency, "approve").value()["state"],
        "pending"
    );

    // Decisions nobody may take.
    let self_approval = decide(&host, &support, &pending, "approve");
    assert_eq!(self_approval.status, 403, "{}", self_approval.text());
    assert!(
        self_approval.error().contains("own request"),
        "{}",
        self_approval.error()
    );
    let twice = decide(&host, &host.operator, &emergency, "approve");
    assert_eq!(twice.status, 409, "{}", twice.text());
    assert_eq!(decide(&host, &admin, &emergency, "approve").status, 403);
    assert_eq!(decide(&host, &other_admin, &pending, "approve").status, 404);
    assert_eq!(decide(&host, &admin, &denied, "approve").status, 409);
    assert_eq!(decide(&host, &support2, &pending, "approve").status, 404);

    let contacts = records(&t, "contacts");
    let one = format!("{contacts}/{contact}");
    // (case, method, path, grant, body, expected status)
    type Case<'a> = (
        &'a str,
        &'a str,
        String,
        Option<&'a str>,
        Option<&'a [u8]>,
        u16,
    );
    let cases: Vec<Case> = vec![
        ("no grant", "GET", one.clone(), None, None, 403),
        ("pending", "GET", one.clone(), Some(&pending), None, 403),
        ("denied", "GET", one.clone(), Some(&denied), None, 403),
        ("revoked", "GET", one.clone(), Some(&revoked), None, 403),
        (
            "wrong tenant",
            "GET",
            records(&t, "contacts"),
            Some(&other_tenants),
            None,
            403,
        ),
        (
            "read grant used to write",
            "POST",
            contacts.clone(),
            Some(&read),
            Some(&new_contact),
            403,
        ),
        (
            "collection outside scope",
            "GET",
            records(&t, "deals"),
            Some(&read),
            None,
            403,
        ),
        (
            "emergency with one operator",
            "GET",
            one.clone(),
            Some(&emergency),
            None,
            403,
        ),
        (
            "another engineer's grant",
            "GET",
            one.clone(),
            Some(&read),
            None,
            403,
        ),
        (
            "active read grant",
            "GET",
            one.clone(),
            Some(&read),
            None,
            200,
        ),
        (
            "active read-write grant",
            "POST",
            contacts.clone(),
            Some(&write),
            Some(&new_contact),
            201,
        ),
    ];
    for (case, method, path, grant, body, expected) in &cases {
        let token = if *case == "another engineer's grant" {
            &support2
        } else {
            &support
        };
        let before = count(&host, &t, &admin, "contacts");
        let r = match grant {
            Some(g) => with_grant(&host, method, path, token, g, *body),
            None => host.call(method, path, Some(token), *body),
        };
        assert_eq!(r.status, *expected, "{case}: {}", r.text());
        let after = count(&host, &t, &admin, "contacts");
        if *expected == 201 {
            assert_eq!(after, before + 1, "{case}");
        } else {
            assert_eq!(after, before, "{case}: something changed");
        }
        if *expected >= 400 {
            assert!(
                !contains(&r.body, canary.as_bytes()),
                "{case}: data in a refusal"
            );
        } else {
            assert!(
                contains(&r.body, canary.as_bytes()) || *expected == 201,
                "{case}"
            );
        }
    }
    // Operators never reach data, grant header or not.
    let r = with_grant(&host, "GET", &one, &host.operator, &read, None);
    assert_eq!(r.status, 403);

    // A second operator activates the emergency grant: read-only, visible to
    // the tenant at once with its reason.
    assert_eq!(
        decide(&host, &op2, &emergency, "approve").value()["state"],
        "active"
    );
    assert_eq!(
        with_grant(&host, "GET", &one, &support, &emergency, None).status,
        200
    );
    assert_eq!(
        with_grant(
            &host,
            "POST",
            &contacts,
            &support,
            &emergency,
            Some(&new_contact)
        )
        .status,
        403
    );
    let log = host.call(
        "GET",
        &format!("/v1/tenants/{t}/access-log"),
        Some(&admin),
        None,
    );
    assert_eq!(log.status, 200, "{}", log.text());
    let log = log.value();
    let shown = log["grants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["id"] == emergency.as_str())
        .unwrap()
        .clone();
    assert_eq!(shown["emergency"], true);
    assert_eq!(shown["reason"], "customer reports missing invoices");
    // Emergency grants: read-only and short.
    let r = ask(
        &host,
        &support,
        json!({"tenant": t, "scope": "read-write", "duration_minutes": 10,
                                       "reason": "r", "ticket": "t", "emergency": true}),
    );
    assert_eq!(r.status, 422, "{}", r.text());
    let r = ask(
        &host,
        &support,
        json!({"tenant": t, "scope": "read", "duration_minutes": 61,
                                       "reason": "r", "ticket": "t", "emergency": true}),
    );
    assert_eq!(r.status, 422, "{}", r.text());
    // Bad requests change nothing.
    for body in [
        json!({"tenant": t, "scope": "read", "duration_minutes": 241, "reason": "r", "ticket": "t"}),
        json!({"tenant": t, "scope": "admin", "duration_minutes": 5, "reason": "r", "ticket": "t"}),
        json!({"tenant": t, "scope": "read", "duration_minutes": 5, "reason": " ", "ticket": "t"}),
        json!({"tenant": t, "scope": "read", "duration_minutes": 5, "reason": "r"}),
        json!({"tenant": t, "scope": "read", "duration_minutes": 5, "reason": "r", "ticket": "t", "collections": ["nope"]}),
    ] {
        assert_eq!(ask(&host, &support, body.clone()).status, 422, "{body}");
    }
    assert_eq!(ask(&host, &admin, json!({"tenant": t, "scope": "read", "duration_minutes": 5, "reason": "r", "ticket": "t"})).status, 403);

    // Expiry without waiting: the host's clock moves 31 minutes on.
    assert_eq!(
        with_grant(&host, "GET", &one, &support, &write, None).status,
        200
    );
    std::fs::write(&clock, "1860").unwrap();
    let r = with_grant(&host, "GET", &one, &support, &write, None);
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.error().contains("closed (expired)"), "{}", r.error());
    // A pending request expires too (24 h by default), and never reopens.
    std::fs::write(&clock, (25 * 3600).to_string()).unwrap();
    assert_eq!(decide(&host, &admin, &pending, "approve").status, 409);
    let r = host.call(
        "GET",
        &format!("/v1/access-requests/{pending}"),
        Some(&support),
        None,
    );
    assert_eq!(r.value()["closed"]["because"], "expired", "{}", r.text());
}

#[test]
fn revoke_stops_the_next_request_and_every_access_is_in_the_tenants_log() {
    let dir = TempDir::new("revoke");
    let (_clock, host) = host_with_clock(&dir);
    let (t, admin) = host.create_tenant("acme", "crm");
    let r = host.json(
        "POST",
        &records(&t, "contacts"),
        Some(&admin),
        json!({"name": "Ada"}),
    );
    let contact = r.value()["id"].as_str().unwrap().to_string();
    let support = mint(&host, "support", "alice");
    let grant = request_id(&host, &support, &t, "read", json!({}));
    decide(&host, &admin, &grant, "approve");
    let one = format!("{}/{contact}", records(&t, "contacts"));

    // A stream of requests; the revoke lands between two of them.
    let mut statuses = Vec::new();
    for i in 0..20 {
        if i == 12 {
            assert_eq!(decide(&host, &admin, &grant, "revoke").status, 200);
        }
        statuses.push(with_grant(&host, "GET", &one, &support, &grant, None).status);
    }
    assert_eq!(&statuses[..12], &[200; 12]);
    assert_eq!(&statuses[12..], &[403; 8], "{statuses:?}");

    // Every request made with the grant is in the tenant's log, with the grant
    // id, the record and the outcome.
    let log = host
        .call(
            "GET",
            &format!("/v1/tenants/{t}/access-log"),
            Some(&admin),
            None,
        )
        .value();
    let accesses: Vec<&Value> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "grant.access" && e["grant"] == grant.as_str())
        .collect();
    assert_eq!(accesses.len(), 20, "{log}");
    assert!(accesses
        .iter()
        .all(|e| e["details"]["record"] == contact.as_str()));
    assert_eq!(
        accesses
            .iter()
            .filter(|e| e["details"]["outcome"] == 200)
            .count(),
        12
    );
    assert_eq!(
        accesses
            .iter()
            .filter(|e| e["details"]["outcome"] == 403)
            .count(),
        8
    );
    let kinds: Vec<&str> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for kind in ["grant.requested", "grant.activated", "grant.revoked"] {
        assert!(kinds.contains(&kind), "{kind} missing: {kinds:?}");
    }
    // The log holds no ticket or reason text: only their HMACs.
    let entries = std::fs::read(host.data_dir.join("audit").join("entries")).unwrap();
    assert!(!contains(&entries, b"SUP-1234"));
    assert!(!contains(&entries, b"missing invoices"));
    // Another tenant's admin and staff do not see this log.
    let (_, other_admin) = host.create_tenant("other", "crm");
    for token in [&other_admin, &host.operator, &support] {
        assert_eq!(
            host.call(
                "GET",
                &format!("/v1/tenants/{t}/access-log"),
                Some(token),
                None
            )
            .status,
            403
        );
    }
}

fn audit_verify(args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .args(["audit", "verify"])
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The records of an entries file: (length prefix + bytes) each.
fn split_records(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        out.push(bytes[at + 4..at + 4 + len].to_vec());
        at += 4 + len;
    }
    out
}

fn join_records(records: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        out.extend_from_slice(&(r.len() as u32).to_be_bytes());
        out.extend_from_slice(r);
    }
    out
}

fn leaf_hex(data: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&[0]);
    ctx.update(data);
    coffer::crypto::encode_hex(ctx.finish().as_ref())
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A host with some history, stopped cleanly (its last checkpoint signed).
fn history(dir: &TempDir) -> (PathBuf, String) {
    let (_clock, host) = host_with_clock(dir);
    let (t, admin) = host.create_tenant("acme", "crm");
    let support = mint(&host, "support", "alice");
    for _ in 0..3 {
        let g = request_id(&host, &support, &t, "read", json!({}));
        decide(&host, &admin, &g, "approve");
    }
    host.call(
        "GET",
        &format!("/v1/tenants/{t}/access-log"),
        Some(&admin),
        None,
    );
    let data = host.data_dir.clone();
    host.stop();
    (data, t)
}

#[test]
fn every_kind_of_tampering_is_found_and_named() {
    let dir = TempDir::new("tamper");
    let (data, _) = history(&dir);
    let (ok, text) = audit_verify(&["--data-dir", data.to_str().unwrap()]);
    assert!(ok, "{text}");
    let entries = std::fs::read(data.join("audit").join("entries")).unwrap();
    let records = split_records(&entries);
    assert!(records.len() >= 8, "{}", records.len());
    let checkpoints = data.join("audit").join("checkpoints");

    type Tamper = Box<dyn Fn(&Path)>;
    let write_entries = |dir: &Path, records: &[Vec<u8>]| {
        std::fs::write(dir.join("audit").join("entries"), join_records(records)).unwrap()
    };
    let r = records.clone();
    let cases: Vec<(&str, Tamper, &str)> = vec![
        (
            "edit a byte",
            Box::new({
                let r = r.clone();
                move |d: &Path| {
                    let mut r = r.clone();
                    let at = r[3].iter().position(|b| *b == b'"').unwrap() + 1;
                    r[3][at] ^= 0x01;
                    write_entries(d, &r);
                }
            }),
            "entry 3",
        ),
        (
            "delete an entry",
            Box::new({
                let r = r.clone();
                move |d: &Path| {
                    let mut r = r.clone();
                    r.remove(4);
                    write_entries(d, &r);
                }
            }),
            "entry 4",
        ),
        (
            "swap two",
            Box::new({
                let r = r.clone();
                move |d: &Path| {
                    let mut r = r.clone();
                    r.swap(2, 5);
                    write_entries(d, &r);
                }
            }),
            "entry 2",
        ),
        (
            "truncate mid-record",
            Box::new({
                let entries = entries.clone();
                move |d: &Path| {
                    std::fs::write(
                        d.join("audit").join("entries"),
                        &entries[..entries.len() - 7],
                    )
                    .unwrap();
                }
            }),
            "ends inside a record",
        ),
        (
            "truncate whole entries",
            Box::new({
                let r = r.clone();
                move |d: &Path| write_entries(d, &r[..r.len() - 2])
            }),
            "entries were removed from its end",
        ),
        (
            "append a forged entry",
            Box::new({
                let r = r.clone();
                move |d: &Path| {
                    let mut r = r.clone();
                    let n = r.len();
                    let forged = json!({"seq": n, "at": 1, "prev": leaf_hex(&r[n - 1]), "kind": "grant.revoked",
                                    "actor": {"role": "operator"}});
                    r.push(serde_json::to_vec(&forged).unwrap());
                    write_entries(d, &r);
                }
            }),
            "not yet under a signed checkpoint",
        ),
        (
            "replace a checkpoint",
            Box::new({
                let checkpoints = checkpoints.clone();
                move |d: &Path| {
                    let newest = std::fs::read_dir(&checkpoints)
                        .unwrap()
                        .filter_map(|e| e.ok())
                        .map(|e| e.file_name())
                        .max()
                        .unwrap();
                    let path = d.join("audit").join("checkpoints").join(&newest);
                    let text = std::fs::read_to_string(&path).unwrap();
                    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
                    lines[2] = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into();
                    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
                }
            }),
            "signature",
        ),
    ];
    for (case, tamper, expected) in cases {
        let copy = dir.path().join(format!("copy-{}", case.replace(' ', "-")));
        copy_dir(&data, &copy);
        tamper(&copy);
        // A well-chained entry after the newest checkpoint is an unsigned
        // tail: a warning naming it, and an error only with --strict.
        let strict = expected == "not yet under a signed checkpoint";
        if strict {
            let (ok, text) = audit_verify(&["--data-dir", copy.to_str().unwrap()]);
            assert!(ok, "{case}: {text}");
            assert!(
                text.contains("warning: entries") && text.contains(expected),
                "{case}: {text}"
            );
        }
        let mut args = vec!["--data-dir", copy.to_str().unwrap()];
        if strict {
            args.push("--strict");
        }
        let (ok, text) = audit_verify(&args);
        assert!(!ok, "{case}: not detected: {text}");
        assert!(
            text.contains(expected),
            "{case}: expected {expected:?} in {text}"
        );
        assert_eq!(text.trim().lines().count(), 1, "{case}: {text}");
    }
}

#[test]
fn a_rewritten_host_log_is_caught_against_the_checkpoints_in_the_regions() {
    let dir = TempDir::new("rewrite");
    let (data, _) = history(&dir);
    // An insider with root rewrites entry 2 and everything after it, re-chains
    // and re-signs with the host's own key: the host's files agree again…
    let audit = data.join("audit");
    let mut records = split_records(&std::fs::read(audit.join("entries")).unwrap());
    let mut entry: Value = serde_json::from_slice(&records[2]).unwrap();
    entry["kind"] = json!("token.minted");
    records[2] = serde_json::to_vec(&entry).unwrap();
    for i in 3..records.len() {
        let mut e: Value = serde_json::from_slice(&records[i]).unwrap();
        e["prev"] = json!(leaf_hex(&records[i - 1]));
        records[i] = serde_json::to_vec(&e).unwrap();
    }
    std::fs::write(audit.join("entries"), join_records(&records)).unwrap();
    for e in std::fs::read_dir(audit.join("checkpoints")).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    let seed = coffer::crypto::SecretKey::from_hex(
        &std::fs::read_to_string(audit.join("signing.key")).unwrap(),
    )
    .unwrap();
    let origin = std::fs::read_to_string(audit.join("origin"))
        .unwrap()
        .trim()
        .to_string();
    let signer = coffer::audit::note::Signer::new(&origin, &seed).unwrap();
    let mut tree = coffer::audit::merkle::Tree::new();
    for r in &records {
        tree.push(coffer::audit::merkle::leaf_hash(r));
    }
    let size = records.len() as u64;
    let note = signer.sign(&coffer::audit::note::Checkpoint {
        origin,
        size,
        root: tree.root(size),
    });
    std::fs::write(
        audit
            .join("checkpoints")
            .join(coffer::audit::checkpoint_name(size)),
        note,
    )
    .unwrap();
    let (ok, text) = audit_verify(&["--data-dir", data.to_str().unwrap()]);
    assert!(ok, "the rewrite is consistent on the host alone: {text}");
    // …but not with the copies the host wrote to its backup regions.
    let config = dir.path().join("verify.toml");
    std::fs::write(&config, "").unwrap();
    let (ok, text) = audit_verify(&[
        "--data-dir",
        data.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(!ok, "{text}");
    assert!(text.contains("in region local"), "{text}");
    assert!(text.contains("does not match the log"), "{text}");
}

#[test]
fn the_audited_action_does_not_happen_when_the_audit_log_cannot_be_written() {
    let dir = TempDir::new("failclosed");
    let (_clock, host) = host_with_clock(&dir);
    let (t, admin) = host.create_tenant("acme", "crm");
    let canary = "CANARY-failclosed-41aa";
    let r = host.json(
        "POST",
        &records(&t, "contacts"),
        Some(&admin),
        json!({"name": canary}),
    );
    let contact = r.value()["id"].as_str().unwrap().to_string();
    let support = mint(&host, "support", "alice");
    let grant = request_id(&host, &support, &t, "read", json!({}));
    decide(&host, &admin, &grant, "approve");
    let one = format!("{}/{contact}", records(&t, "contacts"));
    assert_eq!(
        with_grant(&host, "GET", &one, &support, &grant, None).status,
        200
    );

    // The audit log's file is replaced by a directory: nothing can be appended.
    let entries = host.data_dir.join("audit").join("entries");
    let aside = host.data_dir.join("audit").join("entries.aside");
    std::fs::rename(&entries, &aside).unwrap();
    std::fs::create_dir(&entries).unwrap();
    let started = Instant::now();
    let r = with_grant(&host, "GET", &one, &support, &grant, None);
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        !contains(&r.body, canary.as_bytes()),
        "data left with the refusal"
    );
    let r = ask(
        &host,
        &support,
        json!({"tenant": t, "scope": "read", "duration_minutes": 5,
                                        "reason": "r", "ticket": "t"}),
    );
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(started.elapsed() < Duration::from_secs(30));
    let grants_before = {
        std::fs::remove_dir(&entries).unwrap();
        std::fs::rename(&aside, &entries).unwrap();
        let log = host.call(
            "GET",
            &format!("/v1/tenants/{t}/access-log"),
            Some(&admin),
            None,
        );
        assert_eq!(log.status, 200, "{}", log.text());
        log.value()["grants"].as_array().unwrap().len()
    };
    // Nothing was created while the log was down; with it back, all works.
    assert_eq!(grants_before, 1);
    assert_eq!(
        with_grant(&host, "GET", &one, &support, &grant, None).status,
        200
    );
}

/// RFC 9162 §2.1.3.2, typed again here: the test's own check of the
/// host's inclusion proofs.
fn inclusion_ok(leaf: [u8; 32], index: u64, size: u64, proof: &[[u8; 32]], root: [u8; 32]) -> bool {
    let node = |l: &[u8; 32], r: &[u8; 32]| -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(&[1]);
        ctx.update(l);
        ctx.update(r);
        ctx.finish().as_ref().try_into().unwrap()
    };
    if index >= size {
        return false;
    }
    let (mut f, mut s, mut r) = (index, size - 1, leaf);
    for p in proof {
        if s == 0 {
            return false;
        }
        if f % 2 == 1 || f == s {
            r = node(p, &r);
            while f % 2 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && r == root
}

fn bundle_when_covering(host: &Host, t: &str, admin: &str, query: &str, entries: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = host.call(
            "GET",
            &format!("/v1/tenants/{t}/audit-proof{query}"),
            Some(admin),
            None,
        );
        if r.status == 200 && r.value()["entries"].as_array().unwrap().len() >= entries {
            return r.value();
        }
        assert!(Instant::now() < deadline, "{}", r.text());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn tenants_verify_their_proof_bundles_offline() {
    use base64::Engine;
    let dir = TempDir::new("bundle");
    let (_clock, host) = host_with_clock(&dir);
    let (t, admin) = host.create_tenant("acme", "crm");
    let (other, _) = host.create_tenant("other", "crm");
    let support = mint(&host, "support", "alice");
    let g = request_id(&host, &support, &t, "read", json!({}));
    decide(&host, &admin, &g, "approve");
    request_id(&host, &support, &other, "read", json!({}));
    let key = host.call("GET", "/v1/audit/public-key", None, None).value()["key"]
        .as_str()
        .unwrap()
        .to_string();

    let first = bundle_when_covering(&host, &t, &admin, "", 3);
    let file = dir.path().join("bundle.json");
    std::fs::write(&file, first.to_string()).unwrap();
    let (ok, text) = audit_verify(&["--bundle", file.to_str().unwrap(), "--public-key", &key]);
    assert!(ok, "{text}");
    // The test's own RFC 9162 check of every inclusion proof.
    let note = first["checkpoint"].as_str().unwrap();
    let root: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(note.lines().nth(2).unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let size = first["size"].as_u64().unwrap();
    for item in first["entries"].as_array().unwrap() {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(item["entry"].as_str().unwrap())
            .unwrap();
        let entry: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            entry["tenant"],
            t.as_str(),
            "another tenant's entry in the bundle"
        );
        let leaf: [u8; 32] = coffer::crypto::decode_hex(&leaf_hex(&bytes))
            .unwrap()
            .try_into()
            .unwrap();
        let proof: Vec<[u8; 32]> = item["proof"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                coffer::crypto::decode_hex(h.as_str().unwrap())
                    .unwrap()
                    .try_into()
                    .unwrap()
            })
            .collect();
        assert!(inclusion_ok(
            leaf,
            item["seq"].as_u64().unwrap(),
            size,
            &proof,
            root
        ));
    }
    // A bundle with an entry left out, or altered, or another key, fails.
    let mut gap = first.clone();
    gap["entries"].as_array_mut().unwrap().remove(1);
    let mut altered = first.clone();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(altered["entries"][0]["entry"].as_str().unwrap())
        .unwrap();
    let changed = String::from_utf8(bytes)
        .unwrap()
        .replace("tenant.created", "tenant.exported");
    altered["entries"][0]["entry"] =
        json!(base64::engine::general_purpose::STANDARD.encode(changed));
    for (case, bundle, expected) in [
        ("gap", gap, "missing"),
        ("altered", altered, "not in the signed tree"),
    ] {
        std::fs::write(&file, bundle.to_string()).unwrap();
        let (ok, text) = audit_verify(&["--bundle", file.to_str().unwrap(), "--public-key", &key]);
        assert!(!ok && text.contains(expected), "{case}: {text}");
    }
    // Later: the log grew; the tenant proves the new tree extends the one it saw.
    decide(&host, &admin, &g, "revoke");
    let seen_root = coffer::crypto::encode_hex(&root);
    let second = bundle_when_covering(&host, &t, &admin, &format!("?seen={size}"), 5);
    std::fs::write(&file, second.to_string()).unwrap();
    let seen = format!("{size}:{seen_root}");
    let (ok, text) = audit_verify(&[
        "--bundle",
        file.to_str().unwrap(),
        "--public-key",
        &key,
        "--seen",
        &seen,
    ]);
    assert!(ok, "{text}");
    let wrong = format!("{size}:{}", "00".repeat(32));
    let (ok, text) = audit_verify(&[
        "--bundle",
        file.to_str().unwrap(),
        "--public-key",
        &key,
        "--seen",
        &wrong,
    ]);
    assert!(!ok, "{text}");
}

#[test]
fn an_admin_is_recovered_only_by_two_operators_and_the_tenant_sees_it() {
    let dir = TempDir::new("recovery");
    let op2 = add_staff_offline(&dir.path().join("data"), "operator", "second operator");
    let (clock, host) = host_with_clock(&dir);
    let (t, admin) = host.create_tenant("acme", "crm");
    let r = host.json(
        "POST",
        &records(&t, "contacts"),
        Some(&admin),
        json!({"name": "Ada"}),
    );
    assert_eq!(r.status, 201);
    let support = mint(&host, "support", "alice");
    let body = json!({"reason": "the customer lost every admin token", "ticket": "SUP-77"});
    // Only operators ask; reason and ticket are required.
    for token in [&admin, &support] {
        let r = host.json(
            "POST",
            &format!("/v1/tenants/{t}/admin-recovery"),
            Some(token),
            body.clone(),
        );
        assert_eq!(r.status, 403, "{}", r.text());
    }
    let r = host.json(
        "POST",
        &format!("/v1/tenants/{t}/admin-recovery"),
        Some(&host.operator),
        json!({"reason": " ", "ticket": "x"}),
    );
    assert_eq!(r.status, 422);
    let r = host.json(
        "POST",
        &format!("/v1/tenants/{t}/admin-recovery"),
        Some(&host.operator),
        body,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.value()["state"], "waiting");
    assert!(r.value().get("admin_token").is_none());
    let id = r.value()["id"].as_str().unwrap().to_string();
    // Within the tenant's veto window (72 hours by default) nobody carries it out.
    let early = host.call(
        "POST",
        &format!("/v1/admin-recoveries/{id}/approve"),
        Some(&op2),
        None,
    );
    assert_eq!(early.status, 409, "{}", early.text());
    assert!(
        early.error().contains("waiting period"),
        "{}",
        early.error()
    );
    std::fs::write(&clock, (72 * 3600 + 60).to_string()).unwrap();
    let approve = |token: &str| {
        host.call(
            "POST",
            &format!("/v1/admin-recoveries/{id}/approve"),
            Some(token),
            None,
        )
    };
    // Not by the operator who asked, nor by anyone but an operator.
    assert_eq!(approve(&host.operator).status, 403);
    assert_eq!(approve(&admin).status, 403);
    assert_eq!(approve(&support).status, 403);
    let done = approve(&op2);
    assert_eq!(done.status, 200, "{}", done.text());
    assert_eq!(done.value()["state"], "completed");
    let token = done.value()["admin_token"].as_str().unwrap().to_string();
    assert_eq!(approve(&op2).status, 409, "a recovery is carried out once");
    // The new token is the tenant's admin; the tenant sees the recovery.
    let r = host.call("GET", &records(&t, "contacts"), Some(&token), None);
    assert_eq!(r.status, 200);
    let log = host
        .call(
            "GET",
            &format!("/v1/tenants/{t}/access-log"),
            Some(&token),
            None,
        )
        .value();
    assert_eq!(log["admin_recoveries"][0]["state"], "completed", "{log}");
    assert_eq!(
        log["admin_recoveries"][0]["reason"],
        "the customer lost every admin token"
    );
    let kinds: Vec<&str> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"admin-recovery.requested") && kinds.contains(&"admin-recovery.completed"),
        "{kinds:?}"
    );
    // Operators still cannot mint tenant-admin tokens directly.
    let r = host.json(
        "POST",
        "/v1/tokens",
        Some(&host.operator),
        json!({"role": "tenant-admin", "name": "x"}),
    );
    assert_eq!(r.status, 403);
}
