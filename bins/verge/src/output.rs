//! Human output: tables (comfy-table) with the columns of each kind, ages, YAML/JSON.
//! `verge describe`'s summaries are in `describe.rs`.

use anyhow::Result;
use comfy_table::presets::NOTHING;
use comfy_table::{Cell, Table};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use verge_api::{Kind, Object};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Wide,
    Json,
    Yaml,
}

/// `5s`, `3m`, `2h`, `4d` since an RFC 3339 time.
pub fn age(ts: Option<&str>) -> String {
    let Some(t) = ts.and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok()) else {
        return "<unknown>".into();
    };
    let secs = (OffsetDateTime::now_utc() - t).whole_seconds().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn workload_kind(obj: &Object) -> String {
    obj.spec
        .get("workload")
        .and_then(|w| w.as_object())
        .and_then(|w| w.keys().next().cloned())
        .unwrap_or_else(|| "-".into())
}

fn str_at<'a>(v: &'a serde_json::Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

/// `1536` -> `1.5KiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}

/// Columns per kind: (headers, cells).
fn columns(kind: Kind, obj: &Object) -> (Vec<&'static str>, Vec<String>) {
    let name = obj.metadata.name.clone();
    let age = age(obj.metadata.creation_timestamp.as_deref());
    match kind {
        // VERSION is what the app serves (after a rollback, the version it went back
        // to) and READY its healthy replicas; TARGET is `spec.version` while it is not
        // (yet, or after a rollback: no longer) the one served.
        Kind::App => (
            vec![
                "NAME", "VERSION", "TARGET", "WORKLOAD", "READY", "STEP", "PHASE", "AGE",
            ],
            vec![
                name,
                str_at(&obj.status, &["version"]).unwrap_or("-").into(),
                match (
                    str_at(&obj.spec, &["version"]),
                    str_at(&obj.status, &["version"]),
                ) {
                    (Some(want), Some(serving)) if want == serving => "-".into(),
                    (Some(want), _) => want.into(),
                    (None, _) => "-".into(),
                },
                workload_kind(obj),
                match (
                    obj.status.get("readyReplicas").and_then(|v| v.as_u64()),
                    obj.status.get("replicas").and_then(|v| v.as_u64()),
                ) {
                    (Some(r), Some(d)) => format!("{r}/{d}"),
                    _ => "-".into(),
                },
                str_at(&obj.status, &["step"]).unwrap_or("-").into(),
                str_at(&obj.status, &["phase"]).unwrap_or("-").into(),
                age,
            ],
        ),
        Kind::Function => (
            vec!["NAME", "RUNTIME", "HANDLER", "PLACEMENT", "PHASE", "AGE"],
            vec![
                name,
                str_at(&obj.spec, &["runtime"]).unwrap_or("-").into(),
                str_at(&obj.spec, &["handler"]).unwrap_or("-").into(),
                if obj.spec.pointer("/placement/cloud") == Some(&serde_json::Value::Bool(true)) {
                    "cloud".into()
                } else {
                    "edge".into()
                },
                checked_phase(obj),
                age,
            ],
        ),
        Kind::Trigger => (
            vec!["NAME", "SCHEDULE", "FUNCTION", "FIRES-ON", "NEXT", "AGE"],
            vec![
                name,
                // An object-event trigger: `event:BUCKET`, and `sink` for a webhook.
                str_at(&obj.spec, &["schedule"])
                    .map(str::to_string)
                    .or_else(|| {
                        str_at(&obj.spec, &["event", "bucket"]).map(|b| format!("event:{b}"))
                    })
                    .unwrap_or_else(|| "-".into()),
                str_at(&obj.spec, &["function"])
                    .or(obj.spec.get("sink").map(|_| "sink"))
                    .unwrap_or("-")
                    .into(),
                str_at(&obj.status, &["firesOn"])
                    .or(obj.spec.get("event").map(|_| "cloud"))
                    .unwrap_or("-")
                    .into(),
                obj.status
                    .get("nextFireMs")
                    .and_then(|v| v.as_i64())
                    .map(|ms| crate::describe::relative(ms - now_ms()))
                    .unwrap_or_else(|| "-".into()),
                age,
            ],
        ),
        Kind::Task => (
            vec!["NAME", "FUNCTION", "PHASE", "NODE", "ATTEMPTS", "AGE"],
            vec![
                name,
                str_at(&obj.spec, &["function"]).unwrap_or("-").into(),
                str_at(&obj.status, &["phase"]).unwrap_or("Pending").into(),
                str_at(&obj.status, &["node"]).unwrap_or("-").into(),
                obj.status
                    .get("attempts")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(0)
                    .to_string(),
                age,
            ],
        ),
        Kind::Bucket => (
            vec!["NAME", "PUBLIC", "OBJECTS", "SIZE", "QUOTA", "AGE"],
            vec![
                name,
                if obj.spec.get("public") == Some(&serde_json::Value::Bool(true)) {
                    "yes".into()
                } else {
                    "no".into()
                },
                obj.status
                    .get("objects")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(0)
                    .to_string(),
                obj.status
                    .get("bytes")
                    .and_then(|v| v.as_u64())
                    .map(human_bytes)
                    .unwrap_or_else(|| "0B".into()),
                str_at(&obj.spec, &["quota"]).unwrap_or("-").into(),
                age,
            ],
        ),
        Kind::Config => (
            vec!["NAME", "KEYS", "SELECTOR", "AGE"],
            vec![
                name,
                obj.spec
                    .get("data")
                    .and_then(|d| d.as_object())
                    .map(|d| d.len().to_string())
                    .unwrap_or_else(|| "0".into()),
                obj.spec
                    .pointer("/placement/nodeSelector")
                    .and_then(|s| s.as_object())
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "<all>".into()),
                age,
            ],
        ),
        Kind::Secret => (
            vec!["NAME", "KEYS", "AGE"],
            vec![
                name,
                obj.spec
                    .get("data")
                    .and_then(|d| d.as_object())
                    .map(|d| d.keys().cloned().collect::<Vec<_>>().join(","))
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "<none>".into()),
                age,
            ],
        ),
        Kind::Node => (
            vec![
                "NAME",
                "STATUS",
                "ARCH",
                "OS",
                "VERSION",
                "AGE",
                "LAST-SEEN",
            ],
            vec![
                name,
                str_at(&obj.status, &["phase"]).unwrap_or("Unknown").into(),
                str_at(&obj.status, &["nodeInfo", "arch"])
                    .unwrap_or("-")
                    .into(),
                str_at(&obj.status, &["nodeInfo", "os"])
                    .unwrap_or("-")
                    .into(),
                str_at(&obj.status, &["nodeInfo", "agentVersion"])
                    .unwrap_or("-")
                    .into(),
                age,
                str_at(&obj.status, &["lastSeen"])
                    .map(|t| format!("{} ago", self::age(Some(t))))
                    .unwrap_or_else(|| "never".into()),
            ],
        ),
    }
}

