//! UTC time stamps `YYYY-MM-DDTHH:MM:SSZ`, and the calendar buckets retention sorts them into
//! (hour, day, ISO week, month, year), through the `time` crate.

use time::format_description::FormatItem;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

const STAMP: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");

/// The instant `secs` after the epoch (the epoch itself if out of the crate's range, ±9999 years).
fn at(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

pub fn format_stamp(secs: i64) -> String {
    at(secs).format(STAMP).unwrap_or_default()
}

/// Parse a stamp made by [`format_stamp`]; anything else is `None` (so stray names are ignored).
/// The round trip refuses what the parser alone lets through (a leading `+` on the year).
pub fn parse_stamp(s: &str) -> Option<i64> {
    let secs = PrimitiveDateTime::parse(s, STAMP)
        .ok()?
        .assume_utc()
        .unix_timestamp();
    (format_stamp(secs) == s).then_some(secs)
}

/// (year, month, day, hour) of a time.
pub fn civil(secs: i64) -> (i64, u32, u32, u32) {
    let t = at(secs);
    let month = u8::from(t.month());
    (
        t.year().into(),
        month.into(),
        t.day().into(),
        t.hour().into(),
    )
}

/// ISO 8601 (year, week) of a time.
pub fn iso_week(secs: i64) -> (i64, u32) {
    let (y, w, _) = at(secs).to_iso_week_date();
    (y.into(), w.into())
}

pub fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

#[cfg(test)]
pub(crate) fn at_ymdh(y: i32, m: u8, d: u8, h: u8) -> i64 {
    let month = time::Month::try_from(m).unwrap();
    time::Date::from_calendar_date(y, month, d)
        .unwrap()
        .with_hms(h, 0, 0)
        .unwrap()
        .assume_utc()
        .unix_timestamp()
}

/// A `keep_within` duration: numbers with units y (365 days), m (30 days), w, d, h, written
/// together ("1y6m", "7d", "36h"), in seconds.
pub fn parse_within(s: &str) -> Result<i64, String> {
    let bad = || format!("{s:?} is not a duration like 7d, 2w, 1y6m or 36h (units y, m, w, d, h)");
    let mut total: i64 = 0;
    let mut num = String::new();
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            'y' => 365 * 86400,
            'm' => 30 * 86400,
            'w' => 7 * 86400,
            'd' => 86400,
            'h' => 3600,
            _ => return Err(bad()),
        };
        let n: i64 = num.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        num.clear();
    }
    if !num.is_empty() || total == 0 {
        return Err(bad());
    }
    Ok(total)
}

/// A `keep_within` duration as days and hours ("7d", "545d", "1d12h"): exact, whatever units the
/// job file used.
pub fn format_within(secs: i64) -> String {
    let (d, h) = (secs / 86400, secs % 86400 / 3600);
    match (d, h) {
        (0, h) => format!("{h}h"),
        (d, 0) => format!("{d}d"),
        (d, h) => format!("{d}d{h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_durations() {
        assert_eq!(parse_within("7d"), Ok(7 * 86400));
        assert_eq!(format_within(parse_within("1y6m").unwrap()), "545d");
        assert_eq!(format_within(parse_within("36h").unwrap()), "1d12h");
        assert_eq!(format_within(parse_within("5h").unwrap()), "5h");
        assert_eq!(parse_within("1y6m"), Ok((365 + 180) * 86400));
        assert_eq!(parse_within("2w36h"), Ok(14 * 86400 + 36 * 3600));
        for bad in [
            "",
            "7",
            "d",
            "7x",
            "0d",
            "1.5d",
            "-1d",
            "99999999999999999y",
        ] {
            assert!(parse_within(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn stamps_round_trip() {
        assert_eq!(format_stamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_stamp(1_709_210_096), "2024-02-29T12:34:56Z");
        for t in [0, 951_782_400, 1_709_210_096, 4_102_444_799] {
            assert_eq!(parse_stamp(&format_stamp(t)), Some(t));
        }
        for bad in [
            "2024-02-30T00:00:00Z",
            "2024-02-29T12:34:56Z.inflight",
            "latest",
            "2024-13-01T00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:00:60Z",
            "+2024-01-01T00:00:00Z",
            "2024-1-01T00:00:00Z",
            "2024-01-01t00:00:00Z",
            " 2024-01-01T00:00:00Z",
            "2024-01-01T00:00:00Z ",
        ] {
            assert_eq!(parse_stamp(bad), None, "{bad}");
        }
    }

    #[test]
    fn buckets() {
        assert_eq!(iso_week(at_ymdh(2021, 1, 3, 0)), (2020, 53));
        assert_eq!(iso_week(at_ymdh(2021, 1, 4, 0)), (2021, 1));
        assert_eq!(iso_week(at_ymdh(2024, 12, 30, 0)), (2025, 1));
        assert_eq!(iso_week(at_ymdh(2024, 6, 15, 0)), (2024, 24));
        assert_eq!(civil(at_ymdh(2024, 2, 29, 23) + 3599), (2024, 2, 29, 23));
        assert_eq!(civil(at_ymdh(2024, 2, 29, 23) + 3600), (2024, 3, 1, 0));
    }
}
