//! Acknowledged writes survive SIGKILL; many tenants through a small pool of
//! open databases; what a start opens to ship the change logs.

use serde_json::json;

use crate::operations::{metrics_address, scrape, series};
use crate::pitr::{change_log, contact as post_contact, wait_shipped, REGIONS_DIRS};
use crate::support::records::*;
use crate::support::{eventually, Host, TempDir};

#[test]
fn acknowledged_writes_survive_sigkill_and_restart_keeps_state() {
    let dir = TempDir::new("durable");
    let data = dir.path().join("data");
    let host = Host::start(&data, &[]);
    let (tenant, admin) = host.create_tenant("durable", "crm");
    let (gone, gone_admin) = host.create_tenant("deactivated", "crm");
    assert_eq!(
        host.call(
            "DELETE",
            &format!("/v1/tenants/{gone}"),
            Some(&gone_admin),
            None
        )
        .status,
        202
    );
    let support = host.json(
        "POST",
        "/v1/tokens",
        Some(&host.operator),
        json!({"role": "support", "name": "s"}),
    );
    let support = support.value()["token"].as_str().unwrap().to_string();

    // Concurrent writers; the host is killed right after the last 201.
    let addr = host.addr;
    let path = records_path(&tenant, "contacts");
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (path, admin) = (path.clone(), admin.clone());
            std::thread::spawn(move || {
                (0..10)
                    .map(|i| {
                        let body = serde_json::to_vec(&contact(
                            &format!("w{w}-{i}"),
                            &format!("w{w}-{i}@x"),
                        ))
                        .unwrap();
                        let r = crate::support::http(
                            addr,
                            "POST",
                            &path,
                            Some(&admin),
                            Some(&body),
                            &[],
                        );
                        assert_eq!(r.status, 201, "{}", r.text());
                        r.value()["id"].as_str().unwrap().to_string()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let acknowledged: Vec<String> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    host.kill();

    let host = Host::start(&data, &[]);
    for id in &acknowledged {
        let r = host.call("GET", &format!("{path}/{id}"), Some(&admin), None);
        assert_eq!(
            r.status,
            200,
            "acknowledged record {id} lost after SIGKILL: {}",
            r.text()
        );
    }
    assert_eq!(record_count(&host, &tenant, &admin, "contacts"), 80);
    // Tenants, tokens and states survived too.
    let r = host.call(
        "GET",
        &format!("/v1/tenants/{gone}"),
        Some(&host.operator),
        None,
    );
    assert_eq!(r.value()["state"], "deactivated");
    assert!(r.value()["destroy_after"].is_string());
    let r = host.call("GET", &format!("/v1/tenants/{tenant}"), Some(&admin), None);
    assert_eq!(r.value()["state"], "active");
    assert_eq!(
        host.call("GET", "/v1/tenants", Some(&support), None).status,
        403,
        "support token still known and still not an operator"
    );
    assert_eq!(
        host.call("GET", "/v1/tenants", Some(&host.operator), None)
            .status,
        200
    );
}

#[test]
fn many_tenants_with_a_small_pool_of_open_databases() {
    let dir = TempDir::new("pool");
    let host = Host::start(&dir.path().join("data"), &["--open-tenants-max", "2"]);
    let tenants: Vec<(String, String)> = (0..6)
        .map(|i| host.create_tenant(&format!("p{i}"), "helpdesk"))
        .collect();
    for round in 0..3 {
        for (i, (t, a)) in tenants.iter().enumerate() {
            let body = json!({"name": format!("c{round}"), "email": format!("{i}-{round}@x")});
            let r = host.json("POST", &records_path(t, "customers"), Some(a), body);
            assert_eq!(r.status, 201, "{}", r.text());
        }
    }
    for (i, (t, a)) in tenants.iter().enumerate() {
        assert_eq!(record_count(&host, t, a, "customers"), 3);
        let r = host.call(
            "GET",
            &format!("{}?email={i}-1%40x", records_path(t, "customers")),
            Some(a),
            None,
        );
        assert_eq!(r.value()["records"][0]["name"], "c1");
    }
}

/// A start after a clean stop opens no tenant to look at its change log:
/// that stop shipped every log and nothing changed since, so only the tenant
/// written after the start is opened. A start after SIGKILL cannot know
/// what was left, and looks at every tenant's log.
#[test]
fn a_start_after_a_clean_stop_opens_only_the_tenants_written_since() {
    let dir = TempDir::new("log-restart");
    let data = dir.path().join("host");
    let toml = "[host]\nmetrics_listen = \"127.0.0.1:0\"\n";
    let host = Host::start_configured(&data, toml);
    let tenants: Vec<_> = (0..5)
        .map(|i| host.create_tenant(&format!("Quiet {i}"), "crm"))
        .collect();
    for (tenant, admin) in &tenants {
        post_contact(&host, tenant, admin, "before-the-stop");
    }
    // The stop ships those writes (none had waited a whole segment).
    host.stop();

    let cold_opens = |host: &Host| {
        series(
            &scrape(metrics_address(host)),
            "coffer_tenant_open_duration_seconds_count",
        )
        .unwrap_or(0.0)
    };
    let host = Host::start_configured(&data, toml);
    let (written, admin) = &tenants[0];
    post_contact(&host, written, admin, "after-the-start");
    // Shipped: the shipper has had its rounds since the start.
    wait_shipped(&host, written, admin, REGIONS_DIRS);
    assert_eq!(cold_opens(&host), 1.0, "only the tenant written since");
    for (tenant, admin) in &tenants[1..] {
        let log = change_log(&host, tenant, admin);
        for region in REGIONS_DIRS {
            assert_eq!(
                log["newest_safe_write"][*region]["sequence"], 1,
                "the stop shipped {tenant}'s write: {log}"
            );
        }
    }

    host.kill();
    let host = Host::start_configured(&data, toml);
    eventually(
        "every tenant's log looked at after the kill",
        || cold_opens(&host),
        |opens| *opens >= tenants.len() as f64,
    );
}
