//! Encoding and decoding payloads.
//!
//! A payload is the UTF-8 JSON envelope `{"v": 1, "type": "<type>", "body": {...}}`.
//! [`decode`] checks, in this order, stopping at the first failure:
//!
//! 1. size: more than [`Channel::max_payload`] bytes → [`ProtoError::TooLarge`], before
//!    any parsing;
//! 2. syntax: not JSON, JSON nested deeper than serde_json's recursion limit (128), a
//!    duplicate key anywhere, or not an object → [`ProtoError::Malformed`];
//! 3. `v` missing or not [`PROTOCOL_VERSION`] → [`ProtoError::UnsupportedVersion`];
//! 4. `type` missing or not a string → [`ProtoError::Malformed`]; a string other than
//!    the channel's one [`Channel::message_type`] (including unknown types) →
//!    [`ProtoError::WrongChannel`];
//! 5. envelope fields other than `v`, `type`, `body`, a missing `body`, or a body that
//!    does not match the type (unknown or missing fields, wrong types) →
//!    [`ProtoError::Malformed`] naming the field path (`body.seq: invalid type ...`);
//! 6. semantic bounds ([`Message::validate`]) → [`ProtoError::Invalid`].
//!
//! Nothing in this module panics on any input.

use serde::Serialize;
use serde::de::value::BorrowedStrDeserializer;
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Unexpected,
    Visitor,
};
use serde_json::{Map, Value};
use serde_path_to_error::Segment;

use verge_api::strict_json::{StrictValue, type_name};

use crate::error::{ProtoError, echo};
use crate::messages::Message;
use crate::topics::{Channel, parse_topic};

/// The payload envelope version this codec reads and writes.
pub const PROTOCOL_VERSION: u32 = 1;

const ENVELOPE_FIELDS: [&str; 3] = ["v", "type", "body"];

#[derive(Serialize)]
struct Envelope<'a, T> {
    v: u32,
    #[serde(rename = "type")]
    kind: &'static str,
    body: &'a T,
}

fn envelope<T: Serialize>(kind: &'static str, body: &T) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&Envelope {
        v: PROTOCOL_VERSION,
        kind,
        body,
    })
}

/// Serializes `msg` into its envelope. Does not validate or size-check: see
/// [`encode_checked`].
///
/// Infallible for this crate's types: serde_json only fails on maps with non-string
/// keys, on non-finite floats (which `serde_json::Value` cannot hold) or on failing
/// custom `Serialize` impls, and no message contains any of those.
pub fn encode(msg: &Message) -> Vec<u8> {
    let kind = msg.type_name();
    let result = match msg {
        Message::Hello(m) => envelope(kind, m),
        Message::Heartbeat(m) => envelope(kind, m),
        Message::NodeStatus(m) => envelope(kind, m),
        Message::Desired(m) => envelope(kind, m),
        Message::Ack(m) => envelope(kind, m),
        Message::Task(m) => envelope(kind, m),
        Message::TaskResult(m) => envelope(kind, m),
        Message::LogBatch(m) => envelope(kind, m),
        Message::CertRequest(m) => envelope(kind, m),
        Message::CertIssued(m) => envelope(kind, m),
    };
    // Not input-dependent: an invariant of the types (see above).
    result.expect("protocol messages always serialize")
}

/// [`Message::validate`], then [`encode`], then the channel's size limit: what a sender
/// should use so it never publishes something the receiver's [`decode`] rejects.
pub fn encode_checked(msg: &Message) -> Result<Vec<u8>, ProtoError> {
    msg.validate()?;
    let bytes = encode(msg);
    let channel = msg.channel();
    if bytes.len() > channel.max_payload() {
        return Err(ProtoError::TooLarge {
            channel,
            size: bytes.len(),
            limit: channel.max_payload(),
        });
    }
    Ok(bytes)
}

/// Decodes and validates a payload received on `channel`; see the module docs for the
/// order of checks.
pub fn decode(channel: Channel, payload: &[u8]) -> Result<Message, ProtoError> {
    let limit = channel.max_payload();
    if payload.len() > limit {
        return Err(ProtoError::TooLarge {
            channel,
            size: payload.len(),
            limit,
        });
    }
    let StrictValue(value) = serde_json::from_slice(payload)
        .map_err(|e| ProtoError::Malformed(format!("invalid json: {e}")))?;
    let Value::Object(mut map) = value else {
        return Err(ProtoError::Malformed(format!(
            "expected a json object, found {}",
            type_name(&value)
        )));
    };

    match map.get("v") {
        Some(Value::Number(n)) if n.as_u64() == Some(u64::from(PROTOCOL_VERSION)) => {}
        None => {
            return Err(ProtoError::UnsupportedVersion {
                got: "missing".to_owned(),
            });
        }
        Some(other) => {
            return Err(ProtoError::UnsupportedVersion {
                got: echo(&other.to_string()),
            });
        }
    }

    match map.get("type") {
        Some(Value::String(t)) if t == channel.message_type() => {}
        Some(Value::String(t)) => {
            return Err(ProtoError::WrongChannel {
                expected: channel,
                got: echo(t),
            });
        }
        None => return Err(ProtoError::Malformed("type: missing field".to_owned())),
        Some(other) => {
            return Err(ProtoError::Malformed(format!(
                "type: invalid type: {}, expected a string",
                type_name(other)
            )));
        }
    }

    if let Some(unknown) = map.keys().find(|k| !ENVELOPE_FIELDS.contains(&k.as_str())) {
        return Err(ProtoError::Malformed(format!(
            "{}: unknown field, expected one of v, type, body",
            echo(unknown)
        )));
    }
    let body = map
        .remove("body")
        .ok_or_else(|| ProtoError::Malformed("body: missing field".to_owned()))?;

    let msg = match channel {
        Channel::Hello => Message::Hello(body_as(&body)?),
        Channel::Heartbeat => Message::Heartbeat(body_as(&body)?),
        Channel::Status => Message::NodeStatus(Box::new(body_as(&body)?)),
        Channel::Desired => Message::Desired(body_as(&body)?),
        Channel::Ack => Message::Ack(body_as(&body)?),
        Channel::Task => Message::Task(body_as(&body)?),
        Channel::Result => Message::TaskResult(body_as(&body)?),
        Channel::Log => Message::LogBatch(body_as(&body)?),
        Channel::Renew => Message::CertRequest(body_as(&body)?),
        Channel::Cert => Message::CertIssued(body_as(&body)?),
    };
    msg.validate()?;
    Ok(msg)
}

