//! Replication to three regions on real Garage servers (S3 on loopback):
//! verification, outages and catch-up, crash and resume, restore from each
//! region and on a fresh host, retention, erasure.

use serde_json::{json, Value};

use crate::support::backups::{start_backup, wait_verified};
use crate::support::eventually;
use crate::support::garage::Garage;
use crate::support::records::{all_records, populated_tenant, CRM};
use crate::support::tamper::Tamper;
use crate::support::{contains, files_under, Host, TempDir};

const REGIONS: &[&str] = &["in", "sg", "uk"];

fn host_with_regions(
    dir: &TempDir,
    garage: &Garage,
    name: &str,
    region: &str,
    extra: &[&str],
) -> Host {
    let config = garage.write_config(region, &dir.path().join(format!("{name}.toml")));
    let mut args = vec![
        "--config",
        config.to_str().unwrap(),
        "--backup-interval",
        "0s",
    ];
    args.extend_from_slice(extra);
    Host::start(&dir.path().join(name), &args)
}

/// The tenant's backup objects in a region (its change-log segments,
/// `tenants/<tenant>/log-…`, are not backups).
fn objects_of(garage: &Garage, region: &str, tenant: &str) -> Vec<(String, u64)> {
    garage
        .objects(region)
        .into_iter()
        .filter(|(name, _)| name.starts_with(&format!("tenants/{tenant}/")))
        .filter(|(name, _)| !name.starts_with(&format!("tenants/{tenant}/log-")))
        .collect()
}

fn region_states(backup: &Value) -> Vec<String> {
    REGIONS
        .iter()
        .map(|r| {
            backup["regions"][*r]["state"]
                .as_str()
                .unwrap_or("?")
                .to_string()
        })
        .collect()
}

