//! Storage-layer figures, side by side in one run: Coffer's sealed tenant database
//! against plain sled doing the same work, and ring's AES-256-GCM against the
//! aes-gcm crate. A plain bench binary (no criterion) keeps the dependency tree
//! lean; every figure is a throughput over thousands of operations.
//!
//! Run: `cargo bench --bench storage -- [records]` (default 20000 records of 1 KiB).
//! Output lines: `<system> <workload> <ops/s> ops/s`, then ratios.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use coffer::crypto::{record_aad, SecretKey, TenantCipher, TenantKeys};
use coffer::ids::TenantId;
use coffer::schema::Schema;
use coffer::storage::TenantDb;
use serde_json::{Map, Value};

const SCHEMA: &str = r#"
format = 1
name = "bench"
version = 1
[collections.blobs]
fields.body = { type = "string", required = true }
[collections.contacts]
fields.body = { type = "string", required = true }
fields.email = { type = "string", unique = true }
"#;

fn main() {
    let records: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20_000);
    let root = std::env::temp_dir().join(format!("coffer-bench-storage-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let mut results: BTreeMap<(String, String), f64> = BTreeMap::new();
    let mut record = |system: &str, workload: &str, ops: f64| {
        println!("{system:<8} {workload:<28} {ops:>10.0} ops/s");
        results.insert((system.into(), workload.into()), ops);
    };

    aead_comparison(&mut record);

    let schema = Schema::parse("bench", SCHEMA).unwrap();
    let collection = schema.collection("blobs").unwrap().clone();
    let body = |i: usize| {
        let mut fields = Map::new();
        let text: String = format!("{i:08}-").repeat(1024 / 9 + 1)[..1000].to_string();
        fields.insert("body".into(), Value::from(text));
        fields
    };

    // --- Plain sled: the same JSON bytes, no sealing.
    let sled_db = sled::Config::new()
        .path(root.join("plain"))
        .cache_capacity(64 << 20)
        .flush_every_ms(None)
        .open()
        .unwrap();
    let start = Instant::now();
    let durable_n = records / 10;
    for i in 0..durable_n {
        sled_db
            .insert(format!("k{i:08}"), serde_json::to_vec(&body(i)).unwrap())
            .unwrap();
        sled_db.flush().unwrap();
    }
    record("sled", "durable insert, 1 writer", rate(durable_n, start));
    let start = Instant::now();
    for i in durable_n..records {
        sled_db
            .insert(format!("k{i:08}"), serde_json::to_vec(&body(i)).unwrap())
            .unwrap();
    }
    sled_db.flush().unwrap();
    record(
        "sled",
        "insert, flush at end",
        rate(records - durable_n, start),
    );
    let order = shuffled(records);
    let start = Instant::now();
    for &i in &order {
        let bytes = sled_db.get(format!("k{i:08}")).unwrap().unwrap();
        let parsed: Map<String, Value> = serde_json::from_slice(&bytes).unwrap();
        std::hint::black_box(parsed);
    }
    record("sled", "point read + parse", rate(records, start));
    let sled_db = Arc::new(sled_db);
    let writers = 64;
    let per_writer = (records / writers / 4).max(20);
    let start = Instant::now();
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let db = sled_db.clone();
            let bytes = serde_json::to_vec(&body(w)).unwrap();
            std::thread::spawn(move || {
                for i in 0..per_writer {
                    db.insert(format!("w{w:02}-{i:06}"), bytes.clone()).unwrap();
                    db.flush().unwrap();
                }
            })
        })
        .collect();
    handles.into_iter().for_each(|h| h.join().unwrap());
    record(
        "sled",
        "durable insert, 64 writers",
        rate(writers * per_writer, start),
    );
    drop(sled_db);

    // --- Coffer's tenant database: sealed values, blind index, group commit.
    let tenant = TenantId::generate().unwrap();
    let cipher = TenantCipher::new(&SecretKey::generate().unwrap());
    let db = Arc::new(
        TenantDb::open(
            &root.join("coffer"),
            tenant,
            TenantKeys::new(cipher),
            64 << 20,
        )
        .unwrap(),
    );
    let mut ids = Vec::with_capacity(records);
    let start = Instant::now();
    for i in 0..durable_n {
        ids.push(db.insert("blobs", &collection, &body(i)).unwrap());
    }
    record("coffer", "durable insert, 1 writer", rate(durable_n, start));
    for i in durable_n..records {
        ids.push(db.insert("blobs", &collection, &body(i)).unwrap());
    }
    let start = Instant::now();
    for &i in &order {
        std::hint::black_box(db.get("blobs", &ids[i]).unwrap().unwrap());
    }
    record("coffer", "point read + parse", rate(records, start));
    let start = Instant::now();
    let handles: Vec<_> = (0..2)
        .map(|t| {
            let db = db.clone();
            let ids: Vec<_> = order
                .iter()
                .skip(t)
                .step_by(2)
                .map(|&i| ids[i].clone())
                .collect();
            std::thread::spawn(move || {
                for id in &ids {
                    std::hint::black_box(db.get("blobs", id).unwrap().unwrap());
                }
            })
        })
        .collect();
    handles.into_iter().for_each(|h| h.join().unwrap());
    record("coffer", "point read, 2 threads", rate(records, start));
    let start = Instant::now();
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let db = db.clone();
            let collection = collection.clone();
            let fields = body(w);
            std::thread::spawn(move || {
                for _ in 0..per_writer {
                    db.insert("blobs", &collection, &fields).unwrap();
                }
            })
        })
        .collect();
    handles.into_iter().for_each(|h| h.join().unwrap());
    record(
        "coffer",
        "durable insert, 64 writers",
        rate(writers * per_writer, start),
    );
    // The same with a unique indexed field: record and index entry in one batch.
    let contacts = schema.collection("contacts").unwrap().clone();
    let start = Instant::now();
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let db = db.clone();
            let contacts = contacts.clone();
            let mut fields = body(w);
            std::thread::spawn(move || {
                for i in 0..per_writer {
                    fields.insert("email".into(), Value::from(format!("{w}-{i}@example.com")));
                    db.insert("contacts", &contacts, &fields).unwrap();
                }
            })
        })
        .collect();
    handles.into_iter().for_each(|h| h.join().unwrap());
    record(
        "coffer",
        "indexed insert, 64 writers",
        rate(writers * per_writer, start),
    );
    drop(db);

    println!();
    for workload in [
        "durable insert, 1 writer",
        "point read + parse",
        "durable insert, 64 writers",
    ] {
        let key = |s: &str| (s.to_string(), workload.to_string());
        if let (Some(c), Some(s)) = (results.get(&key("coffer")), results.get(&key("sled"))) {
            println!("ratio coffer/sled {workload:<28} {:.2}x", c / s);
        }
    }
    if let (Some(r), Some(a)) = (
        results.get(&("ring".into(), "seal 1 KiB".into())),
        results.get(&("aes-gcm".into(), "seal 1 KiB".into())),
    ) {
        println!("ratio ring/aes-gcm seal 1 KiB {:.2}x", r / a);
    }
    let _ = std::fs::remove_dir_all(&root);
}

