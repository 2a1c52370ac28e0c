//! `verge describe KIND NAME`: a readable summary of one object — name, labels, the
//! spec fields that matter for its kind, its status and conditions, and what happened
//! lately (rollout steps, instances, recent failures, a task's error). Pure: an
//! [`Object`] and the current time in, text out; the full object is `verge get -o
//! yaml`. Never shows a Secret's values.

use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use verge_api::{Kind, Object};

use crate::output::plain_table;

/// Width of the label column.
const LABEL: usize = 18;

/// Text being built: `Label:` + value lines, sections, indented tables.
struct Doc {
    out: String,
    now_ms: i64,
}

impl Doc {
    /// `Label:  value`; the lines of a multi-line value after the first line up under it.
    fn field(&mut self, label: &str, value: impl AsRef<str>) {
        self.field_at(0, label, value.as_ref());
    }

    fn field_at(&mut self, indent: usize, label: &str, value: &str) {
        let pad = " ".repeat(indent);
        let width = LABEL.saturating_sub(indent);
        let mut lines = value.trim_end().lines();
        let first = lines.next().unwrap_or("");
        self.out
            .push_str(format!("{pad}{:<width$}{first}", format!("{label}:")).trim_end());
        self.out.push('\n');
        for l in lines {
            self.out.push_str(&format!("{pad}{:<width$}{l}", ""));
            self.out.push('\n');
        }
    }

    fn section(&mut self, title: &str) {
        self.out.push_str(title);
        self.out.push_str(":\n");
    }

    /// A table indented by two under a section, or `  <none>`.
    fn table(&mut self, headers: &[&str], rows: Vec<Vec<String>>) {
        if rows.is_empty() {
            self.out.push_str("  <none>\n");
            return;
        }
        for l in plain_table(headers, rows).lines() {
            self.out.push_str("  ");
            self.out.push_str(l);
            self.out.push('\n');
        }
    }

    /// `5m ago` / `in 2h` for a time in milliseconds since the epoch.
    fn when_ms(&self, ms: i64) -> String {
        relative(ms - self.now_ms)
    }

    /// `2026-01-01T10:00:00Z (5m ago)` for an RFC 3339 time.
    fn when_rfc3339(&self, ts: &str) -> String {
        match OffsetDateTime::parse(ts, &Rfc3339) {
            Ok(t) => {
                let ms = (t.unix_timestamp_nanos() / 1_000_000) as i64;
                format!("{ts} ({})", self.when_ms(ms))
            }
            Err(_) => ts.to_string(),
        }
    }
}

/// `45s ago`, `3m ago`, `in 2h`, `4d ago` for a signed offset from now in ms.
pub fn relative(delta_ms: i64) -> String {
    let secs = (delta_ms / 1000).abs();
    let span = match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    };
    if delta_ms > 0 {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

fn s<'a>(v: &'a Value, path: &str) -> Option<&'a str> {
    v.pointer(path).and_then(Value::as_str)
}

fn num(v: &Value, path: &str) -> Option<i64> {
    v.pointer(path).and_then(Value::as_i64)
}

/// `k=v, k2=v2`, or `<none>`.
fn pairs(v: Option<&Value>) -> String {
    let list: Vec<String> = v
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| match v.as_str() {
                    Some(s) => format!("{k}={s}"),
                    None => format!("{k}={v}"),
                })
                .collect()
        })
        .unwrap_or_default();
    if list.is_empty() {
        "<none>".into()
    } else {
        list.join(", ")
    }
}

