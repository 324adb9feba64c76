//! Replication to three single-node Garage regions on loopback (real S3),
//! through the real host: time from backup request to `verified` everywhere,
//! against one plain upload of the same bytes to one region (curl's own SigV4
//! PUT, and Coffer's S3 client alone); then the catch-up time of a region
//! that missed N backups.
//!
//! Run: `cargo bench --bench replication -- [MiB ...] [--outage N]`
//! (default: 100 1024, N = 5). Needs `garage` on PATH (ops/test.sh installs it).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{start, Conn};
use serde_json::Value;

const REGIONS: [&str; 3] = ["in", "sg", "uk"];
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/ops/garage/regions.sh");

fn main() {
    let mut sizes = Vec::new();
    let mut outage = 5usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--outage" => outage = args.next().and_then(|n| n.parse().ok()).unwrap_or(5),
            other => {
                if let Ok(mib) = other.parse::<u64>() {
                    sizes.push(mib)
                }
            }
        }
    }
    if sizes.is_empty() {
        sizes = vec![100, 1024];
    }
    let root = std::env::temp_dir().join(format!("coffer-bench-repl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let garage = root.join("garage");
    let base = 39_600 + (std::process::id() % 50) as u16 * 40;
    let out = Command::new("bash")
        .args([SCRIPT, "start", garage.to_str().unwrap(), &base.to_string()])
        .args(REGIONS)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = root.join("coffer.toml");
    let mut text = String::from("[host]\nregion = \"in\"\n\n");
    for region in REGIONS {
        text += &std::fs::read_to_string(garage.join(region).join("coffer.toml")).unwrap();
        text += "\n";
    }
    text += "[backup]\nregions = [\"in\", \"sg\", \"uk\"]\nretry_base = \"200ms\"\nretry_cap = \"2s\"\n";
    std::fs::write(&config, text).unwrap();

    for mib in sizes {
        replicate(&root, &garage, &config, mib);
    }
    catch_up(&root, &garage, &config, outage);
    let _ = Command::new("bash")
        .args([SCRIPT, "stop", garage.to_str().unwrap()])
        .status();
    let _ = std::fs::remove_dir_all(&root);
}

fn backup_state(conn: &mut Conn, token: &str, tenant: &str, backup: &str) -> Value {
    let (status, body) = conn.request(
        "GET",
        &format!("/v1/tenants/{tenant}/backups/{backup}"),
        token,
        b"",
    );
    assert_eq!(status, 200);
    serde_json::from_slice(&body).unwrap()
}

fn start_backup(conn: &mut Conn, token: &str, tenant: &str) -> String {
    let (status, body) = conn.request("POST", &format!("/v1/tenants/{tenant}/backups"), token, b"");
    assert_eq!(status, 202, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).unwrap();
    v["id"].as_str().unwrap().to_string()
}

fn replicate(root: &Path, garage: &Path, config: &Path, mib: u64) {
    let data = root.join(format!("host-{mib}"));
    println!("== tenant of ~{mib} MiB of contact records (random notes), three Garage regions");
    let started = Instant::now();
    let (tenant, admin, records) = common::populate_with(&data, mib, "in", true);
    println!(
        "populated {records} records in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let (mut host, addr) = start(
        &data,
        &[
            "--config",
            config.to_str().unwrap(),
            "--backup-interval",
            "0s",
        ],
    );
    let mut conn = Conn::open(addr);

    let requested = Instant::now();
    let backup = start_backup(&mut conn, &admin, &tenant);
    let mut sealed = None;
    let mut verified: [Option<Duration>; 3] = [None; 3];
    let size = loop {
        let b = backup_state(&mut conn, &admin, &tenant, &backup);
        assert_ne!(b["state"], "failed", "{b}");
        if sealed.is_none() && b["state"] == "done" {
            sealed = Some(requested.elapsed());
        }
        for (i, region) in REGIONS.iter().enumerate() {
            if verified[i].is_none() && b["regions"][*region]["state"] == "verified" {
                verified[i] = Some(requested.elapsed());
            }
        }
        if verified.iter().all(Option::is_some) {
            break b["size"].as_u64().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let all = verified.iter().flatten().max().copied().unwrap();
    let sealed = sealed.unwrap();
    let mb = size as f64 / 1e6;
    println!(
        "sealed backup: {:.1} MB; sealed into the spool after {:.2} s; verified in in/sg/uk after {:.2} / {:.2} / {:.2} s; all three {:.2} s ({:.1} MB/s of archive per region)",
        mb,
        sealed.as_secs_f64(),
        verified[0].unwrap().as_secs_f64(),
        verified[1].unwrap().as_secs_f64(),
        verified[2].unwrap().as_secs_f64(),
        all.as_secs_f64(),
        mb / (all - sealed).as_secs_f64().max(1e-9),
    );
    host.kill().unwrap();
    host.wait().unwrap();

    // The same bytes to one region: download the object, then PUT it back
    // under another name with curl (SigV4, one request) and with Coffer's own
    // client alone (multipart, 8 MiB parts, 4 in flight).
    let object = root.join(format!("object-{mib}"));
    let (key, secret, port) = credentials(garage, "sg");
    let url = format!("http://127.0.0.1:{port}/coffer-backups");
    let s3 = |args: &[&str]| {
        let status = Command::new("curl")
            .args(["-sS", "-f", "--aws-sigv4", "aws:amz:garage:s3", "--user"])
            .arg(format!("{key}:{secret}"))
            .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
            .args(args)
            .status()
            .unwrap();
        assert!(status.success());
    };
    s3(&[
        "-o",
        object.to_str().unwrap(),
        &format!("{url}/tenants/{tenant}/{backup}/archive.cfrdr"),
    ]);
    let put = Instant::now();
    s3(&[
        "-T",
        object.to_str().unwrap(),
        &format!("{url}/bench/curl-{mib}"),
    ]);
    let curl = put.elapsed();
    let ours = own_client_upload(garage, "sg", &object, &format!("bench/coffer-{mib}"));
    // The physical limit here: three curl PUTs at once, one per region (the
    // three Garage servers and the clients share this machine's 2 cores).
    let put3 = Instant::now();
    let children: Vec<_> = REGIONS
        .iter()
        .map(|region| {
            let (key, secret, port) = credentials(garage, region);
            Command::new("curl")
                .args(["-sS", "-f", "--aws-sigv4", "aws:amz:garage:s3", "--user"])
                .arg(format!("{key}:{secret}"))
                .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD", "-T"])
                .arg(&object)
                .arg(format!(
                    "http://127.0.0.1:{port}/coffer-backups/bench/curl3-{mib}"
                ))
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    let curl3 = put3.elapsed();
    println!(
        "one region, same {:.1} MB: curl PUT {:.2} s ({:.1} MB/s); Coffer's S3 client alone {:.2} s ({:.1} MB/s)",
        mb,
        curl.as_secs_f64(),
        mb / curl.as_secs_f64(),
        ours.as_secs_f64(),
        mb / ours.as_secs_f64()
    );
    println!(
        "three curl PUTs at once, one per region: {:.2} s ({:.1} MB/s in all)",
        curl3.as_secs_f64(),
        3.0 * mb / curl3.as_secs_f64()
    );
    println!(
        "replication to three regions after sealing (upload + verification): {:.2} s = {:.2}x one curl upload, {:.2}x one upload by our client, {:.2}x three curl PUTs at once",
        (all - sealed).as_secs_f64(),
        (all - sealed).as_secs_f64() / curl.as_secs_f64(),
        (all - sealed).as_secs_f64() / ours.as_secs_f64(),
        (all - sealed).as_secs_f64() / curl3.as_secs_f64()
    );
    let _ = std::fs::remove_file(&object);
    let _ = std::fs::remove_dir_all(&data);
}

fn credentials(garage: &Path, region: &str) -> (String, String, String) {
    let config = std::fs::read_to_string(garage.join(region).join("coffer.toml")).unwrap();
    let field = |name: &str| {
        config
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} = ")))
            .unwrap()
            .trim_matches('"')
            .to_string()
    };
    let secret = std::fs::read_to_string(garage.join(region).join("secret")).unwrap();
    let endpoint = field("endpoint");
    let port = endpoint.rsplit(':').next().unwrap().to_string();
    (field("access_key_id"), secret.trim().to_string(), port)
}

fn own_client_upload(garage: &Path, region: &str, file: &Path, name: &str) -> Duration {
    let (key, _, port) = credentials(garage, region);
    let spec = coffer::config::RegionSpec {
        name: coffer::ids::Region::parse(region).unwrap(),
        store: coffer::config::StoreSpec::S3 {
            bucket: "coffer-backups".into(),
            prefix: String::new(),
            endpoint: Some(format!("http://127.0.0.1:{port}")),
            s3_region: Some("garage".into()),
            access_key_id: Some(key),
            secret_access_key_file: Some(garage.join(region).join("secret")),
        },
        conditional_put: false,
    };
    let store = coffer::replication::RegionStore::open(&spec).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let path = object_store::path::Path::from(name);
    let started = Instant::now();
    runtime.block_on(store.upload_file(&path, file)).unwrap();
    started.elapsed()
}

/// One region misses `n` backups (its Garage is killed), then returns: how
/// long until every one of them is verified there.
fn catch_up(root: &Path, garage: &Path, config: &Path, n: usize) {
    let data = root.join("host-outage");
    println!("== catch-up after an outage of {n} backups (tenant of ~10 MiB; retry cap 2 s)");
    let (tenant, admin, _) = common::populate(&data, 10, "in");
    let (mut host, addr) = start(
        &data,
        &[
            "--config",
            config.to_str().unwrap(),
            "--backup-interval",
            "0s",
        ],
    );
    let mut conn = Conn::open(addr);
    let region = |action: &str| {
        let status = Command::new("bash")
            .args([SCRIPT, action, garage.to_str().unwrap(), "uk"])
            .status()
            .unwrap();
        assert!(status.success());
    };
    region("kill");
    let backups: Vec<String> = (0..n)
        .map(|_| start_backup(&mut conn, &admin, &tenant))
        .collect();
    // Wait until the others hold them and uk has failed at least once each.
    loop {
        let ready = backups.iter().all(|b| {
            let v = backup_state(&mut conn, &admin, &tenant, b);
            v["regions"]["in"]["state"] == "verified"
                && v["regions"]["sg"]["state"] == "verified"
                && v["regions"]["uk"]["state"] == "failed"
        });
        if ready {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let size: u64 = backups
        .iter()
        .map(|b| {
            backup_state(&mut conn, &admin, &tenant, b)["size"]
                .as_u64()
                .unwrap()
        })
        .sum();
    region("restart");
    let back = Instant::now();
    loop {
        let done = backups.iter().all(|b| {
            backup_state(&mut conn, &admin, &tenant, b)["regions"]["uk"]["state"] == "verified"
        });
        if done {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "uk caught up {n} backups ({:.1} MB) {:.2} s after its Garage was back",
        size as f64 / 1e6,
        back.elapsed().as_secs_f64()
    );
    host.kill().unwrap();
    host.wait().unwrap();
}
