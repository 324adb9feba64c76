//! Break-glass grants in the data path, revocation, and admin recovery by two operators.

use crate::support::grants::*;
use crate::support::{add_staff_offline, contains, files_under, TempDir};
use serde_json::{json, Value};

#[test]
fn grant_cases_each_refused_or_allowed_in_the_data_path() {
    let dir = TempDir::new("grants");
    // Staff whose identities the disk vouches for: no operator of this host
    // created alice, so both operators count for her emergency.
    let support = add_staff_offline(&dir.path().join("data"), "support", "alice");
    let op2 = add_staff_offline(&dir.path().join("data"), "operator", "second operator");
    let (clock, host) = host_with_clock(&dir);
    let (t, admin) = host.create_tenant("acme", "crm");
    let (other, other_admin) = host.create_tenant("other", "crm");
    let canary = "CANARY-grant-9d1e";
    let r = host.json(
        "POST",
        &records(&t, "contacts"),
        Some(&admin),
        json!({"name": canary}),
    );
    assert_eq!(r.status, 201);
    let contact = r.value()["id"].as_str().unwrap().to_string();
    host.json(
        "POST",
        &records(&t, "deals"),
        Some(&admin),
        json!({"title": "deal"}),
    );
    let support2 = mint(&host, "support", "bob");
    let new_contact = serde_json::to_vec(&json!({"name": "written by support"})).unwrap();

    // Grants in every state, each used by its requester.
    let pending = request_id(&host, &support, &t, "read", json!({}));
    let denied = request_id(&host, &support, &t, "read", json!({}));
    assert_eq!(
        decide(&host, &admin, &denied, "deny").value()["state"],
        "closed"
    );
    let revoked = request_id(&host, &support, &t, "read", json!({}));
    assert_eq!(
        decide(&host, &admin, &revoked, "approve").value()["state"],
        "active"
    );
    assert_eq!(
        decide(&host, &host.operator, &revoked, "revoke").value()["state"],
        "closed"
    );
    let read = request_id(
        &host,
        &support,
        &t,
        "read",
        json!({"collections": ["contacts"]}),
    );
    assert_eq!(decide(&host, &admin, &read, "approve").status, 200);
    let write = request_id(&host, &support, &t, "read-write", json!({}));
    assert_eq!(decide(&host, &admin, &write, "approve").status, 200);
    let other_tenants = request_id(&host, &support, &other, "read", json!({}));
    assert_eq!(
        decide(&host, &other_admin, &other_tenants, "approve").status,
        200
    );
    let emergency = request_id(&host, &support, &t, "read", json!({"emergency": true}));
    assert_eq!(
        decide(&host, &host.operator, &emergency, "approve").value()["state"],
        "pending"
    );

    // Decisions nobody may take.
    let self_approval = decide(&host, &support, &pending, "approve");
    assert_eq!(self_approval.status, 403, "{}", self_approval.text());
    assert!(
        self_approval.error().contains("own request"),
        "{}",
        self_approval.error()
    );
    let twice = decide(&host, &host.operator, &emergency, "approve");
    assert_eq!(twice.status, 409, "{}", twice.text());
    assert_eq!(decide(&host, &admin, &emergency, "approve").status, 403);
    assert_eq!(decide(&host, &other_admin, &pending, "approve").status, 404);
    assert_eq!(decide(&host, &admin, &denied, "approve").status, 409);
    assert_eq!(decide(&host, &support2, &pending, "approve").status, 404);

    let contacts = records(&t, "contacts");
    let one = format!("{contacts}/{contact}");
    // (case, method, path, grant, body, expected status)
    type Case<'a> = (
        &'a str,
        &'a str,
        String,
        Option<&'a str>,
        Option<&'a [u8]>,
        u16,
    );
    let cases: Vec<Case> = vec![
        ("no grant", "GET", one.clone(), None, None, 403),
        ("pending", "GET", one.clone(), Some(&pending), None, 403),
        ("denied", "GET", one.clone(), Some(&denied), None, 403),
        ("revoked", "GET", one.clone(), Some(&revoked), None, 403),
        (
            "wrong tenant",
            "GET",
            records(&t, "contacts"),
            Some(&other_tenants),
            None,
            403,
        ),
        (
            "read grant used to write",
            "POST",
            contacts.clone(),
            Some(&read),
            Some(&new_contact),
            403,
        ),
        (
            "collection outside scope",
            "GET",
            records(&t, "deals"),
            Some(&read),
            None,
            403,
        ),
        (
            "emergency with one operator",
            "GET",
            one.clone(),
            Some(&emergency),
            None,
            403,
        ),
        (
            "another engineer's grant",
            "GET",
            one.clone(),
            Some(&read),
            None,
            403,
        ),
        (
            "active read grant",
            "GET",
            one.clone(),
            Some(&read),
            None,
            200,
        ),
        (
            "active read-write grant",
            "POST",
            contacts.clone(),
            Some(&write),
            Some(&new_contact),
            201,
        ),
    ];
    for (case, method, path, grant, body, expected) in &cases {
        let token = if *case == "another engineer's grant" {
            &support2
        } else {
            &support
        };
        let before = count(&host, &t, &admin, "contacts");
        let r = match grant {
            Some(g) => with_grant(&host, method, path, token, g, *body),
            None => host.call(method, path, Some(token), *body),
        };
        assert_eq!(r.status, *expected, "{case}: {}", r.text());
        let after = count(&host, &t, &admin, "contacts");
        if *expected == 201 {
            assert_eq!(after, before + 1, "{case}");
        } else {
            assert_eq!(after, before, "{case}: something changed");
        }
        if *expected >= 400 {
            assert!(
                !contains(&r.body, canary.as_bytes()),
                "{case}: data in a refusal"
            );
        } else {
            assert!(
                contains(&r.body, canary.as_bytes()) || *expected == 201,
                "{case}"
            );
        }
    }
    // Operators never reach data, grant header or not.
    let r = with_grant(&host, "GET", &one, &host.operator, &read, None);
    assert_eq!(r.status, 403);

    // A second operator activates the emergency grant: read-only, visible to
    // the tenant at once with its reason.
    assert_eq!(
        decide(&host, &op2, &emergency, "approve").value()["state"],
        "active"
    );
    assert_eq!(
        with_grant(&host, "GET", &one, &support, &emergency, None).status,
        200
    );
    assert_eq!(
        with_grant(
            &host,
            "POST",
            &contacts,
            &support,
            &emergency,
            Some(&new_contact)
        )
        .status,
        403
    );
    let log = host.call(
        "GET",
        &format!("/v1/tenants/{t}/access-log"),
        Some(&admin),
        None,
    );
    assert_eq!(log.status, 200, "{}", log.text());
    let log = log.value();
    let shown = log["grants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["id"] == emergency.as_str())
        .unwrap()
        .clone();
    assert_eq!(shown["emergency"], true);
    assert_eq!(shown["reason"], "customer reports missing invoices");
    // Emergency grants: read-only and short.
    let r = ask(
        &host,
        &support,
        json!({"tenant": t, "scope": "read-write", "duration_minutes": 10,
                                       "reason": "r", "ticket": "t", "emergency": true}),
    );
    assert_eq!(r.status, 422, "{}", r.text());
    let r = ask(
        &host,
        &support,
        json!({"tenant": t, "scope": "read", "duration_minutes": 61,
                                       "reason": "r", "ticket": "t", "emergency": true}),
    );
    assert_eq!(r.status, 422, "{}", r.text());
    // Bad requests change nothing.
    for body in [
        json!({"tenant": t, "scope": "read", "duration_minutes": 241, "reason": "r", "ticket": "t"}),
        json!({"tenant": t, "scope": "admin", "duration_minutes": 5, "reason": "r", "ticket": "t"}),
        json!({"tenant": t, "scope": "read", "duration_minutes": 5, "reason": " ", "ticket": "t"}),
        json!({"tenant": t, "scope": "read", "duration_minutes": 5, "reason": "r"}),
        json!({"tenant": t, "scope": "read", "duration_minutes": 5, "reason": "r", "ticket": "t", "collections": ["nope"]}),
    ] {
        assert_eq!(ask(&host, &support, body.clone()).status, 422, "{body}");
    }
    assert_eq!(ask(&host, &admin, json!({"tenant": t, "scope": "read", "duration_minutes": 5, "reason": "r", "ticket": "t"})).status, 403);

    // Expiry without waiting: the host's clock moves 31 minutes on.
    assert_eq!(
        with_grant(&host, "GET", &one, &support, &write, None).status,
        200
    );
    std::fs::write(&clock, "1860").unwrap();
    let r = with_grant(&host, "GET", &one, &support, &write, None);
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.error().contains("closed (expired)"), "{}", r.error());
    // A pending request expires too (24 h by default), and never reopens.
    std::fs::write(&clock, (25 * 3600).to_string()).unwrap();
    assert_eq!(decide(&host, &admin, &pending, "approve").status, 409);
    let r = host.call(
        "GET",
        &format!("/v1/access-requests/{pending}"),
        Some(&support),
        None,
    );
    assert_eq!(r.value()["closed"]["because"], "expired", "{}", r.text());
}

