//! Single-range `Range: bytes=...` requests (RFC 9110 section 14).

/// What to send for a body of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeReply {
    /// No (usable) range header: the whole body, 200.
    Full,
    /// Bytes `start..=end`, 206.
    Partial {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
    },
    /// The range cannot be satisfied: 416.
    Unsatisfiable,
}

/// Interprets a `Range` header value for a body of `len` bytes. Multi-range requests and
/// other units are answered with the full body, as the RFC allows.
pub fn parse(header: Option<&str>, len: u64) -> RangeReply {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeReply::Full;
    };
    if spec.contains(',') {
        return RangeReply::Full;
    }
    let Some((a, b)) = spec.split_once('-') else { return RangeReply::Full };
    let (a, b) = (a.trim(), b.trim());
    let parsed = if a.is_empty() {
        // Suffix: the last `b` bytes.
        match b.parse::<u64>() {
            Ok(0) | Err(_) => return RangeReply::Unsatisfiable,
            Ok(n) => (len.saturating_sub(n), len.saturating_sub(1)),
        }
    } else {
        let Ok(start) = a.parse::<u64>() else { return RangeReply::Full };
        let end = if b.is_empty() {
            len.saturating_sub(1)
        } else {
            match b.parse::<u64>() {
                Ok(e) if e >= start => e.min(len.saturating_sub(1)),
                _ => return RangeReply::Full,
            }
        };
        (start, end)
    };
    if len == 0 || parsed.0 >= len {
        return RangeReply::Unsatisfiable;
    }
    RangeReply::Partial { start: parsed.0, end: parsed.1 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn forms() {
        assert_eq!(parse(None, 10), RangeReply::Full);
        assert_eq!(parse(Some("bytes=2-4"), 10), RangeReply::Partial { start: 2, end: 4 });
        assert_eq!(parse(Some("bytes=7-"), 10), RangeReply::Partial { start: 7, end: 9 });
        assert_eq!(parse(Some("bytes=-3"), 10), RangeReply::Partial { start: 7, end: 9 });
        assert_eq!(parse(Some("bytes=5-100"), 10), RangeReply::Partial { start: 5, end: 9 });
        assert_eq!(parse(Some("bytes=10-"), 10), RangeReply::Unsatisfiable);
        assert_eq!(parse(Some("bytes=0-1,4-5"), 10), RangeReply::Full);
        assert_eq!(parse(Some("items=0-1"), 10), RangeReply::Full);
    }

    proptest! {
        #[test]
        fn partial_ranges_are_inside_the_body(h in ".{0,24}", len in 0u64..1000) {
            if let RangeReply::Partial { start, end } = parse(Some(&h), len) {
                prop_assert!(start <= end && end < len);
            }
        }
    }
}
