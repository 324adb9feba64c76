//! Identifier newtypes. Each is parsed once, at the edge, and trusted after that.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::crypto::{self, encode_hex, CryptoError};

macro_rules! hex_id {
    ($name:ident, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Accepts exactly 32 lowercase hex digits.
            pub fn parse(text: &str) -> Option<Self> {
                (text.len() == 32 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
                    .then(|| $name(text.to_string()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(text: String) -> Result<Self, String> {
                $name::parse(&text).ok_or_else(|| format!("not a valid id: {text:?}"))
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
    };
}

hex_id!(TenantId, "A tenant: 128 random bits, hex.");
hex_id!(
    RecordId,
    "A record: 48 bits of milliseconds then 80 random bits, hex, so ids sort by creation."
);
hex_id!(
    TokenId,
    "A bearer token's public id (never the token itself)."
);
hex_id!(BackupId, "A backup: 128 random bits, hex. Never reused.");

impl TenantId {
    pub fn generate() -> Result<Self, CryptoError> {
        Ok(TenantId(encode_hex(&crypto::random_bytes::<16>()?)))
    }
}

impl TokenId {
    pub fn generate() -> Result<Self, CryptoError> {
        Ok(TokenId(encode_hex(&crypto::random_bytes::<16>()?)))
    }
}

impl RecordId {
    pub fn generate() -> Result<Self, CryptoError> {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
        bytes[6..].copy_from_slice(&crypto::random_bytes::<10>()?);
        Ok(RecordId(encode_hex(&bytes)))
    }
}

/// A region label such as `eu` or `ap-south`: lowercase letters, digits, `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Region(String);

impl Region {
    pub fn parse(text: &str) -> Option<Self> {
        let ok = !text.is_empty()
            && text.len() <= 32
            && text.starts_with(|c: char| c.is_ascii_lowercase())
            && text
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        ok.then(|| Region(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Region {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        Region::parse(&text).ok_or_else(|| format!("not a valid region: {text:?}"))
    }
}

impl From<Region> for String {
    fn from(region: Region) -> String {
        region.0
    }
}

/// Seconds since the Unix epoch: the host's clock.
pub fn unix_now() -> u64 {
    unix_now_ms() / 1000
}

/// Milliseconds since the Unix epoch: the host's clock.
pub fn unix_now_ms() -> u64 {
    let real = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    real.saturating_add(test_clock_offset_ms())
}

/// Tests move the host's clock forward (grant expiry without waiting): debug
/// builds only, the file named by `COFFER_TEST_CLOCK_FILE` holds seconds to add.
/// Release builds have no such door.
#[cfg(debug_assertions)]
fn test_clock_offset_ms() -> u64 {
    std::env::var_os("COFFER_TEST_CLOCK_FILE")
        .and_then(|path| std::fs::read_to_string(path).ok())
        .and_then(|text| text.trim().parse::<u64>().ok())
        .map(|secs| secs * 1000)
        .unwrap_or(0)
}

#[cfg(not(debug_assertions))]
fn test_clock_offset_ms() -> u64 {
    0
}

/// RFC 3339 in UTC, seconds precision.
pub fn rfc3339(unix_seconds: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_secs(unix_seconds))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_only_their_shape() {
        let id = TenantId::generate().unwrap();
        assert_eq!(TenantId::parse(id.as_str()), Some(id.clone()));
        for bad in ["", "../etc", &id.as_str().to_uppercase(), &id.as_str()[1..]] {
            assert_eq!(TenantId::parse(bad), None, "{bad}");
        }
        let first = RecordId::generate().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(RecordId::generate().unwrap() > first);
        assert!(Region::parse("eu-west-1").is_some());
        assert!(Region::parse("EU").is_none() && Region::parse("a/b").is_none());
    }
}
