//! # Coffer — an encrypted multi-tenant customer database host
//!
//! A SaaS vendor runs Coffer to give every customer (a *tenant*) its own isolated
//! database, encrypted at rest, controlled through an HTTP API. The product brief
//! and the threat model live in `ops/`; this is the map of the code.
//!
//! ## Codemap (layers point down; nothing imports a module above it)
//!
//! ```text
//! top        cli ─► api                       (nothing imports api; only cli imports cli)
//! service    service: backups as jobs, upgrades, checkpoint shipping, key rotation
//! domain     access ─► grants ─► auth ◄─ tokens;  lifecycle;  fleet
//! rooms      replication ─► backup ─► storage;  audit;  keys
//! leaves     schema, config, secret_file ─► ids ─► crypto;  tasks;  metrics;  memory
//! ```
//!
//! The arrows each room may take are [`LAYERS`], checked by a unit test that
//! reads every `crate::…` path under `src/` (`layer_check` below): an import
//! that is not listed, or a list that closes a cycle, fails it with the file
//! and line.
//!
//! - [`crypto`] — AES-256-GCM sealing (ring), key wrapping, HKDF, blind-index HMAC,
//!   token digests; a tenant's data keys by id (two during a rotation).
//!   **No I/O.** The only module that touches AEAD and key bytes.
//! - [`ids`] — id newtypes (`TenantId`, `RecordId`, `Region`…), parsed at the edge.
//! - [`schema`] — tenant schema files (`tenant-schemas/`), record validation,
//!   migrations. No I/O but reading schema files.
//! - [`storage`] — **the only user of sled**: the catalog, one database per tenant,
//!   the bounded pool of open tenant databases, group commit, crash-safe create,
//!   shred and re-wrap, a data-key rotation's steps (`rekey`), and a data key
//!   wrapped by the tenant's own key service too (`customer_key`).
//! - [`keys`] — master keys and the backup key on disk (0600 files).
//! - [`lifecycle`] — active → deactivated → destroyed, and the sweeper.
//! - [`access`] — the data path's gate: the only way to a tenant's records
//!   (the tenant's admins, or a support engineer's live grant in scope).
//! - [`grants`] — break-glass grants as a state machine (pending → active →
//!   closed), with emergency approval by two operators.
//! - [`audit`] — the tamper-evident audit log: RFC 9162 Merkle tree, C2SP
//!   signed checkpoints (also written to every region), group-committed
//!   durable appends, proofs, and the offline verifiers.
//! - [`auth`] — bearer tokens → principals (a live token of an approved
//!   identity; revoked, expired and pending tokens refused); the
//!   deny-by-default policy table.
//! - [`tokens`] — staff identities (a person is an identity, never a token),
//!   minting rules (a new operator needs a second operator), listing,
//!   revocation and expiry.
//! - [`fleet`] — the configured hosts of other regions and the one call a
//!   host makes to another (does the move's target hold the tenant?).
//! - [`api`] — **the only user of hyper**: routes, status mapping, server loop,
//!   the control panel's embedded files (`panel/`) and its cookie sessions.
//! - [`backup`] — the archive format, streamed exports, STREAM-sealed DR backups
//!   sealed into the host's spool, verification, restores into staged tenants.
//! - [`replication`] — **the only user of object_store**: one store per backup
//!   region (S3, GCS, Azure, directories), per-region replica states, the
//!   replicator (upload, verification, backoff, catch-up), retention
//!   and erasure tombstones, reads for restores from any region.
//! - [`service`] — long-running work and rules that span rooms: backups as
//!   jobs (spool + regions + backup key; `service::Backups`), the schema
//!   upgrade service (backup first, migrate, swap), the audit checkpoint
//!   shipper (audit → regions), master-key rotation (keyring + catalog),
//!   online data-key rotation as jobs (`data_keys`), signed webhooks
//!   read from the audit log (`webhooks`), tenants' own keys in their own
//!   key services (`customer_keys`: Transit, the checks, closing),
//!   continuous backup (`changelog`: the change log shipped in segments,
//!   durability modes) and point-in-time restores (`pitr`).
//! - [`secret_file`] — 0600 secret files, written atomically.
//! - [`tasks`] — the one blocking helper (keeps the span), the host's
//!   background loops, stopped by one token and waited for at shutdown, and
//!   the lower CPU priority of long jobs' threads (the only user of rustix).
//! - [`metrics`] — the process-wide Prometheus metrics (prometheus-client)
//!   the rooms record into; rendered by `api` on `--metrics-listen`. Labels
//!   never hold a tenant id, token or value. A leaf.
//! - [`memory`] — the host's resident size, the memory it may use, and the
//!   one way to give freed heap back (a call the binary registers). A leaf.
//! - [`config`] — TOML file + flags → one checked `Config` (a leaf).
//! - [`client`] — the one HTTP client (ureq) of the CLI's tooling, the tests
//!   and the benches: a host, a token, JSON, streamed answers. A leaf.
//! - [`cli`] — `coffer serve`, `coffer keys rotate`, `coffer backup export|list|
//!   restore|verify`, `coffer tenant move`; start-up glue.
//!
//!
//! ## Invariants
//!
//! 1. No tenant plaintext reaches the disk: record values are sealed with the
//!    tenant's DEK, bound by associated data to tenant, collection and record id;
//!    indexed values are stored only as HMAC tags under a key derived from the DEK.
//! 2. DEKs exist on disk only wrapped by a master key; master keys live in 0600
//!    files outside the tenant directories. Destroying a tenant deletes its wrapped
//!    DEK first (crypto-shred), then its directory.
//! 3. Only a tenant's own admins, and support engineers through a live grant of
//!    their own, reach its records: checked by `auth`'s table and again by
//!    `access::open` (which reads the grant on every request), which nothing
//!    else can bypass.
//! 4. A 2xx on a write means the write is flushed to disk (group commit).
//! 5. Key material never appears in `Debug` output or logs; query strings and
//!    record values are never logged.
//! 6. Bad input is a 4xx and changes nothing; no `unwrap()` on untrusted bytes.
//! 7. Plaintext leaves a host only as a portable export to the tenant's own admin
//!    (optionally age-encrypted to the tenant). DR backups are sealed under keys
//!    the store never sees; a restore by staff gives the new tenant the source
//!    tenant's admins and returns no token. Restores and imports publish a tenant
//!    only after the whole archive checked out.
//! 8. Backup objects are written once: a name (tenant, backup id) is never
//!    reused, an existing object that differs is never overwritten, and a
//!    region counts as holding a backup only after the store vouched for its
//!    objects (an S3 store that checked every part's `x-amz-checksum-sha256`
//!    on receipt, or a read-back that matched the manifest's size and SHA-256).
//! 9. Fail closed: an audited action happens only after its audit entry is
//!    durable; a read through a grant returns data only after its entry is.
//! 10. Two-person rules count people: staff identities, never tokens. No
//!     single operator creates an operator identity, approves its own
//!     emergency or recovery, or one filed by someone it created; a move goes
//!     only to a configured host and, when staff start it, only with the
//!     tenant's approval; every tenant made from a tenant's backups is its
//!     recorded copy.

