//! Customer-managed-key figures against a real OpenBao (Transit), on the
//! release binary, side by side in one run: the cold-open latency of a
//! tenant with and without its own key (p50/p99; the Transit call
//! included), the Transit calls a customer-keyed tenant costs per hour in
//! steady state, and the time from a key's revocation in OpenBao to the
//! first refused request.
//!
//! Needs the OpenBao wheel that ops/test.sh installs (target/contract-venv).
//! Run: `cargo bench --bench customer_keys -- [--tenants N] [--rounds R]`
//! (default 20 keyed + 20 plain tenants, 5 rounds of cold opens).

mod common;

#[path = "../tests/support/openbao.rs"]
#[allow(dead_code)]
mod openbao;

use std::time::{Duration, Instant};

use common::{create_tenant, ms, percentile, Conn};
use openbao::OpenBao;

fn summary(label: &str, mut times: Vec<Duration>) {
    times.sort();
    println!(
        "  {label:<28} n={:>4}  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
        times.len(),
        ms(percentile(&times, 50)),
        ms(percentile(&times, 99)),
        ms(*times.last().unwrap())
    );
}

/// A tenant with one record: its id, admin token and the record's id.
fn tenant_with_record(
    addr: std::net::SocketAddr,
    conn: &mut Conn,
    operator: &str,
    name: &str,
) -> (String, String, String) {
    let (id, admin) = create_tenant(addr, operator, name);
    let (status, body) = conn.request(
        "POST",
        &format!("/v1/tenants/{id}/collections/contacts/records"),
        &admin,
        br#"{"name":"Ada"}"#,
    );
    assert_eq!(status, 201);
    let record = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    (id, admin, record)
}

/// A new Transit key `name`, attached to the tenant.
fn attach(conn: &mut Conn, bao: &OpenBao, tenant: &str, admin: &str, name: &str) {
    let token = bao.key_and_token(name);
    let body = serde_json::json!({"provider": "transit", "address": bao.address,
                                  "mount": "transit", "key": name, "token": token});
    let (status, answer) = conn.request(
        "PUT",
        &format!("/v1/tenants/{tenant}/key"),
        admin,
        body.to_string().as_bytes(),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
}

fn main() {
    let tenants = common::flag("--tenants", 20);
    let rounds = common::flag("--rounds", 5);
    let root = std::env::temp_dir().join(format!("coffer-bench-ckeys-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let bao = OpenBao::start(&root);
    const CONFIG: &str = "[customer_keys]\ncheck_interval = \"1s\"\nallow_http_loopback = true\n";
    let data = root.join("data");
    // Two open databases at most: every request below to another tenant
    // opens it cold.
    let (mut host, addr, operator) =
        common::start_configured(&data, CONFIG, &["--open-tenants-max", "2"]);
    let mut conn = Conn::open(addr);
    let mut all = Vec::new();
    for i in 0..tenants * 2 {
        let keyed = i % 2 == 0;
        let name = format!("k{i}");
        let (id, admin, record) = tenant_with_record(addr, &mut conn, &operator, &format!("t{i}"));
        if keyed {
            attach(&mut conn, &bao, &id, &admin, &name);
        }
        all.push((keyed, id, admin, record, name));
    }

    println!("== cold open: first read of a tenant not open ({tenants} keyed + {tenants} plain, {rounds} rounds, pool of 2)");
    let calls_before: usize = all
        .iter()
        .filter(|t| t.0)
        .map(|t| bao.calls("decrypt", &t.4))
        .sum();
    let (mut keyed, mut plain) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for (is_keyed, id, admin, record, _) in &all {
            let path = format!("/v1/tenants/{id}/collections/contacts/records/{record}");
            let began = Instant::now();
            let (status, _) = conn.request("GET", &path, admin, b"");
            let took = began.elapsed();
            assert_eq!(status, 200);
            if *is_keyed {
                keyed.push(took)
            } else {
                plain.push(took)
            }
        }
    }
    let calls_after: usize = all
        .iter()
        .filter(|t| t.0)
        .map(|t| bao.calls("decrypt", &t.4))
        .sum();
    summary("without a customer key", plain);
    summary("with a customer key (Transit)", keyed);
    println!(
        "  Transit decrypt calls during it: {} for {} keyed cold opens",
        calls_after - calls_before,
        tenants * rounds
    );

    // A host of its own for the rest, with one customer-keyed tenant (on the
    // first, the change-log shipper opening the others pushes a pool of 2
    // around, and a tenant not open has nothing to check).
    let _ = host.kill();
    let _ = host.wait();
    let (next, addr, operator) = common::start_configured(&root.join("steady"), CONFIG, &[]);
    host = next;
    let mut conn = Conn::open(addr);
    let (id, admin, record) = tenant_with_record(addr, &mut conn, &operator, "steady");
    let key = "steady".to_string();
    attach(&mut conn, &bao, &id, &admin, &key);
    println!(
        "== steady state: one customer-keyed tenant open and idle for 20 s, check_interval 1 s"
    );
    let path = format!("/v1/tenants/{id}/collections/contacts/records/{record}");
    assert_eq!(conn.request("GET", &path, &admin, b"").0, 200);
    let before = bao.calls("decrypt", &key);
    let began = Instant::now();
    std::thread::sleep(Duration::from_secs(20));
    let per_hour =
        (bao.calls("decrypt", &key) - before) as f64 * 3600.0 / began.elapsed().as_secs_f64();
    println!(
        "  {per_hour:.0} Transit calls/hour at a 1 s interval: one per check; at the default 5 min, {:.0}/hour (plus one per cold open)",
        per_hour / 300.0
    );

    println!(
        "== from revocation in OpenBao to the first refused request (check_interval 1 s; 5 trials)"
    );
    let mut times = Vec::new();
    for _ in 0..5 {
        bao.enable(&key);
        let deadline = Instant::now() + Duration::from_secs(30);
        while conn.request("GET", &path, &admin, b"").0 != 200 {
            assert!(Instant::now() < deadline, "did not reopen");
            std::thread::sleep(Duration::from_millis(50));
        }
        // A random phase against the check's tick.
        std::thread::sleep(Duration::from_millis(137 * (times.len() as u64 + 1) % 1000));
        bao.disable(&key);
        let revoked = Instant::now();
        loop {
            let (status, _) = conn.request("GET", &path, &admin, b"");
            if status == 423 {
                break;
            }
            assert_eq!(status, 200);
            assert!(revoked.elapsed() < Duration::from_secs(30), "never refused");
            std::thread::sleep(Duration::from_millis(5));
        }
        times.push(revoked.elapsed());
    }
    summary("revocation to first 423", times);
    let _ = host.kill();
    let _ = host.wait();
    drop(bao);
    if std::env::var_os("KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&root);
    }
}
