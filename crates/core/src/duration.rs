//! Human durations in definitions: `250ms`, `2s`, `1.5s`, `5m`, `1h`, or a bare number of
//! milliseconds.

/// Parses a duration into milliseconds; the error says what forms are accepted.
pub fn parse_ms(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let hint = "use a number with a unit, e.g. 250ms, 2s, 1.5s, 5m, 1h, 7d (a bare number means ms)";
    if t.is_empty() {
        return Err(format!("empty duration: {hint}"));
    }
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("'{t}' is not a duration: {hint}"))?;
    let factor = match unit.trim() {
        "" | "ms" => 1.0,
        "s" => 1_000.0,
        "m" | "min" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        other => return Err(format!("'{t}' has unknown unit '{other}': {hint}")),
    };
    let ms = value * factor;
    if !ms.is_finite() || !(0.0..=1.0e15).contains(&ms) {
        return Err(format!("'{t}' is out of range: {hint}"));
    }
    Ok(ms.round() as u64)
}

/// Formats milliseconds the way progress lines show them: `850ms`, `1.0s`, `2m05s`.
pub fn format_ms(ms: u64) -> String {
    if ms < 1_000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1_000.0)
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_ms("250ms"), Ok(250));
        assert_eq!(parse_ms("1.5s"), Ok(1500));
        assert_eq!(parse_ms("2m"), Ok(120_000));
        assert_eq!(parse_ms("40"), Ok(40));
        assert_eq!(parse_ms("7d"), Ok(7 * 86_400_000));
        assert!(parse_ms("5 parsecs").is_err());
        assert!(parse_ms("-1s").is_err());
        assert!(parse_ms("").is_err());
    }

    #[test]
    fn formats() {
        assert_eq!(format_ms(12), "12ms");
        assert_eq!(format_ms(1000), "1.0s");
        assert_eq!(format_ms(125_000), "2m05s");
    }
}

/// Parses an RFC 3339 time (`2027-01-01T00:00:00Z`, `2027-01-01T09:30:00.250+02:00`) to Unix
/// milliseconds.
pub fn parse_rfc3339(text: &str) -> Result<i64, String> {
    let bad = || format!("`{text}` is not an RFC 3339 time; write e.g. 2027-01-01T00:00:00Z");
    let t = text.trim();
    let b = t.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let num = |from: usize, to: usize| t.get(from..to).and_then(|s| s.parse::<i64>().ok()).ok_or_else(bad);
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    let mut rest = &t[19..];
    let mut millis = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let padded = format!("{:0<3}", &frac[..digits.min(3)]);
        millis = padded.parse::<i64>().map_err(|_| bad())?;
        rest = &frac[digits..];
    }
    let offset_min = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && matches!(rest.as_bytes()[0], b'+' | b'-') && rest.as_bytes()[3] == b':' => {
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            let h = rest[1..3].parse::<i64>().map_err(|_| bad())?;
            let m = rest[4..6].parse::<i64>().map_err(|_| bad())?;
            sign * (h * 60 + m)
        }
        _ => return Err(bad()),
    };
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => return Err(bad()),
    };
    if !(1..=days_in_month).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return Err(bad());
    }
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second.min(59) - offset_min * 60;
    Ok(seconds * 1_000 + millis)
}

#[cfg(test)]
mod rfc3339_tests {
    use super::parse_rfc3339;

    #[test]
    fn rfc3339_times_parse_to_unix_milliseconds_and_nonsense_is_refused() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_rfc3339("2027-01-01T00:00:00Z"), Ok(1_798_761_600_000));
        assert_eq!(parse_rfc3339("2027-01-01T02:00:00.25+02:00"), Ok(1_798_761_600_250));
        assert_eq!(parse_rfc3339("2024-02-29T12:00:00-00:30"), Ok(1_709_209_800_000));
        for bad in ["2027-01-01", "2027-02-30T00:00:00Z", "2027-01-01T25:00:00Z", "tomorrow", "2027-01-01T00:00:00"] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
    }
}
