//! Break-glass grants: a support engineer's time-boxed, scoped access to one
//! tenant's records, approved by the tenant's admin — or, in an emergency, by
//! two distinct operators, read-only and short, and never hidden from the
//! tenant.
//!
//! ```text
//! pending ──approve (admin; emergency: 2nd operator)──▶ active ──▶ closed
//!    └──────── deny, withdraw, revoke, expiry ────────────────────▶ closed
//! ```
//!
//! A closed grant never reopens: every transition takes the state *as of now*
//! (expiry is computed from the clock, not waited for) and only `pending` and
//! `active` have transitions out. Grants live in the catalog (tree `grants`);
//! the data path (`access::open`) reads the grant on every request, so expiry
//! and revocation take effect on the very next one.

use serde::{Deserialize, Serialize};

use crate::auth::{Principal, Role};
use crate::ids::TenantId;
use crate::storage::Kind;

pub const GRANTS: Kind<Grant> = Kind::new("grants");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    Read,
    ReadWrite,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::ReadWrite => "read-write",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClosedBecause {
    Expired,
    Revoked,
    Denied,
    Withdrawn,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum GrantState {
    Pending {
        /// The people (identities; `token:<id>` for tenant admins) who
        /// approved so far (emergency: operators).
        approvals: Vec<String>,
    },
    Active {
        approvals: Vec<String>,
        from: u64,
        until: u64,
    },
    Closed {
        because: ClosedBecause,
        at: u64,
        #[serde(default)]
        by: Option<String>,
    },
}

impl GrantState {
    pub fn name(&self) -> &'static str {
        match self {
            GrantState::Pending { .. } => "pending",
            GrantState::Active { .. } => "active",
            GrantState::Closed { .. } => "closed",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Grant {
    pub format: u32,
    pub id: String,
    pub tenant: TenantId,
    /// The requesting support engineer's token id and name.
    pub requester: String,
    pub requester_name: String,
    /// The requester's identity, and who created it or minted its token:
    /// none of them counts as a second person for this request.
    #[serde(default)]
    pub requester_identity: Option<String>,
    #[serde(default)]
    pub requester_sponsors: Vec<String>,
    /// Who created the approvers so far (emergency): a person one of them
    /// created, or who created one of them, is not a second person.
    #[serde(default)]
    pub approver_sponsors: Vec<String>,
    pub scope: Scope,
    /// Collections the grant reaches; `None`: all.
    #[serde(default)]
    pub collections: Option<Vec<String>>,
    pub duration_minutes: u64,
    /// Staff text shown to the tenant; the audit log keeps only HMACs of it.
    pub reason: String,
    pub ticket: String,
    pub emergency: bool,
    pub requested_at: u64,
    /// A pending request expires at this time.
    pub pending_until: u64,
    pub state: GrantState,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GrantError {
    #[error("nobody approves their own request")]
    SelfApproval,
    #[error("an operator who created the engineer's identity or minted its token is not a second person for its emergency")]
    Sponsor,
    #[error(
        "an operator created by the first approver, or who created it, is not a second person"
    )]
    Related,
    #[error("only the tenant's admins decide this request")]
    NotTheTenantsAdmin,
    #[error("an emergency request is decided by operators")]
    OperatorsOnly,
    #[error("this person already approved; a second, different person must")]
    AlreadyDecided,
    #[error("the request is {0}, not pending")]
    NotPending(&'static str),
    #[error("the grant is already closed")]
    Closed,
    #[error("only the engineer who asked may withdraw the request")]
    NotTheRequester,
    #[error("not allowed")]
    Denied,
}

impl Grant {
    /// The state as of `now`: a pending request or an active grant whose time
    /// is up is closed (expired).
    pub fn state_at(&self, now: u64) -> GrantState {
        match &self.state {
            GrantState::Pending { .. } if now >= self.pending_until => GrantState::Closed {
                because: ClosedBecause::Expired,
                at: self.pending_until,
                by: None,
            },
            GrantState::Active { until, .. } if now >= *until => GrantState::Closed {
                because: ClosedBecause::Expired,
                at: *until,
                by: None,
            },
            other => other.clone(),
        }
    }

    /// Live for `principal` at `now`: active, and theirs.
    pub fn live_for(&self, principal: &Principal, now: u64) -> bool {
        principal.role == Role::Support
            && principal.token_id == self.requester
            && matches!(self.state_at(now), GrantState::Active { .. })
    }

    pub fn reaches(&self, collection: &str) -> bool {
        self.collections
            .as_ref()
            .is_none_or(|c| c.iter().any(|name| name == collection))
    }

    /// Approve: the tenant's admin activates it; an emergency needs two
    /// distinct operators (the first approval leaves it pending).
    pub fn approve(&mut self, by: &Principal, now: u64) -> Result<(), GrantError> {
        let GrantState::Pending { approvals } = self.state_at(now) else {
            return Err(GrantError::NotPending(self.state_at(now).name()));
        };
        self.check_not_the_requester(by)?;
        let person = by.person();
        if approvals.contains(&person) {
            return Err(GrantError::AlreadyDecided);
        }
        let mut approvals = approvals;
        approvals.push(person.clone());
        let needed = if self.emergency {
            if by.role != Role::Operator {
                return Err(GrantError::OperatorsOnly);
            }
            if self.requester_sponsors.contains(&person) {
                return Err(GrantError::Sponsor);
            }
            if self.approver_sponsors.contains(&person)
                || by.sponsors.iter().any(|s| approvals.contains(s))
            {
                return Err(GrantError::Related);
            }
            self.approver_sponsors.extend(
                by.sponsors
                    .iter()
                    .filter(|s| s.as_str() != crate::storage::DATA_DIR_CREATOR)
                    .cloned(),
            );
            2
        } else {
            if !by.is_admin_of(&self.tenant) {
                return Err(GrantError::NotTheTenantsAdmin);
            }
            1
        };
        self.state = if approvals.len() >= needed {
            GrantState::Active {
                approvals,
                from: now,
                until: now + self.duration_minutes * 60,
            }
        } else {
            GrantState::Pending { approvals }
        };
        Ok(())
    }

    /// Deny: the first denial ends the request.
    pub fn deny(&mut self, by: &Principal, now: u64) -> Result<(), GrantError> {
        let state = self.state_at(now);
        let GrantState::Pending { approvals } = state else {
            return Err(GrantError::NotPending(state.name()));
        };
        self.check_not_the_requester(by)?;
        if approvals.contains(&by.person()) {
            return Err(GrantError::AlreadyDecided);
        }
        let allowed = by.is_admin_of(&self.tenant) || (self.emergency && by.role == Role::Operator);
        if !allowed {
            return Err(if self.emergency {
                GrantError::OperatorsOnly
            } else {
                GrantError::NotTheTenantsAdmin
            });
        }
        self.close(ClosedBecause::Denied, by, now);
        Ok(())
    }

    /// Revoke: the tenant's admin or an operator ends it now.
    pub fn revoke(&mut self, by: &Principal, now: u64) -> Result<(), GrantError> {
        if !(by.is_admin_of(&self.tenant) || by.role == Role::Operator) {
            return Err(GrantError::Denied);
        }
        match self.state_at(now) {
            GrantState::Closed { .. } => Err(GrantError::Closed),
            _ => {
                self.close(ClosedBecause::Revoked, by, now);
                Ok(())
            }
        }
    }

    /// Withdraw: the requester calls a pending request off.
    pub fn withdraw(&mut self, by: &Principal, now: u64) -> Result<(), GrantError> {
        if by.token_id != self.requester {
            return Err(GrantError::NotTheRequester);
        }
        let state = self.state_at(now);
        let GrantState::Pending { .. } = state else {
            return Err(GrantError::NotPending(state.name()));
        };
        self.close(ClosedBecause::Withdrawn, by, now);
        Ok(())
    }

    fn check_not_the_requester(&self, by: &Principal) -> Result<(), GrantError> {
        let same_person = match &self.requester_identity {
            Some(identity) => by.identity.as_ref() == Some(identity),
            None => false,
        };
        if same_person || by.token_id == self.requester {
            return Err(GrantError::SelfApproval);
        }
        Ok(())
    }

    fn close(&mut self, because: ClosedBecause, by: &Principal, now: u64) {
        self.state = GrantState::Closed {
            because,
            at: now,
            by: Some(by.person()),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(token: &str, role: Role, tenant: Option<&TenantId>) -> Principal {
        Principal {
            token_id: token.into(),
            role,
            tenant: tenant.cloned(),
            also: Vec::new(),
            name: token.into(),
            identity: (role != Role::TenantAdmin).then(|| token.to_string()),
            sponsors: Vec::new(),
            grant: None,
        }
    }

    fn grant(tenant: &TenantId, emergency: bool) -> Grant {
        Grant {
            format: 1,
            id: "g".into(),
            tenant: tenant.clone(),
            requester: "support-1".into(),
            requester_name: "alice".into(),
            requester_identity: Some("support-1".into()),
            requester_sponsors: vec!["op-1".into()],
            approver_sponsors: vec![],
            scope: Scope::Read,
            collections: None,
            duration_minutes: 30,
            reason: "r".into(),
            ticket: "t".into(),
            emergency,
            requested_at: 1000,
            pending_until: 1000 + 3600,
            state: GrantState::Pending { approvals: vec![] },
        }
    }

    #[test]
    fn lifecycle_with_a_clock() {
        let t = TenantId::generate().unwrap();
        let admin = principal("admin-1", Role::TenantAdmin, Some(&t));
        let support = principal("support-1", Role::Support, None);
        let mut g = grant(&t, false);
        assert_eq!(g.approve(&support, 1001), Err(GrantError::SelfApproval));
        g.approve(&admin, 1002).unwrap();
        assert!(g.live_for(&support, 1002 + 30 * 60 - 1));
        assert!(!g.live_for(&support, 1002 + 30 * 60));
        assert_eq!(g.state_at(1002 + 30 * 60).name(), "closed");
        // Closed never reopens.
        assert!(g.approve(&admin, 5000).is_err());
        assert_eq!(g.revoke(&admin, 5000), Err(GrantError::Closed));
        // A pending request expires.
        let mut late = grant(&t, false);
        assert_eq!(
            late.approve(&admin, 1000 + 3600),
            Err(GrantError::NotPending("closed"))
        );
    }

    #[test]
    fn emergencies_need_two_distinct_operators() {
        let t = TenantId::generate().unwrap();
        let op1 = principal("op-1", Role::Operator, None);
        let op2 = principal("op-2", Role::Operator, None);
        let admin = principal("admin-1", Role::TenantAdmin, Some(&t));
        let support = principal("support-1", Role::Support, None);
        let op3 = principal("op-3", Role::Operator, None);
        let mut g = grant(&t, true);
        assert_eq!(g.approve(&admin, 1001), Err(GrantError::OperatorsOnly));
        // op-1 created the engineer: not a second person for its emergency.
        assert_eq!(g.approve(&op1, 1001), Err(GrantError::Sponsor));
        g.approve(&op2, 1001).unwrap();
        assert_eq!(g.state.name(), "pending");
        assert_eq!(g.approve(&op2, 1002), Err(GrantError::AlreadyDecided));
        // A second token of the same person is the same person.
        let mut op2_again = principal("op-2-second-token", Role::Operator, None);
        op2_again.identity = Some("op-2".into());
        assert_eq!(g.approve(&op2_again, 1002), Err(GrantError::AlreadyDecided));
        assert!(!g.live_for(&support, 1002));
        g.approve(&op3, 1003).unwrap();
        assert!(g.live_for(&support, 1004));
        // The tenant may end it.
        g.revoke(&admin, 1005).unwrap();
        assert!(!g.live_for(&support, 1006));
    }
}

pub const RECOVERIES: Kind<Recovery> = Kind::new("admin_recoveries");

/// An operator-driven admin recovery, for a tenant that lost every admin
/// token. Asked by one operator; shown in the tenant's access log at once;
/// any live admin token of the tenant can cancel it during the waiting
/// period; carried out only after the wait, when a second, different
/// operator identity approves. The new admin token is shown once, to that
/// second operator, to hand to the tenant.
///
/// ```text
/// waiting ──wait over──▶ ready ──approve (2nd operator)──▶ completed
///    └──── cancel (tenant admin) ─┴── expiry ──▶ cancelled / expired
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recovery {
    pub format: u32,
    pub id: String,
    pub tenant: TenantId,
    /// The identity of the operator who asked, and who created it.
    pub requested_by: String,
    #[serde(default)]
    pub requested_by_sponsors: Vec<String>,
    pub reason: String,
    pub ticket: String,
    pub requested_at: u64,
    /// Before this, nobody can carry it out; the tenant can cancel.
    #[serde(default)]
    pub ready_at: u64,
    /// After this, an uncompleted request is expired.
    pub pending_until: u64,
    #[serde(default)]
    pub approved_by: Option<String>,
    #[serde(default)]
    pub completed_at: Option<u64>,
    #[serde(default)]
    pub cancelled: Option<Cancellation>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancellation {
    pub at: u64,
    /// `token:<id>` of the tenant admin who cancelled.
    pub by: String,
}

impl Recovery {
    pub fn state_at(&self, now: u64) -> &'static str {
        if self.completed_at.is_some() {
            "completed"
        } else if self.cancelled.is_some() {
            "cancelled"
        } else if now >= self.pending_until {
            "expired"
        } else if now < self.ready_at {
            "waiting"
        } else {
            "ready"
        }
    }

    /// The second operator's approval, after the waiting period.
    pub fn approve(&mut self, by: &Principal, now: u64) -> Result<(), RecoveryError> {
        if by.role != Role::Operator {
            return Err(RecoveryError::OperatorsOnly);
        }
        let person = by.person();
        let related = person == self.requested_by
            || self.requested_by_sponsors.contains(&person)
            || by.sponsors.contains(&self.requested_by);
        if related {
            return Err(RecoveryError::SamePerson);
        }
        match self.state_at(now) {
            "ready" => {}
            "waiting" => return Err(RecoveryError::Waiting(self.ready_at)),
            other => return Err(RecoveryError::NotOpen(other)),
        }
        self.approved_by = Some(by.person());
        self.completed_at = Some(now);
        Ok(())
    }

    /// The tenant says no: any live admin token of the tenant, any time
    /// before it is carried out.
    pub fn cancel(&mut self, by: &Principal, now: u64) -> Result<(), RecoveryError> {
        if !by.is_admin_of(&self.tenant) {
            return Err(RecoveryError::NotTheTenantsAdmin);
        }
        match self.state_at(now) {
            "waiting" | "ready" => {}
            other => return Err(RecoveryError::NotOpen(other)),
        }
        self.cancelled = Some(Cancellation {
            at: now,
            by: by.person(),
        });
        Ok(())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecoveryError {
    #[error("only operators carry out an admin recovery")]
    OperatorsOnly,
    #[error("the operator who asked for the recovery (or one it created, or its creator) cannot also approve it: a second, independent operator identity must")]
    SamePerson,
    #[error("the waiting period runs until {}: the tenant may still cancel; approve after that", crate::ids::rfc3339(*.0))]
    Waiting(u64),
    #[error("the admin recovery is {0}")]
    NotOpen(&'static str),
    #[error("only the tenant's admins cancel its admin recoveries")]
    NotTheTenantsAdmin,
}
