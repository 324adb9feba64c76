//! Token lifecycle and staff identities: who may mint, approve, list and
//! revoke which tokens.
//!
//! A staff token (operator, support, backup agent) belongs to a named
//! identity — a person. Two tokens of one identity are one person to every
//! two-person rule. No single operator can bring a new operator into being:
//! an operator identity created through the API stays pending, and its
//! tokens refuse every request, until a *different* operator identity
//! approves it. The first operator comes from the data directory, and
//! `coffer tokens add` adds one offline (whoever holds the disk is trusted
//! by the threat model already).
//!
//! Tenant admins mint, list and revoke their own tenant's admin tokens; an
//! admin cannot revoke the tenant's last live admin token (it would lock the
//! tenant out), and an operator cannot revoke the host's last live operator
//! token.

use serde::Serialize;

use crate::auth::{Principal, Role};
use crate::ids::{rfc3339, unix_now, TenantId, TokenId};
use crate::storage::{
    Identity, NewToken, Revocation, Storage, StorageError, TokenRecord, DATA_DIR_CREATOR,
};

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    Conflict(String),
    #[error("no such token")]
    NotFound,
    #[error("{0}")]
    Invalid(String),
    /// The audit entry could not be made durable: nothing happened.
    #[error("{0}; the action was not performed")]
    Unaudited(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// A freshly minted token: the secret is shown once.
pub struct Minted {
    pub token: TokenRecord,
    pub secret: String,
    /// A new operator identity: the token works once another operator
    /// approves it.
    pub awaiting_approval: bool,
}

/// Mints a token for `role` named `name`, by `by` (whose role `auth`'s
/// table already allowed to mint this role). Once every rule has passed,
/// `record` is called with the token about to exist and whether it awaits
/// approval (the audit entry); if it fails, nothing is stored.
pub fn mint(
    storage: &Storage,
    by: &Principal,
    role: Role,
    name: &str,
    expires_at: Option<u64>,
    record: impl FnOnce(&TokenRecord, bool) -> Result<(), TokenError>,
) -> Result<Minted, TokenError> {
    if role == Role::TenantAdmin {
        let tenant = by
            .tenant
            .clone()
            .ok_or_else(|| TokenError::Denied("only a tenant's admin mints its tokens".into()))?;
        let mut new = NewToken::admin(&tenant, name, &by.person());
        new.expires_at = expires_at;
        let (token, secret) = storage.issue_token_with(new, |t| record(t, false))??;
        return Ok(Minted {
            token,
            secret,
            awaiting_approval: false,
        });
    }
    if by.role != Role::Operator {
        return Err(TokenError::Denied(
            "only operators mint staff tokens".into(),
        ));
    }
    // One identity decision at a time: two mints of one new name must not
    // both create it.
    let _guard = storage.catalog.lock_tokens();
    let new_identity = match storage.catalog.identity(name) {
        Some(existing) if existing.role != role => {
            return Err(TokenError::Conflict(format!(
                "the name {name:?} belongs to a {} identity; a person has one role",
                existing.role.as_str()
            )))
        }
        Some(existing) if role == Role::Operator => {
            if by.identity.as_deref() != Some(existing.name.as_str()) {
                return Err(TokenError::Conflict(format!(
                    "operator identity {name:?} exists: only that operator mints its own tokens (or `coffer tokens add` on the stopped host)"
                )));
            }
            None
        }
        Some(_) => None,
        None => Some(Identity {
            format: 1,
            name: name.to_string(),
            role,
            created_at: unix_now(),
            created_by: by.person(),
            approved_by: None,
            pending: role == Role::Operator,
        }),
    };
    let awaiting_approval = new_identity.as_ref().is_some_and(|i| i.pending);
    let mut new = NewToken::staff(role, name, &by.person());
    new.expires_at = expires_at;
    let (token, secret) = storage.issue_token_with(new, |t| -> Result<(), TokenError> {
        record(t, awaiting_approval)?;
        // The identity before its token: a crash between leaves an identity
        // with no token, never a token with no identity.
        if let Some(identity) = &new_identity {
            storage.catalog.put_identity(identity)?;
        }
        Ok(())
    })??;
    Ok(Minted {
        token,
        secret,
        awaiting_approval,
    })
}

/// A different operator approves a new operator identity (named by one of
/// its tokens); its tokens work from now on. Returns the identity.
pub fn approve_operator(
    storage: &Storage,
    by: &Principal,
    token: &TokenId,
    record: impl FnOnce(&Identity) -> Result<(), TokenError>,
) -> Result<Identity, TokenError> {
    let _guard = storage.catalog.lock_tokens();
    let name = storage
        .catalog
        .tokens()?
        .into_iter()
        .find(|t| &t.id == token && t.role == Role::Operator)
        .and_then(|t| t.identity)
        .ok_or(TokenError::NotFound)?;
    let mut identity = storage
        .catalog
        .identity(&name)
        .ok_or(TokenError::NotFound)?;
    if !identity.pending {
        return Err(TokenError::Conflict(format!(
            "operator identity {name:?} is already approved"
        )));
    }
    let person = by.person();
    if person == identity.created_by || by.identity.as_deref() == Some(name.as_str()) {
        return Err(TokenError::Denied(
            "a new operator identity is approved by a different operator than the one who created it".into(),
        ));
    }
    identity.pending = false;
    identity.approved_by = Some(person);
    record(&identity)?;
    storage.catalog.put_identity(&identity)?;
    Ok(identity)
}

/// Revokes a token at once: the next request with it is refused. `record`
/// runs once every rule passed, before the revocation is stored.
pub fn revoke(
    storage: &Storage,
    by: &Principal,
    id: &TokenId,
    record: impl FnOnce(&TokenRecord) -> Result<(), TokenError>,
) -> Result<TokenRecord, TokenError> {
    let now = unix_now();
    let outcome = storage.update_token(id, |token, others| -> Result<(), TokenError> {
        if !may_manage(by, token) {
            return Err(TokenError::NotFound);
        }
        if token.revoked.is_some() {
            return Err(TokenError::Conflict("the token is already revoked".into()));
        }
        let live = |t: &TokenRecord| t.state_at(now) == "active";
        if live(token) {
            if token.role == Role::TenantAdmin {
                // Every tenant this token reaches keeps a live admin.
                let reached = token.tenant.iter().chain(token.also.iter());
                for tenant in reached {
                    if !others.iter().any(|o| live(o) && o.admin_of(tenant)) {
                        return Err(TokenError::Conflict(format!(
                            "this is the last live admin token of tenant {tenant}: mint another one first, or the tenant is locked out"
                        )));
                    }
                }
            } else if token.role == Role::Operator {
                let operator_left = others.iter().any(|o| {
                    o.role == Role::Operator
                        && live(o)
                        && o.identity
                            .as_deref()
                            .and_then(|n| storage.catalog.identity(n))
                            .is_some_and(|i| !i.pending)
                });
                if !operator_left {
                    return Err(TokenError::Conflict(
                        "this is the host's last live operator token: mint another one first"
                            .into(),
                    ));
                }
            }
        }
        record(token)?;
        token.revoked = Some(Revocation {
            at: now,
            by: by.person(),
        });
        Ok(())
    });
    match outcome {
        Ok(result) => result,
        Err(StorageError::NotFound) => Err(TokenError::NotFound),
        Err(other) => Err(other.into()),
    }
}

/// A tenant admin manages its tenants' admin tokens; an operator, staff
/// tokens. Nobody else manages any.
fn may_manage(by: &Principal, token: &TokenRecord) -> bool {
    match by.role {
        Role::TenantAdmin => {
            token.role == Role::TenantAdmin
                && token
                    .tenant
                    .iter()
                    .chain(token.also.iter())
                    .any(|t| by.is_admin_of(t))
        }
        Role::Operator => token.role != Role::TenantAdmin,
        Role::Support | Role::BackupAgent => false,
    }
}

/// One token as its managers see it (never the secret or its digest).
#[derive(Debug, Serialize)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    pub role: &'static str,
    pub identity: Option<String>,
    pub tenants: Vec<String>,
    pub created: String,
    pub created_by: Option<String>,
    pub last_used: Option<String>,
    pub expires_at: Option<String>,
    pub state: &'static str,
    pub revoked: Option<serde_json::Value>,
}

