//! The `coffer` command line: argument parsing and start-up glue (the only place,
//! with `main`, that uses `anyhow` for errors that end the process).

use std::io::IsTerminal;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::api::{self, AppState};
use crate::backup::Backups;
use crate::config::{Config, Overrides};
use crate::keys;
use crate::lifecycle;
use crate::schema::Registry;
use crate::storage::{Role, Storage};

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
    /// How often the lifecycle sweeper looks for tenants to destroy, e.g. "1m".
    #[arg(long)]
    sweep_interval: Option<String>,
    /// Open tenant databases kept at once; colder ones are reopened on demand.
    #[arg(long)]
    open_tenants_max: Option<usize>,
    /// Backup store directory [default: <data-dir>/backups].
    #[arg(long)]
    backup_store: Option<PathBuf>,
    /// Backup key file (64 hex digits, 0600) [default: <data-dir>/backup.key].
    #[arg(long)]
    backup_key_file: Option<PathBuf>,
    /// Scheduled backup interval, e.g. "24h"; "0s" turns scheduled backups off.
    #[arg(long)]
    backup_interval: Option<String>,
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

fn open_backups(config: &Config) -> anyhow::Result<Backups> {
    let key = keys::load_backup_key(&config.data_dir, config.backup_key_file.as_deref())
        .context("load backup key")?;
    Backups::new(
        &config.backup_store,
        key,
        config.region.clone(),
        config.backup_retention.as_secs(),
    )
    .context("open backup store")
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::resolve(Overrides {
        listen: args.listen,
        region: args.region,
        grace_period: args.grace_period,
        sweep_interval: args.sweep_interval,
        open_tenants_max: args.open_tenants_max,
        backup_store: args.backup_store,
        backup_key_file: args.backup_key_file,
        backup_interval: args.backup_interval,
        ..overrides(args.host)
    })?;
    init_tracing();
    let (storage, schemas) = open_host(&config)?;
    write_first_operator_token(&storage, &config.data_dir)?;
    let backups = Arc::new(open_backups(&config)?);
    let storage = Arc::new(storage);
    // Blocking threads carry sled work and wait on group commit; cap them so a
    // burst of clients cannot grow the process without bound.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(128)
        .enable_all()
        .build()
        .context("start async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listen on {}", config.listen))?;
        let address = listener.local_addr()?;
        tracing::info!(%address, region = %config.region, data_dir = %config.data_dir.display(), "coffer serving");
        // One plain line on stdout, for people and for scripts that started us on port 0.
        println!("coffer listening on http://{address}");
        let sweeper = tokio::spawn(lifecycle::run_sweeper(storage.clone(), config.sweep_interval));
        let state = Arc::new(AppState::new(storage, schemas, config, backups));
        api::serve(state, listener, shutdown_signal()).await?;
        sweeper.abort();
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
    if storage.catalog.token_count() > 0 {
        return Ok(());
    }
    let (_, secret) = storage
        .issue_token(Role::Operator, None, "first operator")
        .context("mint the first operator token")?;
    let path = data_dir.join("operator.token");
    keys::write_secret(&path, format!("{secret}\n").as_bytes())?;
    tracing::info!(path = %path.display(), "wrote the first operator token (mode 0600)");
    Ok(())
}

fn rotate(host: HostArgs, pace_ms: u64) -> anyhow::Result<()> {
    let config = Config::resolve(overrides(host))?;
    let (storage, _) = open_host(&config)?;
    let show_progress = std::io::stderr().is_terminal();
    let report = keys::rotate(&storage, &config.key_source, |done, total| {
        if show_progress {
            eprint!("\rre-wrapped {done}/{total} tenant keys");
        }
        if pace_ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(pace_ms));
        }
    })?;
    if show_progress {
        eprintln!();
    }
    println!(
        "master key rotated: new key {}, {} tenant keys re-wrapped, {} old key(s) retired",
        report.new_kek_id,
        report.rewrapped,
        report.retired.len()
    );
    Ok(())
}
