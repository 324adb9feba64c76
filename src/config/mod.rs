//! Host configuration: a TOML file (optional) plus command-line overrides, turned
//! into one checked [`Config`] in a single step. Nothing else reads raw settings.
//! One file on purpose: the example below, the raw TOML structs and the checks
//! that turn them into `Config` are one table read side by side (its tests
//! are in `tests.rs`).
//!
//! ```toml
//! [host]
//! region = "eu"                    # the region this host serves
//! listen = "127.0.0.1:7070"
//! metrics_listen = "127.0.0.1:9470"   # GET /metrics (Prometheus); off when absent
//! tls_cert = "/etc/coffer/tls/cert.pem"  # with tls_key: the API speaks https only
//! tls_key = "/etc/coffer/tls/key.pem"    # mode 0600
//! data_dir = "/var/lib/coffer"
//! master_key_file = "/etc/coffer/master.key"   # optional; default: keyring in data_dir
//!
//! [tenants]
//! grace_period = "21days"          # deactivated → destroyed
//! move_purge_delay = "7days"       # moved to another host → local copy destroyed
//! sweep_interval = "1m"
//! open_max = 512                   # open tenant databases kept at once
//! cache_mb = 4                     # sled page cache per open tenant
//! memory_high_mb = 4096            # RSS above this after an export or DR backup: that
//!                                  # tenant's database is closed, freed heap given back
//!                                  # (default: a quarter of the machine's or cgroup's memory)
//!
//! [api]
//! max_body_bytes = 1048576
//! request_timeout = "30s"
//!
//! [limits]                         # long jobs: exports, imports, restores, backups, upgrades
//! long_jobs_per_tenant = 2         # beyond: 429 with Retry-After
//! long_jobs_total = 16
//! stall_timeout = "30s"            # a streaming client that reads nothing this long is cut off
//! buffered_body_mb = 256           # request bodies held in memory at once, host-wide (beyond: 429)
//! job_max_mb_per_s = 0             # DR backups and restores read/write at most this (0: no cap)
//!
//! [regions.eu]                              # one table per backup region
//! store = "s3://coffer-backups"              # or "file:///var/lib/coffer/regions/eu",
//!                                            # "gs://bucket", "az://container"
//! endpoint = "http://127.0.0.1:3900"         # S3-compatible stores (Garage, MinIO)
//! s3_region = "garage"
//! access_key_id = "GK..."                    # default: the AWS_* environment
//! secret_access_key_file = "/etc/coffer/eu.secret"   # mode 0600
//! conditional_put = false                    # true where the store honours
//!                                            # If-None-Match (AWS S3 does; Garage does not)
//!
//! [access]                                   # break-glass grants
//! max_minutes = 240                          # longest tenant-approved grant
//! max_emergency_minutes = 60                 # longest emergency grant (two operators)
//! pending_expiry = "24h"                     # undecided requests close
//! admin_recovery_wait = "72h"                # the tenant's veto window on an admin recovery
//!
//! [hosts]                                    # the fleet: one host per region; moves
//! us = "https://coffer.us.example.com"       # go only to these, redirects point only here
//!
//! [audit]
//! checkpoint_interval = "2s"                 # signed checkpoints while entries arrive
//!
//! [drills]                                   # restore drills of every tenant's newest backup
//! every = "7days"                            # each tenant drilled at least this often; "0s": off
//! check_interval = "1h"                      # how often the host looks for tenants due
//!
//! [data_keys]                                # online rotation of tenants' data keys
//! rotate_every = "0s"                        # each tenant's key rotated this often; "0s": off
//! batch_records = 256                        # values re-sealed under the write lock at a time
//! batch_pause = "0s"                         # rest between two batches
//! check_interval = "1h"                      # how often the host looks for tenants due
//!
//! [webhooks]                                 # signed events to the tenants' endpoints
//! allow_http_loopback = false                # http:// to this machine (tests, a local relay)
//! allow_private = false                      # receivers on private / link-local addresses
//! retry_for = "24h"                          # a delivery is retried this long; an endpoint
//!                                            # failing this long is disabled
//! max_backoff = "1h"                         # the longest wait between two attempts
//! timeout = "10s"                            # one attempt's limit
//! region_lag_alert = "15m"                   # a backup region this far behind is
//!                                            # reported to the host's endpoints
//!
//! [customer_keys]                            # tenants' own keys (OpenBao / Vault Transit)
//! check_interval = "5m"                      # each open tenant's key checked this often
//! unreachable_grace = "1h"                   # served this long while its key service is down
//! allow_http_loopback = false                # http:// to a key service on this machine
//! timeout = "5s"                             # one call's limit
//!
//! [changelog]                                # continuous backup (point-in-time restore)
//! enabled = true
//! segment_after = "2s"                       # a segment closes once its oldest change is this old
//! segment_mb = 4                             # ...or once it holds this much
//! replicated_regions = 2                     # `replicated` tenants: regions a write waits for
//! replicated_timeout = "30s"                 # then the write answers 503 (it stays and ships)
//! retention_days = 30                        # the point-in-time window
//! base_every_changes = 1000000               # a full backup once the log since the last one is this long
//! first_base_after = "0s"                    # a tenant with shipped changes and no full backup gets one
//!
//! [backup]
//! regions = ["eu", "us"]                     # default: every [regions.*] table; with none,
//!                                            # three directories under data_dir
//! spool = "/var/lib/coffer/backups"          # sealed backups before replication
//!                                            # default: <data_dir>/backups
//! key_file = "/etc/coffer/backup.key"        # default: <data_dir>/backup.key (generated)
//! retention_days = 365
//! interval_hours = 24                        # scheduled backups; 0 turns them off
//! max_import_bytes = 17179869184             # bound on an uploaded archive (compressed)
//! max_archive_bytes = 68719476736            # bound on any archive, decompressed
//! retry_base = "1s"                          # replication retries: capped exponential
//! retry_cap = "5m"                           # backoff with jitter
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::ids::Region;

