//! The `expires_at` fact: when a service says in its answer when the credential expires.
//! The host marks a credential `expiring` before that time and `invalid` after it.
//!
//! Read from a successful answer, in this order:
//! - the `GitHub-Authentication-Token-Expiration` header (`2026-12-31 12:00:00 UTC`,
//!   or with a `+hhmm`/`-hhmm` offset), sent for expiring GitHub tokens;
//! - a top-level `expires_at` member of a JSON body (RFC 3339, or a `YYYY-MM-DD` date read
//!   as that day's start in UTC, as GitLab's token self-introspection answers);
//! - a top-level numeric `exp` (Unix seconds), as OAuth token introspection (RFC 7662)
//!   and JWT-style answers carry.
//!
//! The fact's value is always RFC 3339 in UTC with a `Z`, e.g. `2026-12-31T12:00:00Z`.

use crate::http::Response;
use crate::json;

/// The fact key the host reads.
pub const FACT: &str = "expires_at";

const GITHUB_HEADER: &str = "github-authentication-token-expiration";

/// The expiry a successful answer states, as RFC 3339 UTC, if it states one.
pub fn from_response(response: &Response) -> Option<String> {
    let header = response
        .headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(GITHUB_HEADER))
        .and_then(|(_, value)| parse_datetime(value));
    if header.is_some() {
        return header.map(format_utc);
    }
    let body = response.body.trim_start();
    if !body.starts_with('{') || response.truncated {
        return None;
    }
    let doc = json::parse(body)?;
    if let Some(text) = doc.get("expires_at").and_then(json::Value::as_str) {
        return parse_datetime(text).map(format_utc);
    }
    match doc.get("exp") {
        Some(json::Value::Number(n)) => n.parse::<i64>().ok().filter(|s| *s > 0).map(format_utc),
        _ => None,
    }
}

/// Seconds since the Unix epoch of `2026-12-31T12:00:00Z`, `2026-12-31T12:00:00.5+01:00`,
/// `2026-12-31 12:00:00 UTC`, `2026-12-31 12:00:00 -0700` or `2026-12-31`.
pub fn parse_datetime(text: &str) -> Option<i64> {
    let t = text.trim();
    let b = t.as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let year = digits(&b[0..4])?;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let date = days_from_civil(year, month, day) * 86_400;
    if b.len() == 10 {
        return Some(date);
    }
    if !matches!(b[10], b'T' | b't' | b' ') || b.len() < 19 || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (h, m, s) = (digits(&b[11..13])?, digits(&b[14..16])?, digits(&b[17..19])?);
    if h > 23 || m > 59 || s > 60 {
        return None;
    }
    let mut rest = &t[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        rest = &frac[n..];
    }
    let offset = zone_offset(rest.trim_start())?;
    Some(date + h * 3600 + m * 60 + s - offset)
}

/// Seconds east of UTC: `Z`, `UTC`, `GMT`, `+hh:mm`, `+hhmm`.
fn zone_offset(zone: &str) -> Option<i64> {
    if zone.eq_ignore_ascii_case("z") || zone.eq_ignore_ascii_case("utc") || zone.eq_ignore_ascii_case("gmt") {
        return Some(0);
    }
    let b = zone.as_bytes();
    let sign = match b.first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let rest: Vec<u8> = b[1..].iter().copied().filter(|c| *c != b':').collect();
    if rest.len() != 4 {
        return None;
    }
    let (h, m) = (digits(&rest[0..2])?, digits(&rest[2..4])?);
    (h <= 23 && m <= 59).then_some(sign * (h * 3600 + m * 60))
}

fn digits(b: &[u8]) -> Option<i64> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `secs` since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_utc(secs: i64) -> String {
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", s / 3600, s % 3600 / 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(headers: &[(&str, &str)], body: &str) -> Response {
        Response {
            status: 200,
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            body: body.into(),
            truncated: false,
            latency_ms: 1,
        }
    }

    #[test]
    fn reads_the_forms_services_use() {
        let r = response(&[("GitHub-Authentication-Token-Expiration", "2026-12-31 12:00:00 UTC")], "");
        assert_eq!(from_response(&r).unwrap(), "2026-12-31T12:00:00Z");
        let r = response(&[("github-authentication-token-expiration", "2026-12-31 05:00:00 -0700")], "");
        assert_eq!(from_response(&r).unwrap(), "2026-12-31T12:00:00Z");
        let r = response(&[], r#"{"name":"ci","expires_at":"2027-02-28"}"#);
        assert_eq!(from_response(&r).unwrap(), "2027-02-28T00:00:00Z");
        let r = response(&[], r#"{"expires_at":"2027-03-01T01:30:00.250+01:30"}"#);
        assert_eq!(from_response(&r).unwrap(), "2027-03-01T00:00:00Z");
        let r = response(&[], r#"{"active":true,"exp":1798761600}"#);
        assert_eq!(from_response(&r).unwrap(), "2027-01-01T00:00:00Z");
    }

    #[test]
    fn says_nothing_without_a_valid_expiry() {
        for (headers, body) in [
            (vec![], ""),
            (vec![], "{\"expires_at\":null}"),
            (vec![], "{\"expires_at\":\"soon\"}"),
            (vec![], "{\"expires_at\":\"2026-02-30\"}"),
            (vec![], "{\"exp\":\"1798761600\"}"),
            (vec![], "[1,2]"),
            (vec![("github-authentication-token-expiration", "never")], ""),
        ] {
            assert_eq!(from_response(&response(&headers, body)), None, "{headers:?} {body}");
        }
    }

    #[test]
    fn dates_round_trip() {
        for secs in [0, 951_782_400, 1_709_164_800, 4_102_444_799] {
            assert_eq!(parse_datetime(&format_utc(secs)), Some(secs));
        }
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
    }
}
