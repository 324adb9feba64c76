//! The `coffer` command line: argument parsing and start-up glue (the only place,
//! with `main`, that uses `anyhow` for errors that end the process).
//!
//! Over 800 lines because every command's handler still lives here; one file
//! per command (serve, backup, audit, tokens, keys) is the open part of the
//! structure work.

use std::io::IsTerminal;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

mod moving;
mod progress;

/// JSON output when asked for, or when stdout is not a terminal (a pipe or a
/// file: a script is reading).
fn machine_output(flag: bool) -> bool {
    flag || !std::io::stdout().is_terminal()
}

use crate::api::{self, AppState};
use crate::audit::note::Verifier;
use crate::config::{Config, Overrides};
use crate::keys;
use crate::lifecycle;
use crate::replication::{Backoff, RegionStore, Replication, Replicator};
use crate::schema::Registry;
use crate::service::Backups;
use crate::storage::{Role, Storage, FIRST_OPERATOR};

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
    },
}

#[derive(Args, Debug)]
struct Remote {
    /// The host, e.g. http://127.0.0.1:7070.
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    url: String,
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
    /// List a tenant's backups and their state per region.
    List {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        tenant: String,
    },
    /// Restore a backup into a new tenant.
    Restore {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        backup: String,
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
        Command::Serve(args) => serve(args),
        Command::Keys {
            command: KeysCommand::Rotate { host, pace_ms },
        } => rotate(host, pace_ms),
        Command::Backup { command } => backup(command),
        Command::Tokens { command } => tokens_command(command),
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
        } => audit_verify(data_dir, config, bundle, public_key, seen, strict, json),
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
                },
        } => {
            let source = remote_client(&Remote {
                url: from.clone(),
                token_file: from_token_file,
                json,
            })?;
            let target = remote_client(&Remote {
                url: to.clone(),
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

fn tokens_command(command: TokensCommand) -> anyhow::Result<()> {
    match command {
        TokensCommand::Add { host, role, name } => {
            let role = match role.as_str() {
                "operator" => Role::Operator,
                "support" => Role::Support,
                "backup-agent" => Role::BackupAgent,
                other => anyhow::bail!("--role {other:?}: use operator, support or backup-agent"),
            };
            let name = name.trim();
            if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
                anyhow::bail!("--name must be 1 to 200 printable characters");
            }
            let config = Config::resolve(overrides(host))?;
            let (storage, _) = open_host(&config)?;
            // Audited like every token: no durable entry, no token.
            let audit = crate::audit::AuditLog::open(&config.data_dir, config.region.as_str())
                .context("open the audit log")?;
            audit
                .append(
                    crate::audit::Event::new(
                        "token.added-offline",
                        crate::audit::Actor {
                            role: "operator".into(),
                            token: None,
                            identity: Some(crate::storage::DATA_DIR_CREATOR.into()),
                        },
                    )
                    .detail("role", role.as_str())
                    .detail("identity", name),
                )
                .map_err(|e| anyhow::anyhow!("{e}; no token was added"))?;
            audit.checkpoint().map_err(|e| anyhow::anyhow!("{e}"))?;
            let minted = crate::tokens::add_offline(&storage, role, name)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            // The secret goes to stdout once; nothing else is printed there.
            println!("{}", minted.secret);
            eprintln!(
                "added a {} token (id {}) for identity {name:?}; it is shown once",
                role.as_str(),
                minted.token.id
            );
            Ok(())
        }
        TokensCommand::List { remote } => {
            let client = remote_client(&remote)?;
            let listing = client.json("GET", "/v1/tokens", None)?;
            if machine_output(remote.json) {
                println!("{listing}");
            } else {
                for t in listing["tokens"].as_array().into_iter().flatten() {
                    println!(
                        "{}  {:<12} {:<18} {:<24} created {}  last used {}  expires {}",
                        t["id"].as_str().unwrap_or(""),
                        t["role"].as_str().unwrap_or(""),
                        t["state"].as_str().unwrap_or(""),
                        t["identity"].as_str().or(t["name"].as_str()).unwrap_or(""),
                        t["created"].as_str().unwrap_or(""),
                        t["last_used"].as_str().unwrap_or("never"),
                        t["expires_at"].as_str().unwrap_or("never"),
                    );
                }
            }
            Ok(())
        }
        TokensCommand::Revoke { remote, id } => {
            if crate::ids::TokenId::parse(&id).is_none() {
                anyhow::bail!(
                    "--id {id:?}: a token id is 32 lowercase hex digits (see `coffer tokens list`)"
                );
            }
            let client = remote_client(&remote)?;
            let revoked = client.json("DELETE", &format!("/v1/tokens/{id}"), None)?;
            if machine_output(remote.json) {
                println!("{revoked}");
            } else {
                println!("token {id} revoked");
            }
            Ok(())
        }
    }
}

fn remote_client(remote: &Remote) -> anyhow::Result<crate::client::Client> {
    keys::check_private(&remote.token_file)?;
    let token = std::fs::read_to_string(&remote.token_file)
        .with_context(|| format!("read token file {}", remote.token_file.display()))?;
    crate::client::Client::new(
        &remote.url,
        Some(token.trim().to_string()),
        std::time::Duration::from_secs(300),
    )
}

fn backup(command: BackupCommand) -> anyhow::Result<()> {
    match command {
        BackupCommand::Verify {
            file,
            backup_key_file,
            max_bytes,
            json,
        } => {
            let key = backup_key_file
                .as_deref()
                .map(keys::read_key_file)
                .transpose()?;
            let schemas = Registry::embedded()?;
            let limits = crate::backup::format::Limits {
                max_total_bytes: max_bytes,
                ..Default::default()
            };
            let report = crate::backup::verify_file(&file, key.as_ref(), &schemas, limits)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "ok: {} of tenant {} ({} v{}): {} records in {} collections, {} bytes unpacked",
                    report.kind,
                    report.tenant,
                    report.schema,
                    report.schema_version,
                    report.records,
                    report.collections.len(),
                    report.decompressed_bytes
                );
            }
            Ok(())
        }
        BackupCommand::Export {
            remote,
            tenant,
            output,
        } => {
            let client = remote_client(&remote)?;
            let output =
                output.unwrap_or_else(|| PathBuf::from(format!("coffer-{tenant}.tar.zst")));
            let path = format!("/v1/tenants/{tenant}/export");
            let mut response = client.request("GET", &path, None)?;
            if response.status != 200 {
                let mut text = Vec::new();
                response.copy_body(&mut text, |_| {})?;
                let value: serde_json::Value = serde_json::from_slice(&text).unwrap_or_default();
                anyhow::bail!(
                    "export: {} {}",
                    response.status,
                    value["error"].as_str().unwrap_or("")
                );
            }
            let partial = output.with_extension("partial");
            let mut file = std::fs::File::create(&partial)
                .with_context(|| format!("create {}", partial.display()))?;
            let bar = progress::bytes("exporting", remote.json);
            let result = response.copy_body(&mut file, |bytes| bar.set_position(bytes));
            bar.finish_and_clear();
            let bytes = match result {
                Ok(bytes) => bytes,
                Err(error) => {
                    let _ = std::fs::remove_file(&partial);
                    return Err(error);
                }
            };
            file.sync_all()?;
            std::fs::rename(&partial, &output)?;
            if machine_output(remote.json) {
                println!("{}", serde_json::json!({"file": output, "bytes": bytes}));
            } else {
                println!(
                    "exported tenant {tenant} to {} ({bytes} bytes)",
                    output.display()
                );
            }
            Ok(())
        }
        BackupCommand::List { remote, tenant } => {
            let client = remote_client(&remote)?;
            let value = client.json("GET", &format!("/v1/tenants/{tenant}/backups"), None)?;
            if machine_output(remote.json) {
                println!("{value}");
            } else {
                for b in value["backups"].as_array().into_iter().flatten() {
                    let regions: Vec<String> = b["regions"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(r, s)| format!("{r}={}", s["state"].as_str().unwrap_or("?")))
                        .collect();
                    println!(
                        "{}  {}  {:<8} {:<10} records={} {}",
                        b["id"].as_str().unwrap_or(""),
                        b["created_at"].as_str().unwrap_or(""),
                        b["state"].as_str().unwrap_or(""),
                        b["kind"].as_str().unwrap_or(""),
                        b["records"],
                        regions.join(" ")
                    );
                }
            }
            Ok(())
        }
        BackupCommand::Restore {
            remote,
            tenant,
            backup,
            name,
            region,
        } => {
            let client = remote_client(&remote)?;
            let mut body = serde_json::json!({ "name": name });
            if let Some(region) = region {
                body["region"] = serde_json::Value::from(region);
            }
            let value = client.json(
                "POST",
                &format!("/v1/tenants/{tenant}/backups/{backup}/restore"),
                Some(&body),
            )?;
            if machine_output(remote.json) {
                println!("{value}");
            } else {
                println!(
                    "restored backup {backup} into new tenant {}{}",
                    value["id"].as_str().unwrap_or("?"),
                    match value["admin_token"].as_str() {
                        Some(token) => format!("; admin token (shown once): {token}"),
                        None => "; its admins are the source tenant's admins".into(),
                    }
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
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
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
    Ok((storage, schemas))
}

fn open_backups(config: &Config, runtime: tokio::runtime::Handle) -> anyhow::Result<Backups> {
    let key = keys::load_backup_key(&config.data_dir, config.backup_key_file.as_deref())
        .context("load backup key")?;
    let regions = config
        .backup_regions
        .iter()
        .map(|spec| RegionStore::open(spec).with_context(|| format!("backup region {}", spec.name)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let replication = Replication::new(
        regions,
        Backoff {
            base: config.retry_base,
            cap: config.retry_cap,
        },
        runtime,
    );
    let mut backups = Backups::new(
        &config.backup_spool,
        Arc::new(replication),
        key,
        config.region.clone(),
        config.backup_retention.as_secs(),
    )
    .context("open backup store")?;
    backups.limits.max_total_bytes = config.max_archive_bytes;
    backups.max_rate = config.limits.job_max_bytes_per_s;
    Ok(backups)
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::resolve(Overrides {
        listen: args.listen,
        region: args.region,
        grace_period: args.grace_period,
        move_purge_delay: args.move_purge_delay,
        sweep_interval: args.sweep_interval,
        open_tenants_max: args.open_tenants_max,
        backup_store: args.backup_store,
        backup_key_file: args.backup_key_file,
        backup_interval: args.backup_interval,
        backup_retention: args.backup_retention,
        ..overrides(args.host)
    })?;
    init_tracing();
    let (storage, schemas) = open_host(&config)?;
    write_first_operator_token(&storage, &config.data_dir)?;
    let storage = Arc::new(storage);
    // Blocking threads carry sled work and wait on group commit; cap them so a
    // burst of clients cannot grow the process without bound.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(128)
        .enable_all()
        .build()
        .context("start async runtime")?;
    let backups = Arc::new(open_backups(&config, runtime.handle().clone())?);
    let audit = Arc::new(
        crate::audit::AuditLog::open(&config.data_dir, config.region.as_str())
            .context("open the audit log")?,
    );
    // Entries a crash left unsigned are covered before anything else happens.
    audit
        .checkpoint()
        .context("sign the audit log's checkpoint")?;
    backups.recover(&storage);
    for region in &backups.replication.regions {
        tracing::info!(region = %region.name, store = %region.location, "backup region");
    }
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listen on {}", config.listen))?;
        let address = listener.local_addr()?;
        tracing::info!(%address, region = %config.region, data_dir = %config.data_dir.display(), "coffer serving");
        // One plain line on stdout, for people and for scripts that started us on port 0.
        println!("coffer listening on http://{address}");
        let mut background = crate::tasks::Background::new();
        {
            let (storage, audit, every) = (storage.clone(), audit.clone(), config.sweep_interval);
            background.spawn("sweeper", move |stop| lifecycle::run_sweeper(storage, audit, every, stop));
        }
        {
            let (backups, storage, schemas, audit) = (backups.clone(), storage.clone(), schemas.clone(), audit.clone());
            let default = config.backup_interval;
            background.spawn("scheduler", move |stop| {
                crate::service::scheduler::run_scheduler(backups, storage, schemas, audit, default, stop)
            });
        }
        {
            let replicator = Replicator {
                replication: backups.replication.clone(),
                storage: storage.clone(),
                spool: backups.spool.clone(),
                parallel: 6,
                retention_sweep: config.sweep_interval,
                etags: Default::default(),
            };
            background.spawn("replicator", move |stop| replicator.run(stop));
        }
        {
            let (audit, replication, every) = (audit.clone(), backups.replication.clone(), config.checkpoint_interval);
            background.spawn("checkpointer", move |stop| {
                crate::service::checkpoints::run_checkpointer(audit, replication, every, stop)
            });
        }
        let state = Arc::new(AppState::new(storage, schemas, config, backups.clone(), audit.clone()));
        api::serve(state, listener, shutdown_signal()).await?;
        // Each loop ends between two steps; a backup round or an upload in
        // flight finishes first.
        background.stop(std::time::Duration::from_secs(10)).await;
        // A last checkpoint covers every acknowledged entry, here and in the regions.
        match audit.checkpoint() {
            Ok(Some((size, note))) => {
                let regions = backups.replication.regions.iter().map(|r| r.name.to_string()).collect();
                let mut unshipped = vec![(size, note, regions)];
                let _ = tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    crate::service::checkpoints::ship(&audit, &backups.replication, &mut unshipped),
                )
                .await;
            }
            Ok(None) => {}
            Err(error) => tracing::error!(%error, "final audit checkpoint"),
        }
        Ok(())
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(error) => {
            tracing::error!(%error, "install SIGTERM handler");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

/// On a new data directory, mints the first operator token into
/// `<data-dir>/operator.token` (0600) and says where it is.
fn write_first_operator_token(storage: &Storage, data_dir: &Path) -> anyhow::Result<()> {
    // Keyed on the first operator's identity, not on "no tokens": an
    // operator added offline before the first start does not replace it.
    if storage.catalog.identity(FIRST_OPERATOR).is_some() {
        return Ok(());
    }
    let minted = crate::tokens::add_offline(storage, Role::Operator, FIRST_OPERATOR)
        .context("mint the first operator token")?;
    let secret = minted.secret;
    let path = data_dir.join("operator.token");
    keys::write_secret(&path, format!("{secret}\n").as_bytes())?;
    tracing::info!(path = %path.display(), "wrote the first operator token (mode 0600)");
    Ok(())
}

fn verifier_key(given: Option<&str>, default_file: Option<PathBuf>) -> anyhow::Result<Verifier> {
    let text = match (given, default_file) {
        (Some(text), _) if Path::new(text).is_file() => std::fs::read_to_string(text)?,
        (Some(text), _) => text.to_string(),
        (None, Some(file)) => {
            std::fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?
        }
        (None, None) => anyhow::bail!("give the host's key with --public-key"),
    };
    Verifier::parse(text.trim()).map_err(|e| anyhow::anyhow!("public key: {e}"))
}

fn audit_verify(
    data_dir: Option<PathBuf>,
    config: Option<PathBuf>,
    bundle: Option<PathBuf>,
    public_key: Option<String>,
    seen: Option<String>,
    strict: bool,
    json: bool,
) -> anyhow::Result<()> {
    use crate::audit::verify;
    if let Some(file) = bundle {
        let verifier = verifier_key(public_key.as_deref(), None)?;
        let text = std::fs::read(&file).with_context(|| format!("read {}", file.display()))?;
        let bundle: verify::Bundle = serde_json::from_slice(&text)
            .map_err(|e| anyhow::anyhow!("{}: not a proof bundle: {e}", file.display()))?;
        let previous = match seen {
            None => None,
            Some(text) => {
                let (size, root) = text.split_once(':').context("--seen is SIZE:ROOT")?;
                let root: [u8; 32] = crate::crypto::decode_hex(root)
                    .and_then(|b| b.try_into().ok())
                    .context("--seen ROOT is 64 hex digits")?;
                Some((
                    size.parse::<u64>().context("--seen SIZE is a number")?,
                    root,
                ))
            }
        };
        let report = verify::verify_bundle(&bundle, &verifier, previous)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        if machine_output(json) {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            println!(
                "ok: {} entries of tenant {} proven in the signed log of {} entries{}",
                report.entries,
                report.tenant,
                report.size,
                if report.consistency > 0 {
                    ", consistent with the sizes seen before"
                } else {
                    ""
                }
            );
        }
        return Ok(());
    }
    let data_dir =
        data_dir.context("give --data-dir (a host's log) or --bundle (a tenant's proofs)")?;
    let audit_dir = data_dir.join("audit");
    let verifier = verifier_key(public_key.as_deref(), Some(audit_dir.join("public.key")))?;
    let mut copies = Vec::new();
    if let Some(config_file) = config {
        let config = Config::resolve(Overrides {
            config_file: Some(config_file),
            data_dir: Some(data_dir.clone()),
            ..Default::default()
        })?;
        let origin =
            std::fs::read_to_string(audit_dir.join("origin")).context("read the log's origin")?;
        let dir = crate::audit::region_checkpoint_dir(origin.trim());
        let parts: Vec<&str> = dir.iter().map(String::as_str).collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        for spec in &config.backup_regions {
            let store = RegionStore::open(spec)?;
            let names = runtime
                .block_on(store.list_names(&parts))
                .map_err(|e| anyhow::anyhow!("region {}: {e}", spec.name))?;
            for name in names {
                let mut object = parts.clone();
                object.push(&name);
                let bytes = runtime
                    .block_on(store.get_bytes(&store.path(&object)))
                    .map_err(|e| anyhow::anyhow!("region {}: {e}", spec.name))?;
                copies.push((
                    format!("checkpoint {name} in region {}", spec.name),
                    String::from_utf8_lossy(&bytes).into_owned(),
                ));
            }
        }
    }
    let report = verify::verify_log(&audit_dir, &verifier, &copies)
        .map_err(|e| anyhow::anyhow!("{}: {e}", audit_dir.display()))?;
    if let Some((first, last)) = report.unsigned {
        let what = format!(
            "entries {first}..{last} are chained but not yet under a signed checkpoint (appended after the newest one, e.g. before a crash; the host signs them at its next start)"
        );
        if strict {
            anyhow::bail!("{}: {what}", audit_dir.display());
        }
        eprintln!("warning: {what}");
    }
    if machine_output(json) {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        match report.unsigned {
            None => println!(
                "ok: {} entries, every one chained and covered by {} signed checkpoints (newest: {})",
                report.entries, report.checkpoints, report.newest_checkpoint
            ),
            Some((first, last)) => println!(
                "ok: {} entries, every one chained; {} signed checkpoints cover entries below {} (unsigned tail {first}..{last})",
                report.entries, report.checkpoints, report.newest_checkpoint
            ),
        }
    }
    Ok(())
}

fn rotate(host: HostArgs, pace_ms: u64) -> anyhow::Result<()> {
    let config = Config::resolve(overrides(host))?;
    let (storage, _) = open_host(&config)?;
    // Audited like the online rotation: no durable entry, no rotation.
    let audit = crate::audit::AuditLog::open(&config.data_dir, config.region.as_str())
        .context("open the audit log")?;
    audit
        .append(crate::audit::Event::new(
            "keys.rotated",
            crate::audit::Actor {
                role: "operator".into(),
                token: None,
                identity: Some(crate::storage::DATA_DIR_CREATOR.into()),
            },
        ))
        .map_err(|e| anyhow::anyhow!("{e}; the key was not rotated"))?;
    audit.checkpoint().map_err(|e| anyhow::anyhow!("{e}"))?;
    let bar = progress::count("re-wrapping tenant keys", false);
    let report =
        crate::service::key_rotation::rotate(&storage, &config.key_source, |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            if pace_ms > 0 {
                std::thread::sleep(std::time::Duration::from_millis(pace_ms));
            }
        });
    bar.finish_and_clear();
    let report = report?;
    println!(
        "master key rotated: new key {}, {} tenant keys re-wrapped, {} old key(s) retired",
        report.new_kek_id,
        report.rewrapped,
        report.retired.len()
    );
    Ok(())
}
