//! Tenants staged under `staging/`: created unseen, filled by a restore or an
//! upgrade, then made a tenant in one catalog write (`commit_staged`), swapped
//! in for the live database crash-safely (`swap_in_replacement`, finished
//! or undone at the next start by `recover_upgrades`), or removed.

use super::*;

/// A tenant being restored: not in the catalog, its files under `staging/`.
pub struct StagedTenant {
    pub record: TenantRecord,
    db: Option<Arc<TenantDb>>,
    dir: PathBuf,
    committed: bool,
}

impl StagedTenant {
    pub fn db(&self) -> &TenantDb {
        self.db.as_ref().expect("a staged tenant has its database")
    }

    /// The database as a handle (for a snapshot); drop it before the staged
    /// tenant is committed or aborted.
    pub fn db_handle(&self) -> Arc<TenantDb> {
        self.db.clone().expect("a staged tenant has its database")
    }
}

impl Drop for StagedTenant {
    fn drop(&mut self) {
        if !self.committed {
            self.db.take();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// An admin credential carried over from a restored tenant: the digest only.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct InheritedAdmin {
    #[serde(with = "hex_digest")]
    pub digest: [u8; 32],
    pub name: String,
}

mod hex_digest {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(digest: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::crypto::encode_hex(digest))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        crate::crypto::decode_hex(&text)
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| serde::de::Error::custom("a digest is 64 hex digits"))
    }
}

impl Storage {
    /// Creates a tenant that nobody can see yet: its key, and its database under
    /// `staging/`. Restores fill it, then [`Storage::commit_staged`] makes it a
    /// tenant in one catalog write, or [`Storage::abort_staged`] removes it.
    pub fn stage_tenant(&self, new: NewTenant) -> Result<StagedTenant, StorageError> {
        let (record, dek) = self.new_tenant_record(new)?;
        let dir = self.root.join("staging").join(record.id.as_str());
        self.open_staged(record, &dek, dir)
    }

    /// Stages a new copy of an existing tenant (same id, fresh data key) under
    /// `staging/<id>-upgrade`, for the schema upgrade service.
    /// Refused while the tenant's data key is being rotated.
    pub fn stage_replacement(&self, tenant: &TenantRecord) -> Result<StagedTenant, StorageError> {
        let rotating = self
            .catalog
            .tenant(&tenant.id)
            .is_some_and(|t| t.rotating_to.is_some());
        if rotating || tenant.rotating_to.is_some() {
            return Err(StorageError::Exists(ROTATING.into()));
        }
        let (mut wrapped_dek, dek) = self.new_wrapped_dek(&tenant.id)?;
        // A tenant with its own key keeps it: the new data key is wrapped by it too.
        if tenant.wrapped_dek.as_ref().is_some_and(|w| w.customer) {
            wrapped_dek = self.wrap_for_customer(&tenant.id, &dek, wrapped_dek.key_id)?;
        }
        let mut record = tenant.clone();
        record.wrapped_dek = Some(wrapped_dek);
        let dir = self
            .root
            .join("staging")
            .join(format!("{}-upgrade", tenant.id));
        let _ = std::fs::remove_dir_all(&dir);
        self.open_staged(record, &dek, dir)
    }

    fn open_staged(
        &self,
        record: TenantRecord,
        dek: &SecretKey,
        dir: PathBuf,
    ) -> Result<StagedTenant, StorageError> {
        let db = TenantDb::open(
            &dir,
            record.id.clone(),
            TenantKeys::new(TenantCipher::new(dek)),
            self.cache_bytes_per_tenant,
        )?;
        Ok(StagedTenant {
            record,
            db: Some(Arc::new(db)),
            dir,
            committed: false,
        })
    }

    /// Puts a staged replacement in its tenant's place, crash-safely: (1) the
    /// catalog records the pending swap and the new key, (2) the old directory
    /// goes to the trash and the new one takes its place, (3) the catalog makes
    /// the new version current. [`Storage::open`] finishes or undoes a swap a
    /// crash interrupted.
    pub fn swap_in_replacement(
        &self,
        mut staged: StagedTenant,
        schema_version: u32,
    ) -> Result<TenantRecord, StorageError> {
        let db = staged.db.take().expect("a staged tenant has its database");
        db.flush()?;
        let db = Arc::into_inner(db)
            .ok_or_else(|| StorageError::Io("staged database still in use".into()))?;
        let loaded = db.changed_since_open();
        drop(db);
        if loaded >= tenant_db::CHECKPOINT_AFTER_CHANGES {
            self.checkpoint_dir(&staged.dir, &staged.record.id);
        }
        let id = staged.record.id.clone();
        let new_dek = staged.record.wrapped_dek.clone();
        self.update_tenant(&id, |t| -> Result<(), StorageError> {
            t.pending_upgrade = Some(PendingUpgrade {
                schema_version,
                wrapped_dek: new_dek.clone().ok_or(StorageError::Shredded)?,
            });
            Ok(())
        })??;
        self.pool.forget(&id);
        let live = self.tenant_dir(&id);
        let old = self
            .root
            .join("trash")
            .join(format!("{id}-pre-upgrade-{}", unix_now()));
        std::fs::rename(&live, &old)?;
        std::fs::rename(&staged.dir, &live)?;
        staged.committed = true;
        let record = self.finish_upgrade(&id)?;
        let _ = std::fs::remove_dir_all(old);
        Ok(record)
    }

