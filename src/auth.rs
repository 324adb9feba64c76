//! Who is calling and what they may do: bearer tokens to principals, and the one
//! deny-by-default policy table over every action the API offers.
//!
//! The table is an exhaustive `match` on (action, role): a new action does not
//! compile until someone decides who may take it. Reaching a tenant's records is
//! decided again, below this table, by `access` (the data path's own check).

use crate::ids::{unix_now, TenantId};
pub use crate::storage::Role;
use crate::storage::{Storage, StorageError, TokenRecord};

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub token_id: String,
    pub role: Role,
    pub tenant: Option<TenantId>,
    /// Restored copies of `tenant` this admin token also reaches.
    pub also: Vec<TenantId>,
    pub name: String,
    /// Staff: the identity (person) the token belongs to.
    pub identity: Option<String>,
    /// Staff: who created this person's identity and who minted this token.
    /// Neither counts as a second person for an emergency this one files.
    pub sponsors: Vec<String>,
    /// The grant named by `X-Coffer-Grant` (support engineers); checked by
    /// `access::open` against the grant itself.
    pub grant: Option<String>,
}

impl From<TokenRecord> for Principal {
    fn from(token: TokenRecord) -> Self {
        Principal {
            token_id: token.id.to_string(),
            role: token.role,
            tenant: token.tenant,
            also: token.also,
            name: token.name,
            identity: token.identity,
            sponsors: token.created_by.into_iter().collect(),
            grant: None,
        }
    }
}

impl Principal {
    /// The person behind the token: a staff identity, or for a tenant admin
    /// the token itself (`token:<id>`). Two-person rules compare these.
    pub fn person(&self) -> String {
        match &self.identity {
            Some(identity) => identity.clone(),
            None => format!("token:{}", self.token_id),
        }
    }

