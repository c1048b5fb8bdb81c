//! The spool on disk: one file per entry, blocking I/O (callers on the runtime use `spawn_blocking`).
//!
//! An entry's file is a JSON line of metadata, then the head and the body as the app received them. The
//! metadata gives both lengths, so a file whose size disagrees is not an entry. A file is written under a
//! temporary name in the same directory, synced, then renamed: a crash leaves either the whole entry or a
//! temporary file, which is never listed and is removed when the sidecar starts.
//!
//! Names start with the time in milliseconds, so the oldest entry sorts first and is dropped first.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::SpoolConfig;
use crate::dedup::Key;
use crate::metrics::METRICS;
use crate::outcome::SpoolDropped;

use super::index::{self, Index, Item};

const SUFFIX: &str = ".entry";
const TEMP_PREFIX: &str = ".tmp-";

/// What an entry says about its delivery; the first line of its file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// When it was spooled, Unix milliseconds.
    pub time_ms: u64,
    /// The app's answer (or 502 / 504 when it gave none).
    pub status: u16,
    /// `X-Pps-Verified` as it was: `hmac` or `jwt`.
    pub verified: String,
    /// The event's dedup key, as the pipeline made it (its fields are `tenant` and `webhook_id`).
    #[serde(flatten)]
    pub key: Key,
    pub topic: String,
    pub head_len: usize,
    pub body_len: usize,
}

/// One entry read back whole.
pub struct Entry {
    pub id: String,
    pub meta: Meta,
    pub head: Vec<u8>,
    pub body: Vec<u8>,
}

/// An entry as listed: its id, what it says and its size on disk.
pub struct Listed {
    pub id: String,
    pub meta: Meta,
    pub bytes: u64,
}

/// The spool directory and its bounds.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    max_bytes: u64,
    max_age: Duration,
}

/// Creates `dir` (mode 0700) when missing and proves it writable; `Err` is the reason, for the config
/// error.
pub fn prepare_dir(dir: &Path) -> Result<(), String> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create the directory: {}", e.kind()))?;
    }
    if !dir.is_dir() {
        return Err("is not a directory".into());
    }
    let probe = dir.join(format!("{TEMP_PREFIX}probe-{}", std::process::id()));
    File::create(&probe)
        .and_then(|_| fs::remove_file(&probe))
        .map_err(|e| format!("the directory is not writable: {}", e.kind()))
}

impl Store {
    pub fn new(cfg: &SpoolConfig) -> Self {
        Self {
            dir: cfg.dir.clone(),
            max_bytes: cfg.max_bytes,
            max_age: cfg.max_age,
        }
    }