/// A Function's `status.phase` for the spec it has now: `Pending` until the cloud has
/// checked this generation (so a failed load never looks fine).
fn checked_phase(obj: &Object) -> String {
    let observed = obj
        .status
        .get("observedGeneration")
        .and_then(|v| v.as_i64());
    match (str_at(&obj.status, &["phase"]), observed) {
        (Some(p), Some(o)) if Some(o) == obj.metadata.generation => p.into(),
        _ => "Pending".into(),
    }
}

/// Now, in milliseconds since the epoch.
pub fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

fn labels_string(obj: &Object) -> String {
    if obj.metadata.labels.is_empty() {
        return "<none>".into();
    }
    obj.metadata
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn table(kind: Kind, objs: &[Object], wide: bool, header: bool) -> String {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    let headers = {
        let (mut h, _) = columns(kind, objs.first().unwrap_or(&empty(kind)));
        if wide {
            h.extend(["GENERATION", "RESOURCE-VERSION", "LABELS"]);
        }
        h
    };
    if header {
        t.set_header(headers.iter().map(|h| Cell::new(*h)));
    }
    for o in objs {
        let (_, mut row) = columns(kind, o);
        if wide {
            row.push(
                o.metadata
                    .generation
                    .map(|g| g.to_string())
                    .unwrap_or("-".into()),
            );
            row.push(o.metadata.resource_version.clone().unwrap_or("-".into()));
            row.push(labels_string(o));
        }
        t.add_row(row);
    }
    trimmed(&t)
}

/// A borderless table of plain rows (tokens, artifacts).
pub fn plain_table(headers: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t.set_header(headers.iter().map(|h| Cell::new(*h)));
    for r in rows {
        t.add_row(r);
    }
    trimmed(&t)
}

/// Without the padding comfy-table leaves at line ends.
fn trimmed(t: &Table) -> String {
    t.to_string()
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("\n")
}

fn empty(kind: Kind) -> Object {
    Object {
        api_version: verge_api::API_VERSION.into(),
        kind: kind.name().into(),
        metadata: Default::default(),
        spec: serde_json::Value::Null,
        status: serde_json::Value::Null,
    }
}

pub fn yaml<T: serde::Serialize>(v: &T) -> Result<String> {
    Ok(serde_norway::to_string(v)?)
}

pub fn json<T: serde::Serialize>(v: &T) -> Result<String> {
    Ok(serde_json::to_string_pretty(v)?)
}
#[cfg(test)]
mod tests {
    use super::*;

    fn app(spec_version: &str, status: serde_json::Value) -> Object {
        Object {
            api_version: verge_api::API_VERSION.into(),
            kind: "App".into(),
            metadata: verge_api::ObjectMeta {
                name: "web".into(),
                ..Default::default()
            },
            spec: serde_json::json!({"version": spec_version,
                "workload": {"native": {"command": "run"}}}),
            status,
        }
    }

    #[test]
    fn an_app_row_shows_the_served_version_and_the_target_apart() {
        let (h, _) = columns(Kind::App, &app("1.0.0", serde_json::Value::Null));
        assert_eq!(
            h,
            [
                "NAME", "VERSION", "TARGET", "WORKLOAD", "READY", "STEP", "PHASE", "AGE"
            ]
        );
        // Rolled back: serving 1.1.0 on every node, 1.2.0 the target that failed.
        let rolled_back = app(
            "1.2.0",
            serde_json::json!({"version": "1.1.0", "targetVersion": "1.2.0",
                "phase": "RolledBack", "replicas": 1, "readyReplicas": 1, "step": "1/2 (50%)"}),
        );
        let (_, row) = columns(Kind::App, &rolled_back);
        assert_eq!(
            row[..7],
            [
                "web",
                "1.1.0",
                "1.2.0",
                "native",
                "1/1",
                "1/2 (50%)",
                "RolledBack"
            ]
        );
        // Complete: nothing in TARGET.
        let done = app(
            "1.1.0",
            serde_json::json!({"version": "1.1.0", "phase": "Complete", "replicas": 3,
                "readyReplicas": 3, "step": "2/2 (100%)"}),
        );
        let (_, row) = columns(Kind::App, &done);
        assert_eq!(row[1..3], ["1.1.0", "-"]);
        // Just created, nothing reported yet.
        let (_, row) = columns(Kind::App, &app("1.0.0", serde_json::Value::Null));
        assert_eq!(row[1..5], ["-", "1.0.0", "native", "-"]);
    }
}