fn map_pairs(m: &std::collections::BTreeMap<String, String>) -> String {
    if m.is_empty() {
        return "<none>".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `sha256:0123456789ab…`
fn short_sha(sha: &str) -> String {
    match sha.get(..12) {
        Some(head) if sha.len() > 12 => format!("sha256:{head}…"),
        _ => format!("sha256:{sha}"),
    }
}

/// The summary of `obj` as of `now_ms`.
pub fn describe(obj: &Object, now_ms: i64) -> String {
    let mut d = Doc {
        out: String::new(),
        now_ms,
    };
    let m = &obj.metadata;
    d.field("Name", &m.name);
    d.field("Kind", &obj.kind);
    d.field("Labels", map_pairs(&m.labels));
    d.field("Annotations", map_pairs(&m.annotations));
    if let Some(ts) = &m.creation_timestamp {
        let created = d.when_rfc3339(ts);
        d.field("Created", created);
    }
    let observed = num(&obj.status, "/observedGeneration");
    d.field(
        "Generation",
        match (m.generation, observed) {
            (Some(g), Some(o)) if o < g => format!("{g} (status is of generation {o})"),
            (Some(g), _) => g.to_string(),
            (None, _) => "-".into(),
        },
    );
    d.field(
        "Resource Version",
        m.resource_version.clone().unwrap_or_default(),
    );
    match Kind::from_kind_name(&obj.kind) {
        Some(Kind::App) => app(&mut d, obj),
        Some(Kind::Function) => function(&mut d, obj),
        Some(Kind::Node) => node(&mut d, obj),
        Some(Kind::Task) => task(&mut d, obj),
        Some(Kind::Trigger) => trigger(&mut d, obj),
        Some(Kind::Config) => config(&mut d, obj),
        Some(Kind::Secret) => secret(&mut d, obj),
        Some(Kind::Bucket) => bucket(&mut d, obj),
        None => {}
    }
    d.out
}

fn conditions(d: &mut Doc, status: &Value) {
    d.section("Conditions");
    // A SINCE column when the conditions carry their transition times (nodes' do).
    let timed = status["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["lastTransitionTime"].is_string()));
    let rows = status["conditions"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    let mut row = vec![
                        c["type"].as_str().unwrap_or("").to_string(),
                        c["status"].as_str().unwrap_or("").to_string(),
                        c["reason"].as_str().unwrap_or("").to_string(),
                    ];
                    if timed {
                        let since = c["lastTransitionTime"]
                            .as_str()
                            .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
                            .map(|t| d.when_ms((t.unix_timestamp_nanos() / 1_000_000) as i64))
                            .unwrap_or_else(|| "-".into());
                        row.push(since);
                    }
                    row.push(
                        c["message"]
                            .as_str()
                            .unwrap_or("")
                            .lines()
                            .next()
                            .unwrap_or("")
                            .to_string(),
                    );
                    row
                })
                .collect()
        })
        .unwrap_or_default();
    let headers: &[&str] = if timed {
        &["TYPE", "STATUS", "REASON", "SINCE", "MESSAGE"]
    } else {
        &["TYPE", "STATUS", "REASON", "MESSAGE"]
    };
    d.table(headers, rows);
}

