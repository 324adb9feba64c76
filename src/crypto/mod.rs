//! Keys and sealing: AES-256-GCM (ring), HKDF, HMAC, hashing. No I/O happens here.
//!
//! Every format defined in this file carries a version marker and never changes
//! meaning; a new layout gets a new version byte.
//!
//! * A **sealed value** is `0x01 || nonce(12) || ciphertext || tag(16)`, sealed under
//!   a tenant's data key with associated data that names the tenant, the collection
//!   and the record id ([`record_aad`]). Moved anywhere else, it fails to open.
//!   Under a tenant's rotated data key (key id 1 and up) it is `0x02 || key id
//!   (u32 BE) || nonce(12) || ciphertext || tag(16)`; see `tenant`.
//! * A **wrapped data key** is the same layout (version `0x01`) sealed under the
//!   master key (KEK) with associated data naming the tenant and the KEK's id.
//! * Secrets ([`SecretKey`]) are zeroized on drop and print `[SECRET]` in Debug.

pub mod age;
mod tenant;

pub use tenant::{
    sealed_key_id, sealed_plain_len, TenantCipher, TenantKeys, SEALED_FORMAT_V2, SEALED_OVERHEAD_V2,
};

use std::fmt;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hkdf, hmac};
use zeroize::{Zeroize, Zeroizing};

/// Version byte of the sealed-value layout. Part of the on-disk format: never change.
pub const SEALED_FORMAT_V1: u8 = 0x01;
/// Length of every key this module handles (AES-256, HMAC-SHA256 keys).
pub const KEY_LEN: usize = 32;
const TAG_LEN: usize = 16;
/// Bytes a sealed value adds to its plaintext (version, nonce, tag).
pub const SEALED_OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;

/// Why a cryptographic operation failed. Opening failures are deliberately one
/// opaque variant: the caller learns "this did not open", never why (no oracle).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("sealed value failed to open (damaged, or not sealed for this place)")]
    Open,
    #[error("the system random generator failed")]
    Random,
    #[error("key material has the wrong length or encoding")]
    KeyFormat,
}

/// 256 bits of key material. Zeroized on drop; never printed.
#[derive(Clone)]
pub struct SecretKey(Zeroizing<[u8; KEY_LEN]>);

impl SecretKey {
    pub fn generate() -> Result<Self, CryptoError> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        SystemRandom::new()
            .fill(bytes.as_mut())
            .map_err(|_| CryptoError::Random)?;
        Ok(SecretKey(bytes))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let array: [u8; KEY_LEN] = bytes.try_into().map_err(|_| CryptoError::KeyFormat)?;
        Ok(SecretKey(Zeroizing::new(array)))
    }

    /// Parses 64 hex digits (surrounding whitespace allowed), the key-file format.
    pub fn from_hex(text: &str) -> Result<Self, CryptoError> {
        let mut decoded = Zeroizing::new(decode_hex(text.trim()).ok_or(CryptoError::KeyFormat)?);
        let key = Self::from_bytes(&decoded);
        decoded.zeroize();
        key
    }

    /// The key-file encoding: 64 lowercase hex digits. The caller owns the zeroizing.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(encode_hex(self.0.as_ref()))
    }

    /// A public fingerprint: names the key without revealing it (SHA-256 over a
    /// domain-separated HMAC of the key, first 8 bytes, hex).
    pub fn fingerprint(&self) -> String {
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, self.0.as_ref()),
            b"coffer key fingerprint v1",
        );
        encode_hex(&tag.as_ref()[..8])
    }

    /// The key's bytes, for a tenant's own key service to wrap (over its
    /// TLS connection); nothing else takes a key out of this module.
    pub fn bytes_to_wrap(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.0.to_vec())
    }

    fn aead_key(&self) -> LessSafeKey {
        let unbound = UnboundKey::new(&AES_256_GCM, self.0.as_ref())
            .expect("a 32-byte key is always valid for AES-256-GCM");
        LessSafeKey::new(unbound)
    }
}

/// An Ed25519 key pair from a 32-byte seed (audit checkpoint signing).
pub fn ed25519_pair(seed: &SecretKey) -> Result<ring::signature::Ed25519KeyPair, CryptoError> {
    ring::signature::Ed25519KeyPair::from_seed_unchecked(seed.0.as_ref())
        .map_err(|_| CryptoError::KeyFormat)
}

