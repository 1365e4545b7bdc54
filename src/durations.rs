//! Durations on the command line: a bare number is seconds (as the help
//! texts say), anything else humantime (`500ms`, `2m`, `1h30m`).

use std::time::Duration;

pub fn seconds_or_duration(text: &str) -> Result<Duration, String> {
    if let Ok(seconds) = text.trim().parse::<f64>() {
        if seconds.is_finite() && seconds >= 0.0 {
            return Ok(Duration::from_secs_f64(seconds));
        }
        return Err(format!("{text}: a duration cannot be negative"));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("{e}: write seconds (5) or a duration with its unit (500ms, 2m)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_numbers_are_seconds() {
        assert_eq!(seconds_or_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(seconds_or_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(seconds_or_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(seconds_or_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(seconds_or_duration("-1").is_err());
        assert!(seconds_or_duration("soon").unwrap_err().contains("500ms"));
    }
}
