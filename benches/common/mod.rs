//! Helpers shared by the whole-system benches: start the release binary, read
//! /proc, and a keep-alive HTTP/1.1 client.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer::ids::Region;
use coffer::schema::Registry;
use coffer::storage::{NewTenant, Storage};
use serde_json::{json, Map};

pub const BIN: &str = env!("CARGO_BIN_EXE_coffer");

/// Starts `coffer serve` on `data`; returns the child and its address.
/// `COFFER_BIN` runs another build of the host instead (a "before" binary
/// beside this one, in one run); `COFFER_BENCH_LOG` sets its log filter
/// (default `warn`; the log is beside the data directory).
pub fn start(data: &std::path::Path, extra: &[&str]) -> (Child, SocketAddr) {
    let bin = std::env::var("COFFER_BIN").unwrap_or_else(|_| BIN.to_string());
    let mut child = Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .args(extra)
        .env(
            "COFFER_LOG",
            std::env::var("COFFER_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(
            std::fs::File::create(data.with_extension("log"))
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null()),
        )
        .spawn()
        .expect("start coffer");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("coffer listening on http://")
        .expect("listening line")
        .parse()
        .unwrap();
    (child, addr)
}

/// Stops a host (SIGTERM, by its PID) and waits until it has exited.
pub fn stop(host: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &host.id().to_string()])
        .status();
    let _ = host.wait();
}

/// Starts a host on `data` configured by `toml` (written beside it), with no
/// scheduled backups and `extra` arguments; returns it, its address and
/// the first operator's token.
pub fn start_configured(data: &Path, toml: &str, extra: &[&str]) -> (Child, SocketAddr, String) {
    let config = data.with_extension("toml");
    std::fs::write(&config, toml).unwrap();
    let mut args = vec![
        "--config",
        config.to_str().unwrap(),
        "--backup-interval",
        "0s",
    ];
    args.extend_from_slice(extra);
    let (child, addr) = start(data, &args);
    let operator = std::fs::read_to_string(data.join("operator.token"))
        .unwrap()
        .trim()
        .to_string();
    (child, addr, operator)
}

pub fn create_tenant(addr: SocketAddr, operator: &str, name: &str) -> (String, String) {
    let body = format!(r#"{{"name":"{name}","region":"local","schema":"crm"}}"#);
    let (status, body) = Conn::open(addr).request("POST", "/v1/tenants", operator, body.as_bytes());
    assert_eq!(status, 201);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    (
        v["id"].as_str().unwrap().to_string(),
        v["admin_token"].as_str().unwrap().to_string(),
    )
}

/// (RSS MiB, peak RSS MiB, threads) from /proc.
pub fn process_status(pid: u32) -> (u64, u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (
        field("VmRSS:") / 1024,
        field("VmHWM:") / 1024,
        field("Threads:"),
    )
}

pub fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[((sorted.len() - 1) * p) / 100]
}

