//! Good neighbours: two hundred exports whose clients never read leave every
//! other tenant served, deactivating or purging a tenant stops the backups
//! and restores running for it, and a host above its memory high mark lets
//! go of a tenant its export or backup read whole.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::limits::{large_tenant_offline, proof_entries};
use crate::operations::{metrics_address, scrape, series};
use crate::support::backups::start_backup;
use crate::support::records::records_path;
use crate::support::{eventually, Host, Response, TempDir};

/// An export request on a connection whose receive buffer is 4 KiB and from
/// which the client reads only the status line: the host's writer soon has
/// nowhere to put the archive.
fn stalled_export(host: &Host, tenant: &str, token: &str) -> (socket2::Socket, Vec<u8>) {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&host.addr.into()).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut stream: TcpStream = socket.try_clone().unwrap().into();
    write!(
        stream,
        "GET /v1/tenants/{tenant}/export HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut head = vec![0u8; 12];
    stream.read_exact(&mut head).unwrap();
    (socket, head)
}

/// A call that must be answered within `bound` (it runs on a thread of its
/// own; the test fails instead of hanging).
fn answered_within(bound: Duration, call: impl FnOnce() -> Response + Send + 'static) -> Response {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(call());
    });
    rx.recv_timeout(bound)
        .unwrap_or_else(|_| panic!("no answer within {bound:?}"))
}

