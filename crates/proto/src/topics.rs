//! MQTT topics, channels, payload limits and the broker ACL.
//!
//! Every topic is `verge/v1/node/{node}/{channel}`: `{node}` is the node's name, a
//! DNS-1123 label (which is also its client certificate CN and, with Mosquitto's
//! `use_identity_as_username true`, its MQTT username); `{channel}` is one of
//! [`Channel`]. A topic has exactly five levels; anything else is not a Verge topic.
//!
//! The ACL is expressed as pure predicates ([`node_may_publish`],
//! [`node_may_subscribe`], [`cloud_may_publish`], [`cloud_may_subscribe`]) that the
//! embedded broker calls, and as a Mosquitto ACL file ([`mosquitto_acl`]) granting the
//! same rights. A node may:
//!
//! - publish only to its own edge→cloud topics, exactly (no wildcards: MQTT forbids
//!   them in topic names and [`parse_topic`] rejects them);
//! - subscribe only to exactly its own cloud→edge topics
//!   (`verge/v1/node/{node}/desired`, `…/task` and `…/cert`). **Any filter
//!   containing `+` or `#` is rejected**, even `verge/v1/node/{node}/+`: a wildcard
//!   buys the edge nothing (it knows both topics) and would widen what a compromised
//!   node can observe if the topic tree ever grows.
//!
//! The cloud publishes to cloud→edge topics of any valid node and subscribes to the
//! edge→cloud channels of all nodes ([`cloud_subscriptions`]).

use std::fmt;
use std::str::FromStr;

use crate::error::{ProtoError, echo};

/// Every topic starts with this (the `v1` is the topic-tree version, independent of the
/// payload [`crate::PROTOCOL_VERSION`]).
pub const TOPIC_PREFIX: &str = "verge/v1/node/";

/// Largest `heartbeat` payload (1 KiB).
pub const MAX_HEARTBEAT_PAYLOAD: usize = 1024;
/// Largest `hello` payload (4 KiB).
pub const MAX_HELLO_PAYLOAD: usize = 4 * 1024;
/// Largest `ack` payload (1 KiB).
pub const MAX_ACK_PAYLOAD: usize = 1024;
/// Largest `status` payload (64 KiB).
pub const MAX_STATUS_PAYLOAD: usize = 64 * 1024;
/// Largest `log` payload (64 KiB).
pub const MAX_LOG_PAYLOAD: usize = 64 * 1024;
/// Largest `result` payload (1 MiB).
pub const MAX_RESULT_PAYLOAD: usize = 1024 * 1024;
/// Largest `task` payload (1 MiB).
pub const MAX_TASK_PAYLOAD: usize = 1024 * 1024;
/// Largest `renew` payload (16 KiB: a CSR).
pub const MAX_RENEW_PAYLOAD: usize = 16 * 1024;
/// Largest `cert` payload (16 KiB: a certificate).
pub const MAX_CERT_PAYLOAD: usize = 16 * 1024;
/// Largest `desired` payload (4 MiB). The cloud splits larger deltas.
pub const MAX_DESIRED_PAYLOAD: usize = 4 * 1024 * 1024;

/// Who publishes on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    CloudToEdge,
    EdgeToCloud,
}

/// The last level of a node topic. Each channel carries exactly one message type
/// ([`Channel::message_type`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    /// Cloud→edge: versioned desired-state deltas or snapshots ([`crate::Desired`]).
    Desired,
    /// Cloud→edge: task invocations ([`crate::Task`]).
    Task,
    /// Edge→cloud: a desired revision has been persisted ([`crate::Ack`]).
    Ack,
    /// Edge→cloud: sent on every connect with the last applied revision
    /// ([`crate::Hello`]).
    Hello,
    /// Edge→cloud: tiny liveness beacon, separate from bulk traffic
    /// ([`crate::Heartbeat`]).
    Heartbeat,
    /// Edge→cloud: node status ([`crate::NodeStatus`]).
    Status,
    /// Edge→cloud: task results ([`crate::TaskResult`]).
    Result,
    /// Edge→cloud: log lines ([`crate::LogBatch`]).
    Log,
    /// Edge→cloud: a certificate signing request for the node's next key
    /// ([`crate::CertRequest`]); the session's certificate authenticates it.
    Renew,
    /// Cloud→edge: the renewed certificate ([`crate::CertIssued`]).
    Cert,
}

