//! Exports, DR backups, restores, imports and verification, end to end.
//!
//! Over 800 lines because ten scenarios on six subjects (exports, DR backups,
//! damage, hostile archives, upgrades, tooling) still share it; one file per
//! subject is the open part of the structure work.

use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{contains, files_under, run_ok, Host, TempDir, BIN};

pub fn records_path(tenant: &str, collection: &str) -> String {
    format!("/v1/tenants/{tenant}/collections/{collection}/records")
}

/// All records of every collection of a tenant, by collection, sorted by id.
pub fn all_records(
    host: &Host,
    tenant: &str,
    token: &str,
    collections: &[&str],
) -> Vec<(String, Vec<Value>)> {
    collections
        .iter()
        .map(|c| {
            let r = host.call(
                "GET",
                &format!("{}?limit=1000", records_path(tenant, c)),
                Some(token),
                None,
            );
            assert_eq!(r.status, 200, "{}", r.text());
            (
                c.to_string(),
                r.value()["records"].as_array().unwrap().clone(),
            )
        })
        .collect()
}

pub const CRM: &[&str] = &["activities", "companies", "contacts", "deals"];

/// A crm tenant with records of every field type in every collection.
pub fn populated_tenant(host: &Host, name: &str) -> (String, String) {
    let (t, a) = host.create_tenant(name, "crm");
    let post = |c: &str, body: Value| {
        let r = host.json("POST", &records_path(&t, c), Some(&a), body);
        assert_eq!(r.status, 201, "{}", r.text());
        r.value()["id"].as_str().unwrap().to_string()
    };
    let company = post(
        "companies",
        json!({"name": "Acme", "domain": "acme.test", "employees": 12, "address": {"lines": ["1 Road", null], "geo": [51.5, -0.1]}}),
    );
    for i in 0..25 {
        let contact = post(
            "contacts",
            json!({"name": format!("Person {i} ünïcødé \"quoted\""), "email": format!("p{i}@acme.test"), "tags": ["a", i], "do_not_contact": i % 2 == 0}),
        );
        post(
            "deals",
            json!({"title": format!("Deal {i}"), "company_id": company, "contact_id": contact, "value": i as f64 * 1.25, "won": i % 3 == 0, "close_date": "2026-12-01T10:00:00+01:00"}),
        );
    }
    post(
        "activities",
        json!({"kind": "call", "at": "2026-11-23T09:00:00Z", "summary": "line\nbreak"}),
    );
    (t, a)
}

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

fn export(host: &Host, tenant: &str, token: &str) -> Vec<u8> {
    let r = host.call(
        "GET",
        &format!("/v1/tenants/{tenant}/export"),
        Some(token),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/zstd"));
    assert!(r
        .header("content-disposition")
        .unwrap()
        .contains(".tar.zst"));
    r.body
}

/// Unpacks an archive into (path, bytes) members, in order.
fn unpack(archive: &[u8]) -> Vec<(String, Vec<u8>)> {
    let decoder = zstd::stream::read::Decoder::new(archive).unwrap();
    let mut tar = tar::Archive::new(decoder);
    tar.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let path = String::from_utf8(e.path_bytes().to_vec()).unwrap();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (path, data)
        })
        .collect()
}

enum Kind {
    File,
    Symlink(&'static str),
    HardLink(&'static str),
    Device,
}

/// Packs members into a tar + zstd archive, writing raw header names (so that
/// hostile paths are possible).
fn pack(members: &[(&str, &[u8], Kind)]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, data, kind) in members {
        let mut header = tar::Header::new_gnu();
        let name = path.as_bytes();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_mode(0o644);
        match kind {
            Kind::File => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(data.len() as u64);
            }
            Kind::Symlink(target) | Kind::HardLink(target) => {
                header.set_entry_type(if matches!(kind, Kind::Symlink(_)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                });
                header.set_link_name(target).unwrap();
                header.set_size(0);
            }
            Kind::Device => {
                header.set_entry_type(tar::EntryType::Char);
                header.set_size(0);
            }
        }
        header.set_cksum();
        let body: &[u8] = if matches!(kind, Kind::File) {
            data
        } else {
            &[]
        };
        tar.append(&header, body).unwrap();
    }
    zstd::encode_all(&tar.into_inner().unwrap()[..], 3).unwrap()
}

fn repack(members: &[(String, Vec<u8>)]) -> Vec<u8> {
    let list: Vec<(&str, &[u8], Kind)> = members
        .iter()
        .map(|(p, d)| (p.as_str(), d.as_slice(), Kind::File))
        .collect();
    pack(&list)
}

/// The highest resident set size a process has had (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    coffer::crypto::encode_hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

fn tenant_count(host: &Host) -> usize {
    host.call("GET", "/v1/tenants", Some(&host.operator), None)
        .value()["tenants"]
        .as_array()
        .unwrap()
        .len()
}

fn import(host: &Host, name: &str, archive: &[u8]) -> crate::support::Response {
    host.call(
        "POST",
        &format!("/v1/tenants/import?name={name}"),
        Some(&host.operator),
        Some(archive),
    )
}

