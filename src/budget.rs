//! Time limits given in seconds as `f64`: one conversion for every share of a timeout.

use std::time::Duration;

/// The longest wait a budget stands for: a century (an infinite timeout means no limit, and
/// `Instant + this` cannot overflow).
pub const NO_LIMIT: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `secs` seconds as a [`Duration`], saturating: NaN and negative values are 0, infinite or huge
/// ones [`NO_LIMIT`] (`Duration::from_secs_f64` panics on them).
pub fn duration(secs: f64) -> Duration {
    if secs.is_nan() || secs <= 0.0 {
        Duration::ZERO
    } else {
        Duration::try_from_secs_f64(secs).map_or(NO_LIMIT, |d| d.min(NO_LIMIT))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_saturate() {
        assert_eq!(duration(f64::NAN), Duration::ZERO);
        assert_eq!(duration(-3.0), Duration::ZERO);
        assert_eq!(duration(1.5), Duration::from_millis(1500));
        assert_eq!(duration(f64::INFINITY), NO_LIMIT);
        assert_eq!(duration(1e300), NO_LIMIT);
        let _ = std::time::Instant::now() + duration(f64::INFINITY);
    }
}
