//! Tenants with records: paths, a populated crm tenant, reading every record back.

use serde_json::{json, Value};

use super::Host;

pub fn contact(name: &str, email: &str) -> Value {
    json!({"name": name, "email": email})
}

pub fn records_path(tenant: &str, collection: &str) -> String {
    format!("/v1/tenants/{tenant}/collections/{collection}/records")
}

pub fn record_count(host: &Host, tenant: &str, token: &str, collection: &str) -> usize {
    let r = host.call(
        "GET",
        &format!("{}?limit=1000", records_path(tenant, collection)),
        Some(token),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.value()["records"].as_array().unwrap().len()
}

/// All records of every collection of a tenant, by collection, sorted by id.
pub fn all_records(
    host: &Host,
    tenant: &str,
    token: &str,
    collections: &[&str],
) -> Vec<(String, Vec<Value>)> {
    collections
        .iter()
        .map(|c| {
            let r = host.call(
                "GET",
                &format!("{}?limit=1000", records_path(tenant, c)),
                Some(token),
                None,
            );
            assert_eq!(r.status, 200, "{}", r.text());
            (
                c.to_string(),
                r.value()["records"].as_array().unwrap().clone(),
            )
        })
        .collect()
}

pub const CRM: &[&str] = &["activities", "companies", "contacts", "deals"];

/// A crm tenant with records of every field type in every collection.
pub fn populated_tenant(host: &Host, name: &str) -> (String, String) {
    let (t, a) = host.create_tenant(name, "crm");
    let post = |c: &str, body: Value| {
        let r = host.json("POST", &records_path(&t, c), Some(&a), body);
        assert_eq!(r.status, 201, "{}", r.text());
        r.value()["id"].as_str().unwrap().to_string()
    };
    let company = post(
        "companies",
        json!({"name": "Acme", "domain": "acme.test", "employees": 12, "address": {"lines": ["1 Road", null], "geo": [51.5, -0.1]}}),
    );
    for i in 0..25 {
        let contact = post(
            "contacts",
            json!({"name": format!("Person {i} ünïcødé \"quoted\""), "email": format!("p{i}@acme.test"), "tags": ["a", i], "do_not_contact": i % 2 == 0}),
        );
        post(
            "deals",
            json!({"title": format!("Deal {i}"), "company_id": company, "contact_id": contact, "value": i as f64 * 1.25, "won": i % 3 == 0, "close_date": "2026-12-01T10:00:00+01:00"}),
        );
    }
    post(
        "activities",
        json!({"kind": "call", "at": "2026-11-23T09:00:00Z", "summary": "line\nbreak"}),
    );
    (t, a)
}