#![forbid(unsafe_code)]

/// Every room and the rooms it may import (`crate::room` paths). The one list
/// of allowed arrows: a room missing here, an arrow not listed, or a cycle in
/// the list fails `layer_check`.
pub const LAYERS: &[(&str, &[&str])] = &[
    // leaves
    ("crypto", &[]),
    ("tasks", &[]),
    ("client", &[]),
    ("metrics", &[]),
    ("memory", &[]),
    ("ids", &["crypto"]),
    ("secret_file", &["crypto"]),
    ("schema", &["ids"]),
    ("config", &["ids"]),
    // rooms
    ("storage", &["crypto", "ids", "memory", "metrics", "schema"]),
    ("keys", &["config", "crypto", "secret_file"]),
    ("audit", &["crypto", "ids", "metrics", "secret_file"]),
    ("backup", &["crypto", "ids", "schema", "storage"]),
    // replication reads what backup exposes as data (jobs, spool handles)
    (
        "replication",
        &[
            "backup",
            "config",
            "crypto",
            "ids",
            "metrics",
            "secret_file",
            "storage",
            "tasks",
        ],
    ),
    // domain
    ("auth", &["ids", "storage"]),
    ("grants", &["auth", "ids", "storage"]),
    ("tokens", &["auth", "ids", "storage"]),
    (
        "access",
        &["audit", "auth", "grants", "ids", "schema", "storage"],
    ),
    ("lifecycle", &["audit", "ids", "storage", "tasks"]),
    ("fleet", &["ids"]),
    // service
    (
        "service",
        &[
            "audit",
            "backup",
            // webhook deliveries go out through the one HTTP client (ureq)
            "client",
            "config",
            "crypto",
            // the webhook watch audits grants whose time ran out
            "grants",
            "ids",
            "keys",
            "metrics",
            "replication",
            "schema",
            "secret_file",
            "storage",
            "tasks",
        ],
    ),
    // top
    (
        "api",
        &[
            "access",
            "audit",
            "auth",
            "backup",
            "config",
            "crypto",
            "fleet",
            "grants",
            "ids",
            "lifecycle",
            "metrics",
            "replication",
            "schema",
            "service",
            "storage",
            "tasks",
            "tokens",
        ],
    ),
    (
        "cli",
        &[
            "api",
            "audit",
            "backup",
            "client",
            "config",
            "crypto",
            "ids",
            "keys",
            "lifecycle",
            "memory",
            "metrics",
            "replication",
            "schema",
            "service",
            "storage",
            "tasks",
            "tokens",
        ],
    ),
];

