//! Unit tests of one tenant's database, on real sled files in a temporary
//! directory.

use std::sync::Arc;

use super::*;
use crate::crypto::{SecretKey, TenantCipher};
use crate::schema::Schema;
use serde_json::json;

fn open_temp(label: &str) -> (TenantDb, Collection, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("coffer-unit-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let keys = TenantKeys::new(TenantCipher::new(&SecretKey::generate().unwrap()));
    let db = TenantDb::open(&dir, TenantId::generate().unwrap(), keys, 1 << 20).unwrap();
    let schema = Schema::parse(
        "t",
        "format = 1\nname = \"t\"\nversion = 1\n[collections.people]\nfields.email = { type = \"string\", unique = true }\n",
    )
    .unwrap();
    (db, schema.collection("people").unwrap().clone(), dir)
}

fn fields(value: Value) -> Map<String, Value> {
    value.as_object().unwrap().clone()
}

/// `n` people, emails `0@x` … in order of insertion.
fn insert_people(db: &TenantDb, people: &Collection, n: usize) -> Vec<RecordId> {
    (0..n)
        .map(|i| {
            db.insert(
                "people",
                people,
                &fields(json!({"email": format!("{i}@x")})),
            )
            .unwrap()
        })
        .collect()
}

#[test]
fn stale_index_entries_left_by_a_crash_are_skipped_and_cleared() {
    let (db, people, dir) = open_temp("stale");
    let a = db
        .insert("people", &people, &fields(json!({"email": "a@x"})))
        .unwrap();
    // As if a crash came between "insert new entry" and "write record":
    // an entry claims record `a` holds b@x, which it does not.
    let tag = db.keys().current().blind_index("people", "email", b"b@x");
    db.data
        .insert(index_key("people", "email", &tag, &a), &[])
        .unwrap();
    assert!(db
        .find(
            "people",
            "email",
            &people.fields["email"],
            &json!("b@x"),
            10
        )
        .unwrap()
        .is_empty());
    let b = db
        .insert("people", &people, &fields(json!({"email": "b@x"})))
        .unwrap();
    let found = db
        .find(
            "people",
            "email",
            &people.fields["email"],
            &json!("b@x"),
            10,
        )
        .unwrap();
    assert_eq!(found.iter().map(|(id, _)| id).collect::<Vec<_>>(), vec![&b]);
    assert!(matches!(
        db.insert("people", &people, &fields(json!({"email": "a@x"}))),
        Err(StorageError::Duplicate(_))
    ));
    drop(db);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_snapshot_sees_the_past_while_writers_change_everything() {
    let (db, people, dir) = open_temp("snapshot");
    let db = Arc::new(db);
    let ids = insert_people(&db, &people, 700);
    let snapshot = db.snapshot().unwrap();
    // Change a third, delete a third, add as many again: across every chunk.
    for (i, id) in ids.iter().enumerate() {
        match i % 3 {
            0 => db
                .replace(
                    "people",
                    &people,
                    id,
                    &fields(json!({"email": format!("changed-{i}@x")})),
                )
                .unwrap(),
            1 => db.delete("people", &people, id).unwrap(),
            _ => {
                db.insert(
                    "people",
                    &people,
                    &fields(json!({"email": format!("new-{i}@x")})),
                )
                .unwrap();
            }
        }
    }
    for _ in 0..2 {
        let seen: Vec<(RecordId, Map<String, Value>)> =
            snapshot.records("people").map(Result::unwrap).collect();
        assert_eq!(seen.len(), 700);
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(
            seen.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(),
            sorted
        );
        for (id, fields) in &seen {
            let i = ids.iter().position(|x| x == id).unwrap();
            assert_eq!(fields["email"], json!(format!("{i}@x")));
        }
    }
    drop(snapshot);
    assert_eq!(
        db.list("people", None, 10_000).unwrap().len(),
        700 - 233 + 233
    );
    assert!(db
        .db
        .tree_names()
        .iter()
        .all(|n| !n.starts_with(b"snapshot-")));
    drop(db);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn export_lines_match_the_lengths_known_without_decrypting() {
    let (db, people, dir) = open_temp("lines");
    let db = Arc::new(db);
    let mut expected = std::collections::BTreeMap::new();
    for (i, value) in [
        json!({}),
        json!({"email": "a@x"}),
        json!({"email": "é \" \\ \n ✓"}),
        json!({"email": "x".repeat(5000)}),
    ]
    .into_iter()
    .enumerate()
    {
        let id = db
            .insert("people", &people, &fields(value.clone()))
            .unwrap();
        let mut line = value.as_object().unwrap().clone();
        line.insert("id".into(), json!(id.as_str()));
        expected.insert(id, (i, Value::Object(line)));
    }
    let snapshot = db.snapshot().unwrap();
    // Changes after the snapshot must not show in its lines or lengths.
    let first = expected.keys().next().unwrap().clone();
    db.delete("people", &people, &first).unwrap();
    db.insert("people", &people, &fields(json!({"email": "later"})))
        .unwrap();
    let (count, bytes) = snapshot.line_stats().unwrap()["people"];
    let mut out = Vec::new();
    let mut records = snapshot.records("people");
    while let Some(result) = records.append_line(&mut out) {
        result.unwrap();
    }
    assert_eq!(count, 4);
    assert_eq!(bytes, out.len() as u64);
    let lines: Vec<Value> = out
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    let want: Vec<Value> = expected.values().map(|(_, v)| v.clone()).collect();
    assert_eq!(lines, want);
    // A damaged value is an error, and the buffer keeps only whole lines.
    drop(snapshot);
    let victim = expected.keys().nth(1).unwrap().clone();
    let mut raw = db.raw_record("people", &victim).unwrap().unwrap();
    raw[20] ^= 1;
    db.put_raw_record("people", &victim, &raw).unwrap();
    let snapshot = db.snapshot().unwrap();
    let mut out = Vec::new();
    let mut records = snapshot.records("people");
    let mut failures = 0;
    while let Some(result) = records.append_line(&mut out) {
        failures += usize::from(result.is_err());
    }
    assert_eq!(failures, 1);
    assert!(out
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .all(|l| { serde_json::from_slice::<Value>(l).is_ok() }));
    drop((snapshot, db));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn writers_keep_the_line_stats_a_snapshot_counted() {
    let (db, people, dir) = open_temp("stats");
    let db = Arc::new(db);
    let lines_now = |db: &Arc<TenantDb>| {
        let snapshot = db.snapshot().unwrap();
        let mut out = Vec::new();
        let mut records = snapshot.records("people");
        let mut count = 0u64;
        while let Some(result) = records.append_line(&mut out) {
            result.unwrap();
            count += 1;
        }
        (snapshot, (count, out.len() as u64))
    };
    let mut ids = insert_people(&db, &people, 300);
    // The first snapshot counts, while writes go on between its start and
    // its count; those are booked and added.
    let (first, _) = lines_now(&db);
    for (i, id) in ids.iter().enumerate().take(50) {
        db.replace(
            "people",
            &people,
            id,
            &fields(json!({"email": format!("a much longer address {i}@x")})),
        )
        .unwrap();
    }
    let counted = first.line_stats().unwrap();
    assert_eq!(counted["people"].0, 300);
    drop(first);
    // Every kind of change after it, then snapshots that take the kept figures.
    for id in ids.drain(..40) {
        db.delete("people", &people, &id).unwrap();
    }
    for i in 0..25 {
        db.insert("people", &people, &fields(json!({}))).unwrap();
        db.load_with_id(
            "people",
            &people,
            &RecordId::generate().unwrap(),
            &fields(json!({"email": format!("loaded {i}@x")})),
        )
        .unwrap();
    }
    db.replace("people", &people, &ids[0], &fields(json!({})))
        .unwrap();
    for _ in 0..2 {
        let (snapshot, truth) = lines_now(&db);
        assert!(snapshot.stats.is_some(), "the kept figures were not used");
        assert_eq!(snapshot.line_stats().unwrap()["people"], truth);
        assert_eq!(truth.0, 300 - 40 + 50);
    }
    drop(db);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn snapshots_taken_under_concurrent_writes_are_points_in_time() {
    let (db, people, dir) = open_temp("concurrent");
    let db = Arc::new(db);
    // Bulk first, so each snapshot read spans many chunks.
    for i in 0..1500 {
        db.load_with_id(
            "people",
            &people,
            &RecordId::generate().unwrap(),
            &fields(json!({"email": format!("bulk{i}@x")})),
        )
        .unwrap();
    }
    let counter = db
        .insert("people", &people, &fields(json!({"email": "counter:0"})))
        .unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (db, people, counter, stop) =
            (db.clone(), people.clone(), counter.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                db.load_with_id(
                    "people",
                    &people,
                    &RecordId::generate().unwrap(),
                    &fields(json!({"email": format!("n{n}@x")})),
                )
                .unwrap();
                db.replace(
                    "people",
                    &people,
                    &counter,
                    &fields(json!({"email": format!("counter:{n}")})),
                )
                .unwrap();
            }
            n
        })
    };
    for _ in 0..15 {
        let snapshot = db.snapshot().unwrap();
        for _ in 0..2 {
            let mut numbers = Vec::new();
            let mut count = None;
            for item in snapshot.records("people") {
                let (_, f) = item.unwrap();
                let email = f["email"].as_str().unwrap().to_string();
                if let Some(c) = email.strip_prefix("counter:") {
                    count = Some(c.parse::<u64>().unwrap());
                } else if let Some(n) = email.strip_prefix('n') {
                    numbers.push(n.trim_end_matches("@x").parse::<u64>().unwrap());
                }
            }
            numbers.sort();
            let k = numbers.len() as u64;
            assert_eq!(
                numbers,
                (1..=k).collect::<Vec<_>>(),
                "not a gap-free prefix"
            );
            let c = count.unwrap();
            assert!(c == k || c + 1 == k, "counter {c} with records 1..{k}");
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(writer.join().unwrap() > 0);
    drop(db);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn unique_values_compare_in_nfc_and_case_insensitive_fields_ignore_case() {
    let (db, people, dir) = open_temp("unicode");
    let email = &people.fields["email"];
    // "é" composed (U+00E9) and decomposed (e + U+0301) are one value.
    let composed = "ren\u{e9}@x";
    let decomposed = "rene\u{301}@x";
    db.insert("people", &people, &fields(json!({"email": composed})))
        .unwrap();
    assert!(matches!(
        db.insert("people", &people, &fields(json!({"email": decomposed}))),
        Err(StorageError::Duplicate(_))
    ));
    assert_eq!(
        db.find("people", "email", email, &json!(decomposed), 10)
            .unwrap()
            .len(),
        1
    );
    // Case still counts on a field that does not say otherwise...
    db.insert("people", &people, &fields(json!({"email": "REN\u{c9}@x"})))
        .unwrap();
    // ...and not on one that does: every spelling collides and finds the
    // record, which keeps the spelling it was written with.
    let schema = Schema::parse(
        "t",
        "format = 1\nname = \"t\"\nversion = 1\n[collections.people]\nfields.email = { type = \"string\", unique = true, case_insensitive = true }\n",
    )
    .unwrap();
    let folded = schema.collection("people").unwrap();
    let spec = &folded.fields["email"];
    db.insert(
        "people",
        folded,
        &fields(json!({"email": "Ana@Example.com"})),
    )
    .unwrap();
    for variant in ["ana@example.com", "ANA@EXAMPLE.COM", "Ana@Example.com"] {
        assert!(
            matches!(
                db.insert("people", folded, &fields(json!({"email": variant}))),
                Err(StorageError::Duplicate(_))
            ),
            "{variant}"
        );
        let found = db
            .find("people", "email", spec, &json!(variant), 10)
            .unwrap();
        assert_eq!(found.len(), 1, "{variant}");
        assert_eq!(found[0].1["email"], "Ana@Example.com");
    }
    drop(db);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn replace_and_delete_move_index_entries() {
    let (db, people, dir) = open_temp("move");
    let a = db
        .insert("people", &people, &fields(json!({"email": "old@x"})))
        .unwrap();
    db.replace("people", &people, &a, &fields(json!({"email": "new@x"})))
        .unwrap();
    assert!(db
        .find(
            "people",
            "email",
            &people.fields["email"],
            &json!("old@x"),
            10
        )
        .unwrap()
        .is_empty());
    assert_eq!(
        db.find(
            "people",
            "email",
            &people.fields["email"],
            &json!("new@x"),
            10
        )
        .unwrap()
        .len(),
        1
    );
    db.delete("people", &people, &a).unwrap();
    assert!(db
        .find(
            "people",
            "email",
            &people.fields["email"],
            &json!("new@x"),
            10
        )
        .unwrap()
        .is_empty());
    assert_eq!(
        db.data.scan_prefix(b"i").count(),
        0,
        "no index entry outlives its record"
    );
    assert!(matches!(
        db.delete("people", &people, &a),
        Err(StorageError::NotFound)
    ));
    drop(db);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_rotation_reseals_and_reindexes_while_writes_go_on_and_leaves_only_the_new_key() {
    let dir = std::env::temp_dir().join(format!("coffer-unit-rekey-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (old, new) = (
        SecretKey::generate().unwrap(),
        SecretKey::generate().unwrap(),
    );
    let db = Arc::new(
        TenantDb::open(
            &dir,
            TenantId::generate().unwrap(),
            TenantKeys::new(TenantCipher::new(&old)),
            1 << 20,
        )
        .unwrap(),
    );
    let schema = Schema::parse(
        "t",
        "format = 1\nname = \"t\"\nversion = 1\n[collections.people]\nfields.email = { type = \"string\", unique = true }\n",
    )
    .unwrap();
    let people = schema.collection("people").unwrap().clone();
    let spec = &people.fields["email"];
    let ids = insert_people(&db, &people, 40);
    let find = |email: &str| {
        db.find("people", "email", spec, &json!(email), 10)
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect::<Vec<_>>()
    };
    db.set_keys(TenantKeys::rotating(
        TenantCipher::with_id(&new, 1),
        TenantCipher::new(&old),
    ));
    let snapshot = db.snapshot().unwrap();
    let cutoff = db.next_snapshot_id();
    // Half way: some records re-sealed, then writes under the new key.
    let first = db.reseal_batch(&schema, &[], 15, false).unwrap();
    assert_eq!(first.records, 15);
    let next = first.next.expect("more to do");
    db.replace(
        "people",
        &people,
        &ids[30],
        &fields(json!({"email": "moved@x"})),
    )
    .unwrap();
    db.replace(
        "people",
        &people,
        &ids[5],
        &fields(json!({"email": "5@x", "n": 1})),
    )
    .unwrap();
    let fresh = db
        .insert("people", &people, &fields(json!({"email": "new@x"})))
        .unwrap();
    // Lookups and the uniqueness check see records under either key.
    assert_eq!(find("20@x"), vec![ids[20].clone()]);
    assert_eq!(find("5@x"), vec![ids[5].clone()]);
    assert!(matches!(
        db.insert("people", &people, &fields(json!({"email": "25@x"}))),
        Err(StorageError::Duplicate(_))
    ));
    assert!(matches!(
        db.insert("people", &people, &fields(json!({"email": "3@x"}))),
        Err(StorageError::Duplicate(_))
    ));
    let mut cursor = next;
    loop {
        let batch = db.reseal_batch(&schema, &cursor, 7, false).unwrap();
        match batch.next {
            Some(next) => cursor = next,
            None => break,
        }
    }
    // The snapshot from before still reads its point in time.
    assert!(db.snapshots_before(cutoff));
    let seen: Vec<Record> = snapshot
        .records("people")
        .collect::<Result<_, _>>()
        .unwrap();
    let mut expected: Vec<Record> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.clone(), fields(json!({"email": format!("{i}@x")}))))
        .collect();
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(seen, expected);
    drop(snapshot);
    assert!(!db.snapshots_before(cutoff));
    db.set_keys(TenantKeys::new(TenantCipher::with_id(&new, 1)));
    let counts = db.sealed_key_ids().unwrap();
    assert_eq!(counts, BTreeMap::from([(1, 41)]), "only the new key seals");
    // No index entry under the old key is left.
    let old_cipher = TenantCipher::new(&old);
    for i in 0..40 {
        let tag = old_cipher.blind_index("people", "email", format!("{i}@x").as_bytes());
        assert!(db
            .data
            .scan_prefix(index_prefix("people", "email", &tag))
            .next()
            .is_none());
    }
    assert_eq!(find("moved@x"), vec![ids[30].clone()]);
    assert!(find("30@x").is_empty());
    assert_eq!(find("new@x"), vec![fresh]);
    for (i, id) in ids.iter().enumerate().filter(|(i, _)| *i != 30) {
        let (_, record) = db.get("people", id).unwrap().unwrap();
        assert_eq!(record["email"], json!(format!("{i}@x")));
        assert_eq!(find(&format!("{i}@x")), vec![id.clone()]);
    }
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn databases_keep_the_segment_size_they_were_created_with() {
    let (db, people, new_dir) = open_temp("segments-new");
    drop(db);
    assert_eq!(segment_size_of(&new_dir), SEGMENT_BYTES);
    let _ = std::fs::remove_dir_all(&new_dir);

    // A database created before the segments grew: sled refuses any other
    // size for it, and its records are read back through `TenantDb`.
    let dir = std::env::temp_dir().join(format!("coffer-unit-segments-old-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let tenant = TenantId::generate().unwrap();
    let key = SecretKey::generate().unwrap();
    let keys = || TenantKeys::new(TenantCipher::new(&key));
    let legacy = sled::Config::new()
        .path(&dir)
        .segment_size(LEGACY_SEGMENT_BYTES)
        .open()
        .unwrap();
    legacy.flush().unwrap();
    drop(legacy);
    assert!(sled::Config::new()
        .path(&dir)
        .segment_size(SEGMENT_BYTES)
        .open()
        .is_err());
    assert_eq!(segment_size_of(&dir), LEGACY_SEGMENT_BYTES);
    let db = TenantDb::open(&dir, tenant.clone(), keys(), 1 << 20).unwrap();
    let id = insert_people(&db, &people, 3)[1].clone();
    drop(db);
    let db = TenantDb::open(&dir, tenant, keys(), 1 << 20).unwrap();
    let (_, got) = db.get("people", &id).unwrap().unwrap();
    assert_eq!(got["email"], json!("1@x"));
    assert_eq!(segment_size_of(&dir), LEGACY_SEGMENT_BYTES);
    drop(db);
    std::fs::remove_dir_all(&dir).unwrap();
}
