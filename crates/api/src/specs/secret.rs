//! `Secret`: named sensitive values (passwords, tokens, keys) that workloads reference
//! by name — from `secretEnv` (Docker and native Apps, Functions) and from a Docker
//! workload's `registryAuth` — instead of carrying them in their own spec.
//!
//! This file owns the shape and bounds of a Secret, the references a spec makes
//! ([`SecretUse`], collected by `AppSpec::secret_uses` / `FunctionSpec::secret_uses`),
//! their resolution against the Secrets at hand ([`resolve`]) and the form a reader
//! without the right to the values gets ([`redacted`]). It must not know how values are
//! encrypted or stored: that is the cloud's `secrets.rs`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::ValidationError;
use crate::limits::{MAX_ENV, MAX_SECRET_BYTES, MAX_SECRET_KEY_LEN, MAX_SECRET_KEYS};
use crate::object::Object;
use crate::validate::{check_dns_label, check_env_name};

pub use crate::names::{ANNOTATION_REDACTED, ANNOTATION_SECRET_ERROR};

/// Key of a Secret a Docker workload's `registryAuth` reads the user name from.
pub const REGISTRY_USERNAME_KEY: &str = "username";
/// Key of a Secret a Docker workload's `registryAuth` reads the password from.
pub const REGISTRY_PASSWORD_KEY: &str = "password";

/// Spec of a `Secret`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretSpec {
    /// Key → value, as plain UTF-8 text (no base64). Keys: a letter or `_`, then
    /// `[A-Za-z0-9_.-]`, at most 253 characters; at most 64 keys and 64 KiB of keys
    /// and values. Encrypted at rest; readers with the viewer role get the keys only.
    #[serde(default)]
    pub data: BTreeMap<String, String>,
}

/// One value of a Secret: `{name, key}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret (DNS-1123 label).
    pub name: String,
    /// Key in its `data`.
    pub key: String,
}

/// `[A-Za-z_][A-Za-z0-9_.-]*`, 1..=253 bytes: usable as a file or variable name.
pub fn is_secret_key(key: &str) -> bool {
    let b = key.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_SECRET_KEY_LEN
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn check_secret_key(key: &str, field: &str) -> Result<(), ValidationError> {
    if is_secret_key(key) {
        Ok(())
    } else {
        Err(ValidationError::new(
            field,
            format!(
                "invalid key {key:?}: must be a letter or '_' followed by [A-Za-z0-9_.-] (at \
                 most {MAX_SECRET_KEY_LEN} characters)"
            ),
        ))
    }
}

impl SecretSpec {
    /// Bounds and key names. Messages never quote a value.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.data.len() > MAX_SECRET_KEYS {
            return Err(ValidationError::new(
                "spec.data",
                format!("at most {MAX_SECRET_KEYS} keys (found {})", self.data.len()),
            ));
        }
        let mut total = 0usize;
        for (k, v) in &self.data {
            let field = format!("spec.data.{k}");
            check_secret_key(k, &field)?;
            if v.contains('\0') {
                return Err(ValidationError::new(field, "must not contain NUL bytes"));
            }
            total += k.len() + v.len();
        }
        if total > MAX_SECRET_BYTES {
            return Err(ValidationError::new(
                "spec.data",
                format!("at most {MAX_SECRET_BYTES} bytes of keys and values (found {total})"),
            ));
        }
        Ok(())
    }
}

/// `secretEnv` of a workload: variable names like `env`, no name in both, references
/// well-formed, `env` and `secretEnv` together at most [`MAX_ENV`] entries. Errors name
/// `<path>.<NAME>`.
pub(crate) fn check_secret_env(
    secret_env: &BTreeMap<String, SecretKeyRef>,
    env: &BTreeMap<String, String>,
    path: &str,
) -> Result<(), ValidationError> {
    if env.len() + secret_env.len() > MAX_ENV {
        return Err(ValidationError::new(
            path,
            format!(
                "too many entries ({} here and {} in env, at most {MAX_ENV} together)",
                secret_env.len(),
                env.len()
            ),
        ));
    }
    for (name, r) in secret_env {
        let field = format!("{path}.{name}");
        check_env_name(name, &field)?;
        if env.contains_key(name) {
            return Err(ValidationError::new(
                field,
                "is also set in env; set it in one place",
            ));
        }
        check_dns_label(&r.name, &format!("{field}.name"))?;
        check_secret_key(&r.key, &format!("{field}.key"))?;
    }
    Ok(())
}

