//! The journal of the tile being filled: `journal/<N>`, records of
//! `[u32 length][JSON entry]`, and the same record format in the single-file
//! log of earlier versions.

use super::*;

pub fn journal_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(JOURNAL).join(format!("{n:016}"))
}

/// The journals under `dir`, by tile number.
pub fn journals(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut out: Vec<u64> = match std::fs::read_dir(dir.join(JOURNAL)) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    out.sort();
    Ok(out)
}

/// The fields of an entry the log's structure rests on, parsed without
/// building the rest (which is skipped, though still checked to be JSON).
#[derive(Debug, Deserialize)]
pub struct EntryHead<'a> {
    pub seq: u64,
    #[serde(borrow)]
    pub prev: &'a str,
    #[serde(borrow, default)]
    pub tenant: Option<&'a str>,
    #[serde(default)]
    pub tenant_prev: Option<u64>,
}

/// Streams the records of an entries file: calls `each(offset, bytes)` in
/// order. Returns the length up to the last whole record (a torn record at
/// the end — a crash mid-append, never acknowledged — is not passed on).
pub fn scan_records(
    path: &Path,
    mut each: impl FnMut(u64, &[u8]) -> Result<(), String>,
) -> Result<u64, String> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(format!("open {}: {e}", path.display())),
    };
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut buffer = Vec::with_capacity(4096);
    let mut offset = 0u64;
    loop {
        let mut len = [0u8; 4];
        match read_full(&mut reader, &mut len) {
            Ok(true) => {}
            Ok(false) => return Ok(offset),
            Err(e) => return Err(format!("read {}: {e}", path.display())),
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_ENTRY {
            return Ok(offset);
        }
        buffer.resize(len, 0);
        match read_full(&mut reader, &mut buffer) {
            Ok(true) => {}
            Ok(false) => return Ok(offset),
            Err(e) => return Err(format!("read {}: {e}", path.display())),
        }
        each(offset, &buffer)?;
        offset += 4 + len as u64;
    }
}

/// Fills `buf`; false when the file ends first.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => return Ok(false),
            n => filled += n,
        }
    }
    Ok(true)
}

/// The entries of tile `n`'s journal and its length up to the last whole
/// record (none when there is no journal).
pub fn read_journal(dir: &Path, n: u64) -> Result<(Vec<Vec<u8>>, u64), String> {
    let mut entries = Vec::new();
    let kept = scan_records(&journal_path(dir, n), |_, bytes| {
        entries.push(bytes.to_vec());
        Ok(())
    })?;
    Ok((entries, kept))
}
