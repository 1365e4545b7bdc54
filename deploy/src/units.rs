//! Parsing of the human units Docker users write: durations (`1m30s`), byte sizes (`512m`)
//! and shell-style command strings. Written here (small) rather than pulled in as crates,
//! because each must accept exactly what `docker run`/Compose accept, no more.

/// Parses `1h2m3s`, `500ms`, `30s`, `1.5s` into nanoseconds (what the Docker API wants).
pub(crate) fn parse_duration_ns(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("empty duration".to_string());
    }
    let mut total: f64 = 0.0;
    let mut rest = trimmed;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_end);
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_end);
        let amount: f64 = number
            .parse()
            .map_err(|_| format!("invalid duration {text:?}: expected e.g. 30s, 1m30s, 500ms"))?;
        let unit_ns = match unit {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => {
                return Err(format!(
                    "invalid duration {text:?}: a unit is required (ms, s, m, h)"
                ))
            }
            other => return Err(format!("invalid duration {text:?}: unknown unit {other:?}")),
        };
        total += amount * unit_ns;
        rest = next;
    }
    if total > u64::MAX as f64 {
        return Err(format!("duration {text:?} is too long"));
    }
    Ok(total.round() as u64)
}

/// Parses `512m`, `1g`, `1.5GiB`, `1048576` into bytes, with Docker's binary multiples.
pub(crate) fn parse_bytes(text: &str) -> Result<u64, String> {
    let trimmed = text.trim().to_ascii_lowercase();
    let number_end = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(number_end);
    let amount: f64 = number
        .parse()
        .map_err(|_| format!("invalid size {text:?}: expected e.g. 512m, 1g, 1073741824"))?;
    let multiplier: f64 = match unit.trim() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" | "tib" => 1024.0f64.powi(4),
        other => return Err(format!("invalid size {text:?}: unknown unit {other:?}")),
    };
    let bytes = amount * multiplier;
    if bytes > u64::MAX as f64 {
        return Err(format!("size {text:?} is too large"));
    }
    Ok(bytes.round() as u64)
}

/// Splits a command string the way a POSIX shell splits words (quotes and backslashes, no
/// expansion), as Compose does for `command: "a b 'c d'"`.
pub(crate) fn split_words(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(inner) => current.push(inner),
                        None => return Err(format!("unclosed ' in {text:?}")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(escaped @ ('"' | '\\' | '$' | '`')) => current.push(escaped),
                            Some(other) => {
                                current.push('\\');
                                current.push(other);
                            }
                            None => return Err(format!("unclosed \" in {text:?}")),
                        },
                        Some(inner) => current.push(inner),
                        None => return Err(format!("unclosed \" in {text:?}")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(escaped) => current.push(escaped),
                    None => return Err(format!("trailing \\ in {text:?}")),
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            other => {
                in_word = true;
                current.push(other);
            }
        }
    }
    if in_word {
        words.push(current);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ns("30s"), Ok(30_000_000_000));
        assert_eq!(parse_duration_ns("1m30s"), Ok(90_000_000_000));
        assert_eq!(parse_duration_ns("500ms"), Ok(500_000_000));
        assert_eq!(parse_duration_ns("1.5s"), Ok(1_500_000_000));
        assert_eq!(parse_duration_ns("1h"), Ok(3_600_000_000_000));
        assert!(parse_duration_ns("30")
            .unwrap_err()
            .contains("unit is required"));
        assert!(parse_duration_ns("3d")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_duration_ns("").is_err());
        assert!(parse_duration_ns("s").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("512m"), Ok(512 * 1024 * 1024));
        assert_eq!(parse_bytes("1G"), Ok(1024 * 1024 * 1024));
        assert_eq!(parse_bytes("1.5GiB"), Ok(1536 * 1024 * 1024));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("1x").is_err());
    }

    #[test]
    fn words() {
        assert_eq!(
            split_words("python3 -m http.server 8000").unwrap(),
            ["python3", "-m", "http.server", "8000"]
        );
        assert_eq!(
            split_words(r#"sh -c 'echo "a b"' "x\"y" a\ b ''"#).unwrap(),
            ["sh", "-c", "echo \"a b\"", "x\"y", "a b", ""]
        );
        assert!(split_words("echo 'oops").is_err());
        assert!(split_words("").unwrap().is_empty());
    }
}
