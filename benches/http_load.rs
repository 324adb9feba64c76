//! Whole-system load: the release `coffer` binary on loopback, driven by N
//! concurrent keep-alive clients writing durable records, then a host with many
//! tenants (peak RSS, threads, first request to a cold tenant).
//!
//! Run: `cargo bench --bench http_load -- [--tenants N] [--writes N]`
//! (defaults: 10000 tenants, 4000 writes per concurrency level).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_coffer");

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let tenants = flag("--tenants", 10_000);
    let writes = flag("--writes", 4_000);
    let data = std::env::temp_dir().join(format!("coffer-bench-http-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let (mut child, addr) = start(&data);
    let operator = std::fs::read_to_string(data.join("operator.token"))
        .unwrap()
        .trim()
        .to_string();

    println!("== durable acknowledged writes through the API (1 KiB contacts, one tenant)");
    let (tenant, admin) = create_tenant(addr, &operator, "load");
    let path = format!("/v1/tenants/{tenant}/collections/contacts/records");
    let notes = "n".repeat(900);
    for clients in [1usize, 8, 64] {
        let per_client = (writes / clients).max(10);
        let start = Instant::now();
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let (path, admin, notes) = (path.clone(), admin.clone(), notes.clone());
                std::thread::spawn(move || {
                    let mut conn = Conn::open(addr);
                    let mut latencies = Vec::with_capacity(per_client);
                    for i in 0..per_client {
                        let body = format!(
                            r#"{{"name":"c{c}-{i}","email":"c{clients}-{c}-{i}@example.com","notes":"{notes}"}}"#
                        );
                        let t = Instant::now();
                        let status = conn.request("POST", &path, &admin, body.as_bytes()).0;
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
        let elapsed = start.elapsed();
        latencies.sort();
        println!(
            "clients {clients:>3}: {:>8.0} writes/s  p50 {:>7.2} ms  p99 {:>7.2} ms  ({} writes)",
            latencies.len() as f64 / elapsed.as_secs_f64(),
            ms(percentile(&latencies, 50)),
            ms(percentile(&latencies, 99)),
            latencies.len()
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
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&data);
}

fn start(data: &std::path::Path) -> (Child, SocketAddr) {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .env("COFFER_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
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

fn create_tenant(addr: SocketAddr, operator: &str, name: &str) -> (String, String) {
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
fn process_status(pid: u32) -> (u64, u64, u64) {
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

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[((sorted.len() - 1) * p) / 100]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A keep-alive HTTP/1.1 connection that knows just enough of the protocol for
/// Coffer's JSON answers (Content-Length bodies).
struct Conn {
    reader: BufReader<TcpStream>,
    addr: SocketAddr,
}

impl Conn {
    fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        Conn {
            reader: BufReader::new(stream),
            addr,
        }
    }

    fn request(&mut self, method: &str, path: &str, token: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        let stream = self.reader.get_mut();
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
        let mut status_line = String::new();
        self.reader.read_line(&mut status_line).unwrap();
        let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0u8; length];
        self.reader.read_exact(&mut body).unwrap();
        (status, body)
    }
}
