//! The Verge cloud ↔ edge protocol: the one codec for every message between the cloud
//! and its edge nodes.
//!
//! This crate is pure: no I/O, no async runtime, no MQTT library. The cloud, the
//! embedded broker, the edge agent and the Mosquitto ACL generator all build on it.
//!
//! # Transport
//!
//! MQTT over mutual TLS. Each node authenticates with a certificate whose CN is its
//! name (a DNS-1123 label); the cloud with a CN that is *not* a DNS-1123 label (see
//! [`DEFAULT_CLOUD_USER`]), so the two can never be confused.
//!
//! # Topics ([`topics`])
//!
//! `verge/v1/node/{node}/{channel}`, one [`Channel`] per message type:
//!
//! | channel     | direction   | message        | max payload |
//! |-------------|-------------|----------------|-------------|
//! | `desired`   | cloud→edge  | [`Desired`]    | 4 MiB       |
//! | `task`      | cloud→edge  | [`Task`]       | 1 MiB       |
//! | `ack`       | edge→cloud  | [`Ack`]        | 1 KiB       |
//! | `hello`     | edge→cloud  | [`Hello`]      | 4 KiB       |
//! | `heartbeat` | edge→cloud  | [`Heartbeat`]  | 1 KiB       |
//! | `status`    | edge→cloud  | [`NodeStatus`] | 64 KiB      |
//! | `result`    | edge→cloud  | [`TaskResult`] | 1 MiB       |
//! | `log`       | edge→cloud  | [`LogBatch`]   | 64 KiB      |
//!
//! A node may publish only to its own edge→cloud topics and subscribe only to exactly
//! its own cloud→edge topics, without wildcards ([`node_may_publish`],
//! [`node_may_subscribe`], [`mosquitto_acl`]).
//!
//! # Payloads ([`codec`], [`messages`])
//!
//! UTF-8 JSON `{"v": 1, "type": "<type>", "body": {...}}`: `v` is
//! [`PROTOCOL_VERSION`], `type` the message type ([`Channel::message_type`]), `body`
//! the message with camelCase fields. Unknown fields are rejected everywhere, so a
//! change to any body is a new protocol version. [`decode`] checks size, syntax,
//! version, channel, shape and semantic bounds, in that order, each failure with its own
//! [`ProtoError`] variant.
//!
//! # Desired state
//!
//! The cloud keeps a store revision per change. The edge persists each [`Desired`] it
//! applies, together with its `toRevision`, **before** acking it with [`Ack`]. On every
//! connect it sends [`Hello`] with its last applied revision; the cloud answers with a
//! delta from that revision, or with a snapshot when it has compacted past it. The
//! edge applies a delta only if its `fromRevision` equals its applied revision (any
//! snapshot applies); otherwise it sends `Hello` again to ask for a resync
//! ([`Desired::applies_to`]).
//!
//! # Example
//!
//! ```
//! use verge_proto::{Channel, Heartbeat, Message, decode_any, encode, node_topic};
//!
//! let msg = Message::Heartbeat(Heartbeat { seq: 7, sent_at_ms: 1_700_000_000_000, ready: true });
//! let topic = node_topic("edge-1", msg.channel());
//! let payload = encode(&msg);
//! assert_eq!(topic, "verge/v1/node/edge-1/heartbeat");
//! assert_eq!(decode_any(&topic, &payload), Ok(("edge-1".to_owned(), msg)));
//! assert!(verge_proto::decode(Channel::Status, &payload).is_err());
//! ```

pub mod codec;
mod error;
pub mod messages;
pub mod topics;

#[cfg(test)]
mod tests;

pub use codec::{PROTOCOL_VERSION, decode, decode_any, encode, encode_checked};
pub use error::{MAX_ECHO_LEN, ProtoError};
pub use messages::{
    Ack, CertIssued, CertRequest, Condition, ConditionType, Desired, Heartbeat, Hello,
    InstanceState, InstanceStatus, LogBatch, LogLine, LogStream, MAX_INSTANCES, MAX_LOG_LINE,
    MAX_LOG_LINES, MAX_TASK_ERROR, Message, NodeStatus, ObjectRef, QueueStats, Task, TaskResult,
    same_but_usage,
};
pub use topics::{
    Channel, DEFAULT_CLOUD_USER, Direction, cloud_may_publish, cloud_may_subscribe,
    cloud_subscriptions, edge_subscriptions, mosquitto_acl, node_may_publish, node_may_subscribe,
    node_topic, parse_topic,
};
