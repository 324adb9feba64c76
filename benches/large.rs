//! A large tenant as a neighbour, measured from outside on the release binary:
//! two writers post every 2 ms — one to the large tenant, one to a small
//! *other* tenant — while the large tenant is exported cold (host restarted,
//! the kernel's page cache dropped), exported warm, and backed up; the same
//! writers with nothing else running are the baseline. Beside it, in the same
//! run, `tar -cf - | zstd -3` over the very NDJSON the export holds, cold and
//! warm, and the host's RSS idle, during and after. Then the same jobs alone
//! (a new host, no writers), as `tar | zstd` runs, for the speed ratios.
//!
//! Run: `cargo bench --bench large -- [--mib N] [--restart-writes N]` (default
//! 1024 MiB; with `--restart-writes`, only the restart measure below). Dropping the
//! page cache needs root (`/proc/sys/vm/drop_caches`); without it "cold"
//! means only "not read since the host started".

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{create_tenant, ms, percentile, process_status, start, Conn};
use serde_json::Value;

const PHASES: [&str; 5] = [
    "nothing else running",
    "cold export",
    "warm export",
    "DR backup",
    "nothing else running, after",
];

fn main() {
    let mib = common::flag("--mib", 1024) as u64;
    // COFFER_BENCH_KEEP=<dir>: populate once into <dir> and reuse it after.
    let kept = std::env::var_os("COFFER_BENCH_KEEP").map(std::path::PathBuf::from);
    let root = kept.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("coffer-bench-large-{}", std::process::id()))
    });
    let data = root.join("data");
    let (big, big_admin, records) = match std::fs::read_to_string(root.join("tenant.txt")) {
        Ok(text) if kept.is_some() => {
            let mut words = text.split_whitespace().map(str::to_string);
            let (id, token) = (words.next().unwrap(), words.next().unwrap());
            (id, token, words.next().unwrap().parse().unwrap())
        }
        _ => {
            let _ = std::fs::remove_dir_all(&root);
            let started = Instant::now();
            let made = common::populate(&data, mib, "local");
            println!("populated in {:.0} s", started.elapsed().as_secs_f64());
            std::fs::write(
                root.join("tenant.txt"),
                format!("{} {} {}", made.0, made.1, made.2),
            )
            .unwrap();
            made
        }
    };
    println!("a ~{mib} MiB tenant of {records} contacts");
    let restart_writes = common::flag("--restart-writes", 0);
    if restart_writes > 0 {
        return restart(&data, &big, &big_admin, restart_writes);
    }
    let dropped = drop_caches();
    let (mut host, addr) = start(&data, &["--backup-interval", "0s"]);
    let pid = host.id();
    let operator = std::fs::read_to_string(data.join("operator.token")).unwrap();
    // Created through the API, as a host creates tenants.
    let (small, small_admin) = create_tenant(addr, operator.trim(), "neighbour");
    let rss_idle = process_status(pid).0;

    let phase = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let rss_peak = Arc::new(Mutex::new([0u64; PHASES.len()]));
    let sampler = {
        let (phase, stop, rss_peak) = (phase.clone(), stop.clone(), rss_peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let rss = process_status(pid).0;
                let p = phase.load(Ordering::SeqCst);
                let mut peaks = rss_peak.lock().unwrap();
                peaks[p] = peaks[p].max(rss);
                drop(peaks);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let writer = |tenant: &str, admin: &str| {
        let (phase, stop) = (phase.clone(), stop.clone());
        let (admin, path) = (
            admin.to_string(),
            format!("/v1/tenants/{tenant}/collections/deals/records"),
        );
        std::thread::spawn(move || {
            let mut conn = Conn::open(addr);
            let mut seen: Vec<Vec<Duration>> = vec![Vec::new(); PHASES.len()];
            let mut first = None;
            while !stop.load(Ordering::SeqCst) {
                let p = phase.load(Ordering::SeqCst);
                let started = Instant::now();
                let (status, _) =
                    conn.request("POST", &path, &admin, br#"{"title":"neighbour probe"}"#);
                assert_eq!(status, 201);
                let took = started.elapsed();
                match first {
                    None => first = Some(took),
                    Some(_) => seen[p].push(took),
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (first.unwrap_or_default(), seen)
        })
    };
    let same = writer(&big, &big_admin);
    let other = writer(&small, &small_admin);

    let export_to = |out: &mut dyn std::io::Write| export(addr, &big, &big_admin, out);
    std::thread::sleep(Duration::from_secs(5));
    phase.store(1, Ordering::SeqCst);
    // To a sink: a file on this disk would make every writer's fsync wait
    // for its writeback (ext4, data=ordered) and measure the disk instead.
    let cold_export = export_to(&mut std::io::sink());
    phase.store(2, Ordering::SeqCst);
    let export_file = root.join("export.tar.zst");
    let warm_export = {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&export_file).unwrap());
        let secs = export_to(&mut file);
        std::io::Write::flush(&mut file).unwrap();
        secs
    };
    phase.store(3, Ordering::SeqCst);
    let backup_secs = backup(addr, &big, &big_admin);
    phase.store(4, Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(5));
    stop.store(true, Ordering::SeqCst);
    let (same_first, same) = same.join().unwrap();
    let (other_first, other) = other.join().unwrap();
    sampler.join().unwrap();
    let rss_after = process_status(pid).0;
    let peaks = *rss_peak.lock().unwrap();
    common::stop(&mut host);

    // The same jobs alone, as `tar | zstd` runs: a new host, the tenant opened
    // by one read, the page cache dropped, then no writers.
    let (mut host, addr) = start(&data, &["--backup-interval", "0s"]);
    let pid = host.id();
    let mut conn = Conn::open(addr);
    let (status, _) = conn.request(
        "GET",
        &format!("/v1/tenants/{big}/collections/deals/records?limit=1"),
        &big_admin,
        b"",
    );
    assert_eq!(status, 200);
    drop_caches();
    let alone_idle = process_status(pid).0;
    let (alone_cold, cold_peak) =
        peak_rss(pid, || export(addr, &big, &big_admin, &mut std::io::sink()));
    let (alone_warm, warm_peak) =
        peak_rss(pid, || export(addr, &big, &big_admin, &mut std::io::sink()));
    let (alone_backup, backup_peak) = peak_rss(pid, || backup(addr, &big, &big_admin));
    let alone_after = process_status(pid).0;
    common::stop(&mut host);

    // The same NDJSON through stock tar | zstd -3, cold then warm.
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
    let ndjson: u64 = std::fs::read_dir(unpacked.join("collections"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    let baseline = |cold: bool| {
        if cold {
            drop_caches();
        }
        let started = Instant::now();
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "tar -cf - -C {} collections | zstd -3 -q -c > /dev/null",
                unpacked.display()
            ))
            .status()
            .unwrap();
        assert!(status.success());
        started.elapsed().as_secs_f64()
    };
    let tar_cold = baseline(true);
    let tar_warm = baseline(false);

    let mb = ndjson as f64 / 1e6;
    println!(
        "NDJSON {mb:.1} MB; page cache dropped before the cold runs: {}",
        if dropped { "yes" } else { "no (not root)" }
    );
    println!(
        "first write of each writer (opens its tenant): same {:.1} ms, other {:.1} ms",
        ms(same_first),
        ms(other_first)
    );
    println!("| while | same tenant's writes p50 / p99 / max (n) | other tenant's writes p50 / p99 / max (n) | host RSS peak |");
    println!("|---|---:|---:|---:|");
    for (i, name) in PHASES.iter().enumerate() {
        println!(
            "| {name} | {} | {} | {} MiB |",
            summary(&same[i]),
            summary(&other[i]),
            peaks[i]
        );
    }
    println!("host RSS: idle {rss_idle} MiB, after {rss_after} MiB");
    println!("| job | time | MB/s | ratio to `tar \\| zstd -3` |");
    println!("|---|---:|---:|---:|");
    for (name, secs, base) in [
        ("export, cold (to a sink)", cold_export, tar_cold),
        ("export, warm (to a file)", warm_export, tar_warm),
        (
            "DR backup, warm (sealed, to the spool)",
            backup_secs,
            tar_warm,
        ),
        ("`tar -cf - | zstd -3`, cold", tar_cold, tar_cold),
        ("`tar -cf - | zstd -3`, warm", tar_warm, tar_warm),
    ] {
        println!(
            "| {name} | {secs:.2} s | {:.1} | {:.2}x |",
            mb / secs,
            base / secs
        );
    }
    println!(
        "alone (no writers; host RSS {alone_idle} MiB with the tenant open, {alone_after} MiB after):"
    );
    println!("| job, alone | time | MB/s | ratio to `tar \\| zstd -3` | host RSS peak |");
    println!("|---|---:|---:|---:|---:|");
    for (name, secs, base, peak) in [
        ("export, cold (to a sink)", alone_cold, tar_cold, cold_peak),
        ("export, warm (to a sink)", alone_warm, tar_warm, warm_peak),
        (
            "DR backup, warm (sealed, to the spool)",
            alone_backup,
            tar_warm,
            backup_peak,
        ),
    ] {
        println!(
            "| {name} | {secs:.2} s | {:.1} | {:.2}x | {peak} MiB |",
            mb / secs,
            base / secs
        );
    }
    if let Ok(text) = std::fs::read_to_string(data.with_extension("log")) {
        for line in text.lines().filter(|l| l.contains("slow")).take(10) {
            println!("host log: {line}");
        }
    }
    let _ = std::fs::remove_dir_all(root.join("unpacked"));
    let _ = std::fs::remove_file(&export_file);
    if kept.is_none() {
        let _ = std::fs::remove_dir_all(&root);
    }
}

/// `--restart-writes N`: N records written to the large tenant by 8 clients,
/// the host stopped (SIGTERM) and started again with the page cache dropped;
/// the stop and the first read after the start timed. What the next start
/// costs a tenant written much since it was opened.
fn restart(data: &std::path::Path, big: &str, admin: &str, writes: usize) {
    let (mut host, addr) = start(data, &["--backup-interval", "0s"]);
    let path = format!("/v1/tenants/{big}/collections/deals/records");
    let first = Instant::now();
    let (status, _) = Conn::open(addr).request("GET", &format!("{path}?limit=1"), admin, b"");
    assert_eq!(status, 200);
    println!(
        "first read after the start (opens it): {:.0} ms",
        ms(first.elapsed())
    );
    let started = Instant::now();
    let clients = 8;
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (path, admin) = (path.clone(), admin.to_string());
            std::thread::spawn(move || {
                let mut conn = Conn::open(addr);
                for _ in 0..writes / clients {
                    let (status, _) =
                        conn.request("POST", &path, &admin, br#"{"title":"restart probe"}"#);
                    assert_eq!(status, 201);
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    println!(
        "{} writes by {clients} clients in {:.1} s",
        writes / clients * clients,
        started.elapsed().as_secs_f64()
    );
    let stopping = Instant::now();
    common::stop(&mut host);
    println!("host stopped in {:.0} ms", ms(stopping.elapsed()));
    drop_caches();
    let (mut host, addr) = start(data, &["--backup-interval", "0s"]);
    let first = Instant::now();
    let (status, _) = Conn::open(addr).request("GET", &format!("{path}?limit=1"), admin, b"");
    assert_eq!(status, 200);
    println!(
        "first read after the restart (opens it): {:.0} ms",
        ms(first.elapsed())
    );
    common::stop(&mut host);
}

/// The tenant's export streamed into `out`; its time in seconds.
fn export(
    addr: std::net::SocketAddr,
    tenant: &str,
    admin: &str,
    out: &mut dyn std::io::Write,
) -> f64 {
    let started = Instant::now();
    let status =
        Conn::open(addr).request_to("GET", &format!("/v1/tenants/{tenant}/export"), admin, out);
    assert_eq!(status, 200);
    started.elapsed().as_secs_f64()
}

/// Runs `job`, sampling `pid`'s RSS every 50 ms: its result and the peak (MiB).
fn peak_rss<T>(pid: u32, job: impl FnOnce() -> T) -> (T, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(Ordering::SeqCst) {
                peak = peak.max(process_status(pid).0);
                std::thread::sleep(Duration::from_millis(50));
            }
            peak.max(process_status(pid).0)
        })
    };
    let out = job();
    stop.store(true, Ordering::SeqCst);
    (out, sampler.join().unwrap())
}

/// A DR backup, timed until it is sealed into the spool; then waits until
/// the replicator has copied it to every region.
fn backup(addr: std::net::SocketAddr, tenant: &str, admin: &str) -> f64 {
    let started = Instant::now();
    let mut conn = Conn::open(addr);
    let (status, body) = conn.request("POST", &format!("/v1/tenants/{tenant}/backups"), admin, b"");
    assert_eq!(status, 202);
    let id = serde_json::from_slice::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!("/v1/tenants/{tenant}/backups/{id}");
    let mut sealed = None;
    loop {
        let (_, body) = conn.request("GET", &path, admin, b"");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_ne!(v["state"], "failed", "{v}");
        if v["state"] == "done" && sealed.is_none() {
            sealed = Some(started.elapsed().as_secs_f64());
        }
        let replicated = v["regions"]
            .as_object()
            .is_some_and(|r| r.values().all(|s| s["state"] == "verified"));
        if let (Some(secs), true) = (sealed, replicated) {
            return secs;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn summary(samples: &[Duration]) -> String {
    if samples.is_empty() {
        return "—".into();
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    format!(
        "{:.1} / {:.1} / {:.1} ms ({})",
        ms(percentile(&sorted, 50)),
        ms(percentile(&sorted, 99)),
        ms(*sorted.last().unwrap()),
        sorted.len()
    )
}

/// Writes dirty pages out, then drops the kernel's page cache (root only).
fn drop_caches() -> bool {
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}
