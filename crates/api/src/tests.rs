//! Decoding and validation tests through the public API: every error path asserts the
//! exact field path and what the message says.

use proptest::prelude::*;
use serde_json::{Value, json};

use crate::specs::{AppSpec, FunctionSpec, NodeSpec, Spec, TaskSpec, TriggerSpec, decode_spec};
use crate::{
    API_VERSION, Bounds, Error, Format, Kind, Object, ObjectMeta, ValidationError, body_bounds,
    decode_object, kind_of, parse_documents, parse_documents_with, parse_value, validate_object,
};

// ---------------------------------------------------------------------------------
// helpers

fn good_app() -> Value {
    json!({
        "apiVersion": "verge.dev/v1",
        "kind": "App",
        "metadata": {"name": "web", "labels": {"tier": "frontend"}},
        "spec": {
            "version": "1.0.0",
            "workload": {"docker": {
                "image": "registry.local:5000/web:1.0.0",
                "ports": [{"containerPort": 8080}]
            }},
            "resources": {"cpu": "250m", "memory": "64Mi"}
        }
    })
}

fn good_function() -> Value {
    json!({
        "apiVersion": "verge.dev/v1",
        "kind": "Function",
        "metadata": {"name": "resize"},
        "spec": {"runtime": "python3", "handler": "handler.main", "code": "def main(e): pass"}
    })
}

fn good_trigger() -> Value {
    json!({
        "apiVersion": "verge.dev/v1",
        "kind": "Trigger",
        "metadata": {"name": "nightly"},
        "spec": {"schedule": "0 3 * * *", "function": "resize"}
    })
}

fn good_task() -> Value {
    json!({
        "apiVersion": "verge.dev/v1",
        "kind": "Task",
        "metadata": {"name": "once"},
        "spec": {"function": "resize", "target": {"node": "edge-1"}}
    })
}

fn good_node() -> Value {
    json!({
        "apiVersion": "verge.dev/v1",
        "kind": "Node",
        "metadata": {"name": "edge-1"}
    })
}

/// Sets the value at a JSON pointer, creating the last key in its parent object.
fn set(mut v: Value, pointer: &str, new: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer");
    let key = key.replace("~1", "/").replace("~0", "~");
    let parent = v.pointer_mut(parent).expect("parent exists");
    match parent {
        Value::Object(map) => {
            map.insert(key, new);
        }
        Value::Array(items) => {
            let i: usize = key.parse().expect("index");
            items[i] = new;
        }
        _ => panic!("parent of {pointer} is not a container"),
    }
    v
}

fn remove(mut v: Value, pointer: &str) -> Value {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer");
    v.pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .expect("parent object")
        .remove(key)
        .expect("key exists");
    v
}

fn invalid(v: Value) -> ValidationError {
    match decode_object(v) {
        Err(Error::Invalid(e)) => e,
        other => panic!("expected Error::Invalid, got {other:?}"),
    }
}

/// Asserts the exact field and that the message contains `needle`.
#[track_caller]
fn assert_invalid(v: Value, field: &str, needle: &str) {
    let e = invalid(v);
    assert_eq!(e.field, field, "field of error {e}");
    assert!(
        e.message.contains(needle),
        "message {:?} lacks {needle:?}",
        e.message
    );
    assert!(!e.message.ends_with('.'), "trailing period: {e}");
    assert!(
        e.message.chars().next().is_some_and(|c| !c.is_uppercase()),
        "message must start lowercase: {e}"
    );
}

fn malformed(input: &str, format: Format) -> (&'static str, usize, String) {
    match parse_documents(input, format) {
        Err(Error::Malformed {
            format,
            document,
            message,
        }) => (format, document, message),
        other => panic!("expected Error::Malformed, got {other:?}"),
    }
}

