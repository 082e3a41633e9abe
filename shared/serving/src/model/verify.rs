//! Verifying a model file against its card: its size for readiness, its sha256 in the
//! background and again at every load, through one open file so that what is hashed is what
//! is loaded.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use super::{LazyModel, LoadError};

/// A file version (size, modification time) and whether its hash matched.
pub(super) type FileCheck = ((u64, Option<SystemTime>), Result<(), LoadError>);

impl LazyModel {
    /// Whether the files are in place (readiness; loads nothing).
    pub fn check_files(&self) -> Result<(), LoadError> {
        let card = self.card.as_ref().map_err(Clone::clone)?;
        let (len, _) = file_stamp(&self.onnx_path)?;
        if len != card.size_bytes {
            return Err(LoadError::Size {
                path: self.onnx_path.clone(),
                actual: len,
                expected: card.size_bytes,
            });
        }
        Ok(())
    }

    /// Hashes the file in the background unless a hash is running or known for this version.
    pub fn start_verification(self: &Arc<Self>) {
        let Ok(card) = &self.card else { return };
        if self.verifying.swap(true, Ordering::AcqRel) {
            return;
        }
        let (path, expected) = (self.onnx_path.clone(), card.sha256.clone());
        let (verified, verifying) = (self.verified.clone(), self.verifying.clone());
        let job = move || {
            let known = file_stamp(&path).is_ok_and(|stamp| {
                verified
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
                    .is_some_and(|(s, _)| *s == stamp)
            });
            if !known {
                let _ = checked_hash(&path, &expected, &verified);
            }
            verifying.store(false, Ordering::Release);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(job)),
            Err(_) => job(),
        }
    }
}

/// A model file opened once, hashed through that descriptor and loaded by ONNX Runtime through
/// it (`/proc/self/fd/N`: the same inode, even if the path is replaced meanwhile, as a
/// download or a copy into place does). Any write to it before the session is built changes
/// its size or its change time (which nothing can set back; at the kernel clock's resolution
/// of a few milliseconds, far finer than a hash of the file takes): [`VerifiedFile::unchanged`]
/// then fails the load.
#[derive(Debug)]
pub(super) struct VerifiedFile {
    file: std::fs::File,
    path: PathBuf,
    identity: FileIdentity,
}

/// What changes when a file's content does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileIdentity {
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileIdentity {
    fn of(file: &std::fs::File, path: &Path) -> Result<Self, LoadError> {
        use std::os::unix::fs::MetadataExt;
        let m = file
            .metadata()
            .map_err(|e| LoadError::io("cannot stat", path, e))?;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Ok(Self {
            ino: m.ino(),
            len: m.len(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        })
    }
}

impl VerifiedFile {
    /// Opens `path` and checks its sha256 (remembering the result for readiness).
    pub(super) fn open(
        path: &Path,
        expected: &str,
        cache: &Mutex<Option<FileCheck>>,
    ) -> Result<Self, LoadError> {
        let file = std::fs::File::open(path).map_err(|e| LoadError::io("cannot open", path, e))?;
        let identity = FileIdentity::of(&file, path)?;
        let me = Self {
            file,
            path: path.to_path_buf(),
            identity,
        };
        let result = verify_hash(&me.file, path, expected);
        *cache.lock().unwrap_or_else(|e| e.into_inner()) = Some((me.stamp(), result.clone()));
        result.map(|()| me)
    }

    /// A download's file, hashed as it arrived.
    pub(super) fn from_download(file: std::fs::File, path: &Path) -> Result<Self, LoadError> {
        let identity = FileIdentity::of(&file, path)?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            identity,
        })
    }

    /// The readiness cache's key of this file version.
    pub(super) fn stamp(&self) -> (u64, Option<SystemTime>) {
        (
            self.identity.len,
            self.file.metadata().ok().and_then(|m| m.modified().ok()),
        )
    }

    /// A path that opens this very file (the path itself where `/proc` is not mounted).
    pub(super) fn load_path(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        let fd = PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()));
        if fd.exists() { fd } else { self.path.clone() }
    }

    /// Drops the file's pages from the page cache, once ONNX Runtime has read it.
    pub(super) fn drop_cache(&self) {
        medchain_core::memory::drop_file_cache(&self.file);
    }

    /// Fails if the file was written to since it was opened.
    pub(super) fn unchanged(&self) -> Result<(), LoadError> {
        if FileIdentity::of(&self.file, &self.path)? == self.identity {
            Ok(())
        } else {
            Err(LoadError::Changed {
                path: self.path.clone(),
            })
        }
    }
}