/// One staff identity as operators see it.
#[derive(Debug, Serialize)]
pub struct IdentityView {
    pub name: String,
    pub role: &'static str,
    pub created: String,
    pub created_by: String,
    pub approved_by: Option<String>,
    pub state: &'static str,
}

/// The tokens `by` may manage, oldest first, and (operators) the staff
/// identities.
pub fn list(
    storage: &Storage,
    by: &Principal,
) -> Result<(Vec<TokenView>, Vec<IdentityView>), TokenError> {
    let now = unix_now();
    let mut tokens: Vec<TokenRecord> = storage
        .catalog
        .tokens()?
        .into_iter()
        .filter(|t| may_manage(by, t))
        .collect();
    tokens.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    let views = tokens
        .into_iter()
        .map(|t| {
            let pending = t
                .identity
                .as_deref()
                .and_then(|n| storage.catalog.identity(n))
                .is_some_and(|i| i.pending);
            let state = match t.state_at(now) {
                "active" if pending => "pending-approval",
                other => other,
            };
            TokenView {
                id: t.id.to_string(),
                name: t.name.clone(),
                role: t.role.as_str(),
                identity: t.identity.clone(),
                tenants: t
                    .tenant
                    .iter()
                    .chain(t.also.iter())
                    .map(TenantId::to_string)
                    .collect(),
                created: rfc3339(t.created_at),
                created_by: t.created_by.clone(),
                last_used: storage.catalog.token_last_used(&t.id).map(rfc3339),
                expires_at: t.expires_at.map(rfc3339),
                state,
                revoked: t
                    .revoked
                    .as_ref()
                    .map(|r| serde_json::json!({"at": rfc3339(r.at), "by": r.by})),
            }
        })
        .collect();
    let identities = if by.role == Role::Operator {
        storage
            .catalog
            .identities()
            .into_iter()
            .map(|i| IdentityView {
                role: i.role.as_str(),
                created: rfc3339(i.created_at),
                state: if i.pending {
                    "pending-approval"
                } else {
                    "active"
                },
                name: i.name,
                created_by: i.created_by,
                approved_by: i.approved_by,
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok((views, identities))
}

/// `coffer tokens add` on a stopped host, and the first start: a staff token
/// for `name`, whose identity is created (or, if it waited for approval,
/// approved) by whoever holds the data directory.
pub fn add_offline(storage: &Storage, role: Role, name: &str) -> Result<Minted, TokenError> {
    if role == Role::TenantAdmin {
        return Err(TokenError::Invalid(
            "tenant-admin tokens come from the tenant (or an admin recovery), never from the disk"
                .into(),
        ));
    }
    let _guard = storage.catalog.lock_tokens();
    match storage.catalog.identity(name) {
        Some(existing) if existing.role != role => {
            return Err(TokenError::Conflict(format!(
                "the name {name:?} belongs to a {} identity",
                existing.role.as_str()
            )))
        }
        Some(mut existing) => {
            if existing.pending {
                existing.pending = false;
                existing.approved_by = Some(DATA_DIR_CREATOR.into());
                storage.catalog.put_identity(&existing)?;
            }
        }
        None => storage.catalog.put_identity(&Identity {
            format: 1,
            name: name.to_string(),
            role,
            created_at: unix_now(),
            created_by: DATA_DIR_CREATOR.into(),
            approved_by: None,
            pending: false,
        })?,
    }
    let (token, secret) = storage.issue_token(NewToken::staff(role, name, DATA_DIR_CREATOR))?;
    Ok(Minted {
        token,
        secret,
        awaiting_approval: false,
    })
}
