//! Checksum manifests: written for each snapshot, read back to check a restore or a verify.

use crate::error::{fail, Code};
use crate::exec::{Cmd, Runner};
use crate::filesystem::Kind;
use crate::snapshots;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// sha256 of the files `names` (`./`-relative to `dir`) with `sha256sum`, through the NUL-separated
/// list file `list` and the output file `out` (both removed afterwards). With `unreadable_ok`, a file
/// sha256sum cannot read is left out of the result instead of failing the step.
pub(crate) fn hash_listed(
    run: &Runner,
    dir: &Path,
    names: &[Vec<u8>],
    list: &Path,
    out: &Path,
    unreadable_ok: bool,
) -> Result<Manifest> {
    let data: Vec<u8> = names
        .iter()
        .flat_map(|n| n.iter().copied().chain([0]))
        .collect();
    std::fs::write(list, data).with_context(|| format!("cannot write {}", list.display()))?;
    let mut cmd = checksum_list_cmd(dir, list, out);
    if unreadable_ok {
        cmd = cmd.ok_code(123); // xargs: sha256sum failed on some file
    }
    let res = run.run(&cmd);
    let hashed = std::fs::read(out);
    let _ = std::fs::remove_file(list);
    let _ = std::fs::remove_file(out);
    res?;
    hashed
        .map_err(|e| e.to_string())
        .and_then(|d| parse(&d))
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("reading back {}", out.display()))
}

/// The manifest of the new snapshot STAMP, made from the tree rsync wrote (`snapshots::work_dir`)
/// before it is published: hashes of files this run did not write are taken from the previous
/// snapshot LINK's manifest; only the files this run wrote are read and hashed (by `sha256sum`, so
/// a restorer can check a snapshot with stock tools).
pub(crate) fn build(
    run: &Runner,
    fs: &Path,
    stamp: &str,
    link: Option<&str>,
    kind: Kind,
) -> Result<()> {
    let dir = snapshots::work_dir(kind, fs, stamp);
    let manifest = path(fs, stamp);
    let (tmp, todo, part) = (
        manifest.with_extension("sha256.tmp"),
        manifest.with_extension("todo.tmp"),
        manifest.with_extension("part.tmp"),
    );
    if run.is_dry() {
        // The script hashes every file (same manifest, self-contained); a real run reads only the
        // files it wrote and reuses the previous manifest's hashes for the hard-linked ones.
        run.note("a real run hashes only the files rsync wrote; here, every file");
        run.run(&checksum_cmd(&dir, &tmp))?;
        run.run(&Cmd::new("mv").arg("-T").arg(&tmp).arg(&manifest))?;
        return Ok(());
    }
    let prev = link.and_then(|l| {
        let p = path(fs, l);
        match std::fs::read(&p).map(|d| parse(&d)) {
            Ok(Ok(m)) => Some((fs.join("snapshots").join(l), m)),
            // An old snapshot without a (readable) manifest: hash everything, as the first run does.
            Ok(Err(e)) => {
                crate::warning!("{}: {e}; hashing every file", p.display());
                None
            }
            Err(_) => None,
        }
    });
    let (mut all, names) =
        split_for_hashing(&dir, prev.as_ref().map(|(d, m)| (d.as_path(), m)), kind)
            .with_context(|| format!("cannot list the new snapshot {}", dir.display()))?;
    let hashed = hash_listed(run, &dir, &names, &todo, &part, false)?;
    if hashed.len() != names.len() {
        return Err(fail(
            Code::Runtime,
            format!(
                "sha256sum hashed {} of the {} new files",
                hashed.len(),
                names.len()
            ),
        ));
    }
    run.note(&format!(
        "manifest: {} files hashed, {} hashes reused from {}",
        hashed.len(),
        all.len(),
        link.unwrap_or("-")
    ));
    all.extend(hashed);
    std::fs::write(&tmp, render(&all))
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    run.run(&Cmd::new("mv").arg("-T").arg(&tmp).arg(&manifest))?;
    Ok(())
}

