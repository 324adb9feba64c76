//! Authentication cost with many tokens: the release `coffer` binary on
//! loopback, one keep-alive client reading one record, on a host with the
//! tenant's one admin token against a host with 10,000 tokens of which 1,000
//! are revoked (made offline through `Storage`, as the catalog holds them).
//! Rounds alternate between the two hosts, since this machine is shared and
//! noisy. Then: a token revoked through the API is refused on the very next
//! request.
//!
//! Run: `cargo bench --bench tokens -- [--tokens N] [--revoked N] [--reads N]`

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer::auth::Principal;
use coffer::ids::{Region, TokenId};
use coffer::storage::{NewTenant, NewToken, Storage};
use common::{ms, percentile, start, Conn};

fn main() {
    let tokens = common::flag("--tokens", 10_000);
    let revoked = common::flag("--revoked", 1_000);
    let reads = common::flag("--reads", 2_000);
    let root = std::env::temp_dir().join(format!("coffer-bench-tokens-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);

    let made = Instant::now();
    let few = prepare(&root.join("one-token"), 1, 0);
    let many = prepare(&root.join("many-tokens"), tokens, revoked);
    println!(
        "prepared the hosts' catalogs ({tokens} tokens, {revoked} revoked) in {:.1} s",
        made.elapsed().as_secs_f64()
    );
    let hosts: Vec<(&str, Prepared)> = vec![("1 token", few), ("10k tokens", many)];
    let mut running = Vec::new();
    for (label, prepared) in &hosts {
        let (child, addr) = start(&prepared.data, &[]);
        running.push((label, prepared, child, addr));
    }
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); running.len()];
    for _round in 0..5 {
        for (i, (_, prepared, _, addr)) in running.iter().enumerate() {
            let mut conn = Conn::open(*addr);
            for _ in 0..reads / 5 {
                let started = Instant::now();
                let (status, _) = conn.request("GET", &prepared.path, &prepared.admin, b"");
                samples[i].push(started.elapsed());
                assert_eq!(status, 200);
            }
        }
    }
    println!(
        "== authenticated read of one record ({} reads per host, 5 interleaved rounds, one keep-alive client)",
        reads
    );
    for (i, (label, _, _, _)) in running.iter().enumerate() {
        let mut sorted = samples[i].clone();
        sorted.sort();
        println!(
            "{label:>12}: p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
            ms(percentile(&sorted, 50)),
            ms(percentile(&sorted, 99)),
            ms(*sorted.last().unwrap())
        );
    }

    // Revocation takes effect on the next request: mint, use, revoke, use.
    let (_, prepared, _, addr) = &running[1];
    let mut conn = Conn::open(*addr);
    let mut refused_next = 0;
    let trials = 20;
    for i in 0..trials {
        let body = format!(r#"{{"role":"tenant-admin","name":"trial {i}"}}"#);
        let (status, minted) = conn.request("POST", "/v1/tokens", &prepared.admin, body.as_bytes());
        assert_eq!(status, 201);
        let minted: serde_json::Value = serde_json::from_slice(&minted).unwrap();
        let (token, id) = (
            minted["token"].as_str().unwrap().to_string(),
            minted["id"].as_str().unwrap().to_string(),
        );
        assert_eq!(conn.request("GET", &prepared.path, &token, b"").0, 200);
        let (status, _) = conn.request("DELETE", &format!("/v1/tokens/{id}"), &prepared.admin, b"");
        assert_eq!(status, 200);
        if conn.request("GET", &prepared.path, &token, b"").0 == 401 {
            refused_next += 1;
        }
    }
    println!("revoked tokens refused on the very next request: {refused_next} of {trials}");
    for (_, _, mut child, _) in running {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = std::fs::remove_dir_all(&root);
}

struct Prepared {
    data: std::path::PathBuf,
    admin: String,
    path: String,
}

/// A data directory with one tenant, one record, and `tokens` admin tokens
/// of which `revoked` are revoked.
fn prepare(data: &std::path::Path, tokens: usize, revoked: usize) -> Prepared {
    std::fs::create_dir_all(data).unwrap();
    let keyring = coffer::keys::load(data, &coffer::keys::KeySource::DataDir).unwrap();
    let storage = Arc::new(Storage::open(data, keyring, 8, 4 << 20).unwrap());
    let schemas = coffer::schema::Registry::embedded().unwrap();
    let schema = schemas.get("crm", 2).unwrap().clone();
    let (tenant, admin) = storage
        .create_tenant(NewTenant {
            id: None,
            name: "bench".into(),
            region: Region::parse("local").unwrap(),
            schema: "crm".into(),
            schema_version: 2,
        })
        .unwrap();
    let db = storage.tenant_db(&tenant).unwrap();
    let contacts = schema.collection("contacts").unwrap().clone();
    let mut fields = serde_json::Map::new();
    fields.insert("name".into(), serde_json::json!("Ada"));
    let record = db.insert("contacts", &contacts, &fields).unwrap();
    let mut ids: Vec<TokenId> = Vec::new();
    for i in 1..tokens {
        let (token, _) = storage
            .issue_token(NewToken::admin(&tenant.id, &format!("bench {i}"), "bench"))
            .unwrap();
        ids.push(token.id);
    }
    let by = Principal {
        token_id: "bench".into(),
        role: coffer::auth::Role::TenantAdmin,
        tenant: Some(tenant.id.clone()),
        also: Vec::new(),
        name: "bench".into(),
        identity: None,
        sponsors: Vec::new(),
        grant: None,
    };
    for id in ids.iter().take(revoked) {
        coffer::tokens::revoke(&storage, &by, id, |_| Ok(())).unwrap();
    }
    drop(db);
    drop(storage);
    Prepared {
        data: data.to_path_buf(),
        admin,
        path: format!(
            "/v1/tenants/{}/collections/contacts/records/{record}",
            tenant.id
        ),
    }
}