impl Channel {
    pub const ALL: [Channel; 10] = [
        Channel::Desired,
        Channel::Task,
        Channel::Cert,
        Channel::Ack,
        Channel::Hello,
        Channel::Heartbeat,
        Channel::Status,
        Channel::Result,
        Channel::Log,
        Channel::Renew,
    ];

    /// The channels the cloud publishes and nodes subscribe to.
    pub const CLOUD_TO_EDGE: [Channel; 3] = [Channel::Desired, Channel::Task, Channel::Cert];

    /// The channels nodes publish and the cloud subscribes to.
    pub const EDGE_TO_CLOUD: [Channel; 7] = [
        Channel::Ack,
        Channel::Hello,
        Channel::Heartbeat,
        Channel::Status,
        Channel::Result,
        Channel::Log,
        Channel::Renew,
    ];

    /// The topic level: `desired`, `task`, `cert`, `ack`, `hello`, `heartbeat`,
    /// `status`, `result`, `log`, `renew`.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Desired => "desired",
            Channel::Task => "task",
            Channel::Ack => "ack",
            Channel::Hello => "hello",
            Channel::Heartbeat => "heartbeat",
            Channel::Status => "status",
            Channel::Result => "result",
            Channel::Log => "log",
            Channel::Renew => "renew",
            Channel::Cert => "cert",
        }
    }

    /// Exact (case-sensitive) inverse of [`Channel::as_str`].
    pub fn from_name(s: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == s)
    }

    pub fn direction(self) -> Direction {
        match self {
            Channel::Desired | Channel::Task | Channel::Cert => Direction::CloudToEdge,
            Channel::Ack
            | Channel::Hello
            | Channel::Heartbeat
            | Channel::Status
            | Channel::Result
            | Channel::Log
            | Channel::Renew => Direction::EdgeToCloud,
        }
    }

    /// The largest payload accepted on this channel, in bytes.
    pub fn max_payload(self) -> usize {
        match self {
            Channel::Desired => MAX_DESIRED_PAYLOAD,
            Channel::Task => MAX_TASK_PAYLOAD,
            Channel::Ack => MAX_ACK_PAYLOAD,
            Channel::Hello => MAX_HELLO_PAYLOAD,
            Channel::Heartbeat => MAX_HEARTBEAT_PAYLOAD,
            Channel::Status => MAX_STATUS_PAYLOAD,
            Channel::Result => MAX_RESULT_PAYLOAD,
            Channel::Log => MAX_LOG_PAYLOAD,
            Channel::Renew => MAX_RENEW_PAYLOAD,
            Channel::Cert => MAX_CERT_PAYLOAD,
        }
    }

    /// The envelope `type` of the one message kind this channel carries.
    pub fn message_type(self) -> &'static str {
        match self {
            Channel::Desired => "desired",
            Channel::Task => "task",
            Channel::Ack => "ack",
            Channel::Hello => "hello",
            Channel::Heartbeat => "heartbeat",
            Channel::Status => "nodeStatus",
            Channel::Result => "taskResult",
            Channel::Log => "logBatch",
            Channel::Renew => "certRequest",
            Channel::Cert => "certIssued",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Channel {
    type Err = ProtoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Channel::from_name(s).ok_or_else(|| ProtoError::InvalidTopic {
            topic: echo(s),
            reason: "unknown channel".to_owned(),
        })
    }
}

/// `verge/v1/node/{node}/{channel}`.
///
/// `node` must be a DNS-1123 label (every `Node` object name is); this function does not
/// check it, but [`parse_topic`] and the ACL predicates reject topics built from
/// anything else.
pub fn node_topic(node: &str, channel: Channel) -> String {
    format!("{TOPIC_PREFIX}{node}/{}", channel.as_str())
}

