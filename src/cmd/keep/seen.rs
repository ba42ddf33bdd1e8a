//! What e2e-keep compares a container with its newest copy by, without the key: its size, its
//! allocated bytes and the UUID in its LUKS header; and which changes of these are suspicious.

use anyhow::{Context, Result};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// What the copies are compared by: nothing here needs the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub size: u64,
    /// Allocated bytes (a sparse container's real size on the server).
    pub allocated: u64,
    /// The LUKS2 binary header's UUID field, if the file starts with a LUKS magic.
    pub luks_uuid: Option<String>,
}

const LUKS_MAGIC: &[u8] = b"LUKS\xba\xbe";
/// The UUID field of the LUKS binary header: after magic, version, header size, sequence id,
/// label, checksum algorithm and salt (cryptsetup's luks2.h).
const UUID_AT: usize = 6 + 2 + 8 + 8 + 48 + 32 + 64;

impl Seen {
    pub fn of(file: &Path) -> Result<Seen> {
        use std::io::Read;
        // Not followed: a symlink the client made could point anywhere on the server.
        let m = std::fs::symlink_metadata(file)
            .with_context(|| format!("cannot stat {}", file.display()))?;
        let mut head = vec![0u8; UUID_AT + 40];
        let mut f =
            std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
        let n = f.read(&mut head).unwrap_or(0);
        Ok(Seen {
            size: m.len(),
            allocated: m.blocks() * 512,
            luks_uuid: luks_uuid(&head[..n]),
        })
    }
}

/// The UUID of a LUKS header, or None when `head` does not start with one.
pub fn luks_uuid(head: &[u8]) -> Option<String> {
    if !head.starts_with(LUKS_MAGIC) || head.len() < UUID_AT + 40 {
        return None;
    }
    let raw = &head[UUID_AT..UUID_AT + 40];
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    Some(String::from_utf8_lossy(&raw[..end]).into_owned())
}

/// The suspicious changes from the newest copy `before` to the live container `now`, one phrase
/// each (empty: nothing suspicious). A grow or a trim is not one: a trim frees blocks, but a drop
/// to less than half of the allocation is reported all the same (say so when it was a trim).
pub fn suspicions(before: &Seen, now: &Seen) -> Vec<String> {
    let mut s = Vec::new();
    if now.size < before.size {
        s.push(format!(
            "truncated from {} to {} bytes",
            before.size, now.size
        ));
    }
    match (&before.luks_uuid, &now.luks_uuid) {
        (Some(_), None) => s.push("its LUKS header is gone".into()),
        (Some(a), Some(b)) if a != b => s.push(format!("replaced: LUKS UUID {a} is now {b}")),
        _ => {}
    }
    if now.allocated * 2 < before.allocated {
        s.push(format!(
            "its allocated bytes dropped from {} to {}",
            before.allocated, now.allocated
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(uuid: &str) -> Vec<u8> {
        let mut h = vec![0u8; 4096];
        h[..6].copy_from_slice(LUKS_MAGIC);
        h[UUID_AT..UUID_AT + uuid.len()].copy_from_slice(uuid.as_bytes());
        h
    }

    #[test]
    fn luks_uuid_from_the_binary_header() {
        let u = "3b5c1a6e-0f9d-4c2a-8e7f-6b5a4c3d2e1f";
        assert_eq!(luks_uuid(&header(u)).as_deref(), Some(u));
        assert_eq!(luks_uuid(&[0u8; 4096]), None);
        assert_eq!(luks_uuid(LUKS_MAGIC), None, "too short");
    }

    #[test]
    fn what_counts_as_suspicious() {
        let seen = |size, allocated, uuid: Option<&str>| Seen {
            size,
            allocated,
            luks_uuid: uuid.map(str::to_string),
        };
        let before = seen(1 << 30, 100 << 20, Some("a"));
        // A backup (more allocated), a grow (larger), a small trim: nothing.
        assert!(suspicions(&before, &seen(1 << 30, 120 << 20, Some("a"))).is_empty());
        assert!(suspicions(&before, &seen(2 << 30, 100 << 20, Some("a"))).is_empty());
        assert!(suspicions(&before, &seen(1 << 30, 60 << 20, Some("a"))).is_empty());
        let s = suspicions(&before, &seen(0, 0, None));
        assert_eq!(s.len(), 3, "{s:?}");
        assert!(s[0].starts_with("truncated from 1073741824 to 0 bytes"));
        assert_eq!(s[1], "its LUKS header is gone");
        assert_eq!(
            suspicions(&before, &seen(1 << 30, 100 << 20, Some("b"))),
            ["replaced: LUKS UUID a is now b"]
        );
    }
}
