//! Encryption to an age X25519 recipient (`age1…`), so that a tenant decrypts its
//! own export with the standard `age` tool and its own key: nobody needs Coffer
//! to read their own data. Implements the age v1 file format (C2SP `age`):
//! one X25519 recipient stanza, the header MAC, and the ChaCha20-Poly1305 STREAM
//! payload in 64 KiB chunks. Built on ring's primitives; no I/O but the writer
//! the caller hands in.

use std::io::{self, Write};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
use ring::hkdf;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use super::CryptoError;

const CHUNK: usize = 64 * 1024;
const TAG: usize = 16;

/// A parsed `age1…` recipient: an X25519 public key.
#[derive(Clone, PartialEq, Eq)]
pub struct AgeRecipient([u8; 32]);

impl std::fmt::Debug for AgeRecipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AgeRecipient({})", self.to_bech32())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not an age X25519 recipient (expected age1… in bech32)")]
pub struct BadRecipient;

impl AgeRecipient {
    pub fn parse(text: &str) -> Result<AgeRecipient, BadRecipient> {
        let (hrp, data) = bech32_decode(text).ok_or(BadRecipient)?;
        if hrp != "age" {
            return Err(BadRecipient);
        }
        let bytes: [u8; 32] = data.try_into().map_err(|_| BadRecipient)?;
        Ok(AgeRecipient(bytes))
    }

    pub fn to_bech32(&self) -> String {
        bech32_encode("age", &self.0)
    }
}

/// Writes an age file to `out`: the header now, the payload as it is written.
pub fn encrypt<W: Write>(
    mut out: W,
    recipient: &AgeRecipient,
) -> Result<AgeWriter<W>, CryptoError> {
    let rng = SystemRandom::new();
    let mut file_key = Zeroizing::new([0u8; 16]);
    rng.fill(file_key.as_mut())
        .map_err(|_| CryptoError::Random)?;

    // X25519 stanza: wrap the file key for the recipient.
    let ephemeral =
        EphemeralPrivateKey::generate(&X25519, &rng).map_err(|_| CryptoError::Random)?;
    let share = ephemeral
        .compute_public_key()
        .map_err(|_| CryptoError::Random)?;
    let share: [u8; 32] = share.as_ref().try_into().map_err(|_| CryptoError::Random)?;
    let wrap_key = agreement::agree_ephemeral(
        ephemeral,
        &UnparsedPublicKey::new(&X25519, recipient.0),
        |shared| {
            let mut salt = Vec::with_capacity(64);
            salt.extend_from_slice(&share);
            salt.extend_from_slice(&recipient.0);
            hkdf32(&salt, shared, b"age-encryption.org/v1/X25519")
        },
    )
    .map_err(|_| CryptoError::KeyFormat)?;
    let mut body = file_key.to_vec();
    chacha(&wrap_key)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key([0u8; 12]),
            Aad::empty(),
            &mut body,
        )
        .map_err(|_| CryptoError::Random)?;

    let mut header = String::from("age-encryption.org/v1\n");
    header.push_str(&format!("-> X25519 {}\n", base64(&share)));
    header.push_str(&base64(&body));
    header.push('\n');
    header.push_str("---");
    let mac_key = hkdf32(&[], file_key.as_ref(), b"header");
    let mac = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, mac_key.as_ref()),
        header.as_bytes(),
    );
    header.push_str(&format!(" {}\n", base64(mac.as_ref())));

    let mut nonce = [0u8; 16];
    rng.fill(&mut nonce).map_err(|_| CryptoError::Random)?;
    let payload_key = hkdf32(&nonce, file_key.as_ref(), b"payload");
    out.write_all(header.as_bytes())
        .and_then(|_| out.write_all(&nonce))
        .map_err(|_| CryptoError::Random)?;
    Ok(AgeWriter {
        out,
        key: chacha(&payload_key),
        buffer: Vec::with_capacity(CHUNK + TAG + 1),
        counter: 0,
    })
}

/// The payload writer: ChaCha20-Poly1305 STREAM, 64 KiB chunks, nonce = 11-byte
/// counter || last flag. Call [`AgeWriter::finish`] to write the last chunk.
pub struct AgeWriter<W: Write> {
    out: W,
    key: LessSafeKey,
    buffer: Vec<u8>,
    counter: u128,
}

impl<W: Write> AgeWriter<W> {
    fn nonce(&self, last: bool) -> Nonce {
        let mut nonce = [0u8; 12];
        nonce[..11].copy_from_slice(&self.counter.to_be_bytes()[5..]);
        nonce[11] = u8::from(last);
        Nonce::assume_unique_for_key(nonce)
    }

