//! `Trigger`: starts a task of a function on a cron schedule (`schedule`), or on object
//! events of a bucket (`event`), delivered to a function or a webhook (`sink`).
//!
//! Pure: the spec, its validation, the schedule arithmetic and which object events a
//! trigger matches ([`EventSource::matches`]). Firing lives in `verge-cloud`
//! (`functions/triggers.rs` for schedules, `events/` for object events) and the edge.

use croner::Cron;
use croner::errors::CronError;
use croner::parser::{CronParser, Seconds, Year};
use serde::{Deserialize, Serialize};

use crate::error::ValidationError;
use crate::limits::*;
use crate::specs::common::TaskTarget;
use crate::specs::{check_bucket_name, check_object_key};
use crate::validate::{check_dns_label, check_http_url, check_json_size, check_len, check_range};

/// Spec of a `Trigger`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TriggerSpec {
    /// Cron schedule: 5 fields (`*/5 * * * *`) or 6 with leading seconds. Ranges,
    /// steps, lists, month and weekday names, `@daily`-style nicknames, and the `L`, `W`,
    /// `#` extensions are accepted. Exactly one of `schedule` and `event`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Object events of a bucket (CloudEvents `dev.verge.object.created` / `.deleted`).
    /// Exactly one of `schedule` and `event`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<EventSource>,
    /// IANA timezone name the schedule is evaluated in; UTC when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Function to run (DNS-1123 label); with `event`, its input is the CloudEvent (or
    /// `input` with the CloudEvent added as `event`).
    /// Exactly one of `function` and `sink`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// A webhook each matching object event is POSTed to (only with `event`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<Sink>,
    /// Input handed to every task started (only with `schedule`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<TaskTarget>,
    /// What to do with fire times missed while the control plane was down (default:
    /// skip).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed_policy: Option<MissedPolicy>,
}

/// Which object events of a bucket a trigger takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EventSource {
    /// The bucket (3..=63 characters of a-z, 0-9 and '-').
    pub bucket: String,
    /// `created` (a new object or an overwrite) and/or `deleted`; not empty, no repeats.
    pub types: Vec<EventType>,
    /// Only keys starting with this (at most 1024 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Only keys ending with this (at most 1024 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
}

/// An object event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub enum EventType {
    /// `dev.verge.object.created`: an object was stored (new or overwritten).
    Created,
    /// `dev.verge.object.deleted`: an object was deleted.
    Deleted,
}

impl EventType {
    /// The CloudEvents `type` attribute.
    pub fn cloudevent_type(self) -> &'static str {
        match self {
            EventType::Created => "dev.verge.object.created",
            EventType::Deleted => "dev.verge.object.deleted",
        }
    }
}

/// A webhook target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Sink {
    /// `http://` or `https://` URL (at most 2048 bytes); reached through the cloud's
    /// outbound guard (public addresses only unless allowed).
    pub url: String,
}

/// Longest `spec.event.prefix` / `suffix`, in bytes (an S3 key's limit).
pub const MAX_EVENT_AFFIX_BYTES: usize = 1024;

impl EventSource {
    /// Whether an event of `ty` on `bucket`/`key` is one this trigger takes.
    pub fn matches(&self, bucket: &str, key: &str, ty: EventType) -> bool {
        self.bucket == bucket
            && self.types.contains(&ty)
            && self.prefix.as_deref().is_none_or(|p| key.starts_with(p))
            && self.suffix.as_deref().is_none_or(|s| key.ends_with(s))
    }