/// Splits a topic into its node name and channel. Rejects: a wrong prefix or version,
/// fewer or more than five levels, a node that is not a DNS-1123 label (which rules out
/// empty names, uppercase, `+`, `#` and `/`), an unknown channel.
pub fn parse_topic(topic: &str) -> Result<(String, Channel), ProtoError> {
    let bad = |reason: &str| ProtoError::InvalidTopic {
        topic: echo(topic),
        reason: reason.to_owned(),
    };
    let rest = topic
        .strip_prefix(TOPIC_PREFIX)
        .ok_or_else(|| bad("expected prefix verge/v1/node/"))?;
    let (node, channel) = rest
        .split_once('/')
        .ok_or_else(|| bad("expected verge/v1/node/{node}/{channel}"))?;
    if channel.contains('/') {
        return Err(bad("too many topic levels"));
    }
    if !verge_api::is_dns1123_label(node) {
        return Err(bad("node name must be a DNS-1123 label"));
    }
    let channel = Channel::from_name(channel).ok_or_else(|| bad("unknown channel"))?;
    Ok((node.to_owned(), channel))
}

/// The filters the cloud subscribes to: `verge/v1/node/+/{channel}` for every
/// edge→cloud channel, in [`Channel::EDGE_TO_CLOUD`] order.
pub fn cloud_subscriptions() -> Vec<String> {
    Channel::EDGE_TO_CLOUD
        .into_iter()
        .map(|c| format!("{TOPIC_PREFIX}+/{}", c.as_str()))
        .collect()
}

/// The exact topics a node subscribes to: its own cloud→edge topics.
pub fn edge_subscriptions(node: &str) -> Vec<String> {
    Channel::CLOUD_TO_EDGE
        .into_iter()
        .map(|c| node_topic(node, c))
        .collect()
}

/// Whether `node` (the authenticated client's certificate CN) may publish to `topic`:
/// only exactly `verge/v1/node/{node}/{edge→cloud channel}`. False for an invalid node
/// name.
pub fn node_may_publish(node: &str, topic: &str) -> bool {
    matches!(
        parse_topic(topic),
        Ok((n, c)) if n == node && c.direction() == Direction::EdgeToCloud
    )
}

/// Whether `node` may subscribe to `filter`: only exactly
/// its own cloud→edge topics (`desired`, `task`, `cert`). Every filter with a
/// wildcard (`+`, `#`) is rejected, as are shared subscriptions (`$share/...`).
pub fn node_may_subscribe(node: &str, filter: &str) -> bool {
    !filter.contains(['+', '#'])
        && matches!(
            parse_topic(filter),
            Ok((n, c)) if n == node && c.direction() == Direction::CloudToEdge
        )
}

/// Whether the cloud may publish to `topic`: a cloud→edge topic of any valid node name.
pub fn cloud_may_publish(topic: &str) -> bool {
    matches!(parse_topic(topic), Ok((_, c)) if c.direction() == Direction::CloudToEdge)
}

/// Whether the cloud may subscribe to `filter`: an edge→cloud channel of one node
/// (exact topic) or of all nodes (`verge/v1/node/+/{channel}`). `#` is never allowed.
pub fn cloud_may_subscribe(filter: &str) -> bool {
    if let Some(rest) = filter.strip_prefix(TOPIC_PREFIX)
        && let Some(channel) = rest.strip_prefix("+/")
    {
        return Channel::from_name(channel)
            .is_some_and(|c| c.direction() == Direction::EdgeToCloud);
    }
    matches!(parse_topic(filter), Ok((_, c)) if c.direction() == Direction::EdgeToCloud)
}

/// Suggested MQTT username (certificate CN) of the cloud. It contains `:`, so it is not
/// a DNS-1123 label and can never be a node name.
pub const DEFAULT_CLOUD_USER: &str = "verge:cloud";

/// Longest accepted cloud username.
pub const MAX_CLOUD_USER_LEN: usize = 64;

