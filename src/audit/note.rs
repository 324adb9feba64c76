//! Signed checkpoints in the C2SP formats: a `tlog-checkpoint` body
//! (origin, tree size, base64 root hash) signed as a C2SP `signed-note` with
//! Ed25519 (ring). Verifier keys are written `<name>+<key id hex>+<base64(0x01 ‖ public key)>`.
//! No I/O.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};

use super::merkle::Hash;
use crate::crypto::SecretKey;

/// Ed25519 in a note's key id and verifier key.
const ALG_ED25519: u8 = 0x01;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    /// The note text: origin, size, root, each on its own line.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        )
    }

    fn parse_body(text: &str) -> Result<Checkpoint, NoteError> {
        let mut lines = text.split('\n');
        let origin = lines
            .next()
            .filter(|l| !l.is_empty())
            .ok_or(NoteError::Malformed("no origin line"))?;
        let size = lines
            .next()
            .and_then(|l| l.parse::<u64>().ok())
            .ok_or(NoteError::Malformed("the second line is not a tree size"))?;
        let root: Hash = lines
            .next()
            .and_then(|l| B64.decode(l).ok())
            .and_then(|b| b.try_into().ok())
            .ok_or(NoteError::Malformed(
                "the third line is not a base64 SHA-256 root",
            ))?;
        Ok(Checkpoint {
            origin: origin.to_string(),
            size,
            root,
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NoteError {
    #[error("malformed checkpoint: {0}")]
    Malformed(&'static str),
    #[error("no signature by key {0}")]
    NotSigned(String),
    #[error("signature by {0} does not verify")]
    BadSignature(String),
    #[error("malformed verifier key")]
    BadKey,
}

/// The host's checkpoint signing key (Ed25519; the seed is a host secret).
pub struct Signer {
    name: String,
    pair: Ed25519KeyPair,
    id: [u8; 4],
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({}, [SECRET])", self.name)
    }
}

fn key_id(name: &str, public: &[u8]) -> [u8; 4] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(name.as_bytes());
    ctx.update(b"\n");
    ctx.update(&[ALG_ED25519]);
    ctx.update(public);
    ctx.finish().as_ref()[..4].try_into().expect("4 bytes")
}

impl Signer {
    pub fn new(name: &str, seed: &SecretKey) -> Result<Signer, NoteError> {
        let pair = crate::crypto::ed25519_pair(seed).map_err(|_| NoteError::BadKey)?;
        let id = key_id(name, pair.public_key().as_ref());
        Ok(Signer {
            name: name.to_string(),
            pair,
            id,
        })
    }

    /// `<name>+<key id hex>+<base64(0x01 ‖ public key)>`.
    pub fn verifier_key(&self) -> String {
        let mut key = vec![ALG_ED25519];
        key.extend_from_slice(self.pair.public_key().as_ref());
        format!(
            "{}+{}+{}",
            self.name,
            crate::crypto::encode_hex(&self.id),
            B64.encode(key)
        )
    }

    /// The signed note of a checkpoint.
    pub fn sign(&self, checkpoint: &Checkpoint) -> String {
        self.sign_text(&checkpoint.body())
    }

    /// The signed note of `text` (lines, each ending in a newline).
    pub fn sign_text(&self, text: &str) -> String {
        let signature = self.pair.sign(text.as_bytes());
        let mut blob = self.id.to_vec();
        blob.extend_from_slice(signature.as_ref());
        format!("{text}\n\u{2014} {} {}\n", self.name, B64.encode(blob))
    }
}

/// A verifier key, parsed.
#[derive(Debug, Clone)]
pub struct Verifier {
    pub name: String,
    id: [u8; 4],
    public: Vec<u8>,
}

impl Verifier {
    pub fn parse(text: &str) -> Result<Verifier, NoteError> {
        // The key data is base64 and may hold '+'; a name may not.
        let mut parts = text.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(key), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(NoteError::BadKey);
        };
        let id: [u8; 4] = crate::crypto::decode_hex(id)
            .and_then(|b| b.try_into().ok())
            .ok_or(NoteError::BadKey)?;
        let key = B64.decode(key).map_err(|_| NoteError::BadKey)?;
        if key.len() != 33 || key[0] != ALG_ED25519 || key_id(name, &key[1..]) != id {
            return Err(NoteError::BadKey);
        }
        Ok(Verifier {
            name: name.to_string(),
            id,
            public: key[1..].to_vec(),
        })
    }

    /// Checks a signed note and returns its checkpoint.
    pub fn open(&self, note: &str) -> Result<Checkpoint, NoteError> {
        self.open_text(note)
            .and_then(|body| Checkpoint::parse_body(&body))
    }

    /// Checks a signed note and returns its text.
    pub fn open_text(&self, note: &str) -> Result<String, NoteError> {
        let (body, signatures) = note
            .split_once("\n\n")
            .map(|(b, s)| (format!("{b}\n"), s))
            .ok_or(NoteError::Malformed("no blank line before the signatures"))?;
        if note.chars().any(|c| c.is_control() && c != '\n') {
            return Err(NoteError::Malformed("control characters"));
        }
        for line in signatures.lines() {
            let Some(rest) = line.strip_prefix("\u{2014} ") else {
                return Err(NoteError::Malformed(
                    "a signature line does not start with an em dash",
                ));
            };
            let Some((name, blob)) = rest.rsplit_once(' ') else {
                return Err(NoteError::Malformed("a signature line has no signature"));
            };
            let blob = B64
                .decode(blob)
                .map_err(|_| NoteError::Malformed("signature is not base64"))?;
            if name != self.name || blob.len() != 68 || blob[..4] != self.id {
                continue;
            }
            return UnparsedPublicKey::new(&ED25519, &self.public)
                .verify(body.as_bytes(), &blob[4..])
                .map_err(|_| NoteError::BadSignature(self.name.clone()))
                .map(|()| body);
        }
        Err(NoteError::NotSigned(self.name.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_checkpoint_opens_and_any_change_is_refused() {
        let seed = SecretKey::from_bytes(&[7u8; 32]).unwrap();
        let signer = Signer::new("coffer.example/eu", &seed).unwrap();
        let verifier = Verifier::parse(&signer.verifier_key()).unwrap();
        let checkpoint = Checkpoint {
            origin: "coffer.example/eu".into(),
            size: 42,
            root: [9u8; 32],
        };
        let note = signer.sign(&checkpoint);
        assert!(note.contains("\n\n\u{2014} coffer.example/eu "), "{note}");
        assert_eq!(verifier.open(&note).unwrap(), checkpoint);
        let tampered = note.replacen("\n42\n", "\n43\n", 1);
        assert_eq!(
            verifier.open(&tampered),
            Err(NoteError::BadSignature("coffer.example/eu".into()))
        );
        let other = Signer::new(
            "coffer.example/eu",
            &SecretKey::from_bytes(&[8u8; 32]).unwrap(),
        )
        .unwrap();
        assert!(verifier.open(&other.sign(&checkpoint)).is_err());
        assert!(Verifier::parse("name+00000000+AAAA").is_err());
        assert!(format!("{signer:?}").contains("[SECRET]"));
    }

    /// The signed-note example of golang.org/x/mod/sumdb/note (C2SP
    /// signed-note's reference implementation): Ed25519 is deterministic, so
    /// the same key and text must give the same note, byte for byte.
    #[test]
    fn the_go_reference_note_is_reproduced_byte_for_byte() {
        let private =
            "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
        let key = B64.decode(private.splitn(5, '+').nth(4).unwrap()).unwrap();
        assert_eq!(key[0], ALG_ED25519);
        let signer =
            Signer::new("PeterNeumann", &SecretKey::from_bytes(&key[1..]).unwrap()).unwrap();
        let verifier_key = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
        assert_eq!(signer.verifier_key(), verifier_key);
        let text = "If you think cryptography is the answer to your problem,\n\
                    then you don't know what your problem is.\n";
        let note = format!(
            "{text}\n\u{2014} PeterNeumann \
             x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
        );
        assert_eq!(signer.sign_text(text), note);
        let verifier = Verifier::parse(verifier_key).unwrap();
        assert_eq!(verifier.open_text(&note).unwrap(), text);
        assert!(verifier
            .open_text(&note.replace("cryptography", "cryptographY"))
            .is_err());
    }
}
