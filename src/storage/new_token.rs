//! A new token: its secret (shown once) and the record stored under its digest.

use crate::crypto::{self};
use crate::ids::{unix_now, TenantId, TokenId};

use super::*;

/// What a new token is: its role, tenant (admins), owner and lifetime.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub role: Role,
    pub tenant: Option<TenantId>,
    pub name: String,
    /// The staff identity it belongs to (staff tokens only).
    pub identity: Option<String>,
    pub created_by: String,
    pub expires_at: Option<u64>,
}

impl NewToken {
    pub fn admin(tenant: &TenantId, name: &str, created_by: &str) -> NewToken {
        NewToken {
            role: Role::TenantAdmin,
            tenant: Some(tenant.clone()),
            name: name.to_string(),
            identity: None,
            created_by: created_by.to_string(),
            expires_at: None,
        }
    }

    pub fn staff(role: Role, identity: &str, created_by: &str) -> NewToken {
        NewToken {
            role,
            tenant: None,
            name: identity.to_string(),
            identity: Some(identity.to_string()),
            created_by: created_by.to_string(),
            expires_at: None,
        }
    }
}

pub(super) fn new_token(new: NewToken) -> Result<(TokenRecord, String), StorageError> {
    let secret = format!(
        "coffer_{}",
        crypto::encode_hex(&crypto::random_bytes::<32>()?)
    );
    let record = TokenRecord {
        format: catalog::CATALOG_FORMAT_V1,
        id: TokenId::generate()?,
        role: new.role,
        tenant: new.tenant,
        also: Vec::new(),
        name: new.name,
        created_at: unix_now(),
        digest: crypto::encode_hex(&crypto::token_digest(&secret)),
        identity: new.identity,
        created_by: Some(new.created_by),
        expires_at: new.expires_at,
        revoked: None,
    };
    Ok((record, secret))
}