/// [`parse_topic`], then [`decode`] on the topic's channel. Returns the topic's node
/// name with the message. A [`crate::Hello`] must name the topic's node
/// ([`ProtoError::Invalid`] otherwise), so a node cannot claim another's identity in the
/// payload. Whether the sender may publish there at all is the broker's job
/// ([`crate::node_may_publish`]).
pub fn decode_any(topic: &str, payload: &[u8]) -> Result<(String, Message), ProtoError> {
    let (node, channel) = parse_topic(topic)?;
    let msg = decode(channel, payload)?;
    if let Message::Hello(hello) = &msg
        && hello.node != node
    {
        return Err(ProtoError::Invalid(format!(
            "body.node: {:?} does not match the topic's node {node:?}",
            hello.node
        )));
    }
    Ok((node, msg))
}

/// Deserializes the body strictly (see [`Strict`]); errors name the path below `body`.
fn body_as<T: DeserializeOwned>(body: &Value) -> Result<T, ProtoError> {
    serde_path_to_error::deserialize(Strict(body)).map_err(|err| {
        let mut path = String::from("body");
        for segment in err.path().iter() {
            match segment {
                Segment::Seq { index } => path.push_str(&format!("[{index}]")),
                Segment::Map { key } | Segment::Enum { variant: key } => {
                    path.push('.');
                    path.push_str(&echo(key));
                }
                Segment::Unknown => path.push_str(".?"),
            }
        }
        ProtoError::Malformed(format!("{path}: {}", err.inner()))
    })
}

/// A `serde_json::Value` deserializer that only hands objects to structs and maps and
/// only arrays to sequences. serde_json's own also accepts a JSON array for a struct
/// (fields by position: `"body": [3, 0, true]` would be a heartbeat); the protocol
/// does not.
struct Strict<'a>(&'a Value);

fn unexpected(value: &Value) -> Unexpected<'_> {
    match value {
        Value::Null => Unexpected::Unit,
        Value::Bool(b) => Unexpected::Bool(*b),
        Value::Number(_) => Unexpected::Other("number"),
        Value::String(s) => Unexpected::Str(s),
        Value::Array(_) => Unexpected::Seq,
        Value::Object(_) => Unexpected::Map,
    }
}

impl<'de> Strict<'de> {
    fn visit_array<V: Visitor<'de>>(
        items: &'de [Value],
        visitor: V,
    ) -> Result<V::Value, serde_json::Error> {
        let mut access = StrictSeq(items.iter());
        let out = visitor.visit_seq(&mut access)?;
        if access.0.len() != 0 {
            return Err(de::Error::invalid_length(items.len(), &"fewer elements"));
        }
        Ok(out)
    }

    fn visit_object<V: Visitor<'de>>(
        map: &'de Map<String, Value>,
        visitor: V,
    ) -> Result<V::Value, serde_json::Error> {
        visitor.visit_map(StrictMap {
            entries: map.iter(),
            value: None,
        })
    }
}

impl<'de> Deserializer<'de> for Strict<'de> {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Array(items) => Strict::visit_array(items, visitor),
            Value::Object(map) => Strict::visit_object(map, visitor),
            scalar => scalar.deserialize_any(visitor),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Array(items) => Strict::visit_array(items, visitor),
            other => Err(de::Error::invalid_type(unexpected(other), &visitor)),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Object(map) => Strict::visit_object(map, visitor),
            other => Err(de::Error::invalid_type(unexpected(other), &visitor)),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        // The protocol's enums are unit variants: plain strings.
        match self.0 {
            Value::String(_) => self.0.deserialize_enum(name, variants, visitor),
            other => Err(de::Error::invalid_type(unexpected(other), &visitor)),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf unit unit_struct identifier ignored_any
    }
}

struct StrictSeq<'a>(std::slice::Iter<'a, Value>);

impl<'de> SeqAccess<'de> for StrictSeq<'de> {
    type Error = serde_json::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        self.0
            .next()
            .map(|v| seed.deserialize(Strict(v)))
            .transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

struct StrictMap<'a> {
    entries: serde_json::map::Iter<'a>,
    value: Option<&'a Value>,
}

impl<'de> MapAccess<'de> for StrictMap<'de> {
    type Error = serde_json::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        match self.entries.next() {
            Some((key, value)) => {
                self.value = Some(value);
                seed.deserialize(BorrowedStrDeserializer::new(key))
                    .map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        let value = self
            .value
            .take()
            .ok_or_else(|| de::Error::custom("map value requested before its key"))?;
        seed.deserialize(Strict(value))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}
