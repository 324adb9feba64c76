//! The tamper-evident audit log: tampering found and named, checkpoints in the regions, fail closed, proof bundles verified offline.

use crate::support::grants::*;
use crate::support::{contains, Host, TempDir, BIN};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The journal of the audit log's first tile: every entry of a log shorter
/// than one tile (256), in the `[u32 length][entry]` records of the journal.
const JOURNAL: &str = "audit/journal/0000000000000000";

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
    let entries = std::fs::read(data.join(JOURNAL)).unwrap();
    let records = split_records(&entries);
    assert!(records.len() >= 8, "{}", records.len());
    let checkpoints = data.join("audit").join("checkpoints");

    type Tamper = Box<dyn Fn(&Path)>;
    let write_entries = |dir: &Path, records: &[Vec<u8>]| {
        std::fs::write(dir.join(JOURNAL), join_records(records)).unwrap()
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
                    std::fs::write(d.join(JOURNAL), &entries[..entries.len() - 7]).unwrap();
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
    let mut records = split_records(&std::fs::read(data.join(JOURNAL)).unwrap());
    let mut entry: Value = serde_json::from_slice(&records[2]).unwrap();
    entry["kind"] = json!("token.minted");
    records[2] = serde_json::to_vec(&entry).unwrap();
    for i in 3..records.len() {
        let mut e: Value = serde_json::from_slice(&records[i]).unwrap();
        e["prev"] = json!(leaf_hex(&records[i - 1]));
        records[i] = serde_json::to_vec(&e).unwrap();
    }
    std::fs::write(data.join(JOURNAL), join_records(&records)).unwrap();
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
    let entries = host.data_dir.join(JOURNAL);
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

/// A log longer than a few tiles (written through the library, as the host
/// writes it): a changed hash in a tile, or a changed entry in a bundle, is
/// named by `coffer audit verify`; the host refuses to start on the first.
#[test]
fn a_changed_tile_or_bundle_is_named_by_audit_verify() {
    let dir = TempDir::new("tiles");
    let data = dir.path().join("host");
    {
        let log = coffer::audit::AuditLog::open(&data, "test").unwrap();
        for i in 0..700 {
            let event = coffer::audit::Event::new("test.event", coffer::audit::Actor::host())
                .detail("i", i);
            log.append(event).unwrap();
        }
        log.checkpoint().unwrap();
    }
    let (ok, text) = audit_verify(&["--data-dir", data.to_str().unwrap()]);
    assert!(ok, "{text}");
    let tile = coffer::audit::tiles::tile_path(0, 1, 256);
    let bundle = coffer::audit::tiles::entries_path(0, 256);
    for (case, relative, expected) in [
        (
            "a hash in a tile",
            &tile,
            "tile/0/001 does not match the entries",
        ),
        ("an entry in a bundle", &bundle, "was altered"),
    ] {
        let copy = dir.path().join(format!("copy-{}", case.replace(' ', "-")));
        copy_dir(&data, &copy);
        let path = copy.join("audit").join(relative);
        let mut bytes = std::fs::read(&path).unwrap();
        // Inside the 10th hash, or inside the 10th entry's JSON.
        let at = if relative == &tile {
            32 * 10 + 5
        } else {
            let entries = coffer::audit::tiles::parse_bundle(&bytes).unwrap();
            let before: usize = entries[..10].iter().map(|e| e.len() + 2).sum();
            before + 2 + entries[10].iter().position(|b| *b == b'i').unwrap()
        };
        bytes[at] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let (ok, text) = audit_verify(&["--data-dir", copy.to_str().unwrap()]);
        assert!(!ok, "{case}: not detected: {text}");
        assert!(
            text.contains(expected),
            "{case}: expected {expected:?} in {text}"
        );
        if relative == &tile {
            let error = coffer::audit::AuditLog::open(&copy, "test").unwrap_err();
            assert!(
                error
                    .to_string()
                    .contains("does not match its newest checkpoint"),
                "{error}"
            );
        }
    }
}