/// Snapshot STAMP's manifest, or why it cannot serve as a check (exit 7): a check that cannot check
/// must not pass.
pub(crate) fn of(fs: &Path, stamp: &str) -> Result<Manifest> {
    let mpath = path(fs, stamp);
    let data = std::fs::read(&mpath).map_err(|e| {
        fail(
            Code::Unchecked,
            format!(
                "snapshot {stamp} has no readable manifest ({}: {e}): it cannot be checked",
                mpath.display()
            ),
        )
    })?;
    parse(&data).map_err(|e| {
        fail(
            Code::Unchecked,
            format!(
                "snapshot {stamp}'s manifest {} is damaged ({e}): it cannot be checked",
                mpath.display()
            ),
        )
    })
}

/// [`of`] for a whole snapshot: also refused (exit 7) when the manifest is empty but the snapshot
/// holds files (a manifest cut off before its data reached the server).
pub(crate) fn of_snapshot(fs: &Path, stamp: &str) -> Result<Manifest> {
    let m = of(fs, stamp)?;
    if m.is_empty() && holds_regular_file(&fs.join("snapshots").join(stamp)) {
        return Err(fail(
            Code::Unchecked,
            format!("snapshot {stamp}'s manifest is empty, but the snapshot holds files: it cannot be checked"),
        ));
    }
    Ok(m)
}

/// A manifest's name (`./data/x`) as the source path it was (`/data/x`), lossy UTF-8.
pub fn source_path(name: &[u8]) -> String {
    let n = String::from_utf8_lossy(name);
    format!("/{}", n.trim_start_matches("./"))
}

/// Whether the tree at `p` (a file or a directory) holds at least one regular file.
pub(crate) fn holds_regular_file(p: &Path) -> bool {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_file() => true,
        Ok(m) if m.is_dir() => std::fs::read_dir(p)
            .map(|rd| rd.flatten().any(|e| holds_regular_file(&e.path())))
            .unwrap_or(false),
        _ => false,
    }
}

/// Checksum manifests live inside the container, beside the snapshots: `manifests/<STAMP>.sha256`.
pub const MANIFESTS: &str = "manifests";

/// The manifest of snapshot STAMP under the ext4 root `fs`.
pub fn path(fs: &Path, stamp: &str) -> PathBuf {
    fs.join(MANIFESTS).join(format!("{stamp}.sha256"))
}

/// sha256 of every regular file under `dir` into `out`: GNU `sha256sum --zero` records
/// (`HASH  ./NAME\0`, names unescaped, any bytes), sorted bytewise. Names never pass through this
/// program as arguments (find → sort → xargs hand them over NUL-separated), so spaces, newlines and
/// non-UTF-8 bytes are safe. The exit code is xargs's: 123 when sha256sum could not read a file.
pub fn checksum_cmd(dir: &Path, out: &Path) -> Cmd {
    Cmd::new("sh")
        .arg("-c")
        .arg(r#"cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0r sha256sum --zero >"$2""#)
        .arg("e2e-checksum")
        .arg(dir)
        .arg(out)
}

/// A parsed manifest: file name (bytes, `./`-relative) → hex sha256.
pub type Manifest = std::collections::BTreeMap<Vec<u8>, Vec<u8>>;

/// sha256 of the files named in `list` (NUL-separated, relative to `dir`) into `out`, in the same
/// record format as [`checksum_cmd`]. Used for the files a run actually wrote (see [`split_for_hashing`]).
pub fn checksum_list_cmd(dir: &Path, list: &Path, out: &Path) -> Cmd {
    Cmd::new("sh")
        .arg("-c")
        .arg(r#"cd "$1" && xargs -0r -a "$2" sha256sum --zero >"$3""#)
        .arg("e2e-checksum")
        .arg(dir)
        .arg(list)
        .arg(out)
}

/// Which regular files of the new snapshot `new` need hashing. A file this run did not write holds
/// the bytes the previous snapshot `prev`'s manifest recorded, so that hash is reused (reading it
/// again would fetch every unchanged byte back from the server on every run). Not written means: on
/// ext4, the same inode as the file at the same path in `prev` (`--link-dest` hard-linked it); on
/// btrfs, the same inode number and the same ctime (a snapshot keeps both; any write by rsync
/// changes the ctime, which cannot be set). Returns (reused entries, names to hash), names
/// `./`-relative as in manifests, sorted.
pub fn split_for_hashing(
    new: &Path,
    prev: Option<(&Path, &Manifest)>,
    kind: Kind,
) -> std::io::Result<(Manifest, Vec<Vec<u8>>)> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let mut reused = Manifest::new();
    let mut todo = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(new.join(&rel))? {
            let e = e?;
            let rel = rel.join(e.file_name());
            let ft = e.file_type()?;
            if ft.is_dir() {
                stack.push(rel);
                continue;
            }
            if !ft.is_file() {
                continue;
            }
            let mut name = b"./".to_vec();
            name.extend_from_slice(rel.as_os_str().as_bytes());
            let same = prev.and_then(|(dir, m)| {
                let a = e.metadata().ok()?;
                let b = std::fs::symlink_metadata(dir.join(&rel)).ok()?;
                let unwritten = match kind {
                    Kind::Ext4 => a.dev() == b.dev() && a.ino() == b.ino(),
                    Kind::Btrfs => {
                        a.ino() == b.ino()
                            && (a.ctime(), a.ctime_nsec()) == (b.ctime(), b.ctime_nsec())
                            && a.size() == b.size()
                    }
                };
                unwritten.then(|| m.get(&name).cloned()).flatten()
            });
            match same {
                Some(sum) => {
                    reused.insert(name, sum);
                }
                None => todo.push(name),
            }
        }
    }
    todo.sort();
    Ok((reused, todo))
}

