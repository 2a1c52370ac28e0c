//! `Trigger`: starts a task of a function on a cron schedule.

use croner::Cron;
use croner::errors::CronError;
use croner::parser::{CronParser, Seconds, Year};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ValidationError;
use crate::limits::*;
use crate::specs::common::TaskTarget;
use crate::validate::{check_dns_label, check_json_size, check_len, check_range};

/// Spec of a `Trigger`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TriggerSpec {
    /// Cron schedule: 5 fields (`*/5 * * * *`) or 6 with leading seconds. Ranges,
    /// steps, lists, month and weekday names, `@daily`-style nicknames, and the `L`, `W`,
    /// `#` extensions are accepted.
    pub schedule: String,
    /// IANA timezone name the schedule is evaluated in; UTC when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Function to run (DNS-1123 label).
    pub function: String,
    /// Input handed to every task started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<TaskTarget>,
    /// What to do with fire times missed while the control plane was down (default:
    /// skip).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed_policy: Option<MissedPolicy>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MissedPolicy {
    pub mode: MissedPolicyMode,
    /// With `catchUp`: at most this many missed runs are started, 1..=1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_catch_up: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
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

/// For now: non-empty, at most 64 characters of `[A-Za-z0-9_+-/]`.
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
    Ok(())
}

impl TriggerSpec {
    pub fn validate(&self) -> Result<(), ValidationError> {
        parse_schedule(&self.schedule)
            .map_err(|message| ValidationError::new("spec.schedule", message))?;
        if let Some(tz) = &self.timezone {
            check_timezone(tz)?;
        }
        check_dns_label(&self.function, "spec.function")?;
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
}