pub(super) fn file_stamp(path: &Path) -> Result<(u64, Option<SystemTime>), LoadError> {
    let meta = std::fs::metadata(path).map_err(|e| LoadError::Io {
        action: None,
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok((meta.len(), meta.modified().ok()))
}

/// Hashes the file at `path` and remembers the result for this file version (readiness).
fn checked_hash(
    path: &Path,
    expected: &str,
    cache: &Mutex<Option<FileCheck>>,
) -> Result<(), LoadError> {
    // Nothing loads it now: its pages need not stay cached (a load reads it again).
    VerifiedFile::open(path, expected, cache).map(|f| f.drop_cache())
}

/// The sha256 of the file at `path`, hex.
pub(super) fn sha256_of(path: &Path) -> Result<String, LoadError> {
    let file = std::fs::File::open(path).map_err(|e| LoadError::io("cannot open", path, e))?;
    let hash = hash_of(&file, path);
    medchain_core::memory::drop_file_cache(&file);
    hash
}

fn hash_of(file: &std::fs::File, path: &Path) -> Result<String, LoadError> {
    let mut hasher = Sha256::new();
    let unreadable = |e: std::io::Error| LoadError::io("cannot read", path, e);
    // Through a second handle on the same open file, so that the caller's is not moved on.
    let mut reader = file.try_clone().map_err(unreadable)?;
    std::io::Seek::rewind(&mut reader).map_err(unreadable)?;
    std::io::copy(&mut reader, &mut hasher).map_err(unreadable)?;
    Ok(hex::encode(hasher.finalize()))
}

fn verify_hash(file: &std::fs::File, path: &Path, expected: &str) -> Result<(), LoadError> {
    let actual = hash_of(file, path)?;
    if !actual.eq_ignore_ascii_case(expected) {
        return Err(LoadError::Hash {
            path: path.to_path_buf(),
            actual,
            expected: expected.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_loaded_is_the_file_hashed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.onnx");
        let good = b"the model that was verified".to_vec();
        std::fs::write(&path, &good).expect("write");
        let sha = hex::encode(Sha256::digest(&good));
        let cache = Mutex::new(None);
        let file = VerifiedFile::open(&path, &sha, &cache).expect("verified");
        file.unchanged().expect("nothing happened to it");
        // Replaced by another file (a copy moved into place): what is loaded is still the bytes
        // that were hashed, and the load is told the file moved on (unlinked, its change time
        // moved), so it is loaded again, new file and new hash, after the back-off.
        let other = dir.path().join("other");
        std::fs::write(&other, b"something else entirely").expect("write");
        std::fs::rename(&other, &path).expect("replace");
        assert_eq!(std::fs::read(file.load_path()).expect("read"), good);
        assert!(file.unchanged().is_err());
        // Written to in place: refused.
        let path2 = dir.path().join("n.onnx");
        std::fs::write(&path2, &good).expect("write");
        let file = VerifiedFile::open(&path2, &sha, &cache).expect("verified");
        std::fs::write(&path2, b"the model, changed in place: longer").expect("overwrite");
        let err = file.unchanged().expect_err("changed while loading");
        assert!(matches!(err, LoadError::Changed { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("changed while it was being loaded"),
            "{err}"
        );
        // A wrong hash is not opened for loading, and readiness learns it.
        assert!(VerifiedFile::open(&path2, &sha, &cache).is_err());
        assert!(
            cache
                .lock()
                .expect("cache")
                .as_ref()
                .is_some_and(|(_, r)| r.is_err())
        );
    }
}
