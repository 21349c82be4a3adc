//! The short durations the resources write (`1h`, `30m`, `90s`, `1h30m`): hours, minutes and seconds in that
//! order, at least one, digits only.

/// The duration in seconds, or `None` when it does not read as one (or overflows).
pub fn seconds(s: &str) -> Option<i64> {
    let mut rest = s;
    let mut total: i64 = 0;
    let mut seen_any = false;
    for (unit, seconds) in [('h', 3600_i64), ('m', 60), ('s', 1)] {
        if let Some(pos) = rest.find(unit) {
            let digits = &rest[..pos];
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let n: i64 = digits.parse().ok()?;
            total = total.checked_add(n.checked_mul(seconds)?)?;
            rest = &rest[pos + 1..];
            seen_any = true;
        }
    }
    (seen_any && rest.is_empty()).then_some(total)
}

/// The same, as a `std` duration.
pub fn parse(s: &str) -> Option<std::time::Duration> {
    seconds(s)
        .and_then(|n| u64::try_from(n).ok())
        .map(std::time::Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_units_in_order_only() {
        for (text, want) in [
            ("90s", Some(90)),
            ("5m", Some(300)),
            ("1h30m", Some(5400)),
            ("2h0m5s", Some(7205)),
            ("", None),
            ("m", None),
            ("5", None),
            ("30m1h", None),
            ("-5s", None),
            ("1.5h", None),
        ] {
            assert_eq!(seconds(text), want, "{text:?}");
        }
    }
}
