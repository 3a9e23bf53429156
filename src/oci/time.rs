//! Build timestamps: `SOURCE_DATE_EPOCH` parsing and RFC 3339 formatting, never the wall clock.

/// A malformed `SOURCE_DATE_EPOCH`.
#[derive(Debug, thiserror::Error)]
#[error("SOURCE_DATE_EPOCH={given:?} is not a number of seconds since 1970 (digits only, e.g. 1700000000): fix or unset it")]
pub struct BadEpoch {
    pub given: String,
}

/// Parses a `SOURCE_DATE_EPOCH` value: decimal digits only, as the reproducible-builds spec says.
pub fn parse_epoch(value: &str) -> Result<u64, BadEpoch> {
    let bad = || BadEpoch {
        given: value.chars().take(40).collect(),
    };
    if value.is_empty() || value.len() > 12 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    value.parse().map_err(|_| bad())
}

/// Formats seconds since the Unix epoch as RFC 3339 UTC (`2024-01-02T03:04:05Z`).
pub fn rfc3339(epoch: u64) -> String {
    let days = (epoch / 86_400) as i64;
    let secs = epoch % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        (secs % 3600) / 60,
        secs % 60
    )
}

/// Formats a wall-clock instant as RFC 3339 UTC with milliseconds (`2024-01-02T03:04:05.678Z`).
/// For records and events only: no image byte ever comes from the wall clock.
pub fn rfc3339_millis(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = rfc3339(d.as_secs());
    format!("{}.{:03}Z", secs.trim_end_matches('Z'), d.subsec_millis())
}

/// `rfc3339_millis` of a time kept as milliseconds since the epoch (the store's timestamps; a
/// negative one reads as the epoch).
pub fn rfc3339_from_ms(ms: i64) -> String {
    rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_042);
        assert_eq!(rfc3339_millis(t), "2023-11-14T22:13:20.042Z");
    }

    #[test]
    fn rejects_malformed_epochs() {
        for bad in ["", "abc", "-1", "1e9", " 1", "1.5", "0x10", "9999999999999"] {
            assert!(parse_epoch(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_epoch("1700000000").unwrap(), 1_700_000_000);
    }
}
