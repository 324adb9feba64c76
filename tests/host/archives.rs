//! Damaged and hostile archives: verify and import refuse them, with bounded resources.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use crate::support::archives::*;
use crate::support::records::*;
use crate::support::{run_ok, Host, TempDir, BIN};

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
