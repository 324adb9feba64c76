//! Online data-key rotation, side by side in one run on the release binary:
//! the rotation of a populated tenant (records/s, from the 202 to `done`)
//! against plain sled rewriting the same number of values of the same size,
//! and the latency of one client's writes to the tenant before the rotation
//! and during it.
//!
//! Run: `cargo bench --bench data_keys -- [--mib M]` (default 100 MiB).

mod common;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{ms, percentile, start, Conn};
use serde_json::Value;

fn main() {
    let mib = common::flag("--mib", 100) as u64;
    let root = std::env::temp_dir().join(format!("coffer-bench-dek-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let data = root.join("data");
    println!("== data-key rotation of a ~{mib} MiB tenant (1 KiB contacts)");
    let started = Instant::now();
    let (tenant, admin, records) = common::populate(&data, mib, "local");
    println!(
        "populated {records} records in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let plain = plain_sled_rewrite(&root.join("plain"), records);
    let (mut host, addr) = start(&data, &["--backup-interval", "0s"]);
    // 0: before, 1: during, 2: stop.
    let phase = Arc::new(AtomicU8::new(0));
    let writer = {
        let (phase, tenant, admin) = (phase.clone(), tenant.clone(), admin.clone());
        std::thread::spawn(move || {
            let mut conn = Conn::open(addr);
            let path = format!("/v1/tenants/{tenant}/collections/contacts/records");
            let notes = "w".repeat(900);
            let (mut before, mut during) = (Vec::new(), Vec::new());
            let mut i = 0u64;
            loop {
                let now = phase.load(Ordering::SeqCst);
                if now == 2 {
                    return (before, during);
                }
                let body =
                    format!(r#"{{"name":"w{i}","email":"w{i}@rotate.example","notes":"{notes}"}}"#);
                let t = Instant::now();
                let (status, _) = conn.request("POST", &path, &admin, body.as_bytes());
                assert_eq!(status, 201);
                // A write counts as "during" only if the rotation ran all of it.
                let after = phase.load(Ordering::SeqCst);
                match (now, after) {
                    (0, 0) => before.push(t.elapsed()),
                    (1, 1) => during.push(t.elapsed()),
                    _ => {}
                }
                i += 1;
            }
        })
    };
    std::thread::sleep(Duration::from_secs(5));
    let mut conn = Conn::open(addr);
    phase.store(1, Ordering::SeqCst);
    let started = Instant::now();
    let (status, body) = conn.request(
        "POST",
        &format!("/v1/tenants/{tenant}/keys/rotate"),
        &admin,
        b"",
    );
    assert_eq!(status, 202, "{}", String::from_utf8_lossy(&body));
    let job = serde_json::from_slice::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let done = loop {
        let (_, body) = conn.request(
            "GET",
            &format!("/v1/tenants/{tenant}/keys/rotations/{job}"),
            &admin,
            b"",
        );
        let value: Value = serde_json::from_slice(&body).unwrap();
        if value["state"] == "done" || value["state"] == "failed" {
            break value;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = started.elapsed();
    phase.store(2, Ordering::SeqCst);
    let (mut before, mut during) = writer.join().unwrap();
    assert_eq!(done["state"], "done", "{done}");
    let resealed = done["progress"]["records_resealed"].as_u64().unwrap();
    println!(
        "rotation: {resealed} records (and {} change-log entries) in {:.2} s = {:.0} records/s",
        done["progress"]["changes_resealed"],
        took.as_secs_f64(),
        resealed as f64 / took.as_secs_f64()
    );
    println!(
        "plain sled, {records} values of the same size rewritten and flushed: {:.2} s = {:.0} values/s (rotation at {:.2}x of it)",
        plain.as_secs_f64(),
        records as f64 / plain.as_secs_f64(),
        (resealed as f64 / took.as_secs_f64()) / (records as f64 / plain.as_secs_f64())
    );
    for (label, times) in [("before", &mut before), ("during", &mut during)] {
        times.sort();
        println!(
            "one client's writes {label} the rotation: {} writes, p50 {:.2} ms, p99 {:.2} ms, worst {:.2} ms",
            times.len(),
            ms(percentile(times, 50)),
            ms(percentile(times, 99)),
            ms(*times.last().unwrap_or(&Duration::ZERO))
        );
    }
    let _ = host.kill();
    let _ = host.wait();
    let _ = std::fs::remove_dir_all(&root);
}

/// Plain sled: `n` values of 1 KiB written over `n` existing keys, flushed
/// every 256 as the rotation's batches are.
fn plain_sled_rewrite(dir: &std::path::Path, n: u64) -> Duration {
    let db = sled::Config::new().path(dir).open().unwrap();
    let value = vec![0x5au8; 1100];
    for i in 0..n {
        db.insert(i.to_be_bytes(), value.as_slice()).unwrap();
    }
    db.flush().unwrap();
    let started = Instant::now();
    for i in 0..n {
        let old = db.get(i.to_be_bytes()).unwrap().unwrap();
        let mut new = old.to_vec();
        new[0] ^= 1;
        db.insert(i.to_be_bytes(), new).unwrap();
        if i % 256 == 255 {
            db.flush().unwrap();
        }
    }
    db.flush().unwrap();
    started.elapsed()
}
