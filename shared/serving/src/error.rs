//! Why a model could not be loaded, typed: each kind names what to fix (the card, the file,
//! the download, ONNX Runtime, the memory limit), and is counted by kind in
//! `model_load_failures_total`. Its text is what the 503, readiness and `/models` show.

use std::path::{Path, PathBuf};

/// Why a model could not be loaded (or is not ready to be).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// The card could not be read, or does not describe a servable model.
    #[error("{0}")]
    Card(String),
    /// The file could not be opened, read or looked at.
    #[error("{}", io_text(*.action, .path, .reason))]
    Io {
        /// `cannot open`, `cannot read`, ...; none when the reason says it all.
        action: Option<&'static str>,
        path: PathBuf,
        reason: String,
    },
    /// The file is not the size its card says.
    #[error("{} is {actual} bytes, its card says {expected}", .path.display())]
    Size {
        path: PathBuf,
        actual: u64,
        expected: u64,
    },
    /// The file's sha256 is not its card's.
    #[error(
        "{} has sha256 {actual}, but its card says {expected} (file corrupted or replaced)",
        .path.display()
    )]
    Hash {
        path: PathBuf,
        actual: String,
        expected: String,
    },
    /// The file was written to between its hash and its load.
    #[error(
        "{} changed while it was being loaded; it is loaded again after the back-off",
        .path.display()
    )]
    Changed { path: PathBuf },
    /// The download of a model configured by URL failed, after its retries.
    #[error("{0}")]
    Download(String),
    /// The memory guard refused: loading would take the process past its limit.
    #[error(
        "memory guard: loading needs about {need_mb} MB on top of the {in_use_mb} MB in use, \
         but the limit is {limit_mb} MB with {reserve_mb} MB kept in reserve"
    )]
    Memory {
        need_mb: u64,
        in_use_mb: u64,
        limit_mb: u64,
        reserve_mb: u64,
    },
    /// ONNX Runtime: its library, its environment, or a session for this file.
    #[error("{0}")]
    Runtime(String),
    /// The session's tensors are not the card's.
    #[error("{0}")]
    Tensors(String),
    /// The warm-up run on a neutral input failed.
    #[error("{0}")]
    WarmUp(String),
    /// The load task itself failed.
    #[error("load task panicked: {0}")]
    Panicked(String),
}

fn io_text(action: Option<&str>, path: &Path, reason: &str) -> String {
    match action {
        Some(a) => format!("{a} {}: {reason}", path.display()),
        None => format!("{}: {reason}", path.display()),
    }
}

impl LoadError {
    /// An I/O failure on `path`.
    pub fn io(action: &'static str, path: &Path, e: impl std::fmt::Display) -> Self {
        Self::Io {
            action: Some(action),
            path: path.to_path_buf(),
            reason: e.to_string(),
        }
    }

    /// The kind, as the `kind` label of `model_load_failures_total` and in the log.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Card(_) => "card",
            Self::Io { .. } => "io",
            Self::Size { .. } => "size",
            Self::Hash { .. } => "hash",
            Self::Changed { .. } => "changed",
            Self::Download(_) => "download",
            Self::Memory { .. } => "memory",
            Self::Runtime(_) => "runtime",
            Self::Tensors(_) => "tensors",
            Self::WarmUp(_) => "warm_up",
            Self::Panicked(_) => "panicked",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_reads_as_before() {
        let p = Path::new("/m/retina.onnx");
        let cases = [
            (
                LoadError::io("cannot open", p, "No such file"),
                "cannot open /m/retina.onnx: No such file",
                "io",
            ),
            (
                LoadError::Io {
                    action: None,
                    path: p.into(),
                    reason: "gone".into(),
                },
                "/m/retina.onnx: gone",
                "io",
            ),
            (
                LoadError::Size {
                    path: p.into(),
                    actual: 3,
                    expected: 4,
                },
                "/m/retina.onnx is 3 bytes, its card says 4",
                "size",
            ),
            (
                LoadError::Hash {
                    path: p.into(),
                    actual: "ab".into(),
                    expected: "cd".into(),
                },
                "/m/retina.onnx has sha256 ab, but its card says cd (file corrupted or replaced)",
                "hash",
            ),
            (
                LoadError::Memory {
                    need_mb: 200,
                    in_use_mb: 100,
                    limit_mb: 256,
                    reserve_mb: 32,
                },
                "memory guard: loading needs about 200 MB on top of the 100 MB in use, but the \
                 limit is 256 MB with 32 MB kept in reserve",
                "memory",
            ),
        ];
        for (e, text, kind) in cases {
            assert_eq!(e.to_string(), text);
            assert_eq!(e.kind(), kind);
        }
    }
}