    fn validate(&self) -> Result<(), ValidationError> {
        check_bucket(&self.bucket, "spec.event.bucket")?;
        if self.types.is_empty() {
            return Err(ValidationError::new(
                "spec.event.types",
                "must name at least one of created, deleted",
            ));
        }
        for (i, t) in self.types.iter().enumerate() {
            if self.types[..i].contains(t) {
                return Err(ValidationError::new(
                    format!("spec.event.types[{i}]"),
                    format!("{} is listed twice", t.cloudevent_type()),
                ));
            }
        }
        for (value, field) in [
            (&self.prefix, "spec.event.prefix"),
            (&self.suffix, "spec.event.suffix"),
        ] {
            if let Some(v) = value {
                check_len(v, field, MAX_EVENT_AFFIX_BYTES)?;
                check_object_key(v, true).map_err(|m| ValidationError::new(field, m))?;
            }
        }
        Ok(())
    }
}

/// A bucket name as buckets are named ([`check_bucket_name`]); the error quotes at
/// most 80 characters of it.
fn check_bucket(name: &str, field: &str) -> Result<(), ValidationError> {
    check_bucket_name(name).map_err(|_| {
        ValidationError::new(
            field,
            format!(
                "{:?} is not a valid bucket name: 3 to 63 characters of a-z, 0-9 and '-', \
                 starting and ending with a letter or digit",
                name.chars().take(80).collect::<String>()
            ),
        )
    })
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MissedPolicy {
    pub mode: MissedPolicyMode,
    /// With `catchUp`: at most this many missed runs are started, 1..=1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_catch_up: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub enum MissedPolicyMode {
    Skip,
    CatchUp,
}

/// `"Invalid step."` -> `"invalid step"`.
fn tidy(message: &str) -> String {
    let message = message.trim().trim_end_matches('.');
    let mut chars = message.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Why croner rejected a schedule, in this crate's message style.
fn describe(err: CronError) -> String {
    match err {
        CronError::EmptyPattern => "must not be empty".to_owned(),
        CronError::IllegalCharacters(m) => {
            tidy(m.strip_prefix("CronPattern contains ").unwrap_or(&m))
        }
        CronError::InvalidPattern(m) | CronError::ComponentError(m) => tidy(&m),
        other => tidy(&other.to_string()),
    }
}

/// Parses a schedule exactly as [`TriggerSpec::validate`] accepts it (5 fields, or 6
/// with leading seconds; no year field). The error is a lowercase explanation.
pub fn parse_schedule(schedule: &str) -> Result<Cron, String> {
    if schedule.trim().is_empty() {
        return Err("must not be empty".to_owned());
    }
    if schedule.len() > MAX_SCHEDULE_LEN {
        return Err(format!(
            "too long ({} bytes, at most {MAX_SCHEDULE_LEN})",
            schedule.len()
        ));
    }
    let invalid = |why: String| format!("invalid cron schedule {schedule:?}: {why}");
    if !schedule.trim_start().starts_with('@') {
        let fields: Vec<&str> = schedule.split_whitespace().collect();
        if !(5..=6).contains(&fields.len()) {
            return Err(invalid(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week) or 6 with \
                 leading seconds, found {}",
                fields.len()
            )));
        }
        // croner silently ignores empty list entries (`1,,2`).
        if let Some(field) = fields.iter().find(|f| f.split(',').any(str::is_empty)) {
            return Err(invalid(format!("empty list entry in {field:?}")));
        }
    }
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(schedule)
        .map_err(|e| invalid(describe(e)))
}

/// Non-empty, at most 64 characters, and a zone of the IANA database compiled in.
fn check_timezone(tz: &str) -> Result<(), ValidationError> {
    const FIELD: &str = "spec.timezone";
    if tz.is_empty() {
        return Err(ValidationError::new(FIELD, "must not be empty"));
    }
    check_len(tz, FIELD, MAX_TIMEZONE_LEN)?;
    if !tz
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'-' | b'/'))
    {
        return Err(ValidationError::new(
            FIELD,
            format!(
                "invalid timezone {tz:?}: expected an IANA name such as \"Europe/Berlin\" or \
                 \"UTC\""
            ),
        ));
    }
    if tz.parse::<chrono_tz::Tz>().is_err() {
        return Err(ValidationError::new(
            FIELD,
            format!(
                "unknown timezone {tz:?}: expected an IANA name such as \"Europe/Berlin\" or \
                 \"UTC\""
            ),
        ));
    }
    Ok(())
}