/// HMAC-SHA256 of `data` under a key derived from `key` for `context`
/// (the audit log's per-tenant identifiers).
pub fn keyed_tag(key: &SecretKey, context: &[u8], data: &[u8]) -> [u8; 32] {
    let derived = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key.0.as_ref()), context);
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()), data);
    tag.as_ref().try_into().expect("HMAC-SHA256 is 32 bytes")
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[SECRET]")
    }
}

/// The master key (key-encryption key) with its public id. Wraps and unwraps DEKs.
#[derive(Debug, Clone)]
pub struct MasterKey {
    pub id: String,
    key: SecretKey,
}

impl MasterKey {
    pub fn new(key: SecretKey) -> Self {
        MasterKey {
            id: key.fingerprint(),
            key,
        }
    }

    pub fn secret(&self) -> &SecretKey {
        &self.key
    }

    pub fn wrap_dek(&self, tenant: &str, dek: &SecretKey) -> Result<Vec<u8>, CryptoError> {
        seal_with(
            &self.key.aead_key(),
            &dek_aad(tenant, &self.id),
            dek.0.as_ref(),
        )
    }

    pub fn unwrap_dek(&self, tenant: &str, wrapped: &[u8]) -> Result<SecretKey, CryptoError> {
        let plain = Zeroizing::new(open_with(
            &self.key.aead_key(),
            &dek_aad(tenant, &self.id),
            wrapped,
        )?);
        SecretKey::from_bytes(&plain)
    }

    /// Seals bytes of any length that belong to `label` (a data key already
    /// wrapped by a tenant's own key service, a key service's token).
    pub fn seal_blob(&self, label: &str, blob: &[u8]) -> Result<Vec<u8>, CryptoError> {
        seal_with(&self.key.aead_key(), &blob_aad(label, &self.id), blob)
    }

    pub fn open_blob(&self, label: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        open_with(&self.key.aead_key(), &blob_aad(label, &self.id), sealed).map(Zeroizing::new)
    }
}

fn blob_aad(label: &str, kek_id: &str) -> Vec<u8> {
    length_prefixed(b"coffer blob v1", &[label, kek_id])
}

/// The master keys a host holds, by id, and which one wraps new data keys. Old
/// keys stay here until no tenant's DEK is wrapped under them (see `keys`).
#[derive(Debug, Clone)]
pub struct Keyring {
    keys: std::collections::HashMap<String, MasterKey>,
    current: String,
}

impl Keyring {
    pub fn new(current: MasterKey) -> Self {
        let id = current.id.clone();
        let mut keys = std::collections::HashMap::new();
        keys.insert(id.clone(), current);
        Keyring { keys, current: id }
    }

    pub fn add(&mut self, key: MasterKey) {
        self.keys.insert(key.id.clone(), key);
    }

    pub fn set_current(&mut self, id: &str) -> bool {
        let known = self.keys.contains_key(id);
        if known {
            self.current = id.to_string();
        }
        known
    }

    pub fn current(&self) -> &MasterKey {
        &self.keys[&self.current]
    }

    pub fn get(&self, id: &str) -> Option<&MasterKey> {
        self.keys.get(id)
    }

    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<_> = self.keys.keys().cloned().collect();
        ids.sort();
        ids
    }

    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        let current = self.current.clone();
        self.keys.retain(|id, _| id == &current || keep(id));
    }
}

/// Plaintext bytes per chunk of a sealed stream (DR backups). Part of the
/// sealed-backup format version 1: never change.
pub const STREAM_CHUNK_BYTES: usize = 64 * 1024;
/// Length of the random nonce prefix of a sealed stream.
pub const STREAM_PREFIX_LEN: usize = 7;

/// STREAM-style chunked AEAD (Hoang, Reyhanitabar, Rogaway, Vizár 2015): chunk `i`
/// is sealed with nonce `prefix(7) || i (u32 BE) || last (1 byte)`. A chunk moved,
/// dropped, repeated or taken from another stream fails to open, and a stream cut
/// after any chunk but the one marked last is detected.
pub struct StreamCipher {
    aead: LessSafeKey,
    prefix: [u8; STREAM_PREFIX_LEN],
}

impl fmt::Debug for StreamCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StreamCipher([SECRET])")
    }
}

impl StreamCipher {
    pub fn new(key: &SecretKey, prefix: [u8; STREAM_PREFIX_LEN]) -> Self {
        StreamCipher {
            aead: key.aead_key(),
            prefix,
        }
    }

