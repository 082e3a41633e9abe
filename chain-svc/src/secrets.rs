//! The signer's and the patient key's secrets: from a setting, a file or (development only) a
//! file generated once in the data folder, written privately and atomically.

use std::path::Path;

use secrecy::{ExposeSecret, SecretString};

/// A secret from the setting, else from its file, else (development only) generated once into
/// the data dir with mode 0600.
pub(crate) fn secret_bytes(
    value: &Option<SecretString>,
    file: &str,
    dev_file: Option<&Path>,
    generate: impl FnOnce() -> String,
) -> anyhow::Result<String> {
    if let Some(v) = value {
        return Ok(v.expose_secret().trim().to_string());
    }
    if !file.is_empty() {
        return Ok(std::fs::read_to_string(file)?.trim().to_string());
    }
    let path = dev_file.ok_or_else(|| anyhow::anyhow!("secret not configured"))?;
    match std::fs::read_to_string(path) {
        // An empty file never held a key (written by a version without the atomic rename
        // below, cut short by a crash): made again.
        Ok(v) if !v.trim().is_empty() => return Ok(v.trim().to_string()),
        _ => {}
    }
    let v = generate();
    write_private(path, &v)?;
    Ok(v)
}

/// Writes `value` to `path` readable by its owner only (0600), atomically: into a temporary file
/// in the same folder, synced, renamed over `path`, and the folder synced — a crash leaves the
/// old file or the new one, never an empty key.
pub fn write_private(path: &Path, value: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("secret");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(value.as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Creates `dir` (and its parents) and makes it private to its owner (0700): it holds the
/// outbox with every record's salt and the development keys.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

pub(crate) fn random_hex32() -> String {
    let mut b = [0u8; 32];
    // A failure here leaves an all-zero key, which both key parsers below reject.
    let _ = getrandom::fill(&mut b);
    alloy::primitives::hex::encode(b)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn secrets_are_written_privately_and_atomically() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("chain");
        std::fs::create_dir_all(&data).expect("mkdir");
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        private_dir(&data).expect("private");
        assert_eq!(mode(&data), 0o700, "an existing folder is made private too");
        let key = data.join("dev-signer.key");
        write_private(&key, "first").expect("write");
        assert_eq!(mode(&key), 0o600);
        write_private(&key, "second").expect("replace");
        assert_eq!(std::fs::read_to_string(&key).expect("read"), "second");
        let names: Vec<_> = std::fs::read_dir(&data)
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["dev-signer.key"], "no temporary file is left");
    }

    #[test]
    fn an_empty_development_key_is_made_again() {
        // What a crash of the landed version (no rename) could leave behind.
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("dev-patient.key");
        std::fs::write(&key, "").expect("empty");
        let v = secret_bytes(&None, "", Some(&key), || "generated".into()).expect("secret");
        assert_eq!(v, "generated");
        let again = secret_bytes(&None, "", Some(&key), || "other".into()).expect("secret");
        assert_eq!(again, "generated", "kept once written");
    }
}