/// What a referenced value is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purpose {
    /// The environment variable of this name.
    Env(String),
    /// The user name of a Docker registry login.
    RegistryUsername,
    /// The password of a Docker registry login.
    RegistryPassword,
}

/// One reference a spec makes to a Secret's value, with the field that makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretUse {
    /// `spec.workload.docker.secretEnv.DB_PASSWORD`, `spec.workload.docker.registryAuth`.
    pub field: String,
    pub secret: SecretKeyRef,
    pub purpose: Purpose,
}

/// The `secretEnv` entries of a spec as uses.
pub(crate) fn env_uses(secret_env: &BTreeMap<String, SecretKeyRef>, path: &str) -> Vec<SecretUse> {
    secret_env
        .iter()
        .map(|(name, r)| SecretUse {
            field: format!("{path}.{name}"),
            secret: r.clone(),
            purpose: Purpose::Env(name.clone()),
        })
        .collect()
}

/// The uses of a `registryAuth: {name}` at `field`: the `username` and `password` keys.
pub(crate) fn registry_uses(secret: &str, field: &str) -> Vec<SecretUse> {
    [
        (REGISTRY_USERNAME_KEY, Purpose::RegistryUsername),
        (REGISTRY_PASSWORD_KEY, Purpose::RegistryPassword),
    ]
    .into_iter()
    .map(|(key, purpose)| SecretUse {
        field: field.to_string(),
        secret: SecretKeyRef {
            name: secret.to_string(),
            key: key.to_string(),
        },
        purpose,
    })
    .collect()
}

/// The values `uses` refer to, in order, looked up with `lookup` (name → the Secret's
/// data, if there is such a Secret). The first reference that cannot be resolved is
/// the error, naming the field, the Secret and the key — never a value.
pub fn resolve<'a>(
    uses: &[SecretUse],
    lookup: impl Fn(&str) -> Option<&'a BTreeMap<String, String>>,
) -> Result<Vec<&'a str>, String> {
    uses.iter()
        .map(|u| match lookup(&u.secret.name) {
            None => Err(format!("{}: Secret {:?} not found", u.field, u.secret.name)),
            Some(data) => data.get(&u.secret.key).map(String::as_str).ok_or_else(|| {
                format!(
                    "{}: Secret {:?} has no key {:?}",
                    u.field, u.secret.name, u.secret.key
                )
            }),
        })
        .collect()
}

