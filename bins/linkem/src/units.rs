//! Parsing the link's rate, delay and loss as `tc` writes them, with errors that name the value.

/// A rate, duration or loss that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?}: {reason}")]
pub struct UnitError {
    /// Which setting: "rate", "duration" or "loss".
    pub what: &'static str,
    /// The text as given.
    pub value: String,
    /// What is wrong with it and what was expected.
    pub reason: String,
}

fn error(what: &'static str, value: &str, reason: impl Into<String>) -> UnitError {
    UnitError { what, value: value.to_owned(), reason: reason.into() }
}

/// Splits "50mbit" into (50.0, "mbit"); the number must be finite and not negative.
fn number_and_unit<'a>(what: &'static str, value: &'a str) -> Result<(f64, &'a str), UnitError> {
    let text = value.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+' || c == 'e'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 =
        number.parse().map_err(|_| error(what, value, "expected a number followed by a unit"))?;
    if !number.is_finite() {
        return Err(error(what, value, "the number is not finite"));
    }
    if number < 0.0 {
        return Err(error(what, value, "must not be negative"));
    }
    Ok((number, unit))
}

/// `value` as a number times the scale of its unit, one of `units` (case-insensitive); `hint`
/// follows the list of units in the error for an unknown one.
fn scaled(
    what: &'static str,
    value: &str,
    units: &[(&str, f64)],
    hint: &str,
) -> Result<f64, UnitError> {
    let (number, unit) = number_and_unit(what, value)?;
    let names: Vec<&str> = units.iter().map(|(name, _)| *name).collect();
    let unit = unit.to_ascii_lowercase();
    match units.iter().find(|(name, _)| *name == unit) {
        Some((_, scale)) => Ok(number * scale),
        None if unit.is_empty() => {
            Err(error(what, value, format!("needs a unit: {}", names.join(", "))))
        }
        None => Err(error(
            what,
            value,
            format!("unknown unit {unit:?}; use {}{hint}", names.join(", ")),
        )),
    }
}

/// A rate in bits per second: `bit`, `kbit`, `mbit` or `gbit` (SI, as `tc` counts).
///
/// `tc`'s `kbps`/`mbps` mean bytes per second, a classic source of 8x mistakes, so byte units
/// are refused rather than guessed.
pub fn parse_rate(value: &str) -> Result<u64, UnitError> {
    let units = [("bit", 1e0), ("kbit", 1e3), ("mbit", 1e6), ("gbit", 1e9)];
    let hint = " (bits per second; tc's \"mbps\" would mean megabytes per second)";
    let bits = scaled("rate", value, &units, hint)?;
    if bits < 1.0 {
        return Err(error("rate", value, "must be at least 1 bit per second"));
    }
    if bits > 1e12 {
        return Err(error("rate", value, "must be at most 1000gbit"));
    }
    Ok(bits.round() as u64)
}

/// A duration in nanoseconds: `s`, `ms`, `us` or `ns`.
pub fn parse_duration_ns(value: &str) -> Result<u64, UnitError> {
    let units = [("s", 1e9), ("ms", 1e6), ("us", 1e3), ("ns", 1e0)];
    let ns = scaled("duration", value, &units, "")?;
    if ns > 3600e9 {
        return Err(error("duration", value, "must be at most an hour"));
    }
    Ok(ns.round() as u64)
}

/// A loss probability written as a percentage, "0.1%"; returns the fraction (0.001).
pub fn parse_loss(value: &str) -> Result<f64, UnitError> {
    let (number, unit) = number_and_unit("loss", value)?;
    if unit != "%" {
        return Err(error(
            "loss",
            value,
            "write it as a percentage between 0% and 100%, e.g. 0.1%",
        ));
    }
    if number > 100.0 {
        return Err(error("loss", value, "must be between 0% and 100%"));
    }
    Ok(number / 100.0)
}

/// One link: a name for the report and the two TAP devices it joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSpec {
    pub name: String,
    pub tap_a: String,
    pub tap_b: String,
}

