//! Durations written the way operators write them: `180d`, `36h`, `90m`, `1h 30m`.

use serde::{Deserialize, Deserializer};
use std::fmt;

/// A non-negative duration parsed from text such as `30d` or `1h 30m`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub std::time::Duration);

impl HumanDuration {
    pub fn parse(text: &str) -> Result<Self, String> {
        humantime::parse_duration(text.trim()).map(Self).map_err(|e| {
            format!("{text:?} is not a duration ({e}); write it like 180d, 36h, 90m or 1h 30m")
        })
    }

    pub fn chrono(self) -> chrono::Duration {
        chrono::Duration::from_std(self.0).unwrap_or(chrono::Duration::MAX)
    }

    pub fn days(days: u64) -> Self {
        Self(std::time::Duration::from_secs(days * 86_400))
    }

    /// Whether it is a whole number of humantime's 365.25-day years (as `2y` is).
    pub fn in_years(self) -> bool {
        let secs = self.0.as_secs();
        secs > 0 && self.0.subsec_nanos() == 0 && secs.is_multiple_of(SECONDS_PER_YEAR)
    }

    pub const fn seconds(seconds: u64) -> Self {
        Self(std::time::Duration::from_secs(seconds))
    }

    /// Checks that `self` lies in `min..=max`; the message names the field, the value, the
    /// range and why the range is what it is.
    pub fn check_range(self, field: &str, min: Self, max: Self, why: &str, problems: &mut Vec<String>) {
        if self < min || self > max {
            problems.push(format!("{field}: {self} is outside {min}..{max}; {why}"));
        }
    }
}

/// humantime's year: 365.25 days.
const SECONDS_PER_YEAR: u64 = 31_557_600;

/// The longest duration any setting accepts: a client secret lives at most 730 days, so a
/// longer wait, warning or grace period means nothing, and a date plus it stays on the
/// calendar (`300000y` used to overflow the date arithmetic and panic).
pub const LONGEST: HumanDuration = HumanDuration::seconds(crate::domain::MAX_SECRET_LIFETIME_DAYS as u64 * 86_400);

impl fmt::Debug for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The largest whole unit, as people wrote it: 180d, not "5months 27days 13h".
        if self.0.subsec_nanos() != 0 {
            return write!(f, "{}", humantime::format_duration(self.0));
        }
        let secs = self.0.as_secs();
        match secs {
            // Years are printed as years (2y is 730.5 days: whole days would hide the half).
            s if self.in_years() => write!(f, "{}y", s / SECONDS_PER_YEAR),
            s if s > 0 && s % 86_400 == 0 => write!(f, "{}d", s / 86_400),
            s if s > 0 && s % 3_600 == 0 => write!(f, "{}h", s / 3_600),
            s if s > 0 && s % 60 == 0 => write!(f, "{}m", s / 60),
            s => write!(f, "{s}s"),
        }
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_operator_durations() {
        assert_eq!(HumanDuration::parse("180d").unwrap(), HumanDuration::days(180));
        assert_eq!(HumanDuration::parse("1h 30m").unwrap().0.as_secs(), 5400);
        let err = HumanDuration::parse("six months").unwrap_err();
        assert!(err.contains("write it like 180d"), "{err}");
    }

    #[test]
    fn years_are_printed_as_years() {
        assert_eq!(HumanDuration::parse("2y").unwrap().to_string(), "2y");
        assert_eq!(HumanDuration::parse("730d").unwrap().to_string(), "730d");
        assert_eq!(HumanDuration::parse("365d").unwrap().to_string(), "365d");
    }

    #[test]
    fn a_range_check_names_field_value_and_range() {
        let mut problems = Vec::new();
        let (min, max) = (HumanDuration::seconds(1), HumanDuration::seconds(3600));
        for text in ["0s", "1s", "1h", "61m", "300000y"] {
            HumanDuration::parse(text).unwrap().check_range("retryBudget", min, max, "why", &mut problems);
        }
        assert_eq!(problems, [
            "retryBudget: 0s is outside 1s..1h; why",
            "retryBudget: 61m is outside 1s..1h; why",
            "retryBudget: 300000y is outside 1s..1h; why",
        ]);
    }
}
