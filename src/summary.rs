//! What a snapshot's run was: read from the rsync log kept inside the container
//! (`logs/<STAMP>.log`, written with `--log-file` and `--stats`), for `--list --json`.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// The figures of one run, as far as its log holds them.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RunStats {
    /// Regular files in the snapshot ("Number of files: … (reg: N, …)").
    pub files: Option<u64>,
    /// Their total size ("Total file size").
    pub bytes: Option<u64>,
    /// What the run wrote: the size of the files it transferred ("Total transferred file size").
    pub changed_bytes: Option<u64>,
    /// Wall time of the rsync, from the log's first and last timestamps.
    pub seconds: Option<i64>,
}

/// The log's head and tail are enough: the stats close it, and a log of a first run lists every
/// file, so it is never read whole.
const TAIL: u64 = 16 * 1024;

/// Read the figures of `log`; a missing or unreadable log gives none (an older snapshot, or one
/// made by hand).
pub fn of_log(log: &Path) -> RunStats {
    let Ok(mut f) = std::fs::File::open(log) else {
        return RunStats::default();
    };
    let mut head = [0u8; 64];
    let n = f.read(&mut head).unwrap_or(0);
    let head = String::from_utf8_lossy(&head[..n]).into_owned();
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut tail = Vec::new();
    if f.seek(SeekFrom::Start(len.saturating_sub(TAIL))).is_ok() {
        let _ = f.read_to_end(&mut tail);
    }
    parse(&head, &String::from_utf8_lossy(&tail))
}

/// The figures from the log's first line (`head`) and its last lines (`tail`).
pub fn parse(head: &str, tail: &str) -> RunStats {
    let number = |s: &str| -> Option<u64> {
        let digits: String = s
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == ',')
            .filter(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    };
    let field = |key: &str| {
        tail.lines()
            .rev()
            .find_map(|l| l.split_once(key).map(|(_, v)| v.trim_start().to_string()))
    };
    let files = field("Number of files: ").and_then(|v| {
        let (_, reg) = v.split_once("reg: ")?;
        number(reg)
    });
    let start = head.lines().next().and_then(log_time);
    let end = tail.lines().rev().find_map(log_time);
    RunStats {
        files,
        bytes: field("Total file size: ").and_then(|v| number(&v)),
        changed_bytes: field("Total transferred file size: ").and_then(|v| number(&v)),
        seconds: start.zip(end).map(|(a, b)| b - a).filter(|s| *s >= 0),
    }
}

/// `2026/12/02 01:32:32 [5154] …` → seconds since the epoch (rsync logs local time; the difference
/// of two is what is used, so the zone does not matter).
fn log_time(line: &str) -> Option<i64> {
    let t = line.get(..19)?;
    let fmt = time::macros::format_description!("[year]/[month]/[day] [hour]:[minute]:[second]");
    time::PrimitiveDateTime::parse(t, &fmt)
        .ok()
        .map(|d| d.assume_utc().unix_timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    // As rsync 3.2.7 writes it with --log-file and --stats.
    const LOG: &str = "2026/12/02 01:32:32 [5154] building file list
2026/12/02 01:32:32 [5154] >f+++++++++ a
2026/12/02 01:32:33 [5154] >f+++++++++ b
2026/12/02 01:33:02 [5154] Number of files: 1,203 (reg: 1,190, dir: 13)
2026/12/02 01:33:02 [5154] Number of created files: 2 (reg: 2)
2026/12/02 01:33:02 [5154] Total file size: 1,100,003 bytes
2026/12/02 01:33:02 [5154] Total transferred file size: 100,003 bytes
2026/12/02 01:33:02 [5154] sent 100,199 bytes  received 54 bytes  200,506.00 bytes/sec
2026/12/02 01:33:02 [5154] total size is 1,100,003  speedup is 1.00
";

    #[test]
    fn figures_from_the_stats_and_the_timestamps() {
        let s = parse(LOG, LOG);
        assert_eq!(
            s,
            RunStats {
                files: Some(1190),
                bytes: Some(1_100_003),
                changed_bytes: Some(100_003),
                seconds: Some(30),
            }
        );
    }

    #[test]
    fn a_log_without_stats_gives_what_it_has() {
        let cut = "2026/12/02 01:32:32 [5154] building file list\n2026/12/02 01:32:40 [5154] >f+++++++++ a\n";
        let s = parse(cut, cut);
        assert_eq!(s.files, None);
        assert_eq!(s.bytes, None);
        assert_eq!(s.seconds, Some(8));
        assert_eq!(of_log(Path::new("/nonexistent/log")), RunStats::default());
    }

    #[test]
    fn only_the_tail_of_a_long_log_is_read() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.log");
        let mut text = String::from("2026/12/02 01:00:00 [1] building file list\n");
        for i in 0..5000 {
            text.push_str(&format!("2026/12/02 01:00:01 [1] >f+++++++++ file{i}\n"));
        }
        text.push_str(LOG.lines().skip(3).collect::<Vec<_>>().join("\n").as_str());
        std::fs::write(&p, text).unwrap();
        let s = of_log(&p);
        assert_eq!(s.files, Some(1190));
        assert_eq!(s.seconds, Some(33 * 60 + 2));
    }
}