fn aead_comparison(record: &mut impl FnMut(&str, &str, f64)) {
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    let n = 200_000;
    let plain = vec![0x5au8; 1024];
    let aad = record_aad("tenant", "collection", "record");
    let key = SecretKey::generate().unwrap();
    let cipher = TenantCipher::new(&key);
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(cipher.seal(&aad, &plain).unwrap());
    }
    record("ring", "seal 1 KiB", rate(n, start));
    let rc = aes_gcm::Aes256Gcm::new_from_slice(&[7u8; 32]).unwrap();
    let start = Instant::now();
    for _ in 0..n {
        // The same nonce source as Coffer's sealing, so only the ciphers differ.
        let nonce = coffer::crypto::random_nonce().unwrap();
        let sealed = rc
            .encrypt(
                aes_gcm::Nonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: &aad,
                },
            )
            .unwrap();
        std::hint::black_box(sealed);
    }
    record("aes-gcm", "seal 1 KiB", rate(n, start));
}

fn rate(ops: usize, start: Instant) -> f64 {
    ops as f64 / start.elapsed().as_secs_f64()
}

/// A fixed permutation of 0..n (xorshift), so reads hit keys in random order.
fn shuffled(n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut state: u64 = 0x9e3779b97f4a7c15;
    for i in (1..n).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        order.swap(i, (state % (i as u64 + 1)) as usize);
    }
    order
}
