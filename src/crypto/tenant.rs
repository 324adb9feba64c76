//! A tenant's data keys: sealing and opening its records, change-log entries
//! and blind-index tags. A tenant has one data key (DEK), or two while its
//! key is being rotated: the new one seals, both open.
//!
//! Sealed values name the key that sealed them. The tenant's first key (id 0)
//! writes the original layout (`0x01 || nonce || ciphertext || tag`), so data
//! from before rotation existed stays as it is; a rotated key (id 1 and up)
//! writes `0x02 || key id (u32 BE) || nonce || ciphertext || tag`. The key id
//! only picks the key to try: a changed id picks a key that fails to open.

use std::fmt;

use ring::aead::{Aad, LessSafeKey, Nonce, NONCE_LEN};
use ring::hmac;

use super::{derive_hmac_key, random_nonce, CryptoError, SecretKey, SEALED_FORMAT_V1, TAG_LEN};

/// Version byte of the sealed-value layout with a key id. On-disk format: never change.
pub const SEALED_FORMAT_V2: u8 = 0x02;
/// Bytes a sealed value of layout 2 adds to its plaintext (version, key id, nonce, tag).
pub const SEALED_OVERHEAD_V2: usize = 1 + 4 + NONCE_LEN + TAG_LEN;

/// The id of the key that sealed `sealed` (0 for the original layout), if it
/// is a sealed value at all.
pub fn sealed_key_id(sealed: &[u8]) -> Option<u32> {
    header(sealed).map(|(id, _)| id)
}

/// The key id and the length of the header before the nonce.
fn header(sealed: &[u8]) -> Option<(u32, usize)> {
    match *sealed.first()? {
        SEALED_FORMAT_V1 if sealed.len() >= 1 + NONCE_LEN + TAG_LEN => Some((0, 1)),
        SEALED_FORMAT_V2 if sealed.len() >= SEALED_OVERHEAD_V2 => Some((
            u32::from_be_bytes(sealed[1..5].try_into().expect("four bytes")),
            5,
        )),
        _ => None,
    }
}

/// The plaintext length of a sealed value, known without opening it.
pub fn sealed_plain_len(sealed: &[u8]) -> Option<usize> {
    let (_, head) = header(sealed)?;
    Some(sealed.len() - head - NONCE_LEN - TAG_LEN)
}

/// One data key, ready to seal and open. Holds the expanded AES key and the
/// blind-index key derived from the DEK; both are dropped with it.
pub struct TenantCipher {
    id: u32,
    aead: LessSafeKey,
    blind_index: hmac::Key,
}

impl fmt::Debug for TenantCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TenantCipher(key {}, [SECRET])", self.id)
    }
}

impl TenantCipher {
    /// The tenant's first data key (id 0).
    pub fn new(dek: &SecretKey) -> Self {
        TenantCipher::with_id(dek, 0)
    }

    /// A data key with its id (the tenant's rotations count them).
    pub fn with_id(dek: &SecretKey, id: u32) -> Self {
        TenantCipher {
            id,
            aead: dek.aead_key(),
            blind_index: derive_hmac_key(dek, b"coffer blind index v1"),
        }
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let nonce = random_nonce()?;
        let mut out = Vec::with_capacity(SEALED_OVERHEAD_V2 + plaintext.len());
        if self.id == 0 {
            out.push(SEALED_FORMAT_V1);
        } else {
            out.push(SEALED_FORMAT_V2);
            out.extend_from_slice(&self.id.to_be_bytes());
        }
        out.extend_from_slice(&nonce);
        let at = out.len();
        out.extend_from_slice(plaintext);
        let tag = self
            .aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out[at..],
            )
            .map_err(|_| CryptoError::Random)?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut out = Vec::with_capacity(sealed.len());
        self.open_append(aad, sealed, &mut out)?;
        Ok(out)
    }

    /// Opens `sealed` onto the end of `out` (decrypted in place there, no other
    /// copy). On failure `out` is as it was.
    pub fn open_append(
        &self,
        aad: &[u8],
        sealed: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        let (id, head) = header(sealed).ok_or(CryptoError::Open)?;
        if id != self.id {
            return Err(CryptoError::Open);
        }
        let nonce: [u8; NONCE_LEN] = sealed[head..head + NONCE_LEN]
            .try_into()
            .map_err(|_| CryptoError::Open)?;
        let start = out.len();
        out.extend_from_slice(&sealed[head + NONCE_LEN..]);
        match self.aead.open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut out[start..],
        ) {
            Ok(plain) => {
                let plain_len = plain.len();
                out.truncate(start + plain_len);
                Ok(())
            }
            Err(_) => {
                out.truncate(start);
                Err(CryptoError::Open)
            }
        }
    }

    /// The blind index of one field value: HMAC-SHA256 under the key's index
    /// key over collection, field and the value's canonical bytes. Equal values give
    /// equal tags, so lookups work without the value ever reaching the disk.
    pub fn blind_index(&self, collection: &str, field: &str, value: &[u8]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.blind_index);
        for part in [collection.as_bytes(), field.as_bytes()] {
            ctx.update(&(part.len() as u32).to_be_bytes());
            ctx.update(part);
        }
        ctx.update(value);
        let tag = ctx.sign();
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }
}

