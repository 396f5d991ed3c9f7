//! Where `tunnox admin` finds the API and its key: flags, then environment variables, then the
//! config file (`--config FILE`, or `~/.config/tunnox/admin.yaml` if it exists).

use std::path::{Path, PathBuf};

use clap::Args;

use super::error::AdminError;
use super::http::{ApiKey, BaseUrl};

/// Text that is a secret: its `Debug` form does not show it.
#[derive(Clone, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl From<String> for Secret {
    fn from(text: String) -> Secret {
        Secret(text)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<hidden>")
    }
}

/// How to reach the API (each flag also from its environment variable, then the config file).
#[derive(Debug, Args)]
pub struct ConnectionArgs {
    /// The API's base URL, e.g. `http://127.0.0.1:9100` (the node's --api-listen) [config: api_url].
    #[arg(
        long = "api",
        env = "TUNNOX_API_URL",
        value_name = "URL",
        global = true,
        help_heading = "Admin options"
    )]
    api_url: Option<String>,
    /// The API key [config: api_key or api_key_file]. Prefer the variable or the config file:
    /// a flag shows in the process list.
    #[arg(
        long,
        env = "TUNNOX_API_KEY",
        hide_env_values = true,
        value_name = "KEY",
        global = true,
        help_heading = "Admin options"
    )]
    key: Option<Secret>,
    /// The config file [default: ~/.config/tunnox/admin.yaml, if it exists].
    #[arg(
        long,
        value_name = "FILE",
        global = true,
        help_heading = "Admin options"
    )]
    config: Option<PathBuf>,
    /// Trust the API's https certificate through the CAs in this PEM file instead of the
    /// system's [config: ca_file].
    #[arg(
        long,
        value_name = "FILE",
        global = true,
        help_heading = "Admin options"
    )]
    ca_file: Option<PathBuf>,
    /// Give up on a request after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30, global = true,
          help_heading = "Admin options",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout_secs: u64,
}

/// The config file of `tunnox admin`. Relative paths in it are relative to the file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminFile {
    /// The API's base URL.
    api_url: Option<String>,
    /// The API key.
    api_key: Option<Secret>,
    /// A file holding the API key.
    api_key_file: Option<PathBuf>,
    /// A PEM file of CAs to trust for https.
    ca_file: Option<PathBuf>,
}

/// Largest config or key file read.
const FILE_BYTES_MAX: u64 = 64 * 1024;

/// Where the API is and how to talk to it.
#[derive(Debug)]
pub struct Settings {
    /// The API's base URL.
    pub base: BaseUrl,
    /// The API key.
    pub key: ApiKey,
    /// CAs to trust for https instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// Request timeout, seconds.
    pub timeout_secs: u64,
}

impl ConnectionArgs {
    /// The settings from the flags (or their variables), completed from the config file.
    pub fn resolve(&self) -> Result<Settings, AdminError> {
        let (file, file_path) = match &self.config {
            Some(path) => (read_file(path)?, Some(path.clone())),
            None => match default_config_path().filter(|p| p.is_file()) {
                Some(path) => (read_file(&path)?, Some(path)),
                None => (AdminFile::default(), None),
            },
        };
        let file_name = file_path
            .as_ref()
            .map_or_else(|| "the config file".to_owned(), |p| p.display().to_string());
        let beside_file = |path: &Path| match file_path.as_ref().and_then(|f| f.parent()) {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_owned(),
        };

        let url = match (&self.api_url, &file.api_url) {
            (Some(url), _) => url.clone(),
            (None, Some(url)) => url.clone(),
            (None, None) => {
                return Err(AdminError::Usage(format!(
                    "no API URL: pass --api URL, set TUNNOX_API_URL, or put api_url in {}",
                    file_path.as_ref().map_or_else(
                        || "~/.config/tunnox/admin.yaml".to_owned(),
                        |p| p.display().to_string()
                    )
                )));
            }
        };
        let base = BaseUrl::parse(&url)?;

        if file.api_key.is_some() && file.api_key_file.is_some() {
            return Err(AdminError::Usage(format!(
                "{file_name}: api_key and api_key_file are both set; keep one"
            )));
        }
        let key = match (&self.key, &file.api_key, &file.api_key_file) {
            (Some(key), _, _) => ApiKey::new(key.0.clone(), "--key or TUNNOX_API_KEY")?,
            (None, Some(key), _) => ApiKey::new(key.0.clone(), &format!("api_key in {file_name}"))?,
            (None, None, Some(path)) => {
                let path = beside_file(path);
                let text = read_limited(&path).map_err(|e| {
                    AdminError::Usage(format!(
                        "api_key_file in {file_name}: cannot read {}: {e}",
                        path.display()
                    ))
                })?;
                ApiKey::new(text, &path.display().to_string())?
            }
            (None, None, None) => {
                return Err(AdminError::Usage(
                    "no API key: set TUNNOX_API_KEY, pass --key, or put api_key or \
                     api_key_file in the config file"
                        .into(),
                ));
            }
        };
        let ca_file = self
            .ca_file
            .clone()
            .or_else(|| file.ca_file.as_deref().map(beside_file));
        Ok(Settings {
            base,
            key,
            ca_file,
            timeout_secs: self.timeout_secs,
        })
    }
}

/// `$XDG_CONFIG_HOME/tunnox/admin.yaml`, else `$HOME/.config/tunnox/admin.yaml`.
fn default_config_path() -> Option<PathBuf> {
    let non_empty = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    let config_dir = non_empty("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| non_empty("HOME").map(|home| PathBuf::from(home).join(".config")))?;
    Some(config_dir.join("tunnox").join("admin.yaml"))
}

fn read_file(path: &Path) -> Result<AdminFile, AdminError> {
    let text = read_limited(path)
        .map_err(|e| AdminError::Usage(format!("cannot read {}: {e}", path.display())))?;
    if text.trim().is_empty() {
        return Ok(AdminFile::default());
    }
    serde_yaml_ng::from_str(&text)
        .map_err(|e| AdminError::Usage(format!("{}: {e}", path.display())))
}

fn read_limited(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(FILE_BYTES_MAX + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > FILE_BYTES_MAX {
        return Err(std::io::Error::other(format!(
            "larger than {FILE_BYTES_MAX} bytes"
        )));
    }
    Ok(text)
}
