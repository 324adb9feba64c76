//! `coffer keys rotate`: a new master key, every tenant key re-wrapped, resumable after a kill.

use anyhow::Context;

use crate::config::Config;

use super::*;

pub(super) fn rotate(host: HostArgs, pace_ms: u64) -> anyhow::Result<()> {
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
