//! Secret sources (`env`, `file`, `value`) and the fingerprint of the files a reload watches.

use std::cell::RefCell;
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::raw::RawSecret;
use crate::timefmt;

/// Key material. `Debug` never prints it.
#[derive(Clone)]
pub struct Secret {
    /// Its `name`, or its position (`"0"`, `"1"`...): the `secret` label of
    /// `pps_sidecar_hmac_verified_total`, and what logs and the access line call it.
    pub name: Arc<str>,
    pub key: Vec<u8>,
    /// Unix seconds after which the secret no longer verifies anything.
    pub not_after: Option<i64>,
    /// The file it was read from, watched for changes.
    pub file: Option<PathBuf>,
}

impl Secret {
    /// Whether it still verifies deliveries at `now` (unix seconds): not past its `not_after`.
    pub fn in_force(&self, now: i64) -> bool {
        self.not_after.is_none_or(|t| now <= t)
    }
}

/// Longest `name` of a secret: it is a metric label and a word of the access line.
const MAX_NAME_LEN: usize = 64;

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("name", &self.name)
            .field("key", &"<redacted>")
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// A hash of the files' contents as reached through their paths now (a missing file hashes as such).
pub fn fingerprint(files: &[PathBuf]) -> u64 {
    let mut h = DefaultHasher::new();
    for f in files {
        std::fs::read(f).ok().hash(&mut h);
    }
    h.finish()
}

/// Hashes what was read, in `Config::watched_files` order, as `fingerprint` hashes the files: a file
/// replaced at any moment after its read differs from it, and is reloaded.
#[derive(Default)]
pub struct ReadLog(RefCell<DefaultHasher>);

impl ReadLog {
    pub fn record(&self, bytes: &[u8]) {
        Some(bytes).hash(&mut *self.0.borrow_mut());
    }

    pub fn finish(&self) -> u64 {
        self.0.borrow().finish()
    }
}

/// Resolves the secret at `key`, the `position`-th; `Err` is `(key, reason)`, never quoting the material.
pub fn resolve(
    key: &str,
    position: usize,
    raw: RawSecret,
    base: &Path,
    read: &ReadLog,
) -> Result<Secret, (String, String)> {
    let name = match raw.name {
        Some(name) => checked_name(name).map_err(|reason| (format!("{key}.name"), reason))?,
        None => position.to_string(),
    };
    let sources = raw.env.is_some() as u8 + raw.file.is_some() as u8 + raw.value.is_some() as u8;
    if sources != 1 {
        return Err((
            key.into(),
            "a secret is exactly one of { env = \"NAME\" }, { file = \"/path\" } or { value = \"...\" }"
                .into(),
        ));
    }
    let mut file = None;
    let material = if let Some(var) = raw.env {
        std::env::var(&var).map_err(|_| {
            (
                format!("{key}.env"),
                format!("environment variable {var} is not set"),
            )
        })?
    } else if let Some(path) = raw.file {
        let path = if path.is_relative() {
            base.parent().unwrap_or(Path::new(".")).join(path)
        } else {
            path
        };
        let text = std::fs::read_to_string(&path).map_err(|e| {
            (
                format!("{key}.file"),
                format!("cannot read {}: {}", path.display(), e.kind()),
            )
        })?;
        read.record(text.as_bytes());
        file = Some(path);
        text.trim_end_matches(['\n', '\r']).to_string()
    } else {
        raw.value.unwrap_or_default()
    };
    if material.is_empty() {
        return Err((key.into(), "the secret is empty".into()));
    }
    let not_after = match raw.not_after {
        Some(v) => Some(
            timefmt::parse_lenient(&v)
                .ok_or_else(|| {
                    (
                        format!("{key}.not_after"),
                        "expected an RFC 3339 time such as \"2026-12-31T00:00:00Z\"".to_string(),
                    )
                })?
                .unix,
        ),
        None => None,
    };
    Ok(Secret {
        name: name.into(),
        key: material.into_bytes(),
        not_after,
        file,
    })
}

/// A secret's `name`: letters, digits, `_`, `-`, `.`, at most `MAX_NAME_LEN` of them, so that it reads
/// the same as a metric label, in a logfmt line and in a JSON one.
fn checked_name(name: String) -> Result<String, String> {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if name.is_empty() || name.len() > MAX_NAME_LEN || !name.chars().all(plain) {
        return Err(format!(
            "a secret's name is 1 to {MAX_NAME_LEN} letters, digits, '_', '-' or '.', such as \"next\""
        ));
    }
    Ok(name)
}
