//! Request line → typed [`Endpoint`]. Nothing runs before a request is parsed
//! into one of these; ids that do not parse are unknown resources (404).

use hyper::Method;

use super::grants::Decision;
use super::ApiError;
use crate::auth::Action;
use crate::ids::{BackupId, RecordId, TenantId, TokenId};
use crate::schema::is_identifier;

/// The steps of a region move, on the source host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveStep {
    Begin,
    /// The tenant's admin agrees to a move an operator proposed.
    Approve,
    Complete,
    Abort,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Health,
    CreateTenant,
    ListTenants,
    ReadTenant(TenantId),
    DeactivateTenant(TenantId),
    ReactivateTenant(TenantId),
    PurgeTenant(TenantId),
    CreateRecord(TenantId, String),
    ListRecords(TenantId, String),
    ReadRecord(TenantId, String, RecordId),
    ReplaceRecord(TenantId, String, RecordId),
    DeleteRecord(TenantId, String, RecordId),
    MintToken,
    ListTokens,
    RevokeToken(TokenId),
    ApproveToken(TokenId),
    RotateMasterKey,
    ExportTenant(TenantId),
    StartBackup(TenantId),
    ListBackups(TenantId),
    ReadBackup(TenantId, BackupId),
    RestoreBackup(TenantId, BackupId),
    ImportTenant,
    UpgradeTenant(TenantId),
    RotateDataKey(TenantId),
    /// The tenant's own key (customer-managed keys).
    AttachKey(TenantId),
    DetachKey(TenantId),
    ReadKeyRotation(TenantId, String),
    CreateWebhook(TenantId),
    ListWebhooks(TenantId),
    DeleteWebhook(TenantId, String),
    TestWebhook(TenantId, String),
    WebhookDeliveries(TenantId, String),
    /// The host's own endpoints (operators): `/v1/webhooks…`.
    CreateHostWebhook,
    ListHostWebhooks,
    DeleteHostWebhook(String),
    TestHostWebhook(String),
    HostWebhookDeliveries(String),
    SetDurability(TenantId),
    PointInTimeRestore(TenantId),
    SetBackupSchedule(TenantId),
    Copies(TenantId),
    MoveTenant(TenantId, MoveStep),
    RequestAccess,
    ReadAccessRequest(String),
    DecideAccessRequest(String, Decision),
    AccessLog(TenantId),
    AuditProof(TenantId),
    AuditPublicKey,
    RequestAdminRecovery(TenantId),
    ApproveAdminRecovery(String),
    CancelAdminRecovery(String),
    ListRegions,
    RegionTenants(String),
    ListDrills,
    /// What waits for a second operator: emergency requests, admin recoveries.
    PendingApprovals,
    /// The control panel's page and files (`""` is the page).
    Panel(String),
    CreateSession,
    ReadSession,
    EndSession,
}

