//! A TCP relay between a client and an HTTP/1.1 server that, while switched
//! on, flips the first body byte of every PUT on its way to the server: the
//! network altering an upload. Everything else passes untouched.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

pub struct Tamper {
    pub url: String,
    on: Arc<AtomicBool>,
    altered: Arc<AtomicUsize>,
}

impl Tamper {
    /// Relays 127.0.0.1:<new port> to `upstream` (`host:port`), altering PUTs.
    pub fn start(upstream: &str) -> Tamper {
        let (on, altered) = (
            Arc::new(AtomicBool::new(true)),
            Arc::new(AtomicUsize::new(0)),
        );
        let (flag, count) = (on.clone(), altered.clone());
        let url = relay(upstream, move |client, server| {
            let (flag, count) = (flag.clone(), count.clone());
            let (client_read, server_write) =
                (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || requests(client_read, server_write, &flag, &count));
            std::thread::spawn(move || pass(server, client));
        });
        Tamper { url, on, altered }
    }

    /// From now on, pass every byte through.
    pub fn stop_altering(&self) {
        self.on.store(false, Ordering::SeqCst);
    }

    /// How many PUT bodies were altered.
    pub fn altered(&self) -> usize {
        self.altered.load(Ordering::SeqCst)
    }
}

/// Listens on 127.0.0.1:<new port>; for each client, connects to `upstream`
/// and hands both streams to `connect`. Returns the relay's URL.
fn relay(upstream: &str, connect: impl Fn(TcpStream, TcpStream) + Send + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
    let url = format!("http://{}", listener.local_addr().unwrap());
    let upstream = upstream.to_string();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            if let Ok(server) = TcpStream::connect(&upstream) {
                connect(client, server);
            }
        }
    });
    url
}

/// Copies one direction untouched, then closes it.
fn pass(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

/// Relays requests one by one: the head, then exactly Content-Length bytes.
fn requests(mut from: TcpStream, mut to: TcpStream, on: &AtomicBool, altered: &AtomicUsize) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buffer = vec![0u8; 64 << 10];
    loop {
        // The head.
        let head_end = loop {
            if let Some(at) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            match from.read(&mut buffer) {
                Ok(0) | Err(_) => {
                    let _ = to.write_all(&pending);
                    let _ = to.shutdown(Shutdown::Write);
                    return;
                }
                Ok(n) => pending.extend_from_slice(&buffer[..n]),
            }
        };
        let head = String::from_utf8_lossy(&pending[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let alter = head.starts_with("put ") && length > 0 && on.load(Ordering::SeqCst);
        if to.write_all(&pending[..head_end]).is_err() {
            return;
        }
        pending.drain(..head_end);
        // The body.
        let mut left = length;
        let mut first = true;
        while left > 0 {
            if pending.is_empty() {
                match from.read(&mut buffer) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => pending.extend_from_slice(&buffer[..n]),
                }
            }
            let take = left.min(pending.len());
            let mut chunk: Vec<u8> = pending.drain(..take).collect();
            if alter && first {
                chunk[0] ^= 0x01;
                altered.fetch_add(1, Ordering::SeqCst);
            }
            first = false;
            if to.write_all(&chunk).is_err() {
                return;
            }
            left -= take;
        }
    }
}

/// A relay that passes requests untouched and, while switched on, alters
/// the first audit entry of every proof bundle on its way back to the
/// client (one base64 character after `"entry":"`): a host serving a
/// tampered log. Off when started.
pub struct AnswerTamper {
    pub url: String,
    on: Arc<AtomicBool>,
    altered: Arc<AtomicUsize>,
}

impl AnswerTamper {
    pub fn start(upstream: &str) -> AnswerTamper {
        let (on, altered) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
        );
        let (flag, count) = (on.clone(), altered.clone());
        let url = relay(upstream, move |client, server| {
            let (flag, count) = (flag.clone(), count.clone());
            let (client_read, server_write) =
                (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || pass(client_read, server_write));
            std::thread::spawn(move || answers(server, client, &flag, &count));
        });
        AnswerTamper { url, on, altered }
    }

    pub fn set(&self, on: bool) {
        self.on.store(on, Ordering::SeqCst);
    }

    /// How many bundles were altered.
    pub fn altered(&self) -> usize {
        self.altered.load(Ordering::SeqCst)
    }
}

fn answers(mut from: TcpStream, mut to: TcpStream, on: &AtomicBool, altered: &AtomicUsize) {
    const PATTERN: &[u8] = b"\"entry\":\"";
    let mut buffer = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &mut buffer[..n];
        // A pattern split across two reads is passed as it is; the tests
        // check `altered()`.
        if on.load(Ordering::SeqCst) {
            if let Some(at) = chunk.windows(PATTERN.len()).position(|w| w == PATTERN) {
                let i = at + PATTERN.len();
                if i < chunk.len() {
                    // Another base64 letter: the entry decodes to other bytes.
                    chunk[i] = if chunk[i] == b'A' { b'B' } else { b'A' };
                    altered.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        if to.write_all(chunk).is_err() {
            return;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
