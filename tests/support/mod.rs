//! Test harness: starts the real `coffer` binary on 127.0.0.1:0 with a temporary
//! data directory and talks to it through the crate's HTTP client (`coffer::client`).

#![allow(dead_code)]

pub mod archives;
pub mod backups;
pub mod browser;
pub mod garage;
pub mod grants;
pub mod openbao;
pub mod records;
pub mod tamper;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_coffer");

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "coffer-test-{label}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct Host {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub operator: String,
}

impl Host {
    /// Starts `coffer serve` on `data_dir` (which may already hold a host's data).
    pub fn start(data_dir: &Path, extra: &[&str]) -> Host {
        Self::try_start(data_dir, extra).unwrap_or_else(|e| panic!("start coffer: {e}"))
    }

    pub fn try_start(data_dir: &Path, extra: &[&str]) -> Result<Host, String> {
        Self::try_start_env(data_dir, extra, &[])
    }

    /// Starts a host whose clock is the real one plus the seconds written in
    /// `clock_file` (debug builds honour `COFFER_TEST_CLOCK_FILE`).
    /// A host on `data` configured by `toml` (written beside it), with no
    /// scheduled backups.
    pub fn start_configured(data: &Path, toml: &str) -> Host {
        let config = data.with_extension("toml");
        std::fs::write(&config, toml).unwrap();
        Host::start(
            data,
            &[
                "--config",
                config.to_str().unwrap(),
                "--backup-interval",
                "0s",
            ],
        )
    }

    pub fn start_with_clock(data_dir: &Path, extra: &[&str], clock_file: &Path) -> Host {
        let clock = clock_file.to_str().unwrap();
        Self::try_start_env(data_dir, extra, &[("COFFER_TEST_CLOCK_FILE", clock)])
            .unwrap_or_else(|e| panic!("start coffer: {e}"))
    }