fn read_backup(host: &Host, tenant: &str, token: &str, backup: &str) -> Value {
    let r = host.call(
        "GET",
        &format!("/v1/tenants/{tenant}/backups/{backup}"),
        Some(token),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.value()
}

#[test]
fn backups_reach_three_garage_regions_sealed_restorable_from_each_and_on_a_fresh_host_then_erased()
{
    let dir = TempDir::new("repl-three");
    let garage = Garage::start(&dir.path().join("garage"), REGIONS);
    let host = host_with_regions(&dir, &garage, "first", "in", &[]);
    let (t, a) = populated_tenant(&host, "three regions");
    let canary = "CANARY-7f3e-replicated-plaintext";
    let r = host.json(
        "POST",
        &format!("/v1/tenants/{t}/collections/contacts/records"),
        Some(&a),
        json!({"name": canary, "email": "canary@example.test"}),
    );
    assert_eq!(r.status, 201);
    let original = all_records(&host, &t, &a, CRM);

    let done = start_backup(&host, &t, &a);
    assert_eq!(done["state"], "done", "{done}");
    let backup = done["id"].as_str().unwrap().to_string();
    let verified = wait_verified(&host, &t, &a, &backup, REGIONS);
    for region in REGIONS {
        assert!(
            verified["regions"][*region]["verified_at"].is_string(),
            "{verified}"
        );
        // Exactly the archive and its manifest, at the sizes the API reports.
        let objects = objects_of(&garage, region, &t);
        assert_eq!(objects.len(), 2, "{region}: {objects:?}");
        assert!(objects.iter().any(
            |(n, size)| n.ends_with("archive.cfrdr") && *size == done["size"].as_u64().unwrap()
        ));
        assert!(objects
            .iter()
            .any(|(n, _)| n.ends_with(&format!("{backup}/manifest.json"))));
        // Sealed: nothing Garage stores holds the tenant's plaintext.
        for file in files_under(&garage.region_dir(region)) {
            let bytes = std::fs::read(&file).unwrap();
            assert!(
                !contains(&bytes, canary.as_bytes()),
                "canary in {}",
                file.display()
            );
            assert!(
                !contains(&bytes, b"canary@example.test"),
                "email in {}",
                file.display()
            );
        }
    }
    // The host's spool copy goes once every region holds the backup.
    eventually(
        "spool emptied",
        || files_under(&host.data_dir.join("backups")).len(),
        |n| *n == 0,
    );
    let copies = host.call("GET", &format!("/v1/tenants/{t}/copies"), Some(&a), None);
    assert_eq!(copies.status, 200, "{}", copies.text());
    let copies = copies.value();
    assert_eq!(copies["hosting_region"], "in");
    assert_eq!(copies["backups"][0]["id"], backup.as_str());
    assert_eq!(region_states(&copies["backups"][0]), ["verified"; 3]);

    // Restore from each region: every record comes back.
    for region in REGIONS {
        let r = host.json(
            "POST",
            &format!("/v1/tenants/{t}/backups/{backup}/restore"),
            Some(&a),
            json!({"name": format!("from {region}"), "region": region}),
        );
        assert_eq!(r.status, 201, "{region}: {}", r.text());
        let restored = r.value()["id"].as_str().unwrap().to_string();
        assert_eq!(all_records(&host, &restored, &a, CRM), original, "{region}");
    }
    let r = host.json(
        "POST",
        &format!("/v1/tenants/{t}/backups/{backup}/restore"),
        Some(&a),
        json!({"name": "nowhere", "region": "mars"}),
    );
    assert_eq!(r.status, 422, "{}", r.text());

    // A fresh host in another region, with only the backup key and the region
    // config, finds the tenant in its region's store and restores it.
    let key = dir.path().join("backup.key");
    std::fs::copy(host.data_dir.join("backup.key"), &key).unwrap();
    let fresh = host_with_regions(
        &dir,
        &garage,
        "fresh",
        "uk",
        &["--backup-key-file", key.to_str().unwrap()],
    );
    let agent = fresh.json(
        "POST",
        "/v1/tokens",
        Some(&fresh.operator),
        json!({"role": "backup-agent", "name": "dr"}),
    );
    let agent = agent.value()["token"].as_str().unwrap().to_string();
    let listed = fresh.call("GET", "/v1/regions/uk/tenants", Some(&agent), None);
    assert_eq!(listed.status, 200, "{}", listed.text());
    assert!(
        listed.value()["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["id"] == t.as_str()),
        "{}",
        listed.text()
    );
    let backups = fresh.call(
        "GET",
        &format!("/v1/tenants/{t}/backups"),
        Some(&agent),
        None,
    );
    assert_eq!(
        backups.value()["backups"][0]["id"],
        backup.as_str(),
        "{}",
        backups.text()
    );
    let r = fresh.json(
        "POST",
        &format!("/v1/tenants/{t}/backups/{backup}/restore"),
        Some(&agent),
        json!({"name": "recovered in uk", "region": "uk"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(r.value().get("admin_token").is_none());
    let recovered = r.value()["id"].as_str().unwrap().to_string();
    assert_eq!(all_records(&fresh, &recovered, &a, CRM), original);
    fresh.stop();

    // Purge with erase_backups: every copy everywhere goes, as the buckets'
    // own listings show.
    let r = host.json(
        "POST",
        &format!("/v1/tenants/{t}/purge"),
        Some(&host.operator),
        json!({"erase_backups": true}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.value()["backups_erasing"], 1);
    for region in REGIONS {
        eventually(
            &format!("objects of {t} gone from {region}"),
            || objects_of(&garage, region, &t),
            |objects| objects.is_empty(),
        );
    }
    let copies = eventually(
        "copies reports none left",
        || {
            host.call(
                "GET",
                &format!("/v1/tenants/{t}/copies"),
                Some(&host.operator),
                None,
            )
            .value()
        },
        |c| c["copies_remaining"] == 0,
    );
    assert_eq!(copies["backups_erased"], true);
    assert_eq!(copies["database"]["state"], "destroyed");
    assert!(contains(
        &host.log_text(),
        b"every backup copy of the tenant is erased"
    ));
}

#[test]
fn a_region_that_was_down_catches_up_and_retention_deletes_every_copy_even_one_down_at_the_sweep() {
    let dir = TempDir::new("repl-outage");
    let garage = Garage::start(&dir.path().join("garage"), REGIONS);
    let host = host_with_regions(
        &dir,
        &garage,
        "host",
        "in",
        &["--backup-retention", "30s", "--sweep-interval", "1s"],
    );
    let (t, a) = populated_tenant(&host, "outage");

    // sg is down (SIGKILL) when the backup is taken.
    garage.kill("sg");
    let done = start_backup(&host, &t, &a);
    let backup = done["id"].as_str().unwrap().to_string();
    wait_verified(&host, &t, &a, &backup, &["in", "uk"]);
    let during = eventually(
        "sg fails while down",
        || read_backup(&host, &t, &a, &backup),
        |b| b["regions"]["sg"]["state"] == "failed",
    );
    assert!(during["regions"]["sg"]["error"].is_string(), "{during}");
    let regions = host
        .call("GET", "/v1/regions", Some(&host.operator), None)
        .value();
    let sg = regions["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["region"] == "sg")
        .unwrap()
        .clone();
    assert_eq!(sg["behind"], 1, "{regions}");
    assert!(sg["oldest_unreplicated"].is_string(), "{regions}");

    // sg returns: it catches up with no one asking.
    garage.restart("sg");
    let after = wait_verified(&host, &t, &a, &backup, REGIONS);
    assert!(
        after["regions"]["sg"]["attempts"].as_u64().unwrap() >= 1,
        "{after}"
    );
    assert_eq!(objects_of(&garage, "sg", &t).len(), 2);

    // uk is down when retention ends: in and sg lose their copies; uk keeps a
    // tombstone that is retried until it comes back.
    garage.kill("uk");
    for region in ["in", "sg"] {
        eventually(
            &format!("retention empties {region}"),
            || objects_of(&garage, region, &t),
            |o| o.is_empty(),
        );
    }
    let pending = eventually(
        "uk tombstoned",
        || read_backup(&host, &t, &a, &backup),
        |b| b["regions"]["uk"]["state"] == "deleting" && b["regions"]["uk"]["error"].is_string(),
    );
    assert_eq!(pending["regions"]["uk"]["deleting_because"], "retention");
    garage.restart("uk");
    eventually(
        "retention empties uk after its outage",
        || objects_of(&garage, "uk", &t),
        |o| o.is_empty(),
    );
    let listed = eventually(
        "the backup is gone from the host's list",
        || {
            host.call("GET", &format!("/v1/tenants/{t}/backups"), Some(&a), None)
                .value()
        },
        |v| v["backups"].as_array().is_some_and(|b| b.is_empty()),
    );
    assert_eq!(listed["backups"], json!([]));
}

#[test]
fn a_host_killed_mid_replication_resumes_with_no_duplicate_or_partial_objects() {
    let dir = TempDir::new("repl-crash");
    let garage = Garage::start(&dir.path().join("garage"), REGIONS);
    let data = dir.path().join("host");
    let config = garage.write_config("in", &dir.path().join("host.toml"));
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--backup-interval",
        "0s",
    ];
    let host = Host::start(&data, &args);
    let (t, a) = host.create_tenant("big", "crm");
    // About 24 MiB of poorly compressible notes: a multipart upload per region.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..1500 {
        let mut note = String::with_capacity(16 * 1024);
        while note.len() < 16 * 1024 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            note.push_str(&format!("{seed:016x}"));
        }
        let r = host.json(
            "POST",
            &format!("/v1/tenants/{t}/collections/contacts/records"),
            Some(&a),
            json!({"name": format!("bulk {i}"), "notes": note}),
        );
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let r = host.call("POST", &format!("/v1/tenants/{t}/backups"), Some(&a), None);
    let backup = r.value()["id"].as_str().unwrap().to_string();
    // Kill the host as soon as the sealed backup is complete, while the
    // regions are being written.
    let at_kill = eventually(
        "backup sealed",
        || read_backup(&host, &t, &a, &backup),
        |b| b["state"] == "done",
    );
    host.kill();
    eprintln!("region states at the kill: {:?}", region_states(&at_kill));
    let size = at_kill["size"].as_u64().unwrap();
    assert!(
        size > 8 << 20,
        "the archive should need a multipart upload: {size}"
    );
    // Whatever the buckets hold now is complete or absent, never partial.
    // (The tenant's first shipped changes also brought a base backup of the
    // log: only this backup's objects are counted.)
    let of_backup = |region: &str| -> Vec<(String, u64)> {
        objects_of(&garage, region, &t)
            .into_iter()
            .filter(|(name, _)| name.contains(&backup))
            .collect()
    };
    for region in REGIONS {
        for (name, object_size) in of_backup(region) {
            if name.ends_with("archive.cfrdr") {
                assert_eq!(object_size, size, "partial object visible in {region}");
            }
        }
    }

    let host = Host::start(&data, &args);
    let verified = wait_verified(&host, &t, &a, &backup, REGIONS);
    for region in REGIONS {
        let objects = of_backup(region);
        assert_eq!(objects.len(), 2, "{region}: {objects:?}");
        assert!(objects
            .iter()
            .any(|(n, s)| n.ends_with("archive.cfrdr") && *s == size));
    }
    assert_eq!(verified["state"], "done");
    // And the resumed copy restores.
    let r = host.json(
        "POST",
        &format!("/v1/tenants/{t}/backups/{backup}/restore"),
        Some(&a),
        json!({"name": "after the crash", "region": "sg"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let restored = r.value()["id"].as_str().unwrap().to_string();
    let mut count = 0;
    let mut after = String::new();
    loop {
        let page = host
            .call(
                "GET",
                &format!("/v1/tenants/{restored}/collections/contacts/records?limit=1000{after}"),
                Some(&a),
                None,
            )
            .value();
        count += page["records"].as_array().unwrap().len();
        match page["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    assert_eq!(count, 1500);
}

/// Two hosts on loopback, in regions eu and us, sharing the two regions'
/// backup stores (local directories here); eu's `[hosts]` names the us host.
/// Returns (eu, us) and eu's config file.
fn two_region_hosts(dir: &TempDir, extra: &[&str]) -> (Host, Host, std::path::PathBuf) {
    let stores = dir.path().join("stores");
    let tables = format!(
        "[regions.eu]\nstore = \"file://{0}/eu\"\n\n[regions.us]\nstore = \"file://{0}/us\"\n\n[backup]\nretry_base = \"100ms\"\nretry_cap = \"1s\"\n",
        stores.display()
    );
    // Hosts that restore each other's backups share the backup key.
    let key = write_token(dir, "backup.key", &"5a".repeat(32));
    let start = |name: &str, region: &str, hosts: &str| {
        let config = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!("[host]\nregion = \"{region}\"\n\n{tables}\n{hosts}"),
        )
        .unwrap();
        let mut args = vec![
            "--config",
            config.to_str().unwrap(),
            "--backup-interval",
            "0s",
            "--backup-key-file",
            key.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        Host::start(&dir.path().join(name), &args)
    };
    let us = start("us-host", "us", "");
    let eu = start(
        "eu-host",
        "eu",
        &format!("[hosts]\nus = \"{}\"\n", us.url()),
    );
    (eu, us, dir.path().join("eu-host.toml"))
}

fn write_token(dir: &TempDir, name: &str, token: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.path().join(name);
    std::fs::write(&path, token).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

#[test]
fn a_tenant_moves_to_a_host_in_another_region_and_the_source_points_there_then_purges() {
    let dir = TempDir::new("move");
    let (eu, us, eu_config) = two_region_hosts(
        &dir,
        &["--move-purge-delay", "3s", "--sweep-interval", "1s"],
    );
    let (t, a) = populated_tenant(&eu, "moving company");
    let original = all_records(&eu, &t, &a, CRM);
    let some_contact = original.iter().find(|(c, _)| c == "contacts").unwrap().1[0]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // While a move is under way writes pause (reads go on); an abort resumes them.
    let r = eu.json(
        "POST",
        &format!("/v1/tenants/{t}/move"),
        Some(&a),
        json!({"to_region": "us"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.value()["state"], "moving");
    // The target is the host the config names for the region, not the caller's choice.
    assert_eq!(r.value()["moved_to"]["url"], us.url());
    let write = |host: &Host| {
        host.json(
            "POST",
            &format!("/v1/tenants/{t}/collections/contacts/records"),
            Some(&a),
            json!({"name": "late"}),
        )
    };
    let refused = write(&eu);
    assert_eq!(refused.status, 409, "{}", refused.text());
    assert!(refused.error().contains("moving"), "{}", refused.error());
    assert_eq!(all_records(&eu, &t, &a, CRM), original);
    let r = eu.call(
        "POST",
        &format!("/v1/tenants/{t}/move/abort"),
        Some(&a),
        None,
    );
    assert_eq!(r.value()["state"], "active", "{}", r.text());
    assert_eq!(write(&eu).status, 201);
    let original = all_records(&eu, &t, &a, CRM);
    // Bad move requests change nothing.
    for (body, expected) in [
        (json!({"to_region": "eu"}), 422),
        // A free URL is no move target.
        (
            json!({"to_region": "us", "to_url": "https://elsewhere.example"}),
            422,
        ),
        (json!({}), 422),
        // A region with no configured host.
        (json!({"to_region": "mars"}), 409),
    ] {
        let r = eu.json("POST", &format!("/v1/tenants/{t}/move"), Some(&a), body);
        assert_eq!(r.status, expected, "{}", r.text());
    }
    let other = eu.create_tenant("bystander", "crm");
    let r = eu.json(
        "POST",
        &format!("/v1/tenants/{t}/move"),
        Some(&other.1),
        json!({"to_region": "us"}),
    );
    assert_eq!(r.status, 403);
    assert_eq!(all_records(&eu, &t, &a, CRM), original);

    // An operator only proposes a move: nothing changes for the tenant until
    // its admin agrees, and it cannot be completed before.
    let proposed = eu.json(
        "POST",
        &format!("/v1/tenants/{t}/move"),
        Some(&eu.operator),
        json!({"to_region": "us"}),
    );
    assert_eq!(proposed.status, 200, "{}", proposed.text());
    assert_eq!(proposed.value()["state"], "active");
    assert_eq!(
        proposed.value()["proposed_move"]["state"],
        "awaiting-tenant-approval"
    );
    let early = eu.call(
        "POST",
        &format!("/v1/tenants/{t}/move/complete"),
        Some(&eu.operator),
        None,
    );
    assert_eq!(early.status, 409, "{}", early.text());
    assert!(early.error().contains("approve"), "{}", early.error());
    let nobody_else = eu.call(
        "POST",
        &format!("/v1/tenants/{t}/move/approve"),
        Some(&eu.operator),
        None,
    );
    assert_eq!(nobody_else.status, 403, "{}", nobody_else.text());
    let w = write(&eu);
    assert_eq!(w.status, 201, "{}", w.text());
    // The tenant says no.
    let r = eu.call(
        "POST",
        &format!("/v1/tenants/{t}/move/abort"),
        Some(&a),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.value().get("proposed_move").is_none(), "{}", r.text());
    let original = all_records(&eu, &t, &a, CRM);

    // The CLI moves it: admin token on the source, operator token on the target.
    let from_token = write_token(&dir, "admin.token", &a);
    let to_token = write_token(&dir, "us-operator.token", &us.operator);
    let move_cli = |extra: &[&str]| {
        std::process::Command::new(crate::support::BIN)
            .args(["tenant", "move", "--tenant", &t, "--json"])
            .args(["--from", &eu.url(), "--to", &us.url()])
            .arg("--from-token-file")
            .arg(&from_token)
            .arg("--to-token-file")
            .arg(&to_token)
            .args(extra)
            .output()
            .unwrap()
    };
    // Through a region the hosts do not share: refused before anything
    // changes; the tenant takes writes on the source, the target has nothing.
    let out = move_cli(&["--via", "mars"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("\"mars\""), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert_eq!(
        eu.call("GET", &format!("/v1/tenants/{t}"), Some(&a), None)
            .value()["state"],
        "active"
    );
    let absent = us.call("GET", &format!("/v1/tenants/{t}"), Some(&us.operator), None);
    assert_eq!(absent.status, 404);
    let out = move_cli(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["region"], "us");
    let expected_records: usize = original.iter().map(|(_, r)| r.len()).sum();
    assert_eq!(report["records"], expected_records);

    // The target serves the same tenant id, to the same admin token.
    let info = us.call("GET", &format!("/v1/tenants/{t}"), Some(&a), None);
    assert_eq!(info.status, 200, "{}", info.text());
    assert_eq!(info.value()["region"], "us");
    assert_eq!(all_records(&us, &t, &a, CRM), original);
    assert_eq!(write(&us).status, 201);

    // The source answers with where the tenant went.
    let r = eu.call(
        "GET",
        &format!("/v1/tenants/{t}/collections/contacts/records/{some_contact}"),
        Some(&a),
        None,
    );
    assert_eq!(r.status, 308, "{}", r.text());
    assert_eq!(
        r.header("location").unwrap(),
        format!(
            "{}/v1/tenants/{t}/collections/contacts/records/{some_contact}",
            us.url()
        )
    );
    let state = eu
        .call("GET", &format!("/v1/tenants/{t}"), Some(&eu.operator), None)
        .value();
    assert_eq!(state["state"], "moved");
    assert_eq!(state["moved_to"]["region"], "us");
    // A second move of the same tenant onto the target is refused there.
    let r = us.json(
        "POST",
        &format!(
            "/v1/tenants/{t}/backups/{}/restore",
            report["backup"].as_str().unwrap()
        ),
        Some(&us.operator),
        json!({"name": "again", "region": "us", "keep_id": true}),
    );
    assert_eq!(r.status, 409, "{}", r.text());

    // Redirects only ever point at a configured host: once the config no
    // longer lists the target, the source refuses instead of redirecting.
    eu.stop();
    let text = std::fs::read_to_string(&eu_config).unwrap();
    let without_hosts = text.split("[hosts]").next().unwrap().to_string();
    std::fs::write(&eu_config, without_hosts).unwrap();
    let key = dir.path().join("backup.key");
    let eu = Host::start(
        &dir.path().join("eu-host"),
        &[
            "--config",
            eu_config.to_str().unwrap(),
            "--backup-interval",
            "0s",
            "--backup-key-file",
            key.to_str().unwrap(),
            "--move-purge-delay",
            "3s",
            "--sweep-interval",
            "1s",
        ],
    );
    let r = eu.call(
        "GET",
        &format!("/v1/tenants/{t}/collections/contacts/records/{some_contact}"),
        Some(&a),
        None,
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.header("location").is_none());

    // After the purge delay the source's copy is destroyed and its files gone.
    eventually(
        "source copy purged",
        || {
            eu.call("GET", &format!("/v1/tenants/{t}"), Some(&eu.operator), None)
                .value()
        },
        |v| v["state"] == "destroyed",
    );
    eventually(
        "source directory removed",
        || eu.data_dir.join("tenants").join(&t).exists(),
        |exists| !exists,
    );
    assert_eq!(all_records(&us, &t, &a, CRM).len(), CRM.len());
}

/// Upload integrity by checksum: every PUT carries `x-amz-checksum-sha256`,
/// and Garage refuses a body altered on the way instead of storing it, so a
/// region never holds (or counts as holding) bytes the host did not send.
#[test]
fn an_upload_altered_on_the_way_is_refused_by_the_store_and_never_counted() {
    let dir = TempDir::new("repl-tamper");
    let garage = Garage::start(&dir.path().join("garage"), &["in", "sg"]);
    let sg = garage.endpoint("sg");
    let tamper = Tamper::start(sg.trim_start_matches("http://"));
    let config = dir.path().join("host.toml");
    std::fs::write(
        &config,
        garage.coffer_config("in").replace(&sg, &tamper.url),
    )
    .unwrap();
    let host = Host::start(
        &dir.path().join("host"),
        &[
            "--config",
            config.to_str().unwrap(),
            "--backup-interval",
            "0s",
        ],
    );
    let (t, a) = populated_tenant(&host, "tamper");
    let done = start_backup(&host, &t, &a);
    let backup = done["id"].as_str().unwrap().to_string();
    wait_verified(&host, &t, &a, &backup, &["in"]);
    let refused = eventually(
        "sg refuses the altered upload",
        || read_backup(&host, &t, &a, &backup),
        |b| {
            b["regions"]["sg"]["state"] == "failed"
                && b["regions"]["sg"]["attempts"].as_u64() >= Some(2)
        },
    );
    let error = refused["regions"]["sg"]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        error.contains("400"),
        "the store's refusal is shown: {refused}"
    );
    assert!(tamper.altered() >= 2, "the relay altered the uploads");
    // Nothing of the backup was stored in sg: the store refused the body.
    assert_eq!(objects_of(&garage, "sg", &t), vec![], "{refused}");

    // The network heals: the next attempt is accepted and verified.
    tamper.stop_altering();
    wait_verified(&host, &t, &a, &backup, &["in", "sg"]);
    let objects = objects_of(&garage, "sg", &t);
    assert_eq!(objects.len(), 2, "{objects:?}");
    // The bytes sg holds are the sealed archive the host sent: a restore
    // from sg brings back every record.
    let original = all_records(&host, &t, &a, CRM);
    let r = host.json(
        "POST",
        &format!("/v1/tenants/{t}/backups/{backup}/restore"),
        Some(&a),
        json!({"name": "from sg", "region": "sg"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let restored = r.value()["id"].as_str().unwrap().to_string();
    assert_eq!(all_records(&host, &restored, &a, CRM), original);
}
