//! `coffer tokens …`: staff tokens offline (add) and against a running host (list, revoke).

use anyhow::Context;

use crate::config::Config;
use crate::storage::Role;

use super::*;

pub(super) fn tokens_command(command: TokensCommand) -> anyhow::Result<()> {
    match command {
        TokensCommand::Add { host, role, name } => {
            let role = match role.as_str() {
                "operator" => Role::Operator,
                "support" => Role::Support,
                "backup-agent" => Role::BackupAgent,
                other => anyhow::bail!("--role {other:?}: use operator, support or backup-agent"),
            };
            let name = name.trim();
            if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
                anyhow::bail!("--name must be 1 to 200 printable characters");
            }
            let config = Config::resolve(overrides(host))?;
            let (storage, _) = open_host(&config)?;
            // Audited like every token: no durable entry, no token.
            let audit = crate::audit::AuditLog::open(&config.data_dir, config.region.as_str())
                .context("open the audit log")?;
            audit
                .append(
                    crate::audit::Event::new(
                        "token.added-offline",
                        crate::audit::Actor {
                            role: "operator".into(),
                            token: None,
                            identity: Some(crate::storage::DATA_DIR_CREATOR.into()),
                        },
                    )
                    .detail("role", role.as_str())
                    .detail("identity", name),
                )
                .map_err(|e| anyhow::anyhow!("{e}; no token was added"))?;
            audit.checkpoint().map_err(|e| anyhow::anyhow!("{e}"))?;
            let minted = crate::tokens::add_offline(&storage, role, name)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            // The secret goes to stdout once; nothing else is printed there.
            println!("{}", minted.secret);
            eprintln!(
                "added a {} token (id {}) for identity {name:?}; it is shown once",
                role.as_str(),
                minted.token.id
            );
            Ok(())
        }
        TokensCommand::List { remote } => {
            let client = remote_client(&remote)?;
            let listing = client.json("GET", "/v1/tokens", None)?;
            if machine_output(remote.json) {
                println!("{listing}");
            } else {
                for t in listing["tokens"].as_array().into_iter().flatten() {
                    println!(
                        "{}  {:<12} {:<18} {:<24} created {}  last used {}  expires {}",
                        t["id"].as_str().unwrap_or(""),
                        t["role"].as_str().unwrap_or(""),
                        t["state"].as_str().unwrap_or(""),
                        t["identity"].as_str().or(t["name"].as_str()).unwrap_or(""),
                        t["created"].as_str().unwrap_or(""),
                        t["last_used"].as_str().unwrap_or("never"),
                        t["expires_at"].as_str().unwrap_or("never"),
                    );
                }
            }
            Ok(())
        }
        TokensCommand::Revoke { remote, id } => {
            if crate::ids::TokenId::parse(&id).is_none() {
                anyhow::bail!(
                    "--id {id:?}: a token id is 32 lowercase hex digits (see `coffer tokens list`)"
                );
            }
            let client = remote_client(&remote)?;
            let revoked = client.json("DELETE", &format!("/v1/tokens/{id}"), None)?;
            if machine_output(remote.json) {
                println!("{revoked}");
            } else {
                println!("token {id} revoked");
            }
            Ok(())
        }
    }
}
