//! The control panel's figures, in one run on the release binary and Debian's
//! headless Chromium: the size of the page's files (and gzipped), the time to
//! first paint of the overview after signing in, and the time the page's own
//! verifier takes to check a proof bundle of 10,000 entries (SHA-256 and
//! Ed25519 through WebCrypto, the RFC 9162 proofs in the page's code),
//! against the host's time to build that bundle.
//!
//! Run: `cargo bench --bench panel -- [--entries N]` (default 10,000).

#[path = "../tests/support/browser.rs"]
#[allow(dead_code)]
mod browser;
mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use common::{create_tenant, Conn};
use serde_json::Value;

fn main() {
    let entries = common::flag("--entries", 10_000);
    let root = std::env::temp_dir().join(format!("coffer-bench-panel-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();

    println!("== the page's files");
    let mut total = 0;
    let mut gzipped = 0;
    for file in ["index.html", "app.js", "api.js", "verify.js", "style.css"] {
        let bytes = std::fs::read(format!("panel/{file}")).unwrap();
        let mut gzip = Command::new("gzip")
            .args(["-9", "-c"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        gzip.stdin.take().unwrap().write_all(&bytes).unwrap();
        let packed = gzip.wait_with_output().unwrap().stdout.len();
        println!("{file}: {} bytes ({packed} gzipped)", bytes.len());
        total += bytes.len();
        gzipped += packed;
    }
    println!("all: {total} bytes ({gzipped} gzipped)");

    let data = root.join("data");
    let (mut host, addr, operator) =
        common::start_configured(&data, "[audit]\ncheckpoint_interval = \"200ms\"\n", &[]);
    let (tenant, admin) = create_tenant(addr, &operator, "Bench Co");
    // Audited changes of the tenant: each schedule change writes its entry
    // and its outcome's.
    let started = Instant::now();
    let mut conn = Conn::open(addr);
    for i in 0..entries.div_ceil(2) {
        let body = format!(r#"{{"interval_hours": {}}}"#, 1 + i % 48);
        let (status, _) = conn.request(
            "PUT",
            &format!("/v1/tenants/{tenant}/backup-schedule"),
            &admin,
            body.as_bytes(),
        );
        assert_eq!(status, 200);
    }
    println!(
        "{} audited changes in {:.1} s",
        entries.div_ceil(2),
        started.elapsed().as_secs_f64()
    );
    std::thread::sleep(std::time::Duration::from_millis(600));
    let started = Instant::now();
    let (status, body) = conn.request(
        "GET",
        &format!("/v1/tenants/{tenant}/audit-proof"),
        &admin,
        b"",
    );
    assert_eq!(status, 200);
    let bundle: Value = serde_json::from_slice(&body).unwrap();
    println!(
        "host: the bundle of {} entries (tree size {}, {} KiB) built and sent in {:.0} ms",
        bundle["entries"].as_array().unwrap().len(),
        bundle["size"],
        body.len() / 1024,
        started.elapsed().as_secs_f64() * 1000.0
    );

    println!("== in headless Chromium");
    let browser = browser::Browser::start(&root.join("browser"));
    let url = format!("http://{addr}");
    browser.open(&format!("{url}/panel/"));
    browser.type_into("[data-test=token-input]", &admin);
    browser.click("[data-test=sign-in]");
    browser.find("[data-test=sign-out]");
    // With the session, a fresh load of the page opens on the overview.
    let mut paints = Vec::new();
    for _ in 0..5 {
        browser.open(&format!("{url}/panel/"));
        browser.find("[data-view=overview]");
        let paint = browser.run(
            "const p = performance.getEntriesByType('paint').find(e => e.name === 'first-contentful-paint'); return p ? p.startTime : null;",
        );
        let drawn = browser.run("return performance.now();");
        paints.push((paint.as_f64().unwrap_or(f64::NAN), drawn.as_f64().unwrap()));
    }
    for (paint, drawn) in &paints {
        println!("overview: first contentful paint {paint:.0} ms, overview drawn by {drawn:.0} ms");
    }
    let mut times = Vec::new();
    for _ in 0..3 {
        let result = browser.run_async(&format!(
            "const done = arguments[0];
             (async () => {{
               const {{ verifyBundle }} = await import('/panel/verify.js');
               const key = await (await fetch('/v1/audit/public-key')).json();
               const bundle = await (await fetch('/v1/tenants/{tenant}/audit-proof', {{credentials: 'same-origin'}})).json();
               const t = performance.now();
               const r = await verifyBundle(bundle, key, null, '{tenant}');
               return {{ms: performance.now() - t, ok: r.ok, entries: r.entries, reason: r.reason || null}};
             }})().then(done, e => done({{error: String(e)}}));"
        ));
        assert_eq!(result["ok"], true, "{result}");
        times.push(result["ms"].as_f64().unwrap());
        println!(
            "in-browser verification of {} entries: {:.0} ms",
            result["entries"],
            result["ms"].as_f64().unwrap()
        );
    }
    drop(browser);
    let _ = host.kill();
    let _ = host.wait();
    let _ = std::fs::remove_dir_all(&root);
}