#[test]
fn export_opens_with_stock_tools_and_imports_identically() {
    let dir = TempDir::new("export");
    let host = Host::start(&dir.path().join("data"), &[]);
    let (t, a) = populated_tenant(&host, "Export Co");
    let archive = export(&host, &t, &a);

    // Stock tools: tar --zstd -xf, then every NDJSON line parses as JSON.
    let file = dir.path().join("export.tar.zst");
    std::fs::write(&file, &archive).unwrap();
    let out = dir.path().join("unpacked");
    std::fs::create_dir_all(&out).unwrap();
    let status = Command::new("tar")
        .arg("--zstd")
        .arg("-xf")
        .arg(&file)
        .arg("-C")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["format"], "coffer-archive");
    assert_eq!(manifest["tenant"]["id"], t.as_str());
    assert_eq!(manifest["schema"]["name"], "crm");
    let original = all_records(&host, &t, &a, CRM);
    for (collection, records) in &original {
        let text =
            std::fs::read_to_string(out.join(format!("collections/{collection}.ndjson"))).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(&lines, records, "{collection}");
        assert_eq!(manifest["counts"][collection], records.len());
    }
    for member in manifest["members"].as_array().unwrap() {
        let bytes = std::fs::read(out.join(member["path"].as_str().unwrap())).unwrap();
        assert_eq!(member["sha256"], sha256_hex(&bytes));
    }
    // The offline verifier agrees.
    let verified = Command::new(BIN)
        .args(["backup", "verify"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    let line = String::from_utf8_lossy(&verified.stdout);
    assert!(
        line.starts_with("ok: portable export") && line.contains("52 records"),
        "{line}"
    );

    // Import: a new tenant with the same records (ids included), under a new key.
    let r = import(&host, "Imported", &archive);
    assert_eq!(r.status, 201, "{}", r.text());
    let (copy, copy_admin) = (
        r.value()["id"].as_str().unwrap().to_string(),
        r.value()["admin_token"].as_str().unwrap().to_string(),
    );
    assert_ne!(copy, t);
    assert_eq!(all_records(&host, &copy, &copy_admin, CRM), original);
    // Indexes were rebuilt: lookups and uniqueness work in the copy.
    let r = host.call(
        "GET",
        &format!("{}?email=p3%40acme.test", records_path(&copy, "contacts")),
        Some(&copy_admin),
        None,
    );
    assert_eq!(r.value()["records"].as_array().unwrap().len(), 1);
    let dup = host.json(
        "POST",
        &records_path(&copy, "contacts"),
        Some(&copy_admin),
        json!({"name": "x", "email": "p3@acme.test"}),
    );
    assert_eq!(dup.status, 409);
    // The copy's admin is not the source's admin, and the other way round.
    assert_eq!(
        host.call("GET", &records_path(&copy, "contacts"), Some(&a), None)
            .status,
        403
    );
    assert_eq!(
        host.call(
            "GET",
            &records_path(&t, "contacts"),
            Some(&copy_admin),
            None
        )
        .status,
        403
    );
    // Only a tenant's admin exports; staff never see the plaintext archive.
    let agent = host.json(
        "POST",
        "/v1/tokens",
        Some(&host.operator),
        json!({"role": "backup-agent", "name": "agent"}),
    );
    let agent = agent.value()["token"].as_str().unwrap().to_string();
    for token in [&host.operator, &agent] {
        assert_eq!(
            host.call("GET", &format!("/v1/tenants/{t}/export"), Some(token), None)
                .status,
            403
        );
    }
    // Import is an operator's act only.
    assert_eq!(
        host.call(
            "POST",
            "/v1/tenants/import?name=x",
            Some(&a),
            Some(&archive)
        )
        .status,
        403
    );
}

#[test]
fn every_export_is_one_point_in_time_while_writes_continue() {
    let dir = TempDir::new("consistent");
    let host = Host::start(&dir.path().join("data"), &[]);
    let (t, a) = host.create_tenant("Consistent", "crm");
    let counter = host.json(
        "POST",
        &records_path(&t, "companies"),
        Some(&a),
        json!({"name": "counter", "employees": 0}),
    );
    let counter = counter.value()["id"].as_str().unwrap().to_string();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (addr, t, a, counter, stop) = (
            host.addr,
            t.clone(),
            a.clone(),
            counter.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || {
            let mut n = 0u64;
            let mut longest = std::time::Duration::ZERO;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) || n < 50 {
                n += 1;
                let started = std::time::Instant::now();
                let body = serde_json::to_vec(&json!({"title": n.to_string(), "value": n as f64}))
                    .unwrap();
                let r = crate::support::http(
                    addr,
                    "POST",
                    &records_path(&t, "deals"),
                    Some(&a),
                    Some(&body),
                    &[],
                );
                assert_eq!(r.status, 201);
                let body = serde_json::to_vec(&json!({"name": "counter", "employees": n})).unwrap();
                let r = crate::support::http(
                    addr,
                    "PUT",
                    &format!("{}/{counter}", records_path(&t, "companies")),
                    Some(&a),
                    Some(&body),
                    &[],
                );
                assert_eq!(r.status, 200);
                longest = longest.max(started.elapsed());
            }
            (n, longest)
        })
    };
    let mut prefixes = Vec::new();
    for _ in 0..6 {
        let members = unpack(&export(&host, &t, &a));
        let deals = &members
            .iter()
            .find(|(p, _)| p == "collections/deals.ndjson")
            .unwrap()
            .1;
        let mut numbers: Vec<u64> = String::from_utf8_lossy(deals)
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["title"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        numbers.sort();
        let k = numbers.len() as u64;
        assert_eq!(
            numbers,
            (1..=k).collect::<Vec<_>>(),
            "the export is not a gap-free prefix"
        );
        let companies = &members
            .iter()
            .find(|(p, _)| p == "collections/companies.ndjson")
            .unwrap()
            .1;
        let count: Value =
            serde_json::from_slice(companies.split(|b| *b == b'\n').next().unwrap()).unwrap();
        let c = count["employees"].as_u64().unwrap();
        // The writer inserts record n, and only then sets the counter to n: a
        // point in time between those two acknowledged writes holds k = c + 1.
        assert!(c == k || c + 1 == k, "counter {c} with records 1..{k}");
        prefixes.push(k);
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (written, longest) = writer.join().unwrap();
    println!("exports saw prefixes {prefixes:?} of {written} writes; longest write while exporting: {longest:?}");
    assert!(prefixes.windows(2).all(|w| w[0] <= w[1]));
    assert!(*prefixes.last().unwrap() <= written);
}

#[test]
fn dr_backup_restores_on_a_second_host_with_only_the_backup_key_and_store() {
    let dir = TempDir::new("dr");
    let store = dir.path().join("store");
    let key = dir.path().join("backup.key");
    std::fs::write(&key, "ab".repeat(32)).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let backup_args = [
        "--backup-store",
        store.to_str().unwrap(),
        "--backup-key-file",
        key.to_str().unwrap(),
    ];
    let first = Host::start(&dir.path().join("first"), &backup_args);
    let (t, a) = populated_tenant(&first, "Canary DR Co");
    let canary = "CANARY-dr-backup-4e1d";
    first.json(
        "POST",
        &records_path(&t, "contacts"),
        Some(&a),
        json!({"name": canary, "email": "canary@dr.test"}),
    );
    let original = all_records(&first, &t, &a, CRM);
    let agent = first.json(
        "POST",
        "/v1/tokens",
        Some(&first.operator),
        json!({"role": "backup-agent", "name": "agent"}),
    );
    let agent = agent.value()["token"].as_str().unwrap().to_string();
    let done = start_backup(&first, &t, &agent);
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["records"], 53);
    let backup = done["id"].as_str().unwrap().to_string();
    let done = wait_verified(&first, &t, &agent, &backup, &["local"]);
    assert_eq!(done["regions"]["local"]["state"], "verified", "{done}");
    let listed = first
        .call("GET", &format!("/v1/tenants/{t}/backups"), Some(&a), None)
        .value();
    assert_eq!(listed["backups"][0]["id"], backup.as_str());
    // Sealed: no plaintext in the store.
    for file in files_under(&store) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(!contains(&bytes, canary.as_bytes()), "{}", file.display());
        assert!(
            !contains(&bytes, b"Canary DR Co"),
            "tenant name in {}",
            file.display()
        );
    }
    // Restore on the same host: the admin gets a token; staff get none.
    let r = first.json(
        "POST",
        &format!("/v1/tenants/{t}/backups/{backup}/restore"),
        Some(&a),
        json!({"name": "same host"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let token = r.value()["admin_token"].as_str().unwrap().to_string();
    assert_eq!(
        all_records(&first, r.value()["id"].as_str().unwrap(), &token, CRM),
        original
    );
    let r = first.json(
        "POST",
        &format!("/v1/tenants/{t}/backups/{backup}/restore"),
        Some(&first.operator),
        json!({"name": "by operator"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(
        r.value().get("admin_token").is_none(),
        "an operator must not get a tenant's admin token"
    );
    let by_operator = r.value()["id"].as_str().unwrap().to_string();
    assert_eq!(
        first
            .call(
                "GET",
                &records_path(&by_operator, "contacts"),
                Some(&first.operator),
                None
            )
            .status,
        403
    );
    // ...and the source's admin reaches the copy with their own token.
    assert_eq!(all_records(&first, &by_operator, &a, CRM), original);
    first.kill();

    // The first host is gone. A second host has only the backup key and the store.
    let second = Host::start(&dir.path().join("second"), &backup_args);
    let agent2 = second.json(
        "POST",
        "/v1/tokens",
        Some(&second.operator),
        json!({"role": "backup-agent", "name": "agent"}),
    );
    let agent2 = agent2.value()["token"].as_str().unwrap().to_string();
    let listed = second.call(
        "GET",
        &format!("/v1/tenants/{t}/backups"),
        Some(&agent2),
        None,
    );
    assert_eq!(listed.status, 200, "{}", listed.text());
    assert_eq!(listed.value()["backups"][0]["state"], "done");
    let r = second.json(
        "POST",
        &format!("/v1/tenants/{t}/backups/{backup}/restore"),
        Some(&agent2),
        json!({"name": "recovered", "region": "local"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(r.value().get("admin_token").is_none());
    let recovered = r.value()["id"].as_str().unwrap().to_string();
    // The tenant's own admin token, minted on the lost host, opens the recovered tenant.
    assert_eq!(all_records(&second, &recovered, &a, CRM), original);
    assert_eq!(
        second
            .call(
                "GET",
                &records_path(&recovered, "contacts"),
                Some(&agent2),
                None
            )
            .status,
        403
    );
    second.stop();

    // A host with another backup key cannot open the backup, and creates nothing.
    let wrong = dir.path().join("wrong.key");
    std::fs::write(&wrong, "cd".repeat(32)).unwrap();
    std::fs::set_permissions(&wrong, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let third = Host::start(
        &dir.path().join("third"),
        &[
            "--backup-store",
            store.to_str().unwrap(),
            "--backup-key-file",
            wrong.to_str().unwrap(),
        ],
    );
    let r = third.json(
        "POST",
        &format!("/v1/tenants/{t}/backups/{backup}/restore"),
        Some(&third.operator),
        json!({"name": "nope"}),
    );
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.error().contains("wrong backup key"), "{}", r.error());
    assert_eq!(tenant_count(&third), 0);
    assert!(std::fs::read_dir(third.data_dir.join("staging"))
        .unwrap()
        .next()
        .is_none());
    assert!(std::fs::read_dir(third.data_dir.join("tenants"))
        .unwrap()
        .next()
        .is_none());

    // Verify the sealed object offline: with the key, without it, with the wrong one.
    let object = files_under(&store)
        .into_iter()
        .find(|f| f.extension().is_some_and(|e| e == "cfrdr"))
        .unwrap();
    let run = |extra: &[&Path]| {
        let mut cmd = Command::new(BIN);
        cmd.args(["backup", "verify"]).arg(&object);
        if let Some(k) = extra.first() {
            cmd.arg("--backup-key-file").arg(k);
        }
        cmd.output().unwrap()
    };
    let ok = run(&[&key]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("sealed DR backup"));
    let no_key = run(&[]);
    assert!(!no_key.status.success());
    assert!(String::from_utf8_lossy(&no_key.stderr).contains("--backup-key-file"));
    let wrong_key = run(&[&wrong]);
    assert!(String::from_utf8_lossy(&wrong_key.stderr).contains("wrong backup key"));
}

/// Damage to an archive: each kind found by `coffer backup verify` (non-zero exit,
/// a line naming what is wrong) and refused by import (422, nothing created).
#[test]
fn verify_and_import_refuse_every_kind_of_damage() {
    let dir = TempDir::new("damage");
    let host = Host::start(&dir.path().join("data"), &[]);
    let (t, a) = populated_tenant(&host, "Damage Co");
    let good = export(&host, &t, &a);
    let members = unpack(&good);
    // Format 2: schema.json first, manifest.json last.
    assert_eq!(members[0].0, "schema.json");
    let last = members.len() - 1;
    assert_eq!(members[last].0, "manifest.json");
    let manifest: Value = serde_json::from_slice(&members[last].1).unwrap();
    assert_eq!(manifest["format_version"], 2);
    let with_manifest = |edit: &dyn Fn(&mut Value)| {
        let mut m = manifest.clone();
        edit(&mut m);
        let mut out = members.clone();
        out[last].1 = serde_json::to_vec(&m).unwrap();
        repack(&out)
    };
    let contacts = members
        .iter()
        .position(|(p, _)| p == "collections/contacts.ndjson")
        .unwrap();
    let with_contacts = |new: Vec<u8>, fix_manifest: bool| {
        let mut out = members.clone();
        out[contacts].1 = new.clone();
        if fix_manifest {
            let mut m = manifest.clone();
            for member in m["members"].as_array_mut().unwrap() {
                if member["path"] == "collections/contacts.ndjson" {
                    member["size"] = json!(new.len());
                    member["sha256"] = json!(sha256_hex(&new));
                }
            }
            out[last].1 = serde_json::to_vec(&m).unwrap();
        }
        repack(&out)
    };
    let first_contact = String::from_utf8(members[contacts].1.clone()).unwrap();
    let first_line = first_contact.lines().next().unwrap().to_string();
    let mut reversed: Vec<&str> = first_contact.lines().collect();
    reversed.reverse();
    let reversed = reversed
        .iter()
        .map(|l| format!("{l}\n"))
        .collect::<String>();
    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x20;
    let mut without = members.clone();
    without.remove(contacts);
    let mut extra = members.clone();
    extra.insert(last, ("collections/evil.ndjson".into(), b"{}\n".to_vec()));
    let mut twice = members.clone();
    twice.insert(last, members[contacts].clone());
    let mut after = members.clone();
    after.push(("notes.txt".into(), b"hello".to_vec()));
    let mut no_manifest = members.clone();
    no_manifest.pop();
    let mut schema_late = members.clone();
    let schema = schema_late.remove(0);
    schema_late.insert(last - 1, schema);
    let mut other_schema: Value = serde_json::from_slice(&members[0].1).unwrap();
    other_schema["name"] = json!("nope");
    let mut unknown_schema = members.clone();
    unknown_schema[0].1 = serde_json::to_vec(&other_schema).unwrap();
    let mut edited_schema: Value = serde_json::from_slice(&members[0].1).unwrap();
    edited_schema["collections"]["contacts"]["description"] = json!("mine now");
    let mut altered_schema = members.clone();
    altered_schema[0].1 = serde_json::to_vec(&edited_schema).unwrap();

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated",
            good[..good.len() * 2 / 3].to_vec(),
            "truncated",
        ),
        ("flipped bit", flipped, ""),
        ("not zstd", b"PK\x03\x04 a zip file".to_vec(), "zstd"),
        ("empty", Vec::new(), ""),
        ("member missing", repack(&without), "missing"),
        ("extra member", repack(&extra), "unexpected member"),
        ("member twice", repack(&twice), "twice"),
        (
            "member after the manifest",
            repack(&after),
            "after manifest.json",
        ),
        (
            "manifest missing",
            repack(&no_manifest),
            "manifest.json is missing",
        ),
        (
            "schema after collections",
            repack(&schema_late),
            "schema.json must come before",
        ),
        ("unknown schema", repack(&unknown_schema), "unknown schema"),
        (
            "schema altered",
            repack(&altered_schema),
            "schema.json differs",
        ),
        (
            "manifest count lies",
            with_manifest(&|m| m["counts"]["contacts"] = json!(99)),
            "manifest counts 99",
        ),
        (
            "manifest hash lies",
            with_manifest(&|m| m["members"][2]["sha256"] = json!("00".repeat(32))),
            "SHA-256",
        ),
        (
            "manifest size lies",
            with_manifest(&|m| m["members"][2]["size"] = json!(3)),
            "the manifest says 3",
        ),
        (
            "manifest names another schema",
            with_manifest(&|m| m["schema"]["name"] = json!("nope")),
            "names schema nope",
        ),
        (
            "future format",
            with_manifest(&|m| m["format_version"] = json!(9)),
            "unsupported archive format",
        ),
        (
            "format 1 manifest at the end",
            with_manifest(&|m| m["format_version"] = json!(1)),
            "sits where format 2 puts it",
        ),
        (
            "ids out of order",
            with_contacts(reversed.into_bytes(), true),
            "out of order",
        ),
        (
            "record violates schema",
            with_contacts(
                format!(
                    "{}\n{{\"id\":\"{}\",\"name\":7}}\n",
                    first_line,
                    "f".repeat(32)
                )
                .into_bytes(),
                true,
            ),
            "must be a string",
        ),
        (
            "record without id",
            with_contacts(b"{\"name\":\"x\"}\n".to_vec(), true),
            "\"id\"",
        ),
        (
            "repeated id",
            with_contacts(format!("{first_line}\n{first_line}\n").into_bytes(), true),
            "repeats",
        ),
        (
            "not JSON",
            with_contacts(b"{nope\n".to_vec(), true),
            "not JSON",
        ),
        (
            "content changed, manifest not",
            with_contacts(
                first_contact.replace("Person", "Pers0n").into_bytes(),
                false,
            ),
            "SHA-256",
        ),
    ];
    let before = tenant_count(&host);
    for (name, archive, fragment) in &cases {
        let file = dir.path().join("damaged.tar.zst");
        std::fs::write(&file, archive).unwrap();
        let out = Command::new(BIN)
            .args(["backup", "verify"])
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: verify passed");
        assert_eq!(stderr.trim().lines().count(), 1, "{name}: {stderr}");
        assert!(
            stderr.contains(fragment),
            "{name}: {stderr:?} lacks {fragment:?}"
        );
        let r = import(&host, "damaged", archive);
        assert_eq!(r.status, 422, "{name}: {}", r.text());
        assert!(r.error().contains(fragment), "{name}: {:?}", r.error());
    }
    assert_eq!(
        tenant_count(&host),
        before,
        "a refused import left a tenant behind"
    );
    let data = &host.data_dir;
    assert!(
        std::fs::read_dir(data.join("staging"))
            .unwrap()
            .next()
            .is_none(),
        "staging not cleaned"
    );
    let tenant_dirs = std::fs::read_dir(data.join("tenants")).unwrap().count();
    assert_eq!(tenant_dirs, before);

    // Archives written in format 1 (manifest first, before 2026-11-23) still
    // verify and restore, with every record.
    let mut v1_manifest = manifest.clone();
    v1_manifest["format_version"] = json!(1);
    let mut v1 = vec![(
        "manifest.json".to_string(),
        serde_json::to_vec(&v1_manifest).unwrap(),
    )];
    v1.extend(members[..last].iter().cloned());
    let v1 = repack(&v1);
    let file = dir.path().join("format-1.tar.zst");
    std::fs::write(&file, &v1).unwrap();
    let out = run_ok(Command::new(BIN).args(["backup", "verify"]).arg(&file));
    assert!(String::from_utf8_lossy(&out.stdout).contains("52 records"));
    let r = import(&host, "format-1", &v1);
    assert_eq!(r.status, 201, "{}", r.text());
    let copy = r.value()["id"].as_str().unwrap().to_string();
    let copy_admin = r.value()["admin_token"].as_str().unwrap().to_string();
    assert_eq!(
        all_records(&host, &copy, &copy_admin, CRM),
        all_records(&host, &t, &a, CRM)
    );
}

#[test]
fn hostile_archives_are_refused_with_bounded_resources() {
    let dir = TempDir::new("hostile");
    let config = dir.path().join("coffer.toml");
    std::fs::write(
        &config,
        "[backup]\nmax_archive_bytes = 8000000\nmax_import_bytes = 4000000\n",
    )
    .unwrap();
    let host = Host::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let (t, a) = host.create_tenant("Hostile", "crm");
    host.json(
        "POST",
        &records_path(&t, "contacts"),
        Some(&a),
        json!({"name": "x"}),
    );
    let good = unpack(&export(&host, &t, &a));
    let schema = good[0].1.clone();
    assert_eq!(good[0].0, "schema.json");
    // Zeros compress about 10,000:1. Under the decompressed cap (8 MB here) but
    // with no newline: the line limit stops it. Over the cap: the header does.
    let bomb = vec![0u8; 7_000_000];
    let big_bomb = vec![0u8; 50_000_000];
    let huge_line = format!(
        "{{\"id\":\"{}\",\"name\":\"{}\"}}\n",
        "a".repeat(32),
        "x".repeat(3_000_000)
    )
    .into_bytes();
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "path traversal",
            pack(&[
                ("schema.json", &schema, Kind::File),
                ("../../evil", b"x", Kind::File),
            ]),
            422,
            "escapes",
        ),
        (
            "absolute path",
            pack(&[
                ("schema.json", &schema, Kind::File),
                ("/etc/cron.d/evil", b"x", Kind::File),
            ]),
            422,
            "escapes",
        ),
        (
            "symlink",
            pack(&[("schema.json", b"", Kind::Symlink("/etc/passwd"))]),
            422,
            "symbolic link",
        ),
        (
            "hard link",
            pack(&[
                ("schema.json", &schema, Kind::File),
                (
                    "collections/contacts.ndjson",
                    b"",
                    Kind::HardLink("/etc/shadow"),
                ),
            ]),
            422,
            "hard link",
        ),
        (
            "device",
            pack(&[
                ("schema.json", &schema, Kind::File),
                ("collections/contacts.ndjson", b"", Kind::Device),
            ]),
            422,
            "device",
        ),
        (
            "manifest is a link",
            pack(&[
                ("schema.json", &schema, Kind::File),
                ("manifest.json", b"", Kind::Symlink("/etc/passwd")),
            ]),
            422,
            "symbolic link",
        ),
        (
            "something else first",
            pack(&[("notes.txt", b"{}", Kind::File)]),
            422,
            "first member must be schema.json",
        ),
        (
            "zstd bomb of zeros",
            pack(&[
                ("schema.json", &schema, Kind::File),
                ("collections/contacts.ndjson", &bomb, Kind::File),
            ]),
            422,
            "longer than",
        ),
        (
            "member declared beyond the cap",
            pack(&[
                ("schema.json", &schema, Kind::File),
                ("collections/contacts.ndjson", &big_bomb, Kind::File),
            ]),
            422,
            "beyond the limit",
        ),
        (
            "enormous record",
            pack(&[
                ("schema.json", &schema, Kind::File),
                ("collections/activities.ndjson", &huge_line, Kind::File),
            ]),
            422,
            "longer than",
        ),
        (
            "huge manifest (format 1, first)",
            pack(&[("manifest.json", &vec![b' '; 6_000_000], Kind::File)]),
            422,
            "larger than",
        ),
        (
            "huge manifest (last)",
            pack(&[
                ("schema.json", &schema, Kind::File),
                ("manifest.json", &vec![b' '; 6_000_000], Kind::File),
            ]),
            422,
            "larger than",
        ),
        (
            "huge schema",
            pack(&[("schema.json", &vec![b' '; 6_000_000], Kind::File)]),
            422,
            "larger than",
        ),
        (
            "body over the upload limit",
            vec![7u8; 5_000_000],
            413,
            "larger than",
        ),
    ];
    let before = tenant_count(&host);
    for (name, archive, status, fragment) in &cases {
        let r = import(&host, "hostile", archive);
        assert_eq!(r.status, *status, "{name}: {}", r.text());
        assert!(
            r.error().contains(fragment),
            "{name}: {:?} lacks {fragment:?}",
            r.error()
        );
    }
    assert_eq!(tenant_count(&host), before);
    assert!(std::fs::read_dir(host.data_dir.join("staging"))
        .unwrap()
        .next()
        .is_none());
    for evil in ["evil", "../evil", "../../evil"] {
        assert!(!host.data_dir.join(evil).exists());
    }
    assert!(!Path::new("/etc/cron.d/evil").exists());

    // A bomb of valid records: tiny compressed, far past the decompressed cap.
    let lines: Vec<u8> = (0..250_000u64)
        .flat_map(|i| format!("{{\"id\":\"{i:032x}\",\"name\":\"x\"}}\n").into_bytes())
        .collect();
    // Each member under the cap (so no header refuses it), together over it.
    let half = &lines[..lines.len() / 2];
    let valid_bomb = pack(&[
        ("schema.json", &schema, Kind::File),
        ("collections/companies.ndjson", half, Kind::File),
        ("collections/contacts.ndjson", half, Kind::File),
    ]);
    assert!(valid_bomb.len() < lines.len() / 10);
    let file = dir.path().join("bomb.tar.zst");
    std::fs::write(&file, &valid_bomb).unwrap();
    let out = Command::new(BIN)
        .args(["backup", "verify", "--max-bytes", "8000000"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("expands beyond the limit of 8000000 bytes"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let peak_kib = peak_rss_kib(host.pid());
    assert!(
        peak_kib < 200 * 1024,
        "the host's peak RSS reached {peak_kib} KiB on hostile archives"
    );
}

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

#[test]
fn scheduled_backups_run_on_their_own() {
    let dir = TempDir::new("schedule");
    let host = Host::start(&dir.path().join("data"), &["--backup-interval", "1s"]);
    let (t, a) = host.create_tenant("Scheduled", "helpdesk");
    host.json(
        "POST",
        &records_path(&t, "customers"),
        Some(&a),
        json!({"name": "c", "email": "c@x"}),
    );
    let r = host.json(
        "PUT",
        &format!("/v1/tenants/{t}/backup-schedule"),
        Some(&a),
        json!({"interval_hours": 24}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        host.json(
            "PUT",
            &format!("/v1/tenants/{t}/backup-schedule"),
            Some(&a),
            json!({"hours": 1})
        )
        .status,
        422
    );
    let mut scheduled = Vec::new();
    for _ in 0..100 {
        let list = host
            .call("GET", &format!("/v1/tenants/{t}/backups"), Some(&a), None)
            .value();
        scheduled = list["backups"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["kind"] == "scheduled" && b["state"] == "done")
            .cloned()
            .collect();
        if !scheduled.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(!scheduled.is_empty(), "no scheduled backup ran");
    // With a 24 h schedule of its own, the tenant gets one backup, not one a second.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let list = host
        .call("GET", &format!("/v1/tenants/{t}/backups"), Some(&a), None)
        .value();
    let count = list["backups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["kind"] == "scheduled")
        .count();
    assert_eq!(count, 1);
}

#[test]
fn age_encrypted_export_opens_with_the_age_tool_and_tar() {
    let dir = TempDir::new("age");
    let host = Host::start(&dir.path().join("data"), &[]);
    let (t, a) = populated_tenant(&host, "Age Co");
    let identity = dir.path().join("tenant-key.txt");
    let keygen = Command::new("age-keygen")
        .arg("-o")
        .arg(&identity)
        .output()
        .expect("age-keygen (Debian package age) must be installed");
    assert!(keygen.status.success());
    let recipient = String::from_utf8_lossy(&keygen.stderr)
        .split_whitespace()
        .find(|w| w.starts_with("age1"))
        .expect("age-keygen prints the public key")
        .to_string();
    let r = host.call(
        "GET",
        &format!("/v1/tenants/{t}/export?recipient={recipient}"),
        Some(&a),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r
        .header("content-disposition")
        .unwrap()
        .contains(".tar.zst.age"));
    assert!(r.body.starts_with(b"age-encryption.org/v1\n"));
    assert!(
        !contains(&r.body, b"p1@acme.test"),
        "plaintext inside the age file"
    );
    let sealed = dir.path().join("export.tar.zst.age");
    std::fs::write(&sealed, &r.body).unwrap();
    let plain = dir.path().join("export.tar.zst");
    let out = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(&identity)
        .arg("-o")
        .arg(&plain)
        .arg(&sealed)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "age -d: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = Command::new("tar")
        .arg("--zstd")
        .arg("-tf")
        .arg(&plain)
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&listing.stdout);
    assert!(
        names.lines().next() == Some("schema.json")
            && names.lines().last() == Some("manifest.json")
            && names.contains("collections/contacts.ndjson"),
        "{names}"
    );
    let members = unpack(&std::fs::read(&plain).unwrap());
    let contacts = &members
        .iter()
        .find(|(p, _)| p == "collections/contacts.ndjson")
        .unwrap()
        .1;
    assert_eq!(String::from_utf8_lossy(contacts).lines().count(), 25);
    // A damaged age file is refused by age itself.
    let mut damaged = r.body.clone();
    let last = damaged.len() - 10;
    damaged[last] ^= 1;
    std::fs::write(&sealed, &damaged).unwrap();
    let out = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(&identity)
        .arg(&sealed)
        .output()
        .unwrap();
    assert!(!out.status.success());
    // A recipient that is not one is a 400, not a stream.
    for bad in ["age1nope", "npub1abc", ""] {
        let r = host.call(
            "GET",
            &format!("/v1/tenants/{t}/export?recipient={bad}"),
            Some(&a),
            None,
        );
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert!(r.error().contains("age X25519 recipient"));
    }
}

#[test]
fn backup_tooling_cli_exports_lists_and_restores_against_a_running_host() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("cli");
    let host = Host::start(&dir.path().join("data"), &[]);
    let (t, a) = populated_tenant(&host, "Cli Co");
    let url = format!("http://{}", host.addr);
    let token_file = |name: &str, token: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, token).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    };
    let admin_file = token_file("admin.token", &a);
    let operator_file = token_file("operator.token", &host.operator);
    let cli = |args: &[&str], token: &Path| {
        Command::new(BIN)
            .args(["backup"])
            .args(args)
            .args(["--url", &url, "--token-file"])
            .arg(token)
            .output()
            .unwrap()
    };

    // export → a file the verifier accepts, with no partial file left behind.
    let out_file = dir.path().join("cli-export.tar.zst");
    let out = cli(
        &["export", "--tenant", &t, "-o", out_file.to_str().unwrap()],
        &admin_file,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Piped, the output is machine-readable without asking.
    let exported: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(exported["bytes"].as_u64().unwrap() > 0, "{exported}");
    let verified = Command::new(BIN)
        .args(["backup", "verify", "--json"])
        .arg(&out_file)
        .output()
        .unwrap();
    assert!(verified.status.success());
    let report: Value = serde_json::from_slice(&verified.stdout).unwrap();
    assert_eq!(report["records"], 52);
    assert!(!out_file.with_extension("partial").exists());

    // The operator may not export: one clear line, non-zero, no file.
    let denied_file = dir.path().join("denied.tar.zst");
    let out = cli(
        &[
            "export",
            "--tenant",
            &t,
            "-o",
            denied_file.to_str().unwrap(),
        ],
        &operator_file,
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("403"), "{stderr}");
    assert!(!denied_file.exists() && !denied_file.with_extension("partial").exists());

    // list and restore, machine-readable.
    let backup = start_backup(&host, &t, &host.operator);
    let out = cli(&["list", "--tenant", &t, "--json"], &operator_file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["backups"][0]["id"], backup["id"]);
    let out = cli(
        &[
            "restore",
            "--tenant",
            &t,
            "--backup",
            backup["id"].as_str().unwrap(),
            "--name",
            "From CLI",
            "--json",
        ],
        &operator_file,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(restored.get("admin_token").is_none());
    assert_eq!(
        all_records(&host, restored["id"].as_str().unwrap(), &a, CRM),
        all_records(&host, &t, &a, CRM)
    );

    // A token file others can read is refused before anything is sent.
    let loose = dir.path().join("loose.token");
    std::fs::write(&loose, &a).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = cli(&["list", "--tenant", &t], &loose);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("0600"));
}

/// Fills a tenant of about `mib` MiB of 1 KiB contacts through the storage
/// layer (before the host starts; loaded as a restore loads), with the keys
/// the host will load. Returns (tenant id, admin token, records).
fn populate_offline(data: &Path, mib: u64) -> (String, String, u64) {
    let records = mib * 1024;
    let (tenant, admin) = crate::support::tenant_offline(data, records, |i| {
        format!("{i} ").repeat(900 / format!("{i} ").len())
    });
    (tenant, admin, records)
}

/// An export of a ~1 GiB tenant (`COFFER_TEST_LARGE_MIB` to change the size)
/// comes out whole, checked as a streaming reader checks it (each member's
/// SHA-256 and every count against the manifest at the end), while the host's
/// peak RSS stays far below the tenant's size: the export streams, it does not
/// hold the tenant. (The aim of 64 MiB flat is not met: sled keeps pages of a
/// tenant it has read; see benches/RESULTS.md.)
#[test]
fn a_one_gib_tenant_exports_whole_in_bounded_memory() {
    let mib: u64 = std::env::var("COFFER_TEST_LARGE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let dir = TempDir::new("large-export");
    let data = dir.path().join("data");
    // The host sets up its data directory (keys, operator token) first.
    Host::start(&data, &[]).stop();
    let (tenant, admin, records) = populate_offline(&data, mib);
    let host = Host::start(&data, &["--backup-interval", "0s"]);
    let started_kib = peak_rss_kib(host.pid());
    let r = host.call(
        "GET",
        &format!("{}?limit=1", records_path(&tenant, "contacts")),
        Some(&admin),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let opened_kib = peak_rss_kib(host.pid());
    let r = host.call(
        "GET",
        &format!("/v1/tenants/{tenant}/export"),
        Some(&admin),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let peak_kib = peak_rss_kib(host.pid());
    eprintln!(
        "host peak RSS: started {} MiB, tenant opened {} MiB, after the export {} MiB",
        started_kib / 1024,
        opened_kib / 1024,
        peak_kib / 1024
    );

    let mut tar = tar::Archive::new(zstd::stream::read::Decoder::new(&r.body[..]).unwrap());
    let mut seen = std::collections::BTreeMap::new();
    let mut manifest = None;
    let mut lines = 0u64;
    let mut ndjson_bytes = 0u64;
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = String::from_utf8(entry.path_bytes().to_vec()).unwrap();
        let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buffer = vec![0u8; 1 << 16];
        let (mut size, mut newlines) = (0u64, 0u64);
        loop {
            let n = entry.read(&mut buffer).unwrap();
            if n == 0 {
                break;
            }
            if path == "manifest.json" {
                manifest
                    .get_or_insert_with(Vec::new)
                    .extend_from_slice(&buffer[..n]);
            }
            hasher.update(&buffer[..n]);
            newlines += buffer[..n].iter().filter(|b| **b == b'\n').count() as u64;
            size += n as u64;
        }
        if path.starts_with("collections/") {
            lines += newlines;
            ndjson_bytes += size;
        }
        let digest = coffer::crypto::encode_hex(hasher.finish().as_ref());
        seen.insert(path, (size, digest));
    }
    let manifest: Value = serde_json::from_slice(&manifest.expect("a manifest")).unwrap();
    assert_eq!(manifest["counts"]["contacts"], records);
    assert_eq!(lines, records);
    let members = manifest["members"].as_array().unwrap();
    assert_eq!(members.len() + 1, seen.len());
    for member in members {
        let (size, digest) = &seen[member["path"].as_str().unwrap()];
        assert_eq!(member["size"], *size);
        assert_eq!(member["sha256"], digest.as_str());
    }
    assert!(
        ndjson_bytes > (mib << 20) * 9 / 10,
        "{ndjson_bytes} bytes of NDJSON"
    );
    eprintln!(
        "exported {records} records, {ndjson_bytes} bytes of NDJSON; host peak RSS {} MiB",
        peak_kib / 1024
    );
    assert!(
        peak_kib * 1024 < ndjson_bytes / 2,
        "the host's peak RSS ({peak_kib} KiB) reached half the tenant ({ndjson_bytes} bytes)"
    );
    host.stop();
}
