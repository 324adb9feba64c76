//! Host configuration: a TOML file (optional) plus command-line overrides, turned
//! into one checked [`Config`] in a single step. Nothing else reads raw settings.
//!
//! ```toml
//! [host]
//! region = "eu"                    # the region this host serves
//! listen = "127.0.0.1:7070"
//! data_dir = "/var/lib/coffer"
//! master_key_file = "/etc/coffer/master.key"   # optional; default: keyring in data_dir
//!
//! [tenants]
//! grace_period = "21days"          # deactivated → destroyed
//! sweep_interval = "1m"
//! open_max = 512                   # open tenant databases kept at once
//! cache_mb = 4                     # sled page cache per open tenant
//!
//! [api]
//! max_body_bytes = 1048576
//! request_timeout = "30s"
//!
//! [backup]
//! store = "/var/lib/coffer/backups"          # default: <data_dir>/backups
//! key_file = "/etc/coffer/backup.key"        # default: <data_dir>/backup.key (generated)
//! retention_days = 365
//! interval_hours = 24                        # scheduled backups; 0 turns them off
//! max_import_bytes = 17179869184             # bound on an uploaded archive (compressed)
//! max_archive_bytes = 68719476736            # bound on any archive, decompressed
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::ids::Region;
use crate::keys::{KeySource, MASTER_KEY_ENV};

#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub region: Region,
    pub key_source: KeySource,
    pub grace_period: Duration,
    pub sweep_interval: Duration,
    pub open_tenants_max: usize,
    pub tenant_cache_bytes: u64,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub backup_store: PathBuf,
    pub backup_key_file: Option<PathBuf>,
    pub backup_retention: Duration,
    pub backup_interval: Option<Duration>,
    pub max_import_bytes: u64,
    pub max_archive_bytes: u64,
}

/// Settings given on the command line; each wins over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub region: Option<String>,
    pub master_key_file: Option<PathBuf>,
    pub grace_period: Option<String>,
    pub sweep_interval: Option<String>,
    pub open_tenants_max: Option<usize>,
    pub backup_store: Option<PathBuf>,
    pub backup_key_file: Option<PathBuf>,
    pub backup_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    host: RawHost,
    #[serde(default)]
    tenants: RawTenants,
    #[serde(default)]
    api: RawApi,
    #[serde(default)]
    backup: RawBackup,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackup {
    store: Option<PathBuf>,
    key_file: Option<PathBuf>,
    retention_days: Option<u64>,
    interval_hours: Option<u64>,
    max_import_bytes: Option<u64>,
    max_archive_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    region: Option<String>,
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    master_key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenants {
    grace_period: Option<String>,
    sweep_interval: Option<String>,
    open_max: Option<usize>,
    cache_mb: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    max_body_bytes: Option<usize>,
    request_timeout: Option<String>,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
pub const DEFAULT_DATA_DIR: &str = "./coffer-data";
pub const DEFAULT_REGION: &str = "local";

impl Config {
    pub fn resolve(overrides: Overrides) -> anyhow::Result<Config> {
        let raw = match &overrides.config_file {
            Some(path) => load_file(path)?,
            None => RawConfig::default(),
        };
        let listen_text = overrides
            .listen
            .or(raw.host.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen: SocketAddr = listen_text
            .parse()
            .with_context(|| format!("listen address {listen_text:?} is not host:port"))?;
        let region_text = overrides
            .region
            .or(raw.host.region)
            .unwrap_or_else(|| DEFAULT_REGION.to_string());
        let region = Region::parse(&region_text).with_context(|| {
            format!("region {region_text:?}: use lowercase letters, digits and '-'")
        })?;
        let key_source = match overrides.master_key_file.or(raw.host.master_key_file) {
            Some(path) => KeySource::File(path),
            None if std::env::var_os(MASTER_KEY_ENV).is_some() => KeySource::Environment,
            None => KeySource::DataDir,
        };
        let open_tenants_max = overrides
            .open_tenants_max
            .or(raw.tenants.open_max)
            .unwrap_or(512);
        if open_tenants_max == 0 {
            bail!("tenants.open_max must be at least 1");
        }
        let max_body_bytes = raw.api.max_body_bytes.unwrap_or(1 << 20);
        if max_body_bytes < 1024 {
            bail!("api.max_body_bytes must be at least 1024");
        }
        let data_dir = overrides
            .data_dir
            .or(raw.host.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let backup_interval = match overrides.backup_interval {
            Some(text) => Some(duration("backup interval", Some(text), "24h")?),
            None => Some(Duration::from_secs(
                raw.backup.interval_hours.unwrap_or(24) * 3600,
            )),
        }
        .filter(|d| !d.is_zero());
        Ok(Config {
            backup_store: overrides
                .backup_store
                .or(raw.backup.store)
                .unwrap_or_else(|| data_dir.join("backups")),
            backup_key_file: overrides.backup_key_file.or(raw.backup.key_file),
            backup_retention: Duration::from_secs(
                raw.backup.retention_days.unwrap_or(365) * 86_400,
            ),
            backup_interval,
            max_import_bytes: raw.backup.max_import_bytes.unwrap_or(16 << 30),
            max_archive_bytes: raw.backup.max_archive_bytes.unwrap_or(64 << 30),
            data_dir,
            listen,
            region,
            key_source,
            grace_period: duration(
                "grace_period",
                overrides.grace_period.or(raw.tenants.grace_period),
                "21days",
            )?,
            sweep_interval: duration(
                "sweep_interval",
                overrides.sweep_interval.or(raw.tenants.sweep_interval),
                "1m",
            )?
            .max(Duration::from_millis(100)),
            open_tenants_max,
            tenant_cache_bytes: raw.tenants.cache_mb.unwrap_or(4).max(1) << 20,
            max_body_bytes,
            request_timeout: duration("request_timeout", raw.api.request_timeout, "30s")?,
        })
    }
}

fn load_file(path: &Path) -> anyhow::Result<RawConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("read config {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parse config {}", path.display()))
}

fn duration(name: &str, given: Option<String>, default: &str) -> anyhow::Result<Duration> {
    let text = given.unwrap_or_else(|| default.to_string());
    humantime::parse_duration(&text)
        .with_context(|| format!("{name} {text:?} is not a duration such as \"21days\" or \"30s\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_nothing() {
        let config = Config::resolve(Overrides::default()).unwrap();
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.grace_period, Duration::from_secs(21 * 24 * 3600));
        assert_eq!(config.region.as_str(), DEFAULT_REGION);
    }

    #[test]
    fn bad_settings_are_named() {
        for (overrides, expected) in [
            (
                Overrides {
                    listen: Some("nowhere".into()),
                    ..Default::default()
                },
                "listen address",
            ),
            (
                Overrides {
                    region: Some("EU West".into()),
                    ..Default::default()
                },
                "region",
            ),
            (
                Overrides {
                    grace_period: Some("soon".into()),
                    ..Default::default()
                },
                "grace_period",
            ),
        ] {
            let error = Config::resolve(overrides).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }
    }
}