    fn nonce(&self, counter: u32, last: bool) -> Nonce {
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..STREAM_PREFIX_LEN].copy_from_slice(&self.prefix);
        nonce[STREAM_PREFIX_LEN..STREAM_PREFIX_LEN + 4].copy_from_slice(&counter.to_be_bytes());
        nonce[NONCE_LEN - 1] = u8::from(last);
        Nonce::assume_unique_for_key(nonce)
    }

    /// Seals chunk `counter` in place; appends the tag.
    pub fn seal_chunk(
        &self,
        counter: u32,
        last: bool,
        buffer: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        let tag = self
            .aead
            .seal_in_place_separate_tag(self.nonce(counter, last), Aad::empty(), buffer)
            .map_err(|_| CryptoError::Random)?;
        buffer.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Opens chunk `counter` in place; leaves the plaintext in `buffer`.
    pub fn open_chunk(
        &self,
        counter: u32,
        last: bool,
        buffer: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        let len = self
            .aead
            .open_in_place(self.nonce(counter, last), Aad::empty(), buffer)
            .map_err(|_| CryptoError::Open)?
            .len();
        buffer.truncate(len);
        Ok(())
    }
}

/// Wraps a key under another (AES-256-GCM, sealed-value layout) with `aad`.
pub fn wrap_key(wrapping: &SecretKey, aad: &[u8], key: &SecretKey) -> Result<Vec<u8>, CryptoError> {
    seal_with(&wrapping.aead_key(), aad, key.0.as_ref())
}

pub fn unwrap_key(
    wrapping: &SecretKey,
    aad: &[u8],
    wrapped: &[u8],
) -> Result<SecretKey, CryptoError> {
    let plain = Zeroizing::new(open_with(&wrapping.aead_key(), aad, wrapped)?);
    SecretKey::from_bytes(&plain)
}

/// Seals bytes of any length under a key (a backup's key as its tenant's own
/// key service wrapped it, sealed under the backup key).
pub fn seal_bytes(wrapping: &SecretKey, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, CryptoError> {
    seal_with(&wrapping.aead_key(), aad, plain)
}

pub fn open_bytes(
    wrapping: &SecretKey,
    aad: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    open_with(&wrapping.aead_key(), aad, sealed).map(Zeroizing::new)
}

/// Associated data for a record value: binds the ciphertext to its place.
pub fn record_aad(tenant: &str, collection: &str, record_id: &str) -> Vec<u8> {
    length_prefixed(b"coffer record v1", &[tenant, collection, record_id])
}

/// Associated data of one entry of a tenant's change log.
pub fn change_aad(tenant: &str, seq: u64) -> Vec<u8> {
    length_prefixed(b"coffer change v1", &[tenant, &seq.to_string()])
}

fn dek_aad(tenant: &str, kek_id: &str) -> Vec<u8> {
    length_prefixed(b"coffer dek v1", &[tenant, kek_id])
}

fn length_prefixed(domain: &[u8], parts: &[&str]) -> Vec<u8> {
    let mut out = domain.to_vec();
    for part in parts {
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part.as_bytes());
    }
    out
}

/// A fresh random 96-bit AEAD nonce. Nonces are public, so they are drawn from a
/// per-thread buffer refilled from the OS 4 KiB at a time: one `getrandom` call
/// per 341 nonces instead of one per sealed record (it halved sealing speed).
/// Keys and tokens never come from this buffer.
pub fn random_nonce() -> Result<[u8; NONCE_LEN], CryptoError> {
    use std::cell::RefCell;
    thread_local! {
        static POOL: RefCell<([u8; 4092], usize)> = const { RefCell::new(([0u8; 4092], 4092)) };
    }
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let (bytes, used) = &mut *pool;
        if *used + NONCE_LEN > bytes.len() {
            SystemRandom::new()
                .fill(bytes)
                .map_err(|_| CryptoError::Random)?;
            *used = 0;
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&bytes[*used..*used + NONCE_LEN]);
        // Never hand out the same bytes twice.
        bytes[*used..*used + NONCE_LEN].fill(0);
        *used += NONCE_LEN;
        Ok(nonce)
    })
}

fn seal_with(key: &LessSafeKey, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let nonce = random_nonce()?;
    let mut out = Vec::with_capacity(1 + NONCE_LEN + plaintext.len() + TAG_LEN);
    out.push(SEALED_FORMAT_V1);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut out[1 + NONCE_LEN..],
        )
        .map_err(|_| CryptoError::Random)?;
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

