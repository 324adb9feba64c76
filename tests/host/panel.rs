//! The control panel in a real browser (headless Chromium over WebDriver):
//! sign in, decide support access, download the export, verify the audit
//! log in the page (and see a tampered bundle fail), removal and
//! reactivation, sign out; and what the page must never do — keep the token,
//! take a change without its CSRF token, show another tenant.

use std::process::Command;

use serde_json::{json, Value};

use crate::support::browser::Browser;
use crate::support::grants::{mint, request_id};
use crate::support::records::records_path;
use crate::support::tamper::AnswerTamper;
use crate::support::{eventually, run_ok, Host, TempDir};

/// Signs in with `token` through the page at `url`.
fn sign_in(browser: &Browser, url: &str, token: &str) {
    browser.open(&format!("{url}/panel/"));
    browser.type_into("[data-test=token-input]", token);
    browser.click("[data-test=sign-in]");
    browser.find("[data-test=sign-out]");
}

/// The request's state as its engineer sees it; a closed one says why
/// (`closed:denied`, `closed:revoked`).
fn grant_state(host: &Host, support: &str, grant: &str) -> String {
    let r = host.call(
        "GET",
        &format!("/v1/access-requests/{grant}"),
        Some(support),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.value();
    match v["state"].as_str().unwrap() {
        "closed" => format!("closed:{}", v["closed"]["because"].as_str().unwrap_or("")),
        state => state.to_string(),
    }
}

/// A fetch from inside the page (same origin, the session's cookie).
fn page_fetch(browser: &Browser, method: &str, path: &str, csrf: Option<&str>) -> u64 {
    let headers = match csrf {
        Some(token) => format!("{{'X-Coffer-CSRF': '{token}'}}"),
        None => "{}".into(),
    };
    browser.run_async(&format!(
        "const done = arguments[0]; fetch('{path}', {{method: '{method}', credentials: 'same-origin', headers: {headers}}}).then(r => done(r.status), e => done(String(e)));"
    ))
    .as_u64()
    .unwrap_or(0)
}

#[test]
fn a_tenant_admin_decides_downloads_verifies_and_removes_in_the_browser() {
    let dir = TempDir::new("panel");
    let host = Host::start_configured(
        &dir.path().join("data"),
        "[audit]\ncheckpoint_interval = \"200ms\"\n\n[webhooks]\nallow_http_loopback = true\n",
    );
    let relay = AnswerTamper::start(&host.addr.to_string());
    let (t, a) = host.create_tenant("Panel Co", "crm");
    let (other, other_admin) = host.create_tenant("Other Co", "crm");
    let canary = "CANARY-panel-4d1e";
    let r = host.json(
        "POST",
        &records_path(&t, "contacts"),
        Some(&a),
        json!({"name": canary, "email": "panel@example.com"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let support = mint(&host, "support", "sam");
    let approve_me = request_id(&host, &support, &t, "read", json!({}));
    let deny_me = request_id(&host, &support, &t, "read", json!({"ticket": "SUP-2"}));

    let browser = Browser::start(&dir.path().join("browser"));
    sign_in(&browser, &relay.url, &a);
    browser.screenshot("overview");

    // The token is nowhere in the page or its storage; the cookie is locked down.
    let kept = browser.run(
        "return JSON.stringify(localStorage) + JSON.stringify(sessionStorage) + document.documentElement.outerHTML;",
    );
    assert!(
        !kept.as_str().unwrap().contains(&a),
        "the token stayed in the page"
    );
    let cookies = browser.cookies();
    let session = cookies
        .iter()
        .find(|c| c["name"] == "coffer_session")
        .unwrap_or_else(|| panic!("no session cookie: {cookies:?}"));
    assert_eq!(session["httpOnly"], true, "{session}");
    assert_eq!(session["sameSite"], "Strict", "{session}");
    // A change without the CSRF token is refused, with it allowed.
    assert_eq!(
        page_fetch(&browser, "POST", &format!("/v1/tenants/{t}/backups"), None),
        403
    );
    let csrf = browser.run_async(
        "const done = arguments[0]; fetch('/v1/sessions/current', {credentials: 'same-origin'}).then(r => r.json()).then(s => done(s.csrf));",
    );
    let csrf = csrf.as_str().unwrap().to_string();
    assert_eq!(
        page_fetch(
            &browser,
            "POST",
            &format!("/v1/tenants/{t}/backups"),
            Some(&csrf)
        ),
        202
    );
    // Another tenant is not reachable through this session.
    assert_eq!(
        page_fetch(&browser, "GET", &format!("/v1/tenants/{other}"), None),
        403
    );

    // Support access: approve one request, revoke it, deny the other.
    browser.click("[data-test=nav-access]");
    let row = |id: &str, button: &str| {
        format!("[data-test=grant-row][data-grant-id=\"{id}\"] [data-test={button}]")
    };
    browser.click(&row(&approve_me, "approve"));
    eventually(
        "the approval reached the host",
        || grant_state(&host, &support, &approve_me),
        |s| s == "active",
    );
    browser.screenshot("access");
    browser.click(&row(&approve_me, "revoke"));
    eventually(
        "the revocation reached the host",
        || grant_state(&host, &support, &approve_me),
        |s| s.starts_with("closed"),
    );
    browser.click(&row(&deny_me, "deny"));
    eventually(
        "the denial reached the host",
        || grant_state(&host, &support, &deny_me),
        |s| s == "closed:denied",
    );

    // The export, downloaded by the browser, opens with tar --zstd.
    browser.click("[data-test=nav-backups]");
    browser.screenshot("backups");
    browser.click("[data-test=export-download]");
    let archive = eventually(
        "the export downloaded",
        || {
            std::fs::read_dir(&browser.downloads)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .find(|p| p.to_string_lossy().ends_with(".tar.zst"))
        },
        Option::is_some,
    )
    .unwrap();
    let unpacked = dir.path().join("unpacked");
    std::fs::create_dir_all(&unpacked).unwrap();
    run_ok(
        Command::new("tar")
            .arg("--zstd")
            .arg("-xf")
            .arg(&archive)
            .arg("-C")
            .arg(&unpacked),
    );
    let contacts = std::fs::read_to_string(unpacked.join("collections/contacts.ndjson")).unwrap();
    assert!(contacts.contains(canary));

    // The audit log, verified in the page; then a tampered bundle fails.
    browser.click("[data-test=nav-audit]");
    browser.click("[data-test=audit-verify]");
    let status = browser.wait_text("[data-test=audit-status]", |t| {
        t.starts_with("verified") || t.starts_with("FAILED")
    });
    assert!(status.starts_with("verified"), "{status}");
    browser.screenshot("audit");
    relay.set(true);
    browser.click("[data-test=audit-verify]");
    let status = browser.wait_text("[data-test=audit-status]", |t| t.starts_with("FAILED"));
    assert!(relay.altered() > 0, "{status}");
    browser.screenshot("audit-tampered");
    relay.set(false);

    // A webhook registered in the page: its secret shown once, then listed.
    browser.click("[data-test=nav-webhooks]");
    browser.type_into("[data-test=webhook-url]", &format!("{}/hook", relay.url));
    browser.click("[data-test=webhook-register]");
    let secret = browser.wait_text("[data-test=webhook-secret]", |s| s.starts_with("whsec_"));
    browser.find("[data-test=webhook-row]");
    browser.screenshot("webhooks");
    let listed = host.call("GET", &format!("/v1/tenants/{t}/webhooks"), Some(&a), None);
    assert_eq!(listed.value()["webhooks"].as_array().unwrap().len(), 1);
    assert!(
        !listed.text().contains(&secret),
        "the secret is shown once only"
    );

    // Removal after typing the name, then reactivation.
    browser.click("[data-test=nav-removal]");
    browser.type_into("[data-test=remove-confirm]", "Panel Co");
    browser.click("[data-test=remove-tenant]");
    eventually(
        "the tenant deactivated",
        || {
            host.call("GET", &format!("/v1/tenants/{t}"), Some(&a), None)
                .value()["state"]
                .clone()
        },
        |s| s == "deactivated",
    );
    browser.screenshot("removal");
    browser.click("[data-test=reactivate]");
    eventually(
        "the tenant active again",
        || {
            host.call("GET", &format!("/v1/tenants/{t}"), Some(&a), None)
                .value()["state"]
                .clone()
        },
        |s| s == "active",
    );

    // Signing out ends the session on the host.
    let cookie_value = session["value"].as_str().unwrap().to_string();
    browser.click("[data-test=sign-out]");
    browser.find("[data-test=token-input]");
    let after = host.call_with(
        "GET",
        "/v1/sessions/current",
        None,
        None,
        &[("Cookie", &format!("coffer_session={cookie_value}"))],
    );
    assert_eq!(after.status, 401, "{}", after.text());

    // The other tenant's admin sees only its own tenant.
    sign_in(&browser, &relay.url, &other_admin);
    browser.wait_text("main", |text| text.contains("Other Co"));
    for view in [
        "overview", "backups", "copies", "access", "audit", "tokens", "webhooks", "removal",
    ] {
        browser.click(&format!("[data-test=nav-{view}]"));
        browser.find(&format!("[data-view={view}]"));
        std::thread::sleep(std::time::Duration::from_millis(300));
        browser.screenshot(&format!("other-tenant-{view}"));
        let page: Value = browser.run("return document.body.innerText;");
        let page = page.as_str().unwrap();
        assert!(
            !page.contains("Panel Co") && !page.contains(&t),
            "{view}: {page}"
        );
    }
    assert_eq!(
        page_fetch(
            &browser,
            "GET",
            &format!("/v1/tenants/{t}/access-log"),
            None
        ),
        403
    );
    browser.click("[data-test=sign-out]");

    // An operator sees tenants, regions, drills and what waits for a second
    // operator, never a record.
    let emergency = request_id(&host, &support, &t, "read", json!({"emergency": true}));
    let r = host.json(
        "POST",
        &format!("/v1/tenants/{t}/admin-recovery"),
        Some(&host.operator),
        json!({"reason": "every admin token lost", "ticket": "SUP-9"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let recovery = r.value()["id"].as_str().unwrap().to_string();
    sign_in(&browser, &relay.url, &host.operator);
    browser.wait_text("main", |text| {
        text.contains("Panel Co") && text.contains("Other Co")
    });
    browser.screenshot("operator-tenants");
    browser.click("[data-test=nav-regions]");
    browser.wait_text("main", |text| text.contains("local"));
    browser.screenshot("operator-regions");
    browser.click("[data-test=nav-drills]");
    browser.screenshot("operator-drills");
    browser.click("[data-test=nav-staff]");
    browser.find(&format!(
        "[data-test=recovery-row][data-recovery-id=\"{recovery}\"]"
    ));
    // The operator who minted the engineer's token is not a second person
    // for its emergency: the page says so, and nothing is approved.
    browser.click(&row(&emergency, "approve"));
    browser.wait_text("#message", |text| text.contains("not a second person"));
    let r = host.call(
        "GET",
        &format!("/v1/access-requests/{emergency}"),
        Some(&support),
        None,
    );
    assert_eq!(r.value()["approvals"], json!([]), "{}", r.text());
    browser.screenshot("operator-approvals");
    let page: Value = browser.run("return document.body.innerText;");
    assert!(!page.as_str().unwrap().contains(canary));
    assert_eq!(
        page_fetch(&browser, "GET", &records_path(&t, "contacts"), None),
        403,
        "an operator's session reads no records"
    );
}

#[test]
fn the_page_is_served_whole_from_the_host_with_a_strict_policy() {
    let dir = TempDir::new("panel-files");
    let host = Host::start(&dir.path().join("data"), &[]);
    let page = host.call("GET", "/panel/", None, None);
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let csp = page.header("content-security-policy").unwrap().to_string();
    for part in [
        "default-src 'self'",
        "script-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(part), "{csp}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    let html = page.text();
    assert!(
        !html.contains("<script>") && !html.contains(" onclick="),
        "inline script"
    );
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "nothing from elsewhere"
    );
    for file in ["app.js", "api.js", "verify.js", "style.css"] {
        assert_eq!(
            host.call("GET", &format!("/panel/{file}"), None, None)
                .status,
            200,
            "{file}"
        );
    }
    assert_eq!(host.call("GET", "/panel/../keys", None, None).status, 404);
    // A session is only for tenant admins and operators, and never for a bad token.
    let support = mint(&host, "support", "sam");
    let r = host.json("POST", "/v1/sessions", None, json!({"token": support}));
    assert_eq!(r.status, 403, "{}", r.text());
    // A form on another site posts text/plain: refused, so it cannot sign
    // the browser in as someone else.
    let form = host.call_with(
        "POST",
        "/v1/sessions",
        None,
        Some(format!("{{\"token\": \"{}\"}}", host.operator).as_bytes()),
        &[("Content-Type", "text/plain")],
    );
    assert_eq!(form.status, 400, "{}", form.text());
    assert!(form.header("set-cookie").is_none());
    let r = host.json("POST", "/v1/sessions", None, json!({"token": "nope"}));
    assert_eq!(r.status, 401, "{}", r.text());
    let r = host.json(
        "POST",
        "/v1/sessions",
        None,
        json!({"token": host.operator}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let cookie = r.header("set-cookie").unwrap().to_string();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(flag), "{cookie}");
    }
    assert!(
        !cookie.contains("Secure"),
        "plain http on loopback: {cookie}"
    );
}
