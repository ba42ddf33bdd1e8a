//! The container key file: what makes one acceptable.

use std::path::Path;

/// The smallest key file accepted: 32 bytes (256 bits), so the key file is the secret, not a
/// password-strength string (LUKS's key derivation is all that protects a short one).
pub const MIN_KEY_BYTES: u64 = 32;

/// Refuse a missing key file, one another user owns, one readable by group/others, a short one.
pub fn check_key_file(path: &Path) -> std::result::Result<(), String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let md = std::fs::metadata(path).map_err(|e| format!("{e}"))?;
    if !md.is_file() {
        return Err("not a regular file".to_string());
    }
    let me = unsafe { nix::libc::geteuid() };
    if md.uid() != 0 && md.uid() != me {
        return Err(format!(
            "owned by uid {}, not root: another user could replace it; run: chown root {}",
            md.uid(),
            crate::exec::quote(&path.to_string_lossy())
        ));
    }
    if md.len() < MIN_KEY_BYTES {
        return Err(format!(
            "holds {} bytes, fewer than {MIN_KEY_BYTES}: use a random key, e.g. head -c 64 /dev/urandom >FILE",
            md.len()
        ));
    }
    let mode = md.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "mode {mode:04o} lets group/others read it; run: chmod 600 {}",
            crate::exec::quote(&path.to_string_lossy())
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_mode() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let k = dir.join("k");
        std::fs::write(&k, "secret").unwrap();
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(check_key_file(&k).unwrap_err().contains("fewer than 32"));
        std::fs::write(&k, [7u8; 32]).unwrap();
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(check_key_file(&k).unwrap_err().contains("chmod 600"));
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(check_key_file(&k).is_ok());
        assert!(check_key_file(&dir.join("missing")).is_err());
    }
}