/// A Mosquitto ACL file (`acl_file`) granting exactly what the predicates above allow.
///
/// Assumes `require_certificate true` and `use_identity_as_username true`, so the
/// username is the client certificate CN: a node's name, or `cloud_user` for the
/// cloud. Node rights are `pattern` lines with `%u` (they apply to every user; Mosquitto
/// refuses to substitute usernames containing `+`, `#` or `/`); the cloud's rights
/// follow a `user` line. Mosquitto denies everything not granted, and also checks
/// `read` on every message it delivers, so no filter a node subscribes with ever
/// yields another node's messages. Mosquitto's subscribe-time check is its own
/// wildcard matching, not [`node_may_subscribe`]'s "exact topics only" rule; the
/// embedded broker applies the stricter predicate.
///
/// `cloud_user` must be 1..=[`MAX_CLOUD_USER_LEN`] characters from `[A-Za-z0-9._:-]`
/// and must **not** be a DNS-1123 label: otherwise a node named like the cloud would
/// receive the cloud's rights. Use [`DEFAULT_CLOUD_USER`] unless you have a reason not
/// to.
pub fn mosquitto_acl(cloud_user: &str) -> Result<String, ProtoError> {
    check_cloud_user(cloud_user)?;
    let mut out = String::from(
        "# Verge MQTT ACL, generated by verge-proto. Do not edit.\n\
         # Requires require_certificate true and use_identity_as_username true:\n\
         # the username is the client certificate CN (the node name, or the cloud user).\n\
         \n\
         # Nodes (%u = node name): read their cloud->edge topics, write their edge->cloud\n\
         # topics. Pattern lines apply to every user.\n",
    );
    for c in Channel::CLOUD_TO_EDGE {
        out.push_str(&format!("pattern read {TOPIC_PREFIX}%u/{c}\n"));
    }
    for c in Channel::EDGE_TO_CLOUD {
        out.push_str(&format!("pattern write {TOPIC_PREFIX}%u/{c}\n"));
    }
    out.push_str(&format!(
        "\n# The cloud: read every node's edge->cloud topics, write every node's\n\
         # cloud->edge topics.\nuser {cloud_user}\n"
    ));
    for c in Channel::EDGE_TO_CLOUD {
        out.push_str(&format!("topic read {TOPIC_PREFIX}+/{c}\n"));
    }
    for c in Channel::CLOUD_TO_EDGE {
        out.push_str(&format!("topic write {TOPIC_PREFIX}+/{c}\n"));
    }
    Ok(out)
}

