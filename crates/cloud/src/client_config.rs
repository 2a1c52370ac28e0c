//! The CLI configuration file (`admin.config`, `~/.verge/config`): where the API is,
//! the CA to trust, and the bearer token. Written 0600 because it holds a token.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::secure_fs::{read_to_string, write_private};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientConfig {
    /// `https://127.0.0.1:7443`
    pub server: String,
    /// PEM of the cluster CA (inline, so the file is self-contained).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_authority_data: Option<String>,
    pub token: String,
}

impl ClientConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = read_to_string(path)?;
        serde_norway::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            crate::secure_fs::ensure_private_dir(dir)?;
        }
        let text = serde_norway::to_string(self)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        write_private(path, text.as_bytes())
    }
}
