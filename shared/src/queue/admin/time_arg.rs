//! Operators' time arguments (`--since`, `--until`): an RFC 3339
//! timestamp or an age counted back from now, as Unix milliseconds.

/// A time argument that is neither RFC 3339 nor a relative age.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid time {input:?}: {reason}; use RFC 3339 (2026-11-22T06:40:00Z) \
     or an age such as 90s, 30m, 1h, 2d, 1h30m"
)]
pub struct TimeArgError {
    pub input: String,
    pub reason: String,
}

/// Parses an operator's time argument into Unix ms: an RFC 3339 timestamp,
/// or an age counted back from `now_ms` made of number+unit parts (`ms`, `s`,
/// `m`, `h`, `d`, `w`), e.g. `30m` or `1h30m`.
pub fn parse_time_arg(input: &str, now_ms: i64) -> Result<i64, TimeArgError> {
    let err = |reason: &str| TimeArgError {
        input: input.to_owned(),
        reason: reason.to_owned(),
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(err("empty"));
    }
    // Ages are digits and letters only; anything with a date or time
    // separator is meant as a timestamp and gets the RFC 3339 diagnosis.
    if s.contains(['-', ':', '+']) {
        let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .map_err(|e| err(&format!("not RFC 3339 ({e})")))?;
        return i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
            .map_err(|_| err("out of range"));
    }
    let age = parse_age_ms(s).map_err(|r| err(&r))?;
    now_ms.checked_sub(age).ok_or_else(|| err("out of range"))
}

/// `1h30m` → 5 400 000. Every number needs a unit, so a bare `5` (seconds?
/// minutes?) is rejected rather than guessed.
fn parse_age_ms(s: &str) -> Result<i64, String> {
    let mut total: i64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("expected a number at {rest:?}"));
        }
        let n: i64 = rest[..digits]
            .parse()
            .map_err(|_| "number too large".to_owned())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit_ms: i64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            "" => return Err(format!("{n} has no unit")),
            other => return Err(format!("unknown unit {other:?}")),
        };
        rest = &rest[unit_len..];
        total = n
            .checked_mul(unit_ms)
            .and_then(|part| total.checked_add(part))
            .ok_or_else(|| "age too large".to_owned())?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_763_792_262_123;

    #[test]
    fn relative_ages_count_back_from_now() {
        assert_eq!(parse_time_arg("30m", NOW), Ok(NOW - 30 * 60_000));
        assert_eq!(parse_time_arg("1h", NOW), Ok(NOW - 3_600_000));
        assert_eq!(parse_time_arg("2d", NOW), Ok(NOW - 2 * 86_400_000));
        assert_eq!(parse_time_arg("90s", NOW), Ok(NOW - 90_000));
        assert_eq!(parse_time_arg("250ms", NOW), Ok(NOW - 250));
        assert_eq!(parse_time_arg("1w", NOW), Ok(NOW - 7 * 86_400_000));
        assert_eq!(
            parse_time_arg(" 1h30m ", NOW),
            Ok(NOW - 90 * 60_000),
            "parts add up, surrounding blanks ignored"
        );
        assert_eq!(parse_time_arg("0s", NOW), Ok(NOW));
    }

    #[test]
    fn rfc3339_timestamps_are_absolute() {
        assert_eq!(
            parse_time_arg("2025-11-22T06:17:42.123Z", NOW),
            Ok(1_763_792_262_123)
        );
        assert_eq!(
            parse_time_arg("2025-11-22T07:17:42.123+01:00", 0),
            Ok(1_763_792_262_123),
            "offsets are honoured and now is irrelevant"
        );
        assert_eq!(parse_time_arg("1970-01-01T00:00:00Z", NOW), Ok(0));
    }

    #[test]
    fn malformed_time_arguments_are_rejected_with_the_accepted_forms() {
        for bad in [
            "",
            "5",
            "1x",
            "h",
            "1h30",
            "-1h",
            "yesterday",
            "2025-11-22",
            "2025-11-22T06:17:42",
            "2025-13-22T06:17:42Z",
            "99999999999999999999s",
            "9223372036854775807w",
        ] {
            let e = parse_time_arg(bad, NOW).expect_err(bad);
            assert_eq!(e.input, bad);
            assert!(e.to_string().contains("RFC 3339"), "{e}");
        }
    }
}