/// Where the master key comes from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// The keyring directory under the data directory (generated on first start).
    DataDir,
    /// One key in a file managed outside Coffer.
    File(PathBuf),
    /// One key, hex, in `COFFER_MASTER_KEY`.
    Environment,
}

pub const MASTER_KEY_ENV: &str = "COFFER_MASTER_KEY";

#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Where `GET /metrics` is served; `None`: nowhere (the default).
    pub metrics_listen: Option<SocketAddr>,
    /// The API's TLS certificate chain and key (PEM); both or neither.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub region: Region,
    pub key_source: KeySource,
    pub grace_period: Duration,
    /// How long a moved tenant's old copy is kept on the source host.
    pub move_purge_delay: Duration,
    pub sweep_interval: Duration,
    pub open_tenants_max: usize,
    pub tenant_cache_bytes: u64,
    /// `[tenants] memory_high_mb`; `None`: a quarter of the memory available.
    pub memory_high_bytes: Option<u64>,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    /// Where sealed backups wait until every region holds them.
    pub backup_spool: PathBuf,
    /// The regions every backup is replicated to, in order of preference for reads.
    pub backup_regions: Vec<RegionSpec>,
    pub retry_base: Duration,
    pub retry_cap: Duration,
    pub backup_key_file: Option<PathBuf>,
    pub backup_retention: Duration,
    pub backup_interval: Option<Duration>,
    pub max_import_bytes: u64,
    pub max_archive_bytes: u64,
    pub access: AccessPolicy,
    /// How often the audit log signs a checkpoint (when it grew).
    pub checkpoint_interval: Duration,
    /// Restore drills: (every, check interval); `None` when off.
    pub drills: Option<(Duration, Duration)>,
    pub data_keys: DataKeysConfig,
    pub customer_keys: CustomerKeysConfig,
    pub webhooks: WebhooksConfig,
    /// The fleet's hosts by region (`[hosts]`): the only move targets.
    pub hosts: std::collections::BTreeMap<Region, String>,
    pub limits: Limits,
    /// Continuous backup; `None` when `[changelog] enabled = false`.
    pub changelog: Option<ChangeLogConfig>,
}