/// How an endpoint's caller is checked (see [`Endpoint::check`]).
pub enum Check<'a> {
    /// Anyone, signed in or not.
    Public,
    /// The policy table's verdict on this action.
    Action(Action<'a>),
    /// The named handler checks: what is asked depends on more than the path.
    InHandler(&'static str),
}

impl Endpoint {
    /// The endpoint's kind, for metrics and logs: the variant's name, never
    /// an id from the path.
    pub fn kind(&self) -> &'static str {
        match self {
            Endpoint::Health => "Health",
            Endpoint::CreateTenant => "CreateTenant",
            Endpoint::ListTenants => "ListTenants",
            Endpoint::ReadTenant(..) => "ReadTenant",
            Endpoint::DeactivateTenant(..) => "DeactivateTenant",
            Endpoint::ReactivateTenant(..) => "ReactivateTenant",
            Endpoint::PurgeTenant(..) => "PurgeTenant",
            Endpoint::CreateRecord(..) => "CreateRecord",
            Endpoint::ListRecords(..) => "ListRecords",
            Endpoint::ReadRecord(..) => "ReadRecord",
            Endpoint::ReplaceRecord(..) => "ReplaceRecord",
            Endpoint::DeleteRecord(..) => "DeleteRecord",
            Endpoint::MintToken => "MintToken",
            Endpoint::ListTokens => "ListTokens",
            Endpoint::RevokeToken(..) => "RevokeToken",
            Endpoint::ApproveToken(..) => "ApproveToken",
            Endpoint::RotateMasterKey => "RotateMasterKey",
            Endpoint::ExportTenant(..) => "ExportTenant",
            Endpoint::StartBackup(..) => "StartBackup",
            Endpoint::ListBackups(..) => "ListBackups",
            Endpoint::ReadBackup(..) => "ReadBackup",
            Endpoint::RestoreBackup(..) => "RestoreBackup",
            Endpoint::ImportTenant => "ImportTenant",
            Endpoint::UpgradeTenant(..) => "UpgradeTenant",
            Endpoint::RotateDataKey(..) => "RotateDataKey",
            Endpoint::AttachKey(..) => "AttachKey",
            Endpoint::DetachKey(..) => "DetachKey",
            Endpoint::ReadKeyRotation(..) => "ReadKeyRotation",
            Endpoint::CreateWebhook(..) => "CreateWebhook",
            Endpoint::ListWebhooks(..) => "ListWebhooks",
            Endpoint::DeleteWebhook(..) => "DeleteWebhook",
            Endpoint::TestWebhook(..) => "TestWebhook",
            Endpoint::WebhookDeliveries(..) => "WebhookDeliveries",
            Endpoint::CreateHostWebhook => "CreateHostWebhook",
            Endpoint::ListHostWebhooks => "ListHostWebhooks",
            Endpoint::DeleteHostWebhook(_) => "DeleteHostWebhook",
            Endpoint::TestHostWebhook(_) => "TestHostWebhook",
            Endpoint::HostWebhookDeliveries(_) => "HostWebhookDeliveries",
            Endpoint::SetDurability(..) => "SetDurability",
            Endpoint::PointInTimeRestore(..) => "PointInTimeRestore",
            Endpoint::SetBackupSchedule(..) => "SetBackupSchedule",
            Endpoint::Copies(..) => "Copies",
            Endpoint::MoveTenant(..) => "MoveTenant",
            Endpoint::RequestAccess => "RequestAccess",
            Endpoint::ReadAccessRequest(..) => "ReadAccessRequest",
            Endpoint::DecideAccessRequest(..) => "DecideAccessRequest",
            Endpoint::AccessLog(..) => "AccessLog",
            Endpoint::AuditProof(..) => "AuditProof",
            Endpoint::AuditPublicKey => "AuditPublicKey",
            Endpoint::RequestAdminRecovery(..) => "RequestAdminRecovery",
            Endpoint::ApproveAdminRecovery(..) => "ApproveAdminRecovery",
            Endpoint::CancelAdminRecovery(..) => "CancelAdminRecovery",
            Endpoint::ListRegions => "ListRegions",
            Endpoint::RegionTenants(..) => "RegionTenants",
            Endpoint::ListDrills => "ListDrills",
            Endpoint::PendingApprovals => "PendingApprovals",
            Endpoint::Panel(..) => "Panel",
            Endpoint::CreateSession => "CreateSession",
            Endpoint::ReadSession => "ReadSession",
            Endpoint::EndSession => "EndSession",
        }
    }

    pub fn parse(method: &Method, path: &str) -> Result<Endpoint, ApiError> {
        let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
        let tenant =
            |s: &str| TenantId::parse(s).ok_or_else(|| ApiError::NotFound("unknown tenant".into()));
        let collection = |s: &str| {
            if is_identifier(s) {
                Ok(s.to_string())
            } else {
                Err(ApiError::NotFound(format!("unknown collection {s:?}")))
            }
        };
        let backup = |s: &str| {
            BackupId::parse(s).ok_or_else(|| ApiError::NotFound("backup not found".into()))
        };
        let grant = |s: &str| {
            if s.len() == 32
                && s.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            {
                Ok(s.to_string())
            } else {
                Err(ApiError::NotFound("no such access request".into()))
            }
        };
        let token =
            |s: &str| TokenId::parse(s).ok_or_else(|| ApiError::NotFound("no such token".into()));
        let webhook = |s: &str| grant(s).map_err(|_| ApiError::NotFound("no such webhook".into()));
        let record = |s: &str| {
            RecordId::parse(s).ok_or_else(|| ApiError::NotFound("record not found".into()))
        };
        use Method as M;
        let endpoint = match (method, segments.as_slice()) {
            (&M::GET, ["healthz"]) => Endpoint::Health,
            (&M::GET, ["panel"]) => Endpoint::Panel(String::new()),
            (&M::GET, ["panel", file]) => Endpoint::Panel(file.to_string()),
            (&M::POST, ["v1", "sessions"]) => Endpoint::CreateSession,
            (&M::GET, ["v1", "sessions", "current"]) => Endpoint::ReadSession,
            (&M::DELETE, ["v1", "sessions", "current"]) => Endpoint::EndSession,
            (&M::POST, ["v1", "tenants"]) => Endpoint::CreateTenant,
            (&M::POST, ["v1", "tenants", "import"]) => Endpoint::ImportTenant,
            (&M::GET, ["v1", "tenants", id, "export"]) => Endpoint::ExportTenant(tenant(id)?),
            (&M::POST, ["v1", "tenants", id, "backups"]) => Endpoint::StartBackup(tenant(id)?),
            (&M::GET, ["v1", "tenants", id, "backups"]) => Endpoint::ListBackups(tenant(id)?),
            (&M::GET, ["v1", "tenants", id, "backups", b]) => {
                Endpoint::ReadBackup(tenant(id)?, backup(b)?)
            }
            (&M::POST, ["v1", "tenants", id, "backups", b, "restore"]) => {
                Endpoint::RestoreBackup(tenant(id)?, backup(b)?)
            }
            (&M::GET, ["v1", "tenants"]) => Endpoint::ListTenants,
            (&M::GET, ["v1", "tenants", id]) => Endpoint::ReadTenant(tenant(id)?),
            (&M::DELETE, ["v1", "tenants", id]) => Endpoint::DeactivateTenant(tenant(id)?),
            (&M::POST, ["v1", "tenants", id, "reactivate"]) => {
                Endpoint::ReactivateTenant(tenant(id)?)
            }
            (&M::POST, ["v1", "tenants", id, "purge"]) => Endpoint::PurgeTenant(tenant(id)?),
            (&M::POST, ["v1", "tenants", id, "upgrade"]) => Endpoint::UpgradeTenant(tenant(id)?),
            (&M::POST, ["v1", "tenants", id, "webhooks"]) => Endpoint::CreateWebhook(tenant(id)?),
            (&M::GET, ["v1", "tenants", id, "webhooks"]) => Endpoint::ListWebhooks(tenant(id)?),
            (&M::DELETE, ["v1", "tenants", id, "webhooks", w]) => {
                Endpoint::DeleteWebhook(tenant(id)?, webhook(w)?)
            }
            (&M::POST, ["v1", "tenants", id, "webhooks", w, "test"]) => {
                Endpoint::TestWebhook(tenant(id)?, webhook(w)?)
            }
            (&M::GET, ["v1", "tenants", id, "webhooks", w, "deliveries"]) => {
                Endpoint::WebhookDeliveries(tenant(id)?, webhook(w)?)
            }
            (&M::POST, ["v1", "webhooks"]) => Endpoint::CreateHostWebhook,
            (&M::GET, ["v1", "webhooks"]) => Endpoint::ListHostWebhooks,
            (&M::DELETE, ["v1", "webhooks", w]) => Endpoint::DeleteHostWebhook(webhook(w)?),
            (&M::POST, ["v1", "webhooks", w, "test"]) => Endpoint::TestHostWebhook(webhook(w)?),
            (&M::GET, ["v1", "webhooks", w, "deliveries"]) => {
                Endpoint::HostWebhookDeliveries(webhook(w)?)
            }
            (&M::PUT, ["v1", "tenants", id, "key"]) => Endpoint::AttachKey(tenant(id)?),
            (&M::DELETE, ["v1", "tenants", id, "key"]) => Endpoint::DetachKey(tenant(id)?),
            (&M::POST, ["v1", "tenants", id, "keys", "rotate"]) => {
                Endpoint::RotateDataKey(tenant(id)?)
            }
            (&M::GET, ["v1", "tenants", id, "keys", "rotations", r]) => {
                let rotation =
                    grant(r).map_err(|_| ApiError::NotFound("no such rotation".into()))?;
                Endpoint::ReadKeyRotation(tenant(id)?, rotation)
            }
            (&M::PUT, ["v1", "tenants", id, "durability"]) => Endpoint::SetDurability(tenant(id)?),
            (&M::POST, ["v1", "tenants", id, "restore"]) => {
                Endpoint::PointInTimeRestore(tenant(id)?)
            }
            (&M::PUT, ["v1", "tenants", id, "backup-schedule"]) => {
                Endpoint::SetBackupSchedule(tenant(id)?)
            }
            (&M::POST, ["v1", "tenants", id, "collections", c, "records"]) => {
                Endpoint::CreateRecord(tenant(id)?, collection(c)?)
            }
            (&M::GET, ["v1", "tenants", id, "collections", c, "records"]) => {
                Endpoint::ListRecords(tenant(id)?, collection(c)?)
            }
            (&M::GET, ["v1", "tenants", id, "collections", c, "records", r]) => {
                Endpoint::ReadRecord(tenant(id)?, collection(c)?, record(r)?)
            }
            (&M::PUT, ["v1", "tenants", id, "collections", c, "records", r]) => {
                Endpoint::ReplaceRecord(tenant(id)?, collection(c)?, record(r)?)
            }
            (&M::DELETE, ["v1", "tenants", id, "collections", c, "records", r]) => {
                Endpoint::DeleteRecord(tenant(id)?, collection(c)?, record(r)?)
            }
            (&M::GET, ["v1", "tenants", id, "copies"]) => Endpoint::Copies(tenant(id)?),
            (&M::POST, ["v1", "access-requests"]) => Endpoint::RequestAccess,
            (&M::GET, ["v1", "access-requests", g]) => Endpoint::ReadAccessRequest(grant(g)?),
            (&M::POST, ["v1", "access-requests", g, step]) => {
                let decision = match *step {
                    "approve" => Decision::Approve,
                    "deny" => Decision::Deny,
                    "revoke" => Decision::Revoke,
                    "withdraw" => Decision::Withdraw,
                    _ => return Err(ApiError::NotFound("no such endpoint".into())),
                };
                Endpoint::DecideAccessRequest(grant(g)?, decision)
            }
            (&M::GET, ["v1", "tenants", id, "access-log"]) => Endpoint::AccessLog(tenant(id)?),
            (&M::GET, ["v1", "tenants", id, "audit-proof"]) => Endpoint::AuditProof(tenant(id)?),
            (&M::GET, ["v1", "audit", "public-key"]) => Endpoint::AuditPublicKey,
            (&M::POST, ["v1", "tenants", id, "admin-recovery"]) => {
                Endpoint::RequestAdminRecovery(tenant(id)?)
            }
            (&M::POST, ["v1", "admin-recoveries", r, "approve"]) => {
                Endpoint::ApproveAdminRecovery(grant(r)?)
            }
            (&M::POST, ["v1", "admin-recoveries", r, "cancel"]) => {
                Endpoint::CancelAdminRecovery(grant(r)?)
            }
            (&M::POST, ["v1", "tenants", id, "move"]) => {
                Endpoint::MoveTenant(tenant(id)?, MoveStep::Begin)
            }
            (&M::POST, ["v1", "tenants", id, "move", "approve"]) => {
                Endpoint::MoveTenant(tenant(id)?, MoveStep::Approve)
            }
            (&M::POST, ["v1", "tenants", id, "move", "complete"]) => {
                Endpoint::MoveTenant(tenant(id)?, MoveStep::Complete)
            }
            (&M::POST, ["v1", "tenants", id, "move", "abort"]) => {
                Endpoint::MoveTenant(tenant(id)?, MoveStep::Abort)
            }
            (&M::GET, ["v1", "regions"]) => Endpoint::ListRegions,
            (&M::GET, ["v1", "drills"]) => Endpoint::ListDrills,
            (&M::GET, ["v1", "approvals"]) => Endpoint::PendingApprovals,
            (&M::GET, ["v1", "regions", r, "tenants"]) => Endpoint::RegionTenants(r.to_string()),
            (&M::POST, ["v1", "tokens"]) => Endpoint::MintToken,
            (&M::GET, ["v1", "tokens"]) => Endpoint::ListTokens,
            (&M::DELETE, ["v1", "tokens", t]) => Endpoint::RevokeToken(token(t)?),
            (&M::POST, ["v1", "tokens", t, "approve"]) => Endpoint::ApproveToken(token(t)?),
            (&M::POST, ["v1", "keys", "rotate"]) => Endpoint::RotateMasterKey,
            (_, segments) if Self::is_known_path(segments) => {
                return Err(ApiError::MethodNotAllowed)
            }
            _ => return Err(ApiError::NotFound("no such endpoint".into())),
        };
        Ok(endpoint)
    }

    /// A path some endpoint serves with another method: 405, not 404.
    fn is_known_path(segments: &[&str]) -> bool {
        matches!(
            segments,
            ["healthz"]
                | ["panel"]
                | ["panel", _]
                | ["v1", "sessions"]
                | ["v1", "sessions", "current"]
                | ["v1", "tenants"]
                | ["v1", "tenants", _]
                | [
                    "v1",
                    "tenants",
                    _,
                    "reactivate" | "purge" | "upgrade" | "durability" | "restore"
                ]
                | ["v1", "tenants", _, "collections", _, "records"]
                | ["v1", "tenants", _, "collections", _, "records", _]
                | ["v1", "tokens"]
                | ["v1", "tokens", _]
                | ["v1", "tokens", _, "approve"]
                | ["v1", "keys", "rotate"]
                | [
                    "v1",
                    "tenants",
                    _,
                    "export" | "backups" | "backup-schedule" | "copies"
                ]
                | ["v1", "regions"]
                | ["v1", "drills"]
                | ["v1", "approvals"]
                | ["v1", "access-requests"]
                | ["v1", "access-requests", _]
                | [
                    "v1",
                    "access-requests",
                    _,
                    "approve" | "deny" | "revoke" | "withdraw"
                ]
                | ["v1", "tenants", _, "access-log" | "audit-proof"]
                | ["v1", "audit", "public-key"]
                | ["v1", "tenants", _, "admin-recovery"]
                | ["v1", "tenants", _, "keys", "rotate"]
                | ["v1", "tenants", _, "key"]
                | ["v1", "tenants", _, "webhooks"]
                | ["v1", "tenants", _, "webhooks", _]
                | ["v1", "tenants", _, "webhooks", _, "test" | "deliveries"]
                | ["v1", "webhooks"]
                | ["v1", "webhooks", _]
                | ["v1", "webhooks", _, "test" | "deliveries"]
                | ["v1", "tenants", _, "keys", "rotations", _]
                | ["v1", "admin-recoveries", _, "approve" | "cancel"]
                | ["v1", "tenants", _, "move"]
                | ["v1", "tenants", _, "move", "approve" | "complete" | "abort"]
                | ["v1", "regions", _, "tenants"]
                | ["v1", "tenants", _, "backups", _]
                | ["v1", "tenants", _, "backups", _, "restore"]
        )
    }

    /// The audited state change this endpoint asks for, named as its outcome
    /// entry names it; `None` for reads.
    /// Who may call it: the one place that maps an endpoint to the policy
    /// table's action (`auth::authorize`), checked before the body is read.
    pub fn check(&self) -> Check<'_> {
        use Action as A;
        Check::Action(match self {
            Endpoint::Health | Endpoint::AuditPublicKey | Endpoint::Panel(_) => {
                return Check::Public
            }
            // The token is in the body; the session is the caller's own.
            Endpoint::CreateSession => return Check::InHandler("sessions::create"),
            Endpoint::ReadSession | Endpoint::EndSession => {
                return Check::InHandler("sessions::read, sessions::end")
            }
            // The role asked for is in the body.
            Endpoint::MintToken => return Check::InHandler("tokens::mint"),
            // Checked inside `records::run`, so that a refusal through a
            // grant is recorded in the tenant's access log.
            Endpoint::CreateRecord(..)
            | Endpoint::ListRecords(..)
            | Endpoint::ReadRecord(..)
            | Endpoint::ReplaceRecord(..)
            | Endpoint::DeleteRecord(..) => return Check::InHandler("records::run"),
            Endpoint::CreateTenant => A::CreateTenant,
            Endpoint::ListTenants => A::ListTenants,
            Endpoint::ReadTenant(t) => A::ReadTenant(t),
            Endpoint::DeactivateTenant(t) => A::DeactivateTenant(t),
            Endpoint::ReactivateTenant(t) => A::ReactivateTenant(t),
            Endpoint::PurgeTenant(t) => A::PurgeTenant(t),
            Endpoint::ListTokens | Endpoint::RevokeToken(_) => A::ManageTokens,
            Endpoint::ApproveToken(_) => A::ApproveOperator,
            Endpoint::RotateMasterKey => A::RotateMasterKey,
            Endpoint::ExportTenant(t) => A::ExportTenant(t),
            Endpoint::StartBackup(t)
            | Endpoint::ListBackups(t)
            | Endpoint::ReadBackup(t, _)
            | Endpoint::SetBackupSchedule(t) => A::Backups(t),
            Endpoint::RestoreBackup(t, _) => A::RestoreBackup(t),
            Endpoint::ImportTenant => A::ImportTenant,
            Endpoint::UpgradeTenant(t) => A::UpgradeTenant(t),
            Endpoint::RotateDataKey(t) | Endpoint::ReadKeyRotation(t, _) => A::RotateDataKey(t),
            Endpoint::AttachKey(t) => A::AttachCustomerKey(t),
            Endpoint::DetachKey(t) => A::DetachCustomerKey(t),
            Endpoint::CreateWebhook(t)
            | Endpoint::ListWebhooks(t)
            | Endpoint::DeleteWebhook(t, _)
            | Endpoint::TestWebhook(t, _)
            | Endpoint::WebhookDeliveries(t, _) => A::ManageWebhooks(t),
            Endpoint::CreateHostWebhook
            | Endpoint::ListHostWebhooks
            | Endpoint::DeleteHostWebhook(_)
            | Endpoint::TestHostWebhook(_)
            | Endpoint::HostWebhookDeliveries(_) => A::ManageHostWebhooks,
            Endpoint::SetDurability(t) => A::SetDurability(t),
            Endpoint::PointInTimeRestore(t) => A::RestoreBackup(t),
            Endpoint::Copies(t) => A::ReadCopies(t),
            Endpoint::MoveTenant(t, MoveStep::Approve) => A::ApproveMove(t),
            Endpoint::MoveTenant(t, _) => A::MoveTenant(t),
            Endpoint::RequestAccess => A::RequestAccess,
            Endpoint::ReadAccessRequest(_) | Endpoint::DecideAccessRequest(..) => {
                A::HandleAccessRequest
            }
            Endpoint::AccessLog(t) | Endpoint::AuditProof(t) => A::ReadAuditTrail(t),
            Endpoint::RequestAdminRecovery(_) | Endpoint::ApproveAdminRecovery(_) => {
                A::AdminRecovery
            }
            Endpoint::CancelAdminRecovery(_) => A::CancelAdminRecovery,
            Endpoint::ListRegions | Endpoint::RegionTenants(_) => A::ReadRegions,
            // Every tenant's drill results: an operator's host-wide view.
            Endpoint::ListDrills => A::ListTenants,
            // Requests across tenants waiting for a second operator.
            Endpoint::PendingApprovals => A::AdminRecovery,
        })
    }

    pub fn state_change(&self) -> Option<&'static str> {
        Some(match self {
            Endpoint::CreateTenant => "tenant.create",
            Endpoint::DeactivateTenant(_) => "tenant.deactivate",
            Endpoint::ReactivateTenant(_) => "tenant.reactivate",
            Endpoint::PurgeTenant(_) => "tenant.purge",
            Endpoint::UpgradeTenant(_) => "tenant.upgrade",
            Endpoint::RotateDataKey(_) => "key.rotate",
            Endpoint::AttachKey(_) => "key.attach",
            Endpoint::DetachKey(_) => "key.detach",
            Endpoint::CreateWebhook(_) => "webhook.create",
            Endpoint::DeleteWebhook(..) => "webhook.delete",
            Endpoint::CreateHostWebhook => "webhook.create",
            Endpoint::DeleteHostWebhook(_) => "webhook.delete",
            Endpoint::SetDurability(_) => "tenant.durability",
            Endpoint::PointInTimeRestore(_) => "tenant.restore",
            Endpoint::SetBackupSchedule(_) => "backup.schedule",
            Endpoint::StartBackup(_) => "backup.start",
            Endpoint::RestoreBackup(..) => "backup.restore",
            Endpoint::ImportTenant => "tenant.import",
            Endpoint::ExportTenant(_) => "tenant.export",
            Endpoint::MoveTenant(_, MoveStep::Begin) => "tenant.move",
            Endpoint::MoveTenant(_, MoveStep::Approve) => "tenant.move-approve",
            Endpoint::MoveTenant(_, MoveStep::Complete) => "tenant.move-complete",
            Endpoint::MoveTenant(_, MoveStep::Abort) => "tenant.move-abort",
            Endpoint::MintToken => "token.mint",
            Endpoint::RevokeToken(_) => "token.revoke",
            Endpoint::ApproveToken(_) => "token.approve-operator",
            Endpoint::RotateMasterKey => "keys.rotate",
            Endpoint::RequestAccess => "grant.request",
            Endpoint::DecideAccessRequest(..) => "grant.decide",
            Endpoint::RequestAdminRecovery(_) => "admin-recovery.request",
            Endpoint::ApproveAdminRecovery(_) => "admin-recovery.approve",
            Endpoint::CancelAdminRecovery(_) => "admin-recovery.cancel",
            _ => return None,
        })
    }

    /// The tenant this endpoint concerns, for the request's tracing span.
    pub fn tenant(&self) -> Option<&TenantId> {
        match self {
            Endpoint::ReadTenant(t)
            | Endpoint::DeactivateTenant(t)
            | Endpoint::ReactivateTenant(t)
            | Endpoint::PurgeTenant(t)
            | Endpoint::CreateRecord(t, _)
            | Endpoint::ListRecords(t, _)
            | Endpoint::ReadRecord(t, _, _)
            | Endpoint::ReplaceRecord(t, _, _)
            | Endpoint::DeleteRecord(t, _, _)
            | Endpoint::ExportTenant(t)
            | Endpoint::StartBackup(t)
            | Endpoint::ListBackups(t)
            | Endpoint::ReadBackup(t, _)
            | Endpoint::RestoreBackup(t, _)
            | Endpoint::UpgradeTenant(t)
            | Endpoint::RotateDataKey(t)
            | Endpoint::AttachKey(t)
            | Endpoint::DetachKey(t)
            | Endpoint::ReadKeyRotation(t, _)
            | Endpoint::CreateWebhook(t)
            | Endpoint::ListWebhooks(t)
            | Endpoint::DeleteWebhook(t, _)
            | Endpoint::TestWebhook(t, _)
            | Endpoint::WebhookDeliveries(t, _)
            | Endpoint::SetDurability(t)
            | Endpoint::PointInTimeRestore(t)
            | Endpoint::SetBackupSchedule(t)
            | Endpoint::Copies(t)
            | Endpoint::MoveTenant(t, _)
            | Endpoint::AccessLog(t)
            | Endpoint::RequestAdminRecovery(t)
            | Endpoint::AuditProof(t) => Some(t),
            Endpoint::Health
            | Endpoint::CreateTenant
            | Endpoint::ListTenants
            | Endpoint::MintToken
            | Endpoint::ListTokens
            | Endpoint::RevokeToken(_)
            | Endpoint::ApproveToken(_)
            | Endpoint::CancelAdminRecovery(_)
            | Endpoint::RotateMasterKey
            | Endpoint::ImportTenant
            | Endpoint::ListRegions
            | Endpoint::RegionTenants(_)
            | Endpoint::ListDrills
            | Endpoint::PendingApprovals
            | Endpoint::CreateHostWebhook
            | Endpoint::ListHostWebhooks
            | Endpoint::DeleteHostWebhook(_)
            | Endpoint::TestHostWebhook(_)
            | Endpoint::HostWebhookDeliveries(_)
            | Endpoint::Panel(_)
            | Endpoint::CreateSession
            | Endpoint::ReadSession
            | Endpoint::EndSession
            | Endpoint::RequestAccess
            | Endpoint::ReadAccessRequest(_)
            | Endpoint::DecideAccessRequest(..)
            | Endpoint::AuditPublicKey
            | Endpoint::ApproveAdminRecovery(_) => None,
        }
    }
}

