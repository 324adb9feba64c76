//! Disaster-recovery backups: the archive sealed in streaming AEAD chunks under
//! a fresh per-backup key, itself wrapped by the host's *backup key* (held apart
//! from the master key), so that a host in another region holding only the
//! backup key and the object store can restore.
//!
//! Sealed-backup format, version 1 (all integers big-endian):
//!
//! ```text
//! header:  "CFRDR" | version u8 = 1 | backup id (16) | tenant id (16)
//!          | nonce prefix (7) | wrapped key length u16 | wrapped key
//!          (the per-backup key sealed under the backup key, with the header
//!          bytes before it as associated data)
//! body:    STREAM chunks of 64 KiB plaintext + 16-byte tag (crypto::StreamCipher),
//!          the last one shorter or equal and flagged last
//! plaintext: envelope length u32 | envelope JSON (admin credential digests, …)
//!          | the archive (tar + zstd, exactly as exported)
//! ```
//!
//! Version 2 is the same but for the wrapped key: the per-backup key is
//! first wrapped by the tenant's own key ([`OuterKey`], customer-managed
//! keys), and what that gives (the key service's ciphertext and how to reach
//! it) is sealed under the backup key. Opening it needs the backup key **and**
//! the tenant's key service: a revoked key makes every copy unreadable.

use std::io::{self, Read, Write};

use super::BackupError;
use crate::crypto::{
    self, unwrap_key, wrap_key, SecretKey, StreamCipher, STREAM_CHUNK_BYTES, STREAM_PREFIX_LEN,
};
use crate::ids::TenantId;

pub const SEALED_MAGIC: &[u8; 5] = b"CFRDR";
pub const SEALED_VERSION: u8 = 1;
/// The per-backup key is wrapped by the tenant's own key too.
pub const SEALED_VERSION_TENANT_KEY: u8 = 2;

/// A tenant's own key (customer-managed keys), which wraps a backup's key
/// inside the backup key's seal. Implemented above this room (it calls the
/// tenant's key service).
pub trait OuterKey: Send + Sync {
    /// `key` wrapped for `tenant`; `None` when the tenant has no key of its
    /// own. The bytes carry what any host needs to ask for the unwrap.
    fn wrap_for(&self, tenant: &TenantId, key: &[u8]) -> Result<Option<Vec<u8>>, String>;
    /// Opens what [`OuterKey::wrap_for`] made: one call to the key service.
    fn unwrap(&self, tenant: &str, wrapped: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, String>;
    /// Makes the key `wrapped` names `tenant`'s own (a copy being restored,
    /// before it is published): its data key is then wrapped by it too.
    fn prepare(&self, tenant: &TenantId, wrapped: &[u8]) -> Result<(), String>;
}
const TAG: usize = 16;
/// An envelope larger than this is refused (it holds a few digests).
const MAX_ENVELOPE: u32 = 1 << 20;

/// What the sealed stream carries besides the archive.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub format: u32,
    pub backup_id: String,
    pub tenant_id: String,
    /// Admin credentials of the source tenant (token digests, never tokens).
    pub admins: Vec<crate::storage::InheritedAdmin>,
    /// A change-log segment's range, sealed with it so that a manifest that
    /// lies about it is caught when the segment is opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<crate::backup::segment::LogRange>,
}

/// Writes the header and returns a writer that seals everything written to it.
pub fn seal<W: Write>(
    out: W,
    backup_key: &SecretKey,
    backup_id: &[u8; 16],
    tenant: &TenantId,
    envelope: &Envelope,
) -> Result<SealingWriter<W>, BackupError> {
    seal_for(out, backup_key, None, backup_id, tenant, envelope)
}

