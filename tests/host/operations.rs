//! What an operator runs the host with: the metrics endpoint, JSON logs, the
//! service manager's readiness protocol.

use serde_json::json;

use crate::support::backups::start_backup;
use crate::support::records::records_path;
use crate::support::{eventually, http, Host, TempDir};

/// The address `--metrics-listen 127.0.0.1:0` bound, from the host's log.
fn metrics_address(host: &Host) -> std::net::SocketAddr {
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

/// The value of the series `name` (with its labels exactly as written).
fn series(scrape: &str, name: &str) -> Option<f64> {
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
