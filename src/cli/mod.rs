//! The `coffer` command line: argument parsing and start-up glue (the only place,
//! with `main`, that uses `anyhow` for errors that end the process).
//!
//! One file per command: `serve`, `backup`, `tokens`, `audit`, `keys`, and
//! `moving` (`coffer tenant move`); the argument types and what they share
//! (opening a host, tracing) are here.

use std::io::IsTerminal;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

mod audit;
mod backup;
mod moving;
mod progress;
mod rotate;
mod serve;
mod systemd;
mod tokens;

/// JSON output when asked for, or when stdout is not a terminal (a pipe or a
/// file: a script is reading).
fn machine_output(flag: bool) -> bool {
    flag || !std::io::stdout().is_terminal()
}

use crate::config::{Config, Overrides};
use crate::keys;
use crate::schema::Registry;
use crate::storage::Storage;

#[derive(Parser, Debug)]
#[command(
    name = "coffer",
    version,
    about = "Encrypted multi-tenant customer database host"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the host.
    Serve(ServeArgs),
    /// Master key management.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Backup tooling: export, list, restore (against a running host), verify (offline).
    Backup {
        #[command(subcommand)]
        command: BackupCommand,
    },
    /// Tenant operations across hosts.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// The tamper-evident audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Tokens and staff identities: add an operator offline, list, revoke.
    Tokens {
        #[command(subcommand)]
        command: TokensCommand,
    },
}