/// As [`seal`], the per-backup key also wrapped by the tenant's own key
/// when it has one (version 2).
pub fn seal_for<W: Write>(
    mut out: W,
    backup_key: &SecretKey,
    outer: Option<&dyn OuterKey>,
    backup_id: &[u8; 16],
    tenant: &TenantId,
    envelope: &Envelope,
) -> Result<SealingWriter<W>, BackupError> {
    let key = SecretKey::generate()?;
    let outer_wrapped = match outer {
        Some(outer) => outer
            .wrap_for(tenant, &key.bytes_to_wrap())
            .map_err(BackupError::KeyUnavailable)?,
        None => None,
    };
    let prefix: [u8; STREAM_PREFIX_LEN] = crypto::random_bytes()?;
    let mut header = Vec::with_capacity(64 + 64);
    header.extend_from_slice(SEALED_MAGIC);
    header.push(match outer_wrapped {
        Some(_) => SEALED_VERSION_TENANT_KEY,
        None => SEALED_VERSION,
    });
    header.extend_from_slice(backup_id);
    header.extend_from_slice(&tenant_bytes(tenant));
    header.extend_from_slice(&prefix);
    let wrapped = match &outer_wrapped {
        Some(blob) => crypto::seal_bytes(backup_key, &header, blob)?,
        None => wrap_key(backup_key, &header, &key)?,
    };
    if wrapped.len() > MAX_WRAPPED {
        return Err(BackupError::Invalid(
            "the tenant's key service gave a wrapped key too long to store".into(),
        ));
    }
    header.extend_from_slice(&(wrapped.len() as u16).to_be_bytes());
    header.extend_from_slice(&wrapped);
    out.write_all(&header).map_err(BackupError::from_io)?;
    let mut writer = SealingWriter {
        out,
        cipher: StreamCipher::new(&key, prefix),
        buffer: Vec::with_capacity(STREAM_CHUNK_BYTES + TAG + 1),
        counter: 0,
    };
    let envelope = serde_json::to_vec(envelope).expect("an envelope always serialises");
    writer
        .write_all(&(envelope.len() as u32).to_be_bytes())
        .and_then(|_| writer.write_all(&envelope))
        .map_err(BackupError::from_io)?;
    Ok(writer)
}

pub struct SealingWriter<W: Write> {
    out: W,
    cipher: StreamCipher,
    buffer: Vec<u8>,
    counter: u32,
}

impl<W: Write> SealingWriter<W> {
    /// Seals the last chunk and returns the inner writer.
    pub fn finish(mut self) -> Result<W, BackupError> {
        let mut last = std::mem::take(&mut self.buffer);
        self.cipher.seal_chunk(self.counter, true, &mut last)?;
        self.out.write_all(&last).map_err(BackupError::from_io)?;
        self.out.flush().map_err(BackupError::from_io)?;
        Ok(self.out)
    }

    fn seal_full_chunks(&mut self) -> io::Result<()> {
        // A full chunk is sealed only once more data follows it, so the final
        // chunk is always the one `finish` seals with the last flag.
        while self.buffer.len() > STREAM_CHUNK_BYTES {
            let rest = self.buffer.split_off(STREAM_CHUNK_BYTES);
            let mut chunk = std::mem::replace(&mut self.buffer, rest);
            self.cipher
                .seal_chunk(self.counter, false, &mut chunk)
                .map_err(io::Error::other)?;
            self.counter = self
                .counter
                .checked_add(1)
                .ok_or_else(|| io::Error::other("sealed stream longer than 2^32 chunks"))?;
            self.out.write_all(&chunk)?;
        }
        Ok(())
    }
}

impl<W: Write> Write for SealingWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(data);
        self.seal_full_chunks()?;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The ids a sealed backup's header names (readable without any key).
#[derive(Debug, Clone)]
pub struct SealedHeader {
    pub backup_id: String,
    pub tenant_id: String,
    /// Version 2: the per-backup key as the tenant's own key wrapped it
    /// (what a restored copy needs to stay under that key).
    pub tenant_key: Option<Vec<u8>>,
}

/// The longest wrapped key a header holds.
const MAX_WRAPPED: usize = 16 * 1024;

/// Reads the header, unwraps the per-backup key, and returns the envelope and a
/// reader of the archive bytes. A wrong key and a damaged header look the same.
pub fn open<R: Read>(
    input: R,
    backup_key: &SecretKey,
) -> Result<(SealedHeader, Envelope, OpeningReader<R>), BackupError> {
    open_for(input, backup_key, None)
}