pub mod access;
pub mod api;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod cli;
pub mod client;
pub mod config;
pub mod crypto;
pub mod fleet;
pub mod grants;
pub mod ids;
pub mod keys;
pub mod lifecycle;
pub mod memory;
pub mod metrics;
pub mod replication;
pub mod schema;
pub mod secret_file;
pub mod service;
pub mod storage;
pub mod tasks;
pub mod tokens;

#[cfg(test)]
mod layer_check {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use super::LAYERS;

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// `crate::room` paths on a line of code (comments skipped).
    fn rooms_named(line: &str) -> Vec<&str> {
        let code = line.split("//").next().unwrap_or("");
        code.match_indices("crate::")
            .map(|(at, _)| {
                let rest = &code[at + "crate::".len()..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                    .unwrap_or(rest.len());
                &rest[..end]
            })
            .filter(|room| !room.is_empty())
            .collect()
    }

    /// Every arrow in the code, as `file:line: from -> to` for the ones
    /// [`LAYERS`] does not allow.
    pub fn violations(src: &Path) -> Vec<String> {
        let allowed: BTreeMap<&str, &[&str]> = LAYERS.iter().copied().collect();
        let mut files = Vec::new();
        rust_files(src, &mut files);
        files.sort();
        let mut wrong = Vec::new();
        for file in files {
            let relative = file.strip_prefix(src).unwrap();
            let room = relative
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_str()
                .unwrap()
                .trim_end_matches(".rs")
                .to_string();
            if room == "lib" || room == "main" {
                continue;
            }
            let Some(may) = allowed.get(room.as_str()) else {
                wrong.push(format!(
                    "src/{}: room {room:?} is not in LAYERS",
                    relative.display()
                ));
                continue;
            };
            let text = std::fs::read_to_string(&file).unwrap();
            for (n, line) in text.lines().enumerate() {
                for target in rooms_named(line) {
                    if target != room && !may.contains(&target) {
                        wrong.push(format!(
                            "src/{}:{}: {room} -> {target} is not an allowed arrow (LAYERS in src/lib.rs)",
                            relative.display(),
                            n + 1
                        ));
                    }
                }
            }
        }
        wrong
    }

    /// The rooms in `LAYERS` in an order where each comes after all it
    /// imports, or the rooms left on a cycle.
    pub fn order() -> Result<Vec<&'static str>, Vec<&'static str>> {
        let mut done: Vec<&str> = Vec::new();
        let mut left: Vec<(&str, &[&str])> = LAYERS.to_vec();
        while !left.is_empty() {
            let before = left.len();
            left.retain(|(room, deps)| {
                if deps.iter().all(|d| done.contains(d)) {
                    done.push(room);
                    false
                } else {
                    true
                }
            });
            if left.len() == before {
                return Err(left.iter().map(|(r, _)| *r).collect());
            }
        }
        Ok(done)
    }

    #[test]
    fn every_import_points_down_and_the_layers_have_no_cycle() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let wrong = violations(&src);
        assert!(
            wrong.is_empty(),
            "upward or unlisted imports:\n{}",
            wrong.join("\n")
        );
        let rooms: Vec<&str> = LAYERS.iter().map(|(r, _)| *r).collect();
        for (room, deps) in LAYERS {
            for dep in *deps {
                assert!(
                    rooms.contains(dep),
                    "{room} lists {dep:?}, which is no room"
                );
            }
        }
        assert!(
            order().is_ok(),
            "LAYERS closes a cycle among {:?}",
            order().err()
        );
        // Nothing imports api; only cli may reach it.
        for (room, deps) in LAYERS {
            assert!(
                *room == "cli" || !deps.contains(&"api"),
                "{room} imports api"
            );
            assert!(!deps.contains(&"cli"), "{room} imports cli");
        }
    }

    #[test]
    fn the_checker_names_an_upward_import() {
        let dir = std::env::temp_dir().join(format!("coffer-layers-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("storage")).unwrap();
        std::fs::write(
            dir.join("storage").join("mod.rs"),
            "//! a room\nuse crate::ids::TenantId;\nuse crate::api::Endpoint; // upward\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("crypto.rs"),
            "// crate::storage in a comment is fine\n",
        )
        .unwrap();
        let wrong = violations(&dir);
        assert_eq!(
            wrong,
            vec!["src/storage/mod.rs:3: storage -> api is not an allowed arrow (LAYERS in src/lib.rs)".to_string()]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
