//! The crate's one error type.
//!
//! Decoding reports the *first* problem in a fixed order (see [`crate::decode`]), each
//! with its own variant, so a receiver can count and log rejections by cause. Every
//! string an error echoes from the wire is truncated (see [`MAX_ECHO_LEN`]) so a hostile
//! payload cannot blow up log lines.

use crate::topics::Channel;

/// At most this many bytes of peer-supplied text are echoed in an error.
pub const MAX_ECHO_LEN: usize = 64;

/// Why a topic or payload was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// The topic is not `verge/v1/node/{node}/{channel}` with a DNS-1123 `node` and a
    /// known `channel`.
    #[error("invalid topic {topic:?}: {reason}")]
    InvalidTopic {
        /// The offending topic, truncated to [`MAX_ECHO_LEN`] bytes.
        topic: String,
        reason: String,
    },
    /// The payload exceeds [`Channel::max_payload`]; checked before any parsing.
    #[error("{size}-byte payload exceeds the {limit}-byte limit of the {channel} channel")]
    TooLarge {
        channel: Channel,
        size: usize,
        limit: usize,
    },
    /// Not JSON, not a JSON object, a missing or mistyped envelope field, or a body that
    /// does not match its type (unknown field, wrong type, missing field). The message
    /// starts with the path of the offending field when there is one
    /// (`body.upserts[0].metadata.nmae: unknown field ...`).
    #[error("malformed payload: {0}")]
    Malformed(String),
    /// The envelope's `v` is missing or is not [`crate::PROTOCOL_VERSION`].
    #[error(
        "unsupported protocol version {got} (expected {})",
        crate::PROTOCOL_VERSION
    )]
    UnsupportedVersion {
        /// `missing`, or the JSON text of `v` truncated to [`MAX_ECHO_LEN`] bytes.
        got: String,
    },
    /// The envelope's `type` is not the one message type the channel carries.
    #[error(
        "message type {got:?} does not belong on the {expected} channel (expected {:?})",
        .expected.message_type()
    )]
    WrongChannel {
        /// The channel the payload arrived on.
        expected: Channel,
        /// The envelope's `type`, truncated to [`MAX_ECHO_LEN`] bytes.
        got: String,
    },
    /// Well-formed but semantically out of bounds: a name that is not DNS-1123, a string
    /// or list over its limit, a negative revision, an invalid resource object, ...
    /// The message starts with the field path (`body.toRevision: ...`).
    #[error("invalid message: {0}")]
    Invalid(String),
}

/// `s` cut to at most [`MAX_ECHO_LEN`] bytes on a character boundary, with `...` appended
/// when something was cut.
pub(crate) fn echo(s: &str) -> String {
    if s.len() <= MAX_ECHO_LEN {
        return s.to_owned();
    }
    let mut end = MAX_ECHO_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_truncates_on_char_boundaries() {
        assert_eq!(echo("short"), "short");
        let long = "é".repeat(100);
        let cut = echo(&long);
        assert!(cut.ends_with("..."));
        assert!(cut.len() <= MAX_ECHO_LEN + 3);
    }

    #[test]
    fn messages_are_lowercase() {
        let errors = [
            ProtoError::InvalidTopic {
                topic: "x".into(),
                reason: "wrong prefix".into(),
            },
            ProtoError::TooLarge {
                channel: Channel::Heartbeat,
                size: 2048,
                limit: 1024,
            },
            ProtoError::Malformed("x".into()),
            ProtoError::UnsupportedVersion { got: "2".into() },
            ProtoError::WrongChannel {
                expected: Channel::Status,
                got: "heartbeat".into(),
            },
            ProtoError::Invalid("x".into()),
        ];
        for e in errors {
            let text = e.to_string();
            assert!(text.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()));
        }
        let e = ProtoError::WrongChannel {
            expected: Channel::Status,
            got: "heartbeat".into(),
        };
        assert_eq!(
            e.to_string(),
            "message type \"heartbeat\" does not belong on the status channel \
             (expected \"nodeStatus\")"
        );
    }
}