#[test]
fn revoke_stops_the_next_request_and_every_access_is_in_the_tenants_log() {
    let dir = TempDir::new("revoke");
    let (_clock, host) = host_with_clock(&dir);
    let (t, admin) = host.create_tenant("acme", "crm");
    let r = host.json(
        "POST",
        &records(&t, "contacts"),
        Some(&admin),
        json!({"name": "Ada"}),
    );
    let contact = r.value()["id"].as_str().unwrap().to_string();
    let support = mint(&host, "support", "alice");
    let grant = request_id(&host, &support, &t, "read", json!({}));
    decide(&host, &admin, &grant, "approve");
    let one = format!("{}/{contact}", records(&t, "contacts"));

    // A stream of requests; the revoke lands between two of them.
    let mut statuses = Vec::new();
    for i in 0..20 {
        if i == 12 {
            assert_eq!(decide(&host, &admin, &grant, "revoke").status, 200);
        }
        statuses.push(with_grant(&host, "GET", &one, &support, &grant, None).status);
    }
    assert_eq!(&statuses[..12], &[200; 12]);
    assert_eq!(&statuses[12..], &[403; 8], "{statuses:?}");

    // Every request made with the grant is in the tenant's log, with the grant
    // id, the record and the outcome.
    let log = host
        .call(
            "GET",
            &format!("/v1/tenants/{t}/access-log"),
            Some(&admin),
            None,
        )
        .value();
    let accesses: Vec<&Value> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "grant.access" && e["grant"] == grant.as_str())
        .collect();
    assert_eq!(accesses.len(), 20, "{log}");
    assert!(accesses
        .iter()
        .all(|e| e["details"]["record"] == contact.as_str()));
    assert_eq!(
        accesses
            .iter()
            .filter(|e| e["details"]["outcome"] == 200)
            .count(),
        12
    );
    assert_eq!(
        accesses
            .iter()
            .filter(|e| e["details"]["outcome"] == 403)
            .count(),
        8
    );
    let kinds: Vec<&str> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for kind in ["grant.requested", "grant.activated", "grant.revoked"] {
        assert!(kinds.contains(&kind), "{kind} missing: {kinds:?}");
    }
    // The log holds no ticket or reason text: only their HMACs.
    for file in files_under(&host.data_dir.join("audit")) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(!contains(&bytes, b"SUP-1234"), "{}", file.display());
        assert!(!contains(&bytes, b"missing invoices"), "{}", file.display());
    }
    // Another tenant's admin and staff do not see this log.
    let (_, other_admin) = host.create_tenant("other", "crm");
    for token in [&other_admin, &host.operator, &support] {
        assert_eq!(
            host.call(
                "GET",
                &format!("/v1/tenants/{t}/access-log"),
                Some(token),
                None
            )
            .status,
            403
        );
    }
}

