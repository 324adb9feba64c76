//! What an operator runs the host with: the metrics endpoint, JSON logs, the
//! service manager's readiness protocol.

use serde_json::json;

use crate::support::backups::start_backup;
use crate::support::records::records_path;
use crate::support::{eventually, http, Host, TempDir};

/// The address `--metrics-listen 127.0.0.1:0` bound, from the host's log.
pub(crate) fn metrics_address(host: &Host) -> std::net::SocketAddr {
    let line = eventually(
        "the host logs its metrics address",
        || {
            String::from_utf8_lossy(&host.log_text())
                .lines()
                .find(|l| l.contains("metrics serving"))
                .map(str::to_string)
        },
        Option::is_some,
    )
    .unwrap();
    let at = line.split("address=").nth(1).expect("address field");
    at.split_whitespace().next().unwrap().parse().unwrap()
}

/// The host's metrics as one scrape.
pub(crate) fn scrape(metrics: std::net::SocketAddr) -> String {
    let r = http(metrics, "GET", "/metrics", None, None, &[]);
    assert_eq!(r.status, 200);
    r.text()
}

/// The value of the series `name` (with its labels exactly as written).
pub(crate) fn series(scrape: &str, name: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn a_scrape_after_a_workload_has_its_series_and_no_tenant_id_token_or_value() {
    let dir = TempDir::new("metrics");
    let host = Host::start(
        &dir.path().join("data"),
        &["--metrics-listen", "127.0.0.1:0", "--backup-interval", "0s"],
    );
    let metrics = metrics_address(&host);
    let (t, admin) = host.create_tenant("metered", "crm");
    let canary = "CANARY-metrics-5e1f";
    let email = "canary-5e1f@metrics.test";
    for i in 0..20 {
        let r = host.json(
            "POST",
            &records_path(&t, "contacts"),
            Some(&admin),
            json!({"name": format!("{canary} {i}"), "email": format!("{i}{email}")}),
        );
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let r = host.call(
        "GET",
        &format!("{}?email=0{email}", records_path(&t, "contacts")),
        Some(&admin),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        host.call("GET", "/v1/tenants", Some("not-a-token"), None)
            .status,
        401
    );
    assert_eq!(host.call("GET", "/v1/nothing-here", None, None).status, 404);
    start_backup(&host, &t, &admin);

    let scrape = eventually(
        "the finished backup is counted",
        || {
            let r = http(metrics, "GET", "/metrics", None, None, &[]);
            assert_eq!(r.status, 200);
            assert!(
                r.headers
                    .iter()
                    .any(|(k, v)| k.eq_ignore_ascii_case("content-type")
                        && v.starts_with("text/plain; version=0.0.4")),
                "{:?}",
                r.headers
            );
            String::from_utf8(r.body).unwrap()
        },
        |s| series(s, "coffer_jobs_total{kind=\"backup\",outcome=\"ok\"}") == Some(1.0),
    );
    // What the workload did, by kind.
    assert_eq!(
        series(
            &scrape,
            "coffer_http_requests_total{endpoint=\"CreateRecord\",status=\"201\"}"
        ),
        Some(20.0),
        "{scrape}"
    );
    assert_eq!(
        series(
            &scrape,
            "coffer_http_requests_total{endpoint=\"ListRecords\",status=\"200\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        series(
            &scrape,
            "coffer_http_requests_total{endpoint=\"ListTenants\",status=\"401\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        series(
            &scrape,
            "coffer_http_requests_total{endpoint=\"unknown\",status=\"404\"}"
        ),
        Some(1.0)
    );
    assert!(
        series(
            &scrape,
            "coffer_http_request_duration_seconds_count{endpoint=\"CreateRecord\"}"
        ) == Some(20.0)
    );
    // Every acknowledged write went through a durable flush; the audit log
    // synced the tenant's creation and the backup at least.
    assert!(
        series(&scrape, "coffer_durable_flush_writes_sum").unwrap() >= 20.0,
        "{scrape}"
    );
    assert!(series(&scrape, "coffer_durable_flush_duration_seconds_count").unwrap() >= 1.0);
    assert!(
        series(&scrape, "coffer_audit_sync_entries_sum").unwrap() >= 2.0,
        "{scrape}"
    );
    assert!(
        series(&scrape, "coffer_tenant_databases_open").unwrap() >= 1.0,
        "{scrape}"
    );
    assert!(
        series(
            &scrape,
            "coffer_job_duration_seconds_count{kind=\"backup\"}"
        ) == Some(1.0)
    );
    for name in [
        "coffer_tenant_open_duration_seconds_count",
        "coffer_tenant_open_failures_total",
    ] {
        assert!(scrape.contains(name), "{name} missing:\n{scrape}");
    }
    // Each of the host's backup regions, with its lag.
    let regions = host
        .call("GET", "/v1/regions", Some(&host.operator), None)
        .value();
    let regions = regions["regions"].as_array().unwrap();
    assert!(!regions.is_empty());
    for region in regions {
        let name = region["region"].as_str().unwrap();
        for metric in [
            "coffer_replication_objects_behind",
            "coffer_replication_lag_seconds",
        ] {
            let labelled = format!("{metric}{{region=\"{name}\"}}");
            assert!(
                series(&scrape, &labelled).is_some(),
                "{labelled} missing:\n{scrape}"
            );
        }
    }
    // Nothing of the tenant: not its id, its token, its values or the query.
    for secret in [
        t.as_str(),
        admin.as_str(),
        canary,
        email,
        host.operator.as_str(),
    ] {
        assert!(!scrape.contains(secret), "{secret:?} is in the scrape");
    }
    // Only /metrics is served there, and the API does not serve it.
    assert_eq!(
        http(metrics, "GET", "/v1/tenants", None, None, &[]).status,
        404
    );
    assert_eq!(host.call("GET", "/metrics", None, None).status, 404);
}

#[test]
fn json_logs_are_one_object_per_line_without_values() {
    let dir = TempDir::new("json-logs");
    let host = Host::try_start_env(
        &dir.path().join("data"),
        &["--backup-interval", "0s"],
        &[("COFFER_LOG_FORMAT", "json")],
    )
    .unwrap();
    let (t, admin) = host.create_tenant("logged", "crm");
    let canary = "CANARY-jsonlog-77aa";
    let r = host.json(
        "POST",
        &records_path(&t, "contacts"),
        Some(&admin),
        json!({"name": canary}),
    );
    assert_eq!(r.status, 201);
    assert_eq!(
        host.call("GET", "/v1/tenants", Some("wrong"), None).status,
        401
    );
    let log = host.log.clone();
    host.stop();
    let text = std::fs::read_to_string(&log).unwrap();
    let mut requests = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let entry: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(entry["timestamp"].is_string(), "{line}");
        assert!(entry["level"].is_string(), "{line}");
        assert!(entry["fields"]["message"].is_string(), "{line}");
        if entry["fields"]["message"] == "request done" {
            assert!(entry["span"]["path"].is_string(), "{line}");
            assert!(entry["fields"]["status"].is_u64(), "{line}");
            requests += 1;
        }
    }
    assert!(requests >= 3, "{text}");
    assert!(!text.contains(canary) && !text.contains(&admin));
}

#[test]
fn systemd_hears_ready_after_the_port_is_bound_and_stopping_on_sigterm() {
    use std::os::unix::net::UnixDatagram;
    let dir = TempDir::new("notify");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let host = Host::try_start_env(
        &dir.path().join("data"),
        &["--backup-interval", "0s"],
        &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())],
    )
    .unwrap();
    let mut buffer = [0u8; 512];
    let mut heard = Vec::new();
    while !heard.iter().any(|m: &String| m.contains("READY=1")) {
        let n = socket
            .recv(&mut buffer)
            .expect("a notification before the timeout");
        heard.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
    }
    // Ready means serving.
    assert_eq!(host.call("GET", "/healthz", None, None).status, 200);
    host.stop();
    let n = socket.recv(&mut buffer).expect("STOPPING=1 after SIGTERM");
    let stopping = String::from_utf8_lossy(&buffer[..n]).into_owned();
    assert!(
        stopping.contains("STOPPING=1"),
        "{stopping} after {heard:?}"
    );
}