/// A parsed, valid trigger schedule: what is due when.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    tz: chrono_tz::Tz,
}

/// Fire times (unix ms) due now, and the new "last fire" to persist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// Oldest first.
    pub fires: Vec<i64>,
    /// Fire times missed and not run (the missed policy).
    pub skipped: u64,
    /// Persist this as the last fire time (before running `fires`).
    pub last: i64,
}

/// A fire time this late still counts as on time (a tick, a restart of the process).
pub const ON_TIME_GRACE_MS: i64 = 30_000;

impl Schedule {
    /// The schedule of a valid spec (see [`TriggerSpec::validate`]).
    pub fn of(spec: &TriggerSpec) -> Result<Schedule, ValidationError> {
        let Some(schedule) = spec.schedule.as_deref() else {
            return Err(ValidationError::new(
                "spec.schedule",
                "not set (an event trigger has no schedule)",
            ));
        };
        let cron = parse_schedule(schedule)
            .map_err(|message| ValidationError::new("spec.schedule", message))?;
        let tz = match &spec.timezone {
            Some(tz) => {
                check_timezone(tz)?;
                tz.parse::<chrono_tz::Tz>()
                    .map_err(|_| ValidationError::new("spec.timezone", "unknown timezone"))?
            }
            None => chrono_tz::Tz::UTC,
        };
        Ok(Schedule { cron, tz })
    }

    fn at(&self, ms: i64) -> Option<chrono::DateTime<chrono_tz::Tz>> {
        use chrono::TimeZone;
        self.tz.timestamp_millis_opt(ms).single()
    }

    /// The first fire time strictly after `after_ms`.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        let t = self.at(after_ms)?;
        self.cron
            .find_next_occurrence(&t, false)
            .ok()
            .map(|t| t.timestamp_millis())
    }

    /// What is due at `now_ms` when the trigger last fired for `last` (`None`: never;
    /// it then starts counting from now). Fire times in `(last, now]` that are more
    /// than [`ON_TIME_GRACE_MS`] late are missed: with `catchUp` the newest
    /// `maxCatchUp` (default 1) of them run, otherwise they are skipped. At most
    /// `maxCatchUp + 1` fire times are examined, however long the trigger was down.
    pub fn due(&self, last: Option<i64>, now_ms: i64, policy: Option<&MissedPolicy>) -> Due {
        let Some(last) = last else {
            return Due {
                fires: Vec::new(),
                skipped: 0,
                last: now_ms,
            };
        };
        let catch_up = match policy {
            Some(p) if p.mode == MissedPolicyMode::CatchUp => p.max_catch_up.unwrap_or(1),
            _ => 0,
        };
        // Walk back from now: the newest fire times first.
        let mut newest_first = Vec::new();
        let mut more = false;
        if let Some(mut t) = self.at(now_ms) {
            let mut inclusive = true;
            while let Ok(prev) = self.cron.find_previous_occurrence(&t, inclusive) {
                inclusive = false;
                let ms = prev.timestamp_millis();
                if ms <= last {
                    break;
                }
                if newest_first.len() as u64 > u64::from(catch_up) {
                    more = true;
                    break;
                }
                newest_first.push(ms);
                t = prev;
            }
        }
        let Some(&newest) = newest_first.first() else {
            return Due {
                fires: Vec::new(),
                skipped: 0,
                last,
            };
        };
        let mut fires = Vec::new();
        let mut skipped = 0u64;
        let mut caught_up = 0u32;
        for &ms in &newest_first {
            if now_ms - ms <= ON_TIME_GRACE_MS && fires.is_empty() {
                fires.push(ms);
            } else if caught_up < catch_up {
                caught_up += 1;
                fires.push(ms);
            } else {
                skipped += 1;
            }
        }
        if more {
            // Uncounted older misses: at least one more.
            skipped += 1;
        }
        fires.reverse();
        Due {
            fires,
            skipped,
            last: newest,
        }
    }
}

