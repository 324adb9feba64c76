//! Whole-system load: the release `coffer` binary on loopback, driven by N
//! concurrent keep-alive clients writing durable records, then a host with many
//! tenants (peak RSS, threads, first request to a cold tenant).
//!
//! Run: `cargo bench --bench http_load -- [--tenants N] [--writes N]`
//! (defaults: 10000 tenants, 4000 writes per concurrency level).

mod common;

use std::time::Instant;

use common::{create_tenant, ms, percentile, process_status, start, write_load, Conn};

fn main() {
    let tenants = common::flag("--tenants", 10_000);
    let writes = common::flag("--writes", 4_000);
    let data = std::env::temp_dir().join(format!("coffer-bench-http-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let (mut child, addr) = start(&data, &[]);
    let operator = std::fs::read_to_string(data.join("operator.token"))
        .unwrap()
        .trim()
        .to_string();

    println!("== durable acknowledged writes through the API (1 KiB contacts, one tenant)");
    let (tenant, admin) = create_tenant(addr, &operator, "load");
    for clients in [1usize, 8, 64] {
        let (rate, p50, p99) = write_load(addr, &tenant, &admin, clients, writes);
        println!(
            "clients {clients:>3}: {rate:>8.0} writes/s  p50 {p50:>7.2} ms  p99 {p99:>7.2} ms  ({} writes)",
            (writes / clients).max(10) * clients
        );
    }

    if tenants > 0 {
        println!("== {tenants} tenants on one host (open-tenants-max 512)");
        let start = Instant::now();
        let creators = 8;
        let handles: Vec<_> = (0..creators)
            .map(|w| {
                let operator = operator.clone();
                std::thread::spawn(move || {
                    let mut conn = Conn::open(addr);
                    let mut made = Vec::new();
                    for i in (w..tenants).step_by(creators) {
                        let body = format!(r#"{{"name":"t{i}","region":"local","schema":"crm"}}"#);
                        let (status, body) =
                            conn.request("POST", "/v1/tenants", &operator, body.as_bytes());
                        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
                        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                        let (id, token) = (
                            v["id"].as_str().unwrap().to_string(),
                            v["admin_token"].as_str().unwrap().to_string(),
                        );
                        // One record each, so every tenant has been opened and written.
                        let path = format!("/v1/tenants/{id}/collections/contacts/records");
                        let (status, _) = conn.request("POST", &path, &token, br#"{"name":"x"}"#);
                        assert_eq!(status, 201);
                        made.push((i, id, token));
                    }
                    made
                })
            })
            .collect();
        let mut made: Vec<(usize, String, String)> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        made.sort();
        println!(
            "created {} tenants with one record each in {:.1} s ({:.0} tenants/s)",
            made.len(),
            start.elapsed().as_secs_f64(),
            made.len() as f64 / start.elapsed().as_secs_f64()
        );
        let (rss, hwm, threads) = process_status(child.id());
        println!("server after creation: RSS {rss} MiB, peak RSS {hwm} MiB, {threads} threads");
        // The oldest tenants were evicted from the pool long ago: cold.
        let sample = 500.min(made.len() / 2);
        let mut conn = Conn::open(addr);
        let mut cold = Vec::with_capacity(sample);
        for (_, id, token) in made.iter().take(sample) {
            let path = format!("/v1/tenants/{id}/collections/contacts/records?limit=1");
            let t = Instant::now();
            let (status, _) = conn.request("GET", &path, token, b"");
            assert_eq!(status, 200);
            cold.push(t.elapsed());
        }
        cold.sort();
        println!(
            "first request to a cold tenant ({sample} sampled): p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            ms(percentile(&cold, 50)),
            ms(percentile(&cold, 99)),
            ms(*cold.last().unwrap())
        );
        let mut warm = Vec::with_capacity(sample);
        for (_, id, token) in made.iter().take(sample) {
            let path = format!("/v1/tenants/{id}/collections/contacts/records?limit=1");
            let t = Instant::now();
            conn.request("GET", &path, token, b"");
            warm.push(t.elapsed());
        }
        warm.sort();
        println!(
            "the same requests again, warm: p50 {:.2} ms  p99 {:.2} ms",
            ms(percentile(&warm, 50)),
            ms(percentile(&warm, 99))
        );
        let (rss, hwm, threads) = process_status(child.id());
        println!("server at the end: RSS {rss} MiB, peak RSS {hwm} MiB, {threads} threads");
    }
    common::stop(&mut child);
    let _ = std::fs::remove_dir_all(&data);
}
