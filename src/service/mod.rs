//! The service layer: long-running work and the rules that span rooms.
//! Backups as jobs (the spool, the regions and the backup key together),
//! the backup scheduler, the schema upgrade service, the audit checkpoint
//! shipper and master-key rotation. Below it, rooms of one job each (`backup`, `replication`,
//! `audit`, `storage`, `keys`); above it, only `api` and `cli`. Nothing
//! below imports `service`.

pub mod backups;
pub mod changelog;
pub mod checkpoints;
pub mod customer_keys;
pub mod data_keys;
pub mod drills;
pub mod key_rotation;
pub mod pitr;
pub mod scheduler;
pub mod upgrade;
pub mod webhooks;

pub use backups::Backups;