/// The form of a Secret for a reader who may not see values: every `spec.data` value
/// replaced by `""` (keys kept), marked with [`ANNOTATION_REDACTED`].
pub fn redacted(obj: &Object) -> Object {
    let mut out = obj.clone();
    if let Some(data) = out.spec.get_mut("data").and_then(|d| d.as_object_mut()) {
        for v in data.values_mut() {
            *v = serde_json::Value::String(String::new());
        }
    }
    out.metadata
        .annotations
        .insert(ANNOTATION_REDACTED.to_string(), "true".to_string());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(pairs: &[(&str, &str)]) -> SecretSpec {
        SecretSpec {
            data: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn keys_count_and_size_are_bounded_and_errors_never_quote_values() {
        spec(&[("password", "hunter2"), ("tls.crt", "x\ny"), ("_A-1", "")])
            .validate()
            .unwrap();
        for bad in ["", "1abc", "a b", "a/b", ".hidden", &"k".repeat(254)] {
            let e = spec(&[(bad, "v")]).validate().unwrap_err();
            assert_eq!(e.field, format!("spec.data.{bad}"));
        }
        let e = spec(&[("k", "sec\0ret")]).validate().unwrap_err();
        assert_eq!(e.field, "spec.data.k");
        assert!(!e.message.contains("sec"), "{}", e.message);
        let many: Vec<(String, String)> = (0..=MAX_SECRET_KEYS)
            .map(|i| (format!("k{i}"), "v".to_string()))
            .collect();
        let e = SecretSpec {
            data: many.into_iter().collect(),
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field, "spec.data");
        let big = "s".repeat(MAX_SECRET_BYTES);
        let e = spec(&[("k", &big)]).validate().unwrap_err();
        assert_eq!(e.field, "spec.data");
        assert!(!e.message.contains("sss"));
    }

    fn r(name: &str, key: &str) -> SecretKeyRef {
        SecretKeyRef {
            name: name.into(),
            key: key.into(),
        }
    }

    #[test]
    fn secret_env_names_references_and_overlap_are_checked() {
        let env = BTreeMap::from([("PLAIN".to_string(), "1".to_string())]);
        let ok = BTreeMap::from([("DB_PASSWORD".to_string(), r("db", "password"))]);
        check_secret_env(&ok, &env, "spec.secretEnv").unwrap();
        let cases = [
            ("1BAD", r("db", "k"), "spec.secretEnv.1BAD"),
            ("PLAIN", r("db", "k"), "spec.secretEnv.PLAIN"),
            ("X", r("Db", "k"), "spec.secretEnv.X.name"),
            ("X", r("db", "no/slash"), "spec.secretEnv.X.key"),
        ];
        for (name, reference, field) in cases {
            let m = BTreeMap::from([(name.to_string(), reference)]);
            assert_eq!(
                check_secret_env(&m, &env, "spec.secretEnv")
                    .unwrap_err()
                    .field,
                field
            );
        }
        let many: BTreeMap<String, SecretKeyRef> = (0..MAX_ENV)
            .map(|i| (format!("S{i}"), r("db", "k")))
            .collect();
        assert_eq!(
            check_secret_env(&many, &env, "spec.secretEnv")
                .unwrap_err()
                .field,
            "spec.secretEnv"
        );
    }

    #[test]
    fn resolve_names_the_field_secret_and_key_but_no_value() {
        let mut uses = env_uses(
            &BTreeMap::from([("DB".to_string(), r("db", "password"))]),
            "spec.secretEnv",
        );
        uses.extend(registry_uses("reg", "spec.workload.docker.registryAuth"));
        let db = BTreeMap::from([("password".to_string(), "hunter2".to_string())]);
        let reg = BTreeMap::from([
            ("username".to_string(), "bob".to_string()),
            ("password".to_string(), "pw".to_string()),
        ]);
        let both = |n: &str| match n {
            "db" => Some(&db),
            "reg" => Some(&reg),
            _ => None,
        };
        assert_eq!(resolve(&uses, both).unwrap(), ["hunter2", "bob", "pw"]);
        assert_eq!(uses[2].purpose, Purpose::RegistryPassword);
        let e = resolve(&uses, |n| (n == "reg").then_some(&reg)).unwrap_err();
        assert_eq!(e, "spec.secretEnv.DB: Secret \"db\" not found");
        let partial = BTreeMap::from([("username".to_string(), "bob".to_string())]);
        let e = resolve(&uses, |n| match n {
            "db" => Some(&db),
            _ => Some(&partial),
        })
        .unwrap_err();
        assert_eq!(
            e,
            "spec.workload.docker.registryAuth: Secret \"reg\" has no key \"password\""
        );
        assert!(!e.contains("bob"));
    }

    #[test]
    fn redacted_keeps_keys_hides_values_and_marks_the_object() {
        let obj: Object = serde_json::from_value(serde_json::json!({
            "apiVersion": "verge.dev/v1", "kind": "Secret", "metadata": {"name": "db"},
            "spec": {"data": {"password": "hunter2", "user": "bob"}}
        }))
        .unwrap();
        let r = redacted(&obj);
        assert_eq!(
            r.spec,
            serde_json::json!({"data": {"password": "", "user": ""}})
        );
        assert_eq!(r.metadata.annotations[ANNOTATION_REDACTED], "true");
        assert!(!serde_json::to_string(&r).unwrap().contains("hunter2"));
    }
}
