//! `coffer serve`: open the host, start the API and the background work, stop on a signal.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use crate::api::{self, AppState};
use crate::config::{Config, Overrides};
use crate::keys;
use crate::lifecycle;
use crate::replication::{Backoff, RegionStore, Replication, Replicator};
use crate::service::changelog::{ChangeLog, LogSettings};
use crate::service::Backups;
use crate::storage::{Role, Storage, FIRST_OPERATOR};

use super::*;

pub(super) fn open_backups(
    config: &Config,
    runtime: tokio::runtime::Handle,
) -> anyhow::Result<Backups> {
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

pub(super) fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::resolve(Overrides {
        listen: args.listen,
        metrics_listen: args.metrics_listen,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
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
    if config.metrics_listen.is_some() {
        crate::metrics::enable();
    }
    let tls = match &config.tls {
        Some((cert, key)) => {
            keys::check_private(key).context("the TLS key file")?;
            Some(api::tls::server_config(cert, key)?)
        }
        None => None,
    };
    let (storage, schemas) = open_host(&config)?;
    let keep_logs = config.changelog.is_some() && !config.backup_regions.is_empty();
    if keep_logs {
        storage.keep_change_logs();
    }
    write_first_operator_token(&storage, &config.data_dir)?;
    let storage = Arc::new(storage);
    // Blocking threads carry sled work and wait on group commit; cap them so a
    // burst of clients cannot grow the process without bound.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(128)
        .enable_all()
        .build()
        .context("start async runtime")?;
    let mut backups = open_backups(&config, runtime.handle().clone())?;
    let audit = Arc::new(
        super::systemd::extending_start_timeout("opening the audit log", || {
            crate::audit::AuditLog::open(&config.data_dir, config.region.as_str())
        })
        .context("open the audit log")?,
    );
    // Entries a crash left unsigned are covered before anything else happens.
    audit
        .checkpoint()
        .context("sign the audit log's checkpoint")?;
    backups.audit = Some(audit.clone());
    // Tenants' own keys: set before anything opens a tenant.
    let customer_keys = Arc::new(crate::service::customer_keys::CustomerKeys::new(
        storage.clone(),
        audit.clone(),
        crate::service::customer_keys::CustomerKeySettings {
            check_interval: config.customer_keys.check_interval,
            unreachable_grace: config.customer_keys.unreachable_grace,
            allow_http_loopback: config.customer_keys.allow_http_loopback,
            timeout: config.customer_keys.timeout,
        },
    ));
    storage.set_key_service(customer_keys.clone());
    backups.outer = Some(customer_keys.clone());
    let backups = Arc::new(backups);
    backups.recover(&storage);
    let changelog = match (&config.changelog, keep_logs) {
        (Some(settings), true) => {
            let log = Arc::new(ChangeLog::new(
                storage.clone(),
                backups.clone(),
                schemas.clone(),
                LogSettings {
                    segment_after: settings.segment_after,
                    segment_bytes: settings.segment_bytes,
                    replicated_regions: settings.replicated_regions,
                    replicated_timeout: settings.replicated_timeout,
                    retention_secs: settings.retention.as_secs(),
                    sweep_every: config.sweep_interval,
                    base_every_changes: settings.base_every_changes,
                    first_base_after: settings.first_base_after,
                },
            ));
            log.recover();
            Some(log)
        }
        _ => None,
    };
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
        let scheme = if tls.is_some() { "https" } else { "http" };
        println!("coffer listening on {scheme}://{address}");
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
            };
            background.spawn("replicator", move |stop| replicator.run(stop));
        }
        {
            let (audit, replication, every) = (audit.clone(), backups.replication.clone(), config.checkpoint_interval);
            background.spawn("checkpointer", move |stop| {
                crate::service::checkpoints::run_checkpointer(audit, replication, every, stop)
            });
        }
        if let Some(log) = changelog.clone() {
            background.spawn("changelog", move |stop| log.run(stop));
        }
        {
            let running = customer_keys.clone();
            background.spawn("customer-keys", move |stop| running.run_loop(stop));
        }
        let data_keys = {
            let settings = crate::service::data_keys::DataKeySettings {
                rotate_every: config.data_keys.rotate_every,
                batch: config.data_keys.batch_records,
                pause: config.data_keys.batch_pause,
                check: config.data_keys.check_interval,
            };
            let service = Arc::new(crate::service::data_keys::DataKeys::new(
                storage.clone(),
                schemas.clone(),
                audit.clone(),
                settings,
            ));
            let running = service.clone();
            background.spawn("data-keys", move |stop| running.run_loop(stop));
            service
        };
        let webhooks = {
            let settings = crate::service::webhooks::WebhookSettings {
                allow_http_loopback: config.webhooks.allow_http_loopback,
                allow_private: config.webhooks.allow_private,
                retry_for: config.webhooks.retry_for,
                max_backoff: config.webhooks.max_backoff,
                timeout: config.webhooks.timeout,
                region_lag_alert: config.webhooks.region_lag_alert,
            };
            let service = Arc::new(
                crate::service::webhooks::Webhooks::new(storage.clone(), audit.clone(), settings)
                    .watching(backups.replication.clone()),
            );
            service
                .start_cursor()
                .context("start the webhook dispatcher's cursor")?;
            let running = service.clone();
            background.spawn("webhooks", move |stop| running.run(stop));
            service
        };
        if let Some((every, check)) = config.drills {
            let (backups, storage, schemas, audit) = (backups.clone(), storage.clone(), schemas.clone(), audit.clone());
            let settings = crate::service::drills::DrillSettings { every, check };
            background.spawn("drills", move |stop| {
                crate::service::drills::run_drills(backups, storage, schemas, audit, settings, stop)
            });
        }
        let metrics = match config.metrics_listen {
            Some(at) => {
                let listener = tokio::net::TcpListener::bind(at)
                    .await
                    .with_context(|| format!("listen for metrics on {at}"))?;
                let address = listener.local_addr()?;
                if !address.ip().is_loopback() {
                    tracing::warn!(%address, "metrics are served without authentication beyond loopback; keep this address private");
                }
                tracing::info!(%address, "metrics serving");
                let (storage, replication) = (storage.clone(), backups.replication.clone());
                let scrape = Arc::new(move || crate::metrics::Scrape {
                    open_tenants: storage.open_tenant_count(),
                    regions: replication
                        .lag(&storage)
                        .into_iter()
                        .map(|l| {
                            (
                                l.region.as_str().to_string(),
                                l.behind + l.log_behind,
                                l.lag_seconds.max(l.log_lag_seconds),
                            )
                        })
                        .collect(),
                });
                Some(tokio::spawn(api::serve_metrics(listener, scrape, std::future::pending())))
            }
            None => None,
        };
        let state = Arc::new(
            AppState::new(storage.clone(), schemas, config, backups.clone(), audit.clone())
                .with_changelog(changelog.clone())
                .with_data_keys(data_keys)
                .with_customer_keys(customer_keys)
                .with_webhooks(webhooks),
        );
        // Audit log open, port bound, background loops started: ready.
        super::systemd::notify("READY=1\nSTATUS=serving");
        api::serve(state, listener, tls, shutdown_signal()).await?;
        if let Some(task) = metrics {
            task.abort();
        }
        // Each loop ends between two steps; a backup round or an upload in
        // flight finishes first.
        let late = background.stop(std::time::Duration::from_secs(10)).await;
        // Loops that never write a live tenant's records (uploads, audit
        // checkpoints, deliveries, backup starts) may finish late without
        // hiding changes from the stop's record of what it left to ship.
        let quiet = late
            .iter()
            .all(|name| ["replicator", "checkpointer", "webhooks", "scheduler"].contains(name));
        // Changes logged since the last segment go to the spool (replication
        // takes them from there after the restart if not before).
        if let Some(log) = &changelog {
            let log = log.clone();
            let _ = crate::tasks::blocking(move || log.ship_all(quiet)).await;
        }
        // Tenants written much since they were opened are checkpointed, so
        // that the next start does not replay their whole log (requests are
        // over; a job still holding a database leaves it as it is).
        {
            let storage = storage.clone();
            let _ = crate::tasks::blocking(move || storage.checkpoint_changed_tenants()).await;
        }
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

pub(super) async fn shutdown_signal() {
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
    super::systemd::notify("STOPPING=1\nSTATUS=finishing in-flight requests");
}

/// On a new data directory, mints the first operator token into
/// `<data-dir>/operator.token` (0600) and says where it is.
pub(super) fn write_first_operator_token(storage: &Storage, data_dir: &Path) -> anyhow::Result<()> {
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