/// Where a trigger fires (`cloud` / `nodes` in a Trigger's status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FiresOn {
    /// The control plane fires it and dispatches a task (a `nodeSelector` target, or a
    /// cloud-placed function).
    Cloud,
    /// Each node it is placed on fires it from its local store, offline too (a `node`
    /// or `fanout` target, or no target and a function placed on edge nodes).
    Nodes,
}

impl TriggerSpec {
    /// Where this trigger fires, given whether its function is cloud-placed.
    pub fn fires_on(&self, function_in_cloud: bool) -> FiresOn {
        match &self.target {
            Some(t) if t.node.is_some() || t.fanout.is_some() => FiresOn::Nodes,
            Some(_) => FiresOn::Cloud,
            None if function_in_cloud => FiresOn::Cloud,
            None => FiresOn::Nodes,
        }
    }

    /// Whether the node `node` with `labels` fires this trigger itself; `function`
    /// is the trigger's function, when it exists.
    pub fn fired_by(
        &self,
        node: &str,
        labels: &std::collections::BTreeMap<String, String>,
        function: Option<&crate::specs::FunctionSpec>,
    ) -> bool {
        let Some(function) = function else {
            return false;
        };
        // Object events are dispatched by the cloud only.
        if self.schedule.is_none() {
            return false;
        }
        if self.fires_on(function.in_cloud()) != FiresOn::Nodes {
            return false;
        }
        match &self.target {
            Some(t) => {
                t.node.as_deref() == Some(node)
                    || t.fanout
                        .as_ref()
                        .is_some_and(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
            }
            None => function.placed_on(labels),
        }
    }

    pub fn validate(&self) -> Result<(), ValidationError> {
        match (&self.schedule, &self.event) {
            (Some(schedule), None) => {
                parse_schedule(schedule)
                    .map_err(|message| ValidationError::new("spec.schedule", message))?;
            }
            (None, Some(event)) => {
                event.validate()?;
                for (set, field) in [
                    (self.timezone.is_some(), "spec.timezone"),
                    (self.missed_policy.is_some(), "spec.missedPolicy"),
                ] {
                    if set {
                        return Err(ValidationError::new(
                            field,
                            "may only be set with spec.schedule",
                        ));
                    }
                }
                // An event trigger's input is the CloudEvent, or this object with the
                // CloudEvent added as `event`.
                if let Some(input) = &self.input {
                    if !input.is_object() {
                        return Err(ValidationError::new(
                            "spec.input",
                            "with spec.event, an object (the function gets it with the CloudEvent as `event`)",
                        ));
                    }
                    if input.get("event").is_some() {
                        return Err(ValidationError::new(
                            "spec.input.event",
                            "reserved for the CloudEvent",
                        ));
                    }
                    if self.sink.is_some() {
                        return Err(ValidationError::new(
                            "spec.input",
                            "a webhook sink gets the CloudEvent itself",
                        ));
                    }
                }
            }
            (Some(_), Some(_)) => {
                return Err(ValidationError::new(
                    "spec.event",
                    "set either spec.schedule or spec.event, not both",
                ));
            }
            (None, None) => {
                return Err(ValidationError::new(
                    "spec.schedule",
                    "one of spec.schedule or spec.event is required",
                ));
            }
        }
        if let Some(tz) = &self.timezone {
            check_timezone(tz)?;
        }
        match (&self.function, &self.sink) {
            (Some(function), None) => check_dns_label(function, "spec.function")?,
            (None, Some(sink)) => {
                if self.event.is_none() {
                    return Err(ValidationError::new(
                        "spec.sink",
                        "may only be set with spec.event",
                    ));
                }
                if self.target.is_some() {
                    return Err(ValidationError::new(
                        "spec.target",
                        "may only be set with spec.function",
                    ));
                }
                check_http_url(&sink.url, "spec.sink.url")?;
            }
            (Some(_), Some(_)) => {
                return Err(ValidationError::new(
                    "spec.sink",
                    "set either spec.function or spec.sink, not both",
                ));
            }
            (None, None) => {
                return Err(ValidationError::new(
                    "spec.function",
                    "one of spec.function or spec.sink is required",
                ));
            }
        }
        if let Some(input) = &self.input {
            check_json_size(input, "spec.input", MAX_INPUT_BYTES)?;
        }
        if let Some(target) = &self.target {
            target.validate("spec.target")?;
        }
        if let Some(policy) = &self.missed_policy
            && let Some(max) = policy.max_catch_up
        {
            const FIELD: &str = "spec.missedPolicy.maxCatchUp";
            if policy.mode != MissedPolicyMode::CatchUp {
                return Err(ValidationError::new(
                    FIELD,
                    "may only be set when mode is catchUp",
                ));
            }
            check_range(max, FIELD, 1, MAX_CATCH_UP)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        for good in [
            "* * * * *",
            "*/5 * * * *",
            "0 9-17/2 * * mon-fri",
            "30 0 1,15 jan,jul *",
            "0 0 L * *",
            "0 0 * * 5#2",
            "15 */5 * * * *",
            "@daily",
            "0 0 * * 7",
        ] {
            assert!(parse_schedule(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "   ",
            "* * * *",
            "* * * * * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * * 13 *",
            "* * * * 8",
            "5-1 * * * *",
            "*/0 * * * *",
            "a * * * *",
            "@sometimes",
            "1,,2 * * * *",
            ",1 * * * *",
            "1, * * * *",
            "1- * * * *",
            "1/2 * * * *",
            "@daily *",
        ] {
            let err = parse_schedule(bad).unwrap_err();
            assert!(!err.is_empty(), "{bad}");
            assert!(
                err.chars().next().is_some_and(|c| !c.is_uppercase()),
                "{err}"
            );
            assert!(!err.ends_with('.'), "{err}");
        }
    }

    fn schedule(expr: &str, tz: Option<&str>) -> Schedule {
        Schedule::of(&TriggerSpec {
            schedule: Some(expr.into()),
            event: None,
            timezone: tz.map(Into::into),
            function: Some("f".into()),
            sink: None,
            input: None,
            target: None,
            missed_policy: None,
        })
        .unwrap()
    }

    #[test]
    fn due_fires_on_time_skips_or_catches_up_missed_ones() {
        let every_min = schedule("* * * * *", None);
        let t0 = 1_700_000_040_000; // 22:14:00 UTC, a whole minute
        assert_eq!(every_min.next_after(t0), Some(t0 + 60_000));
        // Never fired: starts counting now.
        let d = every_min.due(None, t0 + 5_000, None);
        assert_eq!((d.fires.len(), d.last), (0, t0 + 5_000));
        // On time (within the grace).
        let d = every_min.due(Some(t0 + 5_000), t0 + 60_500, None);
        assert_eq!(d.fires, vec![t0 + 60_000]);
        assert_eq!((d.skipped, d.last), (0, t0 + 60_000));
        // Nothing new.
        let d = every_min.due(Some(t0 + 60_000), t0 + 61_000, None);
        assert!(d.fires.is_empty());
        assert_eq!(d.last, t0 + 60_000);
        // Down for 10 minutes: skip.
        let d = every_min.due(Some(t0), t0 + 600_000 + 45_000, None);
        assert!(d.fires.is_empty());
        assert!(d.skipped >= 1);
        assert_eq!(d.last, t0 + 600_000);
        // catchUp 3: the newest three missed runs, oldest first.
        let policy = MissedPolicy {
            mode: MissedPolicyMode::CatchUp,
            max_catch_up: Some(3),
        };
        let d = every_min.due(Some(t0), t0 + 600_000 + 45_000, Some(&policy));
        assert_eq!(d.fires, vec![t0 + 480_000, t0 + 540_000, t0 + 600_000]);
        assert_eq!(d.last, t0 + 600_000);
        // A year offline with a per-second schedule stays cheap.
        let every_sec = schedule("* * * * * *", None);
        let d = every_sec.due(Some(t0), t0 + 365 * 86_400_000, Some(&policy));
        // The one on time (now is a whole second) and three caught up.
        assert_eq!(d.fires.len(), 4);
        assert_eq!(d.last, t0 + 365 * 86_400_000);
    }

    #[test]
    fn timezones() {
        // 09:00 in Tokyo is 00:00 UTC.
        let s = schedule("0 9 * * *", Some("Asia/Tokyo"));
        let midnight_utc = 1_700_006_400_000; // 2023-11-15T00:00:00Z
        assert_eq!(s.next_after(midnight_utc - 1), Some(midnight_utc));
        let bad = TriggerSpec {
            schedule: Some("* * * * *".into()),
            event: None,
            timezone: Some("Mars/Olympus".into()),
            function: Some("f".into()),
            sink: None,
            input: None,
            target: None,
            missed_policy: None,
        };
        let e = bad.validate().unwrap_err();
        assert_eq!(e.field, "spec.timezone");
        assert!(e.message.contains("unknown timezone"), "{}", e.message);
    }

    #[test]
    fn error_messages() {
        assert_eq!(tidy("Invalid step."), "invalid step");
        assert_eq!(
            parse_schedule("* * * *").unwrap_err(),
            "invalid cron schedule \"* * * *\": expected 5 fields (minute hour day-of-month \
             month day-of-week) or 6 with leading seconds, found 4"
        );
        assert_eq!(
            parse_schedule("1,,2 * * * *").unwrap_err(),
            "invalid cron schedule \"1,,2 * * * *\": empty list entry in \"1,,2\""
        );
        assert_eq!(
            parse_schedule("*/0 * * * *").unwrap_err(),
            "invalid cron schedule \"*/0 * * * *\": step cannot be zero"
        );
        assert!(
            parse_schedule("0 0 * * * @x")
                .unwrap_err()
                .ends_with("illegal character '@' in part '@X'")
        );
    }

    fn parse(v: serde_json::Value) -> TriggerSpec {
        serde_json::from_value(v).unwrap()
    }

    fn field_of(v: serde_json::Value) -> String {
        parse(v).validate().unwrap_err().field
    }

    #[test]
    fn event_triggers_validate_every_field_by_name() {
        use serde_json::json;
        let ok = json!({"event": {"bucket": "uploads", "types": ["created"], "prefix": "in/",
            "suffix": ".jpg"}, "function": "thumb"});
        parse(ok.clone()).validate().unwrap();
        parse(
            json!({"event": {"bucket": "uploads", "types": ["created", "deleted"]},
            "sink": {"url": "https://hooks.example.com/x"}}),
        )
        .validate()
        .unwrap();
        let long = "k".repeat(MAX_EVENT_AFFIX_BYTES + 1);
        for (spec, field) in [
            (json!({"function": "f"}), "spec.schedule"),
            (
                json!({"schedule": "* * * * *", "event": ok["event"], "function": "f"}),
                "spec.event",
            ),
            (
                json!({"event": {"bucket": "Up", "types": ["created"]}, "function": "f"}),
                "spec.event.bucket",
            ),
            (
                json!({"event": {"bucket": "ab", "types": ["created"]}, "function": "f"}),
                "spec.event.bucket",
            ),
            (
                json!({"event": {"bucket": "-abc", "types": ["created"]}, "function": "f"}),
                "spec.event.bucket",
            ),
            (
                json!({"event": {"bucket": "a".repeat(64), "types": ["created"]}, "function": "f"}),
                "spec.event.bucket",
            ),
            (
                json!({"event": {"bucket": "a.b.c", "types": ["created"]}, "function": "f"}),
                "spec.event.bucket",
            ),
            (
                json!({"event": {"bucket": "abc", "types": []}, "function": "f"}),
                "spec.event.types",
            ),
            (
                json!({"event": {"bucket": "abc", "types": ["created", "created"]}, "function": "f"}),
                "spec.event.types[1]",
            ),
            (
                json!({"event": {"bucket": "abc", "types": ["created"], "prefix": long}, "function": "f"}),
                "spec.event.prefix",
            ),
            (
                json!({"event": {"bucket": "abc", "types": ["created"], "suffix": long}, "function": "f"}),
                "spec.event.suffix",
            ),
            (
                json!({"event": {"bucket": "abc", "types": ["created"], "prefix": "a\u{0}b"}, "function": "f"}),
                "spec.event.prefix",
            ),
            (json!({"event": ok["event"]}), "spec.function"),
            (
                json!({"event": ok["event"], "function": "f", "sink": {"url": "https://x.example"}}),
                "spec.sink",
            ),
            (
                json!({"event": ok["event"], "sink": {"url": "ftp://x.example"}}),
                "spec.sink.url",
            ),
            (
                json!({"event": ok["event"], "sink": {"url": format!("https://x.example/{}", "a".repeat(3000))}}),
                "spec.sink.url",
            ),
            (
                json!({"event": ok["event"], "sink": {"url": "https://x.example"}, "target": {"node": "n"}}),
                "spec.target",
            ),
            (
                json!({"schedule": "* * * * *", "sink": {"url": "https://x.example"}}),
                "spec.sink",
            ),
            (
                json!({"event": ok["event"], "function": "f", "input": [1]}),
                "spec.input",
            ),
            (
                json!({"event": ok["event"], "function": "f", "input": {"event": 1}}),
                "spec.input.event",
            ),
            (
                json!({"event": ok["event"], "sink": {"url": "https://x.example"}, "input": {}}),
                "spec.input",
            ),
            (
                json!({"event": ok["event"], "function": "f", "timezone": "UTC"}),
                "spec.timezone",
            ),
            (
                json!({"event": ok["event"], "function": "F!"}),
                "spec.function",
            ),
        ] {
            assert_eq!(field_of(spec.clone()), field, "{spec}");
        }
        // Unknown types are refused by the shape.
        assert!(
            serde_json::from_value::<TriggerSpec>(
                json!({"event": {"bucket": "abc", "types": ["updated"]}, "function": "f"})
            )
            .is_err()
        );
    }

    #[test]
    fn an_event_source_matches_bucket_type_prefix_and_suffix() {
        let e = parse(
            serde_json::json!({"event": {"bucket": "uploads", "types": ["created"],
            "prefix": "in/", "suffix": ".jpg"}, "function": "f"}),
        )
        .event
        .unwrap();
        assert!(e.matches("uploads", "in/a.jpg", EventType::Created));
        assert!(!e.matches("uploads", "in/a.jpg", EventType::Deleted));
        assert!(!e.matches("other", "in/a.jpg", EventType::Created));
        assert!(!e.matches("uploads", "out/a.jpg", EventType::Created));
        assert!(!e.matches("uploads", "in/a.png", EventType::Created));
        let all = EventSource {
            bucket: "uploads".into(),
            types: vec![EventType::Deleted, EventType::Created],
            prefix: None,
            suffix: None,
        };
        assert!(all.matches("uploads", "", EventType::Deleted));
        assert_eq!(
            EventType::Deleted.cloudevent_type(),
            "dev.verge.object.deleted"
        );
    }

    #[test]
    fn event_triggers_are_never_fired_by_nodes() {
        let spec = parse(
            serde_json::json!({"event": {"bucket": "uploads", "types": ["created"]},
            "function": "f", "target": {"node": "n1"}}),
        );
        let f: crate::specs::FunctionSpec =
            serde_json::from_value(serde_json::json!({"runtime": "builtin", "handler": "echo"}))
                .unwrap();
        assert!(!spec.fired_by("n1", &Default::default(), Some(&f)));
        assert!(Schedule::of(&spec).is_err());
    }
}
