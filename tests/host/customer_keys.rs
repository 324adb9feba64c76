//! Customer-managed keys against a real OpenBao (Transit): a tenant whose
//! data key its own key wraps serves, backs up and restores; its key
//! disabled closes it (423) within the check interval and makes its backups
//! unopenable on any host, and its scheduled backups stop; re-enabled, it
//! serves every record again; its key
//! service stopped, it serves through the grace and then closes; a tenant
//! without a key of its own is untouched throughout; the token is nowhere on
//! disk or in the log; a SIGKILL during attach leaves one wrapping.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::backups::{start_backup, wait_backup_done};
use crate::support::grants::mint;
use crate::support::openbao::OpenBao;
use crate::support::records::records_path;
use crate::support::{contains, eventually, files_under, Host, TempDir};

const CONFIG: &str = "[customer_keys]\ncheck_interval = \"1s\"\nunreachable_grace = \"4s\"\n\
                      allow_http_loopback = true\ntimeout = \"1s\"\n";

fn names(host: &Host, tenant: &str, token: &str) -> (u16, Vec<String>) {
    let r = host.call("GET", &records_path(tenant, "contacts"), Some(token), None);
    if r.status != 200 {
        return (r.status, Vec::new());
    }
    let mut names: Vec<String> = r.value()["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap_or_default().to_string())
        .collect();
    names.sort();
    (200, names)
}

fn attach(
    host: &Host,
    tenant: &str,
    token: &str,
    bao: &OpenBao,
    key: &str,
    secret: &str,
) -> crate::support::Response {
    host.json(
        "PUT",
        &format!("/v1/tenants/{tenant}/key"),
        Some(token),
        json!({"provider": "transit", "address": bao.address, "mount": "transit",
               "key": key, "token": secret}),
    )
}

fn shown(host: &Host, tenant: &str, token: &str) -> Value {
    host.call("GET", &format!("/v1/tenants/{tenant}"), Some(token), None)
        .value()["customer_key"]
        .clone()
}

#[test]
fn a_tenants_own_key_stands_between_the_host_and_its_data() {
    let dir = TempDir::new("customer-keys");
    let bao = OpenBao::start(dir.path());
    let secret = bao.key_and_token("tenant-a");
    let store = dir.path().join("store");
    let key_file = dir.path().join("backup.key");
    std::fs::write(&key_file, "ab".repeat(32)).unwrap();
    std::fs::set_permissions(
        &key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let config = dir.path().join("host.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--backup-interval",
        "0s",
        "--backup-store",
        store.to_str().unwrap(),
        "--backup-key-file",
        key_file.to_str().unwrap(),
    ];
    let data = dir.path().join("data");
    let host = Host::start(&data, &args);
    let (t, a) = host.create_tenant("Keyed", "crm");
    let (u, b) = host.create_tenant("Plain", "crm");
    let canary = "CANARY-customer-key-5c2e";
    for (tenant, token, name) in [(&t, &a, canary), (&u, &b, "other one")] {
        let r = host.json(
            "POST",
            &records_path(tenant, "contacts"),
            Some(token),
            json!({"name": name}),
        );
        assert_eq!(r.status, 201, "{}", r.text());
    }

    // Refused, and nothing changes: another role, a plain-http address
    // elsewhere, a token the key service refuses.
    let support = mint(&host, "support", "sam");
    // Only the tenant's admins: an operator gives a key only at creation.
    for token in [&support, &host.operator] {
        assert_eq!(
            attach(&host, &t, token, &bao, "tenant-a", &secret).status,
            403
        );
    }
    let r = host.json(
        "PUT",
        &format!("/v1/tenants/{t}/key"),
        Some(&a),
        json!({"provider": "transit", "address": "http://192.0.2.7:8200", "mount": "transit",
               "key": "tenant-a", "token": secret}),
    );
    assert_eq!(r.status, 422, "{}", r.text());
    let r = attach(&host, &t, &a, &bao, "tenant-a", "not-a-token");
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.error().contains("refused"), "{}", r.error());
    assert!(shown(&host, &t, &a).is_null());

    // An operator creates a tenant with its own key from the start (with
    // the tenant's token); a refused key makes nothing.
    let count = |host: &Host| {
        host.call("GET", "/v1/tenants", Some(&host.operator), None)
            .value()["tenants"]
            .as_array()
            .unwrap()
            .len()
    };
    let before = count(&host);
    let with_key = |token: &str| {
        host.json(
            "POST",
            "/v1/tenants",
            Some(&host.operator),
            json!({"name": "Born keyed", "region": "local", "schema": "crm",
                   "customer_key": {"provider": "transit", "address": bao.address,
                                    "mount": "transit", "key": "tenant-born", "token": token}}),
        )
    };
    let born_secret = bao.key_and_token("tenant-born");
    assert_eq!(with_key("not-a-token").status, 422);
    assert_eq!(count(&host), before, "nothing made");
    let born = with_key(&born_secret);
    assert_eq!(born.status, 201, "{}", born.text());
    let born_id = born.value()["id"].as_str().unwrap().to_string();
    assert_eq!(shown(&host, &born_id, &host.operator)["key"], "tenant-born");

    // Attached: the key named, never the token.
    let r = attach(&host, &t, &a, &bao, "tenant-a", &secret);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.value()["state"], "live", "{}", r.text());
    assert!(!r.text().contains(&secret));
    let key = shown(&host, &t, &a);
    assert_eq!(key["key"], "tenant-a");
    assert_eq!(key["address"], bao.address.as_str());
    assert!(key["last_successful_check"].is_string(), "{key}");
    // The same key again: a new token for it, tried first (a refused one
    // changes nothing); another key: detach first.
    let r = attach(&host, &t, &a, &bao, "tenant-a", "not-a-token");
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(attach(&host, &t, &a, &bao, "tenant-a", &secret).status, 200);
    let other = bao.key_and_token("tenant-other");
    assert_eq!(
        attach(&host, &t, &a, &bao, "tenant-other", &other).status,
        409
    );
    let copies = host.call("GET", &format!("/v1/tenants/{t}/copies"), Some(&a), None);
    assert_eq!(
        copies.value()["customer_key"]["state"],
        "live",
        "{}",
        copies.text()
    );

    // It serves, backs up and restores (the copy under the same key).
    let r = host.json(
        "POST",
        &records_path(&t, "contacts"),
        Some(&a),
        json!({"name": "after"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let want = names(&host, &t, &a);
    assert_eq!(want.1.len(), 2);
    let backup = start_backup(&host, &t, &a);
    assert_eq!(backup["state"], "done", "{backup}");
    let backup = backup["id"].as_str().unwrap().to_string();
    let r = host.json(
        "POST",
        &format!("/v1/tenants/{t}/backups/{backup}/restore"),
        Some(&a),
        json!({"name": "Keyed copy"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let copy = r.value()["id"].as_str().unwrap().to_string();
    assert_eq!(names(&host, &copy, &a), want);
    assert_eq!(shown(&host, &copy, &a)["key"], "tenant-a");
    // To a point in time too (the backup's own point: no segment needed).
    let r = host.json(
        "POST",
        &format!("/v1/tenants/{t}/restore"),
        Some(&a),
        json!({"name": "Keyed point", "sequence": 2}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let point = r.value()["id"].as_str().unwrap().to_string();
    assert_eq!(names(&host, &point, &a), want);
    assert_eq!(shown(&host, &point, &a)["key"], "tenant-a");

    // Disabled in OpenBao: closed within the check interval; the other
    // tenant untouched; its backups stop with the reason.
    let before_disable = bao.calls("decrypt", "tenant-a");
    assert!(
        before_disable >= 1,
        "each unwrap is a Transit call the tenant sees"
    );
    bao.disable("tenant-a");
    let closed = eventually(
        "the keyed tenant closed",
        || host.call("GET", &records_path(&t, "contacts"), Some(&a), None),
        |r| r.status == 423,
    );
    assert!(closed.error().contains("own key"), "{}", closed.error());
    assert_eq!(names(&host, &u, &b).0, 200);
    assert_eq!(shown(&host, &t, &a)["state"], "revoked");
    let r = host.call("POST", &format!("/v1/tenants/{t}/backups"), Some(&a), None);
    let job = wait_backup_done(&host, &t, &a, r.value()["id"].as_str().unwrap());
    assert_eq!(job["state"], "failed", "{job}");
    let log = host.call(
        "GET",
        &format!("/v1/tenants/{t}/access-log"),
        Some(&a),
        None,
    );
    assert!(log.text().contains("key.revoked"), "{}", log.text());

    // Its backup on a fresh host with the backup key and the store: refused,
    // with a clear message, and nothing made.
    let fresh = Host::start(&dir.path().join("fresh"), &args);
    let r = fresh.json(
        "POST",
        &format!("/v1/tenants/{t}/backups/{backup}/restore"),
        Some(&fresh.operator),
        json!({"name": "stolen"}),
    );
    assert_eq!(r.status, 423, "{}", r.text());
    assert!(r.error().contains("own key"), "{}", r.error());
    assert_eq!(
        fresh
            .call("GET", "/v1/tenants", Some(&fresh.operator), None)
            .value()["tenants"]
            .as_array()
            .unwrap()
            .len(),
        0
    );

    // Re-enabled: served again on the next request, every record intact.
    bao.enable("tenant-a");
    let back = eventually("served again", || names(&host, &t, &a), |n| n.0 == 200);
    assert_eq!(back, want);
    assert_eq!(shown(&host, &t, &a)["state"], "live");
    // And the fresh host restores it now (under the same key).
    let r = fresh.json(
        "POST",
        &format!("/v1/tenants/{t}/backups/{backup}/restore"),
        Some(&fresh.operator),
        json!({"name": "recovered"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    fresh.stop();

    // The key service stopped: served through the grace, then closed;
    // back, served again.
    bao.pause();
    assert_eq!(names(&host, &t, &a).0, 200, "served from the key it holds");
    let down = eventually(
        "closed after the grace",
        || host.call("GET", &records_path(&t, "contacts"), Some(&a), None),
        |r| r.status == 423,
    );
    assert!(down.error().contains("unreachable"), "{}", down.error());
    assert_eq!(names(&host, &u, &b).0, 200);
    bao.resume();
    assert_eq!(
        eventually(
            "served once it is back",
            || names(&host, &t, &a),
            |n| n.0 == 200
        ),
        want
    );

    // Killed during an attach, at several points (the first while the key
    // service holds the host's call): after the restart each tenant opens
    // under exactly one wrapping, and the key it shows is the one its data
    // needs (disabled: closed; under the master key alone: it serves).
    let mut host = host;
    let mut secrets = vec![secret.clone(), born_secret.clone()];
    for (i, delay) in [None, Some(2u64), Some(8), Some(15), Some(25)]
        .into_iter()
        .enumerate()
    {
        let name = format!("kill-{i}");
        let key_secret = bao.key_and_token(&name);
        secrets.push(key_secret.clone());
        let (k, kt) = host.create_tenant(&format!("Killed {i}"), "crm");
        let r = host.json(
            "POST",
            &records_path(&k, "contacts"),
            Some(&kt),
            json!({"name": "kept"}),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        let body = json!({"provider": "transit", "address": bao.address, "mount": "transit",
                          "key": name, "token": key_secret})
        .to_string();
        let (addr, path, token) = (host.addr, format!("/v1/tenants/{k}/key"), kt.clone());
        if delay.is_none() {
            bao.pause();
        }
        let asking = std::thread::spawn(move || {
            let client = coffer::client::Client::new(
                &format!("http://{addr}"),
                Some(token),
                Duration::from_secs(30),
            )
            .unwrap();
            let _ = client.send(
                "PUT",
                &path,
                &[("content-type", "application/json")],
                Some(body.as_bytes()),
            );
        });
        std::thread::sleep(Duration::from_millis(delay.unwrap_or(300)));
        host.kill();
        bao.resume();
        let _ = asking.join();
        host = Host::start(&data, &args);
        assert_eq!(names(&host, &k, &kt).1, vec!["kept".to_string()]);
        let attached = !shown(&host, &k, &kt).is_null();
        bao.disable(&name);
        let r = eventually(
            "the wrapping the tenant shows is the one it needs",
            || host.call("GET", &records_path(&k, "contacts"), Some(&kt), None),
            |r| r.status == if attached { 423 } else { 200 },
        );
        assert_eq!(r.status, if attached { 423 } else { 200 });
        bao.enable(&name);
        eprintln!("killed during an attach (after {delay:?} ms): came back attached = {attached}");
    }

    // A restart: the keyed tenant's data key on disk needs its key service
    // (disabled: the cold open is refused), and with backups scheduled every
    // 2 s its scheduled backups do not run while the other tenant's do.
    bao.disable("tenant-a");
    host.stop();
    let scheduled_args: Vec<&str> = args
        .iter()
        .map(|a| if *a == "0s" { "2s" } else { *a })
        .collect();
    let restarted_at = coffer::ids::rfc3339(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    );
    let host = Host::start(&data, &scheduled_args);
    let r = host.call("GET", &records_path(&t, "contacts"), Some(&a), None);
    assert_eq!(r.status, 423, "{}", r.text());
    let scheduled_since = |tenant: &str, token: &str| -> Vec<Value> {
        host.call(
            "GET",
            &format!("/v1/tenants/{tenant}/backups"),
            Some(token),
            None,
        )
        .value()["backups"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| {
                b["kind"] == "scheduled"
                    && b["created_at"].as_str().unwrap() >= restarted_at.as_str()
            })
            .cloned()
            .collect()
    };
    eventually(
        "the other tenant's scheduled backups",
        || scheduled_since(&u, &b),
        |v| v.iter().filter(|b| b["state"] == "done").count() >= 2,
    );
    assert_eq!(
        scheduled_since(&t, &a),
        Vec::<Value>::new(),
        "none for the closed tenant, not even a failed one"
    );
    bao.enable("tenant-a");
    assert_eq!(
        eventually(
            "opens once the key is live",
            || names(&host, &t, &a),
            |n| n.0 == 200
        ),
        want
    );

    // A data-key rotation: the new data key is wrapped by the tenant's key
    // too (disabled: closed again).
    let r = host.call(
        "POST",
        &format!("/v1/tenants/{t}/keys/rotate"),
        Some(&a),
        None,
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let job = r.value()["id"].as_str().unwrap().to_string();
    let done = eventually(
        "the rotation ended",
        || {
            host.call(
                "GET",
                &format!("/v1/tenants/{t}/keys/rotations/{job}"),
                Some(&a),
                None,
            )
            .value()
        },
        |j| j["state"] == "done" || j["state"] == "failed",
    );
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(names(&host, &t, &a), want);
    bao.disable("tenant-a");
    eventually(
        "closed under the rotated key",
        || host.call("GET", &records_path(&t, "contacts"), Some(&a), None),
        |r| r.status == 423,
    );
    bao.enable("tenant-a");
    assert_eq!(
        eventually("served again", || names(&host, &t, &a), |n| n.0 == 200),
        want
    );

    // Detaching needs the tenant's admin and a live key.
    assert_eq!(
        host.call(
            "DELETE",
            &format!("/v1/tenants/{t}/key"),
            Some(&host.operator),
            None
        )
        .status,
        403
    );
    let r = host.call("DELETE", &format!("/v1/tenants/{t}/key"), Some(&a), None);
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(shown(&host, &t, &a).is_null());
    bao.disable("tenant-a");
    assert_eq!(names(&host, &t, &a), want, "the master key alone again");

    // The token and the canary: nowhere on disk in plaintext, nor in the log.
    let log_text = host.log_text();
    host.stop();
    for token in &secrets {
        assert!(
            !contains(&log_text, token.as_bytes()),
            "a token in the host's log"
        );
    }
    for file in files_under(&data).into_iter().chain(files_under(&store)) {
        let bytes = std::fs::read(&file).unwrap();
        for needle in secrets
            .iter()
            .map(|s| s.as_bytes())
            .chain([canary.as_bytes()])
        {
            assert!(
                !contains(&bytes, needle),
                "{} holds a secret",
                file.display()
            );
        }
    }
}
