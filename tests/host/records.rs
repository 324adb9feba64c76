//! Records: bad input refused without a change, every field type round-trips and is found by its index.

use serde_json::json;

use crate::support::records::*;
use crate::support::{Host, TempDir};

/// (method, path, token, body, expected status, fragment of the error message)
type BadInputCase<'a> = (&'a str, String, &'a str, Vec<u8>, u16, &'a str);

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let dir = TempDir::new("badinput");
    let host = Host::start(&dir.path().join("data"), &[]);
    let (tenant, admin) = host.create_tenant("bad input", "crm");
    let path = records_path(&tenant, "contacts");
    let r = host.json(
        "POST",
        &path,
        Some(&admin),
        contact("Taken", "taken@example.com"),
    );
    let existing = r.value()["id"].as_str().unwrap().to_string();
    let one = format!("{path}/{existing}");
    let big = format!("{{\"name\": \"{}\"}}", "x".repeat(2 << 20));
    let other_tenant = "0".repeat(32);
    let missing_record = "1".repeat(32);
    let op = host.operator.clone();

    // (method, path, token, body, expected status, message fragment)
    let cases: Vec<BadInputCase> = vec![
        (
            "POST",
            path.clone(),
            &admin,
            b"{not json".to_vec(),
            400,
            "malformed JSON",
        ),
        ("POST", path.clone(), &admin, b"".to_vec(), 400, "JSON"),
        (
            "POST",
            path.clone(),
            &admin,
            b"[1,2]".to_vec(),
            422,
            "object",
        ),
        (
            "POST",
            path.clone(),
            &admin,
            br#"{"name": 42}"#.to_vec(),
            422,
            "must be a string",
        ),
        (
            "POST",
            path.clone(),
            &admin,
            br#"{"email": "a@b"}"#.to_vec(),
            422,
            "missing required field",
        ),
        (
            "POST",
            path.clone(),
            &admin,
            br#"{"name": "a", "age": 3}"#.to_vec(),
            422,
            "unknown field",
        ),
        (
            "POST",
            path.clone(),
            &admin,
            br#"{"name": "a", "id": "x"}"#.to_vec(),
            422,
            "unknown field",
        ),
        (
            "POST",
            path.clone(),
            &admin,
            br#"{"name": "Dup", "email": "taken@example.com"}"#.to_vec(),
            409,
            "email",
        ),
        (
            "POST",
            path.clone(),
            &admin,
            big.into_bytes(),
            413,
            "larger than",
        ),
        (
            "POST",
            records_path(&tenant, "nope"),
            &admin,
            br#"{"name": "a"}"#.to_vec(),
            404,
            "unknown collection",
        ),
        (
            "POST",
            records_path(&other_tenant, "contacts"),
            &op,
            br#"{"name": "a"}"#.to_vec(),
            403,
            "",
        ),
        (
            "GET",
            format!("{path}/{missing_record}"),
            &admin,
            vec![],
            404,
            "not found",
        ),
        (
            "GET",
            format!("{path}/not-an-id"),
            &admin,
            vec![],
            404,
            "not found",
        ),
        (
            "PUT",
            format!("{path}/{missing_record}"),
            &admin,
            br#"{"name": "a"}"#.to_vec(),
            404,
            "not found",
        ),
        (
            "PUT",
            one.clone(),
            &admin,
            br#"{"name": 1}"#.to_vec(),
            422,
            "must be a string",
        ),
        (
            "PUT",
            one.clone(),
            &admin,
            br#"{"name": "a", "id": "0000"}"#.to_vec(),
            422,
            "unknown field",
        ),
        (
            "GET",
            format!("{path}?phone=1"),
            &admin,
            vec![],
            400,
            "not indexed",
        ),
        (
            "GET",
            format!("{path}?limit=0"),
            &admin,
            vec![],
            400,
            "limit",
        ),
        (
            "GET",
            format!("{path}?limit=abc"),
            &admin,
            vec![],
            400,
            "limit",
        ),
        (
            "GET",
            format!("{path}?after=zzz"),
            &admin,
            vec![],
            400,
            "after",
        ),
        (
            "GET",
            format!("{path}?email=%zz"),
            &admin,
            vec![],
            400,
            "percent",
        ),
        (
            "GET",
            format!("/v1/tenants/{other_tenant}"),
            &op,
            vec![],
            404,
            "unknown tenant",
        ),
        (
            "POST",
            "/v1/tenants".into(),
            &op,
            br#"{"name": "x", "region": "local"}"#.to_vec(),
            422,
            "schema",
        ),
        (
            "POST",
            "/v1/tenants".into(),
            &op,
            br#"{"name": "x", "region": "local", "schema": "nope"}"#.to_vec(),
            422,
            "unknown schema",
        ),
        (
            "POST",
            "/v1/tenants".into(),
            &op,
            br#"{"name": "x", "region": "local", "schema": "crm", "schema_version": 9}"#.to_vec(),
            422,
            "no version",
        ),
        (
            "POST",
            "/v1/tenants".into(),
            &op,
            br#"{"name": "x", "region": "mars", "schema": "crm"}"#.to_vec(),
            422,
            "serves region",
        ),
        (
            "POST",
            "/v1/tenants".into(),
            &op,
            br#"{"name": "", "region": "local", "schema": "crm"}"#.to_vec(),
            422,
            "name",
        ),
        (
            "POST",
            "/v1/tenants".into(),
            &op,
            br#"{"name": "x", "region": "local", "schema": "crm", "extra": 1}"#.to_vec(),
            422,
            "unknown field",
        ),
        (
            "POST",
            "/v1/tokens".into(),
            &op,
            br#"{"role": "god", "name": "x"}"#.to_vec(),
            422,
            "unknown role",
        ),
        ("PATCH", one.clone(), &admin, vec![], 405, "method"),
        (
            "GET",
            "/v2/whatever".into(),
            &admin,
            vec![],
            404,
            "no such endpoint",
        ),
    ];
    for (method, path, token, body, status, fragment) in cases {
        let r = host.call(method, &path, Some(token), Some(&body));
        assert_eq!(r.status, status, "{method} {path}: {}", r.text());
        let error = r.error();
        assert!(
            error.contains(fragment),
            "{method} {path}: {error:?} lacks {fragment:?}"
        );
    }
    // Nothing changed: one contact, unchanged; one tenant.
    assert_eq!(record_count(&host, &tenant, &admin, "contacts"), 1);
    let r = host.call("GET", &one, Some(&admin), None);
    assert_eq!(r.value()["name"], "Taken");
    let r = host.call("GET", "/v1/tenants", Some(&op), None);
    assert_eq!(r.value()["tenants"].as_array().unwrap().len(), 1);
    // Unique values are freed by updates and deletes.
    let r = host.json(
        "PUT",
        &one,
        Some(&admin),
        contact("Taken", "moved@example.com"),
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        host.json(
            "POST",
            &path,
            Some(&admin),
            contact("Dup", "taken@example.com")
        )
        .status,
        201
    );
    let r = host.call(
        "GET",
        &format!("{path}?email=moved%40example.com"),
        Some(&admin),
        None,
    );
    assert_eq!(r.value()["records"][0]["id"], existing.as_str());
    let r = host.call(
        "GET",
        &format!("{path}?email=taken%40example.com"),
        Some(&admin),
        None,
    );
    assert_eq!(r.value()["records"][0]["name"], "Dup");
    // The server never answered 500 to any of that.
    let log = String::from_utf8_lossy(&host.log_text()).into_owned();
    assert!(!log.contains("status=500"), "a 500 was logged");
}

