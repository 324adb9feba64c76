//! Who reaches what: every endpoint against every kind of caller.

use serde_json::json;

use crate::support::records::*;
use crate::support::{Host, TempDir};

/// (method, path, body, the callers that succeed and their status)
type MatrixRow<'a> = (&'a str, String, Option<&'a [u8]>, Vec<(&'a str, u16)>);

/// Every endpoint × every kind of caller. `None` in the table means "any 4xx
/// except the ones listed as success"; the point is that no cross-tenant or
/// staff access to records ever succeeds.
#[test]
fn isolation_matrix() {
    let dir = TempDir::new("matrix");
    let host = Host::start(&dir.path().join("data"), &[]);
    let (mine, admin) = host.create_tenant("mine", "crm");
    let (theirs, their_admin) = host.create_tenant("theirs", "crm");
    let mint = |role: &str| {
        let r = host.json(
            "POST",
            "/v1/tokens",
            Some(&host.operator),
            json!({"role": role, "name": role}),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        r.value()["token"].as_str().unwrap().to_string()
    };
    let support = mint("support");
    let agent = mint("backup-agent");
    let record = {
        let r = host.json(
            "POST",
            &records_path(&mine, "contacts"),
            Some(&admin),
            contact("Mine", "mine@example.com"),
        );
        r.value()["id"].as_str().unwrap().to_string()
    };
    let records = records_path(&mine, "contacts");
    let one = format!("{records}/{record}");
    let new_contact = serde_json::to_vec(&contact("New", "new@example.com")).unwrap();
    let replaced = serde_json::to_vec(&contact("Mine", "mine@example.com")).unwrap();
    let tenant_body =
        serde_json::to_vec(&json!({"name": "x", "region": "local", "schema": "crm"})).unwrap();

    // (name, token) — the callers.
    let callers: Vec<(&str, Option<&str>)> = vec![
        ("none", None),
        (
            "wrong",
            Some("coffer_0000000000000000000000000000000000000000000000000000000000000000"),
        ),
        ("other-admin", Some(&their_admin)),
        ("operator", Some(&host.operator)),
        ("support", Some(&support)),
        ("backup-agent", Some(&agent)),
        ("admin", Some(&admin)),
    ];
    // (method, path, body, callers that succeed with their status)
    let reactivate = format!("/v1/tenants/{mine}/reactivate");
    let endpoints: Vec<MatrixRow> = vec![
        ("GET", "/v1/tenants".into(), None, vec![("operator", 200)]),
        (
            "POST",
            "/v1/tenants".into(),
            Some(&tenant_body),
            vec![("operator", 201)],
        ),
        (
            "GET",
            format!("/v1/tenants/{mine}"),
            None,
            vec![("operator", 200), ("admin", 200)],
        ),
        (
            "POST",
            records.clone(),
            Some(&new_contact),
            vec![("admin", 201)],
        ),
        ("GET", records.clone(), None, vec![("admin", 200)]),
        (
            "GET",
            format!("{records}?email=mine%40example.com"),
            None,
            vec![("admin", 200)],
        ),
        ("GET", one.clone(), None, vec![("admin", 200)]),
        ("PUT", one.clone(), Some(&replaced), vec![("admin", 200)]),
        // Reactivating an active tenant is a conflict for those allowed to try.
        (
            "POST",
            reactivate,
            None,
            vec![("operator", 409), ("admin", 409)],
        ),
        (
            "GET",
            format!("/v1/tenants/{mine}/copies"),
            None,
            vec![("operator", 200), ("admin", 200)],
        ),
        (
            "GET",
            "/v1/regions".into(),
            None,
            vec![("operator", 200), ("backup-agent", 200)],
        ),
        (
            "GET",
            "/v1/regions/local/tenants".into(),
            None,
            vec![("operator", 200), ("backup-agent", 200)],
        ),
        (
            "GET",
            format!("/v1/tenants/{mine}/access-log"),
            None,
            vec![("admin", 200)],
        ),
        // Finishing a move that never began is a conflict for those allowed to try.
        (
            "POST",
            format!("/v1/tenants/{mine}/move/complete"),
            None,
            vec![("operator", 409), ("admin", 409)],
        ),
    ];
    for (method, path, body, allowed) in &endpoints {
        for (caller, token) in &callers {
            let r = host.call(method, path, *token, *body);
            let expected = allowed.iter().find(|(c, _)| c == caller).map(|(_, s)| *s);
            match (expected, *caller) {
                (Some(status), _) => assert_eq!(
                    r.status,
                    status,
                    "{method} {path} as {caller}: {}",
                    r.text()
                ),
                (None, "none" | "wrong") => {
                    assert_eq!(r.status, 401, "{method} {path} as {caller}")
                }
                (None, _) => assert_eq!(r.status, 403, "{method} {path} as {caller}: {}", r.text()),
            }
            if r.status >= 400 {
                assert!(
                    r.value()["error"].is_string(),
                    "{method} {path}: error body {}",
                    r.text()
                );
            }
        }
    }
    // The other tenant's admin reaches its own tenant, never ours, by any path.
    assert_eq!(
        host.call(
            "GET",
            &format!("/v1/tenants/{theirs}"),
            Some(&their_admin),
            None
        )
        .status,
        200
    );
    for (method, path) in [
        ("DELETE", one.clone()),
        ("DELETE", format!("/v1/tenants/{mine}")),
        ("POST", format!("/v1/tenants/{mine}/purge")),
    ] {
        for token in [&their_admin, &support, &agent] {
            let r = host.call(method, &path, Some(token), None);
            assert_eq!(r.status, 403, "{method} {path}: {}", r.text());
        }
    }
    // Operators cannot delete records or purge through a tenant's admin door either.
    assert_eq!(
        host.call("DELETE", &one, Some(&host.operator), None).status,
        403
    );
    // Token minting side doors: operators never mint tenant-admin tokens.
    let r = host.json(
        "POST",
        "/v1/tokens",
        Some(&host.operator),
        json!({"role": "tenant-admin", "name": "x"}),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    for token in [&support, &agent] {
        let r = host.json(
            "POST",
            "/v1/tokens",
            Some(token),
            json!({"role": "operator", "name": "x"}),
        );
        assert_eq!(r.status, 403);
    }
    // A tenant admin mints an admin token for its own tenant, and it works only there.
    let r = host.json(
        "POST",
        "/v1/tokens",
        Some(&admin),
        json!({"role": "tenant-admin", "name": "second"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let second = r.value()["token"].as_str().unwrap().to_string();
    assert_eq!(host.call("GET", &one, Some(&second), None).status, 200);
    assert_eq!(
        host.call("GET", &format!("/v1/tenants/{theirs}"), Some(&second), None)
            .status,
        403
    );
    // Nothing written by the refused calls: our tenant holds the first record and the admin's one.
    assert_eq!(record_count(&host, &mine, &admin, "contacts"), 2);
    assert_eq!(record_count(&host, &theirs, &their_admin, "contacts"), 0);
    // Deleting works for the admin, last.
    assert_eq!(host.call("DELETE", &one, Some(&admin), None).status, 204);
    assert_eq!(host.call("GET", &one, Some(&admin), None).status, 404);
}
