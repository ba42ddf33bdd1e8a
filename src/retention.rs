//! Retention: which snapshots to keep, with the rules that keep each (restic/borg semantics, UTC
//! buckets). Used by the sync's own prune and by `e2e-sync --prune [--preview]`.

use crate::config::Retention;
use crate::timefmt::{civil, iso_week};
use std::collections::{BTreeSet, HashSet};

/// Which snapshots to keep (restic/borg semantics, UTC buckets). `stamps` as (name, time).
///
/// keep_last N keeps the N newest. keep_hourly/daily/weekly/monthly/yearly N keep, for each of the
/// N most recent hours/days/ISO weeks/months/years that have snapshots, the newest snapshot in it.
/// keep_within D keeps every snapshot made within D before the newest one. A snapshot is kept if
/// any rule keeps it. A policy of all zeros keeps everything.
pub fn select_keep(stamps: &[(String, i64)], p: &Retention) -> BTreeSet<String> {
    decide(stamps, p)
        .into_iter()
        .filter(|d| !d.rules.is_empty())
        .map(|d| d.stamp)
        .collect()
}

/// One snapshot's retention verdict: the rules that keep it (empty: it goes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub stamp: String,
    /// e.g. "last 1", "daily 3" (the newest of the 3rd most recent day), "within 7d";
    /// "no retention set" when the policy keeps everything.
    pub rules: Vec<String>,
}

