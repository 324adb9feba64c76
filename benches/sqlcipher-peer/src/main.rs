//! Peer benchmark: SQLCipher (through rusqlite's bundled SQLCipher with vendored
//! OpenSSL) on a fixed workload, for comparison with Coffer's storage layer
//! (`cargo bench --bench storage` in the main crate).
//!
//! Usage: sqlcipher-peer [--records N] [--dir PATH] [--cache-mib M]
//!
//! Stdout carries only result lines, `sqlcipher <name> <ops/s> ops/s`; progress
//! and setup details go to stderr.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension};

const VALUE_LEN: usize = 1024;
const WRITERS: usize = 64;
const READ_THREADS: usize = 2;
const DB_FILE: &str = "sqlcipher-peer.db";

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

struct Args {
    records: usize,
    dir: Option<PathBuf>,
    /// Page cache per connection in MiB; None keeps SQLite's default (2 MB).
    cache_mib: Option<u64>,
}

fn usage() -> ! {
    eprintln!("usage: sqlcipher-peer [--records N (default 20000)] [--dir PATH (default: fresh dir under /tmp)] [--cache-mib M (default: SQLite's default)]");
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut args = Args {
        records: 20_000,
        dir: None,
        cache_mib: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> String {
            it.next().unwrap_or_else(|| {
                eprintln!("missing value for {name}");
                usage()
            })
        };
        match a.as_str() {
            "--records" => {
                args.records = value("--records").parse().unwrap_or_else(|_| usage());
            }
            "--dir" => args.dir = Some(PathBuf::from(value("--dir"))),
            "--cache-mib" => {
                args.cache_mib = Some(value("--cache-mib").parse().unwrap_or_else(|_| usage()));
            }
            "-h" | "--help" => usage(),
            other => {
                eprintln!("unknown argument: {other}");
                usage()
            }
        }
    }
    if args.records < 10 {
        eprintln!("--records must be at least 10");
        usage()
    }
    args
}

/// SplitMix64: a small, fast PRNG for values and read order (no extra crates).
struct Rng(u64);

impl Rng {
    fn from_os() -> Self {
        let mut b = [0u8; 8];
        File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut b))
            .expect("read /dev/urandom");
        Rng(u64::from_le_bytes(b))
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(n);
        v
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

/// A raw 256-bit key from the OS, as the 64 hex digits SQLCipher's `x'...'` form takes.
fn random_key_hex() -> String {
    let mut key = [0u8; 32];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .expect("read /dev/urandom");
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// Opens a keyed connection: raw key, WAL, the given `synchronous` level, 10 s busy timeout.
fn open(path: &Path, key_hex: &str, synchronous: &str, cache_mib: Option<u64>) -> Res<Connection> {
    let conn = Connection::open(path)?;
    // Must be the first statement on the connection. A raw key skips PBKDF2.
    conn.execute_batch(&format!("PRAGMA key = \"x'{key_hex}'\";"))?;
    conn.busy_timeout(Duration::from_secs(10))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!("journal_mode is {mode}, expected wal").into());
    }
    conn.execute_batch(&format!("PRAGMA synchronous = {synchronous};"))?;
    if let Some(mib) = cache_mib {
        conn.execute_batch(&format!("PRAGMA cache_size = -{};", mib * 1024))?;
    }
    Ok(conn)
}

fn rate(ops: usize, elapsed: Duration) -> f64 {
    ops as f64 / elapsed.as_secs_f64()
}

fn report(name: &str, ops: usize, elapsed: Duration) {
    let r = rate(ops, elapsed);
    eprintln!("  {name}: {ops} ops in {:.3} s", elapsed.as_secs_f64());
    println!("sqlcipher {name} {} ops/s", r.round() as u64);
}

