//! Continuous backup, side by side in one run, on three real Garage regions:
//! durable writes/s and p50/p99 through the API with 1, 8 and 64 clients with
//! the change log off, `local` and `replicated`; the loss window of `local`
//! (acknowledgement → verified in every region); a point-in-time restore of a
//! ~100 MiB tenant after a long log against a plain full restore; objects,
//! bytes and PUTs per region per hour for a steady 100 writes/s tenant.
//!
//! Run: `cargo bench --bench continuous -- [--writes N] [--log-changes N] [--mib N] [--writes-only]`
//! (defaults: 3000 writes per level, 20000 changes of log, 100 MiB;
//! `--writes-only` measures the write rates and nothing else).
//! Needs `garage` on PATH (ops/test.sh installs it).

mod common;
/// The tests' Garage regions (started and stopped by PID, bucket listing).
#[path = "../tests/support/garage.rs"]
#[allow(dead_code)]
mod garage;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{ms, percentile, populate_with, start, write_load, Conn};
use serde_json::Value;

const REGIONS: &[&str] = &["in", "sg", "uk"];

fn main() {
    let writes = common::flag("--writes", 3000);
    let log_changes = common::flag("--log-changes", 20_000);
    let mib = common::flag("--mib", 100) as u64;
    let writes_only = std::env::args().any(|a| a == "--writes-only");
    let root = std::env::temp_dir().join(format!("coffer-bench-log-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let garage = garage::Garage::start(&root.join("garage"), REGIONS);
    let regions = garage.coffer_config("in");

    println!(
        "== durable writes through the API (1 KiB contacts, one tenant), three Garage regions"
    );
    println!(
        "{:<11} {:>7} {:>9} {:>8} {:>8} {:>8}",
        "mode", "clients", "writes/s", "p50 ms", "p99 ms", "ratio"
    );
    let mut off_rate = [0.0f64; 3];
    for (mode, log_on) in [("log off", false), ("local", true), ("replicated", true)] {
        let config = root.join(format!("{}.toml", mode.replace(' ', "-")));
        let mut text = regions.clone();
        text += &format!("\n[changelog]\nenabled = {log_on}\n");
        std::fs::write(&config, text).unwrap();
        let data = root.join(format!("writes-{}", mode.replace(' ', "-")));
        let (mut child, addr) = start(
            &data,
            &[
                "--config",
                config.to_str().unwrap(),
                "--backup-interval",
                "0s",
            ],
        );
        let operator = read_token(&data);
        let durability = if mode == "replicated" {
            "replicated"
        } else {
            "local"
        };
        let (tenant, admin) = create(addr, &operator, durability);
        for (level, clients) in [1usize, 8, 64].into_iter().enumerate() {
            let (rate, p50, p99) = write_load(addr, &tenant, &admin, clients, writes);
            if !log_on {
                off_rate[level] = rate;
            }
            println!(
                "{mode:<11} {clients:>7} {rate:>9.0} {p50:>8.2} {p99:>8.2} {:>7.2}x",
                rate / off_rate[level]
            );
        }
        if mode == "local" && !writes_only {
            loss_window(addr, &tenant, &admin);
            // A tenant of its own, once the load's backlog has shipped.
            std::thread::sleep(Duration::from_secs(10));
            let (bill_tenant, bill_admin) = create(addr, &operator, "local");
            request_bill(addr, &bill_tenant, &bill_admin, &garage);
        }
        common::stop(&mut child);
    }

    if writes_only {
        drop(garage);
        if std::env::var_os("COFFER_BENCH_LOG").is_none() {
            let _ = std::fs::remove_dir_all(&root);
        }
        return;
    }
    println!("\n== point-in-time restore of a ~{mib} MiB tenant after {log_changes} changes of log, against a full restore");
    pitr_restore(&root, &regions, mib, log_changes);

    drop(garage);
    let _ = std::fs::remove_dir_all(&root);
}

fn read_token(data: &Path) -> String {
    std::fs::read_to_string(data.join("operator.token"))
        .unwrap()
        .trim()
        .to_string()
}

fn create(addr: std::net::SocketAddr, operator: &str, durability: &str) -> (String, String) {
    let body =
        format!(r#"{{"name":"bench","region":"in","schema":"crm","durability":"{durability}"}}"#);
    let (status, body) = Conn::open(addr).request("POST", "/v1/tenants", operator, body.as_bytes());
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).unwrap();
    (
        v["id"].as_str().unwrap().to_string(),
        v["admin_token"].as_str().unwrap().to_string(),
    )
}

fn safe_at_everywhere(conn: &mut Conn, tenant: &str, admin: &str) -> Option<u64> {
    let (status, body) = conn.request("GET", &format!("/v1/tenants/{tenant}/copies"), admin, b"");
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    REGIONS
        .iter()
        .map(|r| {
            v["change_log"]["newest_safe_write"][*r]["at"]
                .as_str()
                .and_then(|t| humantime::parse_rfc3339(t).ok())
                .map(|t| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64)
        })
        .collect::<Option<Vec<u64>>>()
        .and_then(|v| v.into_iter().min())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Steady 20 writes/s for 20 s; for each write, the time from its
/// acknowledgement until every region holds it (polled every 20 ms).
fn loss_window(addr: std::net::SocketAddr, tenant: &str, admin: &str) {
    let path = format!("/v1/tenants/{tenant}/collections/contacts/records");
    let (tenant_w, admin_w) = (tenant.to_string(), admin.to_string());
    let writer = std::thread::spawn(move || {
        let mut conn = Conn::open(addr);
        let mut acked = Vec::new();
        for i in 0..400 {
            let body = format!(r#"{{"name":"lw-{i}","email":"lw-{i}@example.com"}}"#);
            let (status, _) = conn.request("POST", &path, &admin_w, body.as_bytes());
            assert_eq!(status, 201);
            acked.push(now_ms());
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = tenant_w;
        acked
    });
    let mut conn = Conn::open(addr);
    let mut samples: Vec<(u64, u64)> = Vec::new(); // (when, safe-at everywhere)
    while !writer.is_finished() {
        if let Some(safe) = safe_at_everywhere(&mut conn, tenant, admin) {
            samples.push((now_ms(), safe));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let acked = writer.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(safe) = safe_at_everywhere(&mut conn, tenant, admin) {
            samples.push((now_ms(), safe));
            if safe + 10 >= *acked.last().unwrap() {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // A change's time is when it was applied, a little before its
    // acknowledgement: a write counts as safe once the safe time passes its
    // acknowledgement minus 5 ms.
    let mut delays: Vec<Duration> = acked
        .iter()
        .filter_map(|a| {
            samples
                .iter()
                .find(|(_, safe)| *safe + 5 >= *a)
                .map(|(when, _)| Duration::from_millis(when.saturating_sub(*a)))
        })
        .collect();
    delays.sort();
    println!(
        "local loss window (ack → verified in 3 regions, {} writes at 20/s): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms  (D1: 10 s, Litestream: 1 s)",
        delays.len(),
        ms(percentile(&delays, 50)),
        ms(percentile(&delays, 99)),
        ms(*delays.last().unwrap())
    );
}

/// Segments, bytes and PUTs per region over 30 s of a steady 100 writes/s
/// tenant, scaled to an hour.
fn request_bill(addr: std::net::SocketAddr, tenant: &str, admin: &str, garage: &garage::Garage) {
    let count = |region: &str| -> (u64, u64) {
        let segments: Vec<(String, u64)> = garage
            .objects(region)
            .into_iter()
            .filter(|(name, _)| {
                name.starts_with(&format!("tenants/{tenant}/log-"))
                    && name.ends_with("archive.cfrdr")
            })
            .collect();
        (
            segments.len() as u64,
            segments.iter().map(|(_, size)| size).sum(),
        )
    };
    let before = count("sg");
    let requests_before = s3_requests(garage, "sg");
    let path = format!("/v1/tenants/{tenant}/collections/contacts/records");
    let mut conn = Conn::open(addr);
    let started = Instant::now();
    let mut i = 0u64;
    while started.elapsed() < Duration::from_secs(30) {
        let due = started + Duration::from_millis(i * 10);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let body = format!(
            r#"{{"name":"bill-{i}","email":"bill-{i}@example.com","notes":"{}"}}"#,
            "n".repeat(400)
        );
        assert_eq!(conn.request("POST", &path, admin, body.as_bytes()).0, 201);
        i += 1;
    }
    std::thread::sleep(Duration::from_secs(5));
    let after = count("sg");
    let requests_after = s3_requests(garage, "sg");
    let segments = after.0 - before.0;
    let bytes = after.1 - before.1;
    let scale = 3600.0 / started.elapsed().as_secs_f64().max(30.0);
    println!(
        "request bill, one region, steady {:.0} writes/s (~500 B each): {:.0} segments/h, {:.1} MiB/h",
        i as f64 / started.elapsed().as_secs_f64(),
        segments as f64 * scale,
        bytes as f64 * scale / (1 << 20) as f64,
    );
    // Counted by the region itself (Garage's metrics), every S3 call the
    // host made to it in the interval, whatever it was for.
    for (endpoint, n) in &requests_after {
        let n = n - requests_before.get(endpoint).copied().unwrap_or(0);
        if n > 0 {
            println!(
                "  {endpoint:<16} {:>8.0}/h ({:.2} per segment)",
                n as f64 * scale,
                n as f64 / segments.max(1) as f64
            );
        }
    }
}

/// S3 requests a Garage region has answered so far, by API endpoint
/// (`api_s3_request_counter` on its admin port's `/metrics`).
fn s3_requests(garage: &garage::Garage, region: &str) -> std::collections::BTreeMap<String, u64> {
    let config = std::fs::read_to_string(garage.region_dir(region).join("garage.toml")).unwrap();
    let admin = config
        .split("[admin]")
        .nth(1)
        .and_then(|a| a.lines().find_map(|l| l.strip_prefix("api_bind_addr = ")))
        .unwrap()
        .trim_matches('"')
        .parse()
        .unwrap();
    let (status, body) = Conn::open(admin).request("GET", "/metrics", "", b"");
    assert_eq!(status, 200);
    let mut out = std::collections::BTreeMap::new();
    for line in String::from_utf8_lossy(&body).lines() {
        let Some(rest) = line.strip_prefix("api_s3_request_counter{") else {
            continue;
        };
        let endpoint = rest
            .split("api_endpoint=\"")
            .nth(1)
            .and_then(|e| e.split('"').next())
            .unwrap_or("?")
            .to_string();
        let n: u64 = rest
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse::<f64>().ok())
            .unwrap_or(0.0) as u64;
        *out.entry(endpoint).or_insert(0) += n;
    }
    out
}

fn pitr_restore(root: &Path, regions: &str, mib: u64, changes: usize) {
    let data = root.join("pitr");
    let (tenant, admin, records) = populate_with(&data, mib, "in", true);
    let config = root.join("pitr.toml");
    std::fs::write(&config, regions).unwrap();
    let (mut child, addr) = start(
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
    assert_eq!(status, 202, "{}", String::from_utf8_lossy(&body));
    let backup = serde_json::from_slice::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    loop {
        let (_, body) = conn.request(
            "GET",
            &format!("/v1/tenants/{tenant}/backups/{backup}"),
            &admin,
            b"",
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        if REGIONS
            .iter()
            .all(|r| v["regions"][*r]["state"] == "verified")
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let started = Instant::now();
    write_load(addr, &tenant, &admin, 16, changes);
    let wrote = started.elapsed();
    loop {
        let (_, body) = conn.request("GET", &format!("/v1/tenants/{tenant}/copies"), &admin, b"");
        let v: Value = serde_json::from_slice(&body).unwrap();
        if v["change_log"]["loss_window_seconds"].as_f64() == Some(0.0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let timed = |path: String, body: &str| {
        let t = Instant::now();
        let (status, answer) = Conn::open(addr).request("POST", &path, &admin, body.as_bytes());
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&answer));
        (
            t.elapsed(),
            serde_json::from_slice::<Value>(&answer).unwrap(),
        )
    };
    let (full, _) = timed(
        format!("/v1/tenants/{tenant}/backups/{backup}/restore"),
        r#"{"name":"full","region":"sg"}"#,
    );
    let (pitr, v) = timed(
        format!("/v1/tenants/{tenant}/restore"),
        r#"{"name":"pitr","region":"sg"}"#,
    );
    println!(
        "{records} records + {changes} changes ({:.1} s of writing): full restore {:.1} s, point-in-time restore (base + log to #{}) {:.1} s ({:.2}x; replay ≈ {:.0} changes/s)",
        wrote.as_secs_f64(),
        full.as_secs_f64(),
        v["restored_to"]["sequence"],
        pitr.as_secs_f64(),
        pitr.as_secs_f64() / full.as_secs_f64(),
        changes as f64 / (pitr.as_secs_f64() - full.as_secs_f64()).max(0.001),
    );
    common::stop(&mut child);
}