/// [`select_keep`] with its reasons, newest first: what `e2e-sync --prune` shows.
pub fn decide(stamps: &[(String, i64)], p: &Retention) -> Vec<Verdict> {
    let mut newest_first: Vec<&(String, i64)> = stamps.iter().collect();
    newest_first.sort_by_key(|s| std::cmp::Reverse(s.1));
    let mut out: Vec<Verdict> = newest_first
        .iter()
        .map(|s| Verdict {
            stamp: s.0.clone(),
            rules: Vec::new(),
        })
        .collect();
    if *p == Retention::default() {
        for v in &mut out {
            v.rules.push("no retention set".into());
        }
        return out;
    }
    for (i, v) in out.iter_mut().enumerate().take(p.keep_last as usize) {
        v.rules.push(format!("last {}", i + 1));
    }
    // keep_within counts back from the newest snapshot, not from the clock (as restic does): a
    // host that has not backed up for a month still keeps that month's last week.
    if let (true, Some(newest)) = (p.keep_within > 0, newest_first.first().map(|s| s.1)) {
        let d = crate::timefmt::format_within(p.keep_within);
        for (v, s) in out.iter_mut().zip(&newest_first) {
            if s.1 >= newest - p.keep_within {
                v.rules.push(format!("within {d}"));
            }
        }
    }
    type Bucket = fn(i64) -> (i64, u32, u32, u32);
    let rules: [(&str, u32, Bucket); 5] = [
        ("hourly", p.keep_hourly, |t| {
            let (y, m, d, h) = civil(t);
            (y, m, d, h)
        }),
        ("daily", p.keep_daily, |t| {
            let (y, m, d, ..) = civil(t);
            (y, m, d, 0)
        }),
        ("weekly", p.keep_weekly, |t| {
            let (y, w) = iso_week(t);
            (y, w, 0, 0)
        }),
        ("monthly", p.keep_monthly, |t| {
            let (y, m, ..) = civil(t);
            (y, m, 0, 0)
        }),
        ("yearly", p.keep_yearly, |t| (civil(t).0, 0, 0, 0)),
    ];
    for (name, n, bucket) in rules {
        let mut seen = HashSet::new();
        for (v, s) in out.iter_mut().zip(&newest_first) {
            if seen.len() >= n as usize {
                break;
            }
            // The first (newest) snapshot met in a new bucket is that bucket's keeper.
            if seen.insert(bucket(s.1)) {
                v.rules.push(format!("{name} {}", seen.len()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timefmt::{at_ymdh, format_stamp};

    fn at(y: i32, m: u8, d: u8, h: u8) -> (String, i64) {
        let t = at_ymdh(y, m, d, h);
        (format_stamp(t), t)
    }

    #[test]
    fn retention_none_keeps_all() {
        let s = vec![at(2024, 1, 1, 0), at(2024, 1, 2, 0)];
        assert_eq!(select_keep(&s, &Retention::default()).len(), 2);
    }

    #[test]
    fn retention_verdicts_name_their_rules() {
        // Two a day on March 1-3 (06:00 and 18:00), newest first in the verdicts.
        let mut s = Vec::new();
        for d in 1..=3 {
            s.push(at(2024, 3, d, 6));
            s.push(at(2024, 3, d, 18));
        }
        let p = Retention {
            keep_last: 1,
            keep_daily: 2,
            keep_within: 12 * 3600,
            ..Retention::default()
        };
        let got: Vec<(String, String)> = decide(&s, &p)
            .into_iter()
            .map(|v| (v.stamp, v.rules.join(", ")))
            .collect();
        let want = [
            (at(2024, 3, 3, 18).0, "last 1, within 12h, daily 1"),
            (at(2024, 3, 3, 6).0, "within 12h"),
            (at(2024, 3, 2, 18).0, "daily 2"),
            (at(2024, 3, 2, 6).0, ""),
            (at(2024, 3, 1, 18).0, ""),
            (at(2024, 3, 1, 6).0, ""),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(a, b)| (a.clone(), b.to_string()))
            .collect();
        assert_eq!(got, want);
        let all = decide(&s, &Retention::default());
        assert!(all.iter().all(|v| v.rules == ["no retention set"]));
    }

    #[test]
    fn retention_within_counts_from_the_newest() {
        // A snapshot a day in March, then none for a month: "7d" keeps March 25-31, not nothing.
        let s: Vec<_> = (1..=31).map(|d| at(2024, 3, d, 12)).collect();
        let p = Retention {
            keep_within: 7 * 86400,
            ..Retention::default()
        };
        let k = select_keep(&s, &p);
        let want: BTreeSet<String> = (24..=31).map(|d| at(2024, 3, d, 12).0).collect();
        assert_eq!(
            k, want,
            "within 7 days of March 31 12:00, both ends included"
        );
        // Combined with another rule: the union.
        let p = Retention {
            keep_within: 86400,
            keep_last: 3,
            ..Retention::default()
        };
        assert_eq!(select_keep(&s, &p).len(), 3);
    }

    #[test]
    fn retention_last_and_daily() {
        // Two snapshots a day for 10 days.
        let mut s = Vec::new();
        for d in 1..=10 {
            s.push(at(2024, 3, d, 1));
            s.push(at(2024, 3, d, 13));
        }
        let p = Retention {
            keep_last: 3,
            keep_daily: 4,
            ..Retention::default()
        };
        let k = select_keep(&s, &p);
        let want: BTreeSet<String> = [
            at(2024, 3, 10, 13),
            at(2024, 3, 10, 1),
            at(2024, 3, 9, 13),
            at(2024, 3, 8, 13),
            at(2024, 3, 7, 13),
        ]
        .into_iter()
        .map(|x| x.0)
        .collect();
        assert_eq!(k, want);
    }

    #[test]
    fn retention_weekly_monthly_yearly_hourly() {
        let s = vec![
            at(2022, 12, 31, 0),
            at(2023, 6, 1, 0),
            at(2023, 6, 20, 0),
            at(2024, 1, 1, 0), // Monday, ISO week 2024-01
            at(2024, 1, 7, 0), // Sunday, same ISO week
            at(2024, 1, 8, 0), // next week
            at(2024, 1, 8, 1),
        ];
        let newest_of_each_year = vec![
            at(2022, 12, 31, 0).0,
            at(2023, 6, 20, 0).0,
            at(2024, 1, 8, 1).0,
        ];
        let cases = [
            (
                Retention {
                    keep_weekly: 2,
                    ..Default::default()
                },
                vec![at(2024, 1, 7, 0).0, at(2024, 1, 8, 1).0],
            ),
            (
                Retention {
                    keep_monthly: 3,
                    ..Default::default()
                },
                newest_of_each_year.clone(),
            ),
            (
                Retention {
                    keep_yearly: 10,
                    ..Default::default()
                },
                newest_of_each_year,
            ),
            (
                Retention {
                    keep_hourly: 2,
                    ..Default::default()
                },
                vec![at(2024, 1, 8, 0).0, at(2024, 1, 8, 1).0],
            ),
        ];
        for (policy, want) in cases {
            let got: Vec<String> = select_keep(&s, &policy).into_iter().collect();
            assert_eq!(got, want, "{policy:?}");
        }
    }
}
