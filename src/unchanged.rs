//! Skip when unchanged (`sync.skip_unchanged`, `e2e-sync --skip-unchanged`): before it builds a new
//! hard-link tree, a run compares the source with the latest snapshot (`rsync -n -i` against it,
//! stopped at the first difference, see [`crate::snapshots::rsync_probe`]). When nothing differs it
//! publishes nothing and appends its own stamp to `manifests/<LATEST>.unchanged` inside the container
//! instead (rewritten whole beside it and renamed over, then flushed), so `--list` and its JSON show
//! that the source was seen unchanged through that time: monitoring never reads a skipped run as a
//! missed one. An incomplete latest snapshot is never the base of a skip (its unread files may read
//! now); pruning removes the record with its snapshot.

use std::path::{Path, PathBuf};

/// The record of the runs that found the source unchanged since snapshot `stamp`.
pub fn record_path(fs: &Path, stamp: &str) -> PathBuf {
    crate::manifest::path(fs, stamp).with_extension("unchanged")
}

/// The stamps of those runs, oldest first (none: no record, or none readable).
pub fn runs(fs: &Path, stamp: &str) -> Vec<String> {
    std::fs::read_to_string(record_path(fs, stamp))
        .map(|t| parse(&t))
        .unwrap_or_default()
}

fn parse(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| crate::timefmt::parse_stamp(l).is_some())
        .map(str::to_string)
        .collect()
}

/// The record with run `now` added.
pub fn render(old: &[String], now: &str) -> String {
    let mut s = String::from("# runs that found the source unchanged since this snapshot\n");
    for r in old.iter().map(String::as_str).chain([now]) {
        s.push_str(r);
        s.push('\n');
    }
    s
}

/// Whether a line of `rsync -n -i` output reports a difference: an itemized change
/// (`YXcstpoguax NAME`: Y in `<>ch.*`, X in `fdLDS`) or a deletion (`*deleting NAME`). Anything
/// else (a `-v` header or footer an rsync_args entry may add) is not one.
pub fn is_change(line: &str) -> bool {
    let b = line.as_bytes();
    if line.starts_with("*deleting ") {
        return true;
    }
    b.len() > 12
        && b"<>ch.*".contains(&b[0])
        && b"fdLDS".contains(&b[1])
        && b[2..11]
            .iter()
            .all(|c| c.is_ascii_alphabetic() || b".+ ?".contains(c))
        && b[11] == b' '
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn itemized_changes_and_deletions_count_headers_do_not() {
        // As rsync 3.2.7 prints them with -n -i (and -v from rsync_args).
        for l in [
            ">f..t...... data/home/a",
            ">f+++++++++ data/home/new",
            "hf..t...... data/home/sub/a2",
            ".d..t...... data/home/",
            "cL+++++++++ data/home/l -> a",
            ".f...p..... data/home/mode",
            ".f.......x. data/home/xattr",
            "*deleting   data/home/gone",
            "cD+++++++++ data/home/fifo",
        ] {
            assert!(is_change(l), "{l}");
        }
        for l in [
            "",
            "sending incremental file list",
            "sent 237 bytes  received 22 bytes  518.00 bytes/sec",
            "total size is 10,485,765  speedup is 40,485.58 (DRY RUN)",
            "created directory x",
        ] {
            assert!(!is_change(l), "{l}");
        }
    }

    #[test]
    fn record_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let fs = d.path();
        std::fs::create_dir(fs.join("manifests")).unwrap();
        let s = "2026-12-01T03:00:00Z";
        assert!(runs(fs, s).is_empty());
        let one = render(&[], "2026-12-02T03:00:00Z");
        std::fs::write(record_path(fs, s), &one).unwrap();
        let two = render(&runs(fs, s), "2026-12-03T03:00:00Z");
        std::fs::write(record_path(fs, s), &two).unwrap();
        assert_eq!(
            runs(fs, s),
            ["2026-12-02T03:00:00Z", "2026-12-03T03:00:00Z"]
        );
        assert_eq!(
            record_path(fs, s),
            fs.join("manifests/2026-12-01T03:00:00Z.unchanged")
        );
    }
}
