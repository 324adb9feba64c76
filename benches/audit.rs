//! The audit log: durable appends per second (1 and 64 writers, group
//! commit), the latency a grant-backed read pays for its audit entry (through
//! the real host), verification speed of a whole log, and the size and time
//! of a tenant's proof bundle in a large log.
//!
//! Run: `cargo bench --bench audit -- [--entries N]` (default 10,000,000 for
//! the verification and bundle figures; the log is built in a temp dir).

mod common;

use std::sync::Arc;
use std::time::Instant;

use coffer::audit::{Actor, AuditLog, Event};
use coffer::ids::TenantId;
use common::{ms, percentile, start, Conn};

fn main() {
    let mut entries = 10_000_000u64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--entries" {
            entries = args.next().and_then(|n| n.parse().ok()).unwrap_or(entries);
        }
    }
    let root = std::env::temp_dir().join(format!("coffer-bench-audit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    appends(&root);
    grant_read_latency(&root);
    big_log(&root, entries);
    let _ = std::fs::remove_dir_all(&root);
}

fn event(tenant: &TenantId, i: u64) -> Event {
    Event::new(
        "grant.access",
        Actor {
            role: "support".into(),
            token: Some("0123456789abcdef0123456789abcdef".into()),
            identity: None,
        },
    )
    .tenant(tenant)
    .grant("fedcba9876543210fedcba9876543210")
    .detail("method", "GET")
    .detail("collection", "contacts")
    .detail("record", format!("{i:032x}"))
    .detail("outcome", 200)
}

fn appends(root: &std::path::Path) {
    println!("== durable appends (fdatasync per group)");
    for writers in [1usize, 64] {
        let dir = root.join(format!("appends-{writers}"));
        std::fs::create_dir_all(&dir).unwrap();
        let log = Arc::new(AuditLog::open(&dir, "bench").unwrap());
        let tenant = TenantId::generate().unwrap();
        let per_writer = if writers == 1 { 2_000 } else { 500 };
        let started = Instant::now();
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let (log, tenant) = (log.clone(), tenant.clone());
                std::thread::spawn(move || {
                    for i in 0..per_writer {
                        log.append(event(&tenant, (w * per_writer + i) as u64))
                            .unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let total = writers * per_writer;
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{writers} writer(s): {total} durable appends in {secs:.2} s = {:.0}/s",
            total as f64 / secs
        );
    }
}

fn request(
    conn: &mut Conn,
    method: &str,
    path: &str,
    token: &str,
    grant: Option<&str>,
    body: &[u8],
) -> (u16, Vec<u8>) {
    match grant {
        None => conn.request(method, path, token, body),
        Some(g) => conn.request_with(method, path, token, &[("X-Coffer-Grant", g)], body),
    }
}

fn grant_read_latency(root: &std::path::Path) {
    println!("== a read through a grant (audited) vs the same read by the tenant's admin");
    let data = root.join("host");
    std::fs::create_dir_all(&data).unwrap();
    let (mut host, addr) = start(&data, &["--backup-interval", "0s"]);
    let operator = std::fs::read_to_string(data.join("operator.token")).unwrap();
    let operator = operator.trim();
    let (tenant, admin) = common::create_tenant(addr, operator, "bench");
    let mut conn = Conn::open(addr);
    let (_, body) = conn.request(
        "POST",
        &format!("/v1/tenants/{tenant}/collections/contacts/records"),
        &admin,
        br#"{"name":"Ada","email":"ada@example.com"}"#,
    );
    let record: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let path = format!(
        "/v1/tenants/{tenant}/collections/contacts/records/{}",
        record["id"].as_str().unwrap()
    );
    let (_, body) = conn.request(
        "POST",
        "/v1/tokens",
        operator,
        br#"{"role":"support","name":"alice"}"#,
    );
    let support: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let support = support["token"].as_str().unwrap().to_string();
    let ask = format!(
        r#"{{"tenant":"{tenant}","scope":"read","duration_minutes":60,"reason":"bench","ticket":"B-1"}}"#
    );
    let (status, body) = conn.request("POST", "/v1/access-requests", &support, ask.as_bytes());
    assert_eq!(status, 201);
    let grant: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let grant = grant["id"].as_str().unwrap().to_string();
    let (status, _) = conn.request(
        "POST",
        &format!("/v1/access-requests/{grant}/approve"),
        &admin,
        b"",
    );
    assert_eq!(status, 200);
    for (who, token, grant) in [
        ("admin", admin.as_str(), None),
        ("grant", support.as_str(), Some(grant.as_str())),
    ] {
        let mut times = Vec::with_capacity(2000);
        for _ in 0..2000 {
            let started = Instant::now();
            let (status, _) = request(&mut conn, "GET", &path, token, grant, b"");
            times.push(started.elapsed());
            assert_eq!(status, 200);
        }
        times.sort();
        println!(
            "{who:>5}: p50 {:.2} ms, p99 {:.2} ms ({} reads, one client)",
            ms(percentile(&times, 50)),
            ms(percentile(&times, 99)),
            times.len()
        );
    }
    host.kill().unwrap();
    host.wait().unwrap();
}

/// Writes a valid log of `n` entries straight to disk (no fsync per entry:
/// this measures the verifier and the proofs, not the appends).
fn big_log(root: &std::path::Path, n: u64) {
    use std::io::Write;
    println!("== a log of {n} entries");
    let data = root.join("big");
    let audit = data.join("audit");
    std::fs::create_dir_all(audit.join("checkpoints")).unwrap();
    // Keys and origin as the host makes them.
    drop(AuditLog::open(&data, "bench").unwrap());
    let tenants: Vec<TenantId> = (0..1000).map(|_| TenantId::generate().unwrap()).collect();
    let started = Instant::now();
    let mut file = std::io::BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(audit.join("entries")).unwrap(),
    );
    let mut prev = String::new();
    let mut last_of: std::collections::HashMap<usize, u64> = std::collections::HashMap::new();
    for seq in 0..n {
        let t = (seq % 1000) as usize;
        let entry = coffer::audit::Entry {
            seq,
            at: 1_790_000_000_000 + seq,
            prev: prev.clone(),
            kind: "grant.access".into(),
            tenant: Some(tenants[t].to_string()),
            tenant_prev: last_of.get(&t).copied(),
            actor: Actor {
                role: "support".into(),
                token: Some("0123456789abcdef0123456789abcdef".into()),
                identity: None,
            },
            grant: Some("fedcba9876543210fedcba9876543210".into()),
            details: event(&tenants[t], seq).details,
            hmac: Default::default(),
        };
        last_of.insert(t, seq);
        let bytes = serde_json::to_vec(&entry).unwrap();
        file.write_all(&(bytes.len() as u32).to_be_bytes()).unwrap();
        file.write_all(&bytes).unwrap();
        prev = coffer::crypto::encode_hex(&coffer::audit::merkle::leaf_hash(&bytes));
    }
    file.flush().unwrap();
    drop(file);
    let size = std::fs::metadata(audit.join(coffer::audit::ENTRIES))
        .unwrap()
        .len();
    println!(
        "wrote {n} entries ({:.1} MB) in {:.1} s",
        size as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );

    // The first start moves it into tiles (once) and signs a checkpoint; the
    // next start reads the newest checkpoint, heads and the tail.
    let started = Instant::now();
    let log = AuditLog::open(&data, "bench").unwrap();
    let migrated = started.elapsed();
    log.checkpoint().unwrap();
    drop(log);
    println!(
        "first start, moving the single-file log into tiles (once): {:.1} s",
        migrated.as_secs_f64()
    );
    let rss_before = rss_kib();
    let started = Instant::now();
    let log = AuditLog::open(&data, "bench").unwrap();
    let opened = started.elapsed();
    println!(
        "host start on tiles: {:.1} ms, {} entries read, RSS +{} KiB (before {} KiB)",
        ms(opened),
        log.opened().read,
        rss_kib().saturating_sub(rss_before),
        rss_before
    );
    // Offline verification of the whole log.
    let verifier = coffer::audit::note::Verifier::parse(&log.verifier_key()).unwrap();
    let started = Instant::now();
    let report = coffer::audit::verify::verify_log(&audit, &verifier, &[]).unwrap();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "verify the whole log: {} entries in {secs:.1} s = {:.0} entries/s ({:.0} MB/s)",
        report.entries,
        report.entries as f64 / secs,
        size as f64 / 1e6 / secs
    );

    // One tenant's bundle: its entries, an inclusion proof each.
    let tenant = &tenants[7];
    let started = Instant::now();
    let (tree_size, note) = log.latest_checkpoint().unwrap();
    let mine = log.tenant_entries(tenant).unwrap();
    let mut bundle_bytes = note.len();
    let prover = log.prover();
    let view = prover.view();
    for (seq, entry) in &mine {
        let proof = coffer::audit::merkle::inclusion_proof(&view, *seq, tree_size).unwrap();
        bundle_bytes += entry.len() * 4 / 3 + proof.len() * 67 + 40;
    }
    let proof_time = started.elapsed();
    println!(
        "bundle of one tenant ({} of the {tree_size} entries): {:.1} ms, about {:.1} MB of JSON",
        mine.len(),
        ms(proof_time),
        bundle_bytes as f64 / 1e6
    );
}

/// This process's resident memory (KiB).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