/// As [`open`]; a version-2 backup's key is unwrapped by its tenant's key
/// service through `outer`.
pub fn open_for<R: Read>(
    mut input: R,
    backup_key: &SecretKey,
    outer: Option<&dyn OuterKey>,
) -> Result<(SealedHeader, Envelope, OpeningReader<R>), BackupError> {
    let bad = |m: &str| BackupError::BadArchive(m.to_string());
    let mut fixed = [0u8; 5 + 1 + 16 + 16 + STREAM_PREFIX_LEN + 2];
    read_exact_or(
        &mut input,
        &mut fixed,
        "not a sealed Coffer backup (too short)",
    )?;
    if &fixed[..5] != SEALED_MAGIC {
        return Err(bad("not a sealed Coffer backup (bad magic)"));
    }
    let version = fixed[5];
    if version != SEALED_VERSION && version != SEALED_VERSION_TENANT_KEY {
        return Err(BackupError::BadArchive(format!(
            "sealed backup version {version} is not supported (this host reads {SEALED_VERSION} and {SEALED_VERSION_TENANT_KEY})",
        )));
    }
    let header_len = fixed.len() - 2;
    let wrapped_len = u16::from_be_bytes([fixed[header_len], fixed[header_len + 1]]) as usize;
    let limit = if version == SEALED_VERSION {
        256
    } else {
        MAX_WRAPPED
    };
    if wrapped_len > limit {
        return Err(bad("sealed backup header is damaged"));
    }
    let mut wrapped = vec![0u8; wrapped_len];
    read_exact_or(
        &mut input,
        &mut wrapped,
        "sealed backup header is truncated",
    )?;
    let wrong = || bad("sealed backup does not open: wrong backup key, or a damaged header");
    let tenant_id = crypto::encode_hex(&fixed[22..38]);
    let (key, tenant_key) = if version == SEALED_VERSION {
        let key = unwrap_key(backup_key, &fixed[..header_len], &wrapped).map_err(|_| wrong())?;
        (key, None)
    } else {
        let blob =
            crypto::open_bytes(backup_key, &fixed[..header_len], &wrapped).map_err(|_| wrong())?;
        let outer = outer.ok_or_else(|| {
            BackupError::KeyUnavailable(
                "this backup is wrapped by its tenant's own key too: open it through a host (coffer serve), which asks the tenant's key service".into(),
            )
        })?;
        let plain = outer.unwrap(&tenant_id, &blob).map_err(|why| {
            BackupError::KeyUnavailable(format!(
                "this backup is wrapped by its tenant's own key, which did not open it: {why}"
            ))
        })?;
        let key = SecretKey::from_bytes(&plain)
            .map_err(|_| bad("the tenant's key service gave back no backup key"))?;
        (key, Some(blob.to_vec()))
    };
    let mut prefix = [0u8; STREAM_PREFIX_LEN];
    prefix.copy_from_slice(&fixed[38..38 + STREAM_PREFIX_LEN]);
    let header = SealedHeader {
        backup_id: crypto::encode_hex(&fixed[6..22]),
        tenant_id,
        tenant_key,
    };
    let mut reader = OpeningReader {
        input,
        cipher: StreamCipher::new(&key, prefix),
        plain: Vec::new(),
        position: 0,
        counter: 0,
        finished: false,
        peeked: None,
    };
    let mut length = [0u8; 4];
    reader
        .read_exact(&mut length)
        .map_err(|e| BackupError::from_sealed_io(&e))?;
    let length = u32::from_be_bytes(length);
    if length > MAX_ENVELOPE {
        return Err(bad("sealed backup envelope is too large"));
    }
    let mut envelope = vec![0u8; length as usize];
    reader
        .read_exact(&mut envelope)
        .map_err(|e| BackupError::from_sealed_io(&e))?;
    let envelope: Envelope = serde_json::from_slice(&envelope)
        .map_err(|e| BackupError::BadArchive(format!("sealed backup envelope: {e}")))?;
    if envelope.backup_id != header.backup_id || envelope.tenant_id != header.tenant_id {
        return Err(bad("sealed backup envelope does not match its header"));
    }
    Ok((header, envelope, reader))
}

fn read_exact_or<R: Read>(input: &mut R, buf: &mut [u8], message: &str) -> Result<(), BackupError> {
    input.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => BackupError::BadArchive(message.to_string()),
        _ => BackupError::from_io(e),
    })
}

