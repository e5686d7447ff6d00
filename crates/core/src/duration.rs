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
