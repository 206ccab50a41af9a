//! SHA-256 helpers and the `Sha256Hex` value type used for every pinned digest.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A SHA-256 digest as 64 lowercase hexadecimal characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sha256Hex(String);

impl JsonSchema for Sha256Hex {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Sha256Hex".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "SHA-256 digest: 64 hexadecimal characters, optionally prefixed by `sha256:`.",
            "pattern": "^(sha256:)?[0-9a-fA-F]{64}$"
        })
    }
}

/// The reason a string is not a valid SHA-256 hex digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestParseError {
    #[error("expected 64 hexadecimal characters, found {0}")]
    Length(usize),
    #[error("expected only characters 0-9 and a-f")]
    Alphabet,
}

impl Sha256Hex {
    /// Parses a digest, accepting upper case and an optional `sha256:` prefix.
    pub fn parse(text: &str) -> Result<Self, DigestParseError> {
        let hex = text.strip_prefix("sha256:").unwrap_or(text);
        if hex.len() != 64 {
            return Err(DigestParseError::Length(hex.len()));
        }
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(DigestParseError::Alphabet);
        }
        Ok(Self(hex.to_ascii_lowercase()))
    }

    /// Computes the digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(hex::encode(Sha256::digest(bytes)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Returns the first `n` hex characters, for short identifiers.
    pub fn prefix(&self, n: usize) -> &str {
        &self.0[..n.min(self.0.len())]
    }
}

impl TryFrom<String> for Sha256Hex {
    type Error = DigestParseError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Sha256Hex> for String {
    fn from(value: Sha256Hex) -> Self {
        value.0
    }
}

impl fmt::Display for Sha256Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Sha256Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_of_empty_input() {
        let empty = Sha256Hex::of(b"");
        assert_eq!(
            empty.as_str(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn parse_accepts_prefix_and_upper_case() {
        let text = "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855";
        let parsed = Sha256Hex::parse(text).unwrap();
        assert_eq!(parsed, Sha256Hex::of(b""));
    }

    #[test]
    fn parse_rejects_bad_input() {
        assert_eq!(Sha256Hex::parse("abc"), Err(DigestParseError::Length(3)));
        let not_hex = "g".repeat(64);
        assert_eq!(Sha256Hex::parse(&not_hex), Err(DigestParseError::Alphabet));
    }
}