/// The manifest entries a restore of `SNAPSHOT/rest` brings to its target, named as in the target
/// (`./`-relative). rsync's rule: an empty `rest` or one ending in `/` copies the contents; otherwise
/// `rest` itself lands in the target under its last component.
pub fn restore_subset(m: &Manifest, rest: &str) -> Manifest {
    let rest = rest.trim_start_matches('/');
    let (from, to) = if rest.is_empty() || rest.ends_with('/') {
        (format!("./{rest}"), "./".to_string())
    } else {
        let base = rest.rsplit('/').next().unwrap_or(rest);
        (format!("./{rest}"), format!("./{base}"))
    };
    let (from, to) = (from.into_bytes(), to.into_bytes());
    let mut out = Manifest::new();
    for (name, sum) in m {
        let Some(tail) = name.strip_prefix(from.as_slice()) else {
            continue;
        };
        // `from` names a directory (ends in '/'), or a file or directory whose children follow a '/'.
        if !(from.ends_with(b"/") || tail.is_empty() || tail.starts_with(b"/")) {
            continue; // "./data/ab" is not under "./data/a"
        }
        out.insert([to.as_slice(), tail].concat(), sum.clone());
    }
    out
}

/// A manifest in `sha256sum --zero` form (`HASH  NAME\0`, sorted by name), as [`checksum_cmd`] writes.
pub fn render(m: &Manifest) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, sum) in m {
        out.extend_from_slice(sum);
        out.extend_from_slice(b"  ");
        out.extend_from_slice(name);
        out.push(0);
    }
    out
}

pub fn parse(data: &[u8]) -> Result<Manifest, String> {
    let mut m = Manifest::new();
    for rec in data.split(|b| *b == 0).filter(|r| !r.is_empty()) {
        // "<64 hex>  <name>" (text mode) or "<64 hex> *<name>" (binary mode).
        if rec.len() < 67 || !rec[..64].iter().all(u8::is_ascii_hexdigit) || rec[64] != b' ' {
            return Err(format!(
                "malformed record {:?}",
                String::from_utf8_lossy(&rec[..rec.len().min(80)])
            ));
        }
        m.insert(rec[66..].to_vec(), rec[..64].to_vec());
    }
    Ok(m)
}

/// Differences between a manifest and what the snapshot holds now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub changed: Vec<Vec<u8>>,
    pub missing: Vec<Vec<u8>>,
    pub extra: Vec<Vec<u8>>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.missing.is_empty() && self.extra.is_empty()
    }
}

pub fn compare(want: &Manifest, have: &Manifest) -> Diff {
    let mut d = Diff::default();
    for (name, sum) in want {
        match have.get(name) {
            None => d.missing.push(name.clone()),
            Some(s) if s != sum => d.changed.push(name.clone()),
            Some(_) => {}
        }
    }
    d.extra = have
        .keys()
        .filter(|n| !want.contains_key(*n))
        .cloned()
        .collect();
    d
}

