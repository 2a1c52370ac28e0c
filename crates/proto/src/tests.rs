//! Codec tests: round trips, every decode error, bounds, hostile input.

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::{Value, json};

use crate::messages::*;
use crate::*;

// ---------------------------------------------------------------------------------------
// fixtures

fn hello() -> Hello {
    Hello {
        node: "edge-1".into(),
        agent_version: "0.1.0".into(),
        boot_id: "9f1c2b7e-0d1a-4c4e-9a43-0a3c1d2e3f40".into(),
        last_applied_revision: 41,
        sent_at_ms: 1_700_000_000_000,
    }
}

fn heartbeat() -> Heartbeat {
    Heartbeat {
        seq: 3,
        sent_at_ms: 1_700_000_000_000,
        ready: true,
    }
}

fn node_status() -> NodeStatus {
    NodeStatus {
        arch: "aarch64".into(),
        os: "linux".into(),
        kernel: "6.1.0-rpi7".into(),
        cpus: 4,
        memory_bytes: 8 << 30,
        disk_bytes: 64 << 30,
        disk_free_bytes: 30 << 30,
        memory_free_bytes: 5 << 30,
        agent_version: "0.1.0".into(),
        labels: BTreeMap::from([("site".into(), "plant-3".into())]),
        capacity: BTreeMap::from([
            ("cpu".into(), "4".into()),
            ("memory".into(), "7816Mi".into()),
        ]),
        conditions: vec![
            Condition {
                condition_type: ConditionType::Ready,
                status: true,
                reason: "AgentReady".into(),
                message: "agent is running".into(),
                last_transition_ms: 1_699_999_000_000,
            },
            Condition {
                condition_type: ConditionType::DiskPressure,
                status: false,
                reason: String::new(),
                message: String::new(),
                last_transition_ms: 0,
            },
        ],
        queue: QueueStats {
            pending_bytes: 1024,
            pending_items: 2,
            dropped_items: 1,
            dropped_bytes: 512,
        },
        applied_revision: 41,
        sent_at_ms: 1_700_000_000_000,
        apps: Vec::new(),
    }
}

fn app(name: &str) -> verge_api::Object {
    verge_api::decode_object(json!({
        "apiVersion": "verge.dev/v1",
        "kind": "App",
        "metadata": {"name": name, "labels": {"tier": "frontend"}},
        "spec": {
            "version": "1.0.0",
            "workload": {"docker": {
                "image": "registry.local:5000/web:1.0.0",
                "ports": [{"containerPort": 8080}]
            }},
            "resources": {"cpu": "250m", "memory": "64Mi"}
        }
    }))
    .unwrap()
}

fn desired() -> Desired {
    Desired {
        from_revision: 41,
        to_revision: 45,
        snapshot: false,
        upserts: vec![app("web"), app("api")],
        deletes: vec![ObjectRef {
            kind: "Function".into(),
            name: "resize".into(),
        }],
    }
}

fn task() -> Task {
    Task {
        id: "t-0001".into(),
        function: "resize".into(),
        input: json!({"image": "s3://bucket/a.png", "sizes": [64, 128]}),
        deadline_ms: 1_700_000_060_000,
        idempotency_key: Some("resize-a-png".into()),
        attempt: Some(1),
    }
}

fn task_result() -> TaskResult {
    TaskResult {
        id: "t-0001".into(),
        ok: true,
        output: Some(json!({"written": 2})),
        error: None,
        started_at_ms: 1_700_000_001_000,
        finished_at_ms: 1_700_000_002_000,
        seq: 9,
        ..Default::default()
    }
}

fn log_batch() -> LogBatch {
    LogBatch {
        source: "app/web".into(),
        lines: vec![
            LogLine {
                ts_ms: 1_700_000_000_000,
                stream: LogStream::Stdout,
                line: "listening on :8080".into(),
            },
            LogLine {
                ts_ms: 1_700_000_000_001,
                stream: LogStream::Stderr,
                line: "warning: ünïcode ok".into(),
            },
        ],
    }
}

fn all_messages() -> Vec<Message> {
    vec![
        Message::Hello(hello()),
        Message::Heartbeat(heartbeat()),
        Message::NodeStatus(Box::new(node_status())),
        Message::Desired(desired()),
        Message::Ack(Ack { revision: 45 }),
        Message::Task(task()),
        Message::TaskResult(task_result()),
        Message::LogBatch(log_batch()),
    ]
}

