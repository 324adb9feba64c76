//! # Coffer — an encrypted multi-tenant customer database host
//!
//! A SaaS vendor runs Coffer to give every customer (a *tenant*) its own isolated
//! database, encrypted at rest, controlled through an HTTP API. The product brief
//! and the threat model live in `ops/`; this is the map of the code.
//!
//! ## Codemap (layers point down; nothing imports a module above it)
//!
//! ```text
//! cli ─► api ─► upgrade ─► backup ─► replication ─┐
//!            ─► auth, access, grants, tokens, lifecycle ─► audit ┴─► storage, schema ─► crypto, ids
//!            ─► keys, fleet
//!        config (read by cli and api)
//! ```
//!
//! - [`crypto`] — AES-256-GCM sealing (ring), key wrapping, HKDF, blind-index HMAC,
//!   token digests. **No I/O.** The only module that touches AEAD and key bytes.
//! - [`ids`] — id newtypes (`TenantId`, `RecordId`, `Region`…), parsed at the edge.
//! - [`schema`] — tenant schema files (`tenant-schemas/`), record validation,
//!   migrations. No I/O but reading schema files.
//! - [`storage`] — **the only user of sled**: the catalog, one database per tenant,
//!   the bounded pool of open tenant databases, group commit, crash-safe create,
//!   shred and re-wrap.
//! - [`keys`] — master keys on disk (0600 files), rotation ordering.
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
//! - [`api`] — **the only user of hyper**: routes, status mapping, server loop.
//! - [`backup`] — the archive format, streamed exports, STREAM-sealed DR backups
//!   sealed into the host's spool, verification, restores into staged tenants.
//! - [`replication`] — **the only user of object_store**: one store per backup
//!   region (S3, GCS, Azure, directories), per-region replica states, the
//!   replicator (upload, verification, backoff, catch-up), retention
//!   and erasure tombstones, reads for restores from any region.
//! - [`upgrade`] — the schema upgrade service (backup first, migrate, swap).
//! - [`config`] — TOML file + flags → one checked `Config`.
//! - [`cli`] — `coffer serve`, `coffer keys rotate`, `coffer backup export|list|
//!   restore|verify`, `coffer tenant move`; start-up glue and a small HTTP client
//!   for the tooling.
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
//!    objects (an ETag equal to the MD5 of what was sent, or a read-back that
//!    matched the manifest's size and SHA-256).
//! 9. Fail closed: an audited action happens only after its audit entry is
//!    durable; a read through a grant returns data only after its entry is.
//! 10. Two-person rules count people: staff identities, never tokens. No
//!     single operator creates an operator identity, approves its own
//!     emergency or recovery, or one filed by someone it created; a move goes
//!     only to a configured host and, when staff start it, only with the
//!     tenant's approval; every tenant made from a tenant's backups is its
//!     recorded copy.

#![forbid(unsafe_code)]

pub mod access;
pub mod api;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod fleet;
pub mod grants;
pub mod ids;
pub mod keys;
pub mod lifecycle;
pub mod replication;
pub mod schema;
pub mod storage;
pub mod tokens;
pub mod upgrade;
