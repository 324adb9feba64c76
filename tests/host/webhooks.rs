//! Signed webhooks, checked by a receiver that verifies every delivery with
//! the `standardwebhooks` Python package: events delivered with the audit
//! sequence, a receiver down and back, a SIGKILL with events queued, a
//! receiver that never answers slowing nobody, the SSRF guard, a tampered
//! body refused at the receiver, no record in any payload.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::grants::{decide, mint, request_id};
use crate::support::records::records_path;
use crate::support::{eventually, Host, TempDir};

struct Receiver {
    child: Child,
    url: String,
    log: PathBuf,
    secret: PathBuf,
}

impl Receiver {
    fn start(dir: &Path) -> Receiver {
        let python =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/contract-venv/bin/python");
        assert!(
            python.exists(),
            "no {} (ops/test.sh makes it, with standardwebhooks)",
            python.display()
        );
        let (log, secret, port) = (
            dir.join("received.jsonl"),
            dir.join("secret"),
            dir.join("port"),
        );
        let child = Command::new(python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/support/webhook_receiver.py"
            ))
            .args([&secret, &log, &port])
            .stdout(Stdio::null())
            .spawn()
            .expect("start the receiver");
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            if let Ok(text) = std::fs::read_to_string(&port) {
                break text;
            }
            assert!(Instant::now() < deadline, "the receiver did not start");
            std::thread::sleep(Duration::from_millis(50));
        };
        Receiver {
            child,
            url: format!("http://127.0.0.1:{}/hook", port.trim()),
            log,
            secret,
        }
    }

    fn received(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn set(&self, state: &str, on: bool) {
        let flag = self.log.with_extension(format!("jsonl.{state}"));
        if on {
            std::fs::write(flag, "").unwrap();
        } else {
            let _ = std::fs::remove_file(flag);
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const CONFIG: &str =
    "[webhooks]\nallow_http_loopback = true\nmax_backoff = \"1s\"\ntimeout = \"2s\"\n";

fn register(host: &Host, tenant: &str, admin: &str, receiver: &Receiver) -> String {
    let r = host.json(
        "POST",
        &format!("/v1/tenants/{tenant}/webhooks"),
        Some(admin),
        json!({"url": receiver.url}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let secret = r.value()["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"));
    std::fs::write(&receiver.secret, &secret).unwrap();
    r.value()["id"].as_str().unwrap().to_string()
}

/// The verified deliveries of `event`.
fn verified(receiver: &Receiver, event: &str) -> Vec<Value> {
    receiver
        .received()
        .into_iter()
        .filter(|d| d["verified"] == true && d["payload"]["type"] == event)
        .collect()
}

#[test]
fn events_arrive_signed_through_an_outage_and_a_sigkill() {
    let dir = TempDir::new("webhooks");
    let data = dir.path().join("data");
    let host = Host::start_configured(&data, CONFIG);
    let receiver = Receiver::start(dir.path());
    let (t, a) = host.create_tenant("Hooked", "crm");
    let canary = "CANARY-webhook-77b1";
    let r = host.json(
        "POST",
        &records_path(&t, "contacts"),
        Some(&a),
        json!({"name": canary}),
    );
    assert_eq!(r.status, 201, "{}", r.text());

    // The guard: private, link-local and plain-http-elsewhere receivers are refused.
    for url in [
        "http://10.0.0.7/hook",
        "https://169.254.169.254/x",
        "https://192.168.1.1/x",
        "http://8.8.8.8/x",
    ] {
        let r = host.json(
            "POST",
            &format!("/v1/tenants/{t}/webhooks"),
            Some(&a),
            json!({"url": url}),
        );
        assert_eq!(r.status, 422, "{url}: {}", r.text());
    }
    let support = mint(&host, "support", "sam");
    let r = host.json(
        "POST",
        &format!("/v1/tenants/{t}/webhooks"),
        Some(&support),
        json!({"url": receiver.url}),
    );
    assert_eq!(r.status, 403, "only the tenant's admin: {}", r.text());
    let hook = register(&host, &t, &a, &receiver);

    // A request and its approval, an emergency: delivered, signed, with the audit sequence.
    let grant = request_id(&host, &support, &t, "read", json!({}));
    assert_eq!(decide(&host, &a, &grant, "approve").status, 200);
    let emergency = request_id(&host, &support, &t, "read", json!({"emergency": true}));
    for event in ["access.requested", "access.approved", "access.emergency"] {
        let got = eventually(
            &format!("{event} delivered"),
            || verified(&receiver, event),
            |v| !v.is_empty(),
        );
        let seq = got[0]["payload"]["data"]["audit_seq"].as_u64().unwrap();
        assert_eq!(got[0]["id"], format!("msg_{seq:012}"));
        assert_eq!(got[0]["payload"]["data"]["tenant"], t.as_str());
    }
    assert!(
        verified(&receiver, "access.emergency")[0]["payload"]["data"]["grant"]
            == emergency.as_str()
    );
    // An admin recovery and its cancel.
    let r = host.json(
        "POST",
        &format!("/v1/tenants/{t}/admin-recovery"),
        Some(&host.operator),
        json!({"reason": "lost every token", "ticket": "SUP-7"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let recovery = r.value()["id"].as_str().unwrap().to_string();
    let r = host.call(
        "POST",
        &format!("/v1/admin-recoveries/{recovery}/cancel"),
        Some(&a),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    for event in ["admin_recovery.requested", "admin_recovery.cancelled"] {
        eventually(
            &format!("{event} delivered"),
            || verified(&receiver, event),
            |v| !v.is_empty(),
        );
    }

    // The receiver is down a while: the events wait and arrive, ids unchanged.
    receiver.set("down", true);
    let r = host.call("DELETE", &format!("/v1/tenants/{t}"), Some(&a), None);
    assert_eq!(r.status, 202, "{}", r.text());
    let deliveries = |host: &Host| {
        host.call(
            "GET",
            &format!("/v1/tenants/{t}/webhooks/{hook}/deliveries"),
            Some(&a),
            None,
        )
        .value()["deliveries"]
            .clone()
    };
    let failing = eventually(
        "a failed attempt in the delivery log",
        || deliveries(&host),
        |d| {
            d.as_array()
                .unwrap()
                .iter()
                .any(|d| d["event"] == "removal.requested" && d["attempts"].as_u64() >= Some(1))
        },
    );
    let pending = failing
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["event"] == "removal.requested")
        .unwrap()
        .clone();
    assert_eq!(pending["state"], "pending", "{pending}");
    assert!(
        pending["last_error"].as_str().unwrap().contains("503"),
        "{pending}"
    );
    // Killed with the event still queued; it is delivered after the restart.
    let r = host.call(
        "POST",
        &format!("/v1/tenants/{t}/reactivate"),
        Some(&a),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    std::thread::sleep(Duration::from_millis(500));
    host.kill();
    receiver.set("down", false);
    let host = Host::start_configured(&data, CONFIG);
    for event in ["removal.requested", "removal.cancelled"] {
        eventually(
            &format!("{event} delivered after the restart"),
            || verified(&receiver, event),
            |v| !v.is_empty(),
        );
    }
    let got = verified(&receiver, "removal.requested");
    assert_eq!(
        got[0]["id"], pending["id"],
        "the same webhook-id on every attempt"
    );
    let log = deliveries(&host);
    let done = log
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == pending["id"])
        .unwrap();
    assert_eq!(done["state"], "delivered", "{done}");
    assert!(done["attempts"].as_u64().unwrap() >= 2, "{done}");

    // A body altered on the way fails verification at the receiver.
    let original = &receiver.received()[0];
    let tampered = original["body"]
        .as_str()
        .unwrap()
        .replace(t.as_str(), &"0".repeat(32));
    let mut request = Command::new("curl");
    request.args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "POST",
        &receiver.url,
        "--data-binary",
        &tampered,
    ]);
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        request.args([
            "-H",
            &format!("{name}: {}", original["headers"][name].as_str().unwrap()),
        ]);
    }
    let answer = request.output().unwrap();
    assert_eq!(String::from_utf8_lossy(&answer.stdout), "400");
    assert_eq!(receiver.received().last().unwrap()["verified"], false);

    // No record content in any payload.
    for delivery in receiver.received() {
        assert!(!delivery["body"].as_str().unwrap().contains(canary));
    }
}

#[test]
fn a_receiver_that_never_answers_slows_no_other_tenant() {
    let dir = TempDir::new("webhooks-hang");
    let data = dir.path().join("data");
    let host = Host::start_configured(&data, CONFIG);
    let stuck = Receiver::start(&dir.path().join("stuck").tap_mkdir());
    let healthy = Receiver::start(&dir.path().join("healthy").tap_mkdir());
    stuck.set("hang", true);
    let (t1, a1) = host.create_tenant("Stuck", "crm");
    let (t2, a2) = host.create_tenant("Healthy", "crm");
    register(&host, &t1, &a1, &stuck);
    register(&host, &t2, &a2, &healthy);
    // Many events for the stuck receiver's tenant.
    for i in 0..20 {
        let r = host.json(
            "POST",
            "/v1/tokens",
            Some(&a1),
            json!({"role": "tenant-admin", "name": format!("t{i}")}),
        );
        assert_eq!(r.status, 201, "{}", r.text());
    }
    // The other tenant's requests and deliveries go on.
    for i in 0..5 {
        let r = host.json(
            "POST",
            "/v1/tokens",
            Some(&a2),
            json!({"role": "tenant-admin", "name": format!("h{i}")}),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        let r = host.json(
            "POST",
            &records_path(&t2, "contacts"),
            Some(&a2),
            json!({"name": format!("c{i}")}),
        );
        assert_eq!(r.status, 201, "{}", r.text());
    }
    eventually(
        "the healthy receiver got its events",
        || verified(&healthy, "token.minted").len(),
        |n| *n >= 5,
    );
    stuck.set("hang", false);
}

trait MkDir {
    fn tap_mkdir(self) -> Self;
}

impl MkDir for PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

/// The host's own endpoint (operators): every tenant's events and the host's
/// (a region falling behind and catching up); a failed backup and a grant
/// whose time ran out reach the tenant's endpoint too.
#[test]
fn operators_hear_lagging_regions_failed_backups_and_expired_grants() {
    let dir = TempDir::new("host-hooks");
    let data = dir.path().join("data");
    let host = Host::start_configured(
        &data,
        &format!(
            "{CONFIG}region_lag_alert = \"1s\"\n[access]\npending_expiry = \"3s\"\n\
             [backup]\nretry_base = \"200ms\"\nretry_cap = \"500ms\"\n"
        ),
    );
    let (ours, theirs) = (dir.path().join("host"), dir.path().join("tenant"));
    std::fs::create_dir_all(&ours).unwrap();
    std::fs::create_dir_all(&theirs).unwrap();
    let (operators, tenants) = (Receiver::start(&ours), Receiver::start(&theirs));
    let (t, a) = host.create_tenant("Watched", "crm");
    register(&host, &t, &a, &tenants);

    // Only operators manage the host's endpoints.
    let support = mint(&host, "support", "sam");
    for token in [&a, &support] {
        let r = host.json(
            "POST",
            "/v1/webhooks",
            Some(token),
            json!({"url": operators.url}),
        );
        assert_eq!(r.status, 403, "{}", r.text());
    }
    let r = host.json(
        "POST",
        "/v1/webhooks",
        Some(&host.operator),
        json!({"url": operators.url}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    std::fs::write(&operators.secret, r.value()["secret"].as_str().unwrap()).unwrap();
    let hook = r.value()["id"].as_str().unwrap().to_string();
    let listed = host.call("GET", "/v1/webhooks", Some(&host.operator), None);
    assert_eq!(listed.value()["webhooks"][0]["id"], hook.as_str());
    assert!(
        !listed.text().contains("whsec_"),
        "the secret is shown once"
    );
    let tenants_own = host.call("GET", &format!("/v1/tenants/{t}/webhooks"), Some(&a), None);
    assert_eq!(tenants_own.value()["webhooks"].as_array().unwrap().len(), 1);

    // A request nobody decides runs out (3 s here): both hear, once.
    let pending = request_id(&host, &support, &t, "read", json!({}));
    for receiver in [&operators, &tenants] {
        let got = eventually(
            "the expiry delivered",
            || verified(receiver, "access.expired"),
            |v| !v.is_empty(),
        );
        assert_eq!(got[0]["payload"]["data"]["grant"], pending.as_str());
        assert_eq!(got[0]["payload"]["data"]["details"]["was"], "pending");
    }
    let log = host.call(
        "GET",
        &format!("/v1/tenants/{t}/access-log"),
        Some(&a),
        None,
    );
    assert!(log.text().contains("grant.expired"), "{}", log.text());

    // A backup that cannot be written: the tenant and the operators hear.
    let spool = data.join("backups");
    let kept = dir.path().join("spool-kept");
    std::fs::rename(&spool, &kept).unwrap();
    std::fs::write(&spool, "not a directory").unwrap();
    let r = host.call("POST", &format!("/v1/tenants/{t}/backups"), Some(&a), None);
    let failed = r.value()["id"].as_str().unwrap().to_string();
    for receiver in [&operators, &tenants] {
        let got = eventually(
            "backup.failed delivered",
            || verified(receiver, "backup.failed"),
            |v| !v.is_empty(),
        );
        assert_eq!(got[0]["payload"]["data"]["tenant"], t.as_str());
        assert_eq!(
            got[0]["payload"]["data"]["details"]["backup"],
            failed.as_str()
        );
    }
    let job = host.call(
        "GET",
        &format!("/v1/tenants/{t}/backups/{failed}"),
        Some(&a),
        None,
    );
    assert_eq!(job.value()["state"], "failed", "{}", job.text());
    std::fs::remove_file(&spool).unwrap();
    std::fs::rename(&kept, &spool).unwrap();

    // One backup region cannot be written: reported lagging, then back.
    let regions = host.call("GET", "/v1/regions", Some(&host.operator), None);
    let last = regions.value()["regions"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()["region"]
        .as_str()
        .unwrap()
        .to_string();
    let store = data.join("regions").join(&last);
    let aside = dir.path().join("region-kept");
    std::fs::rename(&store, &aside).unwrap();
    std::fs::write(&store, "not a directory").unwrap();
    let r = host.call("POST", &format!("/v1/tenants/{t}/backups"), Some(&a), None);
    assert!(r.status < 300, "{}", r.text());
    let lagging = eventually(
        "region.lagging delivered",
        || verified(&operators, "region.lagging"),
        |v| !v.is_empty(),
    );
    assert_eq!(
        lagging[0]["payload"]["data"]["details"]["region"],
        last.as_str()
    );
    assert!(lagging[0]["payload"]["data"]["tenant"].is_null());
    std::fs::remove_file(&store).unwrap();
    std::fs::rename(&aside, &store).unwrap();
    let recovered = eventually(
        "region.recovered delivered",
        || verified(&operators, "region.recovered"),
        |v| !v.is_empty(),
    );
    assert_eq!(
        recovered[0]["payload"]["data"]["details"]["region"],
        last.as_str()
    );
    assert_eq!(verified(&operators, "region.lagging").len(), 1, "told once");
    // The host's events are not the tenant's.
    assert!(verified(&tenants, "region.lagging").is_empty());
    // The host's endpoint heard the tenant's events too, each with its sequence.
    assert_eq!(verified(&tenants, "access.expired").len(), 1, "told once");
    let requested = verified(&operators, "access.requested");
    assert_eq!(requested.len(), 1);
    assert!(requested[0]["payload"]["data"]["audit_seq"].is_u64());
    let r = host.call(
        "GET",
        &format!("/v1/webhooks/{hook}/deliveries"),
        Some(&host.operator),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let log = r.value()["deliveries"].as_array().unwrap().clone();
    for event in [
        "access.requested",
        "access.expired",
        "backup.failed",
        "region.lagging",
        "region.recovered",
    ] {
        assert!(
            log.iter()
                .any(|d| d["event"] == event && d["state"] == "delivered"),
            "{event} in the host's delivery log: {log:?}"
        );
    }
    let r = host.call(
        "DELETE",
        &format!("/v1/webhooks/{hook}"),
        Some(&host.operator),
        None,
    );
    assert_eq!(r.status, 204, "{}", r.text());
    host.stop();
}
