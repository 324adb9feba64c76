//! A real browser for the control panel's tests: Debian's Chromium, headless,
//! driven through chromedriver over the W3C WebDriver protocol (JSON over
//! HTTP on loopback, through the crate's own HTTP client). Started per test
//! and stopped by its PID when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

pub struct Browser {
    driver: Child,
    client: coffer::client::Client,
    session: String,
    /// Where downloads land and screenshots are kept.
    pub downloads: PathBuf,
    pub shots: PathBuf,
}

/// An element reference of a WebDriver answer: an object whose one key is
/// the W3C element identifier.
fn element_id(reference: &Value) -> Option<&str> {
    reference
        .as_object()?
        .iter()
        .find(|(key, _)| key.starts_with("element-"))
        .and_then(|(_, id)| id.as_str())
}

impl Browser {
    /// Starts chromedriver and a headless Chromium whose profile and
    /// downloads are under `dir`; screenshots go to
    /// `target/tmp/panel-screenshots/`.
    pub fn start(dir: &Path) -> Browser {
        assert!(
            Path::new(CHROMEDRIVER).exists() && Path::new(CHROMIUM).exists(),
            "the panel tests need Debian's chromium and chromium-driver (ops/test.sh installs them)"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let client = coffer::client::Client::new(
            &format!("http://127.0.0.1:{port}"),
            None,
            Duration::from_secs(60),
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while client.send("GET", "/status", &[], None).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        // Screenshots outlive the test: in cargo's directory for test output.
        let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("panel-screenshots");
        let (profile, downloads) = (dir.join("profile"), dir.join("downloads"));
        for d in [&profile, &downloads, &shots] {
            std::fs::create_dir_all(d).unwrap();
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.display()),
                ],
                "prefs": {
                    "download.default_directory": downloads.to_str().unwrap(),
                    "download.prompt_for_download": false,
                },
            },
        }}});
        let mut browser = Browser {
            driver,
            client,
            session: String::new(),
            downloads,
            shots,
        };
        let created = browser.call("POST", "/session", Some(capabilities));
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {created}"))
            .to_string();
        browser
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_call(method, path, body)
            .unwrap_or_else(|error| panic!("WebDriver {method} {path}: {error}"))
    }

    fn try_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let bytes = body.map(|b| serde_json::to_vec(&b).unwrap());
        let mut answer = self
            .client
            .send(method, path, &[], bytes.as_deref())
            .map_err(|e| format!("{e:#}"))?;
        let body = answer.bytes().unwrap();
        let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if answer.status >= 300 {
            return Err(format!("{} {value}", answer.status));
        }
        Ok(value.get("value").cloned().unwrap_or(value))
    }

    fn at(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    pub fn open(&self, url: &str) {
        self.call("POST", &self.at("/url"), Some(json!({"url": url})));
    }

    /// The first element matching `css`, waiting up to 30 s for it.
    pub fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let found = self.call(
                "POST",
                &self.at("/elements"),
                Some(json!({"using": "css selector", "value": css})),
            );
            if let Some(id) = found
                .as_array()
                .and_then(|a| a.first())
                .and_then(element_id)
            {
                return id.to_string();
            }
            if Instant::now() > deadline {
                let shot = self.screenshot("missing-element");
                let page = self.run("return document.documentElement.outerHTML;");
                panic!(
                    "no element {css} on the page (screenshot {}): {}",
                    shot.display(),
                    page.as_str().unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// How many elements match `css` now.
    pub fn count(&self, css: &str) -> usize {
        self.call(
            "POST",
            &self.at("/elements"),
            Some(json!({"using": "css selector", "value": css})),
        )
        .as_array()
        .map_or(0, Vec::len)
    }

    /// Clicks the element; found again if the page redrew it in between.
    pub fn click(&self, css: &str) {
        for _ in 0..20 {
            let id = self.find(css);
            let path = self.at(&format!("/element/{id}/click"));
            match self.try_call("POST", &path, Some(json!({}))) {
                Ok(_) => return,
                Err(error) if error.contains("stale element") => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(error) => panic!("click {css}: {error}"),
            }
        }
        panic!("click {css}: the element kept being replaced");
    }

    pub fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css);
        self.call(
            "POST",
            &self.at(&format!("/element/{id}/value")),
            Some(json!({"text": text})),
        );
    }

    pub fn text(&self, css: &str) -> String {
        let id = self.find(css);
        self.call("GET", &self.at(&format!("/element/{id}/text")), None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Waits up to 60 s until the text of `css` satisfies `check`.
    pub fn wait_text(&self, css: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.count(css) > 0 {
                let text = self.text(css);
                if check(&text) {
                    return text;
                }
                assert!(Instant::now() < deadline, "{css}: last text {text:?}");
            } else {
                assert!(Instant::now() < deadline, "no element {css}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `script` (a function body) in the page and returns its value.
    pub fn run(&self, script: &str) -> Value {
        self.call(
            "POST",
            &self.at("/execute/sync"),
            Some(json!({"script": script, "args": []})),
        )
    }

    /// Runs `script` with a callback (`arguments[0]`) for async work.
    pub fn run_async(&self, script: &str) -> Value {
        self.call(
            "POST",
            &self.at("/execute/async"),
            Some(json!({"script": script, "args": []})),
        )
    }

    /// The browser's cookies as WebDriver reports them (flags included).
    pub fn cookies(&self) -> Vec<Value> {
        self.call("GET", &self.at("/cookie"), None)
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Saves a PNG of the page as `<shots>/<name>.png`; returns its path.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let b64 = self.call("GET", &self.at("/screenshot"), None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap();
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self
                .client
                .send("DELETE", &format!("/session/{}", self.session), &[], None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