/// Decrypts a sealed stream chunk by chunk; fails on any damage, reordering or
/// truncation with an error naming the chunk.
pub struct OpeningReader<R> {
    input: R,
    cipher: StreamCipher,
    plain: Vec<u8>,
    position: usize,
    counter: u32,
    finished: bool,
    peeked: Option<u8>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SealedDamage(pub String);

impl<R: Read> OpeningReader<R> {
    fn next_chunk(&mut self) -> io::Result<()> {
        let mut chunk = Vec::with_capacity(STREAM_CHUNK_BYTES + TAG);
        if let Some(byte) = self.peeked.take() {
            chunk.push(byte);
        }
        let want = STREAM_CHUNK_BYTES + TAG;
        (&mut self.input)
            .take((want - chunk.len()) as u64)
            .read_to_end(&mut chunk)?;
        let damaged = |what: String| io::Error::other(SealedDamage(what));
        if chunk.is_empty() {
            return Err(damaged(format!(
                "sealed backup truncated: chunk {} and the final chunk are missing",
                self.counter
            )));
        }
        let last = if chunk.len() < want {
            true
        } else {
            let mut one = [0u8; 1];
            match self.input.read(&mut one)? {
                0 => true,
                _ => {
                    self.peeked = Some(one[0]);
                    false
                }
            }
        };
        self.cipher.open_chunk(self.counter, last, &mut chunk).map_err(|_| {
            damaged(format!(
                "sealed backup chunk {} fails to open (damaged, reordered, truncated or another key)",
                self.counter
            ))
        })?;
        self.counter = self.counter.wrapping_add(1);
        self.finished = last;
        self.plain = chunk;
        self.position = 0;
        Ok(())
    }
}

impl<R: Read> Read for OpeningReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.position == self.plain.len() {
            if self.finished {
                return Ok(0);
            }
            self.next_chunk()?;
        }
        let n = (self.plain.len() - self.position).min(buf.len());
        buf[..n].copy_from_slice(&self.plain[self.position..self.position + n]);
        self.position += n;
        Ok(n)
    }
}

fn tenant_bytes(tenant: &TenantId) -> [u8; 16] {
    let bytes = crypto::decode_hex(tenant.as_str()).expect("tenant ids are hex");
    let mut out = [0u8; 16];
    out.copy_from_slice(&bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed_backup(plain: &[u8]) -> (SecretKey, Vec<u8>) {
        let key = SecretKey::generate().unwrap();
        let tenant = TenantId::generate().unwrap();
        let envelope = Envelope {
            format: 1,
            backup_id: "ab".repeat(16),
            tenant_id: tenant.to_string(),
            admins: vec![],
            log: None,
        };
        let mut writer = seal(Vec::new(), &key, &[0xab; 16], &tenant, &envelope).unwrap();
        writer.write_all(plain).unwrap();
        (key, writer.finish().unwrap())
    }

    fn open_all(key: &SecretKey, bytes: &[u8]) -> Result<Vec<u8>, String> {
        let (_, _, mut reader) = open(bytes, key).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        reader.read_to_end(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    }

    #[test]
    fn round_trips_at_every_chunk_boundary() {
        for len in [
            0,
            1,
            STREAM_CHUNK_BYTES - 5,
            STREAM_CHUNK_BYTES - 4,
            2 * STREAM_CHUNK_BYTES,
            3 * STREAM_CHUNK_BYTES + 17,
        ] {
            let plain: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let (key, sealed) = sealed_backup(&plain);
            assert_eq!(open_all(&key, &sealed).unwrap(), plain, "length {len}");
        }
    }

    #[test]
    fn damage_truncation_and_the_wrong_key_are_refused() {
        let plain = vec![7u8; 3 * STREAM_CHUNK_BYTES + 100];
        let (key, sealed) = sealed_backup(&plain);
        // Header: 47 fixed bytes + a wrapped key of 1 + 12 + 32 + 16 bytes.
        let header = 47 + 61;
        let chunk = STREAM_CHUNK_BYTES + TAG;
        for cut in [
            header,
            header + chunk,
            header + 2 * chunk + 10,
            sealed.len() - 1,
        ] {
            let error = open_all(&key, &sealed[..cut]).unwrap_err();
            assert!(
                error.contains("truncated") || error.contains("fails to open"),
                "cut at {cut}: {error}"
            );
        }
        for index in [
            0,
            5,
            30,
            60,
            100,
            header + 3,
            sealed.len() / 2,
            sealed.len() - 1,
        ] {
            let mut damaged = sealed.clone();
            damaged[index] ^= 1;
            assert!(open_all(&key, &damaged).is_err(), "flip at {index}");
        }
        let mut swapped = sealed.clone();
        let (a, b) = (header + chunk, header + 2 * chunk);
        let first = sealed[a..a + chunk].to_vec();
        swapped[a..a + chunk].copy_from_slice(&sealed[b..b + chunk]);
        swapped[b..b + chunk].copy_from_slice(&first);
        assert!(open_all(&key, &swapped).unwrap_err().contains("chunk 1"));
        let other = SecretKey::generate().unwrap();
        assert!(open_all(&other, &sealed)
            .unwrap_err()
            .contains("wrong backup key"));
    }
}
