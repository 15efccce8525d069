//! Human units in specs: durations (`"500ms"`, `"1h30m"`) and sizes (`"16GiB"`, `"512MB"`).

/// Parses a duration such as `500ms`, `10s`, `5m`, `2h`, `1d` or a sum such as `1h30m`.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration; write e.g. \"500ms\", \"10s\", \"5m\", \"2h\"".into());
    }
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total: u64 = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
            i += 1;
        }
        if start == i {
            return Err(format!(
                "bad duration {text:?}: expected a number at `{}`; write e.g. \"500ms\", \"10s\", \"1h30m\"",
                &s[start..]
            ));
        }
        let number: f64 = s[start..i]
            .parse()
            .map_err(|_| format!("bad duration {text:?}: `{}` is not a number", &s[start..i]))?;
        let unit_start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let factor = match &s[unit_start..i] {
            "ms" => 1.0,
            "s" => 1_000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            "d" => 86_400_000.0,
            "" => {
                return Err(format!(
                    "bad duration {text:?}: missing unit after {number}; use ms, s, m, h or d"
                ));
            }
            other => {
                return Err(format!(
                    "bad duration {text:?}: unknown unit `{other}`; use ms, s, m, h or d"
                ));
            }
        };
        total = total.saturating_add((number * factor).round() as u64);
    }
    // Nothing a workflow does takes 100 years; a larger value is a typo, not a plan.
    const MAX_MS: u64 = 100 * 365 * 86_400_000;
    if total > MAX_MS {
        return Err(format!("duration {text:?} is longer than 100 years"));
    }
    Ok(total)
}

/// Parses a size such as `512MB`, `16GiB`, `1.5G` or a plain number of bytes.
pub fn parse_size_bytes(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "bad size {text:?}: expected a number; write e.g. \"512MiB\", \"16GiB\""
        ));
    }
    let number: f64 = num
        .parse()
        .map_err(|_| format!("bad size {text:?}: `{num}` is not a number"))?;
    let factor: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "K" | "KB" | "k" | "kB" => 1e3,
        "M" | "MB" => 1e6,
        "G" | "GB" => 1e9,
        "T" | "TB" => 1e12,
        "Ki" | "KiB" => 1024.0,
        "Mi" | "MiB" => 1024.0 * 1024.0,
        "Gi" | "GiB" => 1024.0 * 1024.0 * 1024.0,
        "Ti" | "TiB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "bad size {text:?}: unknown unit `{other}`; use B, KB, MB, GB, KiB, MiB, GiB or TiB"
            ));
        }
    };
    Ok((number * factor).round() as u64)
}

/// Formats milliseconds the way specs write them (`1500` → `1.5s`).
pub fn format_ms(ms: u64) -> String {
    if ms < 1_000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1_000.0)
    } else if ms < 3_600_000 {
        format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1_000)
    } else {
        format!("{}h{}m", ms / 3_600_000, (ms % 3_600_000) / 60_000)
    }
}

/// Formats bytes the way specs write them (`17179869184` → `16GiB`).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (name, size) in UNITS {
        if bytes >= size {
            let v = bytes as f64 / size as f64;
            return if v.fract() == 0.0 {
                format!("{v:.0}{name}")
            } else {
                format!("{v:.1}{name}")
            };
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("500ms").unwrap(), 500);
        assert_eq!(parse_duration_ms("10s").unwrap(), 10_000);
        assert_eq!(parse_duration_ms("1h30m").unwrap(), 5_400_000);
        assert_eq!(parse_duration_ms("1.5s").unwrap(), 1_500);
        assert!(
            parse_duration_ms("10")
                .unwrap_err()
                .contains("missing unit")
        );
        assert!(parse_duration_ms("10 parsecs").is_err());
        assert!(parse_duration_ms("").is_err());
        assert!(parse_duration_ms("abc").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size_bytes("16GiB").unwrap(), 16 << 30);
        assert_eq!(parse_size_bytes("512MB").unwrap(), 512_000_000);
        assert_eq!(parse_size_bytes("1024").unwrap(), 1024);
        assert_eq!(parse_size_bytes("1.5Ki").unwrap(), 1536);
        assert!(parse_size_bytes("12 bananas").is_err());
        assert!(parse_size_bytes("GiB").is_err());
    }
}