#[derive(Subcommand, Debug)]
enum TokensCommand {
    /// On the stopped host: add a staff identity (or a token of an existing
    /// one) and print its token once. The only way besides the first start
    /// to add an operator without a second operator's approval: whoever
    /// runs it holds the disk.
    Add {
        #[command(flatten)]
        host: HostArgs,
        /// operator, support or backup-agent.
        #[arg(long)]
        role: String,
        /// The identity (person) the token belongs to.
        #[arg(long)]
        name: String,
    },
    /// The tokens this token may manage (GET /v1/tokens).
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// Revoke a token at once (DELETE /v1/tokens/{id}).
    Revoke {
        #[command(flatten)]
        remote: Remote,
        /// The token's id (from `coffer tokens list`), never the token.
        #[arg(long)]
        id: String,
    },
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Check the whole log of a host (`--data-dir`), or a tenant's proof
    /// bundle (`--bundle`) offline. Exit 0 with a summary, or non-zero naming
    /// the first thing wrong.
    Verify {
        /// A host's data directory: every entry and every checkpoint.
        #[arg(long, conflicts_with = "bundle")]
        data_dir: Option<PathBuf>,
        /// Also check the checkpoint copies in this config's backup regions.
        #[arg(long, requires = "data_dir")]
        config: Option<PathBuf>,
        /// A proof bundle from GET /v1/tenants/{id}/audit-proof.
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// The host's verifier key (or a file holding it); default for
        /// --data-dir: <data-dir>/audit/public.key. Required with --bundle.
        #[arg(long)]
        public_key: Option<String>,
        /// With --bundle: a tree size and root (hex) you recorded before,
        /// "SIZE:ROOT"; the bundle must prove it a prefix of its tree.
        #[arg(long, requires = "bundle")]
        seen: Option<String>,
        /// With --data-dir: entries not yet under a signed checkpoint (an
        /// unsigned tail, as a crash leaves) are an error, not a warning.
        #[arg(long, requires = "data_dir")]
        strict: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum TenantCommand {
    /// Move a tenant to a host in another region: pause writes, back up,
    /// restore on the target from a shared backup region, compare counts,
    /// switch. The source purges its copy after its move_purge_delay.
    Move {
        #[arg(long)]
        tenant: String,
        /// The source host.
        #[arg(long)]
        from: String,
        /// Token on the source (the tenant's admin, or an operator), mode 0600.
        #[arg(long)]
        from_token_file: PathBuf,
        /// The target host.
        #[arg(long)]
        to: String,
        /// Token on the target (an operator or backup agent), mode 0600.
        #[arg(long)]
        to_token_file: PathBuf,
        /// The backup region the target restores from [default: the target's
        /// own region]; it must be one of the source's backup regions.
        #[arg(long)]
        via: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        transport: TransportArgs,
    },
}

/// How the CLI reaches a host over the network.
#[derive(Args, Debug, Clone, Default)]
struct TransportArgs {
    /// PEM certificate(s) to trust for https (a private CA, or the host's own
    /// self-signed certificate) [default: the system's roots].
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Allow plain http to a host that is not this machine (the token would
    /// cross the network unencrypted).
    #[arg(long)]
    insecure_http: bool,
}

#[derive(Args, Debug)]
struct Remote {
    /// The host, e.g. https://coffer.example:7070 (plain http only to loopback).
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    url: String,
    #[command(flatten)]
    transport: TransportArgs,
    /// File holding the bearer token (mode 0600).
    #[arg(long)]
    token_file: PathBuf,
    /// Print machine-readable JSON instead of a sentence (the default when
    /// stdout is not a terminal).
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum BackupCommand {
    /// Download a tenant's portable export (tar + zstd) to a file.
    Export {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        tenant: String,
        /// Output file [default: coffer-<tenant>.tar.zst].
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Every tenant's newest restore drill (GET /v1/drills; operators).
    Drills {
        #[command(flatten)]
        remote: Remote,
    },
    /// List a tenant's backups and their state per region.
    List {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        tenant: String,
    },
    /// Restore a backup into a new tenant; without --backup, the newest
    /// backup plus the change log, up to --at or --sequence (default: as far
    /// as the log goes).
    Restore {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        tenant: String,
        #[arg(long, conflicts_with_all = ["at", "sequence"])]
        backup: Option<String>,
        /// Point in time, RFC 3339 (e.g. 2026-12-02T14:05:00Z).
        #[arg(long, conflicts_with = "sequence")]
        at: Option<String>,
        /// The tenant's write sequence to stop at.
        #[arg(long)]
        sequence: Option<u64>,
        /// Name of the new tenant.
        #[arg(long)]
        name: String,
        /// Backup region to read from.
        #[arg(long)]
        region: Option<String>,
    },
    /// Check an archive file without restoring it: every hash, every sealed chunk,
    /// the manifest's counts and the schema.
    Verify {
        file: PathBuf,
        /// Backup key, for a sealed DR backup.
        #[arg(long)]
        backup_key_file: Option<PathBuf>,
        /// Decompressed bytes accepted at most.
        #[arg(long, default_value_t = 64 << 30)]
        max_bytes: u64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug, Default)]
struct HostArgs {
    /// TOML configuration file (see ops/config/).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory [default: ./coffer-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Master key file (64 hex digits, mode 0600) instead of the data-dir keyring.
    #[arg(long)]
    master_key_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct ServeArgs {
    #[command(flatten)]
    host: HostArgs,
    /// Address to listen on [default: 127.0.0.1:7070].
    #[arg(long)]
    listen: Option<String>,
    /// Serve `GET /metrics` (Prometheus text format, no authentication) on
    /// this address, e.g. 127.0.0.1:9470 [default: not served].
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Serve the API over TLS with this PEM certificate chain (with --tls-key).
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// The certificate's PEM private key; the file must be mode 0600.
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// The region this host serves [default: local].
    #[arg(long)]
    region: Option<String>,
    /// Time between removal request and destruction, e.g. "21days", "2s".
    #[arg(long)]
    grace_period: Option<String>,
    /// How long a tenant moved to another host stays here before it is purged.
    #[arg(long)]
    move_purge_delay: Option<String>,
    /// How often the lifecycle sweeper looks for tenants to destroy, e.g. "1m".
    #[arg(long)]
    sweep_interval: Option<String>,
    /// Open tenant databases kept at once; colder ones are reopened on demand.
    #[arg(long)]
    open_tenants_max: Option<usize>,
    /// One local directory as the only backup region (named after --region),
    /// instead of the config's [regions.*] or the three default directories.
    #[arg(long)]
    backup_store: Option<PathBuf>,
    /// Backup key file (64 hex digits, 0600) [default: <data-dir>/backup.key].
    #[arg(long)]
    backup_key_file: Option<PathBuf>,
    /// Scheduled backup interval, e.g. "24h"; "0s" turns scheduled backups off.
    #[arg(long)]
    backup_interval: Option<String>,
    /// How long backups are kept, e.g. "365days" [default: backup.retention_days].
    #[arg(long)]
    backup_retention: Option<String>,
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// Re-wrap every tenant's data key under a new master key (host stopped;
    /// on a running host use POST /v1/keys/rotate).
    Rotate {
        #[command(flatten)]
        host: HostArgs,
        /// Pause between tenants, to spread the catalog writes on a busy disk.
        #[arg(long, default_value_t = 0)]
        pace_ms: u64,
    },
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::serve(args),
        Command::Keys {
            command: KeysCommand::Rotate { host, pace_ms },
        } => rotate::rotate(host, pace_ms),
        Command::Backup { command } => backup::backup(command),
        Command::Tokens { command } => tokens::tokens_command(command),
        Command::Audit {
            command:
                AuditCommand::Verify {
                    data_dir,
                    config,
                    bundle,
                    public_key,
                    seen,
                    strict,
                    json,
                },
        } => audit::audit_verify(data_dir, config, bundle, public_key, seen, strict, json),
        Command::Tenant {
            command:
                TenantCommand::Move {
                    tenant,
                    from,
                    from_token_file,
                    to,
                    to_token_file,
                    via,
                    json,
                    transport,
                },
        } => {
            let source = remote_client(&Remote {
                url: from.clone(),
                transport: transport.clone(),
                token_file: from_token_file,
                json,
            })?;
            let target = remote_client(&Remote {
                url: to.clone(),
                transport,
                token_file: to_token_file,
                json,
            })?;
            let bar = progress::steps(json);
            let report =
                moving::move_tenant(&source, &target, &to, &tenant, via.as_deref(), &|step| {
                    bar.set_message(step.to_string())
                });
            bar.finish_and_clear();
            let report = report?;
            if machine_output(json) {
                println!("{report}");
            } else {
                println!(
                    "moved tenant {tenant} to region {} at {to} ({} records); the source purges its copy after {}",
                    report["region"].as_str().unwrap_or("?"),
                    report["records"],
                    report["source_purges_after"].as_str().unwrap_or("its delay"),
                );
            }
            Ok(())
        }
    }
}

fn overrides(host: HostArgs) -> Overrides {
    Overrides {
        config_file: host.config,
        data_dir: host.data_dir,
        master_key_file: host.master_key_file,
        ..Overrides::default()
    }
}

fn init_tracing() {
    let level = std::env::var("COFFER_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false);
    // COFFER_LOG_FORMAT=json: one JSON object per line, for a log collector
    // (timestamp, level, fields, and the request span's id, method, path).
    match std::env::var("COFFER_LOG_FORMAT").as_deref() {
        Ok("json") => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        Ok("text") | Ok("") | Err(_) => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        Ok(other) => {
            builder.init();
            tracing::warn!(
                format = other,
                "COFFER_LOG_FORMAT is json or text; writing text"
            );
        }
    }
}

/// Opens the data directory: keyring, schemas, catalog and tenant pool.
fn open_host(config: &Config) -> anyhow::Result<(Storage, Registry)> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("create data directory {}", config.data_dir.display()))?;
    std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restrict data directory {}", config.data_dir.display()))?;
    let keyring = keys::load(&config.data_dir, &config.key_source).context("load master key")?;
    let schemas = Registry::embedded().context("load embedded tenant schemas")?;
    let storage = Storage::open(
        &config.data_dir,
        keyring,
        config.open_tenants_max,
        config.tenant_cache_bytes,
    )
    .map_err(|e| {
        if e.to_string().contains("lock") {
            anyhow::anyhow!(
                "data directory {} is in use by another coffer process",
                config.data_dir.display()
            )
        } else {
            anyhow::Error::new(e).context("open data directory")
        }
    })?;
    let quarter = crate::memory::available_bytes().map_or(u64::MAX, |bytes| bytes / 4);
    storage.set_memory_high(config.memory_high_bytes.unwrap_or(quarter));
    Ok((storage, schemas))
}

fn remote_client(remote: &Remote) -> anyhow::Result<crate::client::Client> {
    keys::check_private(&remote.token_file)?;
    let token = std::fs::read_to_string(&remote.token_file)
        .with_context(|| format!("read token file {}", remote.token_file.display()))?;
    crate::client::Client::with_transport(
        &remote.url,
        Some(token.trim().to_string()),
        std::time::Duration::from_secs(300),
        &crate::client::Transport {
            ca_file: remote.transport.ca_file.clone(),
            insecure_http: remote.transport.insecure_http,
        },
    )
}
