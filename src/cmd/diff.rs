//! e2e-sync --diff OLD NEW: what changed between two snapshots, from their checksum manifests
//! alone (no file data is read): regular files added, removed, or with other contents.

use crate::config::Job;
use crate::manifest::{self, Manifest};
use crate::progress::print_report;
use crate::snapshots;
use crate::stack::{with_stack, Ctx};
use anyhow::Result;
use std::path::PathBuf;

/// The difference `old` → `new`, as `--diff --json` shows it (source paths, sorted).
#[derive(Debug, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Changes {
    pub old: String,
    pub new: String,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

pub(crate) fn changes(old: (&str, &Manifest), new: (&str, &Manifest)) -> Changes {
    let d = manifest::compare(old.1, new.1);
    let paths = |v: &[Vec<u8>]| v.iter().map(|n| manifest::source_path(n)).collect();
    Changes {
        old: old.0.to_string(),
        new: new.0.to_string(),
        added: paths(&d.extra),
        removed: paths(&d.missing),
        changed: paths(&d.changed),
    }
}

/// The text form: `+ PATH`, `- PATH`, `M PATH`, one per line, sorted by path (names with control
/// characters escaped as in `--verify`'s report).
pub(crate) fn text(c: &Changes) -> String {
    let mut lines: Vec<(&str, char)> = Vec::new();
    lines.extend(c.added.iter().map(|p| (p.as_str(), '+')));
    lines.extend(c.removed.iter().map(|p| (p.as_str(), '-')));
    lines.extend(c.changed.iter().map(|p| (p.as_str(), 'M')));
    lines.sort();
    lines
        .iter()
        .map(|(p, k)| format!("{k} {}\n", p.escape_debug()))
        .collect()
}

pub(crate) fn diff(
    ctx: &Ctx,
    job: &Job,
    old: &str,
    new: &str,
    json: bool,
) -> Result<Option<PathBuf>> {
    let c = with_stack(ctx, job, true, |_| {
        let fs = ctx.paths.fs.as_path();
        if ctx.run.is_dry() && !ctx.fs_mounted() {
            ctx.run
                .note("the container is not open yet: the manifests are not read");
            return Ok(None);
        }
        let (a, b) = (
            snapshots::whole(fs, old, "--diff")?,
            snapshots::whole(fs, new, "--diff")?,
        );
        // A manifest that cannot be read fails the comparison (exit 7): no difference shown is
        // never a guess.
        let (ma, mb) = (
            manifest::of_snapshot(fs, &a)?,
            manifest::of_snapshot(fs, &b)?,
        );
        Ok(Some(changes((&a, &ma), (&b, &mb))))
    })?;
    let Some(c) = c else { return Ok(None) };
    print_report(json, &c, text)?;
    crate::progress::info(&format!(
        "{} → {}: {} added, {} removed, {} changed (regular files, by contents; see e2e-sync(1))",
        c.old,
        c.new,
        c.added.len(),
        c.removed.len(),
        c.changed.len()
    ));
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(entries: &[(&str, &str)]) -> Manifest {
        entries
            .iter()
            .map(|(n, h)| (n.as_bytes().to_vec(), h.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn added_removed_changed_by_contents() {
        let a = m(&[("./d/same", "1"), ("./d/gone", "2"), ("./d/edit", "3")]);
        let b = m(&[("./d/same", "1"), ("./d/edit", "4"), ("./d/new\n", "5")]);
        let c = changes(("A", &a), ("B", &b));
        assert_eq!(c.added, ["/d/new\n"]);
        assert_eq!(c.removed, ["/d/gone"]);
        assert_eq!(c.changed, ["/d/edit"]);
        assert_eq!(text(&c), "M /d/edit\n- /d/gone\n+ /d/new\\n\n");
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"old":"A","new":"B","added":["/d/new\n"],"removed":["/d/gone"],"changed":["/d/edit"]}"#
        );
        assert_eq!(text(&changes(("A", &a), ("A", &a))), "");
    }
}
