//! Webhook figures, side by side in one run on the release binary: the time
//! from an audited event (the answer to the request that caused it) to its
//! delivery at a healthy receiver (p50/p99), and the host's record reads/s
//! with 1,000 events queued to a receiver that never answers, against the
//! same host work with no webhook.
//!
//! Run: `cargo bench --bench webhooks -- [--events N]` (default 200 timed
//! events; 1,000 queued).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{create_tenant, ms, percentile, Conn};
use serde_json::Value;

/// A receiver on loopback: answers 204 to every POST (or never, when
/// `hang`), and notes when each arrived.
fn receiver(hang: bool) -> (String, Arc<Mutex<Vec<Instant>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let seen = arrivals.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut stream = stream;
                loop {
                    let mut length = 0;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    if hang {
                        std::thread::sleep(Duration::from_secs(3600));
                    }
                    seen.lock().unwrap().push(Instant::now());
                    let _ = stream.write_all(b"HTTP/1.1 204 No Content\r\n\r\n");
                }
            });
        }
    });
    (url, arrivals)
}

fn host(root: &std::path::Path, name: &str) -> (std::process::Child, std::net::SocketAddr, String) {
    common::start_configured(
        &root.join(name),
        "[webhooks]\nallow_http_loopback = true\ntimeout = \"10s\"\n",
        &[],
    )
}

fn register(conn: &mut Conn, tenant: &str, admin: &str, url: &str) {
    let body = format!(r#"{{"url":"{url}"}}"#);
    let (status, answer) = conn.request(
        "POST",
        &format!("/v1/tenants/{tenant}/webhooks"),
        admin,
        body.as_bytes(),
    );
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&answer));
}

fn mint(conn: &mut Conn, admin: &str, i: usize) -> Instant {
    let body = format!(r#"{{"role":"tenant-admin","name":"b{i}"}}"#);
    let (status, _) = conn.request("POST", "/v1/tokens", admin, body.as_bytes());
    assert_eq!(status, 201);
    Instant::now()
}

/// Record reads/s of one client for `secs` seconds.
fn reads(addr: std::net::SocketAddr, tenant: &str, admin: &str, secs: u64) -> f64 {
    let mut conn = Conn::open(addr);
    let (status, body) = conn.request(
        "POST",
        &format!("/v1/tenants/{tenant}/collections/contacts/records"),
        admin,
        br#"{"name":"Ada"}"#,
    );
    assert_eq!(status, 201);
    let id = serde_json::from_slice::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!("/v1/tenants/{tenant}/collections/contacts/records/{id}");
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(secs) {
        let (status, _) = conn.request("GET", &path, admin, b"");
        assert_eq!(status, 200);
        n += 1;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let events = common::flag("--events", 200);
    let root = std::env::temp_dir().join(format!("coffer-bench-webhooks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();

    println!("== from an audited event to its delivery, healthy receiver ({events} events, one at a time)");
    let (mut a, a_addr, a_op) = host(&root, "healthy");
    let (tenant, admin) = create_tenant(a_addr, &a_op, "Hooked");
    let (url, arrivals) = receiver(false);
    let mut conn = Conn::open(a_addr);
    register(&mut conn, &tenant, &admin, &url);
    let mut latencies = Vec::new();
    for i in 0..events {
        let acked = mint(&mut conn, &admin, i);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(at) = arrivals.lock().unwrap().get(i) {
                latencies.push(at.saturating_duration_since(acked));
                break;
            }
            assert!(Instant::now() < deadline, "event {i} not delivered");
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    latencies.sort();
    println!(
        "event to delivery: p50 {:.1} ms, p99 {:.1} ms, worst {:.1} ms",
        ms(percentile(&latencies, 50)),
        ms(percentile(&latencies, 99)),
        ms(*latencies.last().unwrap())
    );
    let _ = a.kill();
    let _ = a.wait();

    println!(
        "== record reads/s with 1,000 events queued to a receiver that never answers, against none"
    );
    for (name, hooked) in [("hung-receiver", true), ("no-webhook", false)] {
        let (mut h, addr, op) = host(&root, name);
        let (tenant, admin) = create_tenant(addr, &op, name);
        let mut conn = Conn::open(addr);
        if hooked {
            let (url, _) = receiver(true);
            register(&mut conn, &tenant, &admin, &url);
        }
        let started = Instant::now();
        for i in 0..1000 {
            mint(&mut conn, &admin, i);
        }
        let queued_in = started.elapsed();
        let rate = reads(addr, &tenant, &admin, 5);
        println!(
            "{name}: 1,000 events made in {:.1} s ({:.0}/s); then {rate:.0} record reads/s",
            queued_in.as_secs_f64(),
            1000.0 / queued_in.as_secs_f64()
        );
        let _ = h.kill();
        let _ = h.wait();
    }
    let _ = std::fs::remove_dir_all(&root);
}
