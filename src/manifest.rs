//! Checksum manifests: written for each snapshot, read back to check a restore or a verify.

use crate::error::{fail, Code};
use crate::exec::{Cmd, Runner};
use crate::snapshots::{self, INFLIGHT};
use anyhow::Result;
use std::path::Path;

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
) -> Result<snapshots::Manifest> {
    let data: Vec<u8> = names
        .iter()
        .flat_map(|n| n.iter().copied().chain([0]))
        .collect();
    std::fs::write(list, data).map_err(|e| {
        fail(
            Code::Runtime,
            format!("cannot write {}: {e}", list.display()),
        )
    })?;
    let mut cmd = snapshots::checksum_list_cmd(dir, list, out);
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
        .and_then(|d| snapshots::parse_manifest(&d))
        .map_err(|e| {
            fail(
                Code::Runtime,
                format!("reading back {}: {e}", out.display()),
            )
        })
}

/// The manifest of the new snapshot STAMP (still `.inflight`): hashes of files `--link-dest` linked to
/// the previous snapshot LINK are taken from LINK's manifest; only the files this run wrote are read
/// and hashed (by `sha256sum`, so a restorer can check a snapshot with stock tools).
pub(crate) fn write_manifest(
    run: &Runner,
    fs: &Path,
    stamp: &str,
    link: Option<&str>,
) -> Result<()> {
    let dir = fs.join("snapshots").join(format!("{stamp}{INFLIGHT}"));
    let manifest = snapshots::manifest_path(fs, stamp);
    let (tmp, todo, part) = (
        manifest.with_extension("sha256.tmp"),
        manifest.with_extension("todo.tmp"),
        manifest.with_extension("part.tmp"),
    );
    if run.is_dry() {
        // The script hashes every file (same manifest, self-contained); a real run reads only the
        // files it wrote and reuses the previous manifest's hashes for the hard-linked ones.
        run.note("a real run hashes only the files rsync wrote; here, every file");
        run.run(&snapshots::checksum_cmd(&dir, &tmp))?;
        run.run(&Cmd::new("mv").arg("-T").arg(&tmp).arg(&manifest))?;
        return Ok(());
    }
    let prev = link.and_then(|l| {
        let p = snapshots::manifest_path(fs, l);
        match std::fs::read(&p).map(|d| snapshots::parse_manifest(&d)) {
            Ok(Ok(m)) => Some((fs.join("snapshots").join(l), m)),
            // An old snapshot without a (readable) manifest: hash everything, as the first run does.
            Ok(Err(e)) => {
                eprintln!("warning: {}: {e}; hashing every file", p.display());
                None
            }
            Err(_) => None,
        }
    });
    let (mut all, names) =
        snapshots::split_for_hashing(&dir, prev.as_ref().map(|(d, m)| (d.as_path(), m))).map_err(
            |e| {
                fail(
                    Code::Runtime,
                    format!("cannot list the new snapshot {}: {e}", dir.display()),
                )
            },
        )?;
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
    std::fs::write(&tmp, snapshots::render_manifest(&all)).map_err(|e| {
        fail(
            Code::Runtime,
            format!("cannot write {}: {e}", tmp.display()),
        )
    })?;
    run.run(&Cmd::new("mv").arg("-T").arg(&tmp).arg(&manifest))?;
    Ok(())
}

/// Snapshot STAMP's manifest, or why it cannot serve as a check (exit 7): a check that cannot check
/// must not pass.
pub(crate) fn load_manifest(fs: &Path, stamp: &str) -> Result<snapshots::Manifest> {
    let mpath = snapshots::manifest_path(fs, stamp);
    let data = std::fs::read(&mpath).map_err(|e| {
        fail(
            Code::Unchecked,
            format!(
                "snapshot {stamp} has no readable manifest ({}: {e}): it cannot be checked",
                mpath.display()
            ),
        )
    })?;
    snapshots::parse_manifest(&data).map_err(|e| {
        fail(
            Code::Unchecked,
            format!(
                "snapshot {stamp}'s manifest {} is damaged ({e}): it cannot be checked",
                mpath.display()
            ),
        )
    })
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