fn parse_invalid(input: &str, format: Format) -> ValidationError {
    match parse_documents(input, format) {
        Err(Error::Invalid(e)) => e,
        other => panic!("expected Error::Invalid, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------
// malformed input

#[test]
fn malformed_yaml() {
    let (format, document, message) = malformed("apiVersion: [verge\nkind: App\n", Format::Yaml);
    assert_eq!(format, "yaml");
    assert_eq!(document, 1);
    assert!(message.contains("line"), "{message}");
}

#[test]
fn malformed_yaml_names_the_document() {
    let input = "apiVersion: verge.dev/v1\n---\nkind: \"App\n";
    let (_, document, message) = malformed(input, Format::Yaml);
    assert_eq!(document, 2);
    assert!(message.contains("line 3"), "{message}");
}

#[test]
fn malformed_json() {
    let (format, document, message) = malformed("{\"apiVersion\": }", Format::Json);
    assert_eq!(format, "json");
    assert_eq!(document, 1);
    assert!(message.contains("line 1 column"), "{message}");
    let (_, _, message) = malformed("", Format::Json);
    assert!(message.contains("EOF"), "{message}");
}

#[test]
fn duplicate_keys_are_malformed() {
    let (_, _, message) = malformed("kind: App\nkind: Node\n", Format::Yaml);
    assert!(message.contains("duplicate key \"kind\""), "{message}");
    let (_, _, message) = malformed(r#"{"kind": "App", "kind": "Node"}"#, Format::Json);
    assert!(message.contains("duplicate key \"kind\""), "{message}");
}

#[test]
fn yaml_tags_are_malformed() {
    let (format, _, _) = malformed("kind: !App x\n", Format::Yaml);
    assert_eq!(format, "yaml");
}

#[test]
fn malformed_display() {
    let err = parse_documents("[", Format::Json).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("malformed json in document 1: "),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------
// bounds: alias expansion and nesting

/// A billion-laughs document: nine levels of nine aliases to the level below.
fn laughs() -> String {
    let mut doc = String::from("a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for (prev, name) in "abcdefgh".chars().zip("bcdefghi".chars()) {
        let refs = vec![format!("*{prev}"); 9].join(", ");
        doc.push_str(&format!("{name}: &{name} [{refs}]\n"));
    }
    doc
}

fn limit(r: crate::Result<impl std::fmt::Debug>) -> (&'static str, usize, String) {
    match r {
        Err(Error::Limit {
            format,
            document,
            message,
        }) => (format, document, message),
        other => panic!("expected Error::Limit, got {other:?}"),
    }
}

/// The quadratic shape: one wide anchored list, aliased as often as fits in ~60 KB.
fn wide_laughs() -> String {
    let mut doc = format!("a: &a [{}]\nb: [", vec!["lol"; 5000].join(", "));
    doc.push_str(&vec!["*a"; 7000].join(", "));
    doc.push_str("]\n");
    doc
}

#[test]
fn alias_bombs_are_refused_at_the_bound() {
    // Nested laughs: serde_norway's repetition limit; wide ones: our byte bound.
    let (format, document, _) = limit(parse_documents(&laughs(), Format::Yaml));
    assert_eq!((format, document), ("yaml", 1));
    let doc = wide_laughs();
    let (_, _, message) = limit(parse_documents(&doc, Format::Yaml));
    // Twice the input (it is longer than 32 KiB).
    let bound = 2 * doc.len();
    assert!(
        message.contains(&format!("expands beyond the limit of {bound} bytes")),
        "{message}"
    );
    // One long string and many aliases of it, under a body cap of 64 KiB.
    let mut doc = format!("big: &s {}\nrefs:\n", "x".repeat(20_000));
    for _ in 0..100 {
        doc.push_str("- *s\n");
    }
    let bounds = body_bounds(64 * 1024, doc.len());
    let (_, _, message) = limit(parse_documents_with(&doc, Format::Yaml, bounds));
    assert!(message.contains("65536 bytes"), "{message}");
    let err = parse_documents(&wide_laughs(), Format::Yaml).unwrap_err();
    assert!(err.to_string().starts_with("yaml: document 1: "), "{err}");
}

#[test]
fn the_fuzz_seeds_bombs_are_refused() {
    let seeds = [
        include_str!("../../../fuzz/seeds/manifest_parse/alias-laughs.yaml"),
        include_str!("../../../fuzz/seeds/manifest_parse/alias-wide.yaml"),
        include_str!("../../../fuzz/seeds/manifest_parse/alias-string.yaml"),
        include_str!("../../../fuzz/seeds/manifest_parse/deep.yaml"),
    ];
    for seed in seeds {
        limit(parse_documents(seed, Format::Yaml));
    }
    let deep = include_str!("../../../fuzz/seeds/manifest_parse/deep.json");
    limit(parse_documents(deep, Format::Json));
}

#[test]
fn the_budget_spans_the_whole_stream() {
    // Each document fits alone; together they do not.
    let one = serde_norway::to_string(&good_app()).unwrap();
    let stream = format!("{one}---\n{one}---\n{one}");
    assert_eq!(parse_documents(&one, Format::Yaml).unwrap().len(), 1);
    let bounds = Bounds {
        max_bytes: one.len() * 2,
        max_depth: 64,
    };
    let (_, document, _) = limit(parse_documents_with(&stream, Format::Yaml, bounds));
    assert_eq!(document, 3);
}

#[test]
fn expansion_is_about_twice_the_input_within_the_cap() {
    use crate::expansion_bound;
    let mib = 1024 * 1024;
    assert_eq!(
        expansion_bound(100, mib),
        64 * 1024,
        "small inputs get the floor"
    );
    assert_eq!(expansion_bound(100_000, mib), 200_000);
    assert_eq!(expansion_bound(600_000, mib), mib, "never past the cap");
    assert_eq!(expansion_bound(100, 1000), 1000);
    assert_eq!(
        expansion_bound(3 * mib, mib),
        3 * mib,
        "an input past the cap may still hold its own length (the CLI's big files)"
    );
}

#[test]
fn moderate_aliases_are_still_allowed() {
    let doc = "apiVersion: verge.dev/v1\nkind: App\nmetadata:\n  name: web\n  labels: &l {tier: a}\n  annotations: *l\nspec:\n  version: 1.0.0\n  workload: {docker: {image: x}}\n";
    let objs = parse_documents(doc, Format::Yaml).unwrap();
    assert_eq!(objs[0].metadata.annotations["tier"], "a");
}

#[test]
fn nesting_is_bounded_in_both_formats() {
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let (format, _, message) = limit(parse_documents(&deep(65), Format::Json));
    assert_eq!(format, "json");
    assert!(
        message.contains("nested deeper than the limit of 64 levels"),
        "{message}"
    );
    let (format, _, _) = limit(parse_documents(&deep(65), Format::Yaml));
    assert_eq!(format, "yaml");
    // 64 levels parse (and then fail validation as a non-object, which is fine).
    assert!(matches!(
        parse_documents(&deep(64), Format::Json),
        Err(Error::Invalid(_))
    ));
    // Far past serde's own recursion limit: still our bound, not a crash.
    limit(parse_documents(&deep(100_000), Format::Json));
}

#[test]
fn parse_value_is_bounded_too() {
    let bounds = body_bounds(4096, 1024);
    limit(parse_value(&laughs(), Format::Yaml, bounds));
    assert_eq!(
        parse_value("[1, 2]", Format::Json, bounds).unwrap(),
        json!([1, 2])
    );
    assert_eq!(parse_value("", Format::Yaml, bounds).unwrap(), Value::Null);
    assert!(matches!(
        parse_value("a: 1\n---\nb: 2\n", Format::Yaml, bounds),
        Err(Error::Malformed { document: 2, .. })
    ));
    assert!(matches!(
        parse_value("[1] x", Format::Json, bounds),
        Err(Error::Malformed { .. })
    ));
    let unbounded = Bounds::UNBOUNDED;
    let first_line = laughs().lines().next().unwrap().to_string();
    assert!(parse_value(&first_line, Format::Yaml, unbounded).is_ok());
}

// ---------------------------------------------------------------------------------
// envelope

#[test]
fn unknown_kind() {
    let e = invalid(set(good_app(), "/kind", json!("Ap")));
    assert_eq!(e.field, "kind");
    assert_eq!(
        e.message,
        "unknown kind \"Ap\"; expected one of Node, App, Function, Trigger, Task, Config, Secret, Bucket"
    );
    // Kind names are exact.
    assert_invalid(
        set(good_app(), "/kind", json!("app")),
        "kind",
        "unknown kind \"app\"",
    );
}

#[test]
fn kind_must_be_a_string() {
    assert_invalid(
        set(good_app(), "/kind", json!(5)),
        "kind",
        "invalid type: number, expected a string",
    );
    assert_invalid(remove(good_app(), "/kind"), "kind", "missing field");
}

#[test]
fn wrong_api_version() {
    let e = invalid(set(good_app(), "/apiVersion", json!("v1")));
    assert_eq!(e.field, "apiVersion");
    assert_eq!(
        e.message,
        "unsupported apiVersion \"v1\", expected \"verge.dev/v1\""
    );
    assert_invalid(
        remove(good_app(), "/apiVersion"),
        "apiVersion",
        "missing field",
    );
}

#[test]
fn unknown_top_level_field() {
    let e = invalid(set(good_app(), "/specc", json!({})));
    assert_eq!(e.field, "specc");
    assert_eq!(
        e.message,
        "unknown field, expected one of apiVersion, kind, metadata, spec, status"
    );
}

#[test]
fn document_must_be_an_object() {
    let e = invalid(json!("hello"));
    assert_eq!(e.field, "");
    assert!(e.message.contains("must be an object"), "{e}");
    assert!(e.message.contains("found string"), "{e}");
}

#[test]
fn missing_metadata() {
    assert_invalid(remove(good_app(), "/metadata"), "metadata", "missing field");
    assert_invalid(
        set(good_app(), "/metadata", json!("web")),
        "metadata",
        "invalid type: string \"web\"",
    );
}

#[test]
fn unknown_metadata_field() {
    let e = invalid(set(good_app(), "/metadata/namespace", json!("default")));
    assert_eq!(e.field, "metadata.namespace");
    assert!(
        e.message
            .starts_with("unknown field, expected one of name, labels"),
        "{e}"
    );
}

#[test]
fn status_must_be_an_object() {
    assert_invalid(
        set(good_app(), "/status", json!([1])),
        "status",
        "must be an object",
    );
    let obj = decode_object(set(good_app(), "/status", json!({"phase": "Running"}))).unwrap();
    assert_eq!(obj.status, json!({"phase": "Running"}));
    let obj = decode_object(set(good_app(), "/status", Value::Null)).unwrap();
    assert!(obj.status.is_null());
}

#[test]
fn invalid_error_display_is_field_colon_message() {
    let err = decode_object(set(good_app(), "/metadata/name", json!("Web"))).unwrap_err();
    assert_eq!(
        err.to_string(),
        "metadata.name: must be a DNS-1123 label (lowercase letters, digits and '-', at most \
         63 characters)"
    );
}

// ---------------------------------------------------------------------------------
// metadata

#[test]
fn invalid_names() {
    for name in [
        "Web",
        "web_1",
        "-web",
        "web-",
        "a.b",
        &"a".repeat(64),
        &"a".repeat(254),
    ] {
        let e = invalid(set(good_app(), "/metadata/name", json!(name)));
        assert_eq!(e.field, "metadata.name", "{name}");
        assert_eq!(
            e.message,
            "must be a DNS-1123 label (lowercase letters, digits and '-', at most 63 characters)",
            "{name}"
        );
    }
    assert_invalid(
        set(good_app(), "/metadata/name", json!("")),
        "metadata.name",
        "must not be empty",
    );
    assert_invalid(
        remove(good_app(), "/metadata/name"),
        "metadata.name",
        "missing field",
    );
    assert_invalid(
        set(good_app(), "/metadata/name", json!(7)),
        "metadata.name",
        "invalid type: integer `7`, expected a string",
    );
}

#[test]
fn bad_label_key() {
    assert_invalid(
        set(good_app(), "/metadata/labels/bad key", json!("x")),
        "metadata.labels.bad key",
        "invalid key \"bad key\"",
    );
    assert_invalid(
        set(good_app(), "/metadata/labels/Example.com~1tier", json!("x")),
        "metadata.labels.Example.com/tier",
        "prefix must be a DNS-1123 subdomain",
    );
    let long = "a".repeat(64);
    assert_invalid(
        set(good_app(), &format!("/metadata/labels/{long}"), json!("x")),
        &format!("metadata.labels.{long}"),
        "name must be 1 to 63 characters",
    );
    // A valid prefixed key passes.
    decode_object(set(
        good_app(),
        "/metadata/labels/app.kubernetes.io~1name",
        json!("web"),
    ))
    .unwrap();
}

#[test]
fn bad_label_value() {
    assert_invalid(
        set(good_app(), "/metadata/labels/tier", json!("front end")),
        "metadata.labels.tier",
        "invalid value \"front end\"",
    );
    assert_invalid(
        set(good_app(), "/metadata/labels/tier", json!("a".repeat(64))),
        "metadata.labels.tier",
        "invalid value",
    );
    assert_invalid(
        set(good_app(), "/metadata/labels/tier", json!(1)),
        "metadata.labels.tier",
        "invalid type: integer `1`, expected a string",
    );
    // Empty values are allowed.
    decode_object(set(good_app(), "/metadata/labels/tier", json!(""))).unwrap();
}

#[test]
fn too_many_labels() {
    let labels: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("l{i}"), json!("v"))).collect();
    assert_invalid(
        set(good_app(), "/metadata/labels", Value::Object(labels)),
        "metadata.labels",
        "too many entries (65, at most 64)",
    );
}

#[test]
fn bad_annotations() {
    assert_invalid(
        set(
            good_app(),
            "/metadata/annotations",
            json!({"no spaces": "x"}),
        ),
        "metadata.annotations.no spaces",
        "invalid key",
    );
    assert_invalid(
        set(
            good_app(),
            "/metadata/annotations",
            json!({"big": "x".repeat(256 * 1024)}),
        ),
        "metadata.annotations",
        "too large",
    );
    // Annotation values are free-form.
    decode_object(set(
        good_app(),
        "/metadata/annotations",
        json!({"verge.dev/note": "anything goes: {}"}),
    ))
    .unwrap();
}

#[test]
fn server_fields_are_bounded() {
    assert_invalid(
        set(good_app(), "/metadata/uid", json!("u".repeat(129))),
        "metadata.uid",
        "too long",
    );
    assert_invalid(
        set(good_app(), "/metadata/resourceVersion", json!("1\n")),
        "metadata.resourceVersion",
        "control characters",
    );
    assert_invalid(
        set(
            good_app(),
            "/metadata/deletionTimestamp",
            json!("t".repeat(129)),
        ),
        "metadata.deletionTimestamp",
        "too long",
    );
}

#[test]
fn finalizers_are_bounded_qualified_names() {
    decode_object(set(
        good_app(),
        "/metadata/finalizers",
        json!(["example.com/cleanup", "backup"]),
    ))
    .unwrap();
    assert_invalid(
        set(good_app(), "/metadata/finalizers", json!(["ok", "Not OK!"])),
        "metadata.finalizers[1]",
        "invalid key",
    );
    assert_invalid(
        set(good_app(), "/metadata/finalizers", json!(["a/b", "a/b"])),
        "metadata.finalizers[1]",
        "duplicate finalizer",
    );
    let many: Vec<String> = (0..17).map(|i| format!("f{i}")).collect();
    assert_invalid(
        set(good_app(), "/metadata/finalizers", json!(many)),
        "metadata.finalizers",
        "too many finalizers (17, at most 16)",
    );
    assert_eq!(
        invalid(set(good_app(), "/metadata/finalizers", json!("one"))).field,
        "metadata.finalizers"
    );
}

// ---------------------------------------------------------------------------------
// App

#[test]
fn unknown_nested_field() {
    let e = invalid(set(good_app(), "/spec/workload/docker/imagee", json!("x")));
    assert_eq!(e.field, "spec.workload.docker.imagee");
    assert!(
        e.message.starts_with(
            "unknown field, expected one of image, command, args, env, secretEnv, ports"
        ),
        "{e}"
    );
}

#[test]
fn unknown_field_in_list_element() {
    assert_invalid(
        set(good_app(), "/spec/workload/docker/ports/0/port", json!(1)),
        "spec.workload.docker.ports[0].port",
        "unknown field, expected one of containerPort, hostPort, protocol",
    );
}

#[test]
fn unknown_spec_field() {
    assert_invalid(
        set(good_app(), "/spec/replicas", json!(3)),
        "spec.replicas",
        "unknown field",
    );
}

#[test]
fn missing_spec() {
    assert_invalid(remove(good_app(), "/spec"), "spec", "missing field");
    assert_invalid(
        set(good_app(), "/spec", Value::Null),
        "spec",
        "missing field",
    );
    assert_invalid(
        set(good_app(), "/spec", json!("x")),
        "spec",
        "invalid type: string \"x\"",
    );
}

#[test]
fn missing_workload() {
    let e = invalid(remove(good_app(), "/spec/workload"));
    assert_eq!(e.field, "spec.workload");
    assert_eq!(e.message, "missing field");
}

#[test]
fn missing_image() {
    assert_invalid(
        remove(good_app(), "/spec/workload/docker/image"),
        "spec.workload.docker.image",
        "missing field",
    );
}

#[test]
fn no_workload_set() {
    let e = invalid(set(good_app(), "/spec/workload", json!({})));
    assert_eq!(e.field, "spec.workload");
    assert_eq!(
        e.message,
        "exactly one of docker, native, function must be set"
    );
}

#[test]
fn two_workloads() {
    let e = invalid(set(
        good_app(),
        "/spec/workload/native",
        json!({"artifact": {"sha256": "a".repeat(64)}, "command": "bin/web"}),
    ));
    assert_eq!(e.field, "spec.workload");
    assert_eq!(
        e.message,
        "only one of docker, native, function may be set (found docker and native)"
    );
}

#[test]
fn non_semver_version() {
    for version in ["1.0", "v1", "1", "1.0.0.0", ""] {
        let e = invalid(set(good_app(), "/spec/version", json!(version)));
        assert_eq!(e.field, "spec.version");
        assert!(
            e.message
                .starts_with(&format!("{version:?} is not a semantic version: ")),
            "{e}"
        );
    }
    // Unquoted YAML `1.0` is a number, not a string.
    let yaml = include_str!("../../../examples/app.yaml").replace("1.0.0\n", "1.0\n");
    let e = parse_invalid(&yaml, Format::Yaml);
    assert_eq!(e.field, "spec.version");
    assert!(e.message.contains("expected a string"), "{e}");
}

#[test]
fn bad_cpu_quantities() {
    for cpu in ["lots", "1.5m", "-1", "1 core", "0.0001"] {
        assert_invalid(
            set(good_app(), "/spec/resources/cpu", json!(cpu)),
            "spec.resources.cpu",
            &format!("invalid cpu quantity {cpu:?}"),
        );
    }
    assert_invalid(
        set(good_app(), "/spec/resources/cpu", json!("0m")),
        "spec.resources.cpu",
        "must be greater than zero",
    );
    assert_invalid(
        set(good_app(), "/spec/resources/cpu", json!(-1)),
        "spec.resources.cpu",
        "invalid cpu quantity \"-1\"",
    );
    assert_invalid(
        set(good_app(), "/spec/resources/cpu", json!(true)),
        "spec.resources.cpu",
        "invalid type: boolean `true`, expected a quantity string or number",
    );
    assert_invalid(
        set(good_app(), "/spec/resources/cpu", json!({"m": 1})),
        "spec.resources.cpu",
        "invalid type",
    );
}

#[test]
fn bad_memory_quantities() {
    for memory in ["64MB", "64mi", "lots", "128m", "-1Gi", "1e6"] {
        assert_invalid(
            set(good_app(), "/spec/resources/memory", json!(memory)),
            "spec.resources.memory",
            &format!("invalid memory quantity {memory:?}"),
        );
    }
    assert_invalid(
        set(good_app(), "/spec/resources/memory", json!("0")),
        "spec.resources.memory",
        "must be greater than zero",
    );
}

#[test]
fn numeric_quantities_are_accepted_and_normalized_to_strings() {
    let yaml = include_str!("../../../examples/app.yaml")
        .replace("cpu: 250m", "cpu: 0.5")
        .replace("memory: 64Mi", "memory: 1000000");
    let objs = parse_documents(&yaml, Format::Yaml).unwrap();
    assert_eq!(
        objs[0].spec["resources"],
        json!({"cpu": "0.5", "memory": "1000000"})
    );
    let obj = decode_object(set(
        good_function(),
        "/spec/resources",
        json!({"memory": 1024}),
    ))
    .unwrap();
    assert_eq!(obj.spec["resources"], json!({"memory": "1024"}));
    let obj = decode_object(set(good_app(), "/spec/resources/cpu", Value::Null)).unwrap();
    assert_eq!(obj.spec["resources"], json!({"memory": "64Mi"}));
}

#[test]
fn port_zero() {
    assert_invalid(
        set(
            good_app(),
            "/spec/workload/docker/ports/0/containerPort",
            json!(0),
        ),
        "spec.workload.docker.ports[0].containerPort",
        "must be between 1 and 65535 (found 0)",
    );
}

#[test]
fn port_out_of_range_or_wrong_type() {
    assert_invalid(
        set(
            good_app(),
            "/spec/workload/docker/ports/0/containerPort",
            json!(70000),
        ),
        "spec.workload.docker.ports[0].containerPort",
        "expected u16",
    );
    assert_invalid(
        set(
            good_app(),
            "/spec/workload/docker/ports/0/containerPort",
            json!("80"),
        ),
        "spec.workload.docker.ports[0].containerPort",
        "invalid type: string \"80\", expected u16",
    );
    assert_invalid(
        remove(good_app(), "/spec/workload/docker/ports/0/containerPort"),
        "spec.workload.docker.ports[0].containerPort",
        "missing field",
    );
}

#[test]
fn host_ports() {
    assert_invalid(
        set(
            good_app(),
            "/spec/workload/docker/ports",
            json!([{"containerPort": 80, "hostPort": 0}]),
        ),
        "spec.workload.docker.ports[0].hostPort",
        "must be between 1 and 65535",
    );
    assert_invalid(
        set(
            good_app(),
            "/spec/workload/docker/ports",
            json!([
                {"containerPort": 80, "hostPort": 8080},
                {"containerPort": 81, "hostPort": 8080, "protocol": "udp"},
                {"containerPort": 82, "hostPort": 8080, "protocol": "tcp"}
            ]),
        ),
        "spec.workload.docker.ports[2].hostPort",
        "duplicate hostPort 8080/tcp (also used by ports[0])",
    );
    assert_invalid(
        set(
            good_app(),
            "/spec/workload/docker/ports/0/protocol",
            json!("TCP"),
        ),
        "spec.workload.docker.ports[0].protocol",
        "unknown variant \"TCP\", expected tcp or udp",
    );
}

#[test]
fn too_many_ports() {
    let ports: Vec<Value> = (1..=65).map(|p| json!({"containerPort": p})).collect();
    assert_invalid(
        set(good_app(), "/spec/workload/docker/ports", json!(ports)),
        "spec.workload.docker.ports",
        "too many entries (65, at most 64)",
    );
}

#[test]
fn bad_image() {
    assert_invalid(
        set(good_app(), "/spec/workload/docker/image", json!("")),
        "spec.workload.docker.image",
        "must not be empty",
    );
    assert_invalid(
        set(
            good_app(),
            "/spec/workload/docker/image",
            json!("web latest"),
        ),
        "spec.workload.docker.image",
        "must not contain whitespace",
    );
    assert_invalid(
        set(
            good_app(),
            "/spec/workload/docker/image",
            json!("a".repeat(513)),
        ),
        "spec.workload.docker.image",
        "too long (513 bytes, at most 512)",
    );
}

#[test]
fn bad_args_and_env() {
    let args: Vec<String> = (0..65).map(|i| i.to_string()).collect();
    assert_invalid(
        set(good_app(), "/spec/workload/docker/args", json!(args)),
        "spec.workload.docker.args",
        "too many entries (65, at most 64)",
    );
    assert_invalid(
        set(
            good_app(),
            "/spec/workload/docker/command",
            json!(["ok", "x".repeat(4097)]),
        ),
        "spec.workload.docker.command[1]",
        "too long",
    );
    assert_invalid(
        set(good_app(), "/spec/workload/docker/args", json!(["a\0b"])),
        "spec.workload.docker.args[0]",
        "must not contain NUL bytes",
    );
    assert_invalid(
        set(
            good_app(),
            "/spec/workload/docker/env",
            json!({"1BAD": "x"}),
        ),
        "spec.workload.docker.env.1BAD",
        "invalid environment variable name \"1BAD\"",
    );
    assert_invalid(
        set(good_app(), "/spec/workload/docker/env", json!({"A-B": "x"})),
        "spec.workload.docker.env.A-B",
        "invalid environment variable name",
    );
    let env: serde_json::Map<String, Value> =
        (0..257).map(|i| (format!("V{i}"), json!("x"))).collect();
    assert_invalid(
        set(good_app(), "/spec/workload/docker/env", Value::Object(env)),
        "spec.workload.docker.env",
        "too many entries (257, at most 256)",
    );
}

#[test]
fn bad_volumes_and_registry_auth() {
    assert_invalid(
        set(
            good_app(),
            "/spec/workload/docker/volumes",
            json!([{"hostPath": "data", "containerPath": "/data"}]),
        ),
        "spec.workload.docker.volumes[0].hostPath",
        "must be an absolute path (found \"data\")",
    );
    assert_invalid(
        set(
            good_app(),
            "/spec/workload/docker/volumes",
            json!([{"hostPath": "/data", "containerPath": "data"}]),
        ),
        "spec.workload.docker.volumes[0].containerPath",
        "must be an absolute path",
    );
    assert_invalid(
        set(
            good_app(),
            "/spec/workload/docker/registryAuth",
            json!({"name": "Creds"}),
        ),
        "spec.workload.docker.registryAuth.name",
        "must be a DNS-1123 label",
    );
}

#[test]
fn secret_kind_and_secret_env() {
    let secret = json!({"apiVersion": "verge.dev/v1", "kind": "Secret", "metadata": {"name": "db"},
        "spec": {"data": {"password": "hunter2"}}});
    decode_object(secret.clone()).unwrap();
    assert_invalid(
        set(secret.clone(), "/spec/data", json!({"pass word": "x"})),
        "spec.data.pass word",
        "invalid key",
    );
    assert_invalid(
        set(secret, "/spec/placement", json!({})),
        "spec.placement",
        "unknown field",
    );
    let with_ref = set(
        good_app(),
        "/spec/workload/docker/secretEnv",
        json!({"DB_PASSWORD": {"name": "db", "key": "password"}}),
    );
    let obj = decode_object(with_ref.clone()).unwrap();
    let Spec::App(app) = decode_spec(Kind::App, &obj.spec).unwrap() else {
        panic!("not an app");
    };
    let uses = app.secret_uses();
    assert_eq!(uses.len(), 1);
    assert_eq!(uses[0].field, "spec.workload.docker.secretEnv.DB_PASSWORD");
    assert_invalid(
        set(
            with_ref,
            "/spec/workload/docker/secretEnv/DB_PASSWORD/name",
            json!("Db"),
        ),
        "spec.workload.docker.secretEnv.DB_PASSWORD.name",
        "must be a DNS-1123 label",
    );
    let f = set(
        good_function(),
        "/spec/secretEnv",
        json!({"TOKEN": {"name": "api", "key": "token"}}),
    );
    decode_object(f.clone()).unwrap();
    assert_invalid(
        set(f.clone(), "/spec/env", json!({"TOKEN": "plain"})),
        "spec.secretEnv.TOKEN",
        "also set in env",
    );
    assert_invalid(
        set(f, "/spec/secretEnv/TOKEN", json!({"name": "api"})),
        "spec.secretEnv.TOKEN.key",
        "missing field",
    );
}

#[test]
fn placement() {
    assert_invalid(
        set(
            good_app(),
            "/spec/placement",
            json!({"replicas": 2, "replicasPerNode": 1}),
        ),
        "spec.placement",
        "only one of replicasPerNode, replicas may be set",
    );
    assert_invalid(
        set(good_app(), "/spec/placement", json!({"replicasPerNode": 0})),
        "spec.placement.replicasPerNode",
        "must be between 1 and 100 (found 0)",
    );
    assert_invalid(
        set(good_app(), "/spec/placement", json!({"replicas": 10001})),
        "spec.placement.replicas",
        "must be between 0 and 10000",
    );
    assert_invalid(
        set(
            good_app(),
            "/spec/placement",
            json!({"nodeSelector": {"region": "eu west"}}),
        ),
        "spec.placement.nodeSelector.region",
        "invalid value \"eu west\"",
    );
    assert_invalid(
        set(good_app(), "/spec/restartPolicy", json!("always")),
        "spec.restartPolicy",
        "unknown variant \"always\", expected one of Always, OnFailure, Never",
    );
}

#[test]
fn native_workload() {
    let native = json!({
        "artifact": {"sha256": "ab".repeat(32), "url": "https://artifacts.local/web.tar.gz"},
        "command": "bin/web",
        "args": ["--port", "8080"],
        "workdir": "/srv"
    });
    let app = set(
        remove(good_app(), "/spec/workload/docker"),
        "/spec/workload/native",
        native,
    );
    decode_object(app.clone()).unwrap();
    assert_invalid(
        set(
            app.clone(),
            "/spec/workload/native/artifact/sha256",
            json!("AB".repeat(32)),
        ),
        "spec.workload.native.artifact.sha256",
        "must be 64 lowercase hexadecimal digits",
    );
    assert_invalid(
        remove(app.clone(), "/spec/workload/native/artifact/sha256"),
        "spec.workload.native.artifact.sha256",
        "missing field",
    );
    assert_invalid(
        set(
            app.clone(),
            "/spec/workload/native/artifact/url",
            json!("ftp://x/y"),
        ),
        "spec.workload.native.artifact.url",
        "must be an http or https URL",
    );
    assert_invalid(
        remove(app.clone(), "/spec/workload/native/command"),
        "spec.workload.native.command",
        "missing field",
    );
    assert_invalid(
        set(app.clone(), "/spec/workload/native/command", json!("")),
        "spec.workload.native.command",
        "must not be empty",
    );
    assert_invalid(
        set(app, "/spec/workload/native/workdir", json!("")),
        "spec.workload.native.workdir",
        "must not be empty",
    );
}

#[test]
fn function_workload() {
    let app = set(
        remove(good_app(), "/spec/workload/docker"),
        "/spec/workload/function",
        json!({"function": "resize"}),
    );
    decode_object(app.clone()).unwrap();
    assert_invalid(
        set(app, "/spec/workload/function/function", json!("Resize")),
        "spec.workload.function.function",
        "must be a DNS-1123 label",
    );
}

// ---------------------------------------------------------------------------------
// Function

#[test]
fn builtin_with_code() {
    let f = set(good_function(), "/spec/runtime", json!("builtin"));
    let f = set(f, "/spec/handler", json!("image.resize"));
    let e = invalid(f.clone());
    assert_eq!(e.field, "spec.code");
    assert_eq!(e.message, "must not be set for runtime builtin");
    let f = remove(f, "/spec/code");
    decode_object(f.clone()).unwrap();
    assert_invalid(
        set(f, "/spec/artifact", json!({"sha256": "0".repeat(64)})),
        "spec.artifact",
        "must not be set for runtime builtin",
    );
}

#[test]
fn python_without_code_or_artifact() {
    let e = invalid(remove(good_function(), "/spec/code"));
    assert_eq!(e.field, "spec");
    assert_eq!(
        e.message,
        "exactly one of code, artifact must be set for runtime python3"
    );
    assert_invalid(
        set(
            good_function(),
            "/spec/artifact",
            json!({"sha256": "0".repeat(64)}),
        ),
        "spec",
        "only one of code, artifact may be set (found code and artifact)",
    );
    let with_artifact = set(
        remove(good_function(), "/spec/code"),
        "/spec/artifact",
        json!({"sha256": "0".repeat(64)}),
    );
    decode_object(with_artifact).unwrap();
    assert_invalid(
        set(good_function(), "/spec/code", json!("")),
        "spec.code",
        "must not be empty",
    );
    assert_invalid(
        set(
            good_function(),
            "/spec/code",
            json!("x".repeat(256 * 1024 + 1)),
        ),
        "spec.code",
        "too long",
    );
}

#[test]
fn bad_handler() {
    for handler in [
        "main",
        "handler.",
        ".main",
        "1x.main",
        "my-mod.main",
        "a b.c",
    ] {
        assert_invalid(
            set(good_function(), "/spec/handler", json!(handler)),
            "spec.handler",
            &format!("invalid handler {handler:?} for runtime python3: expected module.function"),
        );
    }
    assert_invalid(
        set(good_function(), "/spec/handler", json!("")),
        "spec.handler",
        "must not be empty",
    );
    let nodejs = set(good_function(), "/spec/runtime", json!("nodejs"));
    decode_object(set(nodejs.clone(), "/spec/handler", json!("index.handler"))).unwrap();
    assert_invalid(
        set(nodejs, "/spec/handler", json!("index")),
        "spec.handler",
        "for runtime nodejs",
    );
    let builtin = remove(
        set(good_function(), "/spec/runtime", json!("builtin")),
        "/spec/code",
    );
    for handler in ["Image.Resize", "image..resize", "image.", "1image"] {
        assert_invalid(
            set(builtin.clone(), "/spec/handler", json!(handler)),
            "spec.handler",
            "expected a dotted lowercase name such as \"image.resize\"",
        );
    }
}

#[test]
fn unknown_runtime() {
    assert_invalid(
        set(good_function(), "/spec/runtime", json!("go")),
        "spec.runtime",
        "unknown variant \"go\", expected one of python3, nodejs, builtin",
    );
}

#[test]
fn function_bounds() {
    assert_invalid(
        set(
            good_function(),
            "/spec/resources",
            json!({"timeoutSeconds": 0}),
        ),
        "spec.resources.timeoutSeconds",
        "must be between 1 and 900 (found 0)",
    );
    assert_invalid(
        set(
            good_function(),
            "/spec/resources",
            json!({"timeoutSeconds": 901}),
        ),
        "spec.resources.timeoutSeconds",
        "must be between 1 and 900",
    );
    assert_invalid(
        set(
            good_function(),
            "/spec/resources",
            json!({"maxConcurrency": 1001}),
        ),
        "spec.resources.maxConcurrency",
        "must be between 1 and 1000",
    );
    assert_invalid(
        set(
            good_function(),
            "/spec/resources",
            json!({"memory": "lots"}),
        ),
        "spec.resources.memory",
        "invalid memory quantity",
    );
    assert_invalid(
        set(
            good_function(),
            "/spec/scaling",
            json!({"minWarm": 5, "maxInstances": 2}),
        ),
        "spec.scaling.minWarm",
        "must not exceed maxInstances (5 > 2)",
    );
    assert_invalid(
        set(good_function(), "/spec/scaling", json!({"maxInstances": 0})),
        "spec.scaling.maxInstances",
        "must be between 1 and 1000",
    );
    assert_invalid(
        set(good_function(), "/spec/scaling", json!({"idleSeconds": 0})),
        "spec.scaling.idleSeconds",
        "must be between 1 and 86400",
    );
    assert_invalid(
        set(good_function(), "/spec/env", json!({"": "x"})),
        "spec.env.",
        "invalid environment variable name",
    );
}

#[test]
fn cloud_with_node_selector() {
    assert_invalid(
        set(
            good_function(),
            "/spec/placement",
            json!({"cloud": true, "nodeSelector": {"region": "eu"}}),
        ),
        "spec.placement.nodeSelector",
        "must not be set when cloud is true",
    );
    decode_object(set(
        good_function(),
        "/spec/placement",
        json!({"cloud": false, "nodeSelector": {"region": "eu"}}),
    ))
    .unwrap();
}

// ---------------------------------------------------------------------------------
// Trigger

#[test]
fn bad_cron() {
    for schedule in [
        "* * * *",
        "61 * * * *",
        "* * * * * * *",
        "every day",
        "*/0 * * * *",
        "",
    ] {
        let e = invalid(set(good_trigger(), "/spec/schedule", json!(schedule)));
        assert_eq!(e.field, "spec.schedule", "{schedule}");
        assert!(!e.message.is_empty());
        assert!(!e.message.ends_with('.'), "{e}");
        if !schedule.is_empty() {
            assert!(
                e.message
                    .starts_with(&format!("invalid cron schedule {schedule:?}: ")),
                "{e}"
            );
        }
    }
    for schedule in ["*/15 * * * *", "0 0 9-17 * * mon-fri", "@hourly"] {
        decode_object(set(good_trigger(), "/spec/schedule", json!(schedule))).unwrap();
    }
}

#[test]
fn trigger_fields() {
    assert_invalid(
        set(good_trigger(), "/spec/timezone", json!("Europe Berlin")),
        "spec.timezone",
        "invalid timezone \"Europe Berlin\"",
    );
    assert_invalid(
        set(good_trigger(), "/spec/timezone", json!("")),
        "spec.timezone",
        "must not be empty",
    );
    decode_object(set(
        good_trigger(),
        "/spec/timezone",
        json!("America/Argentina/Buenos_Aires"),
    ))
    .unwrap();
    assert_invalid(
        set(good_trigger(), "/spec/function", json!("Resize")),
        "spec.function",
        "must be a DNS-1123 label",
    );
    assert_invalid(
        set(
            good_trigger(),
            "/spec/missedPolicy",
            json!({"mode": "skip", "maxCatchUp": 3}),
        ),
        "spec.missedPolicy.maxCatchUp",
        "may only be set when mode is catchUp",
    );
    assert_invalid(
        set(
            good_trigger(),
            "/spec/missedPolicy",
            json!({"mode": "catchUp", "maxCatchUp": 0}),
        ),
        "spec.missedPolicy.maxCatchUp",
        "must be between 1 and 1000",
    );
    assert_invalid(
        set(
            good_trigger(),
            "/spec/missedPolicy",
            json!({"mode": "catch-up"}),
        ),
        "spec.missedPolicy.mode",
        "unknown variant \"catch-up\", expected skip or catchUp",
    );
    assert_invalid(
        set(good_trigger(), "/spec/target", json!({})),
        "spec.target",
        "exactly one of node, nodeSelector, fanout must be set",
    );
}

// ---------------------------------------------------------------------------------
// Task

#[test]
fn task_target_with_two_targets() {
    let e = invalid(set(
        good_task(),
        "/spec/target",
        json!({"node": "edge-1", "fanout": {"region": "eu"}}),
    ));
    assert_eq!(e.field, "spec.target");
    assert_eq!(
        e.message,
        "only one of node, nodeSelector, fanout may be set (found node and fanout)"
    );
    let e = invalid(set(
        good_task(),
        "/spec/target",
        json!({"nodeSelector": {}, "fanout": {}, "node": "n"}),
    ));
    assert_eq!(
        e.message,
        "only one of node, nodeSelector, fanout may be set (found node and nodeSelector and \
         fanout)"
    );
    assert_invalid(
        set(good_task(), "/spec/target", json!({})),
        "spec.target",
        "exactly one of node, nodeSelector, fanout must be set",
    );
    assert_invalid(
        set(good_task(), "/spec/target", json!({"node": "Edge"})),
        "spec.target.node",
        "must be a DNS-1123 label",
    );
    assert_invalid(
        set(good_task(), "/spec/target", json!({"fanout": {"-x": "y"}})),
        "spec.target.fanout.-x",
        "invalid key",
    );
}

#[test]
fn task_fields() {
    assert_invalid(
        remove(good_task(), "/spec/function"),
        "spec.function",
        "missing field",
    );
    assert_invalid(
        set(good_task(), "/spec/callbackUrl", json!("ftp://x")),
        "spec.callbackUrl",
        "must be an http or https URL",
    );
    assert_invalid(
        set(
            good_task(),
            "/spec/callbackUrl",
            json!(format!("https://x/{}", "a".repeat(2048))),
        ),
        "spec.callbackUrl",
        "too long",
    );
    assert_invalid(
        set(good_task(), "/spec/idempotencyKey", json!("tab\there")),
        "spec.idempotencyKey",
        "must be 1 to 128 printable ASCII characters",
    );
    assert_invalid(
        set(good_task(), "/spec/idempotencyKey", json!("k".repeat(129))),
        "spec.idempotencyKey",
        "printable ASCII",
    );
    assert_invalid(
        set(good_task(), "/spec/timeoutSeconds", json!(0)),
        "spec.timeoutSeconds",
        "must be between 1 and 86400",
    );
    assert_invalid(
        set(good_task(), "/spec/maxAttempts", json!(101)),
        "spec.maxAttempts",
        "must be between 1 and 100 (found 101)",
    );
    assert_invalid(
        set(good_task(), "/spec/maxAttempts", json!(-1)),
        "spec.maxAttempts",
        "invalid value: integer `-1`, expected u32",
    );
    assert_invalid(
        set(
            good_task(),
            "/spec/input",
            json!({"blob": "x".repeat(256 * 1024)}),
        ),
        "spec.input",
        "too large",
    );
    // Any JSON is fine as input.
    decode_object(set(
        good_task(),
        "/spec/input",
        json!([1, "two", {"three": null}]),
    ))
    .unwrap();
}

// ---------------------------------------------------------------------------------
// Node

#[test]
fn node_spec_is_optional() {
    let obj = decode_object(good_node()).unwrap();
    assert_eq!(obj.spec, json!({}));
    let obj = decode_object(set(good_node(), "/spec", json!({"unschedulable": true}))).unwrap();
    assert_eq!(obj.spec, json!({"unschedulable": true}));
    assert_invalid(
        set(good_node(), "/spec", json!({"cordon": true})),
        "spec.cordon",
        "unknown field, expected unschedulable",
    );
}

#[test]
fn reserved_node_names_are_refused() {
    for name in crate::RESERVED_NODE_NAMES {
        assert_invalid(
            set(good_node(), "/metadata/name", json!(name)),
            "metadata.name",
            "is reserved",
        );
    }
    // Only Nodes: an App may be called `cloud`.
    decode_object(set(good_app(), "/metadata/name", json!("cloud"))).unwrap();
    decode_object(set(good_node(), "/metadata/name", json!("cloud-1"))).unwrap();
}

// ---------------------------------------------------------------------------------
// streams

#[test]
fn multi_document_yaml_with_empty_document() {
    let input = "\
apiVersion: verge.dev/v1
kind: Node
metadata: {name: edge-1}
---
---
# only a comment
---
apiVersion: verge.dev/v1
kind: Task
metadata: {name: once}
spec: {function: resize}
";
    let objs = parse_documents(input, Format::Yaml).unwrap();
    assert_eq!(objs.len(), 2);
    assert_eq!(objs[0].kind, "Node");
    assert_eq!(objs[1].metadata.name, "once");
}

#[test]
fn multi_document_error_names_the_document() {
    let input = "\
apiVersion: verge.dev/v1
kind: Node
metadata: {name: edge-1}
---
---
apiVersion: verge.dev/v1
kind: Task
metadata: {name: once}
spec: {function: resize, extra: 1}
";
    let e = parse_invalid(input, Format::Yaml);
    assert_eq!(e.field, "spec.extra");
    assert!(e.message.starts_with("unknown field"), "{e}");
    assert!(e.message.ends_with("(document 3)"), "{e}");
    // A single document's error carries no document number.
    let e = parse_invalid("apiVersion: v2\n", Format::Yaml);
    assert_eq!(e.field, "apiVersion");
    assert!(!e.message.contains("document"), "{e}");
}

#[test]
fn empty_yaml_stream() {
    assert!(parse_documents("", Format::Yaml).unwrap().is_empty());
    assert!(
        parse_documents("---\n# nothing\n", Format::Yaml)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn json_array() {
    let input = serde_json::to_string(&json!([good_app(), good_node(), good_task()])).unwrap();
    let objs = parse_documents(&input, Format::Json).unwrap();
    let kinds: Vec<&str> = objs.iter().map(|o| o.kind.as_str()).collect();
    assert_eq!(kinds, ["App", "Node", "Task"]);

    let bad = set(good_node(), "/metadata/name", json!("Edge"));
    let input = serde_json::to_string(&json!([good_app(), bad])).unwrap();
    let e = parse_invalid(&input, Format::Json);
    assert_eq!(e.field, "metadata.name");
    assert!(e.message.ends_with("(document 2)"), "{e}");

    assert!(parse_documents("[]", Format::Json).unwrap().is_empty());
    let e = parse_invalid("[1]", Format::Json);
    assert!(e.message.contains("must be an object"), "{e}");
}

#[test]
fn json_single_object() {
    let input = serde_json::to_string(&good_app()).unwrap();
    let objs = parse_documents(&input, Format::Json).unwrap();
    assert_eq!(objs.len(), 1);
    assert_eq!(objs[0].metadata.name, "web");
}

#[test]
fn too_many_documents() {
    let doc = "apiVersion: verge.dev/v1\nkind: Node\nmetadata: {name: n}\n";
    let input = vec![doc; 1001].join("---\n");
    let (format, document, message) = malformed(&input, Format::Yaml);
    assert_eq!((format, document), ("yaml", 1001));
    assert!(message.contains("too many documents"), "{message}");
    assert_eq!(
        parse_documents(&vec![doc; 1000].join("---\n"), Format::Yaml)
            .unwrap()
            .len(),
        1000
    );
    let input = serde_json::to_string(&vec![good_node(); 1001]).unwrap();
    let (format, _, message) = malformed(&input, Format::Json);
    assert_eq!(format, "json");
    assert!(message.contains("too many documents"), "{message}");
}

// ---------------------------------------------------------------------------------
// normalization and round trips

#[test]
fn spec_is_normalized() {
    let app = set(good_app(), "/spec/restartPolicy", Value::Null);
    let app = set(app, "/spec/workload/docker/args", json!([]));
    let app = set(app, "/spec/workload/docker/env", json!({}));
    let app = set(app, "/spec/workload/native", Value::Null);
    let obj = decode_object(app).unwrap();
    assert_eq!(obj.spec, decode_object(good_app()).unwrap().spec);
    assert_eq!(
        obj.spec,
        json!({
            "version": "1.0.0",
            "workload": {"docker": {
                "image": "registry.local:5000/web:1.0.0",
                "ports": [{"containerPort": 8080}]
            }},
            "resources": {"cpu": "250m", "memory": "64Mi"}
        })
    );
}

fn round_trip(obj: &Object) {
    let json = serde_json::to_value(obj).unwrap();
    assert_eq!(&decode_object(json).unwrap(), obj);
    let yaml = serde_norway::to_string(obj).unwrap();
    let again = parse_documents(&yaml, Format::Yaml).unwrap();
    assert_eq!(again, vec![obj.clone()]);
}

#[test]
fn every_kind_round_trips() {
    for v in [
        good_app(),
        good_function(),
        good_trigger(),
        good_task(),
        good_node(),
    ] {
        let obj = decode_object(v).unwrap();
        round_trip(&obj);
    }
    let all = parse_documents(
        include_str!("../../../examples/all-kinds.yaml"),
        Format::Yaml,
    )
    .unwrap();
    for obj in &all {
        round_trip(obj);
    }
}

#[test]
fn example_app_yaml() {
    let objs = parse_documents(include_str!("../../../examples/app.yaml"), Format::Yaml).unwrap();
    assert_eq!(objs.len(), 1);
    let app = &objs[0];
    assert_eq!(app.api_version, API_VERSION);
    assert_eq!(kind_of(app), Some(Kind::App));
    assert_eq!(app.metadata.name, "web");
    assert_eq!(app.metadata.labels["tier"], "frontend");
    let Spec::App(spec) = decode_spec(Kind::App, &app.spec).unwrap() else {
        panic!("not an app spec");
    };
    assert_eq!(spec.version, "1.0.0");
    let docker = spec.workload.docker.as_ref().unwrap();
    assert_eq!(docker.image, "registry.local:5000/web:1.0.0");
    assert_eq!(docker.ports.len(), 1);
    assert_eq!(docker.ports[0].container_port, 8080);
    let resources = spec.resources.as_ref().unwrap();
    assert_eq!(resources.cpu.as_deref(), Some("250m"));
    assert_eq!(resources.memory.as_deref(), Some("64Mi"));
}

#[test]
fn example_all_kinds_yaml() {
    let objs = parse_documents(
        include_str!("../../../examples/all-kinds.yaml"),
        Format::Yaml,
    )
    .unwrap();
    let kinds: Vec<Option<Kind>> = objs.iter().map(kind_of).collect();
    assert_eq!(
        kinds,
        Kind::ALL.iter().copied().map(Some).collect::<Vec<_>>()
    );
}

#[test]
fn validate_object_built_in_code() {
    let spec: AppSpec = serde_json::from_value(good_app()["spec"].clone()).unwrap();
    let mut obj = Object {
        api_version: API_VERSION.to_owned(),
        kind: Kind::App.name().to_owned(),
        metadata: ObjectMeta {
            name: "web".into(),
            ..ObjectMeta::default()
        },
        spec: serde_json::to_value(&spec).unwrap(),
        status: Value::Null,
    };
    validate_object(&obj).unwrap();

    obj.spec["workload"]["docker"]["imagee"] = json!("x");
    let e = validate_object(&obj).unwrap_err();
    assert_eq!(e.field, "spec.workload.docker.imagee");

    obj.spec = serde_json::to_value(&spec).unwrap();
    obj.kind = "Apps".into();
    assert_eq!(validate_object(&obj).unwrap_err().field, "kind");

    obj.kind = "App".into();
    obj.api_version = "verge.dev/v2".into();
    assert_eq!(validate_object(&obj).unwrap_err().field, "apiVersion");

    obj.api_version = API_VERSION.into();
    obj.metadata.name = "Web".into();
    assert_eq!(validate_object(&obj).unwrap_err().field, "metadata.name");

    obj.metadata.name = "web".into();
    obj.status = json!("running");
    assert_eq!(validate_object(&obj).unwrap_err().field, "status");
}

#[test]
fn kind_of_object() {
    let mut obj = decode_object(good_task()).unwrap();
    assert_eq!(kind_of(&obj), Some(Kind::Task));
    obj.kind = "task".into();
    assert_eq!(kind_of(&obj), None);
}

#[test]
fn spec_enum_helpers() {
    let spec = decode_spec(Kind::Node, &Value::Null).unwrap();
    assert_eq!(spec.kind(), Kind::Node);
    assert_eq!(spec.to_value().unwrap(), json!({}));
    let e = decode_spec(Kind::Task, &Value::Null).unwrap_err();
    assert_eq!(e.to_string(), "spec: missing field");
}

// ---------------------------------------------------------------------------------
// no panics on arbitrary input

const KEYS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "spec",
    "status",
    "name",
    "labels",
    "version",
    "workload",
    "docker",
    "native",
    "function",
    "image",
    "ports",
    "containerPort",
    "runtime",
    "handler",
    "code",
    "schedule",
    "target",
    "node",
    "fanout",
    "x",
];

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u16>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop_oneof![
            Just("verge.dev/v1".to_owned()),
            Just("App".to_owned()),
            Just("Node".to_owned()),
            Just("Function".to_owned()),
            Just("Trigger".to_owned()),
            Just("Task".to_owned()),
            Just("python3".to_owned()),
            Just("builtin".to_owned()),
            Just("1.0.0".to_owned()),
            Just("web".to_owned()),
            Just("* * * * *".to_owned()),
            ".{0,12}",
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..6).prop_map(|entries| {
                Value::Object(
                    entries
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect(),
                )
            }),
        ]
    })
}

