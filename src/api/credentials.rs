//! Admin API credentials: where they come from (env or a mounted Secret directory) and how they stay secret.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};

/// A secret string. Its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The only way to read the value; grep for it to audit every use.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One of the two authentication schemes of the admin API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    /// `Authorization: Bearer <token>`.
    Bearer(Secret),
    /// `api-key` + `api-secret` headers.
    ApiKey { key: Secret, secret: Secret },
}

/// Why credentials could not be loaded. Never carries a secret value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialsError {
    #[error(
        "no admin API credentials: set COMPUTE_API_TOKEN, or COMPUTE_API_KEY and COMPUTE_API_SECRET, or --credentials-dir"
    )]
    Missing,
    #[error("COMPUTE_API_KEY and COMPUTE_API_SECRET must be set together")]
    HalfKeyPair,
    #[error("credentials directory {dir}: {reason}")]
    Dir { dir: String, reason: String },
    #[error("credential value contains characters not allowed in an HTTP header")]
    InvalidHeaderValue,
}

impl Credentials {
    /// From `COMPUTE_API_TOKEN`, or `COMPUTE_API_KEY` + `COMPUTE_API_SECRET`.
    pub fn from_env_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self, CredentialsError> {
        let non_empty = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        if let Some(token) = non_empty("COMPUTE_API_TOKEN") {
            return Ok(Self::Bearer(Secret::new(token.trim())));
        }
        match (non_empty("COMPUTE_API_KEY"), non_empty("COMPUTE_API_SECRET")) {
            (Some(key), Some(secret)) => Ok(Self::ApiKey {
                key: Secret::new(key.trim()),
                secret: Secret::new(secret.trim()),
            }),
            (None, None) => Err(CredentialsError::Missing),
            _ => Err(CredentialsError::HalfKeyPair),
        }
    }

    /// From a directory laid out like a mounted Secret: `token`, or `api-key` and `api-secret`.
    pub fn from_dir(dir: &Path) -> Result<Self, CredentialsError> {
        let read = |name: &str| -> Result<Option<String>, CredentialsError> {
            match std::fs::read_to_string(dir.join(name)) {
                Ok(v) if v.trim().is_empty() => Ok(None),
                Ok(v) => Ok(Some(v.trim().to_owned())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(CredentialsError::Dir {
                    dir: dir.display().to_string(),
                    reason: format!("cannot read {name}: {}", e.kind()),
                }),
            }
        };
        if let Some(token) = read("token")? {
            return Ok(Self::Bearer(Secret::new(token)));
        }
        match (read("api-key")?, read("api-secret")?) {
            (Some(key), Some(secret)) => Ok(Self::ApiKey {
                key: Secret::new(key),
                secret: Secret::new(secret),
            }),
            (None, None) => Err(CredentialsError::Dir {
                dir: dir.display().to_string(),
                reason: "holds neither `token` nor `api-key` + `api-secret`".into(),
            }),
            _ => Err(CredentialsError::Dir {
                dir: dir.display().to_string(),
                reason: "`api-key` and `api-secret` must both be present".into(),
            }),
        }
    }

    /// The request headers for this scheme, marked sensitive so HTTP tooling does not print them.
    pub fn headers(&self) -> Result<HeaderMap, CredentialsError> {
        let value = |s: &str| {
            let mut v = HeaderValue::from_str(s).map_err(|_| CredentialsError::InvalidHeaderValue)?;
            v.set_sensitive(true);
            Ok::<_, CredentialsError>(v)
        };
        let mut h = HeaderMap::new();
        match self {
            Self::Bearer(token) => {
                h.insert(AUTHORIZATION, value(&format!("Bearer {}", token.expose()))?);
            }
            Self::ApiKey { key, secret } => {
                h.insert("api-key", value(key.expose())?);
                h.insert("api-secret", value(secret.expose())?);
            }
        }
        Ok(h)
    }
}

/// Where credentials come from. A directory source is re-read whenever a file in it changes, so a rotated
/// Secret takes effect without a restart.
#[derive(Debug)]
pub enum CredentialSource {
    Static(Credentials),
    Dir {
        dir: PathBuf,
        cache: Mutex<Option<(Fingerprint, HeaderMap)>>,
    },
}

/// What tells us the directory changed: modification times of the files (Kubernetes swaps a symlink).
type Fingerprint = Vec<Option<SystemTime>>;

impl CredentialSource {
    pub fn dir(dir: impl Into<PathBuf>) -> Self {
        Self::Dir {
            dir: dir.into(),
            cache: Mutex::new(None),
        }
    }

    /// The headers to send now.
    pub fn headers(&self) -> Result<HeaderMap, CredentialsError> {
        match self {
            Self::Static(c) => c.headers(),
            Self::Dir { dir, cache } => {
                let fingerprint: Fingerprint = ["token", "api-key", "api-secret", "..data"]
                    .iter()
                    .map(|f| std::fs::metadata(dir.join(f)).and_then(|m| m.modified()).ok())
                    .collect();
                let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((seen, headers)) = cache.as_ref()
                    && *seen == fingerprint
                {
                    return Ok(headers.clone());
                }
                let headers = Credentials::from_dir(dir)?.headers()?;
                *cache = Some((fingerprint, headers.clone()));
                Ok(headers)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SENTINEL: &str = "SENTINEL-s3cr3t-value";

    #[test]
    fn debug_never_shows_secrets() {
        let all = [
            Credentials::Bearer(Secret::new(SENTINEL)),
            Credentials::ApiKey {
                key: Secret::new(SENTINEL),
                secret: Secret::new(SENTINEL),
            },
        ];
        for c in all {
            let shown = format!("{c:?} {:?}", c.headers().unwrap());
            assert!(!shown.contains(SENTINEL), "{shown}");
        }
        let src = CredentialSource::Static(Credentials::Bearer(Secret::new(SENTINEL)));
        assert!(!format!("{src:?}").contains(SENTINEL));
    }

    #[test]
    fn env_precedence_and_errors() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        assert_eq!(
            Credentials::from_env_vars(env(&[("COMPUTE_API_TOKEN", "t"), ("COMPUTE_API_KEY", "k")])),
            Ok(Credentials::Bearer(Secret::new("t")))
        );
        assert!(matches!(
            Credentials::from_env_vars(env(&[("COMPUTE_API_KEY", "k"), ("COMPUTE_API_SECRET", "s")])),
            Ok(Credentials::ApiKey { .. })
        ));
        assert_eq!(
            Credentials::from_env_vars(env(&[("COMPUTE_API_KEY", "k")])),
            Err(CredentialsError::HalfKeyPair)
        );
        assert_eq!(
            Credentials::from_env_vars(env(&[("COMPUTE_API_TOKEN", " ")])),
            Err(CredentialsError::Missing)
        );
    }

    #[test]
    fn directory_is_reread_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let src = CredentialSource::dir(dir.path());
        let err = src.headers().unwrap_err().to_string();
        assert!(err.contains("neither"), "{err}");
        std::fs::write(dir.path().join("token"), "first\n").unwrap();
        assert_eq!(src.headers().unwrap()[AUTHORIZATION], "Bearer first");
        // Rotation: a new file with a different mtime.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::remove_file(dir.path().join("token")).unwrap();
        std::fs::write(dir.path().join("api-key"), "k").unwrap();
        std::fs::write(dir.path().join("api-secret"), "s").unwrap();
        let h = src.headers().unwrap();
        assert_eq!(h["api-key"], "k");
        assert!(h.get(AUTHORIZATION).is_none());
    }
}