    pub fn try_start_env(
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Host, String> {
        let log = data_dir.with_extension(format!(
            "log-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let log_file = std::fs::File::create(&log).unwrap();
        let mut child = Command::new(BIN)
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .env_remove("COFFER_MASTER_KEY")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .map_err(|e| e.to_string())?;
        // From here on, a failure stops the child: no host outlives its test.
        let fail = |mut child: Child, why: String| {
            let _ = child.kill();
            let _ = child.wait();
            Err(why)
        };
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        if let Err(e) = BufReader::new(stdout).read_line(&mut line) {
            return fail(child, e.to_string());
        }
        let listening = line.trim().strip_prefix("coffer listening on ");
        let Some(addr) =
            listening.and_then(|l| l.strip_prefix("http://").or(l.strip_prefix("https://")))
        else {
            let status = child.wait().map_err(|e| e.to_string())?;
            let log_text = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!("exited {status}: {log_text}"));
        };
        let operator = match std::fs::read_to_string(data_dir.join("operator.token")) {
            Ok(token) => token.trim().to_string(),
            Err(e) => return fail(child, format!("read operator.token: {e}")),
        };
        Ok(Host {
            child: Some(child),
            addr: addr.parse().unwrap(),
            data_dir: data_dir.to_path_buf(),
            log,
            operator,
        })
    }

    /// The host's base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM and wait for a graceful exit.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            for _ in 0..200 {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&[u8]>,
    ) -> Response {
        self.call_with(method, path, token, body, &[])
    }

    pub fn call_with(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> Response {
        http(self.addr, method, path, token, body, headers)
    }

    pub fn json(&self, method: &str, path: &str, token: Option<&str>, body: Value) -> Response {
        let bytes = serde_json::to_vec(&body).unwrap();
        self.call(method, path, token, Some(&bytes))
    }

    /// Creates a tenant on `schema` (newest version); returns (id, admin token).
    pub fn create_tenant(&self, name: &str, schema: &str) -> (String, String) {
        let region = self.call("GET", "/healthz", None, None).value()["region"].clone();
        let r = self.json(
            "POST",
            "/v1/tenants",
            Some(&self.operator),
            serde_json::json!({"name": name, "region": region, "schema": schema}),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        let v = r.value();
        (
            v["id"].as_str().unwrap().to_string(),
            v["admin_token"].as_str().unwrap().to_string(),
        )
    }

    pub fn log_text(&self) -> Vec<u8> {
        std::fs::read(&self.log).unwrap_or_default()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn value(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The error message of a JSON error body.
    pub fn error(&self) -> String {
        self.value()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field: {}", self.text()))
            .to_string()
    }
}

/// One request through the crate's HTTP client, on a connection of its own.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> Response {
    let client = coffer::client::Client::new(
        &format!("http://{addr}"),
        token.map(str::to_string),
        Duration::from_secs(60),
    )
    .expect("client");
    let mut answer = client
        .send(method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e:#}"));
    let body = answer
        .bytes()
        .unwrap_or_else(|e| panic!("{method} {path}: {e:#}"));
    Response {
        status: answer.status,
        headers: answer.headers,
        body,
    }
}

/// Waits until `check` holds (90 s at most), or fails with what it last saw.
pub fn eventually<T: std::fmt::Debug>(
    what: &str,
    mut probe: impl FnMut() -> T,
    check: impl Fn(&T) -> bool,
) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let seen = probe();
        if check(&seen) {
            return seen;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: last saw {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `coffer tokens add` on a data directory no host runs on (yet): a staff
/// token whose identity whoever holds the disk vouches for. Returns the token.
pub fn add_staff_offline(data_dir: &Path, role: &str, name: &str) -> String {
    let out = run_ok(
        Command::new(BIN)
            .args(["tokens", "add", "--data-dir"])
            .arg(data_dir)
            .args(["--role", role, "--name", name])
            .env_remove("COFFER_MASTER_KEY"),
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(token.starts_with("coffer_"), "{token}");
    token
}

/// A tenant of `records` contacts whose notes are `notes(i)`, loaded offline
/// into `data` (no host running) as a restore loads them: 16 loaders, one
/// flush at the end. Returns (tenant, admin token).
pub fn tenant_offline(
    data: &Path,
    records: u64,
    notes: impl Fn(u64) -> String + Send + Sync + 'static,
) -> (String, String) {
    use coffer::storage::{NewTenant, Storage};
    std::fs::create_dir_all(data).unwrap();
    let keyring = coffer::keys::load(data, &coffer::keys::KeySource::DataDir).unwrap();
    let storage = Storage::open(data, keyring, 8, 64 << 20).unwrap();
    let schemas = coffer::schema::Registry::embedded().unwrap();
    let contacts = schemas
        .get("crm", 2)
        .unwrap()
        .collection("contacts")
        .unwrap()
        .clone();
    let (tenant, admin) = storage
        .create_tenant(NewTenant {
            id: None,
            name: "Large".into(),
            region: coffer::ids::Region::parse("local").unwrap(),
            schema: "crm".into(),
            schema_version: 2,
        })
        .unwrap();
    let db = storage.tenant_db(&tenant).unwrap();
    let notes = std::sync::Arc::new(notes);
    let workers: Vec<_> = (0..16u64)
        .map(|w| {
            let (db, contacts, notes) = (db.clone(), contacts.clone(), notes.clone());
            std::thread::spawn(move || {
                for i in (w..records).step_by(16) {
                    let fields = serde_json::json!({
                        "name": format!("Contact {i}"),
                        "email": format!("contact{i}@example.com"),
                        "notes": notes(i),
                    });
                    db.load_with_id(
                        "contacts",
                        &contacts,
                        &coffer::ids::RecordId::generate().unwrap(),
                        fields.as_object().unwrap(),
                    )
                    .unwrap();
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    db.flush().unwrap();
    (tenant.id.to_string(), admin)
}

/// Runs a command that must succeed; its output (stderr shown if it failed).
pub fn run_ok(command: &mut Command) -> std::process::Output {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{:?}: {}",
        command,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every regular file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
