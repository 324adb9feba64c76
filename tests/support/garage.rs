//! Real S3 regions for tests: single-node Garage servers on loopback, started
//! and stopped (by PID) with `ops/garage/regions.sh`, and an S3 client of our
//! own (`object_store`) to look into their buckets without going through Coffer.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/ops/garage/regions.sh");

pub struct Garage {
    pub dir: PathBuf,
    pub regions: Vec<String>,
}

fn script(args: &[&str]) -> std::process::Output {
    Command::new("bash")
        .arg(SCRIPT)
        .args(args)
        .output()
        .expect("run ops/garage/regions.sh")
}

fn ports_free(base: u16, count: usize) -> bool {
    (0..count as u16 * 10)
        .all(|offset| std::net::TcpListener::bind(("127.0.0.1", base + offset)).is_ok())
}

impl Garage {
    /// Starts one Garage per region under `dir`. Needs `garage` on PATH
    /// (ops/test.sh installs it with `cargo install garage --locked`).
    pub fn start(dir: &Path, regions: &[&str]) -> Garage {
        static NEXT: AtomicU16 = AtomicU16::new(0);
        let mut last_error = String::new();
        for _ in 0..20 {
            let slot = NEXT.fetch_add(1, Ordering::SeqCst);
            // Below the ephemeral range (32768-60999 here), where the
            // tests' own client connections take ports.
            let base =
                (20_000 + (std::process::id() % 100 * 120 + slot as u32 * 40) % 12_000) as u16;
            if !ports_free(base, regions.len()) {
                continue;
            }
            let _ = std::fs::remove_dir_all(dir);
            let mut args = vec!["start", dir.to_str().unwrap()];
            let base_text = base.to_string();
            args.push(&base_text);
            args.extend_from_slice(regions);
            let out = script(&args);
            if out.status.success() {
                return Garage {
                    dir: dir.to_path_buf(),
                    regions: regions.iter().map(|r| r.to_string()).collect(),
                };
            }
            last_error = String::from_utf8_lossy(&out.stderr).into_owned();
            script(&["stop", dir.to_str().unwrap()]);
        }
        panic!(
            "could not start Garage regions (is `garage` installed? run ops/test.sh): {last_error}"
        );
    }

    /// SIGKILL one region's server: an outage.
    pub fn kill(&self, region: &str) {
        let out = script(&["kill", self.dir.to_str().unwrap(), region]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn restart(&self, region: &str) {
        let out = script(&["restart", self.dir.to_str().unwrap(), region]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Everything Garage keeps for a region (data blocks and metadata).
    pub fn region_dir(&self, region: &str) -> PathBuf {
        self.dir.join(region)
    }

    /// A region's S3 endpoint (`http://127.0.0.1:PORT`).
    pub fn endpoint(&self, region: &str) -> String {
        let config = std::fs::read_to_string(self.dir.join(region).join("coffer.toml")).unwrap();
        config
            .lines()
            .find_map(|l| l.strip_prefix("endpoint = "))
            .unwrap()
            .trim_matches('"')
            .to_string()
    }

    /// A Coffer config serving `host_region`, replicating to every region.
    pub fn coffer_config(&self, host_region: &str) -> String {
        let mut text = format!("[host]\nregion = \"{host_region}\"\n\n");
        for region in &self.regions {
            text += &std::fs::read_to_string(self.dir.join(region).join("coffer.toml")).unwrap();
            text += "\n";
        }
        let list: Vec<String> = self.regions.iter().map(|r| format!("{r:?}")).collect();
        text += &format!(
            "[backup]\nregions = [{}]\nretry_base = \"100ms\"\nretry_cap = \"1s\"\n",
            list.join(", ")
        );
        text
    }

    pub fn write_config(&self, host_region: &str, path: &Path) -> PathBuf {
        std::fs::write(path, self.coffer_config(host_region)).unwrap();
        path.to_path_buf()
    }

    /// Every object in a region's bucket as (name, size), through the S3 API.
    pub fn objects(&self, region: &str) -> Vec<(String, u64)> {
        use futures::StreamExt;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = std::fs::read_to_string(self.dir.join(region).join("coffer.toml")).unwrap();
        let field = |name: &str| {
            config
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name} = ")))
                .unwrap()
                .trim_matches('"')
                .to_string()
        };
        let secret = std::fs::read_to_string(field("secret_access_key_file")).unwrap();
        let store = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name("coffer-backups")
            .with_endpoint(field("endpoint"))
            .with_region("garage")
            .with_access_key_id(field("access_key_id"))
            .with_secret_access_key(secret.trim())
            .with_allow_http(true)
            .build()
            .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut out = Vec::new();
            let mut listing = object_store::ObjectStore::list(&store, None);
            while let Some(meta) = listing.next().await {
                let meta = meta.expect("list the bucket");
                out.push((meta.location.to_string(), meta.size));
            }
            out.sort();
            out
        })
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        script(&["stop", self.dir.to_str().unwrap()]);
    }
}