    /// True for a tenant admin whose token is bound to exactly this tenant.
    pub fn is_admin_of(&self, tenant: &TenantId) -> bool {
        self.role == Role::TenantAdmin
            && (self.tenant.as_ref() == Some(tenant) || self.also.contains(tenant))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("invalid bearer token")]
    Invalid,
    #[error("this token was revoked")]
    Revoked,
    #[error("this token has expired")]
    Expired,
    #[error("this token's operator identity waits for approval by a different operator (POST /v1/tokens/{{id}}/approve)")]
    AwaitingApproval,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Resolves an `Authorization` header value to a principal: a live token
/// (not revoked, not expired) whose staff identity, if any, is approved.
pub fn authenticate(storage: &Storage, header: Option<&str>) -> Result<Principal, AuthError> {
    let header = header.ok_or(AuthError::Missing)?;
    let token = header
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(AuthError::Invalid)?;
    let record = storage.authenticate(token)?.ok_or(AuthError::Invalid)?;
    principal_of(storage, record)
}

/// The principal behind a control-panel session: the token it was made from
/// (by its digest), which must still be live — revoking the token ends the
/// session.
pub fn authenticate_digest(storage: &Storage, digest: &[u8; 32]) -> Result<Principal, AuthError> {
    let record = storage.catalog.token(digest)?.ok_or(AuthError::Revoked)?;
    principal_of(storage, record)
}

fn principal_of(storage: &Storage, record: TokenRecord) -> Result<Principal, AuthError> {
    let now = unix_now();
    match record.state_at(now) {
        "revoked" => return Err(AuthError::Revoked),
        "expired" => return Err(AuthError::Expired),
        _ => {}
    }
    let mut sponsors = Vec::new();
    if let Some(name) = &record.identity {
        // A staff token without its identity on file is not trusted.
        let identity = storage.catalog.identity(name).ok_or(AuthError::Invalid)?;
        if identity.pending {
            return Err(AuthError::AwaitingApproval);
        }
        if identity.role != record.role {
            return Err(AuthError::Invalid);
        }
        sponsors.push(identity.created_by);
    } else if record.role != Role::TenantAdmin {
        return Err(AuthError::Invalid);
    }
    storage.catalog.note_token_used(&record.id, now);
    let mut principal = Principal::from(record);
    principal.sponsors.extend(sponsors);
    // A person's own second token is not its sponsor.
    let me = principal.person();
    principal.sponsors.retain(|s| s != &me);
    principal.sponsors.sort();
    principal.sponsors.dedup();
    Ok(principal)
}

/// Everything a caller can ask of the control API, with the tenant it concerns.
#[derive(Debug, Clone)]
pub enum Action<'a> {
    CreateTenant,
    ListTenants,
    ReadTenant(&'a TenantId),
    DeactivateTenant(&'a TenantId),
    ReactivateTenant(&'a TenantId),
    PurgeTenant(&'a TenantId),
    ReadRecords(&'a TenantId),
    WriteRecords(&'a TenantId),
    MintToken(Role),
    RotateMasterKey,
    ExportTenant(&'a TenantId),
    /// Start, list and read backups of a tenant.
    Backups(&'a TenantId),
    RestoreBackup(&'a TenantId),
    ImportTenant,
    UpgradeTenant(&'a TenantId),
    /// Rotate the tenant's data key, and follow the rotation.
    RotateDataKey(&'a TenantId),
    /// Wrap the tenant's data key by a key in its own key service: its
    /// admins only (an operator gives one only when creating the tenant,
    /// `POST /v1/tenants` with `customer_key`: no insider puts a key of
    /// their own between a live tenant and its data).
    AttachCustomerKey(&'a TenantId),
    /// Back to the master key alone: the tenant's admins only.
    DetachCustomerKey(&'a TenantId),
    /// Register, list and remove the tenant's webhook endpoints.
    ManageWebhooks(&'a TenantId),
    /// Register, list and remove the host's own endpoints (every tenant's
    /// events and the host's; never record content).
    ManageHostWebhooks,
    /// How the tenant's writes are acknowledged (`local`, `replicated`).
    SetDurability(&'a TenantId),
    /// Begin, complete or abort a move to another host.
    MoveTenant(&'a TenantId),
    /// Where a tenant's data and backups are.
    ReadCopies(&'a TenantId),
    /// Backup regions, their lag, and the tenants in their stores (ids only).
    ReadRegions,
    /// Ask for a break-glass grant.
    RequestAccess,
    /// Read or decide an access request (who exactly is the grant's own check).
    HandleAccessRequest,
    /// The tenant's access log and audit proofs.
    ReadAuditTrail(&'a TenantId),
    /// Ask for, or approve, an admin recovery (two operators).
    AdminRecovery,
    /// Cancel a pending admin recovery (the tenant's admins; the handler
    /// checks which tenant).
    CancelAdminRecovery,
    /// List and revoke tokens: a tenant admin its tenant's admin tokens, an
    /// operator staff tokens (the handler filters); approve a new operator
    /// identity (operators; a different person, checked by `tokens`).
    ManageTokens,
    ApproveOperator,
    /// Approve a move an operator started (the tenant's admins only).
    ApproveMove(&'a TenantId),
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub &'static str);

/// The policy. Deny unless a line below allows.
pub fn authorize(principal: &Principal, action: &Action<'_>) -> Result<(), Denied> {
    use Role::*;
    let own = |tenant: &TenantId| principal.is_admin_of(tenant);
    let allowed = match (action, principal.role) {
        (
            Action::CreateTenant
            | Action::ListTenants
            | Action::RotateMasterKey
            | Action::ImportTenant,
            role,
        ) => role == Operator,

        (
            Action::ReadTenant(t)
            | Action::DeactivateTenant(t)
            | Action::ReactivateTenant(t)
            | Action::UpgradeTenant(t)
            | Action::RotateDataKey(t)
            | Action::SetDurability(t),
            role,
        ) => role == Operator || own(t),
        (Action::PurgeTenant(_), role) => role == Operator,
        (Action::ReadCopies(t) | Action::MoveTenant(t), role) => role == Operator || own(t),
        (Action::ReadRegions, role) => matches!(role, Operator | BackupAgent),
        (Action::RequestAccess, role) => role == Support,
        // Requesters, tenant admins and operators; `grants` decides per request.
        (Action::HandleAccessRequest, role) => matches!(role, Support | TenantAdmin | Operator),
        (Action::ReadAuditTrail(t), _) => own(t),
        (Action::ManageWebhooks(t), _) => own(t),
        (Action::ManageHostWebhooks, role) => role == Operator,
        (Action::AttachCustomerKey(t) | Action::DetachCustomerKey(t), _) => own(t),
        // The one way staff obtain a tenant-admin token: two operators, audited,
        // shown in the tenant's access log (`grants::Recovery`).
        (Action::AdminRecovery, role) => role == Operator,
        (Action::CancelAdminRecovery, role) => role == TenantAdmin,
        (Action::ManageTokens, role) => matches!(role, Operator | TenantAdmin),
        (Action::ApproveOperator, role) => role == Operator,
        (Action::ApproveMove(t), _) => own(t),

        // Records: only the tenant's own admins. Operators, backup agents and
        // support engineers without a grant never reach tenant data.
        (Action::ReadRecords(t) | Action::WriteRecords(t), TenantAdmin) => own(t),
        // Support engineers only with a grant, which the data path checks:
        // live, theirs, this tenant, in scope.
        (Action::ReadRecords(_) | Action::WriteRecords(_), Support) => principal.grant.is_some(),
        (Action::ReadRecords(_) | Action::WriteRecords(_), Operator | BackupAgent) => false,

        // The portable export is plaintext: the tenant's own admins only.
        (Action::ExportTenant(t), _) => own(t),
        // Backups are sealed: staff may start, list and restore them. A restore
        // gives the new tenant the source's admin credentials, not the caller.
        (Action::Backups(t) | Action::RestoreBackup(t), role) => {
            matches!(role, Operator | BackupAgent) || own(t)
        }

        // Operators mint staff tokens, never tenant-admin tokens; a tenant admin
        // mints more admin tokens for its own tenant only.
        (Action::MintToken(Support | BackupAgent | Operator), Operator) => true,
        (Action::MintToken(TenantAdmin), TenantAdmin) => principal.tenant.is_some(),
        (Action::MintToken(_), _) => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(Denied(match action {
            Action::ReadRecords(_) | Action::WriteRecords(_) => {
                "only the tenant's own admins may reach its records"
            }
            Action::MintToken(TenantAdmin) => {
                "only a tenant's admin may mint admin tokens for that tenant"
            }
            _ => "this token's role may not do this",
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(role: Role, tenant: Option<&TenantId>) -> Principal {
        Principal {
            token_id: "t".into(),
            role,
            tenant: tenant.cloned(),
            also: Vec::new(),
            name: "n".into(),
            identity: None,
            sponsors: Vec::new(),
            grant: None,
        }
    }

    #[test]
    fn policy_table() {
        let mine = TenantId::parse(&"a".repeat(32)).unwrap();
        let other = TenantId::parse(&"b".repeat(32)).unwrap();
        let op = principal(Role::Operator, None);
        let admin = principal(Role::TenantAdmin, Some(&mine));
        let support = principal(Role::Support, None);
        let agent = principal(Role::BackupAgent, None);
        let cases: Vec<(&Principal, Action, bool)> = vec![
            (&op, Action::CreateTenant, true),
            (&admin, Action::CreateTenant, false),
            (&op, Action::ReadRecords(&mine), false),
            (&op, Action::WriteRecords(&mine), false),
            (&support, Action::ReadRecords(&mine), false),
            (&agent, Action::ReadRecords(&mine), false),
            (&admin, Action::ReadRecords(&mine), true),
            (&admin, Action::WriteRecords(&other), false),
            (&admin, Action::ReadTenant(&other), false),
            (&admin, Action::PurgeTenant(&mine), false),
            (&op, Action::PurgeTenant(&mine), true),
            (&op, Action::MintToken(Role::TenantAdmin), false),
            (&op, Action::MintToken(Role::Support), true),
            (&admin, Action::MintToken(Role::TenantAdmin), true),
            (&admin, Action::MintToken(Role::Operator), false),
            (&support, Action::MintToken(Role::Support), false),
            (&agent, Action::ListTenants, false),
            (&op, Action::ExportTenant(&mine), false),
            (&agent, Action::ExportTenant(&mine), false),
            (&admin, Action::ExportTenant(&mine), true),
            (&admin, Action::ExportTenant(&other), false),
            (&agent, Action::Backups(&mine), true),
            (&support, Action::Backups(&mine), false),
            (&admin, Action::RestoreBackup(&other), false),
            (&op, Action::ImportTenant, true),
            (&admin, Action::ImportTenant, false),
        ];
        for (who, action, expected) in cases {
            assert_eq!(
                authorize(who, &action).is_ok(),
                expected,
                "{:?} {action:?}",
                who.role
            );
        }
    }
}
