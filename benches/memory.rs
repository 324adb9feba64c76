//! A host that exports several large tenants in turn: its RSS after each
//! export, with the default memory high mark (a quarter of the machine: never
//! reached here) and with a low one (`[tenants] memory_high_mb`), where a
//! tenant an export read whole is closed afterwards and freed heap is given
//! back; and what that costs the tenant's next request (a cold open).
//!
//! Run: `cargo bench --bench memory -- [--tenants N] [--mib N] [--high-mib N]`
//! (defaults 3 tenants of 256 MiB, mark 64 MiB). `COFFER_BENCH_KEEP=<dir>`
//! populates once and reuses the tenants after.

mod common;

use std::time::{Duration, Instant};

use common::{ms, process_status, start_configured, Conn};

fn main() {
    let tenants = common::flag("--tenants", 3);
    let mib = common::flag("--mib", 256) as u64;
    let high = common::flag("--high-mib", 64);
    let kept = std::env::var_os("COFFER_BENCH_KEEP").map(std::path::PathBuf::from);
    let root = kept.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("coffer-bench-memory-{}", std::process::id()))
    });
    let data = root.join("data");
    let list = root.join("tenants.txt");
    let made: Vec<(String, String)> = match std::fs::read_to_string(&list) {
        Ok(text) if kept.is_some() => text
            .lines()
            .map(|l| {
                let (id, token) = l.split_once(' ').unwrap();
                (id.to_string(), token.to_string())
            })
            .collect(),
        _ => {
            let _ = std::fs::remove_dir_all(&root);
            let started = Instant::now();
            let made: Vec<_> = (0..tenants)
                .map(|_| {
                    let (id, token, _) = common::populate(&data, mib, "local");
                    (id, token)
                })
                .collect();
            println!(
                "populated {tenants} tenants of ~{mib} MiB in {:.0} s",
                started.elapsed().as_secs_f64()
            );
            let text: Vec<String> = made.iter().map(|(id, t)| format!("{id} {t}")).collect();
            std::fs::write(&list, text.join("\n")).unwrap();
            made
        }
    };
    println!("{} tenants of ~{mib} MiB each", made.len());
    for (label, toml) in [
        ("default mark".to_string(), String::new()),
        (
            format!("memory_high_mb = {high}"),
            format!("[tenants]\nmemory_high_mb = {high}\n"),
        ),
    ] {
        let (mut host, addr, _) = start_configured(&data, &toml, &[]);
        let pid = host.id();
        println!("\n## {label}: host RSS idle {} MiB", process_status(pid).0);
        println!("| round | tenant | export s | RSS after (MiB) | next read ms |");
        println!("|---:|---:|---:|---:|---:|");
        for round in 1..=2 {
            for (n, (id, admin)) in made.iter().enumerate() {
                let started = Instant::now();
                let status = Conn::open(addr).request_to(
                    "GET",
                    &format!("/v1/tenants/{id}/export"),
                    admin,
                    &mut std::io::sink(),
                );
                assert_eq!(status, 200);
                let secs = started.elapsed().as_secs_f64();
                // The release runs after the archive's end reached the client.
                std::thread::sleep(Duration::from_millis(500));
                let rss = process_status(pid).0;
                let read = Instant::now();
                let path = format!("/v1/tenants/{id}/collections/contacts/records?limit=1");
                let (status, _) = Conn::open(addr).request("GET", &path, admin, b"");
                assert_eq!(status, 200);
                println!(
                    "| {round} | {} | {secs:.2} | {rss} | {:.1} |",
                    n + 1,
                    ms(read.elapsed())
                );
            }
        }
        println!("host RSS at the end: {} MiB", process_status(pid).0);
        common::stop(&mut host);
    }
}
