//! Model files hosted elsewhere: a model's `file` may be an `http(s)://` URL (object storage,
//! a presigned S3/GCS URL, any static host). On first use the file is streamed to a cache dir
//! under its card's sha256 — never whole in memory — with the card's size as a hard cap, a
//! whole-download timeout, a stall timeout and retries; hashed while it streams, and kept only
//! if the hash matches the card. A cached file is reused across restarts where the disk stays.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::LoadError;

/// Where a model file is: empty (next to its card), a local path, or an `http(s)://` URL.
/// Shown without its query string and credentials (a presigned URL's signature is a secret).
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Location(pub String);

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl Location {
    pub fn is_url(&self) -> bool {
        let s = self.0.to_ascii_lowercase();
        s.starts_with("http://") || s.starts_with("https://")
    }

    /// The location fit for logs and answers: a URL keeps scheme, host and path only.
    pub fn redacted(&self) -> String {
        if !self.is_url() {
            return self.0.clone();
        }
        match reqwest::Url::parse(&self.0) {
            Ok(u) => {
                let hidden = if u.query().is_some() { "?…" } else { "" };
                format!(
                    "{}://{}{}{}{hidden}",
                    u.scheme(),
                    u.host_str().unwrap_or(""),
                    u.port().map(|p| format!(":{p}")).unwrap_or_default(),
                    u.path()
                )
            }
            Err(_) => "<invalid URL>".into(),
        }
    }
}

/// How model files are downloaded.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownloadSettings {
    /// Folder for downloaded model files (named by sha256). Empty: `$MEDCHAIN_DATA_DIR/models`,
    /// else this repository's `.data/models`, else the system's temporary folder.
    pub cache_dir: String,
    /// Whole download, seconds.
    pub timeout_secs: u64,
    /// No byte received for this long: the attempt fails, seconds.
    pub stall_secs: u64,
    /// Further attempts after a failed one (network errors, 5xx, short files), 1 s, 2 s, 4 s… apart.
    pub retries: u32,
}

impl DownloadSettings {
    pub fn cache_dir(&self) -> PathBuf {
        if !self.cache_dir.is_empty() {
            return PathBuf::from(&self.cache_dir);
        }
        if let Some(d) = std::env::var_os("MEDCHAIN_DATA_DIR").filter(|d| !d.is_empty()) {
            return PathBuf::from(d).join("models");
        }
        let repo = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
        if repo.join("Cargo.toml").is_file() {
            repo.join(".data/models")
        } else {
            std::env::temp_dir().join("medchain-models")
        }
    }
}

/// A failed attempt, and whether another attempt may help.
struct Failure {
    reason: String,
    retry: bool,
}

fn permanent(reason: String) -> Failure {
    Failure {
        reason,
        retry: false,
    }
}

fn transient(reason: String) -> Failure {
    Failure {
        reason,
        retry: true,
    }
}

/// Downloads `url` to `dest` unless the attempt budget runs out; `dest` exists afterwards only
/// if its size and sha256 are the card's. Returns the downloaded file, opened before it was
/// moved into place: the very bytes that were hashed as they arrived.
pub async fn fetch(
    url: &Location,
    dest: &Path,
    sha256: &str,
    size: u64,
    settings: &DownloadSettings,
) -> Result<std::fs::File, LoadError> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .map_err(|e| LoadError::io("cannot create the model cache", dir, e))?;
    // Not `http::client_builder`: that one is for service-to-service calls and ignores proxy
    // settings, while a model host is outside and may only be reachable through HTTPS_PROXY.
    medchain_core::http::init_tls();
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(settings.stall_secs.max(1)))
        .read_timeout(Duration::from_secs(settings.stall_secs.max(1)))
        .timeout(Duration::from_secs(settings.timeout_secs.max(1)))
        .build()
        .map_err(|e| LoadError::Download(format!("cannot build the download client: {e}")))?;
    let part = dest.with_extension("part");
    let mut attempt = 0;
    loop {
        let started = std::time::Instant::now();
        let result = once(&client, url, &part, sha256, size).await;
        match result {
            Ok(()) => {
                let file = std::fs::File::open(&part)
                    .map_err(|e| LoadError::Download(format!("cannot open the download: {e}")))?;
                std::fs::rename(&part, dest).map_err(|e| {
                    LoadError::Download(format!("cannot move the download into place: {e}"))
                })?;
                tracing::info!(
                    url = %url.redacted(),
                    bytes = size,
                    ms = started.elapsed().as_millis() as u64,
                    "model file downloaded and verified"
                );
                return Ok(file);
            }
            Err(f) => {
                let _ = std::fs::remove_file(&part);
                tracing::warn!(url = %url.redacted(), attempt, reason = %f.reason, "model download failed");
                if !f.retry || attempt >= settings.retries {
                    let tries = attempt + 1;
                    return Err(LoadError::Download(format!(
                        "download from {} failed ({tries} attempt{}): {}",
                        url.redacted(),
                        if tries == 1 { "" } else { "s" },
                        f.reason
                    )));
                }
                tokio::time::sleep(Duration::from_secs(1 << attempt.min(5))).await;
                attempt += 1;
            }
        }
    }
}

async fn once(
    client: &reqwest::Client,
    url: &Location,
    part: &Path,
    sha256: &str,
    size: u64,
) -> Result<(), Failure> {
    let net = |e: reqwest::Error| transient(e.without_url().to_string());
    let mut res = client.get(&url.0).send().await.map_err(net)?;
    let status = res.status();
    if !status.is_success() {
        let msg = format!("the server answered {status}");
        return Err(
            if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
                transient(msg)
            } else {
                permanent(msg)
            },
        );
    }
    if let Some(len) = res.content_length()
        && len != size
    {
        return Err(permanent(format!(
            "the server offers {len} bytes, the card says {size}"
        )));
    }
    let mut file = std::fs::File::create(part)
        .map_err(|e| permanent(format!("cannot write {}: {e}", part.display())))?;
    let mut hasher = Sha256::new();
    let mut got: u64 = 0;
    while let Some(chunk) = res.chunk().await.map_err(net)? {
        got += chunk.len() as u64;
        if got > size {
            return Err(permanent(format!(
                "the file is larger than the card's {size} bytes"
            )));
        }
        hasher.update(&chunk);
        file.write_all(&chunk)
            .map_err(|e| permanent(format!("cannot write {}: {e}", part.display())))?;
    }
    if got < size {
        return Err(transient(format!(
            "the file is truncated: {got} of the card's {size} bytes"
        )));
    }
    file.sync_all()
        .map_err(|e| permanent(format!("cannot write {}: {e}", part.display())))?;
    let actual = hex::encode(hasher.finalize());
    if !actual.eq_ignore_ascii_case(sha256) {
        return Err(permanent(format!(
            "the downloaded file has sha256 {actual}, but its card says {sha256} (not kept)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_secrets() {
        let presigned = Location(
            "https://bucket.s3.amazonaws.com/models/ecg.onnx?X-Amz-Signature=abc&X-Amz-Credential=k"
                .into(),
        );
        assert!(presigned.is_url());
        assert_eq!(
            presigned.redacted(),
            "https://bucket.s3.amazonaws.com/models/ecg.onnx?…"
        );
        assert!(!format!("{presigned:?}").contains("Signature"));
        let basic = Location("http://user:pw@127.0.0.1:9000/m.onnx".into());
        assert_eq!(basic.redacted(), "http://127.0.0.1:9000/m.onnx");
        let local = Location("/srv/models/ecg.onnx".into());
        assert!(!local.is_url());
        assert_eq!(local.redacted(), "/srv/models/ecg.onnx");
    }
}