/// Encodes `msg`, lets `edit` change the envelope JSON, and decodes on `msg`'s channel.
fn decode_edited(msg: &Message, edit: impl FnOnce(&mut Value)) -> Result<Message, ProtoError> {
    let mut v: Value = serde_json::from_slice(&encode(msg)).unwrap();
    edit(&mut v);
    decode(msg.channel(), &serde_json::to_vec(&v).unwrap())
}

fn invalid(msg: Message) -> String {
    match decode(msg.channel(), &encode(&msg)) {
        Err(ProtoError::Invalid(m)) => m,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

fn malformed(channel: Channel, payload: &[u8]) -> String {
    match decode(channel, payload) {
        Err(ProtoError::Malformed(m)) => m,
        other => panic!("expected Malformed, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// round trips and wire shape

#[test]
fn every_message_round_trips() {
    for msg in all_messages() {
        let bytes = encode(&msg);
        assert_eq!(
            decode(msg.channel(), &bytes),
            Ok(msg.clone()),
            "{}",
            msg.type_name()
        );
        assert_eq!(encode_checked(&msg), Ok(bytes.clone()));
        let topic = node_topic("edge-1", msg.channel());
        assert_eq!(decode_any(&topic, &bytes), Ok(("edge-1".to_owned(), msg)));
    }
}

#[test]
fn channels_and_type_names() {
    let expected = [
        (Channel::Hello, "hello"),
        (Channel::Heartbeat, "heartbeat"),
        (Channel::Status, "nodeStatus"),
        (Channel::Desired, "desired"),
        (Channel::Ack, "ack"),
        (Channel::Task, "task"),
        (Channel::Result, "taskResult"),
        (Channel::Log, "logBatch"),
    ];
    for (msg, (channel, name)) in all_messages().iter().zip(expected) {
        assert_eq!(msg.channel(), channel);
        assert_eq!(msg.type_name(), name);
    }
}

#[test]
fn wire_shape_is_a_camel_case_envelope() {
    let v: Value = serde_json::from_slice(&encode(&Message::Heartbeat(heartbeat()))).unwrap();
    assert_eq!(
        v,
        json!({"v": 1, "type": "heartbeat", "body": {"seq": 3, "sentAtMs": 1_700_000_000_000_i64, "ready": true}})
    );
    let v: Value =
        serde_json::from_slice(&encode(&Message::NodeStatus(Box::new(node_status())))).unwrap();
    assert_eq!(v["body"]["conditions"][0]["type"], "Ready");
    assert_eq!(
        v["body"]["conditions"][0]["lastTransitionMs"],
        1_699_999_000_000_i64
    );
    assert_eq!(v["body"]["queue"]["droppedItems"], 1);
    assert_eq!(v["body"]["memoryFreeBytes"], 5_u64 << 30);
    let v: Value = serde_json::from_slice(&encode(&Message::LogBatch(log_batch()))).unwrap();
    assert_eq!(v["body"]["lines"][1]["stream"], "stderr");
    assert_eq!(v["body"]["lines"][1]["tsMs"], 1_700_000_000_001_i64);
    // `None` options are omitted, and may be omitted on input.
    let mut t = task();
    t.idempotency_key = None;
    let v: Value = serde_json::from_slice(&encode(&Message::Task(t))).unwrap();
    assert!(v["body"].get("idempotencyKey").is_none());
    assert_eq!(v["body"]["deadlineMs"], 1_700_000_060_000_i64);
}

#[test]
fn heartbeat_is_tiny() {
    let big = Heartbeat {
        seq: u64::MAX,
        sent_at_ms: i64::MAX,
        ready: false,
    };
    assert!(encode(&Message::Heartbeat(big)).len() < 128);
}

#[test]
fn desired_apply_rule() {
    let d = desired();
    assert!(d.applies_to(41));
    assert!(!d.applies_to(40));
    assert!(!d.applies_to(45));
    let snapshot = Desired {
        from_revision: 0,
        snapshot: true,
        deletes: vec![],
        ..desired()
    };
    assert!(snapshot.applies_to(3));
    assert!(snapshot.applies_to(100));
}

// ---------------------------------------------------------------------------------------
// decode errors, in check order

#[test]
fn oversize_is_rejected_before_parsing() {
    // 2 KiB of garbage on the heartbeat channel: TooLarge, not Malformed.
    let payload = vec![b'{'; 2048];
    assert_eq!(
        decode(Channel::Heartbeat, &payload),
        Err(ProtoError::TooLarge {
            channel: Channel::Heartbeat,
            size: 2048,
            limit: 1024
        })
    );
    // A valid heartbeat padded with whitespace beyond the limit is still too large.
    let mut padded = encode(&Message::Heartbeat(heartbeat()));
    padded.resize(1025, b' ');
    assert!(matches!(
        decode(Channel::Heartbeat, &padded),
        Err(ProtoError::TooLarge { .. })
    ));
    padded.truncate(1024);
    assert!(decode(Channel::Heartbeat, &padded).is_ok());
    for channel in Channel::ALL {
        let payload = vec![b' '; channel.max_payload() + 1];
        assert!(matches!(
            decode(channel, &payload),
            Err(ProtoError::TooLarge { limit, .. }) if limit == channel.max_payload()
        ));
    }
}

#[test]
fn malformed_syntax() {
    for payload in [
        &b""[..],
        b"   ",
        b"not json",
        b"{",
        b"{\"v\":1,}",
        b"\xff\xfe",
        b"{\"v\": 1, \"type\": \"ack\", \"body\": {\"revision\": 1}} trailing",
        b"{\"v\": NaN}",
    ] {
        let m = malformed(Channel::Ack, payload);
        assert!(m.starts_with("invalid json"), "{m}");
    }
    for (payload, found) in [
        (&b"[]"[..], "array"),
        (b"null", "null"),
        (b"1", "number"),
        (b"\"x\"", "string"),
        (b"true", "boolean"),
    ] {
        let m = malformed(Channel::Ack, payload);
        assert_eq!(m, format!("expected a json object, found {found}"));
    }
}

#[test]
fn duplicate_keys_are_malformed() {
    let m = malformed(
        Channel::Ack,
        br#"{"v": 1, "type": "ack", "body": {"revision": 1, "revision": 2}}"#,
    );
    assert!(m.contains("duplicate key \"revision\""), "{m}");
    let m = malformed(
        Channel::Ack,
        br#"{"v": 1, "v": 1, "type": "ack", "body": {}}"#,
    );
    assert!(m.contains("duplicate key \"v\""), "{m}");
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    for channel in Channel::ALL {
        let depth = 100_000;
        let arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let objects = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
        let in_body = format!(
            r#"{{"v":1,"type":"{}","body":{}}}"#,
            channel.message_type(),
            "[".repeat(depth)
        );
        for payload in [arrays, objects, in_body] {
            let payload = &payload.as_bytes()[..payload.len().min(channel.max_payload())];
            let m = malformed(channel, payload);
            assert!(m.contains("recursion limit") || m.contains("EOF"), "{m}");
        }
        // Just under the limit parses (and then fails the shape check).
        let ok_depth = 100;
        let nested = format!(
            r#"{{"v":1,"type":"{}","body":{}{}}}"#,
            channel.message_type(),
            "[".repeat(ok_depth),
            "]".repeat(ok_depth)
        );
        if nested.len() <= channel.max_payload() {
            let m = malformed(channel, nested.as_bytes());
            assert!(m.starts_with("body"), "{m}");
        }
    }
    // Task input is free-form JSON: deep but within the limit is fine.
    let mut t = task();
    let mut input = json!(1);
    for _ in 0..100 {
        input = json!([input]);
    }
    t.input = input;
    let msg = Message::Task(t);
    assert_eq!(decode(Channel::Task, &encode(&msg)), Ok(msg));
}

#[test]
fn unsupported_version() {
    let ack = Message::Ack(Ack { revision: 1 });
    for (v, got) in [
        (json!(2), "2"),
        (json!(0), "0"),
        (json!(-1), "-1"),
        (json!(1.0), "1.0"),
        (json!("1"), "\"1\""),
        (json!(null), "null"),
        (json!([1]), "[1]"),
    ] {
        let err = decode_edited(&ack, |e| e["v"] = v).unwrap_err();
        assert_eq!(err, ProtoError::UnsupportedVersion { got: got.into() });
    }
    let err = decode_edited(&ack, |e| {
        e.as_object_mut().unwrap().remove("v");
    })
    .unwrap_err();
    assert_eq!(
        err,
        ProtoError::UnsupportedVersion {
            got: "missing".into()
        }
    );
    assert_eq!(
        err.to_string(),
        "unsupported protocol version missing (expected 1)"
    );
    // Version is checked before type and body: a v2 envelope with a new shape.
    let err = decode(
        Channel::Ack,
        br#"{"v": 2, "type": "ackV2", "body": [], "extra": 1}"#,
    );
    assert_eq!(err, Err(ProtoError::UnsupportedVersion { got: "2".into() }));
    // A huge `v` is echoed truncated.
    let long = "x".repeat(500);
    let err = decode_edited(&ack, |e| e["v"] = json!(long)).unwrap_err();
    assert!(err.to_string().len() < 150, "{err}");
}

#[test]
fn wrong_channel() {
    let payload = encode(&Message::Heartbeat(heartbeat()));
    assert_eq!(
        decode(Channel::Status, &payload),
        Err(ProtoError::WrongChannel {
            expected: Channel::Status,
            got: "heartbeat".into()
        })
    );
    // Every message is rejected on every other channel (payload size permitting).
    for msg in all_messages() {
        let payload = encode(&msg);
        for channel in Channel::ALL {
            if channel == msg.channel() || payload.len() > channel.max_payload() {
                continue;
            }
            assert_eq!(
                decode(channel, &payload),
                Err(ProtoError::WrongChannel {
                    expected: channel,
                    got: msg.type_name().into()
                })
            );
        }
    }
    // Unknown type names are wrong on every channel; the check is case-sensitive.
    let ack = Message::Ack(Ack { revision: 1 });
    for t in ["bogus", "Ack", "ACK", "", "nodestatus"] {
        let err = decode_edited(&ack, |e| e["type"] = json!(t)).unwrap_err();
        assert!(matches!(err, ProtoError::WrongChannel { .. }), "{t}: {err}");
    }
    // Via the topic: a heartbeat on a status topic.
    let err = decode_any("verge/v1/node/edge-1/status", &payload).unwrap_err();
    assert!(matches!(err, ProtoError::WrongChannel { .. }));
}

#[test]
fn malformed_type_field() {
    let ack = Message::Ack(Ack { revision: 1 });
    let err = decode_edited(&ack, |e| {
        e.as_object_mut().unwrap().remove("type");
    });
    assert_eq!(
        err,
        Err(ProtoError::Malformed("type: missing field".into()))
    );
    let err = decode_edited(&ack, |e| e["type"] = json!(5));
    assert_eq!(
        err,
        Err(ProtoError::Malformed(
            "type: invalid type: number, expected a string".into()
        ))
    );
}

#[test]
fn malformed_envelope_fields() {
    let ack = Message::Ack(Ack { revision: 1 });
    let err = decode_edited(&ack, |e| e["extra"] = json!(1));
    assert_eq!(
        err,
        Err(ProtoError::Malformed(
            "extra: unknown field, expected one of v, type, body".into()
        ))
    );
    let err = decode_edited(&ack, |e| {
        e.as_object_mut().unwrap().remove("body");
    });
    assert_eq!(
        err,
        Err(ProtoError::Malformed("body: missing field".into()))
    );
}

#[test]
fn unknown_field_in_body() {
    let err = decode_edited(&Message::Heartbeat(heartbeat()), |e| {
        e["body"]["sq"] = json!(1)
    });
    let Err(ProtoError::Malformed(m)) = err else {
        panic!("{err:?}")
    };
    assert!(m.starts_with("body.sq: unknown field `sq`"), "{m}");
    // Nested: a condition, an upserted object's top level and its metadata.
    let err = decode_edited(&Message::NodeStatus(Box::new(node_status())), |e| {
        e["body"]["conditions"][1]["severity"] = json!("high")
    });
    let Err(ProtoError::Malformed(m)) = err else {
        panic!("{err:?}")
    };
    assert!(
        m.starts_with("body.conditions[1].severity: unknown field"),
        "{m}"
    );
    let err = decode_edited(&Message::Desired(desired()), |e| {
        e["body"]["upserts"][1]["specc"] = json!({})
    });
    let Err(ProtoError::Malformed(m)) = err else {
        panic!("{err:?}")
    };
    assert!(m.starts_with("body.upserts[1].specc: unknown field"), "{m}");
    let err = decode_edited(&Message::Desired(desired()), |e| {
        e["body"]["upserts"][0]["metadata"]["namespace"] = json!("x")
    });
    let Err(ProtoError::Malformed(m)) = err else {
        panic!("{err:?}")
    };
    assert!(
        m.starts_with("body.upserts[0].metadata.namespace: unknown field"),
        "{m}"
    );
    // Unknown fields in a spec are caught by the API's strict spec decoding.
    let err = decode_edited(&Message::Desired(desired()), |e| {
        e["body"]["upserts"][0]["spec"]["replicaz"] = json!(3)
    });
    let Err(ProtoError::Invalid(m)) = err else {
        panic!("{err:?}")
    };
    assert!(m.starts_with("body.upserts[0].spec.replicaz"), "{m}");
}

#[test]
fn body_shape_errors() {
    let cases: Vec<(Message, &str, Value, &str)> = vec![
        (
            Message::Heartbeat(heartbeat()),
            "/body/seq",
            json!(-1),
            "body.seq: invalid value",
        ),
        (
            Message::Heartbeat(heartbeat()),
            "/body/seq",
            json!("1"),
            "body.seq: invalid type",
        ),
        (
            Message::Heartbeat(heartbeat()),
            "/body/ready",
            json!(1),
            "body.ready: invalid type",
        ),
        (
            Message::Heartbeat(heartbeat()),
            "/body",
            json!([]),
            "body: invalid type",
        ),
        (
            Message::Heartbeat(heartbeat()),
            "/body",
            json!(null),
            "body: invalid type",
        ),
        (
            Message::Ack(Ack { revision: 1 }),
            "/body/revision",
            json!(1.5),
            "body.revision: invalid type",
        ),
        (
            Message::Ack(Ack { revision: 1 }),
            "/body/revision",
            json!(u64::MAX),
            "body.revision: invalid value",
        ),
        (
            Message::LogBatch(log_batch()),
            "/body/lines/0/stream",
            json!("stdin"),
            "body.lines[0].stream: unknown variant `stdin`",
        ),
        (
            Message::NodeStatus(Box::new(node_status())),
            "/body/conditions/0/type",
            json!("ready"),
            "body.conditions[0].type: unknown variant `ready`",
        ),
        (
            Message::NodeStatus(Box::new(node_status())),
            "/body/cpus",
            json!(1_u64 << 33),
            "body.cpus: invalid value",
        ),
        (
            Message::NodeStatus(Box::new(node_status())),
            "/body/labels",
            json!({"a": 1}),
            "body.labels.a: invalid type",
        ),
    ];
    for (msg, pointer, value, prefix) in cases {
        let err = decode_edited(&msg, |e| *e.pointer_mut(pointer).unwrap() = value);
        let Err(ProtoError::Malformed(m)) = err else {
            panic!("{pointer}: {err:?}")
        };
        assert!(m.starts_with(prefix), "{pointer}: {m}");
    }
    // Missing fields.
    let err = decode_edited(&Message::Hello(hello()), |e| {
        e["body"].as_object_mut().unwrap().remove("bootId");
    });
    let Err(ProtoError::Malformed(m)) = err else {
        panic!("{err:?}")
    };
    assert_eq!(m, "body: missing field `bootId`");
}

// ---------------------------------------------------------------------------------------
// semantic bounds

#[test]
fn invalid_hello() {
    for node in ["", "Edge-1", "edge_1", "a/b", "+", "#", &"n".repeat(64)] {
        let m = invalid(Message::Hello(Hello {
            node: node.into(),
            ..hello()
        }));
        assert!(m.starts_with("body.node: "), "{m}");
    }
    let m = invalid(Message::Hello(Hello {
        last_applied_revision: -1,
        ..hello()
    }));
    assert_eq!(m, "body.lastAppliedRevision: must not be negative (got -1)");
    let m = invalid(Message::Hello(Hello {
        agent_version: String::new(),
        ..hello()
    }));
    assert_eq!(m, "body.agentVersion: must not be empty");
    let m = invalid(Message::Hello(Hello {
        boot_id: "b".repeat(129),
        ..hello()
    }));
    assert_eq!(m, "body.bootId: must be at most 128 bytes (got 129)");
}

#[test]
fn hello_must_name_the_topic_node() {
    let payload = encode(&Message::Hello(hello()));
    assert!(decode_any("verge/v1/node/edge-1/hello", &payload).is_ok());
    let err = decode_any("verge/v1/node/edge-2/hello", &payload).unwrap_err();
    assert!(
        matches!(err, ProtoError::Invalid(ref m) if m.starts_with("body.node")),
        "{err}"
    );
}

#[test]
fn decode_any_rejects_bad_topics_first() {
    let payload = encode(&Message::Ack(Ack { revision: 1 }));
    for topic in [
        "verge/v1/node/Edge/ack",
        "verge/v1/node/edge-1/ack/x",
        "verge/v2/node/edge-1/ack",
        "verge/v1/node/+/ack",
    ] {
        let err = decode_any(topic, &payload).unwrap_err();
        assert!(
            matches!(err, ProtoError::InvalidTopic { .. }),
            "{topic}: {err}"
        );
    }
}

#[test]
fn invalid_heartbeat_and_ack() {
    let m = invalid(Message::Heartbeat(Heartbeat {
        sent_at_ms: -5,
        ..heartbeat()
    }));
    assert_eq!(m, "body.sentAtMs: must not be negative (got -5)");
    let m = invalid(Message::Ack(Ack { revision: -1 }));
    assert_eq!(m, "body.revision: must not be negative (got -1)");
}

#[test]
fn invalid_node_status() {
    let mut s = node_status();
    s.labels.insert("Bad Key".into(), "x".into());
    assert!(invalid(Message::NodeStatus(Box::new(s))).starts_with("body.labels: invalid key"));
    let mut s = node_status();
    s.labels.insert("ok".into(), "bad value!".into());
    assert!(invalid(Message::NodeStatus(Box::new(s))).starts_with("body.labels.ok: invalid value"));
    let mut s = node_status();
    s.capacity.insert("cpu".into(), String::new());
    assert!(invalid(Message::NodeStatus(Box::new(s))).starts_with("body.capacity.cpu"));
    let mut s = node_status();
    s.labels = (0..65).map(|i| (format!("k{i}"), "v".into())).collect();
    assert!(invalid(Message::NodeStatus(Box::new(s))).starts_with("body.labels: at most 64"));
    let mut s = node_status();
    let dup = s.conditions[0].clone();
    s.conditions.push(dup);
    assert_eq!(
        invalid(Message::NodeStatus(Box::new(s))),
        "body.conditions[2].type: duplicate condition Ready"
    );
    let mut s = node_status();
    s.conditions[1].message = "m".repeat(1025);
    assert!(invalid(Message::NodeStatus(Box::new(s))).starts_with("body.conditions[1].message"));
    let mut s = node_status();
    s.kernel = "k".repeat(129);
    assert!(invalid(Message::NodeStatus(Box::new(s))).starts_with("body.kernel"));
    let mut s = node_status();
    s.applied_revision = -1;
    assert!(invalid(Message::NodeStatus(Box::new(s))).starts_with("body.appliedRevision"));
}

#[test]
fn invalid_desired() {
    let m = invalid(Message::Desired(Desired {
        from_revision: 5,
        to_revision: 4,
        ..desired()
    }));
    assert_eq!(m, "body.toRevision: must not be below fromRevision (4 < 5)");
    let m = invalid(Message::Desired(Desired {
        from_revision: -1,
        ..desired()
    }));
    assert!(m.starts_with("body.fromRevision"), "{m}");
    let m = invalid(Message::Desired(Desired {
        snapshot: true,
        ..desired()
    }));
    assert_eq!(m, "body.deletes: must be empty in a snapshot");
    // An object that fails verge_api::validate_object.
    let mut d = desired();
    d.upserts[1].metadata.name = "Bad_Name".into();
    let m = invalid(Message::Desired(d));
    assert!(m.starts_with("body.upserts[1].metadata.name: "), "{m}");
    let mut d = desired();
    d.upserts[0].kind = "Pod".into();
    assert!(invalid(Message::Desired(d)).starts_with("body.upserts[0].kind"));
    let mut d = desired();
    d.upserts.push(app("web"));
    assert_eq!(
        invalid(Message::Desired(d)),
        "body.upserts[2]: duplicate App \"web\""
    );
    let mut d = desired();
    d.deletes.push(ObjectRef {
        kind: "App".into(),
        name: "web".into(),
    });
    assert!(invalid(Message::Desired(d)).starts_with("body.deletes[1]: App \"web\""));
    let mut d = desired();
    d.deletes[0].kind = "function".into();
    assert!(invalid(Message::Desired(d)).starts_with("body.deletes[0].kind: unknown kind"));
    let mut d = desired();
    d.deletes[0].name = "a.b".into();
    assert!(invalid(Message::Desired(d)).starts_with("body.deletes[0].name"));
    // An empty delta (from == to) is fine: nothing changed.
    let d = Desired {
        from_revision: 7,
        to_revision: 7,
        snapshot: false,
        upserts: vec![],
        deletes: vec![],
    };
    let msg = Message::Desired(d);
    assert_eq!(decode(Channel::Desired, &encode(&msg)), Ok(msg));
}

#[test]
fn desired_object_count_is_bounded() {
    let r = ObjectRef {
        kind: "App".into(),
        name: "x".into(),
    };
    let d = Desired {
        from_revision: 0,
        to_revision: 1,
        snapshot: false,
        upserts: vec![],
        deletes: vec![r; MAX_DESIRED_OBJECTS + 1],
    };
    assert!(invalid(Message::Desired(d)).starts_with("body.deletes: at most 10000 entries"));
}

#[test]
fn invalid_task_and_result() {
    let m = invalid(Message::Task(Task {
        function: "Resize".into(),
        ..task()
    }));
    assert!(m.starts_with("body.function"), "{m}");
    let m = invalid(Message::Task(Task {
        id: String::new(),
        ..task()
    }));
    assert_eq!(m, "body.id: must not be empty");
    let m = invalid(Message::Task(Task {
        idempotency_key: Some("k".repeat(129)),
        ..task()
    }));
    assert!(m.starts_with("body.idempotencyKey"), "{m}");
    let m = invalid(Message::Task(Task {
        input: json!("x".repeat(MAX_TASK_INPUT)),
        ..task()
    }));
    assert!(m.starts_with("body.input: must be at most"), "{m}");
    let m = invalid(Message::TaskResult(TaskResult {
        error: Some("boom".into()),
        ..task_result()
    }));
    assert_eq!(m, "body.error: must be absent when ok");
    let m = invalid(Message::TaskResult(TaskResult {
        ok: false,
        ..task_result()
    }));
    assert_eq!(m, "body.error: required when not ok");
    let m = invalid(Message::TaskResult(TaskResult {
        finished_at_ms: 1,
        ..task_result()
    }));
    assert!(m.starts_with("body.finishedAtMs"), "{m}");
    let m = invalid(Message::TaskResult(TaskResult {
        trigger: Some("Nightly_Audit".into()),
        ..task_result()
    }));
    assert!(m.starts_with("body.trigger"), "{m}");
    let m = invalid(Message::Task(Task {
        attempt: Some(0),
        ..task()
    }));
    assert_eq!(m, "body.attempt: must be at least 1");
    let m = invalid(Message::TaskResult(TaskResult {
        attempt: Some(0),
        ..task_result()
    }));
    assert_eq!(m, "body.attempt: must be at least 1");
    let m = invalid(Message::TaskResult(TaskResult {
        function: Some("audit".into()),
        ..task_result()
    }));
    assert_eq!(m, "body.trigger: required with function");
    let m = invalid(Message::TaskResult(TaskResult {
        trigger: Some("nightly-audit".into()),
        ..task_result()
    }));
    assert_eq!(m, "body.function: required with trigger");
    let answered = Message::TaskResult(TaskResult {
        attempt: Some(2),
        ..task_result()
    });
    assert_eq!(decode(Channel::Result, &encode(&answered)), Ok(answered));
    let fired = Message::TaskResult(TaskResult {
        function: Some("audit".into()),
        trigger: Some("nightly-audit".into()),
        ..task_result()
    });
    assert_eq!(decode(Channel::Result, &encode(&fired)), Ok(fired));
    let failed = Message::TaskResult(TaskResult {
        ok: false,
        output: None,
        error: Some("deadline exceeded".into()),
        ..task_result()
    });
    assert_eq!(decode(Channel::Result, &encode(&failed)), Ok(failed));
}

#[test]
fn invalid_log_batch() {
    let line = LogLine {
        ts_ms: 1,
        stream: LogStream::Stdout,
        line: "x".into(),
    };
    let m = invalid(Message::LogBatch(LogBatch {
        source: "s".into(),
        lines: vec![line.clone(); MAX_LOG_LINES + 1],
    }));
    assert_eq!(m, "body.lines: at most 1000 lines (got 1001)");
    // 1000 lines is the maximum (and still fits in 64 KiB when short).
    let ok = Message::LogBatch(LogBatch {
        source: "s".into(),
        lines: vec![line.clone(); MAX_LOG_LINES],
    });
    assert!(encode(&ok).len() < topics::MAX_LOG_PAYLOAD);
    assert_eq!(decode(Channel::Log, &encode(&ok)), Ok(ok));
    let m = invalid(Message::LogBatch(LogBatch {
        source: "s".into(),
        lines: vec![LogLine {
            line: "x".repeat(MAX_LOG_LINE + 1),
            ..line.clone()
        }],
    }));
    assert_eq!(
        m,
        "body.lines[0].line: must be at most 16384 bytes (got 16385)"
    );
    let m = invalid(Message::LogBatch(LogBatch {
        source: String::new(),
        lines: vec![],
    }));
    assert_eq!(m, "body.source: must not be empty");
}

#[test]
fn encode_checked_enforces_bounds_and_size() {
    assert!(matches!(
        encode_checked(&Message::Ack(Ack { revision: -1 })),
        Err(ProtoError::Invalid(_))
    ));
    let big = Message::LogBatch(LogBatch {
        source: "s".into(),
        lines: vec![
            LogLine {
                ts_ms: 1,
                stream: LogStream::Stdout,
                line: "x".repeat(MAX_LOG_LINE),
            };
            5
        ],
    });
    assert!(matches!(
        encode_checked(&big),
        Err(ProtoError::TooLarge {
            channel: Channel::Log,
            ..
        })
    ));
}

// ---------------------------------------------------------------------------------------
// properties

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("seq".to_owned()),
                    Just("sentAtMs".to_owned()),
                    Just("revision".to_owned()),
                    Just("node".to_owned()),
                    Just("upserts".to_owned()),
                    Just("lines".to_owned()),
                    "[a-zA-Z]{1,8}"
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_channel() -> impl Strategy<Value = Channel> {
    prop::sample::select(Channel::ALL.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decode_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        for channel in Channel::ALL {
            let _ = decode(channel, &bytes);
        }
    }

    #[test]
    fn decode_never_panics_on_envelopes(
        channel in arb_channel(),
        type_channel in arb_channel(),
        v in prop_oneof![Just(json!(1)), arb_json()],
        body in arb_json(),
    ) {
        let payload = serde_json::to_vec(
            &json!({"v": v, "type": type_channel.message_type(), "body": body}),
        )
        .unwrap();
        let _ = decode(channel, &payload);
        let _ = decode_any(&node_topic("edge-1", channel), &payload);
    }

    #[test]
    fn heartbeat_round_trips(seq in any::<u64>(), sent_at_ms in 0..=i64::MAX, ready in any::<bool>()) {
        let msg = Message::Heartbeat(Heartbeat { seq, sent_at_ms, ready });
        prop_assert_eq!(decode(Channel::Heartbeat, &encode(&msg)), Ok(msg));
    }

    #[test]
    fn ack_round_trips(revision in 0..=i64::MAX) {
        let msg = Message::Ack(Ack { revision });
        prop_assert_eq!(decode(Channel::Ack, &encode(&msg)), Ok(msg));
    }

    #[test]
    fn negative_acks_are_invalid(revision in i64::MIN..0) {
        let msg = Message::Ack(Ack { revision });
        prop_assert!(matches!(decode(Channel::Ack, &encode(&msg)), Err(ProtoError::Invalid(_))));
    }
}

#[test]
fn cert_messages_need_pem_of_the_right_kind() {
    let ok = Message::CertRequest(CertRequest {
        csr_pem: "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"
            .into(),
    });
    let bytes = encode_checked(&ok).unwrap();
    assert_eq!(decode(Channel::Renew, &bytes).unwrap(), ok);
    for (msg, field) in [
        (
            Message::CertRequest(CertRequest {
                csr_pem: String::new(),
            }),
            "body.csrPem",
        ),
        (
            Message::CertRequest(CertRequest {
                csr_pem: "-----BEGIN CERTIFICATE-----\n".into(),
            }),
            "body.csrPem",
        ),
        (
            Message::CertRequest(CertRequest {
                csr_pem: format!("-----BEGIN CERTIFICATE REQUEST-----{}", "A".repeat(9000)),
            }),
            "body.csrPem",
        ),
        (
            Message::CertIssued(CertIssued {
                cert_pem: "-----BEGIN CERTIFICATE-----\n".into(),
                not_after_ms: -1,
            }),
            "body.notAfterMs",
        ),
    ] {
        let err = encode_checked(&msg).unwrap_err().to_string();
        assert!(err.contains(field), "{err}");
        // The receiver refuses it too.
        assert!(decode(msg.channel(), &encode(&msg)).is_err());
    }
    // A cert on the renew channel is the wrong type.
    let issued = Message::CertIssued(CertIssued {
        cert_pem: "-----BEGIN CERTIFICATE-----\n".into(),
        not_after_ms: 1,
    });
    assert!(matches!(
        decode(Channel::Renew, &encode(&issued)),
        Err(ProtoError::WrongChannel { .. })
    ));
}
