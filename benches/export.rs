//! Export, DR backup and restore of a large tenant through the real host, side by
//! side with `tar -cf - <the same NDJSON files> | zstd -3`, plus the host's peak
//! RSS and the longest write stall a concurrent writer sees during an export.
//!
//! Run: `cargo bench --bench export -- [MiB ...]` (default: 100 1024).

mod common;

use std::io::Write;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{process_status, start, Conn};
use serde_json::Value;

fn main() {
    let sizes: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![100, 1024]
    } else {
        sizes
    };
    for mib in sizes {
        run(mib);
    }
}

fn run(mib: u64) {
    let root =
        std::env::temp_dir().join(format!("coffer-bench-export-{}-{mib}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let data = root.join("data");
    println!("== tenant of ~{mib} MiB of contact records");

    // Populate offline through the storage layer (group-committed, 8 writers),
    // with the keyring the host will load.
    let started = Instant::now();
    let (tenant, admin, records) = common::populate(&data, mib, "local");
    println!(
        "populated {records} records in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let (mut host, addr) = start(&data, &["--backup-interval", "0s"]);

    // Baseline write latency, then the same writer while an export runs.
    let stall_idle = writer_stall(addr, &admin, &tenant, Duration::from_secs(2), || {});
    let export_file = root.join("export.tar.zst");
    // The stall is measured during an export streamed to a sink: a client that
    // writes the file to this same disk would make the writer's fsyncs wait for
    // that file's writeback (ext4, data=ordered) and measure the disk instead.
    let mut first_export = Duration::ZERO;
    let stall_export = writer_stall(addr, &admin, &tenant, Duration::ZERO, || {
        let started = Instant::now();
        let mut conn = Conn::open(addr);
        let status = conn.request_to(
            "GET",
            &format!("/v1/tenants/{tenant}/export"),
            &admin,
            &mut std::io::sink(),
        );
        assert_eq!(status, 200);
        first_export = started.elapsed();
    });
    let export_once = || {
        let started = Instant::now();
        let mut conn = Conn::open(addr);
        let mut file = std::io::BufWriter::new(std::fs::File::create(&export_file).unwrap());
        let status = conn.request_to(
            "GET",
            &format!("/v1/tenants/{tenant}/export"),
            &admin,
            &mut file,
        );
        assert_eq!(status, 200);
        file.flush().unwrap();
        started.elapsed().as_secs_f64()
    };
    let mut export_times = vec![export_once()];

    // The same NDJSON through stock tar | zstd -3.
    let unpacked = root.join("unpacked");
    std::fs::create_dir_all(&unpacked).unwrap();
    assert!(Command::new("tar")
        .arg("--zstd")
        .arg("-xf")
        .arg(&export_file)
        .arg("-C")
        .arg(&unpacked)
        .status()
        .unwrap()
        .success());
    let ndjson_bytes: u64 = std::fs::read_dir(unpacked.join("collections"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    let baseline_out = root.join("baseline.tar.zst");
    let baseline_once = || {
        let started = Instant::now();
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "tar -cf - -C {} collections | zstd -3 -q -f -o {}",
                unpacked.display(),
                baseline_out.display()
            ))
            .status()
            .unwrap();
        assert!(status.success());
        started.elapsed().as_secs_f64()
    };
    // DR backup: the same archive, sealed, into the spool; then the next round
    // waits until the replicator has copied it to every region, so that its
    // work does not overlap the next measurements.
    let backup_once = || {
        let started = Instant::now();
        let mut conn = Conn::open(addr);
        let (status, body) = conn.request(
            "POST",
            &format!("/v1/tenants/{tenant}/backups"),
            &admin,
            b"",
        );
        assert_eq!(status, 202);
        let backup: Value = serde_json::from_slice(&body).unwrap();
        let path = format!(
            "/v1/tenants/{tenant}/backups/{}",
            backup["id"].as_str().unwrap()
        );
        let mut secs = None;
        loop {
            let (_, body) = conn.request("GET", &path, &admin, b"");
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_ne!(v["state"], "failed", "{v}");
            if v["state"] == "done" && secs.is_none() {
                secs = Some(started.elapsed().as_secs_f64());
            }
            let replicated = v["regions"]
                .as_object()
                .is_some_and(|r| r.values().all(|s| s["state"] == "verified"));
            if let (Some(secs), true) = (secs, replicated) {
                return secs;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // Rounds, interleaved, so that the machine's noise falls on all three alike.
    const ROUNDS: usize = 5;
    let mut baseline_times = Vec::new();
    let mut backup_times = Vec::new();
    for round in 0..ROUNDS {
        if round > 0 {
            export_times.push(export_once());
        }
        baseline_times.push(baseline_once());
        backup_times.push(backup_once());
    }
    let (_, export_hwm, _) = process_status(host.id());
    let export_secs = median(&export_times);
    let baseline_secs = median(&baseline_times);
    let backup_secs = median(&backup_times);
    let export_size = std::fs::metadata(&export_file).unwrap().len();
    let baseline_size = std::fs::metadata(&baseline_out).unwrap().len();
    let mb = ndjson_bytes as f64 / 1e6;
    println!(
        "NDJSON: {:.1} MB in {records} records; medians of {ROUNDS} interleaved rounds (min-max)",
        mb
    );
    println!(
        "first export after the host started (cold, counts lengths): {:.2} s",
        first_export.as_secs_f64()
    );
    println!(
        "coffer export (HTTP, streamed):  {:>6.2} s ({})  {:>6.1} MB/s  archive {:.1} MB ({:.1}:1)",
        export_secs,
        spread(&export_times),
        mb / export_secs,
        export_size as f64 / 1e6,
        ndjson_bytes as f64 / export_size as f64
    );
    println!(
        "tar -cf - | zstd -3 (same files): {:>6.2} s ({})  {:>6.1} MB/s  archive {:.1} MB ({:.1}:1)",
        baseline_secs,
        spread(&baseline_times),
        mb / baseline_secs,
        baseline_size as f64 / 1e6,
        ndjson_bytes as f64 / baseline_size as f64
    );
    println!(
        "ratio export / (tar | zstd) throughput: {:.2}x",
        baseline_secs / export_secs
    );
    println!(
        "coffer DR backup (sealed, to the store): {:>6.2} s ({})  {:>6.1} MB/s  ratio to tar|zstd {:.2}x",
        backup_secs,
        spread(&backup_times),
        mb / backup_secs,
        baseline_secs / backup_secs
    );
    let (_, backup_hwm, _) = process_status(host.id());
    common::stop(&mut host);

    // Restore: import the export into a fresh host.
    let fresh = root.join("fresh");
    let (mut second, addr2) = start(&fresh, &["--backup-interval", "0s"]);
    let operator2 = std::fs::read_to_string(fresh.join("operator.token"))
        .unwrap()
        .trim()
        .to_string();
    let started = Instant::now();
    let bytes = std::fs::read(&export_file).unwrap();
    let (status, body) = Conn::open(addr2).request(
        "POST",
        "/v1/tenants/import?name=restored",
        &operator2,
        &bytes,
    );
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let restore_secs = started.elapsed().as_secs_f64();
    let (_, restore_hwm, _) = process_status(second.id());
    common::stop(&mut second);

    println!(
        "coffer restore (import of the export): {:>6.2} s  {:>6.1} MB/s  {:.0} records/s",
        restore_secs,
        mb / restore_secs,
        records as f64 / restore_secs
    );
    println!("host peak RSS: after the exports {export_hwm} MiB, after the DR backups {backup_hwm} MiB; restoring host {restore_hwm} MiB");
    println!(
        "longest write by a concurrent writer: idle {:.1} ms, during the export {:.1} ms",
        stall_idle.as_secs_f64() * 1000.0,
        stall_export.as_secs_f64() * 1000.0
    );
    for log in [data.with_extension("log"), fresh.with_extension("log")] {
        if let Ok(text) = std::fs::read_to_string(&log) {
            for line in text.lines().filter(|l| l.contains("slow")).take(20) {
                println!("host log: {line}");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&root);
}

fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn spread(samples: &[f64]) -> String {
    let min = samples.iter().copied().fold(f64::INFINITY, f64::min);
    let max = samples.iter().copied().fold(0.0, f64::max);
    format!("{min:.2}-{max:.2}")
}

/// Runs `during` while a writer posts records; returns the longest write latency.
/// With a zero-length `run_for` the writer runs exactly as long as `during`.
fn writer_stall(
    addr: std::net::SocketAddr,
    admin: &str,
    tenant: &str,
    run_for: Duration,
    during: impl FnOnce(),
) -> Duration {
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, admin, path) = (
            stop.clone(),
            admin.to_string(),
            format!("/v1/tenants/{tenant}/collections/deals/records"),
        );
        std::thread::spawn(move || {
            let mut conn = Conn::open(addr);
            let mut longest = Duration::ZERO;
            while !stop.load(Ordering::SeqCst) {
                let started = Instant::now();
                let (status, _) =
                    conn.request("POST", &path, &admin, br#"{"title":"stall probe"}"#);
                assert_eq!(status, 201);
                longest = longest.max(started.elapsed());
                std::thread::sleep(Duration::from_millis(2));
            }
            longest
        })
    };
    during();
    std::thread::sleep(run_for);
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap()
}