/// `[webhooks]`: where and how events are delivered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WebhooksConfig {
    pub allow_http_loopback: bool,
    pub allow_private: bool,
    pub retry_for: Duration,
    pub max_backoff: Duration,
    pub timeout: Duration,
    pub region_lag_alert: Duration,
}

/// `[customer_keys]`: tenants' own keys in their own key services.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CustomerKeysConfig {
    /// How often an open customer-keyed tenant's key is checked.
    pub check_interval: Duration,
    /// How long a tenant keeps serving while its key service does not answer.
    pub unreachable_grace: Duration,
    pub allow_http_loopback: bool,
    /// One call's time limit.
    pub timeout: Duration,
}

/// `[data_keys]`: online data-key rotation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DataKeysConfig {
    /// `None`: no scheduled rotation.
    pub rotate_every: Option<Duration>,
    pub batch_records: usize,
    pub batch_pause: Duration,
    pub check_interval: Duration,
}

/// `[changelog]`: how change logs ship.
#[derive(Debug, Clone)]
pub struct ChangeLogConfig {
    pub segment_after: Duration,
    pub segment_bytes: usize,
    pub replicated_regions: usize,
    pub replicated_timeout: Duration,
    pub retention: Duration,
    pub base_every_changes: u64,
    pub first_base_after: Duration,
}

/// Bounds on long jobs, so that no tenant (or broken client) takes the host.
#[derive(Debug, Clone)]
pub struct Limits {
    pub long_jobs_per_tenant: usize,
    pub long_jobs_total: usize,
    /// A streaming response whose client reads nothing this long is ended.
    pub stall_timeout: Duration,
    /// Request-body bytes held in memory at once by the whole host.
    pub buffered_body_bytes: usize,
    /// Bytes per second a DR backup or restore may move (none: no cap).
    pub job_max_bytes_per_s: Option<u64>,
}

/// Host policy for break-glass grants.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    /// Longest grant a tenant admin can approve.
    pub max_minutes: u64,
    /// Longest emergency grant (two operators).
    pub max_emergency_minutes: u64,
    /// A request nobody decided closes after this long.
    pub pending_expiry: Duration,
    /// An admin recovery is carried out no sooner than this after it was
    /// asked for; until then the tenant can cancel it.
    pub admin_recovery_wait: Duration,
}

