//! `coffer audit verify`: the whole chain, the checkpoints and the signed tail, offline.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::audit::note::Verifier;
use crate::config::{Config, Overrides};
use crate::replication::RegionStore;

use super::*;

pub(super) fn verifier_key(
    given: Option<&str>,
    default_file: Option<PathBuf>,
) -> anyhow::Result<Verifier> {
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

pub(super) fn audit_verify(
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
