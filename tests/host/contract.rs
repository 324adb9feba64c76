//! The API against its description: schemathesis (PyPI; ops/test.sh installs
//! it in a virtual environment) generates requests from `ops/openapi.json`
//! and runs them at a real host as each role — operator, tenant admin,
//! support with an active grant, backup agent — checking for server errors,
//! undocumented status codes, content types and response bodies that do not
//! match their schema. Bounded in time per role.

use std::path::PathBuf;
use std::process::Command;

use serde_json::json;

use crate::support::grants::{decide, mint, records, request_id};
use crate::support::{add_staff_offline, Host, TempDir};

const DESCRIPTION: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/ops/openapi.json");

/// Seconds of generated requests per role.
const SECONDS_PER_ROLE: &str = "25";

fn schemathesis() -> PathBuf {
    let path = std::env::var_os("COFFER_SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/contract-venv/bin/schemathesis")
        });
    assert!(
        path.exists(),
        "schemathesis is not at {} (ops/test.sh installs it; or set COFFER_SCHEMATHESIS)",
        path.display()
    );
    path
}

/// Runs schemathesis as one role; returns the number of cases it ran.
fn run_as(host: &Host, dir: &TempDir, role: &str, headers: &[String], ids: &[(&str, &str)]) -> u64 {
    // Known ids for the path parameters, so that requests reach the handlers
    // and not only the 404 of an unknown id.
    let mut config = String::from("[parameters]\n");
    for (name, value) in ids {
        config += &format!("\"path.{name}\" = \"{value}\"\n");
    }
    let config_file = dir.path().join(format!("schemathesis-{role}.toml"));
    std::fs::write(&config_file, config).unwrap();
    let mut command = Command::new(schemathesis());
    command
        .arg("--config-file")
        .arg(&config_file)
        .args(["run", DESCRIPTION, "--url"])
        .arg(format!("http://{}", host.addr))
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-time",
            SECONDS_PER_ROLE,
            // One worker: CPython 3.11's ast.parse is not safe to run from
            // two threads at once (hypothesis calls it while generating).
            "--workers",
            "1",
            "--max-examples",
            "25",
            "--request-timeout",
            "20",
            "--warnings",
            "off",
            "--no-color",
            // A zstd archive body is not something it can generate; imports
            // are exercised in tests/host/archives.rs.
            "--exclude-operation-id",
            "importTenant",
        ])
        .current_dir(dir.path());
    for header in headers {
        command.args(["-H", header]);
    }
    let out = command.output().expect("run schemathesis");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "schemathesis as {role} found problems:\n{text}"
    );
    // The summary's "N generated, N passed".
    let cases = text
        .lines()
        .find(|l| l.contains(" generated"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("schemathesis as {role} reported no case count:\n{text}"));
    assert!(cases > 100, "as {role} only {cases} cases ran:\n{text}");
    eprintln!("schemathesis as {role}: {cases} cases, every check passed");
    cases
}

#[test]
fn schemathesis_finds_nothing_for_any_role() {
    let dir = TempDir::new("contract");
    let support = add_staff_offline(&dir.path().join("data"), "support", "alice");
    let host = Host::start(&dir.path().join("data"), &["--backup-interval", "0s"]);
    let (t, admin) = host.create_tenant("acme", "crm");
    let r = host.json(
        "POST",
        &records(&t, "contacts"),
        Some(&admin),
        json!({"name": "Ada"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let record = r.value()["id"].as_str().unwrap().to_string();
    let r = host.call(
        "POST",
        &format!("/v1/tenants/{t}/backups"),
        Some(&admin),
        None,
    );
    assert!(r.status == 202 || r.status == 201, "{}", r.text());
    let backup = r.value()["id"].as_str().unwrap().to_string();
    let grant = request_id(&host, &support, &t, "read-write", json!({}));
    assert_eq!(decide(&host, &admin, &grant, "approve").status, 200);
    let agent = mint(&host, "backup-agent", "nightly");
    let bearer = |token: &str| format!("Authorization: Bearer {token}");
    let tenant_ids = [
        ("id", t.as_str()),
        ("collection", "contacts"),
        ("record", record.as_str()),
        ("backup", backup.as_str()),
    ];

    let mut total = 0;
    total += run_as(&host, &dir, "tenant-admin", &[bearer(&admin)], &tenant_ids);
    total += run_as(
        &host,
        &dir,
        "support",
        &[bearer(&support), format!("X-Coffer-Grant: {grant}")],
        &tenant_ids,
    );
    total += run_as(&host, &dir, "backup-agent", &[bearer(&agent)], &tenant_ids);
    // The operator last: its run may deactivate or purge the tenant.
    total += run_as(
        &host,
        &dir,
        "operator",
        &[bearer(&host.operator)],
        &tenant_ids,
    );
    assert!(total > 400);

    // The host is still up and answering after all of it.
    assert_eq!(host.call("GET", "/healthz", None, None).status, 200);
}