    /// At start: the directory private to this user where it can be made so, and the temporary files a
    /// crash left removed. The number removed.
    pub fn open(&self) -> usize {
        // An emptyDir may belong to another user: the entries are 0600 whatever this does.
        let _ = fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700));
        let mut removed = 0;
        for name in self.names() {
            if name.starts_with(TEMP_PREFIX) && fs::remove_file(self.dir.join(&name)).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    /// Writes an entry atomically (its lengths set from `head` and `body`), then drops what is over the
    /// bounds. Its id.
    pub fn write(&self, mut meta: Meta, head: &[u8], body: &[u8]) -> io::Result<String> {
        meta.head_len = head.len();
        meta.body_len = body.len();
        let id = format!(
            "{:013}-{}",
            meta.time_ms,
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let temp = self.dir.join(format!("{TEMP_PREFIX}{id}"));
        let mut line = serde_json::to_vec(&meta).map_err(io::Error::other)?;
        line.push(b'\n');
        let line_len = line.len();
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temp)?;
            f.write_all(&line)?;
            f.write_all(head)?;
            f.write_all(body)?;
            f.sync_all()?;
            fs::rename(&temp, self.path(&id))?;
            // The rename itself survives a crash once the directory is synced.
            File::open(&self.dir)?.sync_all()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&temp);
            return Err(e);
        }
        METRICS.spool_written();
        let item = Item {
            bytes: (line_len + head.len() + body.len()) as u64,
            time_ms: meta.time_ms,
            key: meta.key.clone(),
        };
        let mut index = index::lock();
        match index.as_mut() {
            Some(idx) if idx.dir == self.dir => {
                if let Some(older) = idx.insert(id.clone(), item) {
                    self.drop_entry(idx, &older, SpoolDropped::Superseded);
                }
                self.bound(idx, now_ms());
            }
            _ => {
                drop(index);
                self.enforce(now_ms());
            }
        }
        Ok(id)
    }

    /// Reads the directory whole into the index (at start, after a replay, or when the index is of
    /// another directory), then applies the bounds (`bound`). What is left: (entries, bytes).
    pub fn enforce(&self, now_ms: u64) -> (u64, u64) {
        // Held through the scan: a write meanwhile waits, and is never lost from the index.
        let mut index = index::lock();
        let mut idx = Index::new(&self.dir);
        for l in self.list() {
            let item = Item {
                bytes: l.bytes,
                time_ms: l.meta.time_ms,
                key: l.meta.key.clone(),
            };
            if let Some(older) = idx.insert(l.id, item) {
                self.drop_entry(&mut idx, &older, SpoolDropped::Superseded);
            }
        }
        let left = self.bound(&mut idx, now_ms);
        *index = Some(idx);
        left
    }

    /// Applies the age bound from the index (entries age without a write to notice); a full scan when
    /// there is no index of this directory yet.
    pub fn prune(&self, now_ms: u64) -> (u64, u64) {
        let mut index = index::lock();
        match index.as_mut() {
            Some(idx) if idx.dir == self.dir => self.bound(idx, now_ms),
            _ => {
                drop(index);
                self.enforce(now_ms)
            }
        }
    }

    /// Drops the entries older than `max_age`, then the oldest while they hold more than `max_bytes`.
    /// Sets the gauges to what is left.
    fn bound(&self, idx: &mut Index, now_ms: u64) -> (u64, u64) {
        let max_age_ms = self.max_age.as_millis() as u64;
        while let Some((id, item)) = idx.oldest() {
            let reason = if now_ms.saturating_sub(item.time_ms) > max_age_ms {
                SpoolDropped::MaxAge
            } else if idx.total > self.max_bytes {
                SpoolDropped::MaxBytes
            } else {
                break;
            };
            let id = id.clone();
            self.drop_entry(idx, &id, reason);
        }
        let left = (idx.entries.len() as u64, idx.total);
        METRICS.spool_gauges(left.0, left.1);
        left
    }

    fn drop_entry(&self, idx: &mut Index, id: &str, reason: SpoolDropped) {
        let mut webhook_id = String::new();
        let raw = idx.entries.get(id).map(|i| i.key.webhook_id());
        crate::logging::quote(&mut webhook_id, raw.unwrap_or(""));
        idx.remove(id);
        if self.checked_path(id).and_then(fs::remove_file).is_ok() {
            METRICS.spool_dropped(reason);
            log::warn!(
                "spool: entry {id} dropped ({}), webhook id {webhook_id}",
                reason.label()
            );
        }
    }

    /// The whole entries, oldest first. Temporary and truncated files are not entries.
    pub fn list(&self) -> Vec<Listed> {
        let mut names: Vec<String> = self
            .names()
            .into_iter()
            .filter(|n| n.ends_with(SUFFIX))
            .collect();
        names.sort();
        names
            .into_iter()
            .filter_map(|name| {
                let id = name.strip_suffix(SUFFIX)?.to_string();
                let (meta, bytes) = self.read_meta(&id).ok()?;
                Some(Listed { id, meta, bytes })
            })
            .collect()
    }

    /// The entry `id`, whole; `NotFound` when it is not there or not whole.
    pub fn read(&self, id: &str) -> io::Result<Entry> {
        let path = self.checked_path(id)?;
        let mut r = BufReader::new(File::open(path)?);
        let (meta, _) = parse_meta(&mut r, self.size(id)?)?;
        let mut head = vec![0; meta.head_len];
        r.read_exact(&mut head)?;
        let mut body = vec![0; meta.body_len];
        r.read_exact(&mut body)?;
        Ok(Entry {
            id: id.to_string(),
            meta,
            head,
            body,
        })
    }

    /// Removes the entry `id`; whether it was there.
    pub fn remove(&self, id: &str) -> bool {
        if let Some(idx) = index::lock().as_mut().filter(|i| i.dir == self.dir) {
            idx.remove(id);
            METRICS.spool_gauges(idx.entries.len() as u64, idx.total);
        }
        self.checked_path(id).and_then(fs::remove_file).is_ok()
    }

    fn read_meta(&self, id: &str) -> io::Result<(Meta, u64)> {
        let size = self.size(id)?;
        let mut r = BufReader::new(File::open(self.checked_path(id)?)?);
        parse_meta(&mut r, size).map(|(m, _)| (m, size))
    }

    fn size(&self, id: &str) -> io::Result<u64> {
        Ok(fs::metadata(self.checked_path(id)?)?.len())
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}{SUFFIX}"))
    }

    /// An id names a file in the spool and nothing else: no separator, no dot.
    fn checked_path(&self, id: &str) -> io::Result<PathBuf> {
        let valid = !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if valid {
            Ok(self.path(id))
        } else {
            Err(io::Error::new(io::ErrorKind::NotFound, "no such entry"))
        }
    }

    fn names(&self) -> Vec<String> {
        fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The metadata line; `InvalidData` unless the file is exactly as long as it says (a truncated file).
fn parse_meta(r: &mut impl BufRead, size: u64) -> io::Result<(Meta, usize)> {
    let mut line = Vec::new();
    r.take(64 * 1024).read_until(b'\n', &mut line)?;
    let meta: Meta = serde_json::from_slice(&line)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not an entry"))?;
    // Checked: a crafted file's lengths must not wrap around into a size that passes.
    let expected = (line.len() as u64)
        .checked_add(meta.head_len as u64)
        .and_then(|n| n.checked_add(meta.body_len as u64));
    let Some(expected) = expected else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "entry lengths overflow",
        ));
    };
    if !line.ends_with(b"\n") || expected != size {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not whole"));
    }
    Ok((meta, line.len()))
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path, max_bytes: u64) -> Store {
        Store::new(&SpoolConfig {
            dir: dir.to_path_buf(),
            max_bytes,
            max_age: Duration::from_secs(3_600),
            include_failures: false,
        })
    }

    fn meta(time_ms: u64, body: &[u8]) -> Meta {
        Meta {
            time_ms,
            status: 404,
            verified: "hmac".into(),
            key: Key::new(Some("t"), &format!("w{time_ms}")),
            topic: "orders/placed".into(),
            head_len: 4,
            body_len: body.len(),
        }
    }

    #[test]
    fn an_entry_reads_back_as_written_and_its_file_is_private() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path(), 1 << 20);
        let id = s.write(meta(now_ms(), b"{}"), b"HEAD", b"{}").unwrap();
        let e = s.read(&id).unwrap();
        assert_eq!(
            (e.head.as_slice(), e.body.as_slice()),
            (&b"HEAD"[..], &b"{}"[..])
        );
        assert_eq!(e.meta.key.tenant(), Some("t"));
        let mode = fs::metadata(s.path(&id)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(s.remove(&id) && !s.remove(&id));
    }

    #[test]
    fn temporary_and_truncated_files_are_never_entries_and_temporaries_go_at_start() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path(), 1 << 20);
        let id = s.write(meta(now_ms(), b"body"), b"HEAD", b"body").unwrap();
        let whole = fs::read(s.path(&id)).unwrap();
        fs::write(tmp.path().join(".tmp-1-x"), &whole).unwrap();
        fs::write(s.path("2-cut"), &whole[..whole.len() - 1]).unwrap();
        let ids: Vec<String> = s.list().into_iter().map(|l| l.id).collect();
        assert_eq!(ids, vec![id]);
        assert!(s.read("2-cut").is_err());
        assert_eq!(s.open(), 1);
        assert!(!tmp.path().join(".tmp-1-x").exists());
    }

    #[test]
    fn the_oldest_entries_go_first_to_stay_within_max_bytes_and_max_age() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path(), 1_000);
        let now = now_ms();
        let old = s.write(meta(now - 7_200_000, b"x"), b"HEAD", b"x").unwrap();
        assert!(
            s.list().is_empty(),
            "older than max_age: dropped at once: {old}"
        );
        let body = vec![b'a'; 300];
        let ids: Vec<String> = (0..5)
            .map(|i| s.write(meta(now + i, &body), b"HEAD", &body).unwrap())
            .collect();
        let left: Vec<String> = s.list().into_iter().map(|l| l.id).collect();
        assert_eq!(left, ids[ids.len() - left.len()..].to_vec());
        assert!(s.list().iter().map(|l| l.bytes).sum::<u64>() <= 1_000);
    }

    #[test]
    fn an_event_spooled_again_keeps_only_its_newest_entry() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path(), 1 << 20);
        let now = now_ms();
        let first = meta(now, b"x");
        let other = s.write(meta(now + 1, b"x"), b"HEAD", b"x").unwrap();
        s.write(first.clone(), b"HEAD", b"x").unwrap();
        let again = s
            .write(
                Meta {
                    time_ms: now + 2,
                    ..first
                },
                b"HEAD",
                b"x",
            )
            .unwrap();
        let left: Vec<String> = s.list().into_iter().map(|l| l.id).collect();
        assert_eq!(left, vec![other, again]);
    }

    #[test]
    fn an_id_cannot_name_a_file_outside_the_spool() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path(), 1 << 20);
        for id in ["../x", "a/b", "", ".tmp-1", "x.entry"] {
            assert!(s.checked_path(id).is_err(), "{id}");
        }
    }
}