/// A tenant's data keys: the one that seals (`current`) and, while a
/// rotation runs, the one it replaces. Values open under whichever sealed them.
#[derive(Debug)]
pub struct TenantKeys {
    current: TenantCipher,
    previous: Option<TenantCipher>,
}

impl TenantKeys {
    pub fn new(current: TenantCipher) -> Self {
        TenantKeys {
            current,
            previous: None,
        }
    }

    /// During a rotation: `current` seals, `previous` still opens.
    pub fn rotating(current: TenantCipher, previous: TenantCipher) -> Self {
        TenantKeys {
            current,
            previous: Some(previous),
        }
    }

    pub fn current(&self) -> &TenantCipher {
        &self.current
    }

    /// The key being replaced, while a rotation runs.
    pub fn previous(&self) -> Option<&TenantCipher> {
        self.previous.as_ref()
    }

    /// Every key, the sealing one first.
    pub fn all(&self) -> impl Iterator<Item = &TenantCipher> {
        std::iter::once(&self.current).chain(self.previous.as_ref())
    }

    /// The key that sealed `sealed`; `None` if neither did (or it is not a
    /// sealed value).
    pub fn sealer_of(&self, sealed: &[u8]) -> Option<&TenantCipher> {
        let id = sealed_key_id(sealed)?;
        self.all().find(|key| key.id == id)
    }

    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.current.seal(aad, plaintext)
    }

    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.sealer_of(sealed)
            .ok_or(CryptoError::Open)?
            .open(aad, sealed)
    }

    pub fn open_append(
        &self,
        aad: &[u8],
        sealed: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        self.sealer_of(sealed)
            .ok_or(CryptoError::Open)?
            .open_append(aad, sealed, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotated_key_names_itself_and_the_original_layout_stays() {
        let (first, second) = (
            SecretKey::generate().unwrap(),
            SecretKey::generate().unwrap(),
        );
        let old = TenantCipher::new(&first);
        let sealed_old = old.seal(b"aad", b"payload").unwrap();
        assert_eq!(sealed_old[0], SEALED_FORMAT_V1);
        assert_eq!(sealed_key_id(&sealed_old), Some(0));
        assert_eq!(sealed_plain_len(&sealed_old), Some(7));
        let keys =
            TenantKeys::rotating(TenantCipher::with_id(&second, 1), TenantCipher::new(&first));
        let sealed_new = keys.seal(b"aad", b"payload").unwrap();
        assert_eq!(&sealed_new[..5], &[SEALED_FORMAT_V2, 0, 0, 0, 1]);
        assert_eq!(sealed_key_id(&sealed_new), Some(1));
        assert_eq!(sealed_plain_len(&sealed_new), Some(7));
        assert_eq!(sealed_new.len(), 7 + SEALED_OVERHEAD_V2);
        // During the rotation both open; the same AAD still binds each.
        assert_eq!(keys.open(b"aad", &sealed_old).unwrap(), b"payload");
        assert_eq!(keys.open(b"aad", &sealed_new).unwrap(), b"payload");
        assert_eq!(keys.open(b"other", &sealed_new), Err(CryptoError::Open));
        // After it, the old key is gone: its values no longer open.
        let after = TenantKeys::new(TenantCipher::with_id(&second, 1));
        assert_eq!(after.open(b"aad", &sealed_old), Err(CryptoError::Open));
        assert_eq!(after.open(b"aad", &sealed_new).unwrap(), b"payload");
        // A key id changed on disk picks the wrong key, which fails to open.
        let mut moved = sealed_new.clone();
        moved[4] = 0;
        moved.remove(1);
        assert_eq!(keys.open(b"aad", &moved), Err(CryptoError::Open));
        let mut renamed = sealed_new;
        renamed[4] = 7;
        assert_eq!(keys.open(b"aad", &renamed), Err(CryptoError::Open));
    }

    #[test]
    fn blind_indexes_differ_per_key() {
        let (first, second) = (
            SecretKey::generate().unwrap(),
            SecretKey::generate().unwrap(),
        );
        let keys =
            TenantKeys::rotating(TenantCipher::with_id(&second, 1), TenantCipher::new(&first));
        let tags: Vec<_> = keys
            .all()
            .map(|k| k.blind_index("people", "email", b"a@x"))
            .collect();
        assert_eq!(tags.len(), 2);
        assert_ne!(tags[0], tags[1]);
        assert_eq!(
            tags[1],
            TenantCipher::new(&first).blind_index("people", "email", b"a@x")
        );
    }
}