/// Splits and percent-decodes a query string (`+` is a space, as in forms).
pub fn parse_query(query: &str) -> Result<Vec<(String, String)>, ApiError> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((percent_decode(key)?, percent_decode(value)?))
        })
        .collect()
}

fn percent_decode(text: &str) -> Result<String, ApiError> {
    let bad = || ApiError::BadRequest("malformed percent-encoding in the query string".into());
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = text.get(i + 1..i + 3).ok_or_else(bad)?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            other => {
                out.push(other);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_table() {
        let t = "0".repeat(32);
        let r = "1".repeat(32);
        let cases: Vec<(Method, String, Result<&str, u16>)> = vec![
            (Method::GET, "/healthz".into(), Ok("Health")),
            (Method::POST, "/v1/tenants".into(), Ok("CreateTenant")),
            (Method::GET, format!("/v1/tenants/{t}"), Ok("ReadTenant")),
            (Method::GET, "/v1/tenants/nope".into(), Err(404)),
            (Method::PATCH, format!("/v1/tenants/{t}"), Err(405)),
            (
                Method::GET,
                format!("/v1/tenants/{t}/collections/contacts/records/{r}"),
                Ok("ReadRecord"),
            ),
            (
                Method::GET,
                format!("/v1/tenants/{t}/collections/../records"),
                Err(404),
            ),
            (Method::GET, "/v1/elsewhere".into(), Err(404)),
        ];
        for (method, path, expected) in cases {
            let got = Endpoint::parse(&method, &path)
                .map(|e| format!("{e:?}"))
                .map_err(|e| e.status().as_u16());
            match expected {
                Ok(name) => assert!(
                    got.as_ref().is_ok_and(|g| g.starts_with(name)),
                    "{path}: {got:?}"
                ),
                Err(status) => assert_eq!(got.err(), Some(status), "{path}"),
            }
        }
    }

    #[test]
    fn query_decoding() {
        assert_eq!(
            parse_query("email=a%40b.c&limit=2&x=a+b").unwrap(),
            vec![
                ("email".to_string(), "a@b.c".to_string()),
                ("limit".to_string(), "2".to_string()),
                ("x".to_string(), "a b".to_string())
            ]
        );
        assert!(parse_query("a=%zz").is_err());
        assert!(parse_query("a=%ff").is_err());
    }

    /// `ops/openapi.json` and the router cannot drift: every operation the
    /// description lists parses to an endpoint (with ids of the right form in
    /// its path parameters), and every variant of [`Endpoint`], read from
    /// this file's source, is described by at least one operation.
    #[test]
    fn the_openapi_description_and_the_router_agree() {
        let text = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/ops/openapi.json"));
        let description: serde_json::Value =
            serde_json::from_str(text).expect("openapi.json parses");
        assert_eq!(description["openapi"], "3.1.0");
        let id = "0".repeat(32);
        let mut described = std::collections::BTreeSet::new();
        for (path, operations) in description["paths"].as_object().expect("paths") {
            let concrete = path
                .replace("{collection}", "contacts")
                .replace("{region}", "in")
                .replace("{id}", &id)
                .replace("{backup}", &"1".repeat(32))
                .replace("{record}", &"2".repeat(32))
                .replace("{rotation}", &"3".repeat(32))
                .replace("{webhook}", &"4".repeat(32));
            assert!(
                !concrete.contains('{'),
                "{path}: a parameter the test does not know"
            );
            for method in operations.as_object().unwrap().keys() {
                let Ok(method) = method.to_uppercase().parse::<Method>() else {
                    continue;
                };
                if !["GET", "POST", "PUT", "DELETE", "PATCH"].contains(&method.as_str()) {
                    continue;
                }
                let operation = &operations[method.as_str().to_lowercase()];
                assert!(operation["x-roles"].is_array(), "{method} {path}: x-roles");
                assert!(
                    operation["responses"].is_object(),
                    "{method} {path}: responses"
                );
                let endpoint = Endpoint::parse(&method, &concrete).unwrap_or_else(|e| {
                    panic!("{method} {path} is described but not routed: {e:?}")
                });
                described.insert(endpoint.kind().to_string());
            }
        }
        let source = include_str!("routes.rs");
        let body = source
            .split("pub enum Endpoint {")
            .nth(1)
            .and_then(|rest| rest.split("\n}").next())
            .expect("the enum in the source");
        let variants: std::collections::BTreeSet<String> = body
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("//"))
            .map(|l| l.split(['(', ',']).next().unwrap().to_string())
            .collect();
        assert!(variants.len() > 30, "the enum was read: {variants:?}");
        let missing: Vec<_> = variants.difference(&described).collect();
        assert!(
            missing.is_empty(),
            "endpoints ops/openapi.json does not describe: {missing:?}"
        );
    }
}
