//! Good neighbours, measured from outside on the release binary: another
//! tenant's durable writes and reads with and without 200 exports in flight
//! whose clients never read (4 KiB receive buffers), in interleaved rounds
//! (without, with, without again, since this machine is shared and noisy);
//! and the host's memory idle, with 2,000 idle keep-alive connections, with
//! 200 request bodies that stall after ~900 KiB, and with the stalled exports.
//!
//! Run: `cargo bench --bench neighbours -- [--stalled N] [--ops N] [--idle N] [--mib N]`

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{create_tenant, ms, percentile, populate_with, process_status, start, Conn};

fn main() {
    let stalled_n = common::flag("--stalled", 200);
    let ops = common::flag("--ops", 1_000);
    let idle_n = common::flag("--idle", 2_000);
    let mib = common::flag("--mib", 16) as u64;
    let root = std::env::temp_dir().join(format!("coffer-bench-neighbours-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let data = root.join("data");
    let (big, big_admin, records) = populate_with(&data, mib, "local", true);
    println!("a {mib} MiB tenant of {records} contacts (incompressible notes) to export");
    let config = root.join("host.toml");
    std::fs::write(
        &config,
        format!(
            "[limits]\nlong_jobs_per_tenant = {n}\nlong_jobs_total = {n}\nstall_timeout = \"600s\"\n\n[api]\nrequest_timeout = \"120s\"\n",
            n = stalled_n + 10
        ),
    )
    .unwrap();
    let (mut child, addr) = start(
        &data,
        &[
            "--config",
            config.to_str().unwrap(),
            "--backup-interval",
            "0s",
        ],
    );
    let operator = std::fs::read_to_string(data.join("operator.token")).unwrap();
    let operator = operator.trim();
    let (small, small_admin) = create_tenant(addr, operator, "neighbour");
    let records_path = format!("/v1/tenants/{small}/collections/contacts/records");
    let idle_rss = process_status(child.id()).0;
    // Memory first, on a host that has not exported yet (freed memory is
    // not always given back to the system).
    // Memory: idle keep-alive connections (each has made one request).
    let before = process_status(child.id()).0;
    let idle: Vec<Conn> = (0..idle_n)
        .map(|_| {
            let mut conn = Conn::open(addr);
            assert_eq!(conn.request("GET", "/healthz", "", b"").0, 200);
            conn
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let idle_conn_rss = process_status(child.id()).0;
    drop(idle);
    std::thread::sleep(Duration::from_secs(1));
    // Bodies that stall: 200 POSTs declaring 1,000,000 bytes, sending 900 KiB.
    let bodies_before = process_status(child.id()).0;
    let stalled_bodies: Vec<TcpStream> = (0..stalled_n)
        .map(|_| stalled_body(addr, &records_path, &small_admin))
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let bodies_rss = process_status(child.id()).0;
    drop(stalled_bodies);

    let mut writes: Vec<Vec<Duration>> = vec![Vec::new(); 2];
    let mut reads: Vec<Vec<Duration>> = vec![Vec::new(); 2];
    let mut round = |with: usize, label: &str| {
        let mut conn = Conn::open(addr);
        for i in 0..ops / 2 {
            let body = format!(r#"{{"name":"n{label}{i}","notes":"{}"}}"#, "x".repeat(900));
            let started = Instant::now();
            let (status, created) =
                conn.request("POST", &records_path, &small_admin, body.as_bytes());
            writes[with].push(started.elapsed());
            assert_eq!(status, 201);
            let id = serde_json::from_slice::<serde_json::Value>(&created).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string();
            let started = Instant::now();
            let (status, _) =
                conn.request("GET", &format!("{records_path}/{id}"), &small_admin, b"");
            reads[with].push(started.elapsed());
            assert_eq!(status, 200);
        }
    };
    round(0, "a");
    let opened = Instant::now();
    let stalled: Vec<_> = (0..stalled_n)
        .map(|_| stalled_export(addr, &big, &big_admin))
        .collect();
    let accepted = stalled
        .iter()
        .filter(|(_, head)| head == b"HTTP/1.1 200")
        .count();
    println!(
        "{accepted} of {stalled_n} exports streaming, their clients reading nothing (opened in {:.1} s)",
        opened.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(2));
    let (stalled_rss, _, stalled_threads) = process_status(child.id());
    let listed = Instant::now();
    let (status, _) = Conn::open(addr).request("GET", "/v1/tenants", operator, b"");
    assert_eq!(status, 200);
    let list_ms = ms(listed.elapsed());
    round(1, "b");
    drop(stalled);
    std::thread::sleep(Duration::from_secs(2));
    round(0, "c");

    println!(
        "== another tenant's calls, one keep-alive client, {} of each per side",
        ops
    );
    for (name, samples) in [("durable write", &writes), ("read", &reads)] {
        let mut without = samples[0].clone();
        let mut with = samples[1].clone();
        without.sort();
        with.sort();
        println!(
            "{name:>14}: without p50 {:.3} ms p99 {:.3} ms | with {stalled_n} stalled exports p50 {:.3} ms p99 {:.3} ms max {:.3} ms | ratio p50 {:.2}x p99 {:.2}x",
            ms(percentile(&without, 50)),
            ms(percentile(&without, 99)),
            ms(percentile(&with, 50)),
            ms(percentile(&with, 99)),
            ms(*with.last().unwrap()),
            ms(percentile(&with, 50)) / ms(percentile(&without, 50)),
            ms(percentile(&with, 99)) / ms(percentile(&without, 99)),
        );
    }
    println!("operator lists tenants during the stall: {list_ms:.1} ms");

    println!("== host memory (RSS)");
    println!("idle host: {idle_rss} MiB");
    println!("{stalled_n} stalled exports: {stalled_rss} MiB, {stalled_threads} threads");
    println!(
        "{idle_n} idle keep-alive connections: {idle_conn_rss} MiB (+{} MiB from {before} MiB; {:.1} KiB each)",
        idle_conn_rss.saturating_sub(before),
        idle_conn_rss.saturating_sub(before) as f64 * 1024.0 / idle_n as f64
    );
    println!(
        "{stalled_n} stalled bodies of ~900 KiB: {bodies_rss} MiB (+{} MiB from {bodies_before} MiB)",
        bodies_rss.saturating_sub(bodies_before)
    );
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&root);
}

fn stalled_export(addr: SocketAddr, tenant: &str, token: &str) -> (socket2::Socket, Vec<u8>) {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut stream: TcpStream = socket.try_clone().unwrap().into();
    write!(
        stream,
        "GET /v1/tenants/{tenant}/export HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .unwrap();
    let mut head = vec![0u8; 12];
    stream.read_exact(&mut head).unwrap();
    (socket, head)
}

fn stalled_body(addr: SocketAddr, path: &str, token: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n"
    )
    .unwrap();
    let mut part = b"{\"name\":\"stall\",\"notes\":\"".to_vec();
    part.resize(900 * 1024, b'y');
    stream.write_all(&part).unwrap();
    stream
}