#[test]
fn every_field_type_round_trips_and_is_found_by_its_index() {
    let dir = TempDir::new("types");
    let host = Host::start(&dir.path().join("data"), &[]);
    let (t, a) = host.create_tenant("types", "crm");
    let company = json!({"name": "Acme", "domain": "acme.test", "employees": 42, "address": {"street": ["1", 2, null], "ok": true}});
    let r = host.json(
        "POST",
        &records_path(&t, "companies"),
        Some(&a),
        company.clone(),
    );
    assert_eq!(r.status, 201);
    let deal = json!({"title": "Big", "value": 12.5, "won": false, "close_date": "2026-12-01T00:00:00Z", "stage": "won"});
    let r = host.json("POST", &records_path(&t, "deals"), Some(&a), deal.clone());
    assert_eq!(r.status, 201, "{}", r.text());
    let bad_date = json!({"title": "Bad", "close_date": "tomorrow"});
    assert_eq!(
        host.json("POST", &records_path(&t, "deals"), Some(&a), bad_date)
            .status,
        422
    );
    let r = host.call(
        "GET",
        &format!("{}?domain=acme.test", records_path(&t, "companies")),
        Some(&a),
        None,
    );
    let found = &r.value()["records"][0];
    for key in ["name", "domain", "employees", "address"] {
        assert_eq!(found[key], company[key], "{key}");
    }
    let r = host.call(
        "GET",
        &format!("{}?stage=won", records_path(&t, "deals")),
        Some(&a),
        None,
    );
    let found = &r.value()["records"][0];
    for key in ["title", "value", "won", "close_date"] {
        assert_eq!(found[key], deal[key], "{key}");
    }
    // A tenant pinned to v1 of crm writes v1 records: deals have "amount", not "value".
    let r = host.json(
        "POST",
        "/v1/tenants",
        Some(&host.operator),
        json!({"name": "old", "region": "local", "schema": "crm", "schema_version": 1}),
    );
    assert_eq!(r.value()["schema_version"], 1);
    let (t1, a1) = (
        r.value()["id"].as_str().unwrap().to_string(),
        r.value()["admin_token"].as_str().unwrap().to_string(),
    );
    assert_eq!(
        host.json(
            "POST",
            &records_path(&t1, "deals"),
            Some(&a1),
            json!({"title": "x", "amount": 1.0})
        )
        .status,
        201
    );
    assert_eq!(
        host.json(
            "POST",
            &records_path(&t1, "deals"),
            Some(&a1),
            json!({"title": "x", "value": 1.0})
        )
        .status,
        422
    );
    assert_eq!(
        host.json(
            "POST",
            &records_path(&t1, "activities"),
            Some(&a1),
            json!({"kind": "call"})
        )
        .status,
        404
    );
}
