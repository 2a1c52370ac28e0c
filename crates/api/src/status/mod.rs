//! Typed statuses: what controllers write under `status` and readers read back, as
//! types instead of string paths into JSON. One [`Condition`] type serves every kind.
//!
//! Pure: no I/O, no clock (the caller passes `now`).

pub mod node;

use serde::{Deserialize, Serialize};

pub mod function;
pub mod task;
pub mod trigger;

/// Whether a condition holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ConditionStatus {
    True,
    False,
    #[default]
    Unknown,
}

impl ConditionStatus {
    pub fn from_bool(b: bool) -> Self {
        if b {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        }
    }
}

/// One observation about an object (`Ready`, `Scheduled`, `Available`, …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// What is observed (`Ready`, `Scheduled`, …); unique within one list.
    #[serde(rename = "type")]
    pub type_: String,
    pub status: ConditionStatus,
    /// A CamelCase word saying why.
    #[serde(default)]
    pub reason: String,
    /// For people.
    #[serde(default)]
    pub message: String,
    /// When `status` last changed (RFC 3339); kept while it stays the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

impl Condition {
    pub fn new(
        type_: &str,
        status: ConditionStatus,
        reason: &str,
        message: impl Into<String>,
    ) -> Self {
        Condition {
            type_: type_.to_string(),
            status,
            reason: reason.to_string(),
            message: message.into(),
            last_transition_time: None,
        }
    }

    pub fn is_true(&self) -> bool {
        self.status == ConditionStatus::True
    }
}

/// Sets `new` in `list` (replacing the condition of the same type). Its
/// `lastTransitionTime` is the old one when `status` did not change, else `now`.
/// Returns whether the status changed (or the condition is new).
pub fn set_condition(list: &mut Vec<Condition>, mut new: Condition, now: &str) -> bool {
    match list.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            let changed = old.status != new.status;
            new.last_transition_time = if changed || old.last_transition_time.is_none() {
                Some(now.to_string())
            } else {
                old.last_transition_time.clone()
            };
            *old = new;
            changed
        }
        None => {
            new.last_transition_time = Some(now.to_string());
            list.push(new);
            true
        }
    }
}

/// The condition of `type_` in `list`.
pub fn find<'a>(list: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    list.iter().find(|c| c.type_ == type_)
}

/// Whether `list` has `type_` with status `True`.
pub fn is_true(list: &[Condition], type_: &str) -> bool {
    find(list, type_).is_some_and(Condition::is_true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_condition_keeps_its_transition_time_while_its_status_stays() {
        let mut l = Vec::new();
        let ready = |s| Condition::new("Ready", s, "Connected", "");
        assert!(set_condition(&mut l, ready(ConditionStatus::True), "t1"));
        assert!(!set_condition(&mut l, ready(ConditionStatus::True), "t2"));
        assert_eq!(l[0].last_transition_time.as_deref(), Some("t1"));
        assert!(set_condition(&mut l, ready(ConditionStatus::False), "t3"));
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].last_transition_time.as_deref(), Some("t3"));
        assert!(!is_true(&l, "Ready"));
        assert!(set_condition(
            &mut l,
            Condition::new("Scheduled", ConditionStatus::True, "Scheduled", "2 nodes"),
            "t4"
        ));
        assert!(is_true(&l, "Scheduled"));
        assert_eq!(
            find(&l, "Ready").map(|c| c.status),
            Some(ConditionStatus::False)
        );
    }

    #[test]
    fn conditions_read_the_json_the_cloud_wrote() {
        let v = serde_json::json!([{"type": "Ready", "status": "True", "reason": "Connected",
            "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"},
            {"type": "Available", "status": "False", "reason": "Progressing", "message": "m"}]);
        let l: Vec<Condition> = serde_json::from_value(v.clone()).unwrap();
        assert!(is_true(&l, "Ready"));
        assert_eq!(l[1].last_transition_time, None);
        let back = serde_json::to_value(&l).unwrap();
        assert_eq!(back[0], v[0]);
        assert!(
            serde_json::from_value::<Condition>(
                serde_json::json!({"type": "X", "status": "Maybe"})
            )
            .is_err()
        );
    }
}