fn open_with(key: &LessSafeKey, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < SEALED_OVERHEAD || sealed[0] != SEALED_FORMAT_V1 {
        return Err(CryptoError::Open);
    }
    let nonce: [u8; NONCE_LEN] = sealed[1..1 + NONCE_LEN]
        .try_into()
        .map_err(|_| CryptoError::Open)?;
    let mut buffer = sealed[1 + NONCE_LEN..].to_vec();
    let plain_len = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut buffer,
        )
        .map_err(|_| CryptoError::Open)?
        .len();
    buffer.truncate(plain_len);
    Ok(buffer)
}

fn derive_hmac_key(root: &SecretKey, info: &'static [u8]) -> hmac::Key {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"coffer hkdf salt v1").extract(root.0.as_ref());
    let infos = [info];
    let okm = prk
        .expand(&infos, hmac::HMAC_SHA256)
        .expect("HKDF output of one SHA-256 block is always in range");
    hmac::Key::from(okm)
}

/// A webhook signing secret as its receiver is given it (Standard Webhooks):
/// `whsec_` and the key's bytes in base64.
pub fn webhook_secret_text(secret: &SecretKey) -> Zeroizing<String> {
    use base64::Engine;
    Zeroizing::new(format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(secret.0.as_ref())
    ))
}

/// The Standard Webhooks signature of one delivery: base64 of
/// HMAC-SHA256 under the secret over `id.timestamp.body`.
pub fn webhook_signature(secret: &SecretKey, id: &str, timestamp: u64, body: &[u8]) -> String {
    sign_webhook(secret.0.as_ref(), id, timestamp, body)
}

fn sign_webhook(secret: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    use base64::Engine;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(id.as_bytes());
    ctx.update(b".");
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    base64::engine::general_purpose::STANDARD.encode(ctx.sign().as_ref())
}

/// 32 fresh random bytes as hex: bearer tokens and record ids draw from this.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut out = [0u8; N];
    SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| CryptoError::Random)?;
    Ok(out)
}

/// SHA-256 of a bearer token: what the catalog stores instead of the token.
pub fn token_digest(token: &str) -> [u8; 32] {
    let hash = digest::digest(&digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(hash.as_ref());
    out
}

/// Equality for digests and MACs whose time does not depend on where they differ
/// (lengths are public: callers compare fixed-size digests).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

pub fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[(byte >> 4) as usize] as char);
        out.push(DIGITS[(byte & 0x0f) as usize] as char);
    }
    out
}

