//! Parse, don't validate: each input the protocol limits becomes a type that can
//! only hold a valid value, so the service never sees a bad one.

use crate::error::{Error, Result};

/// Rejects characters that no text field should carry: NUL (PostgreSQL refuses it)
/// and other C0 controls except tab, line feed and carriage return.
fn has_forbidden_controls(s: &str) -> bool {
    s.chars().any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
}

/// An id is a positive integer; anything else (`-1`, `0`) is malformed.
fn positive<E: serde::de::Error>(id: i64) -> std::result::Result<i64, E> {
    if id < 1 {
        return Err(E::custom(format!("ids are positive integers, not {id}")));
    }
    Ok(id)
}

/// Serde: an id in a payload, refused as malformed (`invalid`) before any lookup
/// unless it is a positive integer.
pub fn positive_id<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<i64, D::Error> {
    positive(<i64 as serde::Deserialize>::deserialize(d)?)
}

/// Serde: a list of ids, each as [`positive_id`].
pub fn positive_ids<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<i64>, D::Error> {
    <Vec<i64> as serde::Deserialize>::deserialize(d)?.into_iter().map(positive).collect()
}

fn bounded_text(field: &str, raw: &str, max: usize) -> Result<String> {
    let trimmed = raw.trim();
    let len = trimmed.chars().count();
    if len == 0 {
        return Err(Error::invalid(format!("{field} must not be empty")));
    }
    if len > max {
        return Err(Error::too_large(format!("{field} is {len} characters, at most {max} are allowed")));
    }
    if has_forbidden_controls(trimmed) {
        return Err(Error::invalid(format!("{field} contains control characters")));
    }
    Ok(trimmed.to_owned())
}

macro_rules! text_type {
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name(String);

        impl $name {
            pub const MAX_CHARS: usize = $max;
            pub fn parse(raw: &str) -> Result<Self> {
                bounded_text($field, raw, $max).map(Self)
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
    };
}

text_type!(
    /// Message content: 1..4000 characters after trimming (PROTOCOL.md), stored trimmed.
    Content, "content", 4000
);
text_type!(
    /// A community's name: 1..80 characters after trimming.
    CommunityName, "name", 80
);
text_type!(
    /// A channel's name, unique in its community: 1..80 characters after trimming.
    ChannelName, "name", 80
);
text_type!(
    /// The name shown for a user: 1..64 characters after trimming.
    DisplayName, "displayName", 64
);

/// A login name: 3..32 of `a-z 0-9 _ . -`, compared case-insensitively (stored lower-case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    pub fn parse(raw: &str) -> Result<Self> {
        let name = raw.trim().to_lowercase();
        let len = name.chars().count();
        if !(3..=32).contains(&len) {
            return Err(Error::invalid("username must be 3 to 32 characters"));
        }
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
            return Err(Error::invalid("username may only contain letters, digits, '_', '.' and '-'"));
        }
        Ok(Self(name))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password: 8..1024 characters. The upper bound keeps argon2's work per login bounded.
pub struct Password(String);

impl Password {
    pub fn parse(raw: &str) -> Result<Self> {
        let len = raw.chars().count();
        if len < 8 {
            return Err(Error::invalid("password must be at least 8 characters"));
        }
        if len > 1024 {
            return Err(Error::too_large("password must be at most 1024 characters"));
        }
        Ok(Self(raw.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// The client's id for a new message, making `new` idempotent per (sender, channel):
/// 1..64 characters, kept exactly as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientMsgId(String);

impl ClientMsgId {
    pub fn parse(raw: &str) -> Result<Self> {
        let len = raw.chars().count();
        if len == 0 || len > 64 {
            return Err(Error::invalid("clientMsgId must be 1 to 64 characters"));
        }
        if has_forbidden_controls(raw) {
            return Err(Error::invalid("clientMsgId contains control characters"));
        }
        Ok(Self(raw.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Code;

    #[test]
    fn content_is_trimmed_and_bounded_in_characters_not_bytes() {
        assert_eq!(Content::parse("  hi \n").unwrap().as_str(), "hi");
        assert_eq!(Content::parse("   ").unwrap_err().code, Code::Invalid);
        assert!(Content::parse(&"é".repeat(4000)).is_ok());
        assert_eq!(Content::parse(&"a".repeat(4001)).unwrap_err().code, Code::TooLarge);
        assert_eq!(Content::parse("a\0b").unwrap_err().code, Code::Invalid);
    }

    #[test]
    fn usernames_are_lower_cased_and_restricted() {
        assert_eq!(Username::parse("Alice").unwrap().as_str(), "alice");
        assert!(Username::parse("a b").is_err());
        assert!(Username::parse("ab").is_err());
    }

    #[test]
    fn client_msg_ids_are_one_to_sixty_four_characters() {
        assert!(ClientMsgId::parse("").is_err());
        assert!(ClientMsgId::parse(&"x".repeat(64)).is_ok());
        assert!(ClientMsgId::parse(&"x".repeat(65)).is_err());
    }
}