#[test]
fn two_hundred_stalled_exports_leave_other_tenants_and_operators_served() {
    let dir = TempDir::new("stalled-200");
    let data = dir.path().join("data");
    let (big, big_admin) = large_tenant_offline(&data, 16 * 1024);
    // Limits raised above the blocking pool's 128 threads, so that only the
    // host's design (long jobs on threads of their own) keeps it serving.
    let host = Host::start_configured(
        &data,
        "[limits]\nlong_jobs_per_tenant = 250\nlong_jobs_total = 250\nstall_timeout = \"300s\"\n",
    );
    let (small, small_admin) = host.create_tenant("small", "crm");
    let stalled: Vec<_> = (0..200)
        .map(|_| stalled_export(&host, &big, &big_admin))
        .collect();
    for (_, head) in &stalled {
        assert_eq!(
            &head[..],
            b"HTTP/1.1 200",
            "{}",
            String::from_utf8_lossy(head)
        );
    }
    // Every one of them is stuck: its writer waits on a full socket.
    let bound = Duration::from_secs(10);
    let records = format!("/v1/tenants/{small}/collections/contacts/records");
    for i in 0..20 {
        let (addr, path, token) = (host.addr, records.clone(), small_admin.clone());
        let created = answered_within(bound, move || {
            let body = json!({"name": format!("neighbour {i}")}).to_string();
            crate::support::http(
                addr,
                "POST",
                &path,
                Some(&token),
                Some(body.as_bytes()),
                &[],
            )
        });
        assert_eq!(created.status, 201, "{}", created.text());
        let id = created.value()["id"].as_str().unwrap().to_string();
        let (path, token) = (format!("{records}/{id}"), small_admin.clone());
        let read = answered_within(bound, move || {
            crate::support::http(addr, "GET", &path, Some(&token), None, &[])
        });
        assert_eq!(read.status, 200, "{}", read.text());
        assert_eq!(read.value()["name"], format!("neighbour {i}"));
    }
    let (addr, operator) = (host.addr, host.operator.clone());
    let listed = answered_within(bound, move || {
        crate::support::http(addr, "GET", "/v1/tenants", Some(&operator), None, &[])
    });
    assert_eq!(listed.status, 200, "{}", listed.text());
    let ids: Vec<Value> = listed.value()["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].clone())
        .collect();
    assert!(
        ids.contains(&json!(big)) && ids.contains(&json!(small)),
        "{ids:?}"
    );
    // The stalled exports were still running all along (none finished).
    let log = String::from_utf8_lossy(&host.log_text()).into_owned();
    assert_eq!(
        log.matches("export streamed").count(),
        0,
        "an export finished"
    );
    // Clients that go away end their exports and free their slots.
    drop(stalled);
    let mut ended = 0;
    for _ in 0..300 {
        ended = String::from_utf8_lossy(&host.log_text())
            .matches("export stopped")
            .count();
        if ended >= 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = String::from_utf8_lossy(&host.log_text()).into_owned();
    assert_eq!(ended, 200, "{}", &log[log.len().saturating_sub(3000)..]);
    let health = host.call("GET", "/healthz", None, None).value();
    assert_eq!(health["status"], "ok", "{health}");
}

fn backup_state(host: &Host, tenant: &str, backup: &str) -> Value {
    host.call(
        "GET",
        &format!("/v1/tenants/{tenant}/backups/{backup}"),
        Some(&host.operator),
        None,
    )
    .value()
}

fn wait_for_state(host: &Host, tenant: &str, backup: &str, wanted: &[&str]) -> Value {
    let mut job = Value::Null;
    for _ in 0..600 {
        job = backup_state(host, tenant, backup);
        if wanted.iter().any(|w| job["state"] == *w) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    job
}

#[test]
fn deactivating_or_purging_a_tenant_stops_its_running_backup_and_restore() {
    let dir = TempDir::new("stop-jobs");
    let data = dir.path().join("data");
    // ~3.5 MiB of sealed archive at 1 MiB/s: each job runs for seconds.
    let (big, big_admin) = large_tenant_offline(&data, 4 * 1024);
    let host = Host::start_configured(
        &data,
        "[limits]\njob_max_mb_per_s = 1\n\n[audit]\ncheckpoint_interval = \"200ms\"\n",
    );
    let start = |host: &Host| {
        let r = host.call(
            "POST",
            &format!("/v1/tenants/{big}/backups"),
            Some(&host.operator),
            None,
        );
        assert_eq!(r.status, 202, "{}", r.text());
        r.value()["id"].as_str().unwrap().to_string()
    };
    // A backup running when its tenant is deactivated stops, marked failed.
    let first = start(&host);
    assert_eq!(
        wait_for_state(&host, &big, &first, &["running"])["state"],
        "running"
    );
    let r = host.call(
        "DELETE",
        &format!("/v1/tenants/{big}"),
        Some(&host.operator),
        None,
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let job = wait_for_state(&host, &big, &first, &["done", "failed"]);
    assert_eq!(job["state"], "failed", "{job}");
    assert!(
        job["error"]
            .as_str()
            .unwrap_or("")
            .contains("deactivated during the backup"),
        "{job}"
    );
    // Once reactivated, a backup runs to its end.
    let r = host.call(
        "POST",
        &format!("/v1/tenants/{big}/reactivate"),
        Some(&host.operator),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let second = start(&host);
    assert_eq!(
        wait_for_state(&host, &big, &second, &["done", "failed"])["state"],
        "done"
    );

    // A restore from the tenant's backup, running when the tenant is
    // purged, stops and leaves no tenant behind.
    let tenants_before = host
        .call("GET", "/v1/tenants", Some(&host.operator), None)
        .value()["tenants"]
        .as_array()
        .unwrap()
        .len();
    let restoring = {
        let (addr, path, token) = (
            host.addr,
            format!("/v1/tenants/{big}/backups/{second}/restore"),
            big_admin.clone(),
        );
        std::thread::spawn(move || {
            let body = json!({"name": "copy"}).to_string();
            crate::support::http(
                addr,
                "POST",
                &path,
                Some(&token),
                Some(body.as_bytes()),
                &[],
            )
        })
    };
    // The restore's own entry is durable (and in the tenant's proof) before
    // it reads a byte.
    let restore_entry = |entries: &[Value]| entries.iter().any(|e| e["kind"] == "backup.restored");
    let entries = proof_entries(&host, &big, &big_admin, restore_entry);
    assert!(restore_entry(&entries), "the restore never started");
    let r = host.call(
        "POST",
        &format!("/v1/tenants/{big}/purge"),
        Some(&host.operator),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let restored = restoring.join().unwrap();
    assert_eq!(restored.status, 409, "{}", restored.text());
    assert!(
        restored.error().contains("destroyed during the restore")
            && restored.error().contains("nothing was restored"),
        "{}",
        restored.error()
    );
    let tenants_after = host
        .call("GET", "/v1/tenants", Some(&host.operator), None)
        .value()["tenants"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(
        tenants_after, tenants_before,
        "a restored copy outlived the purge"
    );
}

/// With its resident memory above `[tenants] memory_high_mb` (1 MiB here:
/// always), a host closes a tenant's database once an export or a DR backup
/// has read it whole, and the next request opens it again with every record;
/// a host with the default mark (a quarter of the machine) keeps it open.
#[test]
fn above_its_memory_high_mark_a_host_closes_a_tenant_its_jobs_read_whole() {
    let dir = TempDir::new("memory-high");
    for (label, tenants_table, closes) in [
        ("high", "[tenants]\nmemory_high_mb = 1\n", true),
        ("default", "", false),
    ] {
        let data = dir.path().join(label);
        let host = Host::start_configured(
            &data,
            &format!("[host]\nmetrics_listen = \"127.0.0.1:0\"\n{tenants_table}"),
        );
        let metrics = metrics_address(&host);
        let (t, admin) = host.create_tenant("read whole", "crm");
        for i in 0..40 {
            let r = host.json(
                "POST",
                &records_path(&t, "contacts"),
                Some(&admin),
                json!({"name": format!("contact {i}"), "email": format!("{i}@whole.test")}),
            );
            assert_eq!(r.status, 201, "{}", r.text());
        }
        let open = |scrape: &str| series(scrape, "coffer_tenant_databases_open");
        let released = |scrape: &str| series(scrape, "coffer_tenant_databases_released_total");
        let cold_opens = |scrape: &str| {
            series(scrape, "coffer_tenant_open_duration_seconds_count").unwrap_or(0.0)
        };
        assert_eq!(open(&scrape(metrics)), Some(1.0), "{label}");

        let export = host.call(
            "GET",
            &format!("/v1/tenants/{t}/export"),
            Some(&admin),
            None,
        );
        assert_eq!(export.status, 200, "{label}: {}", export.error());
        assert!(!export.body.is_empty());
        let after_export = if closes {
            // The gauge drops as the database closes; the counter follows
            // once the heap is trimmed.
            eventually(
                "the exported tenant's database is closed and counted",
                || scrape(metrics),
                |s| open(s) == Some(0.0) && released(s) == Some(1.0),
            )
        } else {
            scrape(metrics)
        };
        assert_eq!(
            released(&after_export),
            Some(if closes { 1.0 } else { 0.0 }),
            "{label}"
        );
        assert_eq!(
            open(&after_export),
            Some(if closes { 0.0 } else { 1.0 }),
            "{label}"
        );

        // The next request finds every record, opening the tenant again
        // only where it was closed.
        let r = host.call("GET", &records_path(&t, "contacts"), Some(&admin), None);
        assert_eq!(r.status, 200, "{label}: {}", r.text());
        assert_eq!(
            r.value()["records"].as_array().unwrap().len(),
            40,
            "{label}"
        );
        let reopened = scrape(metrics);
        assert_eq!(
            cold_opens(&reopened) - cold_opens(&after_export),
            if closes { 1.0 } else { 0.0 },
            "{label}"
        );

        let backup = start_backup(&host, &t, &admin);
        assert_eq!(backup["state"], "done", "{label}: {backup}");
        let after_backup = scrape(metrics);
        assert_eq!(
            released(&after_backup),
            Some(if closes { 2.0 } else { 0.0 }),
            "{label}"
        );
        assert_eq!(
            open(&after_backup),
            Some(if closes { 0.0 } else { 1.0 }),
            "{label}"
        );
        if closes {
            let log = String::from_utf8_lossy(&host.log_text()).into_owned();
            assert!(
                log.contains("memory above its high mark after a job read a tenant whole"),
                "{log}"
            );
        }
        host.stop();
    }
}