pub fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    text.as_bytes()
        .chunks(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let key = SecretKey::generate().unwrap();
        let hex = key.to_hex();
        let master = MasterKey::new(key.clone());
        for printed in [
            format!("{key:?}"),
            format!("{master:?}"),
            format!("{:?}", TenantCipher::new(&key)),
        ] {
            assert!(printed.contains("[SECRET]"), "{printed}");
            assert!(!printed.contains(hex.as_str()), "{printed}");
        }
    }

    #[test]
    fn webhook_signatures_match_the_standard_webhooks_test_vector() {
        use base64::Engine;
        let secret = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        let signature = sign_webhook(
            &secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn sealed_value_is_bound_to_its_place() {
        let cipher = TenantCipher::new(&SecretKey::generate().unwrap());
        let sealed = cipher
            .seal(&record_aad("t1", "contacts", "r1"), b"hello")
            .unwrap();
        assert_eq!(
            cipher
                .open(&record_aad("t1", "contacts", "r1"), &sealed)
                .unwrap(),
            b"hello"
        );
        for (tenant, collection, record) in [
            ("t2", "contacts", "r1"),
            ("t1", "deals", "r1"),
            ("t1", "contacts", "r2"),
        ] {
            assert_eq!(
                cipher.open(&record_aad(tenant, collection, record), &sealed),
                Err(CryptoError::Open)
            );
        }
        let other = TenantCipher::new(&SecretKey::generate().unwrap());
        assert_eq!(
            other.open(&record_aad("t1", "contacts", "r1"), &sealed),
            Err(CryptoError::Open)
        );
    }

    #[test]
    fn flipped_bits_and_truncation_fail_to_open() {
        let cipher = TenantCipher::new(&SecretKey::generate().unwrap());
        let aad = record_aad("t", "c", "r");
        let sealed = cipher.seal(&aad, b"payload").unwrap();
        for index in 0..sealed.len() {
            let mut damaged = sealed.clone();
            damaged[index] ^= 0x40;
            assert_eq!(cipher.open(&aad, &damaged), Err(CryptoError::Open));
        }
        for len in 0..sealed.len() {
            assert_eq!(cipher.open(&aad, &sealed[..len]), Err(CryptoError::Open));
        }
    }

    #[test]
    fn open_append_adds_the_plaintext_or_leaves_the_buffer_alone() {
        let cipher = TenantCipher::new(&SecretKey::generate().unwrap());
        let aad = record_aad("t", "c", "r");
        let sealed = cipher.seal(&aad, b"payload").unwrap();
        assert_eq!(sealed.len(), b"payload".len() + SEALED_OVERHEAD);
        let mut out = b"before:".to_vec();
        cipher.open_append(&aad, &sealed, &mut out).unwrap();
        assert_eq!(out, b"before:payload");
        let mut damaged = sealed.clone();
        damaged[20] ^= 1;
        for bad in [&damaged[..], &sealed[..10], &sealed[..sealed.len() - 1]] {
            assert_eq!(
                cipher.open_append(&aad, bad, &mut out),
                Err(CryptoError::Open)
            );
            assert_eq!(out, b"before:payload");
        }
        let wrong_place = record_aad("t", "c", "other");
        assert_eq!(
            cipher.open_append(&wrong_place, &sealed, &mut out),
            Err(CryptoError::Open)
        );
        assert_eq!(out, b"before:payload");
    }

    #[test]
    fn dek_wrap_names_tenant_and_kek() {
        let master = MasterKey::new(SecretKey::generate().unwrap());
        let dek = SecretKey::generate().unwrap();
        let wrapped = master.wrap_dek("t1", &dek).unwrap();
        assert_eq!(
            master.unwrap_dek("t1", &wrapped).unwrap().to_hex(),
            dek.to_hex()
        );
        assert!(master.unwrap_dek("t2", &wrapped).is_err());
        let other = MasterKey::new(SecretKey::generate().unwrap());
        assert!(other.unwrap_dek("t1", &wrapped).is_err());
    }

    #[test]
    fn blind_index_is_deterministic_and_keyed() {
        let key = SecretKey::generate().unwrap();
        let a = TenantCipher::new(&key);
        let b = TenantCipher::new(&key);
        let c = TenantCipher::new(&SecretKey::generate().unwrap());
        let tag = a.blind_index("contacts", "email", b"x@example.com");
        assert_eq!(tag, b.blind_index("contacts", "email", b"x@example.com"));
        assert_ne!(tag, c.blind_index("contacts", "email", b"x@example.com"));
        assert_ne!(tag, a.blind_index("contacts", "phone", b"x@example.com"));
    }

    #[test]
    fn stream_chunks_are_bound_to_position_and_end() {
        let key = SecretKey::generate().unwrap();
        let cipher = StreamCipher::new(&key, [1; STREAM_PREFIX_LEN]);
        let sealed = |counter, last| {
            let mut b = b"chunk".to_vec();
            cipher.seal_chunk(counter, last, &mut b).unwrap();
            b
        };
        let mut ok = sealed(3, false);
        cipher.open_chunk(3, false, &mut ok).unwrap();
        assert_eq!(ok, b"chunk");
        for (counter, last) in [(4, false), (3, true), (2, false)] {
            let mut moved = sealed(3, false);
            assert_eq!(
                cipher.open_chunk(counter, last, &mut moved),
                Err(CryptoError::Open)
            );
        }
        let other = StreamCipher::new(&key, [2; STREAM_PREFIX_LEN]);
        let mut foreign = sealed(0, true);
        assert_eq!(
            other.open_chunk(0, true, &mut foreign),
            Err(CryptoError::Open)
        );
    }

    #[test]
    fn nonces_do_not_repeat_across_refills() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2_000 {
            assert!(seen.insert(random_nonce().unwrap()));
        }
    }

    #[test]
    fn hex_round_trip_and_refusals() {
        let key = SecretKey::generate().unwrap();
        let again = SecretKey::from_hex(&format!("  {}\n", key.to_hex().as_str())).unwrap();
        assert_eq!(again.to_hex(), key.to_hex());
        for bad in ["", "abc", "zz", &"00".repeat(31), &"00".repeat(33)] {
            assert_eq!(SecretKey::from_hex(bad).err(), Some(CryptoError::KeyFormat));
        }
    }
}
