//! [`OperatorToken`]: the bearer token that guards the operator API's write
//! endpoints, read from a file (in Kubernetes, a mounted Secret).
//!
//! The token is never printed: its `Debug` is redacted, errors about the
//! file name the file, not its content, and the comparison with a presented
//! token takes the same time wherever they differ.
//!
//! Not here: rotation without a restart (the file is read once at start),
//! several tokens, scopes.

use std::fmt;
use std::path::Path;

/// Shortest token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

/// Why a token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file cannot be read.
    #[error("cannot read it: {0}")]
    Read(#[from] std::io::Error),
    /// Nothing in it but whitespace.
    #[error("it is empty")]
    Empty,
    /// It holds more than one line, or characters an HTTP header cannot
    /// carry.
    #[error("the token must be one line of visible ASCII characters (no spaces)")]
    Malformed,
    /// Shorter than [`MIN_TOKEN_LEN`].
    #[error(
        "the token has {0} characters, fewer than {MIN_TOKEN_LEN}; make one with e.g. `head -c 32 /dev/urandom | base64`"
    )]
    TooShort(usize),
}

/// A bearer token. See the module docs.
#[derive(Clone, PartialEq, Eq)]
pub struct OperatorToken(Box<str>);

impl fmt::Debug for OperatorToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OperatorToken(<redacted>)")
    }
}

impl OperatorToken {
    /// Reads a token file: one line, surrounding whitespace (the trailing
    /// newline of `echo` or a Secret) ignored.
    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        Self::parse(&std::fs::read_to_string(path)?)
    }

    /// Checks a token's text (see [`from_file`](Self::from_file)).
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let token = text.trim();
        if token.is_empty() {
            return Err(TokenError::Empty);
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::Malformed);
        }
        if token.len() < MIN_TOKEN_LEN {
            return Err(TokenError::TooShort(token.len()));
        }
        Ok(OperatorToken(token.into()))
    }

    /// True when `presented` is this token. The time taken depends on the
    /// lengths only, not on where the two differ.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let mine = self.0.as_bytes();
        let mut diff = u8::from(mine.len() != presented.len());
        for (i, &b) in mine.iter().enumerate() {
            // Past the end of `presented`, compare against a byte that
            // never matches a visible character, so the loop stays the same.
            diff |= b ^ presented.get(i).copied().unwrap_or(0);
        }
        std::hint::black_box(diff) == 0
    }

    /// The token's text, for a client that sends it.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "s3cr3t-token-0123456789";

    #[test]
    fn parses_one_trimmed_line_and_refuses_the_rest() {
        let t = OperatorToken::parse(&format!("  {GOOD}\n")).unwrap();
        assert!(t.matches(GOOD.as_bytes()));
        assert!(matches!(
            OperatorToken::parse(" \n"),
            Err(TokenError::Empty)
        ));
        assert!(matches!(
            OperatorToken::parse("a b c d e f g h i j k"),
            Err(TokenError::Malformed)
        ));
        assert!(matches!(
            OperatorToken::parse(&format!("{GOOD}\n{GOOD}")),
            Err(TokenError::Malformed)
        ));
        assert!(matches!(
            OperatorToken::parse("short"),
            Err(TokenError::TooShort(5))
        ));
    }

    #[test]
    fn compares_whole_tokens_only() {
        let t = OperatorToken::parse(GOOD).unwrap();
        assert!(t.matches(GOOD.as_bytes()));
        assert!(!t.matches(b""));
        assert!(!t.matches(&GOOD.as_bytes()[..GOOD.len() - 1]));
        assert!(!t.matches(format!("{GOOD}x").as_bytes()));
        assert!(!t.matches(GOOD.to_uppercase().as_bytes()));
    }

    #[test]
    fn never_prints_itself() {
        let t = OperatorToken::parse(GOOD).unwrap();
        assert!(!format!("{t:?}").contains(GOOD));
        assert!(!format!("{:?}", Some(t)).contains("s3cr3t"));
    }
}
