//! Continuous backup and point-in-time restore: the change log shipped to the
//! regions in sealed segments, the wrong delete undone, a host lost with its
//! disk and brought back from the regions (real Garage), gaps named. One
//! subject whose seven scenarios share their helpers: kept in one file
//! although it passes 800 lines.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::backups::{start_backup, wait_backup_done};
use crate::support::eventually;
use crate::support::garage::Garage;
use crate::support::records::records_path;
use crate::support::{contains, files_under, Host, TempDir};

const REGIONS: &[&str] = &["in", "sg", "uk"];

pub(crate) fn contact(host: &Host, tenant: &str, token: &str, name: &str) -> String {
    let r = host.json(
        "POST",
        &records_path(tenant, "contacts"),
        Some(token),
        json!({"name": name, "email": format!("{name}@example.com")}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    r.value()["id"].as_str().unwrap().to_string()
}

pub(crate) fn names(host: &Host, tenant: &str, token: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut after = String::new();
    loop {
        let r = host.call(
            "GET",
            &format!("{}?limit=1000{after}", records_path(tenant, "contacts")),
            Some(token),
            None,
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let page = r.value();
        for record in page["records"].as_array().unwrap() {
            names.push(record["name"].as_str().unwrap().to_string());
        }
        match page["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    names.sort();
    names
}

fn now_rfc3339_ms() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

pub(crate) fn restore(
    host: &Host,
    tenant: &str,
    token: &str,
    body: Value,
) -> crate::support::Response {
    host.json(
        "POST",
        &format!("/v1/tenants/{tenant}/restore"),
        Some(token),
        body,
    )
}

/// The tenant's change log as `/copies` reports it.
pub(crate) fn change_log(host: &Host, tenant: &str, token: &str) -> Value {
    host.call(
        "GET",
        &format!("/v1/tenants/{tenant}/copies"),
        Some(token),
        None,
    )
    .value()["change_log"]
        .clone()
}

pub(crate) fn wait_shipped(host: &Host, tenant: &str, token: &str, regions: &[&str]) -> Value {
    eventually(
        "the change log in every region",
        || change_log(host, tenant, token),
        |log| {
            log["loss_window_seconds"].as_f64() == Some(0.0)
                && regions
                    .iter()
                    .all(|r| log["newest_safe_write"][*r]["sequence"].as_u64().is_some())
        },
    )
}

#[test]
fn the_wrong_delete_is_undone_by_a_restore_to_the_minute_before_it() {
    let dir = TempDir::new("pitr-delete");
    let host = Host::start(&dir.path().join("host"), &["--backup-interval", "0s"]);
    let (tenant, admin) = host.create_tenant("Undo Co", "crm");
    let before: Vec<String> = (0..6)
        .map(|i| contact(&host, &tenant, &admin, &format!("kept-{i}")))
        .collect();
    let backup = start_backup(&host, &tenant, &admin);
    wait_backup_done(&host, &tenant, &admin, backup["id"].as_str().unwrap());
    // After the backup: more records, then a point in time to return to.
    for i in 0..4 {
        contact(&host, &tenant, &admin, &format!("later-{i}"));
    }
    std::thread::sleep(Duration::from_millis(30));
    let noted = now_rfc3339_ms();
    std::thread::sleep(Duration::from_millis(30));
    // The wrong delete, and a write after it that the restore must not hold.
    for id in &before {
        let r = host.call(
            "DELETE",
            &format!("{}/{id}", records_path(&tenant, "contacts")),
            Some(&admin),
            None,
        );
        assert_eq!(r.status, 204);
    }
    contact(&host, &tenant, &admin, "after-the-delete");
    assert_eq!(names(&host, &tenant, &admin).len(), 5);
    wait_shipped(&host, &tenant, &admin, REGIONS_DIRS);

    let r = restore(
        &host,
        &tenant,
        &admin,
        json!({"name": "Undo Co, before", "at": noted}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let copy = r.value();
    let (copy_id, copy_admin) = (
        copy["id"].as_str().unwrap().to_string(),
        copy["admin_token"].as_str().unwrap().to_string(),
    );
    let mut expected: Vec<String> = (0..6)
        .map(|i| format!("kept-{i}"))
        .chain((0..4).map(|i| format!("later-{i}")))
        .collect();
    expected.sort();
    assert_eq!(names(&host, &copy_id, &copy_admin), expected);
    // The exact point: the tenth write (six, then four after the backup).
    assert_eq!(copy["restored_to"]["sequence"], 10, "{copy}");
    assert!(copy["restored_to"]["at"].as_str().unwrap() <= noted.as_str());

    // The same through the backup tooling.
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, &admin).unwrap();
    let mut perms = std::fs::metadata(&token_file).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    std::fs::set_permissions(&token_file, perms).unwrap();
    let tool = |args: &[&str]| {
        let out = std::process::Command::new(crate::support::BIN)
            .arg("backup")
            .args(args)
            .args(["--url", &host.url(), "--tenant", &tenant])
            .arg("--token-file")
            .arg(&token_file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let by_cli: Value = serde_json::from_str(&tool(&[
        "restore",
        "--name",
        "by the tool",
        "--at",
        &noted,
        "--json",
    ]))
    .unwrap();
    assert_eq!(by_cli["restored_to"]["sequence"], 10, "{by_cli}");
    let listed: Value = serde_json::from_str(&tool(&["list", "--json"])).unwrap();
    assert_eq!(listed["change_log"]["mode"], "local", "{listed}");
    assert_eq!(
        listed["change_log"]["newest_safe_write"]["local-2"]["sequence"], 17,
        "{listed}"
    );

    // By sequence: up to the first three deletes.
    let r = restore(
        &host,
        &tenant,
        &admin,
        json!({"name": "Undo Co, 13", "sequence": 13}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let by_seq = r.value();
    assert_eq!(by_seq["restored_to"]["sequence"], 13);
    let token = by_seq["admin_token"].as_str().unwrap();
    assert_eq!(names(&host, by_seq["id"].as_str().unwrap(), token).len(), 7);

    // A sequence the log has not reached: refused, naming the range.
    let r = restore(
        &host,
        &tenant,
        &admin,
        json!({"name": "Too far", "sequence": 999}),
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.error().contains("changes 18 to 999"), "{}", r.error());
    // A point before any backup taken with the log: refused.
    let r = restore(
        &host,
        &tenant,
        &admin,
        json!({"name": "Too early", "at": "2020-01-01T00:00:00Z"}),
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.error().contains("no full backup"), "{}", r.error());
    // Bad input changes nothing.
    for (body, status) in [
        (json!({"name": "x", "at": "yesterday"}), 400),
        (json!({"name": "x", "at": noted, "sequence": 3}), 400),
        (json!({"name": "x", "sequence": -1}), 422),
        (json!({"name": "x", "wat": 1}), 422),
        (json!({"name": "x", "region": "mars"}), 422),
    ] {
        let r = restore(&host, &tenant, &admin, body.clone());
        assert_eq!(r.status, status, "{body}: {}", r.text());
    }
    let listed = host
        .call("GET", "/v1/tenants", Some(&host.operator), None)
        .value();
    assert_eq!(listed["tenants"].as_array().unwrap().len(), 4, "{listed}");

    // The restored tenant logs on without a gap from its restored point: its
    // next write is change 11, and a restore of it reaches that write.
    contact(&host, &copy_id, &copy_admin, "written-to-the-copy");
    eventually(
        "the copy's base backup",
        || {
            host.call(
                "GET",
                &format!("/v1/tenants/{copy_id}/backups"),
                Some(&copy_admin),
                None,
            )
            .value()
        },
        |v| {
            v["backups"]
                .as_array()
                .is_some_and(|b| b.iter().any(|b| b["state"] == "done"))
        },
    );
    wait_shipped(&host, &copy_id, &copy_admin, REGIONS_DIRS);
    let r = restore(
        &host,
        &copy_id,
        &copy_admin,
        json!({"name": "Copy of the copy"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let again = r.value();
    assert_eq!(again["restored_to"]["sequence"], 11, "{again}");
    let token = again["admin_token"].as_str().unwrap();
    assert!(names(&host, again["id"].as_str().unwrap(), token)
        .contains(&"written-to-the-copy".to_string()));

    // No plaintext of any record in the spool or the regions' segments.
    let stopped_dir = dir.path().join("host");
    host.stop();
    for file in files_under(&stopped_dir) {
        let name = file.to_string_lossy().to_string();
        if name.contains("/regions/") || name.contains("/backups/") {
            let bytes = std::fs::read(&file).unwrap();
            for canary in ["later-2", "after-the-delete", "written-to-the-copy"] {
                assert!(!contains(&bytes, canary.as_bytes()), "{canary} in {name}");
            }
        }
    }
}

/// The default regions of a host without `[regions.*]`: three directories.
pub(crate) const REGIONS_DIRS: &[&str] = &["local", "local-2", "local-3"];

fn start_on_garage(dir: &TempDir, garage: &Garage, name: &str, extra: &[&str]) -> Host {
    let config = garage.write_config("in", &dir.path().join(format!("{name}.toml")));
    let mut args = vec![
        "--config",
        config.to_str().unwrap(),
        "--backup-interval",
        "0s",
    ];
    args.extend_from_slice(extra);
    Host::start(&dir.path().join(name), &args)
}

#[test]
fn a_lost_host_comes_back_from_the_regions_with_every_replicated_write() {
    let dir = TempDir::new("pitr-host-loss");
    let garage = Garage::start(&dir.path().join("garage"), REGIONS);
    let host = start_on_garage(&dir, &garage, "first", &[]);
    let (replicated, r_admin) = host.create_tenant("Sync Co", "crm");
    let (local, l_admin) = host.create_tenant("Async Co", "crm");
    let r = host.json(
        "PUT",
        &format!("/v1/tenants/{replicated}/durability"),
        Some(&r_admin),
        json!({"mode": "replicated"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.value()["durability"]["mode"], "replicated");
    // The local tenant's log needs a full backup to restore from; the
    // replicated one gets its own before its first write is acknowledged.
    contact(&host, &local, &l_admin, "before-the-backup");
    let backup = start_backup(&host, &local, &l_admin);
    wait_backup_done(&host, &local, &l_admin, backup["id"].as_str().unwrap());
    contact(&host, &replicated, &r_admin, "before-the-backup");
    // One base for it, however often its first write looked while the
    // regions verified that base.
    let listed = host
        .call(
            "GET",
            &format!("/v1/tenants/{replicated}/backups"),
            Some(&r_admin),
            None,
        )
        .value();
    let kinds: Vec<_> = listed["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| &b["kind"])
        .collect();
    assert_eq!(kinds, ["log-base"], "{listed}");
    // Writers on both tenants; the host dies under them.
    let (addr, stop) = (
        host.addr,
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
    );
    let paused = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let idle = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Set just before the kill: from then on a failed write is expected.
    let killing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = |tenant: String,
                  token: String,
                  pause: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>| {
        let (stop, idle, killing) = (stop.clone(), idle.clone(), killing.clone());
        std::thread::spawn(move || {
            // One keep-alive connection per writer.
            let client = coffer::client::Client::new(
                &format!("http://{addr}"),
                Some(token.clone()),
                Duration::from_secs(60),
            )
            .unwrap();
            let mut acknowledged = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if pause
                    .as_ref()
                    .is_some_and(|p| p.load(std::sync::atomic::Ordering::SeqCst))
                {
                    idle.store(true, std::sync::atomic::Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                let name = format!("w-{i}");
                let body =
                    serde_json::to_vec(&json!({"name": name, "email": format!("{name}@x.test")}))
                        .unwrap();
                match client.request("POST", &records_path(&tenant, "contacts"), Some(&body)) {
                    Ok(mut r) if r.status == 201 => {
                        let _ = r.bytes();
                        acknowledged.push((name, Instant::now()));
                    }
                    // Refused before the kill: say why (the pause below would
                    // otherwise wait for a writer that is gone).
                    Ok(mut r) if !killing.load(std::sync::atomic::Ordering::SeqCst) => {
                        let text =
                            String::from_utf8_lossy(&r.bytes().unwrap_or_default()).into_owned();
                        panic!("writer of {tenant}: {} {text}", r.status);
                    }
                    // The host may close an idle keep-alive connection (the
                    // pause below): the next write goes on a new one. The
                    // write was not acknowledged, so nothing is owed for it.
                    Err(error) if !killing.load(std::sync::atomic::Ordering::SeqCst) => {
                        eprintln!("writer of {tenant}: {error:#}; again");
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    _ => break,
                }
                i += 1;
            }
            acknowledged
        })
    };
    let w_replicated = writer(replicated.clone(), r_admin.clone(), None);
    let w_local = writer(local.clone(), l_admin.clone(), Some(paused.clone()));
    // The local tenant writes, pauses until the host reports every write so
    // far safe in the regions (loss window 0), and writes again up to the
    // kill: what the host called safe must come back, however long the
    // shipping took on a loaded machine.
    std::thread::sleep(Duration::from_secs(3));
    paused.store(true, std::sync::atomic::Ordering::SeqCst);
    eventually(
        "the local writer paused",
        || idle.load(std::sync::atomic::Ordering::SeqCst) || w_local.is_finished(),
        |idle| *idle,
    );
    assert!(
        !w_local.is_finished(),
        "the local writer stopped: {:?}",
        w_local.join().err()
    );
    wait_shipped(&host, &local, &l_admin, &["sg"]);
    let reported_safe_at = Instant::now();
    paused.store(false, std::sync::atomic::Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(2));
    let killed_at = Instant::now();
    let data_dir = dir.path().join("first");
    killing.store(true, std::sync::atomic::Ordering::SeqCst);
    host.kill();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let acked_replicated = w_replicated.join().unwrap();
    let acked_local = w_local.join().unwrap();
    assert!(
        acked_replicated.len() >= 3,
        "{} replicated writes",
        acked_replicated.len()
    );
    // The disk is gone too; only the backup key survives (kept apart).
    let backup_key = std::fs::read(data_dir.join("backup.key")).unwrap();
    std::fs::remove_dir_all(&data_dir).unwrap();

    let fresh_dir = dir.path().join("second");
    std::fs::create_dir_all(&fresh_dir).unwrap();
    let key_file = dir.path().join("backup.key");
    std::fs::write(&key_file, &backup_key).unwrap();
    let mut perms = std::fs::metadata(&key_file).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    std::fs::set_permissions(&key_file, perms).unwrap();
    let fresh = start_on_garage(
        &dir,
        &garage,
        "second",
        &["--backup-key-file", key_file.to_str().unwrap()],
    );
    let operator = fresh.operator.clone();

    let r = restore(
        &fresh,
        &replicated,
        &operator,
        json!({"name": "Sync Co, back"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let back = r.value();
    // The restored tenant keeps its source's admin credentials.
    let have = names(&fresh, back["id"].as_str().unwrap(), &r_admin);
    for (name, _) in &acked_replicated {
        assert!(
            have.contains(name),
            "acknowledged replicated write {name} lost"
        );
    }

    let r = restore(
        &fresh,
        &local,
        &operator,
        json!({"name": "Async Co, back", "region": "sg"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let back = r.value();
    let have = names(&fresh, back["id"].as_str().unwrap(), &l_admin);
    // Every local write acknowledged before the host reported them safe is
    // there; of the later ones, whatever had shipped by the kill.
    let reported_safe: Vec<&String> = acked_local
        .iter()
        .filter(|(_, at)| *at < reported_safe_at)
        .map(|(n, _)| n)
        .collect();
    assert!(!reported_safe.is_empty(), "no local write before the pause");
    for name in &reported_safe {
        assert!(
            have.contains(name),
            "local write {name}, reported safe in the regions before the kill, lost"
        );
    }
    let newer = acked_local.len() - reported_safe.len();
    let newer_kept = acked_local
        .iter()
        .filter(|(n, at)| *at >= reported_safe_at && have.contains(n))
        .count();
    eprintln!(
        "local mode: {} writes acknowledged, {newer} after the host reported the rest safe, {newer_kept} of those restored; killed {:?} after that; replicated: {} acknowledged, all restored",
        acked_local.len(),
        killed_at.duration_since(reported_safe_at),
        acked_replicated.len()
    );
}

/// Segment object directories of a tenant in a directory region, oldest first.
fn segment_dirs(data: &std::path::Path, region: &str, tenant: &str) -> Vec<std::path::PathBuf> {
    let dir = data
        .join("regions")
        .join(region)
        .join("tenants")
        .join(tenant);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("log-"))
                .collect()
        })
        .unwrap_or_default();
    // In log order (names are random).
    out.sort_by_key(|d| {
        std::fs::read(d.join("manifest.json"))
            .ok()
            .and_then(|m| serde_json::from_slice::<Value>(&m).ok())
            .and_then(|m| m["log"]["first_seq"].as_u64())
    });
    out
}

#[test]
fn a_segment_missing_in_one_region_is_read_from_another_and_a_gap_is_named() {
    let dir = TempDir::new("pitr-gap");
    let data = dir.path().join("host");
    let host = Host::start(&data, &["--backup-interval", "0s"]);
    let (tenant, admin) = host.create_tenant("Gap Co", "crm");
    contact(&host, &tenant, &admin, "base");
    let backup = start_backup(&host, &tenant, &admin);
    wait_backup_done(&host, &tenant, &admin, backup["id"].as_str().unwrap());
    // Three segments: writes, a pause longer than a segment, more writes.
    for round in 0..3 {
        for i in 0..3 {
            contact(&host, &tenant, &admin, &format!("r{round}-{i}"));
        }
        let want = 1 + 3 * (round + 1) as u64;
        eventually(
            "the round's segment in every region",
            || wait_shipped(&host, &tenant, &admin, REGIONS_DIRS)["newest_safe_write"].clone(),
            |safe| {
                REGIONS_DIRS
                    .iter()
                    .all(|r| safe[*r]["sequence"].as_u64() >= Some(want))
            },
        );
    }
    let in_local = segment_dirs(&data, "local", &tenant);
    assert!(in_local.len() >= 3, "{in_local:?}");
    // The middle segment removed by hand from one region.
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(in_local[1].join("manifest.json")).unwrap()).unwrap();
    let middle = manifest["backup_id"].as_str().unwrap().to_string();
    let (first, last) = (
        manifest["log"]["first_seq"].as_u64().unwrap(),
        manifest["log"]["last_seq"].as_u64().unwrap(),
    );
    std::fs::remove_dir_all(&in_local[1]).unwrap();
    let r = restore(
        &host,
        &tenant,
        &admin,
        json!({"name": "from local", "region": "local"}),
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(
        r.error()
            .contains(&format!("changes {first} to {last} are in no region")),
        "{}",
        r.error()
    );
    let r = restore(
        &host,
        &tenant,
        &admin,
        json!({"name": "from local-2", "region": "local-2"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.value()["restored_to"]["sequence"], 10);
    // Gone from every region (and the spool): no restore past the gap, and
    // the gap is named; a point before it still restores.
    for region in ["local-2", "local-3"] {
        for seg in segment_dirs(&data, region, &tenant) {
            if seg.ends_with(&middle) {
                std::fs::remove_dir_all(&seg).unwrap();
            }
        }
    }
    let r = restore(&host, &tenant, &admin, json!({"name": "past the gap"}));
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.error().contains("gap"), "{}", r.error());
    let r = restore(
        &host,
        &tenant,
        &admin,
        json!({"name": "before the gap", "sequence": first - 1}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.value()["restored_to"]["sequence"], first - 1);
}

#[test]
fn old_segments_leave_every_region_after_the_window_and_a_purge_erases_the_log() {
    let dir = TempDir::new("pitr-retention");
    let data = dir.path().join("host");
    let clock = dir.path().join("clock");
    std::fs::write(&clock, "0").unwrap();
    let config = dir.path().join("host.toml");
    std::fs::write(&config, "[changelog]\nretention_days = 1\n").unwrap();
    let host = Host::start_with_clock(
        &data,
        &[
            "--config",
            config.to_str().unwrap(),
            "--backup-interval",
            "0s",
            "--sweep-interval",
            "1s",
        ],
        &clock,
    );
    let (tenant, admin) = host.create_tenant("Window Co", "crm");
    contact(&host, &tenant, &admin, "first");
    let b1 = start_backup(&host, &tenant, &admin);
    wait_backup_done(&host, &tenant, &admin, b1["id"].as_str().unwrap());
    for i in 0..3 {
        contact(&host, &tenant, &admin, &format!("old-{i}"));
    }
    wait_shipped(&host, &tenant, &admin, REGIONS_DIRS);
    let old: Vec<_> = REGIONS_DIRS
        .iter()
        .flat_map(|r| segment_dirs(&data, r, &tenant))
        .collect();
    assert!(!old.is_empty());
    // A backup after them: a restore inside the window starts there.
    let b2 = start_backup(&host, &tenant, &admin);
    wait_backup_done(&host, &tenant, &admin, b2["id"].as_str().unwrap());
    // Two days later the old segments are outside the window and covered.
    std::fs::write(&clock, (2 * 86_400).to_string()).unwrap();
    eventually(
        "old segments deleted everywhere",
        || old.iter().filter(|p| p.exists()).count(),
        |n| *n == 0,
    );
    // A new change ships and stays; the latest point still restores.
    contact(&host, &tenant, &admin, "new");
    wait_shipped(&host, &tenant, &admin, REGIONS_DIRS);
    let r = restore(&host, &tenant, &admin, json!({"name": "inside the window"}));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.value()["restored_to"]["sequence"], 5);
    assert_eq!(r.value()["records"], 5);
    // Purge with erasure: the log goes from every region too.
    let r = host.json(
        "POST",
        &format!("/v1/tenants/{tenant}/purge"),
        Some(&host.operator),
        json!({"erase_backups": true}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    eventually(
        "the log erased everywhere",
        || {
            REGIONS_DIRS
                .iter()
                .map(|r| segment_dirs(&data, r, &tenant).len())
                .sum::<usize>()
        },
        |n| *n == 0,
    );
}

#[test]
fn a_region_down_while_the_log_ships_catches_up_and_restores() {
    let dir = TempDir::new("pitr-outage");
    let garage = Garage::start(&dir.path().join("garage"), REGIONS);
    let host = start_on_garage(&dir, &garage, "host", &[]);
    let (tenant, admin) = host.create_tenant("Outage Co", "crm");
    contact(&host, &tenant, &admin, "before");
    let backup = start_backup(&host, &tenant, &admin);
    wait_backup_done(&host, &tenant, &admin, backup["id"].as_str().unwrap());
    wait_shipped(&host, &tenant, &admin, REGIONS);
    garage.kill("uk");
    for i in 0..5 {
        contact(&host, &tenant, &admin, &format!("during-{i}"));
    }
    // The others hold the new changes; uk is behind, and says why.
    let log = eventually(
        "in and sg hold the changes made during the outage",
        || change_log(&host, &tenant, &admin),
        |log| {
            ["in", "sg"]
                .iter()
                .all(|r| log["newest_safe_write"][*r]["sequence"].as_u64() == Some(6))
        },
    );
    assert_eq!(log["newest_safe_write"]["uk"]["sequence"], 1, "{log}");
    let regions = host
        .call("GET", "/v1/regions", Some(&host.operator), None)
        .value();
    let uk = regions["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["region"] == "uk")
        .unwrap()
        .clone();
    // Its backups are all there; its log is behind.
    assert_eq!(uk["behind"], 0, "{regions}");
    assert!(uk["log_behind"].as_u64().unwrap() >= 1, "{regions}");
    assert!(uk["log_lag_seconds"].is_u64(), "{regions}");
    garage.restart("uk");
    // Two regions already held the log, so the shipper catches uk up on its own.
    eventually(
        "uk catches up with the changes made while it was down",
        || change_log(&host, &tenant, &admin),
        |log| log["newest_safe_write"]["uk"]["sequence"].as_u64() == Some(6),
    );
    let r = restore(
        &host,
        &tenant,
        &admin,
        json!({"name": "from uk", "region": "uk"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let copy = r.value();
    assert_eq!(copy["restored_to"]["sequence"], 6);
    let token = copy["admin_token"].as_str().unwrap();
    assert_eq!(names(&host, copy["id"].as_str().unwrap(), token).len(), 6);
}

#[test]
fn a_restore_in_place_keeps_the_state_before_it_and_is_undone() {
    let dir = TempDir::new("pitr-in-place");
    let data = dir.path().join("host");
    let host = Host::start(&data, &["--backup-interval", "0s"]);
    let (tenant, admin) = host.create_tenant("Place Co", "crm");
    let ids: Vec<String> = (0..5)
        .map(|i| contact(&host, &tenant, &admin, &format!("a{i}")))
        .collect();
    let backup = start_backup(&host, &tenant, &admin);
    wait_backup_done(&host, &tenant, &admin, backup["id"].as_str().unwrap());
    std::thread::sleep(Duration::from_millis(30));
    let noted = now_rfc3339_ms();
    std::thread::sleep(Duration::from_millis(30));
    for id in &ids[..2] {
        let path = format!("{}/{id}", records_path(&tenant, "contacts"));
        assert_eq!(host.call("DELETE", &path, Some(&admin), None).status, 204);
    }
    contact(&host, &tenant, &admin, "b0");
    let before_restore = names(&host, &tenant, &admin);
    assert_eq!(before_restore, ["a2", "a3", "a4", "b0"]);
    wait_shipped(&host, &tenant, &admin, REGIONS_DIRS);

    // A name belongs to a restore into a new tenant: refused, nothing changed.
    let r = restore(
        &host,
        &tenant,
        &admin,
        json!({"in_place": true, "at": noted, "name": "renamed"}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(names(&host, &tenant, &admin), before_restore);
    let r = restore(
        &host,
        &tenant,
        &admin,
        json!({"in_place": true, "at": noted}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let done = r.value();
    assert_eq!(done["id"], tenant.as_str());
    assert_eq!(done["restored_to"]["sequence"], 5, "{done}");
    assert_eq!(
        names(&host, &tenant, &admin),
        ["a0", "a1", "a2", "a3", "a4"]
    );
    // The tenant writes on (same id, same admin token), in a new generation.
    contact(&host, &tenant, &admin, "c0");
    // The new generation's first segment reaches the region beside the old one's.
    eventually(
        "segments of two generations in region local",
        || {
            segment_dirs(&data, "local", &tenant)
                .iter()
                .filter_map(|d| {
                    let m: Value =
                        serde_json::from_slice(&std::fs::read(d.join("manifest.json")).ok()?)
                            .ok()?;
                    Some(m["log"]["generation"].as_str()?.to_string())
                })
                .collect::<std::collections::BTreeSet<String>>()
        },
        |generations| generations.len() == 2,
    );

    // Undo: back to the state before the restore, kept as a backup by it.
    let undo = done["undo"]["restore"].clone();
    assert_eq!(undo["in_place"], true);
    let r = restore(&host, &tenant, &admin, undo);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(names(&host, &tenant, &admin), before_restore);
    // The undo kept the state it replaced (with c0) too.
    let again = r.value();
    let r = restore(&host, &tenant, &admin, again["undo"]["restore"].clone());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        names(&host, &tenant, &admin),
        ["a0", "a1", "a2", "a3", "a4", "c0"]
    );
}