proptest! {
    #[test]
    fn decode_object_never_panics(v in arb_json()) {
        let _ = decode_object(v);
    }

    #[test]
    fn decode_object_never_panics_on_mutated_apps(
        pointer in prop::sample::select(vec![
            "/spec", "/spec/version", "/spec/workload", "/spec/workload/docker",
            "/spec/workload/docker/ports", "/spec/resources/cpu", "/metadata/labels",
        ]),
        v in arb_json(),
    ) {
        let _ = decode_object(set(good_app(), pointer, v));
    }

    #[test]
    fn parse_documents_never_panics(s in "(?s).{0,200}") {
        let _ = parse_documents(&s, Format::Yaml);
        let _ = parse_documents(&s, Format::Json);
    }

    #[test]
    fn schedules_never_panic(s in "[0-9*/,#?LW@A-Za-z +-]{0,40}") {
        let _ = crate::specs::parse_schedule(&s);
    }

    #[test]
    fn quantities_never_panic(s in "[0-9.mkMGTPEi+-]{0,40}") {
        let _ = crate::specs::parse_cpu_millis(&s);
        let _ = crate::specs::parse_memory_bytes(&s);
    }
}

/// The schema's name pattern is the one the API documents for `{name}` parameters.
#[cfg(feature = "openapi")]
#[test]
fn metadata_name_schema_has_the_name_pattern() {
    use utoipa::PartialSchema;
    let meta = serde_json::to_value(crate::meta::ObjectMeta::schema()).unwrap();
    assert_eq!(meta["properties"]["name"]["pattern"], crate::NAME_PATTERN);
    assert_eq!(meta["properties"]["name"]["maxLength"], 63);
}