#[test]
fn an_admin_is_recovered_only_by_two_operators_and_the_tenant_sees_it() {
    let dir = TempDir::new("recovery");
    let op2 = add_staff_offline(&dir.path().join("data"), "operator", "second operator");
    let (clock, host) = host_with_clock(&dir);
    let (t, admin) = host.create_tenant("acme", "crm");
    let r = host.json(
        "POST",
        &records(&t, "contacts"),
        Some(&admin),
        json!({"name": "Ada"}),
    );
    assert_eq!(r.status, 201);
    let support = mint(&host, "support", "alice");
    let body = json!({"reason": "the customer lost every admin token", "ticket": "SUP-77"});
    // Only operators ask; reason and ticket are required.
    for token in [&admin, &support] {
        let r = host.json(
            "POST",
            &format!("/v1/tenants/{t}/admin-recovery"),
            Some(token),
            body.clone(),
        );
        assert_eq!(r.status, 403, "{}", r.text());
    }
    let r = host.json(
        "POST",
        &format!("/v1/tenants/{t}/admin-recovery"),
        Some(&host.operator),
        json!({"reason": " ", "ticket": "x"}),
    );
    assert_eq!(r.status, 422);
    let r = host.json(
        "POST",
        &format!("/v1/tenants/{t}/admin-recovery"),
        Some(&host.operator),
        body,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.value()["state"], "waiting");
    assert!(r.value().get("admin_token").is_none());
    let id = r.value()["id"].as_str().unwrap().to_string();
    // Within the tenant's veto window (72 hours by default) nobody carries it out.
    let early = host.call(
        "POST",
        &format!("/v1/admin-recoveries/{id}/approve"),
        Some(&op2),
        None,
    );
    assert_eq!(early.status, 409, "{}", early.text());
    assert!(
        early.error().contains("waiting period"),
        "{}",
        early.error()
    );
    std::fs::write(&clock, (72 * 3600 + 60).to_string()).unwrap();
    let approve = |token: &str| {
        host.call(
            "POST",
            &format!("/v1/admin-recoveries/{id}/approve"),
            Some(token),
            None,
        )
    };
    // Not by the operator who asked, nor by anyone but an operator.
    assert_eq!(approve(&host.operator).status, 403);
    assert_eq!(approve(&admin).status, 403);
    assert_eq!(approve(&support).status, 403);
    let done = approve(&op2);
    assert_eq!(done.status, 200, "{}", done.text());
    assert_eq!(done.value()["state"], "completed");
    let token = done.value()["admin_token"].as_str().unwrap().to_string();
    assert_eq!(approve(&op2).status, 409, "a recovery is carried out once");
    // The new token is the tenant's admin; the tenant sees the recovery.
    let r = host.call("GET", &records(&t, "contacts"), Some(&token), None);
    assert_eq!(r.status, 200);
    let log = host
        .call(
            "GET",
            &format!("/v1/tenants/{t}/access-log"),
            Some(&token),
            None,
        )
        .value();
    assert_eq!(log["admin_recoveries"][0]["state"], "completed", "{log}");
    assert_eq!(
        log["admin_recoveries"][0]["reason"],
        "the customer lost every admin token"
    );
    let kinds: Vec<&str> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"admin-recovery.requested") && kinds.contains(&"admin-recovery.completed"),
        "{kinds:?}"
    );
    // Operators still cannot mint tenant-admin tokens directly.
    let r = host.json(
        "POST",
        "/v1/tokens",
        Some(&host.operator),
        json!({"role": "tenant-admin", "name": "x"}),
    );
    assert_eq!(r.status, 403);
}