fn workload(spec: &Value) -> String {
    let w = &spec["workload"];
    if let Some(dk) = w.get("docker") {
        let mut s = format!("docker {}", dk["image"].as_str().unwrap_or("?"));
        let ports: Vec<String> = dk["ports"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .map(|p| {
                        let c = p["containerPort"].as_u64().unwrap_or(0);
                        let proto = p["protocol"].as_str().unwrap_or("tcp");
                        match p["hostPort"].as_u64() {
                            Some(h) => format!("{h}->{c}/{proto}"),
                            None => format!("{c}/{proto}"),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        if !ports.is_empty() {
            s.push_str(&format!(", ports {}", ports.join(" ")));
        }
        return s;
    }
    if let Some(n) = w.get("native") {
        let from = match s(n, "/artifact/sha256") {
            Some(sha) => short_sha(sha),
            None => s(n, "/artifact/url").unwrap_or("?").to_string(),
        };
        return format!(
            "native {from}, command {}",
            n["command"].as_str().unwrap_or("?")
        );
    }
    if let Some(f) = w.get("function") {
        return format!("function {}", f["function"].as_str().unwrap_or("?"));
    }
    "-".into()
}

/// `DB, TOKEN (from secret/creds)`-style summary of `env` and `secretEnv`.
fn env_summary(v: &Value) -> Option<String> {
    let mut names: Vec<String> = v["env"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    if let Some(se) = v["secretEnv"].as_object() {
        for (k, r) in se {
            names.push(format!(
                "{k} (secret {}/{})",
                r["name"].as_str().unwrap_or("?"),
                r["key"].as_str().unwrap_or("?")
            ));
        }
    }
    (!names.is_empty()).then(|| names.join(", "))
}

fn placement(p: &Value) -> String {
    if p.is_null() {
        return "every node".into();
    }
    let mut parts = Vec::new();
    if p["cloud"] == Value::Bool(true) {
        parts.push("cloud".to_string());
    }
    if p["nodeSelector"].as_object().is_some_and(|m| !m.is_empty()) {
        parts.push(format!("nodes with {}", pairs(p.get("nodeSelector"))));
    }
    if let Some(a) = p["architectures"].as_array().filter(|a| !a.is_empty()) {
        let a: Vec<&str> = a.iter().filter_map(Value::as_str).collect();
        parts.push(format!("architectures {}", a.join(",")));
    }
    if let Some(n) = p["replicas"].as_u64() {
        parts.push(format!("{n} replicas"));
    }
    if let Some(n) = p["replicasPerNode"].as_u64() {
        parts.push(format!("{n} per node"));
    }
    if parts.is_empty() {
        "every node".into()
    } else {
        parts.join(", ")
    }
}

fn health(h: &Value) -> Option<String> {
    if h.is_null() {
        return None;
    }
    let probe = if let Some(c) = h.pointer("/exec/command").and_then(Value::as_array) {
        let c: Vec<&str> = c.iter().filter_map(Value::as_str).collect();
        format!("exec {}", c.join(" "))
    } else if let Some(p) = h.pointer("/http/port") {
        format!("http :{p}{}", s(h, "/http/path").unwrap_or("/"))
    } else if let Some(p) = h.pointer("/tcp/port") {
        format!("tcp :{p}")
    } else {
        "-".into()
    };
    let mut s = probe;
    if let Some(i) = h["intervalSeconds"].as_u64() {
        s.push_str(&format!(", every {i}s"));
    }
    if let Some(f) = h["failureThreshold"].as_u64() {
        s.push_str(&format!(", unhealthy after {f} failure(s)"));
    }
    Some(s)
}

/// `33% pause 2s → [100%]`: the steps, the current one in brackets.
fn steps(strategy: &Value, current: Option<usize>) -> String {
    let mut list: Vec<String> = strategy["steps"]
        .as_array()
        .map(|st| {
            st.iter()
                .map(|x| {
                    let mut s = format!("{}%", x["percent"].as_u64().unwrap_or(0));
                    if let Some(p) = x["pause"].as_str() {
                        s.push_str(&format!(" pause {p}"));
                    }
                    s
                })
                .collect()
        })
        .unwrap_or_default();
    // The controller always ends at 100%.
    if !list.iter().any(|s| s.starts_with("100%")) {
        list.push("100%".into());
    }
    if let Some(i) = current.filter(|i| *i < list.len()) {
        list[i] = format!("[{}]", list[i]);
    }
    list.join(" -> ")
}

fn app(d: &mut Doc, obj: &Object) {
    let spec = &obj.spec;
    let st = &obj.status;
    d.field("Version", s(spec, "/version").unwrap_or("-"));
    d.field("Workload", workload(spec));
    let w = &spec["workload"];
    if let Some(e) = w
        .get("docker")
        .or_else(|| w.get("native"))
        .and_then(env_summary)
    {
        d.field("Env", e);
    }
    d.field("Placement", placement(&spec["placement"]));
    if spec["resources"].is_object() {
        d.field("Resources", pairs(spec.get("resources")));
    }
    if let Some(h) = health(&spec["health"]) {
        d.field("Health", h);
    }
    if let Some(deps) = spec["dependsOn"].as_array().filter(|a| !a.is_empty()) {
        let deps: Vec<String> = deps
            .iter()
            .map(|x| match x["version"].as_str() {
                Some(v) => format!("{} {v}", x["app"].as_str().unwrap_or("?")),
                None => x["app"].as_str().unwrap_or("?").to_string(),
            })
            .collect();
        d.field("Depends on", deps.join(", "));
    }
    if st.is_null() {
        d.field("Status", "<not yet reconciled>");
        return;
    }
    d.field(
        "Status",
        format!(
            "{}, {}/{} ready",
            s(st, "/phase").unwrap_or("-"),
            st["readyReplicas"].as_u64().unwrap_or(0),
            st["replicas"].as_u64().unwrap_or(0)
        ),
    );
    let r = &st["rollout"];
    if r.is_object() {
        d.section("Rollout");
        let target = s(r, "/targetVersion").unwrap_or("?");
        let from = s(r, "/stableVersion")
            .filter(|v| *v != target)
            .or_else(|| s(r, "/previousVersion"));
        d.field_at(
            2,
            "Version",
            &match from {
                Some(f) => format!("{target} (from {f})"),
                None => target.to_string(),
            },
        );
        d.field_at(
            2,
            "Phase",
            &format!(
                "{}{}",
                s(r, "/phase").unwrap_or("-"),
                s(r, "/message")
                    .filter(|m| !m.is_empty())
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ),
        );
        let current = r["step"].as_u64().map(|x| x as usize);
        let strategy = spec.get("rollout").cloned().unwrap_or(Value::Null);
        d.field_at(2, "Steps", &steps(&strategy, current));
        if let Some(started) = num(r, "/stepStartedMs") {
            let since = d.when_ms(started);
            d.field_at(2, "Step since", &since);
        }
        let nodes = pairs(r.get("nodes"));
        d.field_at(2, "Nodes", &nodes);
    }
    conditions(d, st);
    d.section("Instances");
    let instances = st["instances"].as_array().cloned().unwrap_or_default();
    // A LIMITS column when some instance runs under limits.
    let limited = |i: &Value| {
        i["limits"]
            .as_str()
            .filter(|l| *l != "none")
            .map(str::to_string)
    };
    let with_limits = instances.iter().any(|i| limited(i).is_some());
    let rows = instances
        .iter()
        .map(|i| {
            let mut row = vec![
                i["node"].as_str().unwrap_or("?").to_string(),
                i["replica"].as_u64().unwrap_or(0).to_string(),
                i["version"].as_str().unwrap_or("?").to_string(),
                i["state"].as_str().unwrap_or("?").to_string(),
                i["health"].as_str().unwrap_or("-").to_string(),
                i["restarts"].as_u64().unwrap_or(0).to_string(),
                format!("{}m", i["cpuMillis"].as_u64().unwrap_or(0)),
                format!("{}Mi", i["memoryBytes"].as_u64().unwrap_or(0) >> 20),
                i["startedAtMs"]
                    .as_i64()
                    .map(|t| d.when_ms(t))
                    .unwrap_or_else(|| "-".into()),
            ];
            if with_limits {
                row.push(limited(i).unwrap_or_else(|| "none".into()));
            }
            row
        })
        .collect();
    let mut headers = vec![
        "NODE", "REPLICA", "VERSION", "STATE", "HEALTH", "RESTARTS", "CPU", "MEMORY", "STARTED",
    ];
    if with_limits {
        headers.push("LIMITS");
    }
    d.table(&headers, rows);
    let failures: Vec<String> = instances
        .iter()
        .filter_map(|i| {
            let e = i["lastError"].as_str().filter(|e| !e.is_empty())?;
            Some(format!(
                "{}/{} ({}): {}",
                i["node"].as_str().unwrap_or("?"),
                i["replica"].as_u64().unwrap_or(0),
                i["version"].as_str().unwrap_or("?"),
                e.lines().next().unwrap_or("")
            ))
        })
        .collect();
    if !failures.is_empty() {
        d.section("Recent failures");
        for f in failures {
            d.out.push_str(&format!("  {f}\n"));
        }
    }
}

fn function(d: &mut Doc, obj: &Object) {
    let spec = &obj.spec;
    let st = &obj.status;
    d.field(
        "Runtime",
        format!(
            "{}, handler {}",
            s(spec, "/runtime").unwrap_or("?"),
            s(spec, "/handler").unwrap_or("?")
        ),
    );
    if let Some(code) = s(spec, "/code") {
        d.field(
            "Code",
            format!("inline, {} lines", code.trim_end().lines().count()),
        );
    } else if let Some(sha) = s(spec, "/artifact/sha256") {
        d.field("Code", format!("artifact {}", short_sha(sha)));
    }
    d.field("Placement", placement(&spec["placement"]));
    if spec["resources"].is_object() {
        d.field("Resources", pairs(spec.get("resources")));
    }
    if spec["scaling"].is_object() {
        d.field("Scaling", pairs(spec.get("scaling")));
    }
    if let Some(e) = env_summary(spec) {
        d.field("Env", e);
    }
    match s(st, "/phase") {
        None => d.field("Phase", "<not yet checked>"),
        Some(p) => {
            let msg = s(st, "/message").unwrap_or("");
            d.field("Phase", p);
            if !msg.is_empty() {
                d.field("Message", msg);
            }
        }
    }
}

fn node(d: &mut Doc, obj: &Object) {
    let st = &obj.status;
    let ni = &st["nodeInfo"];
    let last = s(st, "/lastSeen")
        .map(|t| d.when_rfc3339(t))
        .unwrap_or_else(|| "never".into());
    d.field(
        "Phase",
        format!(
            "{} (last seen {last})",
            s(st, "/phase").unwrap_or("Unknown")
        ),
    );
    if obj.spec["unschedulable"] == Value::Bool(true) {
        d.field("Unschedulable", "true (no new workloads are placed here)");
    }
    if ni.is_object() {
        d.field(
            "System",
            format!(
                "{}, kernel {}, {}, {} CPUs",
                s(ni, "/os").unwrap_or("?"),
                s(ni, "/kernel").unwrap_or("?"),
                s(ni, "/arch").unwrap_or("?"),
                ni["cpus"].as_u64().unwrap_or(0)
            ),
        );
        d.field("Agent", s(ni, "/agentVersion").unwrap_or("?"));
    }
    if st["capacity"].is_object() {
        d.field("Capacity", pairs(st.get("capacity")));
    }
    if st["allocatable"].is_object() {
        d.field("Allocatable", pairs(st.get("allocatable")));
    }
    if let Some(sync) = st.get("sync").filter(|v| v.is_object()) {
        d.field(
            "Sync",
            format!(
                "revision {} of {} acknowledged, {} objects",
                sync["ackedRevision"].as_i64().unwrap_or(0),
                sync["desiredRevision"].as_i64().unwrap_or(0),
                sync["objects"].as_u64().unwrap_or(0)
            ),
        );
    }
    if let Some(q) = st.get("queue").filter(|v| v.is_object()) {
        d.field(
            "Queue",
            format!(
                "{} items ({} bytes) pending, {} dropped",
                q["pendingItems"].as_u64().unwrap_or(0),
                q["pendingBytes"].as_u64().unwrap_or(0),
                q["droppedItems"].as_u64().unwrap_or(0)
            ),
        );
    }
    conditions(d, st);
}

fn target(spec: &Value) -> String {
    let t = &spec["target"];
    if let Some(n) = s(t, "/node") {
        format!("node {n}")
    } else if t.get("nodeSelector").is_some() {
        format!("least loaded node with {}", pairs(t.get("nodeSelector")))
    } else if t.get("fanout").is_some() {
        format!("every node with {}", pairs(t.get("fanout")))
    } else {
        "where the function is placed".into()
    }
}

fn task(d: &mut Doc, obj: &Object) {
    let spec = &obj.spec;
    let st = &obj.status;
    d.field("Function", s(spec, "/function").unwrap_or("?"));
    d.field("Target", target(spec));
    d.field(
        "Phase",
        format!(
            "{}{}",
            s(st, "/phase").unwrap_or("Pending"),
            s(st, "/reason")
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        ),
    );
    if let Some(m) = s(st, "/message") {
        d.field("Message", m);
    }
    d.field("Node", s(st, "/node").unwrap_or("-"));
    d.field(
        "Attempts",
        format!(
            "{} of {}",
            st["attempts"].as_u64().unwrap_or(0),
            spec["maxAttempts"].as_u64().unwrap_or(1)
        ),
    );
    if let Some(c) = num(st, "/createdAtMs") {
        let w = d.when_ms(c);
        d.field("Created at", w);
    }
    if let (Some(a), Some(b)) = (num(st, "/startedAtMs"), num(st, "/finishedAtMs")) {
        d.field("Duration", format!("{} ms", b - a));
    }
    if let Some(t) = s(st, "/trigger") {
        d.field("Trigger", t);
    }
    if let Some(p) = s(st, "/parent") {
        d.field("Parent", p);
    }
    if !st["result"].is_null() {
        d.field("Result", st["result"].to_string());
    }
    if let Some(u) = s(st, "/resultUrl") {
        d.field(
            "Result",
            format!("{u} ({} bytes)", st["resultBytes"].as_u64().unwrap_or(0)),
        );
    }
    if let Some(e) = s(st, "/error") {
        d.field("Error", e);
    }
    if let Some(cb) = s(spec, "/callbackUrl") {
        let state = &st["callback"];
        let mut v = cb.to_string();
        if state.is_object() {
            v.push_str(&format!(
                " ({} after {} attempt(s){})",
                state["state"].as_str().unwrap_or(""),
                state["attempts"].as_u64().unwrap_or(0),
                state["lastError"]
                    .as_str()
                    .map(|e| format!("; last: {e}"))
                    .unwrap_or_default()
            ));
        }
        d.field("Callback", v);
    }
    if let Some(children) = st["children"].as_array().filter(|c| !c.is_empty()) {
        d.section("Children");
        let rows = children
            .iter()
            .map(|c| {
                vec![
                    c["name"].as_str().unwrap_or("").to_string(),
                    c["node"].as_str().unwrap_or("").to_string(),
                    c["phase"].as_str().unwrap_or("").to_string(),
                ]
            })
            .collect();
        d.table(&["NAME", "NODE", "PHASE"], rows);
    }
}

fn trigger(d: &mut Doc, obj: &Object) {
    let spec = &obj.spec;
    let st = &obj.status;
    if spec["event"].is_object() {
        let e = &spec["event"];
        let types: Vec<&str> = e["types"]
            .as_array()
            .map(|a| a.iter().filter_map(|t| t.as_str()).collect())
            .unwrap_or_default();
        let mut what = format!(
            "bucket {} ({})",
            s(e, "/bucket").unwrap_or("?"),
            types.join(", ")
        );
        if let Some(p) = s(e, "/prefix") {
            what.push_str(&format!(", keys starting {p:?}"));
        }
        if let Some(x) = s(e, "/suffix") {
            what.push_str(&format!(", keys ending {x:?}"));
        }
        d.field("Event", what);
        match s(spec, "/sink/url") {
            Some(url) => d.field("Sink", url),
            None => d.field("Function", s(spec, "/function").unwrap_or("?")),
        }
        if spec["target"].is_object() {
            d.field("Target", target(spec));
        }
        return;
    }
    d.field(
        "Schedule",
        format!(
            "{}{}",
            s(spec, "/schedule").unwrap_or("?"),
            s(spec, "/timezone")
                .map(|z| format!(" ({z})"))
                .unwrap_or_default()
        ),
    );
    d.field("Function", s(spec, "/function").unwrap_or("?"));
    d.field("Target", target(spec));
    if spec["missedPolicy"].is_object() {
        d.field("Missed runs", pairs(spec.get("missedPolicy")));
    }
    if let Some(f) = s(st, "/firesOn") {
        d.field("Fires on", f);
    }
    if let Some(n) = num(st, "/nextFireMs") {
        let w = d.when_ms(n);
        d.field("Next run", w);
    }
    if let Some(n) = num(st, "/lastFireMs") {
        let w = d.when_ms(n);
        d.field("Last run", w);
    }
    if let Some(n) = st["skipped"].as_u64() {
        d.field("Skipped", n.to_string());
    }
    if let Some(m) = s(st, "/message") {
        d.field("Message", m);
    }
}

fn config(d: &mut Doc, obj: &Object) {
    let spec = &obj.spec;
    let keys: Vec<&String> = spec["data"]
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    d.field(
        "Keys",
        if keys.is_empty() {
            "<none>".to_string()
        } else {
            keys.iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        },
    );
    d.field("Placement", placement(&spec["placement"]));
}

fn bucket(d: &mut Doc, obj: &Object) {
    let (spec, st) = (&obj.spec, &obj.status);
    d.field(
        "Public",
        if spec["public"] == Value::Bool(true) {
            "yes (read at /cdn/NAME/KEY)"
        } else {
            "no"
        },
    );
    d.field("Quota", spec["quota"].as_str().unwrap_or("<none>"));
    d.field(
        "Max Object Size",
        spec["maxObjectSize"].as_str().unwrap_or("5Gi"),
    );
    d.field(
        "Lifecycle",
        match spec["lifecycle"]["expireAfterDays"].as_u64() {
            Some(days) => format!(
                "expire after {days} days (prefix {:?})",
                spec["lifecycle"]["prefix"].as_str().unwrap_or("")
            ),
            None => "<none>".into(),
        },
    );
    d.field("Objects", st["objects"].as_u64().unwrap_or(0).to_string());
    d.field(
        "Size",
        crate::output::human_bytes(st["bytes"].as_u64().unwrap_or(0)),
    );
}

/// Keys and sizes, never values (`<hidden>` for those who may not read them).
fn secret(d: &mut Doc, obj: &Object) {
    let hidden = obj
        .metadata
        .annotations
        .contains_key(verge_api::specs::ANNOTATION_REDACTED);
    d.section("Data");
    let rows = obj.spec["data"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    vec![
                        k.clone(),
                        if hidden {
                            "<hidden>".into()
                        } else {
                            format!("<{} bytes>", v.as_str().map_or(0, str::len))
                        },
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    d.table(&["KEY", "SIZE"], rows);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_800_000_000_000;

    fn obj(v: Value) -> Object {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn relative_times() {
        assert_eq!(relative(-5_000), "5s ago");
        assert_eq!(relative(-180_000), "3m ago");
        assert_eq!(relative(7_200_000), "in 2h");
        assert_eq!(relative(-3 * 86_400_000), "3d ago");
    }

    fn rolled_app() -> Object {
        let spec = json!({"version": "2.0.0",
            "workload": {"native": {"artifact": {"sha256": "ab".repeat(32)}, "command": "app.sh"}},
            "health": {"exec": {"command": ["/bin/true"]}, "intervalSeconds": 1, "failureThreshold": 1},
            "rollout": {"steps": [{"percent": 50, "pause": "manual"}]},
            "placement": {"nodeSelector": {"tier": "edge"}}});
        let mut old = spec.clone();
        old["version"] = json!("1.0.0");
        obj(json!({
            "apiVersion": "verge.dev/v1", "kind": "App",
            "metadata": {"name": "web", "labels": {"tier": "edge"}, "generation": 2,
                         "resourceVersion": "7", "creationTimestamp": "2027-01-15T08:00:00Z"},
            "spec": spec.clone(),
            "status": {"observedGeneration": 2, "phase": "Paused", "replicas": 2, "readyReplicas": 1,
                "step": "1/2 (50%)",
                "rollout": {"phase": "Paused", "targetVersion": "2.0.0", "targetSpec": spec,
                            "stableVersion": "1.0.0", "stableSpec": old.clone(),
                            "previousSpec": old, "step": 0, "steps": 2,
                            "stepStartedMs": NOW - 30_000,
                            "nodes": {"a": "2.0.0", "b": "1.0.0"},
                            "message": "waiting for `verge rollout promote`"},
                "instances": [
                    {"node": "a", "replica": 0, "version": "2.0.0", "state": "Running",
                     "health": "Healthy", "restarts": 0, "startedAtMs": NOW - 20_000, "lastError": null,
                     "cpuMillis": 12, "memoryBytes": 3_145_728, "limits": "cpu 500m, memory 64Mi"},
                    {"node": "b", "replica": 0, "version": "1.0.0", "state": "Running",
                     "health": "Healthy", "restarts": 2, "startedAtMs": NOW - 600_000,
                     "lastError": "exited with status 1\nmore"}],
                "conditions": [{"type": "Scheduled", "status": "True", "reason": "Scheduled", "message": "2 nodes"}]}
        }))
    }

    #[test]
    fn an_app_reads_as_a_summary_without_repeated_specs() {
        let text = describe(&rolled_app(), NOW);
        for want in [
            "Name:             web",
            "Labels:           tier=edge",
            "Workload:         native sha256:abababababab…, command app.sh",
            "Placement:        nodes with tier=edge",
            "Health:           exec /bin/true, every 1s, unhealthy after 1 failure(s)",
            "Status:           Paused, 1/2 ready",
            "Rollout:",
            "  Version:        2.0.0 (from 1.0.0)",
            "  Phase:          Paused: waiting for `verge rollout promote`",
            "  Steps:          [50% pause manual] -> 100%",
            "  Step since:     30s ago",
            "  Nodes:          a=2.0.0, b=1.0.0",
            "Recent failures:",
            "  b/0 (1.0.0): exited with status 1",
        ] {
            assert!(text.contains(want), "{want:?} missing in:\n{text}");
        }
        // The spec is summarised once; the rollout's copies of it are not shown.
        assert_eq!(text.matches("app.sh").count(), 1, "{text}");
        assert!(!text.contains("targetSpec") && !text.contains("stableSpec"));
        assert!(text.lines().count() < 40, "{text}");
        // Instances as a table.
        let inst = text
            .lines()
            .find(|l| l.trim_start().starts_with("b ") && l.contains("1.0.0"))
            .unwrap();
        assert!(
            inst.contains("Running") && inst.contains("10m ago"),
            "{inst}"
        );
    }

    #[test]
    fn a_failed_task_shows_its_traceback_on_lines() {
        let t = obj(json!({"apiVersion": "verge.dev/v1", "kind": "Task",
            "metadata": {"name": "t-1", "generation": 1},
            "spec": {"function": "f", "target": {"node": "a"}, "maxAttempts": 2},
            "status": {"phase": "Failed", "reason": "HandlerError", "attempts": 2, "node": "a",
                       "createdAtMs": NOW - 60_000, "startedAtMs": NOW - 2000, "finishedAtMs": NOW - 1990,
                       "error": "ZeroDivisionError: division by zero\nTraceback (most recent call last):\n  File \"/code/handler.py\", line 2"}}));
        let text = describe(&t, NOW);
        assert!(
            text.contains("Phase:            Failed (HandlerError)"),
            "{text}"
        );
        assert!(text.contains("Attempts:         2 of 2"), "{text}");
        assert!(text.contains("Duration:         10 ms"), "{text}");
        assert!(
            text.contains("Error:            ZeroDivisionError: division by zero\n                  Traceback (most recent call last):\n                    File \"/code/handler.py\", line 2"),
            "{text}"
        );
    }

    #[test]
    fn a_function_shows_its_phase_and_message() {
        let f = obj(json!({"apiVersion": "verge.dev/v1", "kind": "Function",
            "metadata": {"name": "f", "generation": 2},
            "spec": {"runtime": "python3", "handler": "handler.main", "code": "def main(e):\n  return 1\n",
                     "placement": {"cloud": true}, "env": {"A": "1"},
                     "secretEnv": {"B": {"name": "s", "key": "k"}}},
            "status": {"observedGeneration": 1, "phase": "Failed", "message": "SyntaxError: x\n  line 1"}}));
        let text = describe(&f, NOW);
        assert!(
            text.contains("Generation:       2 (status is of generation 1)"),
            "{text}"
        );
        assert!(text.contains("Runtime:          python3, handler handler.main"));
        assert!(text.contains("Code:             inline, 2 lines"));
        assert!(text.contains("Placement:        cloud"));
        assert!(text.contains("Env:              A, B (secret s/k)"));
        assert!(text.contains("Phase:            Failed\nMessage:          SyntaxError: x\n                    line 1"), "{text}");
    }

    #[test]
    fn a_secret_never_shows_values() {
        let sct = obj(json!({"apiVersion": "verge.dev/v1", "kind": "Secret",
            "metadata": {"name": "s"}, "spec": {"data": {"password": "hunter22"}}}));
        let text = describe(&sct, NOW);
        assert!(
            text.contains("password") && text.contains("8 bytes"),
            "{text}"
        );
        assert!(!text.contains("hunter22"));
    }

    #[test]
    fn a_node_and_a_trigger() {
        let n = obj(json!({"apiVersion": "verge.dev/v1", "kind": "Node",
            "metadata": {"name": "n1"}, "spec": {},
            "status": {"phase": "Ready", "lastSeen": "2027-01-15T08:00:00Z",
                       "nodeInfo": {"os": "Debian", "kernel": "6.1", "arch": "x86_64", "cpus": 2, "agentVersion": "0.1.0"},
                       "sync": {"ackedRevision": 5, "desiredRevision": 6, "objects": 2},
                       "conditions": [{"type": "Ready", "status": "True", "reason": "HeartbeatsArriving",
                                       "message": "ok", "lastTransitionTime": "2027-01-15T08:00:00Z"}]}}));
        let text = describe(&n, NOW);
        assert!(
            text.contains("Phase:            Ready (last seen 2027-01-15T08:00:00Z ("),
            "{text}"
        );
        assert!(text.contains("System:           Debian, kernel 6.1, x86_64, 2 CPUs"));
        assert!(text.contains("Sync:             revision 5 of 6 acknowledged, 2 objects"));
        assert!(text.contains("HeartbeatsArriving"));
        let t = obj(json!({"apiVersion": "verge.dev/v1", "kind": "Trigger",
            "metadata": {"name": "tr"},
            "spec": {"schedule": "0 3 * * *", "timezone": "Europe/Berlin", "function": "f",
                     "target": {"fanout": {"region": "eu"}}},
            "status": {"firesOn": "nodes", "nextFireMs": NOW + 3_600_000}}));
        let text = describe(&t, NOW);
        assert!(
            text.contains("Schedule:         0 3 * * * (Europe/Berlin)"),
            "{text}"
        );
        assert!(text.contains("Target:           every node with region=eu"));
        assert!(text.contains("Next run:         in 60m"), "{text}");
        let ev = obj(json!({"apiVersion": "verge.dev/v1", "kind": "Trigger",
            "metadata": {"name": "hook"},
            "spec": {"event": {"bucket": "uploads", "types": ["created", "deleted"],
                               "prefix": "in/"},
                     "sink": {"url": "https://hooks.example.com/x"}}}));
        let text = describe(&ev, NOW);
        assert!(
            text.contains(
                "Event:            bucket uploads (created, deleted), keys starting \"in/\""
            ),
            "{text}"
        );
        assert!(
            text.contains("Sink:             https://hooks.example.com/x"),
            "{text}"
        );
        assert!(!text.contains("Schedule"), "{text}");
    }
}
