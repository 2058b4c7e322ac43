//! [`Digest`]: the name of a task.
//!
//! Shoal accepts exactly one form, `sha256:` followed by 64 lowercase hex
//! characters. Other algorithms the OCI spec allows (`sha512`) are rejected
//! rather than half-supported; the mirror forwards such requests upstream.

use std::fmt;
use std::str::FromStr;

/// A blob digest, `sha256:<64 lowercase hex>`, held as its 32 raw bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

/// Why a string is not a [`Digest`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// The string does not start with `sha256:`.
    #[error("digest must start with \"sha256:\"")]
    Algorithm,
    /// The hex part is not 64 characters long.
    #[error("digest must have 64 hex characters after \"sha256:\", got {0}")]
    Length(usize),
    /// The hex part has a character outside `0-9a-f`.
    #[error("digest may only contain lowercase hex characters after \"sha256:\"")]
    Hex,
}

impl Digest {
    /// The digest with these raw SHA-256 bytes.
    pub const fn from_sha256(bytes: [u8; 32]) -> Self {
        Digest(bytes)
    }

    /// The raw SHA-256 bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 lowercase hex characters, without the `sha256:` prefix.
    pub fn hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(HEX[(b >> 4) as usize] as char);
            s.push(HEX[(b & 0xf) as usize] as char);
        }
        s
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex = s.strip_prefix("sha256:").ok_or(DigestError::Algorithm)?;
        if hex.len() != 64 {
            return Err(DigestError::Length(hex.len()));
        }
        let mut out = [0u8; 32];
        for (i, pair) in hex.as_bytes().chunks_exact(2).enumerate() {
            let hi = nibble(pair[0]).ok_or(DigestError::Hex)?;
            let lo = nibble(pair[1]).ok_or(DigestError::Hex)?;
            out[i] = (hi << 4) | lo;
        }
        Ok(Digest(out))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn round_trips() {
        let d: Digest = EMPTY.parse().unwrap();
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(d.as_bytes()[0], 0xe3);
    }

    #[test]
    fn rejects_other_forms() {
        assert_eq!("sha512:ab".parse::<Digest>(), Err(DigestError::Algorithm));
        assert_eq!("sha256:abc".parse::<Digest>(), Err(DigestError::Length(3)));
        let upper = EMPTY.to_uppercase().replace("SHA256", "sha256");
        assert_eq!(upper.parse::<Digest>(), Err(DigestError::Hex));
        let bad = format!("sha256:{}g", &EMPTY[7..70]);
        assert_eq!(bad.parse::<Digest>(), Err(DigestError::Hex));
        assert!("sha256:../../etc/passwd".parse::<Digest>().is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_round_trips(s in ".{0,80}") {
            if let Ok(d) = s.parse::<Digest>() {
                prop_assert_eq!(d.to_string(), s);
            }
        }

        #[test]
        fn every_byte_string_round_trips(bytes in proptest::array::uniform32(any::<u8>())) {
            let d = Digest::from_sha256(bytes);
            prop_assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        }
    }
}
