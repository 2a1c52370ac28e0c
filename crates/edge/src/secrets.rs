//! Secrets on the node: the values of the `Secret` objects the cloud sent (only those
//! that what is placed here references, with only the referenced keys; decision 017),
//! turned into the environment variables and registry logins of Apps and Functions.
//!
//! Pure: works on objects the caller read from the local store. It must never log or
//! format a value; errors name the field, the Secret and the key only, and the
//! [`Resolved::fingerprint`] that makes a changed Secret restart what uses it holds
//! versions, not values.

use std::collections::BTreeMap;

use verge_api::Object;
use verge_api::specs::{Purpose, SecretSpec, SecretUse};

use crate::engine::RegistryCredentials;

/// The kind name of Secret objects in the local store.
pub const SECRET_KIND: &str = "Secret";

/// The Secrets on this node: name → (the version the cloud sent, key → value).
#[derive(Default)]
pub struct NodeSecrets {
    by_name: BTreeMap<String, (String, BTreeMap<String, String>)>,
}

/// What a spec's Secret references come to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    /// `secretEnv` names → values.
    pub env: BTreeMap<String, String>,
    /// The `registryAuth` login, if the spec has one.
    pub registry: Option<RegistryCredentials>,
    /// `name@version` of each Secret used: changes when one of them changes.
    pub fingerprint: String,
}

impl NodeSecrets {
    /// From the stored `Secret` objects (others and malformed ones are skipped).
    pub fn from_objects(objects: &[Object]) -> Self {
        let by_name = objects
            .iter()
            .filter(|o| o.kind == SECRET_KIND)
            .filter_map(|o| {
                let spec = serde_json::from_value::<SecretSpec>(o.spec.clone()).ok()?;
                let version = o.metadata.resource_version.clone().unwrap_or_default();
                Some((o.metadata.name.clone(), (version, spec.data)))
            })
            .collect();
        Self { by_name }
    }

    /// The values `uses` refer to. A missing Secret or key is the error (naming the
    /// field, the Secret and the key): nothing runs with an empty value instead.
    pub fn resolve(&self, uses: &[SecretUse]) -> Result<Resolved, String> {
        let values =
            verge_api::specs::resolve(uses, |name| self.by_name.get(name).map(|(_, data)| data))
                .map_err(|e| format!("{e} on this node"))?;
        let mut out = Resolved::default();
        let mut used: BTreeMap<&str, &str> = BTreeMap::new();
        for (u, v) in uses.iter().zip(values) {
            if let Some((version, _)) = self.by_name.get(&u.secret.name) {
                used.insert(&u.secret.name, version);
            }
            match &u.purpose {
                Purpose::Env(name) => {
                    out.env.insert(name.clone(), v.to_string());
                }
                Purpose::RegistryUsername => {
                    out.registry
                        .get_or_insert_with(|| RegistryCredentials {
                            username: String::new(),
                            password: String::new(),
                        })
                        .username = v.to_string();
                }
                Purpose::RegistryPassword => {
                    out.registry
                        .get_or_insert_with(|| RegistryCredentials {
                            username: String::new(),
                            password: String::new(),
                        })
                        .password = v.to_string();
                }
            }
        }
        out.fingerprint = used
            .iter()
            .map(|(n, v)| format!("{n}@{v}"))
            .collect::<Vec<_>>()
            .join(",");
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use verge_api::specs::{AppSpec, FunctionSpec};

    fn secret(name: &str, version: &str, data: serde_json::Value) -> Object {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "verge.dev/v1", "kind": "Secret",
            "metadata": {"name": name, "resourceVersion": version}, "spec": {"data": data}
        }))
        .unwrap()
    }

    #[test]
    fn env_and_registry_login_resolve_and_missing_ones_are_named() {
        let app: AppSpec = serde_json::from_value(serde_json::json!({
            "version": "1.0.0",
            "workload": {"docker": {"image": "r/x:1",
                "secretEnv": {"DB_PASSWORD": {"name": "db", "key": "password"}},
                "registryAuth": {"name": "reg"}}}
        }))
        .unwrap();
        let uses = app.secret_uses();
        let db = secret("db", "11", serde_json::json!({"password": "hunter2"}));
        let reg = secret(
            "reg",
            "12",
            serde_json::json!({"username": "bob", "password": "pw"}),
        );
        let all = NodeSecrets::from_objects(&[db.clone(), reg.clone()]);
        let r = all.resolve(&uses).unwrap();
        assert_eq!(r.env["DB_PASSWORD"], "hunter2");
        let login = r.registry.unwrap();
        assert_eq!(
            (login.username.as_str(), login.password.as_str()),
            ("bob", "pw")
        );
        assert_eq!(r.fingerprint, "db@11,reg@12");
        assert!(!r.fingerprint.contains("hunter2"));

        let e = NodeSecrets::from_objects(std::slice::from_ref(&reg))
            .resolve(&uses)
            .unwrap_err();
        assert_eq!(
            e,
            "spec.workload.docker.secretEnv.DB_PASSWORD: Secret \"db\" not found on this node"
        );
        let partial = secret("reg", "13", serde_json::json!({"username": "bob"}));
        let e = NodeSecrets::from_objects(&[db.clone(), partial])
            .resolve(&uses)
            .unwrap_err();
        assert!(
            e.contains("registryAuth: Secret \"reg\" has no key \"password\""),
            "{e}"
        );
        assert!(!e.contains("bob") && !e.contains("hunter2"));

        let f: FunctionSpec = serde_json::from_value(serde_json::json!({
            "runtime": "python3", "handler": "h.main", "code": "x",
            "secretEnv": {"X": {"name": "db", "key": "password"}}
        }))
        .unwrap();
        let changed = secret("db", "20", serde_json::json!({"password": "new"}));
        let r = NodeSecrets::from_objects(&[changed])
            .resolve(&f.secret_uses())
            .unwrap();
        assert_eq!(
            (r.env["X"].as_str(), r.fingerprint.as_str()),
            ("new", "db@20")
        );
        assert_eq!(
            NodeSecrets::default().resolve(&[]).unwrap(),
            Resolved::default()
        );
    }
}