/// Reads `NAME:TAP_A:TAP_B`. Interface names are at most 15 bytes (the kernel's IFNAMSIZ less
/// its NUL), with no '/', ':' or white space.
pub fn parse_link(value: &str) -> Result<LinkSpec, UnitError> {
    let parts: Vec<&str> = value.split(':').collect();
    let [name, tap_a, tap_b] = parts[..] else {
        return Err(error("link", value, "expected NAME:TAP_A:TAP_B"));
    };
    if name.is_empty() {
        return Err(error("link", value, "the link needs a name"));
    }
    for tap in [tap_a, tap_b] {
        if tap.is_empty() || tap.len() > 15 {
            return Err(error(
                "link",
                value,
                format!("interface name {tap:?} must be 1 to 15 bytes"),
            ));
        }
        if tap.chars().any(|c| c == '/' || c.is_whitespace() || !c.is_ascii()) {
            return Err(error(
                "link",
                value,
                format!("interface name {tap:?} may not hold '/', white space or non-ASCII"),
            ));
        }
    }
    if tap_a == tap_b {
        return Err(error("link", value, "the two ends must be different devices"));
    }
    Ok(LinkSpec { name: name.to_owned(), tap_a: tap_a.to_owned(), tap_b: tap_b.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_in_bits_per_second() {
        assert_eq!(parse_rate("50mbit"), Ok(50_000_000));
        assert_eq!(parse_rate("10Mbit"), Ok(10_000_000));
        assert_eq!(parse_rate("1.5kbit"), Ok(1_500));
        assert_eq!(parse_rate("1gbit"), Ok(1_000_000_000));
        assert_eq!(parse_rate("800bit"), Ok(800));
    }

    #[test]
    fn byte_rates_and_bad_rates_are_refused_naming_the_value() {
        let e = parse_rate("50mbps").expect_err("refused").to_string();
        assert!(e.contains("\"50mbps\"") && e.contains("mbit"), "{e}");
        for bad in ["50", "-1mbit", "fast", "0bit", "0.5bit", "inf mbit", "2000gbit"] {
            let e = parse_rate(bad).expect_err("refused").to_string();
            assert!(e.starts_with("rate ") && e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn durations_in_nanoseconds() {
        assert_eq!(parse_duration_ns("40ms"), Ok(40_000_000));
        assert_eq!(parse_duration_ns("20ms"), Ok(20_000_000));
        assert_eq!(parse_duration_ns("1.5s"), Ok(1_500_000_000));
        assert_eq!(parse_duration_ns("250us"), Ok(250_000));
        assert_eq!(parse_duration_ns("0ms"), Ok(0));
    }

    #[test]
    fn negative_or_unitless_durations_are_refused() {
        let e = parse_duration_ns("-1ms").expect_err("refused").to_string();
        assert_eq!(e, "duration \"-1ms\": must not be negative");
        for bad in ["40", "40 minutes", "ms", "2h"] {
            let e = parse_duration_ns(bad).expect_err("refused").to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn loss_is_a_percentage() {
        assert_eq!(parse_loss("0.1%"), Ok(0.001));
        assert_eq!(parse_loss("0%"), Ok(0.0));
        assert_eq!(parse_loss("100%"), Ok(1.0));
        let e = parse_loss("150%").expect_err("refused").to_string();
        assert_eq!(e, "loss \"150%\": must be between 0% and 100%");
        let e = parse_loss("0.001").expect_err("refused").to_string();
        assert!(e.contains("\"0.001\"") && e.contains("percentage"), "{e}");
        assert!(parse_loss("-1%").is_err());
    }

    #[test]
    fn links_name_two_distinct_devices() {
        let l = parse_link("w1:w1c:w1w").expect("a good link");
        assert_eq!((l.name.as_str(), l.tap_a.as_str(), l.tap_b.as_str()), ("w1", "w1c", "w1w"));
        for bad in [
            "w1:a",
            "w1:a:b:c",
            ":a:b",
            "w1::b",
            "w1:a:a",
            "w1:a:averyveryverylongname",
            "w1:a/b:c",
        ] {
            let e = parse_link(bad).expect_err("refused").to_string();
            assert!(e.starts_with(&format!("link {bad:?}: ")), "{e}");
        }
    }
}
