//! `verge cloud recover-admin --data-dir DIR`: mints a new admin token offline, for an
//! operator with shell access to the data dir when no admin token works any more
//! (lost, revoked before the last-admin rule existed, expired).
//!
//! It takes the data dir's lock first, so it never writes a store that a running
//! `verge cloud` owns (the cloud's writer numbers revisions in memory, and its token
//! cache would not see the new token): with the cloud running it is refused, naming
//! the cloud's pid; a cloud started during recovery is refused in turn (neither
//! waits). The token is stored like every other one (only the
//! SHA-256 of its secret, under `/system/tokens/{id}`), written to `DIR/admin.token`
//! (0600) and into `DIR/admin.config` (0600) for the server address the cloud last
//! bound (`DIR/api.addr`); the cloud rewrites `admin.config` from `admin.token` at its
//! next start anyway. Nothing else is changed: existing tokens stay as they are.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use verge_store::{DynStore, SqliteOptions, SqliteStore};

use crate::auth::{Authenticator, NewToken, Role};
use crate::client_config::ClientConfig;
use crate::error::{Error, Result};
use crate::files;
use crate::secure_fs::{read_to_string, take_data_dir, write_private};

/// What [`recover_admin`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// The new token's id (its secret is only in the file).
    pub token_id: String,
    /// `DIR/admin.token`.
    pub token_path: PathBuf,
    /// `DIR/admin.config`, when the cloud's last address was known.
    pub config_path: Option<PathBuf>,
}

/// See the module documentation.
pub async fn recover_admin(data_dir: &Path) -> Result<Recovered> {
    let db = data_dir.join(files::STORE_DB);
    if !db.is_file() {
        return Err(Error::Config(format!(
            "{} has no {}: not the data dir of a verge cloud",
            data_dir.display(),
            files::STORE_DB
        )));
    }
    let _lock = take_data_dir(data_dir, "verge cloud recover-admin").map_err(|e| match e {
        Error::DataDir(held @ verge_datadir::Error::Held { .. }) => {
            Error::Config(format!("recover-admin needs the store to itself: {held}"))
        }
        other => other,
    })?;
    let sqlite = Arc::new(SqliteStore::open(SqliteOptions::new(&db)).await?);
    let result = mint(sqlite.clone() as DynStore, data_dir).await;
    sqlite.close().await;
    result
}

async fn mint(store: DynStore, data_dir: &Path) -> Result<Recovered> {
    let auth = Authenticator::load(store).await?;
    let (rec, token) = auth
        .create(NewToken {
            role: Role::Admin,
            description: Some("recovered admin token (verge cloud recover-admin)".into()),
            ..Default::default()
        })
        .await
        .map_err(|e| Error::Config(format!("creating the admin token: {}", e.message)))?;
    let token_path = data_dir.join(files::ADMIN_TOKEN);
    write_private(&token_path, format!("{token}\n").as_bytes())?;
    tracing::info!(token_id = %rec.id, path = %token_path.display(), "recovered admin token written");

    let config_path = match read_to_string(&data_dir.join(files::API_ADDR)) {
        Ok(url) => {
            let server = url.trim().to_string();
            let ca = if server.starts_with("https://") {
                Some(read_to_string(&data_dir.join(files::CA_CERT))?)
            } else {
                None
            };
            let path = data_dir.join(files::ADMIN_CONFIG);
            ClientConfig {
                server,
                certificate_authority_data: ca,
                token,
            }
            .save(&path)?;
            Some(path)
        }
        Err(_) => None,
    };
    Ok(Recovered {
        token_id: rec.id,
        token_path,
        config_path,
    })
}