    fn finish_upgrade(&self, id: &TenantId) -> Result<TenantRecord, StorageError> {
        self.update_tenant(id, |t| -> Result<(), StorageError> {
            if let Some(pending) = t.pending_upgrade.take() {
                t.schema_version = pending.schema_version;
                t.wrapped_dek = Some(pending.wrapped_dek);
            }
            Ok(())
        })?
    }

    /// Finishes or undoes upgrades a crash interrupted (see `swap_in_replacement`).
    pub(super) fn recover_upgrades(&self) -> Result<(), StorageError> {
        for tenant in self.catalog.tenants() {
            if tenant.pending_upgrade.is_none() {
                continue;
            }
            let staged = self
                .root
                .join("staging")
                .join(format!("{}-upgrade", tenant.id));
            let live = self.tenant_dir(&tenant.id);
            if staged.exists() && live.exists() {
                // The swap never started: the old tenant is intact.
                std::fs::remove_dir_all(&staged)?;
                self.update_tenant(&tenant.id, |t| -> Result<(), StorageError> {
                    t.pending_upgrade = None;
                    Ok(())
                })??;
                tracing::warn!(tenant_id = %tenant.id, "an interrupted schema upgrade was undone");
            } else {
                if staged.exists() {
                    std::fs::rename(&staged, &live)?;
                }
                self.finish_upgrade(&tenant.id)?;
                tracing::warn!(tenant_id = %tenant.id, "an interrupted schema upgrade was completed");
            }
        }
        Ok(())
    }

    /// Publishes a staged tenant. `inherit` lists admin token digests of the
    /// tenant it was restored from: existing tokens gain the new tenant, missing
    /// ones (the source is gone) are recreated for it. With `mint_token`, a new
    /// admin token is minted and returned.
    pub fn commit_staged(
        &self,
        mut staged: StagedTenant,
        inherit: &[InheritedAdmin],
        mint_token: bool,
    ) -> Result<(TenantRecord, Option<String>), StorageError> {
        let db = staged.db.take().expect("a staged tenant has its database");
        db.flush()?;
        let db = Arc::into_inner(db)
            .ok_or_else(|| StorageError::Io("staged tenant database still in use".into()))?;
        let loaded = db.changed_since_open();
        drop(db);
        if loaded >= tenant_db::CHECKPOINT_AFTER_CHANGES {
            self.checkpoint_dir(&staged.dir, &staged.record.id);
        }
        let id = staged.record.id.clone();
        if self.catalog.tenant(&id).is_some() || self.tenant_dir(&id).exists() {
            return Err(StorageError::Exists(format!(
                "tenant {id} already exists on this host"
            )));
        }
        std::fs::rename(&staged.dir, self.tenant_dir(&id))?;
        let (token, secret) = new_token(NewToken::admin(&id, "restored admin", DATA_DIR_CREATOR))?;
        let digest = crypto::token_digest(&secret);
        // The tenant and its first token appear together; if no token is minted
        // the inherited ones below are the only way in.
        self.catalog
            .create_tenant(&staged.record, &token, &digest)?;
        if !mint_token {
            self.catalog.remove_token(&digest)?;
        }
        // Concurrent restores of one backup each add their tenant to the same
        // token records: one at a time, or one would lose the other's.
        let _guard = self.catalog.lock_tokens();
        for admin in inherit {
            let mut record = match self.catalog.token(&admin.digest)? {
                Some(existing) if existing.role == Role::TenantAdmin => existing,
                Some(_) => continue,
                None => TokenRecord {
                    format: catalog::CATALOG_FORMAT_V1,
                    id: TokenId::generate()?,
                    role: Role::TenantAdmin,
                    tenant: None,
                    also: Vec::new(),
                    name: admin.name.clone(),
                    created_at: unix_now(),
                    digest: crypto::encode_hex(&admin.digest),
                    identity: None,
                    created_by: Some(DATA_DIR_CREATOR.into()),
                    expires_at: None,
                    revoked: None,
                },
            };
            if record.tenant.is_none() {
                record.tenant = Some(id.clone());
            } else if !record.also.contains(&id) {
                record.also.push(id.clone());
            }
            self.catalog.put_token(&admin.digest, &record)?;
        }
        staged.committed = true;
        Ok((staged.record.clone(), mint_token.then_some(secret)))
    }

    /// Removes a staged tenant and every file it wrote.
    pub fn abort_staged(&self, mut staged: StagedTenant) {
        staged.db.take();
        if let Err(error) = std::fs::remove_dir_all(&staged.dir) {
            tracing::warn!(%error, "remove staged tenant; removed at next start");
        }
        staged.committed = true;
    }
}
