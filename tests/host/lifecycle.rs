//! A tenant's life: deactivate, reactivate, expire and purge.

use crate::support::records::*;
use crate::support::{contains, files_under, Host, TempDir};

#[test]
fn lifecycle_deactivate_reactivate_expire_and_purge() {
    let dir = TempDir::new("lifecycle");
    let data = dir.path().join("data");
    let host = Host::start(
        &data,
        &["--grace-period", "2s", "--sweep-interval", "200ms"],
    );
    let (tenant, admin) = host.create_tenant("lifecycle", "crm");
    let path = records_path(&tenant, "contacts");
    let r = host.json(
        "POST",
        &path,
        Some(&admin),
        contact("Kept", "kept@example.com"),
    );
    let id = r.value()["id"].as_str().unwrap().to_string();
    let one = format!("{path}/{id}");

    let r = host.call(
        "DELETE",
        &format!("/v1/tenants/{tenant}"),
        Some(&admin),
        None,
    );
    assert_eq!(r.status, 202);
    assert!(r.value()["destroy_after"].as_str().unwrap().ends_with('Z'));
    let r = host.call("GET", &one, Some(&admin), None);
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.error().contains("deactivated"));
    assert_eq!(
        host.json("POST", &path, Some(&admin), contact("No", "no@x"))
            .status,
        409
    );
    assert_eq!(
        host.call(
            "DELETE",
            &format!("/v1/tenants/{tenant}"),
            Some(&admin),
            None
        )
        .status,
        409
    );

    let r = host.call(
        "POST",
        &format!("/v1/tenants/{tenant}/reactivate"),
        Some(&admin),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.value()["state"], "active");
    let r = host.call("GET", &one, Some(&admin), None);
    assert_eq!(r.status, 200);
    assert_eq!(r.value()["name"], "Kept");

    // Grace period runs out: the sweeper destroys the tenant and its directory.
    let tenant_dir = data.join("tenants").join(&tenant);
    assert!(tenant_dir.is_dir());
    assert_eq!(
        host.call(
            "DELETE",
            &format!("/v1/tenants/{tenant}"),
            Some(&admin),
            None
        )
        .status,
        202
    );
    let mut state = String::new();
    for _ in 0..100 {
        let r = host.call(
            "GET",
            &format!("/v1/tenants/{tenant}"),
            Some(&host.operator),
            None,
        );
        state = r.value()["state"].as_str().unwrap().to_string();
        // The key is shredded (state "destroyed") first, the directory moved
        // away right after: wait for both.
        if state == "destroyed" && !tenant_dir.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(state, "destroyed");
    assert!(!tenant_dir.exists(), "tenant directory still there");
    // Its tokens died with it; reactivation is impossible.
    assert_eq!(host.call("GET", &one, Some(&admin), None).status, 401);
    let r = host.call(
        "POST",
        &format!("/v1/tenants/{tenant}/reactivate"),
        Some(&host.operator),
        None,
    );
    assert_eq!(r.status, 409);

    // Purge: destroyed at once, whatever the state.
    let (other, other_admin) = host.create_tenant("purged", "helpdesk");
    let r = host.call(
        "POST",
        &format!("/v1/tenants/{other}/purge"),
        Some(&host.operator),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.value()["state"], "destroyed");
    assert!(!data.join("tenants").join(&other).exists());
    assert_eq!(
        host.call(
            "GET",
            &format!("/v1/tenants/{other}"),
            Some(&other_admin),
            None
        )
        .status,
        401
    );
    assert_eq!(
        host.call(
            "POST",
            &format!("/v1/tenants/{other}/purge"),
            Some(&host.operator),
            None
        )
        .status,
        410
    );

    // Destroyed stays destroyed across a restart, and the wrapped key is gone.
    host.stop();
    let host = Host::start(&data, &[]);
    let r = host.call(
        "GET",
        &format!("/v1/tenants/{other}"),
        Some(&host.operator),
        None,
    );
    assert_eq!(r.value()["state"], "destroyed");
    let catalog: Vec<u8> = files_under(&data.join("catalog"))
        .iter()
        .flat_map(|f| std::fs::read(f).unwrap())
        .collect();
    assert!(contains(&catalog, other.as_bytes()));
}