/// A file name from a manifest for one report line: lossy UTF-8, control characters escaped.
pub fn show_name(name: &[u8]) -> String {
    String::from_utf8_lossy(name).escape_debug().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_reuses_hashes_of_linked_files_only() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().to_path_buf();
        let (prev, new) = (d.join("prev"), d.join("new"));
        for p in [&prev, &new] {
            std::fs::create_dir_all(p.join("sub")).unwrap();
        }
        std::fs::write(prev.join("sub/same"), "a").unwrap();
        std::fs::hard_link(prev.join("sub/same"), new.join("sub/same")).unwrap();
        std::fs::write(prev.join("changed"), "b").unwrap();
        std::fs::write(new.join("changed"), "c").unwrap(); // rewritten: a new inode
        std::fs::write(new.join("added"), "d").unwrap();
        std::fs::hard_link(prev.join("sub/same"), new.join("moved")).unwrap(); // linked, no old name
        std::os::unix::fs::symlink("added", new.join("sym")).unwrap();
        let mut m = Manifest::new();
        m.insert(b"./sub/same".to_vec(), b"1".repeat(64));
        m.insert(b"./changed".to_vec(), b"2".repeat(64));
        let (reused, todo) = split_for_hashing(&new, Some((&prev, &m)), Kind::Ext4).unwrap();
        assert_eq!(reused.keys().collect::<Vec<_>>(), [b"./sub/same"]);
        assert_eq!(
            todo,
            [
                b"./added".to_vec(),
                b"./changed".to_vec(),
                b"./moved".to_vec()
            ]
        );
        let (reused, todo) = split_for_hashing(&new, None, Kind::Ext4).unwrap();
        assert!(reused.is_empty());
        assert_eq!(todo.len(), 4);
        // Rendered records parse back to the same manifest.
        let mut all = reused.clone();
        all.extend(m.clone());
        assert_eq!(parse(&render(&all)).unwrap(), all);
    }

    #[test]
    fn restore_subset_follows_rsyncs_trailing_slash_rule() {
        let mut m = Manifest::new();
        for n in ["./data/a/x", "./data/a/sub/y", "./data/ab", "./etc/f"] {
            m.insert(n.as_bytes().to_vec(), n.as_bytes().to_vec());
        }
        let names = |rest: &str| -> Vec<String> {
            restore_subset(&m, rest)
                .keys()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect()
        };
        assert_eq!(
            names(""),
            ["./data/a/sub/y", "./data/a/x", "./data/ab", "./etc/f"]
        );
        assert_eq!(names("data/a/"), ["./sub/y", "./x"]);
        assert_eq!(names("data/a"), ["./a/sub/y", "./a/x"]);
        assert_eq!(names("data/ab"), ["./ab"]);
        assert_eq!(names("/etc/f"), ["./f"]);
        assert!(names("data/none").is_empty());
        // The hash travels with the name.
        assert_eq!(restore_subset(&m, "data/a/")[&b"./x"[..]], b"./data/a/x");
    }

    #[test]
    fn manifests() {
        let h = |c: char| c.to_string().repeat(64);
        let want = format!(
            "{}  ./a\0{}  ./b c\0{}  ./new\nline\0",
            h('1'),
            h('2'),
            h('3')
        );
        let want = parse(want.as_bytes()).unwrap();
        assert_eq!(want.len(), 3);
        let mut have = want.clone();
        assert!(compare(&want, &have).is_empty());
        have.insert(b"./a".to_vec(), h('9').into_bytes());
        have.remove(b"./b c".as_slice());
        let raw = b"./x\xff".to_vec();
        have.insert(raw.clone(), h('4').into_bytes());
        let d = compare(&want, &have);
        assert_eq!(d.changed, [b"./a".to_vec()]);
        assert_eq!(d.missing, [b"./b c".to_vec()]);
        assert_eq!(d.extra, vec![raw.clone()]);
        assert_eq!(show_name(&raw), "./x\u{fffd}");
        assert_eq!(show_name(b"./new\nline"), "./new\\nline");
        assert!(parse(b"zz  ./a\0").is_err());
        assert!(parse(b"").unwrap().is_empty());
        assert_eq!(
            checksum_cmd(Path::new("/fs/snapshots/S.inflight"), Path::new("/fs/m")).argv()[3..],
            ["e2e-checksum", "/fs/snapshots/S.inflight", "/fs/m"]
        );
    }
}