/// Settings given on the command line; each wins over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub metrics_listen: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub region: Option<String>,
    pub master_key_file: Option<PathBuf>,
    pub grace_period: Option<String>,
    pub move_purge_delay: Option<String>,
    pub sweep_interval: Option<String>,
    pub open_tenants_max: Option<usize>,
    pub backup_store: Option<PathBuf>,
    pub backup_key_file: Option<PathBuf>,
    pub backup_interval: Option<String>,
    /// Backup retention as a duration ("12months", "5s"), over retention_days.
    pub backup_retention: Option<String>,
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
    #[serde(default)]
    regions: std::collections::BTreeMap<String, RawRegion>,
    #[serde(default)]
    access: RawAccess,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    drills: RawDrills,
    #[serde(default)]
    data_keys: RawDataKeys,
    #[serde(default)]
    customer_keys: RawCustomerKeys,
    #[serde(default)]
    webhooks: RawWebhooks,
    #[serde(default)]
    hosts: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    changelog: RawChangeLog,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChangeLog {
    enabled: Option<bool>,
    segment_after: Option<String>,
    segment_mb: Option<usize>,
    replicated_regions: Option<usize>,
    replicated_timeout: Option<String>,
    retention_days: Option<u64>,
    base_every_changes: Option<u64>,
    first_base_after: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    long_jobs_per_tenant: Option<usize>,
    long_jobs_total: Option<usize>,
    stall_timeout: Option<String>,
    buffered_body_mb: Option<usize>,
    job_max_mb_per_s: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccess {
    max_minutes: Option<u64>,
    max_emergency_minutes: Option<u64>,
    pending_expiry: Option<String>,
    admin_recovery_wait: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    checkpoint_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhooks {
    allow_http_loopback: Option<bool>,
    allow_private: Option<bool>,
    retry_for: Option<String>,
    max_backoff: Option<String>,
    timeout: Option<String>,
    region_lag_alert: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCustomerKeys {
    check_interval: Option<String>,
    unreachable_grace: Option<String>,
    allow_http_loopback: Option<bool>,
    timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDataKeys {
    rotate_every: Option<String>,
    batch_records: Option<usize>,
    batch_pause: Option<String>,
    check_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDrills {
    every: Option<String>,
    check_interval: Option<String>,
}

/// One backup region's object store.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionSpec {
    pub name: Region,
    pub store: StoreSpec,
    /// Ask the store for create-only writes (`If-None-Match: *`).
    pub conditional_put: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StoreSpec {
    /// A local directory (the embedded default, and tests).
    Directory(PathBuf),
    /// An S3-compatible bucket; `prefix` is the path inside it.
    S3 {
        bucket: String,
        prefix: String,
        endpoint: Option<String>,
        s3_region: Option<String>,
        access_key_id: Option<String>,
        secret_access_key_file: Option<PathBuf>,
    },
    /// `gs://` or `az://`: configured from the environment by `object_store`.
    Other { url: String },
}

impl StoreSpec {
    /// Where the store is, for logs and the API (no credentials).
    pub fn describe(&self) -> String {
        match self {
            StoreSpec::Directory(path) => format!("file://{}", path.display()),
            StoreSpec::S3 {
                bucket,
                prefix,
                endpoint,
                ..
            } => {
                let at = endpoint
                    .as_deref()
                    .map(|e| format!(" at {e}"))
                    .unwrap_or_default();
                format!("s3://{bucket}/{prefix}{at}")
            }
            StoreSpec::Other { url } => url.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegion {
    store: String,
    endpoint: Option<String>,
    s3_region: Option<String>,
    access_key_id: Option<String>,
    secret_access_key_file: Option<PathBuf>,
    conditional_put: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackup {
    regions: Option<Vec<String>>,
    spool: Option<PathBuf>,
    retry_base: Option<String>,
    retry_cap: Option<String>,
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
    metrics_listen: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    master_key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenants {
    grace_period: Option<String>,
    move_purge_delay: Option<String>,
    sweep_interval: Option<String>,
    open_max: Option<usize>,
    cache_mb: Option<u64>,
    memory_high_mb: Option<u64>,
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
        let metrics_listen = match overrides.metrics_listen.or(raw.host.metrics_listen) {
            Some(text) => Some(
                text.parse::<SocketAddr>()
                    .with_context(|| format!("metrics listen address {text:?} is not host:port"))?,
            ),
            None => None,
        };
        let tls = match (
            overrides.tls_cert.or(raw.host.tls_cert),
            overrides.tls_key.or(raw.host.tls_key),
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => anyhow::bail!("TLS needs both a certificate (tls_cert) and its key (tls_key)"),
        };
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
        let memory_high_bytes = match raw.tenants.memory_high_mb {
            Some(0) => bail!("tenants.memory_high_mb must be at least 1"),
            Some(mib) => Some(mib.saturating_mul(1 << 20)),
            None => None,
        };
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
        let backup_regions = backup_regions(
            &raw.regions,
            raw.backup.regions.as_deref(),
            overrides.backup_store.as_deref(),
            &region,
            &data_dir,
        )?;
        let retry_base = duration("backup.retry_base", raw.backup.retry_base, "1s")?
            .max(Duration::from_millis(10));
        let retry_cap = duration("backup.retry_cap", raw.backup.retry_cap, "5m")?.max(retry_base);
        Ok(Config {
            backup_spool: raw.backup.spool.unwrap_or_else(|| data_dir.join("backups")),
            backup_regions,
            retry_base,
            retry_cap,
            backup_key_file: overrides.backup_key_file.or(raw.backup.key_file),
            backup_retention: match overrides.backup_retention {
                Some(text) => duration("backup retention", Some(text), "365days")?,
                None => Duration::from_secs(raw.backup.retention_days.unwrap_or(365) * 86_400),
            },
            backup_interval,
            max_import_bytes: raw.backup.max_import_bytes.unwrap_or(16 << 30),
            max_archive_bytes: raw.backup.max_archive_bytes.unwrap_or(64 << 30),
            data_dir,
            listen,
            metrics_listen,
            tls,
            region,
            key_source,
            access: AccessPolicy {
                max_minutes: raw.access.max_minutes.unwrap_or(240).max(1),
                max_emergency_minutes: raw.access.max_emergency_minutes.unwrap_or(60).max(1),
                pending_expiry: duration(
                    "access.pending_expiry",
                    raw.access.pending_expiry,
                    "24h",
                )?,
                admin_recovery_wait: duration(
                    "access.admin_recovery_wait",
                    raw.access.admin_recovery_wait,
                    "72h",
                )?,
            },
            hosts: fleet_hosts(&raw.hosts)?,
            changelog: match raw.changelog.enabled {
                Some(false) => None,
                _ => Some(ChangeLogConfig {
                    segment_after: duration(
                        "changelog.segment_after",
                        raw.changelog.segment_after,
                        "2s",
                    )?
                    .max(Duration::from_millis(50)),
                    segment_bytes: raw.changelog.segment_mb.unwrap_or(4).clamp(1, 64) << 20,
                    replicated_regions: raw.changelog.replicated_regions.unwrap_or(2).max(1),
                    replicated_timeout: duration(
                        "changelog.replicated_timeout",
                        raw.changelog.replicated_timeout,
                        "30s",
                    )?,
                    retention: Duration::from_secs(
                        raw.changelog.retention_days.unwrap_or(30).max(1) * 86_400,
                    ),
                    base_every_changes: raw
                        .changelog
                        .base_every_changes
                        .unwrap_or(1_000_000)
                        .max(1),
                    first_base_after: duration(
                        "changelog.first_base_after",
                        raw.changelog.first_base_after.clone(),
                        "0s",
                    )?,
                }),
            },
            limits: Limits {
                long_jobs_per_tenant: raw.limits.long_jobs_per_tenant.unwrap_or(2).max(1),
                long_jobs_total: raw.limits.long_jobs_total.unwrap_or(16).max(1),
                stall_timeout: duration("limits.stall_timeout", raw.limits.stall_timeout, "30s")?
                    .max(Duration::from_millis(100)),
                buffered_body_bytes: {
                    let bytes = raw.limits.buffered_body_mb.unwrap_or(256) << 20;
                    if bytes < max_body_bytes {
                        bail!("limits.buffered_body_mb must hold at least one body of api.max_body_bytes");
                    }
                    bytes
                },
                job_max_bytes_per_s: match raw.limits.job_max_mb_per_s {
                    None => None,
                    Some(rate) if rate.is_finite() && rate >= 0.0 => {
                        Some((rate * (1u64 << 20) as f64) as u64).filter(|r| *r > 0)
                    }
                    Some(_) => {
                        bail!("limits.job_max_mb_per_s must be a number of MiB/s, 0 for no cap")
                    }
                },
            },
            drills: {
                let every = duration("drills.every", raw.drills.every, "7days")?;
                let check = duration("drills.check_interval", raw.drills.check_interval, "1h")?;
                (!every.is_zero()).then_some((every, check.max(Duration::from_millis(100))))
            },
            webhooks: WebhooksConfig {
                allow_http_loopback: raw.webhooks.allow_http_loopback.unwrap_or(false),
                allow_private: raw.webhooks.allow_private.unwrap_or(false),
                retry_for: duration("webhooks.retry_for", raw.webhooks.retry_for, "24h")?,
                max_backoff: duration("webhooks.max_backoff", raw.webhooks.max_backoff, "1h")?
                    .max(Duration::from_millis(100)),
                timeout: duration("webhooks.timeout", raw.webhooks.timeout, "10s")?
                    .max(Duration::from_millis(100)),
                region_lag_alert: duration(
                    "webhooks.region_lag_alert",
                    raw.webhooks.region_lag_alert,
                    "15m",
                )?,
            },
            customer_keys: CustomerKeysConfig {
                check_interval: duration(
                    "customer_keys.check_interval",
                    raw.customer_keys.check_interval,
                    "5m",
                )?
                .max(Duration::from_millis(200)),
                unreachable_grace: duration(
                    "customer_keys.unreachable_grace",
                    raw.customer_keys.unreachable_grace,
                    "1h",
                )?,
                allow_http_loopback: raw.customer_keys.allow_http_loopback.unwrap_or(false),
                timeout: duration("customer_keys.timeout", raw.customer_keys.timeout, "5s")?
                    .max(Duration::from_millis(100)),
            },
            data_keys: DataKeysConfig {
                rotate_every: Some(duration(
                    "data_keys.rotate_every",
                    raw.data_keys.rotate_every,
                    "0s",
                )?)
                .filter(|every| !every.is_zero()),
                batch_records: match raw.data_keys.batch_records {
                    Some(0) => bail!("data_keys.batch_records must be at least 1"),
                    Some(n) => n,
                    None => 256,
                },
                batch_pause: duration("data_keys.batch_pause", raw.data_keys.batch_pause, "0s")?,
                check_interval: duration(
                    "data_keys.check_interval",
                    raw.data_keys.check_interval,
                    "1h",
                )?
                .max(Duration::from_millis(100)),
            },
            checkpoint_interval: duration(
                "audit.checkpoint_interval",
                raw.audit.checkpoint_interval,
                "2s",
            )?
            .max(Duration::from_millis(100)),
            move_purge_delay: duration(
                "move_purge_delay",
                overrides.move_purge_delay.or(raw.tenants.move_purge_delay),
                "7days",
            )?,
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
            memory_high_bytes,
            max_body_bytes,
            request_timeout: duration("request_timeout", raw.api.request_timeout, "30s")?,
        })
    }
}

/// `[hosts]`: region → the control API's base URL of that region's host.
fn fleet_hosts(
    raw: &std::collections::BTreeMap<String, String>,
) -> anyhow::Result<std::collections::BTreeMap<Region, String>> {
    let mut hosts = std::collections::BTreeMap::new();
    for (name, url) in raw {
        let region =
            Region::parse(name).with_context(|| format!("[hosts] {name:?}: not a region label"))?;
        let parsed = url::Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            .filter(|u| u.path() == "/" && u.query().is_none() && u.fragment().is_none())
            .with_context(|| {
                format!("[hosts] {name} = {url:?}: give the host's http(s)://host[:port], no path")
            })?;
        hosts.insert(region, parsed.as_str().trim_end_matches('/').to_string());
    }
    Ok(hosts)
}

/// The backup regions: `--backup-store DIR` (one directory, named after the
/// host's region), else the `[regions.*]` tables named by `backup.regions`
/// (default: all), else three directories under the data dir.
fn backup_regions(
    tables: &std::collections::BTreeMap<String, RawRegion>,
    chosen: Option<&[String]>,
    directory: Option<&Path>,
    host_region: &Region,
    data_dir: &Path,
) -> anyhow::Result<Vec<RegionSpec>> {
    if let Some(dir) = directory {
        return Ok(vec![RegionSpec {
            name: host_region.clone(),
            store: StoreSpec::Directory(dir.to_path_buf()),
            conditional_put: true,
        }]);
    }
    if tables.is_empty() {
        if chosen.is_some_and(|c| !c.is_empty()) {
            bail!("backup.regions names regions, but there is no [regions.*] table");
        }
        return Ok(["", "-2", "-3"]
            .iter()
            .map(|suffix| {
                let name = Region::parse(&format!("{}{suffix}", host_region.as_str()))
                    .expect("a valid region with a suffix is valid");
                let store = StoreSpec::Directory(data_dir.join("regions").join(name.as_str()));
                RegionSpec {
                    name,
                    store,
                    conditional_put: true,
                }
            })
            .collect());
    }
    let names: Vec<String> = match chosen {
        Some(names) => names.to_vec(),
        None => {
            // The host's own region first: restores prefer the nearest copy.
            let mut names: Vec<String> = tables.keys().cloned().collect();
            names.sort_by_key(|n| n != host_region.as_str());
            names
        }
    };
    if names.is_empty() {
        bail!("backup.regions is empty: name at least one region");
    }
    let mut specs = Vec::new();
    for name in names {
        let region = Region::parse(&name)
            .with_context(|| format!("region {name:?}: use lowercase letters, digits and '-'"))?;
        let raw = tables.get(&name).with_context(|| {
            format!("backup.regions names {name:?}, which has no [regions.{name}] table")
        })?;
        if specs.iter().any(|s: &RegionSpec| s.name == region) {
            bail!("backup.regions names {name:?} twice");
        }
        let store = store_spec(&name, raw)?;
        specs.push(RegionSpec {
            name: region,
            conditional_put: raw
                .conditional_put
                .unwrap_or(matches!(store, StoreSpec::Directory(_))),
            store,
        });
    }
    Ok(specs)
}

fn store_spec(name: &str, raw: &RawRegion) -> anyhow::Result<StoreSpec> {
    let s3_only = |what: &str, given: bool| -> anyhow::Result<()> {
        if given {
            bail!("regions.{name}.{what} applies to s3:// stores only");
        }
        Ok(())
    };
    if let Some(path) = raw.store.strip_prefix("file://") {
        s3_only("endpoint", raw.endpoint.is_some())?;
        s3_only("access_key_id", raw.access_key_id.is_some())?;
        s3_only(
            "secret_access_key_file",
            raw.secret_access_key_file.is_some(),
        )?;
        if !path.starts_with('/') {
            bail!("regions.{name}.store: file:// needs an absolute path, e.g. file:///var/lib/coffer/regions/{name}");
        }
        return Ok(StoreSpec::Directory(PathBuf::from(path)));
    }
    if let Some(rest) = raw.store.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            bail!("regions.{name}.store: s3:// needs a bucket, e.g. s3://coffer-backups");
        }
        if let Some(endpoint) = &raw.endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                bail!("regions.{name}.endpoint {endpoint:?} is not an http(s) URL");
            }
        }
        return Ok(StoreSpec::S3 {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            endpoint: raw.endpoint.clone(),
            s3_region: raw.s3_region.clone(),
            access_key_id: raw.access_key_id.clone(),
            secret_access_key_file: raw.secret_access_key_file.clone(),
        });
    }
    if raw.store.starts_with("gs://") || raw.store.starts_with("az://") {
        return Ok(StoreSpec::Other {
            url: raw.store.clone(),
        });
    }
    bail!(
        "regions.{name}.store {:?}: use s3://BUCKET, file:///PATH, gs://BUCKET or az://CONTAINER",
        raw.store
    )
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
mod tests;