fn check_cloud_user(user: &str) -> Result<(), ProtoError> {
    let bad = |reason: &str| ProtoError::Invalid(format!("cloud user {:?}: {reason}", echo(user)));
    if user.is_empty() || user.len() > MAX_CLOUD_USER_LEN {
        return Err(bad(&format!(
            "must be 1 to {MAX_CLOUD_USER_LEN} characters"
        )));
    }
    if !user
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    {
        return Err(bad(
            "may only contain letters, digits, '.', '_', ':' and '-'",
        ));
    }
    if verge_api::is_dns1123_label(user) {
        return Err(bad(
            "must not be a DNS-1123 label, or a node of that name would get the cloud's rights",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_round_trip() {
        for c in Channel::ALL {
            assert_eq!(Channel::from_name(c.as_str()), Some(c));
            assert_eq!(c.as_str().parse::<Channel>(), Ok(c));
            assert_eq!(c.to_string(), c.as_str());
        }
        assert_eq!(Channel::from_name("Desired"), None);
        assert!("nope".parse::<Channel>().is_err());
        for c in Channel::CLOUD_TO_EDGE {
            assert_eq!(c.direction(), Direction::CloudToEdge);
        }
        for c in Channel::EDGE_TO_CLOUD {
            assert_eq!(c.direction(), Direction::EdgeToCloud);
        }
        assert_eq!(
            Channel::CLOUD_TO_EDGE.len() + Channel::EDGE_TO_CLOUD.len(),
            Channel::ALL.len()
        );
    }

    #[test]
    fn payload_limits() {
        assert_eq!(Channel::Heartbeat.max_payload(), 1024);
        assert_eq!(Channel::Hello.max_payload(), 4096);
        assert_eq!(Channel::Ack.max_payload(), 1024);
        assert_eq!(Channel::Status.max_payload(), 65536);
        assert_eq!(Channel::Log.max_payload(), 65536);
        assert_eq!(Channel::Result.max_payload(), 1 << 20);
        assert_eq!(Channel::Task.max_payload(), 1 << 20);
        assert_eq!(Channel::Desired.max_payload(), 4 << 20);
    }

    #[test]
    fn topics_round_trip() {
        for c in Channel::ALL {
            for node in ["a", "edge-1", "0", &"n".repeat(63)] {
                let topic = node_topic(node, c);
                assert_eq!(topic, format!("verge/v1/node/{node}/{c}"));
                assert_eq!(parse_topic(&topic), Ok((node.to_owned(), c)));
            }
        }
    }

    #[test]
    fn bad_topics_are_rejected() {
        let long = format!("verge/v1/node/{}/hello", "n".repeat(64));
        for bad in [
            "",
            "verge/v1/node",
            "verge/v1/node/",
            "verge/v1/node/edge-1",
            "verge/v1/node/edge-1/",
            "verge/v1/node//hello",
            "verge/v1/node/edge-1/hello/extra",
            "verge/v1/node/edge-1/hello/",
            "verge/v1/node/a/b/hello",
            "verge/v2/node/edge-1/hello",
            "verge/v1/nodes/edge-1/hello",
            "Verge/v1/node/edge-1/hello",
            "/verge/v1/node/edge-1/hello",
            "other/v1/node/edge-1/hello",
            "$share/g/verge/v1/node/edge-1/hello",
            "verge/v1/node/Edge-1/hello",
            "verge/v1/node/+/hello",
            "verge/v1/node/#",
            "verge/v1/node/edge-1/#",
            "verge/v1/node/edge-1/+",
            "verge/v1/node/-a/hello",
            "verge/v1/node/a_b/hello",
            "verge/v1/node/a.b/hello",
            "verge/v1/node/edge-1/Hello",
            "verge/v1/node/edge-1/unknown",
            &long,
        ] {
            let err = parse_topic(bad).expect_err(bad);
            assert!(
                matches!(err, ProtoError::InvalidTopic { .. }),
                "{bad}: {err}"
            );
        }
        let err = parse_topic(&format!("x/{}", "y".repeat(10_000))).unwrap_err();
        assert!(err.to_string().len() < 200, "{err}");
    }

    #[test]
    fn subscriptions() {
        assert_eq!(
            cloud_subscriptions(),
            [
                "verge/v1/node/+/ack",
                "verge/v1/node/+/hello",
                "verge/v1/node/+/heartbeat",
                "verge/v1/node/+/status",
                "verge/v1/node/+/result",
                "verge/v1/node/+/log",
                "verge/v1/node/+/renew",
            ]
        );
        for f in cloud_subscriptions() {
            assert!(cloud_may_subscribe(&f), "{f}");
        }
        assert_eq!(
            edge_subscriptions("edge-1"),
            [
                "verge/v1/node/edge-1/desired",
                "verge/v1/node/edge-1/task",
                "verge/v1/node/edge-1/cert"
            ]
        );
        for f in edge_subscriptions("edge-1") {
            assert!(node_may_subscribe("edge-1", &f), "{f}");
        }
    }

    #[test]
    fn node_publish_acl() {
        for c in Channel::EDGE_TO_CLOUD {
            assert!(node_may_publish("a", &node_topic("a", c)), "{c}");
        }
        // Wrong direction.
        assert!(!node_may_publish("a", "verge/v1/node/a/desired"));
        assert!(!node_may_publish("a", "verge/v1/node/a/task"));
        // Another node's topics.
        assert!(!node_may_publish("a", "verge/v1/node/b/status"));
        assert!(!node_may_publish("a", "verge/v1/node/ab/status"));
        assert!(!node_may_publish("ab", "verge/v1/node/a/status"));
        for topic in [
            "verge/v1/node/a/status/extra",
            "verge/v1/node/a",
            "verge/v1/node/a/",
            "verge/v2/node/a/status",
            "verge/v1/node/a/+",
            "verge/v1/node/a/#",
            "verge/v1/node/+/status",
            "verge/v1/node/A/status",
            "x/verge/v1/node/a/status",
        ] {
            assert!(!node_may_publish("a", topic), "{topic}");
        }
        // Invalid node names never get rights, even for a topic spelled with them.
        for node in ["", "A", "a/b", "+", "#", "a+", "a#", "a/status"] {
            let topic = format!("verge/v1/node/{node}/status");
            assert!(!node_may_publish(node, &topic), "{node:?}");
        }
        // `a/b` must not reach `verge/v1/node/a/b/status` nor `a`'s topics.
        assert!(!node_may_publish("a/b", "verge/v1/node/a/b/status"));
        assert!(!node_may_publish("a/status", "verge/v1/node/a/status"));
    }

    #[test]
    fn node_subscribe_acl() {
        assert!(node_may_subscribe("a", "verge/v1/node/a/desired"));
        assert!(node_may_subscribe("a", "verge/v1/node/a/task"));
        for filter in [
            "verge/v1/node/a/+",
            "verge/v1/node/a/#",
            "verge/v1/node/+/desired",
            "verge/v1/node/#",
            "#",
            "+/v1/node/a/desired",
            "verge/v1/node/a/desired/#",
            "verge/v1/node/b/desired",
            "verge/v1/node/a/status",
            "verge/v1/node/a/hello",
            "$share/g/verge/v1/node/a/desired",
            "verge/v1/node/a/desired/extra",
        ] {
            assert!(!node_may_subscribe("a", filter), "{filter}");
        }
        for node in ["", "A", "a/b", "+", "#"] {
            let filter = format!("verge/v1/node/{node}/desired");
            assert!(!node_may_subscribe(node, &filter), "{node:?}");
        }
    }

    #[test]
    fn cloud_acl() {
        assert!(cloud_may_publish("verge/v1/node/edge-1/desired"));
        assert!(cloud_may_publish("verge/v1/node/edge-1/task"));
        assert!(!cloud_may_publish("verge/v1/node/edge-1/status"));
        assert!(!cloud_may_publish("verge/v1/node/+/desired"));
        assert!(!cloud_may_publish("verge/v1/node/Edge/desired"));
        assert!(cloud_may_subscribe("verge/v1/node/edge-1/status"));
        assert!(cloud_may_subscribe("verge/v1/node/+/result"));
        for filter in [
            "verge/v1/node/#",
            "verge/v1/node/+/#",
            "verge/v1/node/+/+",
            "verge/v1/node/+/desired",
            "verge/v1/node/edge-1/task",
            "#",
        ] {
            assert!(!cloud_may_subscribe(filter), "{filter}");
        }
    }

    #[test]
    fn mosquitto_acl_text() {
        let acl = mosquitto_acl(DEFAULT_CLOUD_USER).unwrap();
        let lines: Vec<&str> = acl
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        assert_eq!(
            lines,
            [
                "pattern read verge/v1/node/%u/desired",
                "pattern read verge/v1/node/%u/task",
                "pattern read verge/v1/node/%u/cert",
                "pattern write verge/v1/node/%u/ack",
                "pattern write verge/v1/node/%u/hello",
                "pattern write verge/v1/node/%u/heartbeat",
                "pattern write verge/v1/node/%u/status",
                "pattern write verge/v1/node/%u/result",
                "pattern write verge/v1/node/%u/log",
                "pattern write verge/v1/node/%u/renew",
                "user verge:cloud",
                "topic read verge/v1/node/+/ack",
                "topic read verge/v1/node/+/hello",
                "topic read verge/v1/node/+/heartbeat",
                "topic read verge/v1/node/+/status",
                "topic read verge/v1/node/+/result",
                "topic read verge/v1/node/+/log",
                "topic read verge/v1/node/+/renew",
                "topic write verge/v1/node/+/desired",
                "topic write verge/v1/node/+/task",
                "topic write verge/v1/node/+/cert",
            ]
        );
        // No rights for anonymous clients: nothing before the first `user` line but
        // patterns and comments.
        assert!(!acl.contains("readwrite"));
        assert!(mosquitto_acl("cloud.verge.internal").is_ok());
    }

    #[test]
    fn mosquitto_acl_rejects_bad_cloud_users() {
        for bad in [
            "",
            "verge-cloud", // a valid node name: privilege confusion
            "cloud",
            "a b",
            "a\ntopic readwrite #",
            "a#",
            "a+",
            "a/b",
            "%u",
            &"x:".repeat(40),
        ] {
            let err = mosquitto_acl(bad).expect_err(bad);
            assert!(matches!(err, ProtoError::Invalid(_)), "{bad:?}: {err}");
        }
    }
}