fn main() {
    let args = parse_args();
    let (dir, temp) = match &args.dir {
        Some(d) => (d.clone(), false),
        None => {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            (
                PathBuf::from(format!(
                    "/tmp/sqlcipher-peer-{}-{nanos}",
                    std::process::id()
                )),
                true,
            )
        }
    };
    let result = run(&args, &dir);
    if temp {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args, dir: &Path) -> Res<()> {
    let n = args.records;
    std::fs::create_dir_all(dir)?;
    let path = dir.join(DB_FILE);
    for suffix in ["", "-wal", "-shm"] {
        let p = PathBuf::from(format!("{}{suffix}", path.display()));
        if p.exists() {
            std::fs::remove_file(&p)?;
        }
    }
    let key = random_key_hex();
    let mut rng = Rng::from_os();

    let conn = open(&path, &key, "NORMAL", args.cache_mib)?;
    let cipher_version: Option<String> = conn
        .query_row("PRAGMA cipher_version", [], |r| r.get(0))
        .optional()?;
    let cipher_version = match cipher_version {
        Some(v) if !v.is_empty() => v,
        _ => return Err("PRAGMA cipher_version is empty: this is not SQLCipher".into()),
    };
    let sqlite_version: String = conn.query_row("SELECT sqlite_version()", [], |r| r.get(0))?;
    let provider: String = conn
        .query_row("PRAGMA cipher_provider_version", [], |r| r.get(0))
        .unwrap_or_default();
    // SQLCipher answers these pragmas as text (its column is `cipher_page_size`).
    let pragma = |name: &str| -> String {
        conn.query_row(&format!("PRAGMA {name}"), [], |r| {
            r.get::<_, rusqlite::types::Value>(0)
        })
        .map(|v| match v {
            rusqlite::types::Value::Integer(i) => i.to_string(),
            rusqlite::types::Value::Text(t) => t,
            other => format!("{other:?}"),
        })
        .unwrap_or_default()
    };
    let (page_size, cache_size) = (pragma("page_size"), pragma("cache_size"));
    eprintln!(
        "SQLCipher {cipher_version} (SQLite {sqlite_version}, {provider}); db {}; page_size {page_size}; cache_size {cache_size}; {n} records of {VALUE_LEN} B",
        path.display()
    );
    conn.execute_batch("CREATE TABLE records(id TEXT PRIMARY KEY, value BLOB);")?;

    // 1. insert_autocommit: N single-row autocommit inserts, synchronous=NORMAL.
    let ids: Vec<String> = (0..n).map(|i| format!("k{i:08}")).collect();
    let values: Vec<Vec<u8>> = (0..n).map(|_| rng.bytes(VALUE_LEN)).collect();
    {
        let mut ins = conn.prepare("INSERT INTO records(id, value) VALUES (?1, ?2)")?;
        let start = Instant::now();
        for (id, v) in ids.iter().zip(&values) {
            ins.execute((id, v))?;
        }
        report("insert_autocommit", n, start.elapsed());
    }

    // 2. insert_durable: N/10 inserts, each its own transaction, synchronous=FULL.
    conn.execute_batch("PRAGMA synchronous = FULL;")?;
    let durable_n = n / 10;
    {
        let durable: Vec<(String, Vec<u8>)> = (0..durable_n)
            .map(|i| (format!("d{i:08}"), rng.bytes(VALUE_LEN)))
            .collect();
        let mut begin = conn.prepare("BEGIN IMMEDIATE")?;
        let mut ins = conn.prepare("INSERT INTO records(id, value) VALUES (?1, ?2)")?;
        let mut commit = conn.prepare("COMMIT")?;
        let start = Instant::now();
        for (id, v) in &durable {
            begin.execute([])?;
            ins.execute((id, v))?;
            commit.execute([])?;
        }
        report("insert_durable", durable_n, start.elapsed());
    }

    // 3. insert_durable_64_writers: 64 threads, a connection each, durable inserts.
    let per_writer = (n / WRITERS / 4).max(20);
    {
        // Open and key every connection before the clock starts.
        let mut conns = Vec::with_capacity(WRITERS);
        for _ in 0..WRITERS {
            conns.push(open(&path, &key, "FULL", args.cache_mib)?);
        }
        let barrier = Arc::new(Barrier::new(WRITERS + 1));
        let handles: Vec<_> = conns
            .into_iter()
            .enumerate()
            .map(|(w, c)| {
                let rows: Vec<(String, Vec<u8>)> = (0..per_writer)
                    .map(|i| (format!("w{w:02}-{i:06}"), rng.bytes(VALUE_LEN)))
                    .collect();
                let barrier = barrier.clone();
                thread::spawn(move || -> Res<()> {
                    let prepared = (|| {
                        Ok::<_, rusqlite::Error>((
                            c.prepare("BEGIN IMMEDIATE")?,
                            c.prepare("INSERT INTO records(id, value) VALUES (?1, ?2)")?,
                            c.prepare("COMMIT")?,
                        ))
                    })();
                    barrier.wait(); // reached even on error, so no one waits forever
                    let (mut begin, mut ins, mut commit) = prepared?;
                    for (id, v) in &rows {
                        begin.execute([])?;
                        ins.execute((id, v))?;
                        commit.execute([])?;
                    }
                    Ok(())
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        for h in handles {
            h.join().map_err(|_| "writer thread panicked")??;
        }
        report(
            "insert_durable_64_writers",
            WRITERS * per_writer,
            start.elapsed(),
        );
    }

    let total: i64 = conn.query_row("SELECT count(*) FROM records", [], |r| r.get(0))?;
    let expected = n + durable_n + WRITERS * per_writer;
    if total as usize != expected {
        return Err(format!("row count {total}, expected {expected}").into());
    }
    // Fold the WAL into the database file (untimed) so reads start from the same
    // state every run, and check that the file on disk really is encrypted.
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    let mut header = [0u8; 16];
    File::open(&path)?.read_exact(&mut header)?;
    if &header == b"SQLite format 3\0" {
        return Err("database file has a plaintext SQLite header: not encrypted".into());
    }
    eprintln!(
        "  {total} rows; database file {} bytes, header not plaintext",
        std::fs::metadata(&path)?.len()
    );

    // Random read order over the N records of step 1.
    let mut order: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut order);

    // 4. point_read: N random point reads, one connection, one prepared statement.
    {
        let rc = open(&path, &key, "NORMAL", args.cache_mib)?;
        let mut sel = rc.prepare("SELECT value FROM records WHERE id = ?1")?;
        let start = Instant::now();
        for &i in &order {
            let v: Vec<u8> = sel.query_row([&ids[i]], |r| r.get(0))?;
            if v.len() != VALUE_LEN {
                return Err(format!("value of {} has {} bytes", ids[i], v.len()).into());
            }
            std::hint::black_box(v);
        }
        report("point_read", n, start.elapsed());
        // Untimed spot check of contents.
        for &i in order.iter().step_by(97) {
            let v: Vec<u8> = sel.query_row([&ids[i]], |r| r.get(0))?;
            if v != values[i] {
                return Err(format!("value of {} differs from what was written", ids[i]).into());
            }
        }
    }

    // 5. point_read_2_threads: the same N reads split over 2 threads, a connection each.
    {
        let ids = Arc::new(ids);
        let barrier = Arc::new(Barrier::new(READ_THREADS + 1));
        let mut handles = Vec::new();
        for t in 0..READ_THREADS {
            let rc = open(&path, &key, "NORMAL", args.cache_mib)?;
            let mine: Vec<usize> = order
                .iter()
                .skip(t)
                .step_by(READ_THREADS)
                .copied()
                .collect();
            let ids = ids.clone();
            let barrier = barrier.clone();
            handles.push(thread::spawn(move || -> Res<()> {
                let sel = rc.prepare("SELECT value FROM records WHERE id = ?1");
                barrier.wait(); // reached even on error, so no one waits forever
                let mut sel = sel?;
                for &i in &mine {
                    let v: Vec<u8> = sel.query_row([&ids[i]], |r| r.get(0))?;
                    if v.len() != VALUE_LEN {
                        return Err(format!("value of {} has {} bytes", ids[i], v.len()).into());
                    }
                    std::hint::black_box(v);
                }
                Ok(())
            }));
        }
        barrier.wait();
        let start = Instant::now();
        for h in handles {
            h.join().map_err(|_| "reader thread panicked")??;
        }
        report("point_read_2_threads", n, start.elapsed());
    }
    Ok(())
}
