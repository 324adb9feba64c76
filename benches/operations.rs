//! Operations figures, side by side in one run on the release binary:
//! (1) the request overhead of metrics — p50/p99 of one record read through
//! the API on a host that serves /metrics (and so records) against one that
//! does not, interleaved in rounds; (2) a restore drill of a populated tenant
//! against a plain restore of the same backup and `zstd -3` of its NDJSON.
//!
//! Run: `cargo bench --bench operations -- [--reads N] [--drill-mib M]`
//! (defaults: 20000 reads, 256 MiB).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{create_tenant, ms, percentile, start, Conn};
use serde_json::Value;

fn main() {
    let reads = common::flag("--reads", 20_000);
    let drill_mib = common::flag("--drill-mib", 256) as u64;
    let root = std::env::temp_dir().join(format!("coffer-bench-ops-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    metrics_overhead(&root, reads);
    drill(&root, drill_mib);
    let _ = std::fs::remove_dir_all(&root);
}

fn token(data: &std::path::Path) -> String {
    std::fs::read_to_string(data.join("operator.token"))
        .unwrap()
        .trim()
        .to_string()
}

fn metrics_overhead(root: &std::path::Path, reads: usize) {
    println!(
        "== one record read through the API, {reads} reads per host, rounds of 500 interleaved"
    );
    let with = root.join("with-metrics");
    let without = root.join("without-metrics");
    let (mut a, a_addr) = start(&with, &["--metrics-listen", "127.0.0.1:0"]);
    let (mut b, b_addr) = start(&without, &[]);
    let mut hosts = Vec::new();
    for (addr, data) in [(a_addr, &with), (b_addr, &without)] {
        let (tenant, admin) = create_tenant(addr, &token(data), "reads");
        let mut conn = Conn::open(addr);
        let body = serde_json::to_vec(&serde_json::json!({"name": "Ada", "email": "ada@example.com", "notes": "n".repeat(900)})).unwrap();
        let (status, created) = conn.request(
            "POST",
            &format!("/v1/tenants/{tenant}/collections/contacts/records"),
            &admin,
            &body,
        );
        assert_eq!(status, 201);
        let id = serde_json::from_slice::<Value>(&created).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let path = format!("/v1/tenants/{tenant}/collections/contacts/records/{id}");
        hosts.push((conn, path, admin, Vec::with_capacity(reads)));
    }
    for _ in 0..(reads / 500).max(1) {
        for (conn, path, admin, times) in hosts.iter_mut() {
            for _ in 0..500 {
                let started = Instant::now();
                let (status, _) = conn.request("GET", path, admin, b"");
                times.push(started.elapsed());
                assert_eq!(status, 200);
            }
        }
    }
    for ((_, _, _, times), label) in hosts.iter_mut().zip(["metrics on ", "metrics off"]) {
        times.sort();
        println!(
            "{label}: p50 {:.3} ms  p99 {:.3} ms  ({} reads)",
            ms(percentile(times, 50)),
            ms(percentile(times, 99)),
            times.len()
        );
    }
    let _ = a.kill();
    let _ = a.wait();
    let _ = b.kill();
    let _ = b.wait();
}

fn drill(root: &std::path::Path, mib: u64) {
    println!("== restore drill of a ~{mib} MiB tenant (directory region on this disk)");
    let data = root.join("drill");
    let (tenant, admin, records) = common::populate(&data, mib, "local");
    let config = root.join("drill.toml");
    std::fs::write(
        &config,
        format!(
            "[regions.local]\nstore = \"file://{}\"\n\n[backup]\nregions = [\"local\"]\n\n[drills]\nevery = \"1000days\"\ncheck_interval = \"500ms\"\n",
            root.join("region").display()
        ),
    )
    .unwrap();
    // The first drill round with a verified backup drills it (once: the
    // next is 1000 days away).
    let (mut host, addr) = start(
        &data,
        &[
            "--config",
            config.to_str().unwrap(),
            "--backup-interval",
            "0s",
        ],
    );
    let mut conn = Conn::open(addr);
    let (status, body) = conn.request(
        "POST",
        &format!("/v1/tenants/{tenant}/backups"),
        &admin,
        b"",
    );
    assert_eq!(status, 202);
    let backup = serde_json::from_slice::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let started = Instant::now();
    let backup_took = loop {
        let (_, body) = conn.request(
            "GET",
            &format!("/v1/tenants/{tenant}/backups/{backup}"),
            &admin,
            b"",
        );
        let value: Value = serde_json::from_slice(&body).unwrap();
        if value["regions"]["local"]["state"] == "verified" {
            break started.elapsed();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let drill = loop {
        let (_, body) = conn.request("GET", "/v1/drills", &token(&data), b"");
        let value: Value = serde_json::from_slice(&body).unwrap();
        if let Some(d) = value["drills"].as_array().and_then(|d| d.first()).cloned() {
            break d;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(drill["outcome"], "passed", "{drill}");
    let drill_ms = drill["duration_ms"].as_u64().unwrap();
    let started = Instant::now();
    let (status, _) = conn.request(
        "POST",
        &format!("/v1/tenants/{tenant}/backups/{backup}/restore"),
        &admin,
        br#"{"name": "plain restore", "region": "local"}"#,
    );
    assert_eq!(status, 201);
    let restore = started.elapsed();
    // The same records as NDJSON through zstd -3 (the compression a drill's
    // re-export does, alone).
    let ndjson = root.join("contacts.ndjson");
    let mut out = std::fs::File::create(&ndjson).unwrap();
    conn.request_to(
        "GET",
        &format!("/v1/tenants/{tenant}/export"),
        &admin,
        &mut out,
    );
    drop(out);
    let _ = host.kill();
    let _ = host.wait();
    let started = Instant::now();
    let zstd = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "zstd -d -c {0} | tar -xO | zstd -3 -c > /dev/null",
            ndjson.display()
        ))
        .status()
        .unwrap();
    assert!(zstd.success());
    let zstd_took = started.elapsed();
    let gib = mib as f64 / 1024.0;
    println!(
        "{records} records; backup taken and verified in {:.2} s",
        backup_took.as_secs_f64()
    );
    println!(
        "drill (restore into a scratch tenant + re-export + SHA-256 of every member + removal): {:.2} s = {:.1} s per GiB",
        drill_ms as f64 / 1000.0,
        drill_ms as f64 / 1000.0 / gib
    );
    println!(
        "plain restore of the same backup into a new tenant: {:.2} s = {:.1} s per GiB ({:.2}x of the drill)",
        restore.as_secs_f64(),
        restore.as_secs_f64() / gib,
        restore.as_secs_f64() / (drill_ms as f64 / 1000.0)
    );
    println!(
        "zstd -d | tar -xO | zstd -3 of its export: {:.2} s",
        zstd_took.as_secs_f64()
    );
}