#[cfg(feature = "openapi")]
#[test]
fn specs_have_openapi_schemas() {
    use utoipa::PartialSchema;
    for schema in [
        NodeSpec::schema(),
        AppSpec::schema(),
        FunctionSpec::schema(),
        TriggerSpec::schema(),
        TaskSpec::schema(),
    ] {
        let json = serde_json::to_value(&schema).unwrap();
        assert_eq!(json["type"], "object", "{json}");
        assert_eq!(json["additionalProperties"], false, "{json}");
    }
    let app = serde_json::to_value(AppSpec::schema()).unwrap();
    let required: Vec<&str> = app["required"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(required, ["version", "workload"]);
}

#[test]
fn deep_nesting_is_rejected_not_a_stack_overflow() {
    let depth = 100_000;
    let json = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let (format, _, message) = limit(parse_documents(&json, Format::Json));
    assert_eq!(format, "json");
    assert!(
        message.contains("nested deeper than the limit of 64 levels"),
        "{message}"
    );
    let (format, _, message) = limit(parse_documents(&json, Format::Yaml));
    assert_eq!(format, "yaml");
    assert!(
        message.contains("nested deeper than the limit of 64 levels"),
        "{message}"
    );
}

#[test]
fn yaml_alias_bombs_are_rejected() {
    let mut yaml = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for level in 1..=9u8 {
        let prev = char::from(b'a' + level - 1);
        let this = char::from(b'a' + level);
        yaml.push_str(&format!(
            "{this}: &{this} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, \
             *{prev}, *{prev}, *{prev}]\n"
        ));
    }
    // Our byte bound or serde_norway's own alias repetition limit, whichever first.
    let (format, _, message) = limit(parse_documents(&yaml, Format::Yaml));
    assert_eq!(format, "yaml");
    assert!(
        message.contains("expands beyond the limit") || message.contains("too many alias uses"),
        "{message}"
    );
}
