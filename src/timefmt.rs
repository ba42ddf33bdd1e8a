//! UTC time stamps `YYYY-MM-DDTHH:MM:SSZ` without a date crate: civil-from-days and back
//! (H. Hinnant's algorithms), plus the ISO week used for weekly retention.

/// Seconds since the epoch → (year, month, day, hour, minute, second).
pub fn civil(secs: i64) -> (i64, u32, u32, u32, u32, u32) {
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
    )
}

/// Days since the epoch of a civil date.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub fn format_stamp(secs: i64) -> String {
    let (y, mo, d, h, mi, s) = civil(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// Parse a stamp made by [`format_stamp`]; anything else is `None` (so stray names are ignored).
pub fn parse_stamp(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let t = &s[r];
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, mo, d, h, mi, se) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let days = days_from_civil(i64::from(y), mo, d);
    let secs = days * 86400 + i64::from(h * 3600 + mi * 60 + se);
    (format_stamp(secs) == s).then_some(secs)
}

/// ISO 8601 (year, week) of a time.
pub fn iso_week(secs: i64) -> (i64, u32) {
    let days = secs.div_euclid(86400);
    let weekday = (days + 3).rem_euclid(7); // 0 = Monday; 1970-01-01 was a Thursday
    let thursday = days - weekday + 3;
    let (y, ..) = civil(thursday * 86400);
    let week = (thursday - days_from_civil(y, 1, 1)) / 7 + 1;
    (y, week as u32)
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip() {
        assert_eq!(format_stamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_stamp(1_709_210_096), "2024-02-29T12:34:56Z");
        for t in [0, 951_782_400, 1_709_210_096, 4_102_444_799] {
            assert_eq!(parse_stamp(&format_stamp(t)), Some(t));
        }
        assert_eq!(parse_stamp("2024-02-30T00:00:00Z"), None);
        assert_eq!(parse_stamp("2024-02-29T12:34:56Z.inflight"), None);
        assert_eq!(parse_stamp("latest"), None);
    }

    #[test]
    fn iso_weeks() {
        let at = |y, m, d| days_from_civil(y, m, d) * 86400;
        assert_eq!(iso_week(at(2021, 1, 3)), (2020, 53));
        assert_eq!(iso_week(at(2021, 1, 4)), (2021, 1));
        assert_eq!(iso_week(at(2024, 12, 30)), (2025, 1));
        assert_eq!(iso_week(at(2024, 6, 15)), (2024, 24));
    }
}
