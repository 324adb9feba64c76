//! `coffer backup …`: the backup tooling against a running host (export, list, restore, verify).

use std::path::PathBuf;

use anyhow::Context;

use crate::keys;
use crate::schema::Registry;

use super::*;

pub(super) fn backup(command: BackupCommand) -> anyhow::Result<()> {
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
        BackupCommand::Drills { remote } => {
            let client = remote_client(&remote)?;
            let value = client.json("GET", "/v1/drills", None)?;
            if machine_output(remote.json) {
                println!("{value}");
            } else {
                let drills = value["drills"].as_array().cloned().unwrap_or_default();
                if drills.is_empty() {
                    println!("no restore drill has run yet");
                }
                for d in drills {
                    println!(
                        "{}  {}  {:<6} from {:<8} backup {} ({})  {} ms  records={}{}",
                        d["tenant"].as_str().unwrap_or(""),
                        d["at"].as_str().unwrap_or(""),
                        d["outcome"].as_str().unwrap_or(""),
                        d["region"].as_str().unwrap_or(""),
                        d["backup_id"].as_str().unwrap_or(""),
                        d["backup_created_at"].as_str().unwrap_or(""),
                        d["duration_ms"],
                        d["records"],
                        d["error"]
                            .as_str()
                            .map(|e| format!("  error: {e}"))
                            .unwrap_or_default(),
                    );
                }
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
                let log = &value["change_log"];
                if log["change_log"] == true {
                    let safe: Vec<String> = log["newest_safe_write"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(r, p)| {
                            format!("{r}=#{} {}", p["sequence"], p["at"].as_str().unwrap_or(""))
                        })
                        .collect();
                    println!(
                        "change log: mode={} loss_window={}s newest safe write: {}",
                        log["mode"].as_str().unwrap_or("?"),
                        log["loss_window_seconds"],
                        if safe.is_empty() {
                            "none yet".to_string()
                        } else {
                            safe.join(" ")
                        }
                    );
                }
            }
            Ok(())
        }
        BackupCommand::Restore {
            remote,
            tenant,
            backup,
            at,
            sequence,
            name,
            region,
        } => {
            let client = remote_client(&remote)?;
            let mut body = serde_json::json!({ "name": name });
            if let Some(region) = region {
                body["region"] = serde_json::Value::from(region);
            }
            if let Some(at) = at {
                body["at"] = serde_json::Value::from(at);
            }
            if let Some(sequence) = sequence {
                body["sequence"] = serde_json::Value::from(sequence);
            }
            let path = match &backup {
                Some(backup) => format!("/v1/tenants/{tenant}/backups/{backup}/restore"),
                None => format!("/v1/tenants/{tenant}/restore"),
            };
            let value = client.json("POST", &path, Some(&body))?;
            if machine_output(remote.json) {
                println!("{value}");
            } else {
                let what = match &backup {
                    Some(backup) => format!("backup {backup}"),
                    None => format!(
                        "the change log up to #{} ({})",
                        value["restored_to"]["sequence"],
                        value["restored_to"]["at"].as_str().unwrap_or("?")
                    ),
                };
                println!(
                    "restored {what} into new tenant {}{}",
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
