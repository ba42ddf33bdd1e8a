//! Sizes: parsed as the job file and the command line write them, rendered for messages.

/// A size as written in the job file: bytes, or a percentage of something (container size).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SizeSpec {
    Bytes(u64),
    Percent(f64),
}

impl SizeSpec {
    /// Resolve against `base` (percentages are of `base`).
    pub fn of(self, base: u64) -> u64 {
        match self {
            SizeSpec::Bytes(b) => b,
            SizeSpec::Percent(p) => (base as f64 * p / 100.0) as u64,
        }
    }
    pub fn is_zero(self) -> bool {
        matches!(self, SizeSpec::Bytes(0)) || matches!(self, SizeSpec::Percent(p) if p == 0.0)
    }
}

/// Smallest container: LUKS2's 16 MiB header plus a 16 MiB ext4.
pub const MIN_CONTAINER: u64 = 32 << 20;
/// Largest container: ext4's limit with 64-bit block numbers and 4 KiB blocks.
pub const MAX_CONTAINER: u64 = 1 << 60;

/// Parse a `truncate`-style size: `5T` = 5 TiB; `K M G T P E` (optionally `KiB`…) are powers of
/// 1024, `KB MB …` powers of 1000, a bare number is bytes.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "invalid size {s:?}: expected a number with an optional unit like 64G"
        ));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: number too large"))?;
    let mut u = unit.chars();
    let mult: u64 = match u.next() {
        None => 1,
        Some(c) => {
            let exp = match c.to_ascii_uppercase() {
                'K' => 1,
                'M' => 2,
                'G' => 3,
                'T' => 4,
                'P' => 5,
                'E' => 6,
                _ => {
                    return Err(format!(
                        "invalid size {s:?}: unknown unit {unit:?} (use K, M, G, T, P, E)"
                    ))
                }
            };
            let base: u64 = match u.as_str() {
                "" | "iB" => 1024,
                "B" => 1000,
                _ => {
                    return Err(format!(
                        "invalid size {s:?}: unknown unit {unit:?} (use K, M, G, T, P, E)"
                    ))
                }
            };
            base.pow(exp)
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("invalid size {s:?}: too large"))
}

/// A size or a percentage (`10%`).
pub fn parse_size_spec(s: &str) -> std::result::Result<SizeSpec, String> {
    match s.trim().strip_suffix('%') {
        Some(p) => {
            let v: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("invalid percentage {s:?}"))?;
            if !(0.0..=1000.0).contains(&v) {
                return Err(format!(
                    "invalid percentage {s:?}: must be between 0% and 1000%"
                ));
            }
            Ok(SizeSpec::Percent(v))
        }
        None => parse_size(s).map(SizeSpec::Bytes),
    }
}

/// Binary-unit rendering for messages.
pub fn human(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("5T"), Ok(5 * (1u64 << 40)));
        assert_eq!(parse_size("64G"), Ok(64 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert_eq!(parse_size("1KB"), Ok(1000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("1.5G").is_err());
        assert!(parse_size("-1G").is_err());
        assert!(parse_size("1X").is_err());
        assert!(parse_size("99999E").is_err());
        assert_eq!(parse_size_spec("10%"), Ok(SizeSpec::Percent(10.0)));
        assert_eq!(parse_size_spec("2.5%"), Ok(SizeSpec::Percent(2.5)));
        assert_eq!(parse_size_spec("1G"), Ok(SizeSpec::Bytes(1 << 30)));
        assert!(parse_size_spec("x%").is_err());
        assert_eq!(SizeSpec::Percent(25.0).of(4 << 30), 1 << 30);
        assert!(parse_size_spec("0").unwrap().is_zero());
    }

    #[test]
    fn human_units() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(5 << 40), "5.0 TiB");
    }
}
