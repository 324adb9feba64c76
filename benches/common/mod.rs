//! Helpers shared by the whole-system benches: start the release binary, read
//! /proc, and a keep-alive HTTP/1.1 client.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use coffer::ids::Region;
use coffer::schema::Registry;
use coffer::storage::{NewTenant, Storage};
use serde_json::{json, Map};

pub const BIN: &str = env!("CARGO_BIN_EXE_coffer");

/// Starts `coffer serve` on `data`; returns the child and its address.
pub fn start(data: &std::path::Path, extra: &[&str]) -> (Child, SocketAddr) {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .args(extra)
        .env("COFFER_LOG", "warn")
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

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A keep-alive HTTP/1.1 connection that knows just enough of the protocol for
/// Coffer's JSON answers (Content-Length bodies).
pub struct Conn {
    reader: BufReader<TcpStream>,
    addr: SocketAddr,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        Conn {
            reader: BufReader::new(stream),
            addr,
        }
    }

    /// Like `request`, streaming the body (Content-Length or chunked) to `out`.
    pub fn request_to(
        &mut self,
        method: &str,
        path: &str,
        token: &str,
        out: &mut dyn Write,
    ) -> u16 {
        self.send(method, path, token, b"");
        self.read_response(out)
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
        self.send_with(method, path, token, headers, body);
        let mut response = Vec::new();
        let status = self.read_response(&mut response);
        (status, response)
    }

    fn send(&mut self, method: &str, path: &str, token: &str, body: &[u8]) {
        self.send_with(method, path, token, &[], body)
    }

    fn send_with(
        &mut self,
        method: &str,
        path: &str,
        token: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) {
        let extra: String = headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        let stream = self.reader.get_mut();
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
    }

    /// Reads one response, writing its body (Content-Length or chunked) to `out`.
    fn read_response(&mut self, out: &mut dyn Write) -> u16 {
        let mut status_line = String::new();
        self.reader.read_line(&mut status_line).unwrap();
        let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        let (mut length, mut chunked) = (0usize, false);
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
                if name.eq_ignore_ascii_case("transfer-encoding") && value.contains("chunked") {
                    chunked = true;
                }
            }
        }
        let mut buffer = vec![0u8; 64 * 1024];
        if chunked {
            loop {
                let mut size = String::new();
                self.reader.read_line(&mut size).unwrap();
                let mut left = usize::from_str_radix(size.trim(), 16).unwrap();
                if left == 0 {
                    let mut end = String::new();
                    self.reader.read_line(&mut end).unwrap();
                    break;
                }
                while left > 0 {
                    let n = self.reader.read(&mut buffer[..left.min(65536)]).unwrap();
                    assert!(n > 0, "transfer broke off");
                    out.write_all(&buffer[..n]).unwrap();
                    left -= n;
                }
                let mut crlf = [0u8; 2];
                self.reader.read_exact(&mut crlf).unwrap();
            }
        } else {
            let mut body = vec![0u8; length];
            self.reader.read_exact(&mut body).unwrap();
            out.write_all(&body).unwrap();
        }
        status
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
