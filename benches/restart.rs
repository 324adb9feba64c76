//! A host of many small tenants, each written once, restarted: how many
//! tenant databases its start opens to look at their change logs, and how
//! long those opens take, after a clean stop and after SIGKILL; with the
//! binary in `COFFER_BIN_BEFORE` (when set) for the same restart beside it.
//!
//! Run: `cargo bench --bench restart -- [--tenants N] [--watch-secs N]`
//! (defaults 1,000 tenants, 10 s watched after each start).

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{create_tenant, process_status, start_configured, Conn};

/// The metrics address the host logged (`metrics serving address=`).
fn metrics_address(data: &std::path::Path) -> SocketAddr {
    let log = data.with_extension("log");
    for _ in 0..200 {
        let file = std::fs::File::open(&log).unwrap();
        for line in BufReader::new(file).lines().map_while(Result::ok) {
            if let Some(at) = line.split("address=").nth(1) {
                if line.contains("metrics serving") {
                    return at.split_whitespace().next().unwrap().parse().unwrap();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no metrics address in {}", log.display());
}

/// (cold opens, their total seconds) from the host's metrics.
fn cold_opens(metrics: SocketAddr) -> (f64, f64) {
    let (status, body) = Conn::open(metrics).request("GET", "/metrics", "", b"");
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    let series = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        series("coffer_tenant_open_duration_seconds_count"),
        series("coffer_tenant_open_duration_seconds_sum"),
    )
}

/// What the last host said about its stop and its start (to stderr).
fn said(data: &std::path::Path) {
    let log = std::fs::read_to_string(data.with_extension("log")).unwrap_or_default();
    for line in log.lines().filter(|l| {
        l.contains("did not stop in time")
            || l.contains("change logs shipped at the stop")
            || l.contains("change logs to ship after the start")
    }) {
        eprintln!("  {}", line.split_once("Z ").map_or(line, |(_, rest)| rest));
    }
}

fn main() {
    let tenants = common::flag("--tenants", 1000);
    let watch = Duration::from_secs(common::flag("--watch-secs", 10) as u64);
    let root = std::env::temp_dir().join(format!("coffer-bench-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let data = root.join("data");
    let toml = "[host]\nmetrics_listen = \"127.0.0.1:0\"\n[tenants]\nopen_max = 256\n";
    let now = std::env::var("COFFER_BIN").unwrap_or_else(|_| common::BIN.to_string());
    let before = std::env::var("COFFER_BIN_BEFORE").ok();
    // The metrics address is logged at info.
    std::env::set_var("COFFER_BENCH_LOG", "info");

    let (mut host, addr, operator) = start_configured(&data, toml, &[]);
    let started = Instant::now();
    // The host's threads (base backups run on threads of their own), sampled.
    let pid = host.id();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                peak = peak.max(process_status(pid).2);
                std::thread::sleep(Duration::from_millis(100));
            }
            peak
        })
    };
    for i in 0..tenants {
        let (tenant, admin) = create_tenant(addr, &operator, &format!("tenant {i}"));
        let (status, _) = Conn::open(addr).request(
            "POST",
            &format!("/v1/tenants/{tenant}/collections/contacts/records"),
            &admin,
            format!(r#"{{"name":"c{i}","email":"c{i}@x.test"}}"#).as_bytes(),
        );
        assert_eq!(status, 201);
    }
    println!(
        "{tenants} tenants created and written once in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // Their logs ship (segments close after 2 s), then a clean stop.
    std::thread::sleep(Duration::from_secs(3));
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    println!(
        "host of {now}: {} threads at most while they were created",
        sampler.join().unwrap()
    );
    let stopping = Instant::now();
    common::stop(&mut host);
    println!("stopped in {:.1} s", stopping.elapsed().as_secs_f64());
    said(&data);

    println!("| binary | the start follows | cold opens in the first {} s | their total time | host RSS then |", watch.as_secs());
    println!("|---|---|---:|---:|---:|");
    let mut runs: Vec<(&str, String, bool)> = vec![("this build", now.clone(), false)];
    if let Some(before) = &before {
        runs.push(("before", before.clone(), false));
    }
    runs.push(("this build", now.clone(), true));
    for (label, bin, after_kill) in runs {
        // A clean stop of this build before each run, so that each start
        // follows the stop it claims (the one above for the first).
        if label == "before" || after_kill {
            std::env::set_var("COFFER_BIN", &now);
            let (mut host, _, _) = start_configured(&data, toml, &[]);
            std::thread::sleep(Duration::from_secs(1));
            common::stop(&mut host);
        }
        std::env::set_var("COFFER_BIN", &bin);
        let (mut host, _, _) = start_configured(&data, toml, &[]);
        let metrics = metrics_address(&data);
        let (mut host, follows) = if after_kill {
            // Killed at once: the start after it cannot trust anything.
            host.kill().unwrap();
            host.wait().unwrap();
            std::env::set_var("COFFER_BIN", &now);
            let (host, _, _) = start_configured(&data, toml, &[]);
            (host, "SIGKILL")
        } else {
            (host, "a clean stop")
        };
        let metrics = if after_kill {
            metrics_address(&data)
        } else {
            metrics
        };
        std::thread::sleep(watch);
        let (opens, secs) = cold_opens(metrics);
        let rss = process_status(host.id()).0;
        println!("| {label} | {follows} | {opens:.0} | {secs:.2} s | {rss} MiB |");
        common::stop(&mut host);
        said(&data);
    }
    std::env::set_var("COFFER_BIN", &now);
    let _ = std::fs::remove_dir_all(&root);
}