/// A test CA and a server certificate it signed for 127.0.0.1 and
/// localhost, made with openssl: (ca.pem, cert.pem, key.pem with mode 0600).
fn certificates(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use std::process::Command;
    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    crate::support::run_ok(
        Command::new("openssl")
            .args(["req", "-x509", "-days", "2", "-subj", "/CN=coffer test CA"])
            .args(ec)
            .args(["-keyout", &path("ca.key"), "-out", &path("ca.pem")]),
    );
    crate::support::run_ok(
        Command::new("openssl")
            .args(["req", "-subj", "/CN=127.0.0.1"])
            .args(ec)
            .args(["-keyout", &path("key.pem"), "-out", &path("server.csr")]),
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    crate::support::run_ok(Command::new("openssl").args([
        "x509",
        "-req",
        "-days",
        "2",
        "-in",
        &path("server.csr"),
        "-CA",
        &path("ca.pem"),
        "-CAkey",
        &path("ca.key"),
        "-CAcreateserial",
        "-extfile",
        &path("server.ext"),
        "-out",
        &path("cert.pem"),
    ]));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("key.pem"), std::fs::Permissions::from_mode(0o600)).unwrap();
    (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    )
}

#[test]
fn the_api_over_tls_with_the_cli_and_no_plain_http_to_another_machine() {
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;
    let dir = TempDir::new("tls");
    let (ca, cert, key) = certificates(dir.path());
    let tls_args = [
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];

    // A key file others can read is refused, with one clear line.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let refused = Host::try_start(&dir.path().join("data"), &tls_args)
        .err()
        .expect("refused");
    assert!(refused.contains("0600"), "{refused}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    let host = Host::start(
        &dir.path().join("data"),
        &[&tls_args[..], &["--backup-interval", "0s"]].concat(),
    );
    let url = format!("https://127.0.0.1:{}", host.addr.port());
    let token_file = dir.path().join("operator.token");
    std::fs::write(&token_file, &host.operator).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();

    // The client library over https, trusting the test's certificate.
    let client = coffer::client::Client::with_transport(
        &url,
        Some(host.operator.clone()),
        std::time::Duration::from_secs(30),
        &coffer::client::Transport {
            ca_file: Some(ca.clone()),
            insecure_http: false,
        },
    )
    .unwrap();
    let created = client
        .json(
            "POST",
            "/v1/tenants",
            Some(&json!({"name": "over-tls", "schema": "crm", "region": "local"})),
        )
        .unwrap();
    let tenant = created["id"].as_str().unwrap().to_string();

    // The CLI: https with --ca-file works end to end.
    let cli = |extra: &[&str]| {
        Command::new(crate::support::BIN)
            .args([
                "backup",
                "list",
                "--tenant",
                &tenant,
                "--json",
                "--token-file",
            ])
            .arg(&token_file)
            .args(extra)
            .output()
            .unwrap()
    };
    let listed = cli(&["--url", &url, "--ca-file", ca.to_str().unwrap()]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert!(listed["backups"].is_array(), "{listed}");
    // Without trusting the certificate, the handshake is refused.
    let untrusted = cli(&["--url", &url]);
    assert!(!untrusted.status.success());
    let why = String::from_utf8_lossy(&untrusted.stderr);
    assert!(
        why.to_lowercase().contains("certificate") || why.contains("issuer"),
        "{why}"
    );
    // Plain http to the TLS port gets nothing useful.
    let plain = cli(&["--url", &format!("http://127.0.0.1:{}", host.addr.port())]);
    assert!(!plain.status.success());
    // Plain http to another machine is refused before any connection is made.
    let elsewhere = cli(&["--url", "http://192.0.2.10:7070"]);
    assert!(!elsewhere.status.success());
    let why = String::from_utf8_lossy(&elsewhere.stderr);
    assert!(
        why.contains("in the clear") && why.contains("--insecure-http"),
        "{why}"
    );
    assert_eq!(why.trim().lines().count(), 1, "one clear line: {why}");
}

/// Restore drills, from each region in turn: a backup damaged in one region
/// is reported failed from there (and passes from the other), and no drill
/// leaves a scratch tenant or its files behind.
#[test]
fn drills_restore_from_each_region_in_turn_and_report_a_damaged_copy() {
    use crate::support::backups::wait_verified;
    use crate::support::records::populated_tenant;
    let dir = TempDir::new("drills");
    let stores = dir.path().join("stores");
    let config = dir.path().join("host.toml");
    std::fs::write(
        &config,
        format!(
            "[regions.a]\nstore = \"file://{0}/a\"\n\n[regions.b]\nstore = \"file://{0}/b\"\n\n[backup]\nregions = [\"a\", \"b\"]\nretry_base = \"100ms\"\nretry_cap = \"1s\"\n\n[drills]\nevery = \"1s\"\ncheck_interval = \"200ms\"\n",
            stores.display()
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let host = Host::start(
        &data,
        &[
            "--config",
            config.to_str().unwrap(),
            "--backup-interval",
            "0s",
        ],
    );
    let (t, admin) = populated_tenant(&host, "drilled");
    let records: u64 =
        crate::support::records::all_records(&host, &t, &admin, crate::support::records::CRM)
            .iter()
            .map(|(_, records)| records.len() as u64)
            .sum();
    let backup = start_backup(&host, &t, &admin)["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_verified(&host, &t, &admin, &backup, &["a", "b"]);

    let drills = |host: &Host| {
        let r = host.call("GET", "/v1/drills", Some(&host.operator), None);
        assert_eq!(r.status, 200, "{}", r.text());
        r.value()["drills"].as_array().cloned().unwrap_or_default()
    };
    let passed_from = |region: &str| {
        let drill = eventually(
            &format!("a passed drill from {region}"),
            || drills(&host),
            |d| {
                d.iter().any(|d| {
                    d["tenant"] == t.as_str() && d["region"] == region && d["outcome"] == "passed"
                })
            },
        );
        drill
            .into_iter()
            .find(|d| d["tenant"] == t.as_str())
            .unwrap()
    };
    for region in ["a", "b"] {
        let drill = passed_from(region);
        assert_eq!(drill["backup_id"], backup.as_str(), "{drill}");
        assert_eq!(drill["records"], records, "{drill}");
        assert!(drill["duration_ms"].is_u64(), "{drill}");
    }

    // One byte of the archive changes in region b's store.
    let archive = stores
        .join("b")
        .join("tenants")
        .join(&t)
        .join(&backup)
        .join("archive.cfrdr");
    let mut bytes = std::fs::read(&archive).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&archive, &bytes).unwrap();
    let failed = eventually(
        "a failed drill from b",
        || drills(&host),
        |d| {
            d.iter().any(|d| {
                d["tenant"] == t.as_str() && d["region"] == "b" && d["outcome"] == "failed"
            })
        },
    );
    let failed = failed
        .into_iter()
        .find(|d| d["tenant"] == t.as_str())
        .unwrap();
    assert!(
        failed["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{failed}"
    );
    assert_eq!(failed["records"], 0);
    // The tenant's own view shows it, and region a still restores.
    let copies = eventually(
        "the last drill in /copies",
        || {
            host.call(
                "GET",
                &format!("/v1/tenants/{t}/copies"),
                Some(&admin),
                None,
            )
            .value()
        },
        |c| c["last_drill"]["outcome"].is_string(),
    );
    assert!(copies["last_drill"]["region"].is_string(), "{copies}");
    passed_from("a");
    // The failure is in the audit log, with its outcome.
    let audit_text: String = crate::support::files_under(&data.join("audit"))
        .iter()
        .map(|f| String::from_utf8_lossy(&std::fs::read(f).unwrap()).into_owned())
        .collect();
    assert!(
        audit_text.contains("backup.drilled") && audit_text.contains("failed"),
        "no drill in the audit log"
    );

    // Nothing left behind: one tenant in the catalog, nothing staged, one
    // tenant directory.
    let tenants = host
        .call("GET", "/v1/tenants", Some(&host.operator), None)
        .value();
    assert_eq!(tenants["tenants"].as_array().unwrap().len(), 1, "{tenants}");
    let staged: Vec<_> = std::fs::read_dir(data.join("staging"))
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(staged.is_empty(), "{staged:?}");
    let dirs: Vec<_> = std::fs::read_dir(data.join("tenants"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(dirs, vec![std::ffi::OsString::from(&t)]);
}
