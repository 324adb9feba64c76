//! Unit tests of the catalog on real sled files in a temporary directory.

use super::*;

fn tenant(id: &str, state: TenantState) -> TenantRecord {
    TenantRecord {
        format: CATALOG_FORMAT_V1,
        id: TenantId::parse(id).unwrap(),
        name: format!("tenant {id}"),
        region: Region::parse("local").unwrap(),
        schema: "crm".into(),
        schema_version: 2,
        state,
        created_at: 1,
        deactivated_at: None,
        destroy_after: None,
        destroyed_at: None,
        wrapped_dek: None,
        moved_to: None,
        pending_upgrade: None,
        proposed_move: None,
        rotating_to: None,
        copy_of: None,
        durability: Durability::Local,
    }
}

fn admin(n: u8, tenant: &TenantRecord, also: &[&TenantRecord]) -> ([u8; 32], TokenRecord) {
    let digest = [n; 32];
    let token = TokenRecord {
        format: CATALOG_FORMAT_V1,
        id: TokenId::generate().unwrap(),
        role: Role::TenantAdmin,
        tenant: Some(tenant.id.clone()),
        also: also.iter().map(|t| t.id.clone()).collect(),
        name: format!("admin {n}"),
        created_at: 1,
        digest: crate::crypto::encode_hex(&digest),
        identity: None,
        created_by: None,
        expires_at: None,
        revoked: None,
    };
    (digest, token)
}

/// sled's flusher thread may hold the directory's lock for a moment
/// after the handle is dropped.
fn reopen(dir: &Path) -> Catalog {
    (0..50)
        .find_map(|_| {
            Catalog::open(dir).ok().or_else(|| {
                std::thread::sleep(std::time::Duration::from_millis(100));
                None
            })
        })
        .expect("reopen the catalog")
}

#[test]
fn destroying_a_tenant_unbinds_its_tokens_and_keeps_their_other_tenants() {
    let dir = std::env::temp_dir().join(format!("coffer-catalog-destroy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let catalog = Catalog::open(&dir).unwrap();
    let (a, b) = (
        tenant(&"a".repeat(32), TenantState::Active),
        tenant(&"b".repeat(32), TenantState::Active),
    );
    let (da, ta) = admin(1, &a, &[]);
    let (db, tb) = admin(2, &b, &[]);
    catalog.create_tenant(&a, &ta, &da).unwrap();
    catalog.create_tenant(&b, &tb, &db).unwrap();
    // An admin of a and of a copy restored from it (b).
    let (dab, tab) = admin(3, &a, &[&b]);
    catalog.put_token(&dab, &tab).unwrap();
    let mut gone = a.clone();
    gone.state = TenantState::Destroyed;
    catalog.destroy_tenant(&gone).unwrap();
    assert!(catalog.token(&da).unwrap().is_none());
    let kept = catalog.token(&dab).unwrap().unwrap();
    assert_eq!((kept.tenant, kept.also), (Some(b.id.clone()), vec![]));
    assert!(catalog.token(&db).unwrap().is_some());
    assert_eq!(catalog.tenant(&a.id).unwrap().state, TenantState::Destroyed);
    drop(catalog);
    let catalog = reopen(&dir);
    assert_eq!(catalog.tenant(&a.id).unwrap().state, TenantState::Destroyed);
    assert!(catalog.token(&da).unwrap().is_none());
    drop(catalog);
    let _ = std::fs::remove_dir_all(&dir);
}

/// What a crash between the writes of `create_tenant` or `destroy_tenant`
/// leaves (written here as those functions write it, stopped half-way) is
/// finished at the next open: no token reaches a tenant that is gone.
#[test]
fn a_crash_inside_create_or_destroy_leaves_no_token_reaching_a_gone_tenant() {
    let dir = std::env::temp_dir().join(format!("coffer-catalog-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (a, b, c) = (
        tenant(&"a".repeat(32), TenantState::Active),
        tenant(&"b".repeat(32), TenantState::Active),
        tenant(&"c".repeat(32), TenantState::Active),
    );
    let (da, ta) = admin(1, &a, &[]);
    let (db, tb) = admin(2, &b, &[]);
    let (dc, tc) = admin(3, &c, &[]);
    let (dba, tba) = admin(4, &b, &[&a]);
    {
        let catalog = Catalog::open(&dir).unwrap();
        catalog.create_tenant(&a, &ta, &da).unwrap();
        catalog.create_tenant(&b, &tb, &db).unwrap();
        catalog.put_token(&dba, &tba).unwrap();
        // create_tenant(c) stopped after its token.
        catalog.tokens.insert(dc, to_json(&tc)).unwrap();
        // destroy_tenant(b) stopped after its first flush.
        let mut gone = b.clone();
        gone.state = TenantState::Destroyed;
        catalog
            .tenants
            .insert(b.id.as_str(), to_json(&gone))
            .unwrap();
        catalog.db.flush().unwrap();
        assert!(catalog.token(&dc).unwrap().is_some());
        assert!(catalog.token(&db).unwrap().is_some());
    }
    let catalog = reopen(&dir);
    assert!(catalog.tenant(&c.id).is_none());
    assert!(catalog.token(&dc).unwrap().is_none(), "c's orphan token");
    assert!(catalog.token(&db).unwrap().is_none(), "destroyed b's token");
    let kept = catalog.token(&dba).unwrap().unwrap();
    assert_eq!((kept.tenant, kept.also), (Some(a.id.clone()), vec![]));
    assert!(catalog.token(&da).unwrap().is_some());
    drop(catalog);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tokens_from_before_identities_get_one_and_unapproved_operators_wait() {
    let dir = std::env::temp_dir().join(format!("coffer-catalog-legacy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    {
        let catalog = Catalog::open(&dir).unwrap();
        // Token records as the catalog wrote them before identities existed.
        for (i, (role, name)) in [
            ("operator", FIRST_OPERATOR),
            ("operator", "second operator"),
            ("support", "alice"),
            ("tenant-admin", "initial admin"),
        ]
        .iter()
        .enumerate()
        {
            let legacy = serde_json::json!({
                "format": 1, "id": format!("{i:032x}"), "role": role, "name": name,
                "created_at": 1, "digest": format!("{i:064x}"),
                "tenant": (*role == "tenant-admin").then(|| "a".repeat(32)),
            });
            catalog
                .tokens
                .insert([i as u8; 32], serde_json::to_vec(&legacy).unwrap())
                .unwrap();
        }
        // The legacy admin's tenant is on file.
        let legacy_tenant = tenant(&"a".repeat(32), TenantState::Active);
        catalog.put_tenant(&legacy_tenant).unwrap();
        catalog.db.flush().unwrap();
    }
    let catalog = reopen(&dir);
    let first = catalog.identity(FIRST_OPERATOR).unwrap();
    assert!(!first.pending);
    let second = catalog.identity("second operator").unwrap();
    assert!(second.pending, "an operator nobody approved waits");
    assert!(!catalog.identity("alice").unwrap().pending);
    let tokens = catalog.tokens().unwrap();
    assert!(tokens
        .iter()
        .filter(|t| t.role != Role::TenantAdmin)
        .all(|t| t.identity.as_deref() == Some(t.name.as_str())));
    assert!(tokens
        .iter()
        .any(|t| t.role == Role::TenantAdmin && t.identity.is_none()));
    drop(catalog);
    let _ = std::fs::remove_dir_all(&dir);
}
