//! Integration tests: the real `coffer` binary, real sled files, real sockets.
//! One file per subject under `tests/host/`; helpers in `tests/support/`.

#[path = "host/access.rs"]
mod access;
#[path = "host/archives.rs"]
mod archives;
#[path = "host/audit.rs"]
mod audit;
#[path = "host/backups.rs"]
mod backups;
#[path = "host/contract.rs"]
mod contract;
#[path = "host/customer_keys.rs"]
mod customer_keys;
#[path = "host/data_keys.rs"]
mod data_keys;
#[path = "host/durability.rs"]
mod durability;
#[path = "host/exports.rs"]
mod exports;
#[path = "host/insiders.rs"]
mod insiders;
#[path = "host/isolation.rs"]
mod isolation;
#[path = "host/lifecycle.rs"]
mod lifecycle;
#[path = "host/limits.rs"]
mod limits;
#[path = "host/neighbours.rs"]
mod neighbours;
#[path = "host/operations.rs"]
mod operations;
#[path = "host/panel.rs"]
mod panel;
#[path = "host/pitr.rs"]
mod pitr;
#[path = "host/pitr_bases.rs"]
mod pitr_bases;
#[path = "host/records.rs"]
mod records;
#[path = "host/replication.rs"]
mod replication;
#[path = "host/sealing.rs"]
mod sealing;
mod support;
#[path = "host/upgrades.rs"]
mod upgrades;
#[path = "host/webhooks.rs"]
mod webhooks;
