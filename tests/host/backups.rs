//! DR backups: restored on a second host with only the backup key, on a schedule, and through the backup tooling.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use crate::support::archives::*;
use crate::support::backups::*;
use crate::support::records::*;
use crate::support::{contains, files_under, Host, TempDir, BIN};

#[test]
fn dr_backup_restores_on_a_second_host_with_only_the_backup_key_and_store() {
    let dir = TempDir::new("dr");
    let store = dir.path().join("store");
    let key = dir.path().join("backup.key");
    std::fs::write(&key, "ab".repeat(32)).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let backup_args = [
        "--backup-store",
        store.to_str().unwrap(),
        "--backup-key-file",
        key.to_str().unwrap(),
    ];
    let first = Host::start(&dir.path().join("first"), &backup_args);
    let (t, a) = populated_tenant(&first, "Canary DR Co");
    let canary = "CANARY-dr-backup-4e1d";
    first.json(
        "POST",
        &records_path(&t, "contacts"),
        Some(&a),
        json!({"name": canary, "email": "canary@dr.test"}),
    );
    let original = all_records(&first, &t, &a, CRM);
    let agent = first.json(
        "POST",
        "/v1/tokens",
        Some(&first.operator),
        json!({"role": "backup-agent", "name": "agent"}),
    );
    let agent = agent.value()["token"].as_str().unwrap().to_string();
    let done = start_backup(&first, &t, &agent);
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["records"], 53);
    let backup = done["id"].as_str().unwrap().to_string();
    let done = wait_verified(&first, &t, &agent, &backup, &["local"]);
    assert_eq!(done["regions"]["local"]["state"], "verified", "{done}");
    let listed = first
        .call("GET", &format!("/v1/tenants/{t}/backups"), Some(&a), None)
        .value();
    assert_eq!(listed["backups"][0]["id"], backup.as_str());
    // Sealed: no plaintext in the store.
    for file in files_under(&store) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(!contains(&bytes, canary.as_bytes()), "{}", file.display());
        assert!(
            !contains(&bytes, b"Canary DR Co"),
            "tenant name in {}",
            file.display()
        );
    }
    // Restore on the same host: the admin gets a token; staff get none.
    let r = first.json(
        "POST",
        &format!("/v1/tenants/{t}/backups/{backup}/restore"),
        Some(&a),
        json!({"name": "same host"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let token = r.value()["admin_token"].as_str().unwrap().to_string();
    assert_eq!(
        all_records(&first, r.value()["id"].as_str().unwrap(), &token, CRM),
        original
    );
    let r = first.json(
        "POST",
        &format!("/v1/tenants/{t}/backups/{backup}/restore"),
        Some(&first.operator),
        json!({"name": "by operator"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(
        r.value().get("admin_token").is_none(),
        "an operator must not get a tenant's admin token"
    );
    let by_operator = r.value()["id"].as_str().unwrap().to_string();
    assert_eq!(
        first
            .call(
                "GET",
                &records_path(&by_operator, "contacts"),
                Some(&first.operator),
                None
            )
            .status,
        403
    );
    // ...and the source's admin reaches the copy with their own token.
    assert_eq!(all_records(&first, &by_operator, &a, CRM), original);
    first.kill();

    // The first host is gone. A second host has only the backup key and the store.
    let second = Host::start(&dir.path().join("second"), &backup_args);
    let agent2 = second.json(
        "POST",
        "/v1/tokens",
        Some(&second.operator),
        json!({"role": "backup-agent", "name": "agent"}),
    );
    let agent2 = agent2.value()["token"].as_str().unwrap().to_string();
    let listed = second.call(
        "GET",
        &format!("/v1/tenants/{t}/backups"),
        Some(&agent2),
        None,
    );
    assert_eq!(listed.status, 200, "{}", listed.text());
    assert_eq!(listed.value()["backups"][0]["state"], "done");
    let r = second.json(
        "POST",
        &format!("/v1/tenants/{t}/backups/{backup}/restore"),
        Some(&agent2),
        json!({"name": "recovered", "region": "local"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(r.value().get("admin_token").is_none());
    let recovered = r.value()["id"].as_str().unwrap().to_string();
    // The tenant's own admin token, minted on the lost host, opens the recovered tenant.
    assert_eq!(all_records(&second, &recovered, &a, CRM), original);
    assert_eq!(
        second
            .call(
                "GET",
                &records_path(&recovered, "contacts"),
                Some(&agent2),
                None
            )
            .status,
        403
    );
    second.stop();

    // A host with another backup key cannot open the backup, and creates nothing.
    let wrong = dir.path().join("wrong.key");
    std::fs::write(&wrong, "cd".repeat(32)).unwrap();
    std::fs::set_permissions(&wrong, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let third = Host::start(
        &dir.path().join("third"),
        &[
            "--backup-store",
            store.to_str().unwrap(),
            "--backup-key-file",
            wrong.to_str().unwrap(),
        ],
    );
    let r = third.json(
        "POST",
        &format!("/v1/tenants/{t}/backups/{backup}/restore"),
        Some(&third.operator),
        json!({"name": "nope"}),
    );
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.error().contains("wrong backup key"), "{}", r.error());
    assert_eq!(tenant_count(&third), 0);
    assert!(std::fs::read_dir(third.data_dir.join("staging"))
        .unwrap()
        .next()
        .is_none());
    assert!(std::fs::read_dir(third.data_dir.join("tenants"))
        .unwrap()
        .next()
        .is_none());

    // Verify the sealed object offline: with the key, without it, with the wrong one.
    let object = files_under(&store)
        .into_iter()
        .find(|f| f.extension().is_some_and(|e| e == "cfrdr"))
        .unwrap();
    let run = |extra: &[&Path]| {
        let mut cmd = Command::new(BIN);
        cmd.args(["backup", "verify"]).arg(&object);
        if let Some(k) = extra.first() {
            cmd.arg("--backup-key-file").arg(k);
        }
        cmd.output().unwrap()
    };
    let ok = run(&[&key]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("sealed DR backup"));
    let no_key = run(&[]);
    assert!(!no_key.status.success());
    assert!(String::from_utf8_lossy(&no_key.stderr).contains("--backup-key-file"));
    let wrong_key = run(&[&wrong]);
    assert!(String::from_utf8_lossy(&wrong_key.stderr).contains("wrong backup key"));
}

#[test]
fn scheduled_backups_run_on_their_own() {
    let dir = TempDir::new("schedule");
    let host = Host::start(&dir.path().join("data"), &["--backup-interval", "1s"]);
    let (t, a) = host.create_tenant("Scheduled", "helpdesk");
    host.json(
        "POST",
        &records_path(&t, "customers"),
        Some(&a),
        json!({"name": "c", "email": "c@x"}),
    );
    let r = host.json(
        "PUT",
        &format!("/v1/tenants/{t}/backup-schedule"),
        Some(&a),
        json!({"interval_hours": 24}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        host.json(
            "PUT",
            &format!("/v1/tenants/{t}/backup-schedule"),
            Some(&a),
            json!({"hours": 1})
        )
        .status,
        422
    );
    let mut scheduled = Vec::new();
    for _ in 0..100 {
        let list = host
            .call("GET", &format!("/v1/tenants/{t}/backups"), Some(&a), None)
            .value();
        scheduled = list["backups"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["kind"] == "scheduled" && b["state"] == "done")
            .cloned()
            .collect();
        if !scheduled.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(!scheduled.is_empty(), "no scheduled backup ran");
    // With a 24 h schedule of its own, the tenant gets one backup, not one a second.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let list = host
        .call("GET", &format!("/v1/tenants/{t}/backups"), Some(&a), None)
        .value();
    let count = list["backups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["kind"] == "scheduled")
        .count();
    assert_eq!(count, 1);
}

#[test]
fn backup_tooling_cli_exports_lists_and_restores_against_a_running_host() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("cli");
    let host = Host::start(&dir.path().join("data"), &[]);
    let (t, a) = populated_tenant(&host, "Cli Co");
    let url = format!("http://{}", host.addr);
    let token_file = |name: &str, token: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, token).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    };
    let admin_file = token_file("admin.token", &a);
    let operator_file = token_file("operator.token", &host.operator);
    let cli = |args: &[&str], token: &Path| {
        Command::new(BIN)
            .args(["backup"])
            .args(args)
            .args(["--url", &url, "--token-file"])
            .arg(token)
            .output()
            .unwrap()
    };

    // export → a file the verifier accepts, with no partial file left behind.
    let out_file = dir.path().join("cli-export.tar.zst");
    let out = cli(
        &["export", "--tenant", &t, "-o", out_file.to_str().unwrap()],
        &admin_file,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Piped, the output is machine-readable without asking.
    let exported: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(exported["bytes"].as_u64().unwrap() > 0, "{exported}");
    let verified = Command::new(BIN)
        .args(["backup", "verify", "--json"])
        .arg(&out_file)
        .output()
        .unwrap();
    assert!(verified.status.success());
    let report: Value = serde_json::from_slice(&verified.stdout).unwrap();
    assert_eq!(report["records"], 52);
    assert!(!out_file.with_extension("partial").exists());

    // The operator may not export: one clear line, non-zero, no file.
    let denied_file = dir.path().join("denied.tar.zst");
    let out = cli(
        &[
            "export",
            "--tenant",
            &t,
            "-o",
            denied_file.to_str().unwrap(),
        ],
        &operator_file,
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("403"), "{stderr}");
    assert!(!denied_file.exists() && !denied_file.with_extension("partial").exists());

    // list and restore, machine-readable.
    let backup = start_backup(&host, &t, &host.operator);
    let out = cli(&["list", "--tenant", &t, "--json"], &operator_file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["backups"][0]["id"], backup["id"]);
    let out = cli(
        &[
            "restore",
            "--tenant",
            &t,
            "--backup",
            backup["id"].as_str().unwrap(),
            "--name",
            "From CLI",
            "--json",
        ],
        &operator_file,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(restored.get("admin_token").is_none());
    assert_eq!(
        all_records(&host, restored["id"].as_str().unwrap(), &a, CRM),
        all_records(&host, &t, &a, CRM)
    );

    // A token file others can read is refused before anything is sent.
    let loose = dir.path().join("loose.token");
    std::fs::write(&loose, &a).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = cli(&["list", "--tenant", &t], &loose);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("0600"));
}