/// `--name N` from the bench's arguments, or `default`.
pub fn flag(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A keep-alive connection to one host, through the crate's HTTP client (its
/// pool keeps the connection open between requests).
pub struct Conn {
    client: coffer::client::Client,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Conn {
        let client =
            coffer::client::Client::new(&format!("http://{addr}"), None, Duration::from_secs(600))
                .unwrap();
        Conn { client }
    }

    /// Like `request`, streaming the body (Content-Length or chunked) to `out`.
    pub fn request_to(
        &mut self,
        method: &str,
        path: &str,
        token: &str,
        out: &mut dyn Write,
    ) -> u16 {
        let bearer = format!("Bearer {token}");
        let mut response = self
            .client
            .send(method, path, &[("Authorization", &bearer)], None)
            .unwrap();
        response.copy_body(out, |_| {}).unwrap();
        response.status
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        token: &str,
        body: &[u8],
    ) -> (u16, Vec<u8>) {
        self.request_with(method, path, token, &[], body)
    }

    /// Like `request`, with extra headers.
    pub fn request_with(
        &mut self,
        method: &str,
        path: &str,
        token: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, Vec<u8>) {
        let bearer = format!("Bearer {token}");
        let mut all = vec![("Authorization", bearer.as_str())];
        all.extend_from_slice(headers);
        let body = (!body.is_empty()).then_some(body);
        let mut response = self.client.send(method, path, &all, body).unwrap();
        let bytes = response.bytes().unwrap();
        (response.status, bytes)
    }
}

/// Creates one crm tenant with ~`mib` MiB of 1 KiB contacts, using the host's
/// own storage layer and keyring. Returns (tenant id, admin token, records).
pub fn populate(data: &Path, mib: u64, region: &str) -> (String, String, u64) {
    populate_with(data, mib, region, false)
}

/// Like [`populate`]; with `random_notes` the notes are random letters and
/// digits, so the archive stays close to the tenant's size (for transfer
/// benches) instead of compressing 16:1.
pub fn populate_with(
    data: &Path,
    mib: u64,
    region: &str,
    random_notes: bool,
) -> (String, String, u64) {
    std::fs::create_dir_all(data).unwrap();
    let keyring = coffer::keys::load(data, &coffer::keys::KeySource::DataDir).unwrap();
    let storage = Arc::new(Storage::open(data, keyring, 8, 64 << 20).unwrap());
    let schemas = Registry::embedded().unwrap();
    let schema = schemas.get("crm", 2).unwrap().clone();
    let (tenant, admin) = storage
        .create_tenant(NewTenant {
            id: None,
            name: "bench".into(),
            region: Region::parse(region).unwrap(),
            schema: "crm".into(),
            schema_version: 2,
        })
        .unwrap();
    let db = storage.tenant_db(&tenant).unwrap();
    let contacts = schema.collection("contacts").unwrap().clone();
    let records = mib * 1024;
    let writers = 16;
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let (db, contacts) = (db.clone(), contacts.clone());
            std::thread::spawn(move || {
                for i in (w..records).step_by(writers as usize) {
                    let mut fields = Map::new();
                    fields.insert("name".into(), json!(format!("Contact {i}")));
                    fields.insert("email".into(), json!(format!("contact{i}@example.com")));
                    fields.insert(
                        "phone".into(),
                        json!(format!("+44 20 7946 {:04}", i % 10_000)),
                    );
                    let notes = if random_notes {
                        let mut x = (i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                        (0..900)
                            .map(|_| {
                                x ^= x << 13;
                                x ^= x >> 7;
                                x ^= x << 17;
                                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
                                    [(x % 64) as usize] as char
                            })
                            .collect::<String>()
                    } else {
                        format!("{i} ").repeat(900 / (format!("{i} ").len()))
                    };
                    fields.insert("notes".into(), json!(notes));
                    db.insert("contacts", &contacts, &fields).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    (tenant.id.to_string(), admin, records)
}

/// (writes/s, p50 ms, p99 ms) of `total` durable writes from `clients` clients.
pub fn write_load(
    addr: std::net::SocketAddr,
    tenant: &str,
    admin: &str,
    clients: usize,
    total: usize,
) -> (f64, f64, f64) {
    let path = format!("/v1/tenants/{tenant}/collections/contacts/records");
    let notes = "n".repeat(900);
    let per_client = (total / clients).max(10);
    let started = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let (path, admin, notes) = (path.clone(), admin.to_string(), notes.clone());
            std::thread::spawn(move || {
                let mut conn = Conn::open(addr);
                let mut latencies = Vec::with_capacity(per_client);
                for i in 0..per_client {
                    let body = format!(
                        r#"{{"name":"c{c}-{i}","email":"c{clients}-{c}-{i}-{}@example.com","notes":"{notes}"}}"#,
                        std::process::id()
                    );
                    let t = Instant::now();
                    let (status, _) = conn.request("POST", &path, &admin, body.as_bytes());
                    assert_eq!(status, 201);
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let elapsed = started.elapsed();
    latencies.sort();
    (
        latencies.len() as f64 / elapsed.as_secs_f64(),
        ms(percentile(&latencies, 50)),
        ms(percentile(&latencies, 99)),
    )
}
