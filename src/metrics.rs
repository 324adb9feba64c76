//! The host's metrics in the Prometheus text format (`GET /metrics` on the
//! `--metrics-listen` address). Rooms record into the process-wide set as
//! things happen (requests, durable flushes, cold opens, audit syncs, jobs,
//! refusals); gauges that describe state (open databases, replication lag)
//! are filled in at each scrape. A leaf: it imports nothing of the crate.
//!
//! Labels hold only endpoint kinds, statuses, outcomes, limit names and the
//! configured region names — never a tenant id, token, record or query value.
//! `ops/metrics.md` lists every metric and the alert to set on it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

pub use prometheus_text::CONTENT_TYPE;

type Labels = Vec<(&'static str, String)>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// 0.5 ms to ~16 s.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// 1 to 1024 (writes per flush, entries per sync).
fn sizes() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 11))
}

/// 1 s to ~4.5 h (backups, restores).
fn job_seconds() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 15))
}

struct Set {
    registry: Registry,
    requests: Family<Labels, Counter>,
    request_seconds: Histograms,
    flush_seconds: Histogram,
    flush_writes: Histogram,
    open_tenants: Gauge,
    tenant_open_seconds: Histogram,
    tenant_open_failures: Counter,
    tenants_released: Counter,
    memory_released_bytes: Counter,
    audit_sync_seconds: Histogram,
    audit_sync_entries: Histogram,
    jobs: Family<Labels, Counter>,
    job_seconds: Histograms,
    replication_behind: Family<Labels, Gauge>,
    replication_lag: Family<Labels, Gauge>,
    replication_failures: Family<Labels, Counter>,
    refusals: Family<Labels, Counter>,
}

static SET: LazyLock<Set> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("coffer");
    let set = Set {
        requests: Family::default(),
        request_seconds: Family::new_with_constructor(seconds as fn() -> Histogram),
        flush_seconds: seconds(),
        flush_writes: sizes(),
        open_tenants: Gauge::default(),
        tenant_open_seconds: seconds(),
        tenant_open_failures: Counter::default(),
        tenants_released: Counter::default(),
        memory_released_bytes: Counter::default(),
        audit_sync_seconds: seconds(),
        audit_sync_entries: sizes(),
        jobs: Family::default(),
        job_seconds: Family::new_with_constructor(job_seconds as fn() -> Histogram),
        replication_behind: Family::default(),
        replication_lag: Family::default(),
        replication_failures: Family::default(),
        refusals: Family::default(),
        registry: Registry::default(),
    };
    registry.register(
        "http_requests",
        "Requests answered, by endpoint kind and status",
        set.requests.clone(),
    );
    registry.register(
        "http_request_duration_seconds",
        "Time to a response's head, by endpoint kind",
        set.request_seconds.clone(),
    );
    registry.register(
        "durable_flush_duration_seconds",
        "Group-commit flushes of tenant and catalog writes (one fsync round each)",
        set.flush_seconds.clone(),
    );
    registry.register(
        "durable_flush_writes",
        "Writes made durable by one group-commit flush",
        set.flush_writes.clone(),
    );
    registry.register(
        "tenant_databases_open",
        "Tenant databases open now (in the pool or held by a request)",
        set.open_tenants.clone(),
    );
    registry.register(
        "tenant_open_duration_seconds",
        "Cold opens of a tenant database (not in the pool)",
        set.tenant_open_seconds.clone(),
    );
    registry.register(
        "tenant_open_failures",
        "Cold opens of a tenant database that failed",
        set.tenant_open_failures.clone(),
    );
    registry.register(
        "tenant_databases_released",
        "Tenant databases closed after a job read them whole, the host's memory being above its high mark",
        set.tenants_released.clone(),
    );
    registry.register(
        "memory_released_bytes",
        "Resident memory given back after such jobs (closed databases, trimmed heap)",
        set.memory_released_bytes.clone(),
    );
    registry.register(
        "audit_sync_duration_seconds",
        "Group-committed syncs of the audit journal",
        set.audit_sync_seconds.clone(),
    );
    registry.register(
        "audit_sync_entries",
        "Audit entries made durable by one sync (their sum is the appends)",
        set.audit_sync_entries.clone(),
    );
    registry.register(
        "jobs",
        "Backups and restores finished, by kind and outcome",
        set.jobs.clone(),
    );
    registry.register(
        "job_duration_seconds",
        "Duration of backups and restores, by kind",
        set.job_seconds.clone(),
    );
    registry.register(
        "replication_objects_behind",
        "Backups and change-log segments not yet verified in a region",
        set.replication_behind.clone(),
    );
    registry.register(
        "replication_lag_seconds",
        "Age of the oldest object not yet verified in a region (0 when none)",
        set.replication_lag.clone(),
    );
    registry.register(
        "replication_failures",
        "Failed upload or verification attempts, by region",
        set.replication_failures.clone(),
    );
    registry.register(
        "limit_refusals",
        "Requests refused with 429 by a host or per-tenant limit, by limit",
        set.refusals.clone(),
    );
    Set { registry, ..set }
});

