use super::*;

#[test]
fn concurrent_appends_are_all_durable_chained_and_verifiable() {
    let dir = std::env::temp_dir().join(format!("coffer-audit-unit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let log = std::sync::Arc::new(AuditLog::open(&dir, "test").unwrap());
    let tenant = TenantId::generate().unwrap();
    let threads: Vec<_> = (0..16)
        .map(|w| {
            let (log, tenant) = (log.clone(), tenant.clone());
            std::thread::spawn(move || {
                (0..50)
                    .map(|i| {
                        log.append(
                            Event::new("test", Actor::host())
                                .tenant(&tenant)
                                .detail("n", w * 100 + i),
                        )
                        .unwrap()
                    })
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut seqs: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    seqs.sort();
    assert_eq!(seqs, (0..800).collect::<Vec<u64>>());
    assert_eq!(log.size(), 800);
    assert_eq!(log.entries_of(&tenant).unwrap().len(), 800);
    log.checkpoint().unwrap();
    let verifier = note::Verifier::parse(&log.verifier_key()).unwrap();
    let report = verify::verify_log(log.dir(), &verifier, &[]).unwrap();
    assert_eq!(report.entries, 800);
    // Reopened, the log carries on from where it was.
    drop(log);
    let log = AuditLog::open(&dir, "test").unwrap();
    assert_eq!(log.append(Event::new("again", Actor::host())).unwrap(), 800);
    let _ = std::fs::remove_dir_all(&dir);
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("coffer-audit-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Writes a single-file log (the layout before tiles) of `n` entries,
/// chained as the host wrote them; every third is the tenant's.
fn single_file_log(dir: &Path, n: u64, tenant: &TenantId) -> merkle::Tree {
    let audit = dir.join("audit");
    std::fs::create_dir_all(&audit).unwrap();
    let mut out = std::io::BufWriter::new(std::fs::File::create(audit.join(ENTRIES)).unwrap());
    let mut tree = merkle::Tree::new();
    let mut tenant_prev = None;
    for seq in 0..n {
        let mine = seq % 3 == 0;
        let entry = Entry {
            seq,
            at: 1_700_000_000_000 + seq,
            prev: tree
                .len()
                .checked_sub(1)
                .map(|i| crypto::encode_hex(tree.leaf(i).unwrap()))
                .unwrap_or_default(),
            kind: "test".into(),
            tenant: mine.then(|| tenant.to_string()),
            tenant_prev: if mine { tenant_prev } else { None },
            actor: Actor::host(),
            grant: None,
            details: Map::new(),
            hmac: Map::new(),
        };
        if mine {
            tenant_prev = Some(seq);
        }
        let bytes = serde_json::to_vec(&entry).unwrap();
        out.write_all(&(bytes.len() as u32).to_be_bytes()).unwrap();
        out.write_all(&bytes).unwrap();
        tree.push(merkle::leaf_hash(&bytes));
    }
    out.flush().unwrap();
    tree
}

/// A million entries in the old layout move into tiles once; the next
/// start reads only what came after the newest checkpoint, and proofs
/// from the tiles equal the in-memory tree's.
#[test]
fn a_million_entry_log_moves_into_tiles_and_restarts_without_reading_it() {
    let dir = temp("million");
    let tenant = TenantId::generate().unwrap();
    let n = 1_000_000;
    let tree = single_file_log(&dir, n, &tenant);
    let log = AuditLog::open(&dir, "test").unwrap();
    assert_eq!(log.opened().migrated, n);
    assert_eq!(log.size(), n);
    assert!(
        !dir.join("audit").join(ENTRIES).exists(),
        "the old file stays"
    );
    assert_eq!(log.root(n).unwrap(), tree.root(n));
    for (m, size) in [(0, n), (n - 1, n), (123_456, 700_001)] {
        assert_eq!(
            log.inclusion_proof(m, size).unwrap(),
            tree.inclusion_proof(m, size)
        );
    }
    assert_eq!(
        log.consistency_proof(65_537, n).unwrap(),
        tree.consistency_proof(65_537, n)
    );
    log.append(Event::new("after", Actor::host()).tenant(&tenant))
        .unwrap();
    log.checkpoint().unwrap();
    for i in 0..10 {
        log.append(Event::new("tail", Actor::host()).detail("i", i))
            .unwrap();
    }
    drop(log);
    let log = AuditLog::open(&dir, "test").unwrap();
    assert_eq!(
        log.opened(),
        Opened {
            size: n + 11,
            read: 10,
            migrated: 0
        }
    );
    // The tenant's chain runs through the migrated tiles and the journal.
    let mine = log.entries_of(&tenant).unwrap();
    assert_eq!(mine.len() as u64, n / 3 + 1 + 1);
    assert_eq!(mine[..3], [0, 3, 6]);
    assert_eq!(*mine.last().unwrap(), n);
    let verifier = note::Verifier::parse(&log.verifier_key()).unwrap();
    let report = verify::verify_log(log.dir(), &verifier, &[]).unwrap();
    assert_eq!(report.entries, n + 11);
    assert_eq!(report.newest_checkpoint, n + 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A migration a crash cut short starts again; old file and tiles without
/// the marker are refused.
#[test]
fn a_migration_cut_short_starts_again_and_two_logs_are_refused() {
    let dir = temp("migrate-crash");
    let tenant = TenantId::generate().unwrap();
    let tree = single_file_log(&dir, 700, &tenant);
    let audit = dir.join("audit");
    // What a crash mid-migration leaves: the marker, half the tiles.
    std::fs::write(audit.join("migrating"), b"x").unwrap();
    std::fs::create_dir_all(audit.join("tile/0")).unwrap();
    std::fs::write(audit.join("tile/0/000"), [0u8; 100]).unwrap();
    let log = AuditLog::open(&dir, "test").unwrap();
    assert_eq!(log.opened().migrated, 700);
    assert_eq!(log.root(700).unwrap(), tree.root(700));
    assert!(!audit.join("migrating").exists());
    drop(log);
    // An old file put back beside the tiles: which log is the host's?
    single_file_log(&dir, 3, &tenant);
    let error = AuditLog::open(&dir, "test").unwrap_err().to_string();
    assert!(error.contains("both a single-file audit log"), "{error}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A crash between writing a tile and removing its journal, or before
/// writing it: the start finishes the tile; a changed tile under the
/// newest checkpoint stops the start.
#[test]
fn a_start_finishes_the_tiles_a_crash_left_and_refuses_an_altered_one() {
    let dir = temp("tile-crash");
    let log = AuditLog::open(&dir, "test").unwrap();
    for i in 0..600 {
        log.append(Event::new("e", Actor::host()).detail("i", i))
            .unwrap();
    }
    log.checkpoint().unwrap();
    let root = log.root(600).unwrap();
    drop(log);
    let audit = dir.join("audit");
    // Tile 1 as if its tiles were never written: the journal is back.
    let entries = TileReader::new(&audit).bundle(1).unwrap();
    let mut journal = Vec::new();
    for e in &entries {
        journal.extend_from_slice(&(e.len() as u32).to_be_bytes());
        journal.extend_from_slice(e);
    }
    std::fs::write(journal_path(&audit, 1), &journal).unwrap();
    std::fs::remove_file(audit.join(tiles::entries_path(1, WIDTH))).unwrap();
    std::fs::remove_file(audit.join(tiles::tile_path(0, 1, WIDTH))).unwrap();
    let log = AuditLog::open(&dir, "test").unwrap();
    assert_eq!(log.size(), 600);
    assert_eq!(log.root(600).unwrap(), root);
    assert!(!journal_path(&audit, 1).exists());
    drop(log);
    // One hash of tile 0 changed.
    let path = audit.join(tiles::tile_path(0, 0, WIDTH));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[32 * 7] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let error = AuditLog::open(&dir, "test").unwrap_err().to_string();
    assert!(
        error.contains("does not match its newest checkpoint"),
        "{error}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