    pub fn finish(mut self) -> io::Result<W> {
        let mut last = std::mem::take(&mut self.buffer);
        self.key
            .seal_in_place_append_tag(self.nonce(true), Aad::empty(), &mut last)
            .map_err(|_| io::Error::other("age: seal the last chunk"))?;
        self.out.write_all(&last)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for AgeWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(data);
        // A full chunk is sealed only when more data follows it: age's last chunk
        // is full or short, and empty only for an empty file.
        while self.buffer.len() > CHUNK {
            let rest = self.buffer.split_off(CHUNK);
            let mut chunk = std::mem::replace(&mut self.buffer, rest);
            self.key
                .seal_in_place_append_tag(self.nonce(false), Aad::empty(), &mut chunk)
                .map_err(|_| io::Error::other("age: seal a chunk"))?;
            self.counter += 1;
            self.out.write_all(&chunk)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

struct Len32;

impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

fn hkdf32(salt: &[u8], ikm: &[u8], info: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    let infos = [info];
    hkdf::Salt::new(hkdf::HKDF_SHA256, salt)
        .extract(ikm)
        .expand(&infos, Len32)
        .and_then(|okm| okm.fill(out.as_mut()))
        .expect("HKDF of 32 bytes is always in range");
    out
}

fn chacha(key: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).expect("32-byte key"))
}

/// Standard base64 without padding, as age writes it.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len() * 4 / 3 + 4);
    for group in bytes.chunks(3) {
        let n = group
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=group.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

const BECH32_CHARSET: &[u8; 32] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";

fn bech32_polymod(values: &[u8]) -> u32 {
    const GEN: [u32; 5] = [0x3b6a57b2, 0x26508e6d, 0x1ea119fa, 0x3d4233dd, 0x2a1462b3];
    let mut chk: u32 = 1;
    for v in values {
        let top = chk >> 25;
        chk = ((chk & 0x1ffffff) << 5) ^ u32::from(*v);
        for (i, g) in GEN.iter().enumerate() {
            if (top >> i) & 1 == 1 {
                chk ^= g;
            }
        }
    }
    chk
}

fn hrp_expand(hrp: &str) -> Vec<u8> {
    let mut out: Vec<u8> = hrp.bytes().map(|b| b >> 5).collect();
    out.push(0);
    out.extend(hrp.bytes().map(|b| b & 31));
    out
}

fn convert_bits(data: &[u8], from: u32, to: u32, pad: bool) -> Option<Vec<u8>> {
    let (mut acc, mut bits, mut out) = (0u32, 0u32, Vec::new());
    let maxv = (1u32 << to) - 1;
    for value in data {
        let v = u32::from(*value);
        if v >> from != 0 {
            return None;
        }
        acc = (acc << from) | v;
        bits += from;
        while bits >= to {
            bits -= to;
            out.push(((acc >> bits) & maxv) as u8);
        }
    }
    if pad {
        if bits > 0 {
            out.push(((acc << (to - bits)) & maxv) as u8);
        }
    } else if bits >= from || ((acc << (to - bits)) & maxv) != 0 {
        return None;
    }
    Some(out)
}

fn bech32_decode(text: &str) -> Option<(String, Vec<u8>)> {
    if text.len() > 200 || (text.to_lowercase() != text && text.to_uppercase() != text) {
        return None;
    }
    let text = text.to_lowercase();
    let split = text.rfind('1')?;
    let (hrp, data) = (&text[..split], &text[split + 1..]);
    if hrp.is_empty() || data.len() < 6 {
        return None;
    }
    let values: Vec<u8> = data
        .bytes()
        .map(|c| BECH32_CHARSET.iter().position(|x| *x == c).map(|p| p as u8))
        .collect::<Option<_>>()?;
    let mut check = hrp_expand(hrp);
    check.extend_from_slice(&values);
    if bech32_polymod(&check) != 1 {
        return None;
    }
    let bytes = convert_bits(&values[..values.len() - 6], 5, 8, false)?;
    Some((hrp.to_string(), bytes))
}

fn bech32_encode(hrp: &str, data: &[u8]) -> String {
    let values = convert_bits(data, 8, 5, true).expect("8-bit data converts");
    let mut check = hrp_expand(hrp);
    check.extend_from_slice(&values);
    check.extend_from_slice(&[0; 6]);
    let polymod = bech32_polymod(&check) ^ 1;
    let mut out = format!("{hrp}1");
    for v in values
        .iter()
        .copied()
        .chain((0..6).map(|i| ((polymod >> (5 * (5 - i))) & 31) as u8))
    {
        out.push(BECH32_CHARSET[v as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet_without_padding() {
        for (input, expected) in [
            (&b""[..], ""),
            (b"f", "Zg"),
            (b"fo", "Zm8"),
            (b"foo", "Zm9v"),
            (b"foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input), expected);
        }
    }

    #[test]
    fn recipients_round_trip_and_refuse_garbage() {
        let r = AgeRecipient([7u8; 32]);
        let text = r.to_bech32();
        assert!(text.starts_with("age1"));
        assert_eq!(AgeRecipient::parse(&text), Ok(r));
        let mut broken = text.clone();
        broken.pop();
        broken.push(if text.ends_with('q') { 'p' } else { 'q' });
        for bad in [
            broken.as_str(),
            "age1",
            "",
            "npub1xyz",
            &text.replace("age1", "agf1"),
        ] {
            assert_eq!(AgeRecipient::parse(bad), Err(BadRecipient), "{bad}");
        }
    }
}