/// Off until [`enable`]: a host that serves no metrics records none (and
/// pays nothing for them).
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Starts recording (the host serves `/metrics`).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

fn on() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// A request answered: its endpoint kind (`"ReadRecord"`, or `"unknown"`).
pub fn request(endpoint: &'static str, status: u16, elapsed: Duration) {
    if !on() {
        return;
    }
    SET.requests
        .get_or_create(&vec![
            ("endpoint", endpoint.to_string()),
            ("status", status.to_string()),
        ])
        .inc();
    SET.request_seconds
        .get_or_create(&vec![("endpoint", endpoint.to_string())])
        .observe(elapsed.as_secs_f64());
}

/// A group-commit flush that made `writes` writes durable.
pub fn durable_flush(writes: u64, elapsed: Duration) {
    if !on() {
        return;
    }
    SET.flush_seconds.observe(elapsed.as_secs_f64());
    SET.flush_writes.observe(writes as f64);
}

/// A cold open of a tenant database.
pub fn tenant_opened(ok: bool, elapsed: Duration) {
    if !on() {
        return;
    }
    if ok {
        SET.tenant_open_seconds.observe(elapsed.as_secs_f64());
    } else {
        SET.tenant_open_failures.inc();
    }
}

/// After a job read a tenant whole with the host's memory above its high
/// mark: whether its database was closed, and the resident bytes given back.
pub fn memory_released(closed: bool, bytes: u64) {
    if !on() {
        return;
    }
    if closed {
        SET.tenants_released.inc();
    }
    SET.memory_released_bytes.inc_by(bytes);
}

/// An audit sync that made `entries` appends durable.
pub fn audit_sync(entries: u64, elapsed: Duration) {
    if !on() {
        return;
    }
    SET.audit_sync_seconds.observe(elapsed.as_secs_f64());
    SET.audit_sync_entries.observe(entries as f64);
}

/// A backup or restore (`kind`) that ended with `outcome` (`"ok"`, `"failed"`).
pub fn job(kind: &'static str, outcome: &'static str, elapsed: Duration) {
    if !on() {
        return;
    }
    SET.jobs
        .get_or_create(&vec![
            ("kind", kind.to_string()),
            ("outcome", outcome.to_string()),
        ])
        .inc();
    SET.job_seconds
        .get_or_create(&vec![("kind", kind.to_string())])
        .observe(elapsed.as_secs_f64());
}

/// Runs a job of `kind` and records its outcome and duration.
pub fn timed_job<T, E>(kind: &'static str, job: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    let started = std::time::Instant::now();
    let result = job();
    self::job(
        kind,
        if result.is_ok() { "ok" } else { "failed" },
        started.elapsed(),
    );
    result
}

/// A failed attempt to upload or verify an object in a configured region.
pub fn replication_failure(region: &str) {
    if !on() {
        return;
    }
    SET.replication_failures
        .get_or_create(&vec![("region", region.to_string())])
        .inc();
}

/// A request refused by a limit (`"long_jobs_host"`, `"long_jobs_tenant"`,
/// `"request_memory"`).
pub fn refused(limit: &'static str) {
    if !on() {
        return;
    }
    SET.refusals
        .get_or_create(&vec![("limit", limit.to_string())])
        .inc();
}

/// State read at scrape time.
pub struct Scrape {
    pub open_tenants: usize,
    /// Per configured region: objects behind, and the oldest one's age (s).
    pub regions: Vec<(String, usize, u64)>,
}

/// The whole set in the Prometheus text format (version 0.0.4).
pub fn render(scrape: Scrape) -> String {
    SET.open_tenants.set(scrape.open_tenants as i64);
    for (region, behind, lag) in scrape.regions {
        let labels = vec![("region", region)];
        SET.replication_behind
            .get_or_create(&labels)
            .set(behind as i64);
        SET.replication_lag.get_or_create(&labels).set(lag as i64);
    }
    let mut out = String::new();
    prometheus_text::encode(&mut out, &SET.registry).expect("writing to a String");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_values_appear_in_the_text_format() {
        enable();
        request("ReadRecord", 200, Duration::from_millis(3));
        durable_flush(7, Duration::from_millis(2));
        job("backup", "ok", Duration::from_secs(3));
        let text = render(Scrape {
            open_tenants: 4,
            regions: vec![("in".into(), 2, 30)],
        });
        assert!(
            text.contains("# TYPE coffer_http_requests_total counter"),
            "{text}"
        );
        assert!(
            text.contains("coffer_http_requests_total{endpoint=\"ReadRecord\",status=\"200\"}"),
            "{text}"
        );
        assert!(text.contains("coffer_tenant_databases_open 4"), "{text}");
        assert!(
            text.contains("coffer_replication_objects_behind{region=\"in\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("coffer_durable_flush_writes_bucket{le=\"8\"}"),
            "{text}"
        );
        assert!(
            text.contains("coffer_jobs_total{kind=\"backup\",outcome=\"ok\"}"),
            "{text}"
        );
    }
}
