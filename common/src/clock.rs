//! Wall-clock times as the state files, journals and reports keep them:
//! Unix milliseconds or seconds, a clock before 1970 read as 0.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}

/// `t` as Unix milliseconds (0 before 1970).
pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `t` as Unix seconds (0 before 1970).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_before_1970_read_as_zero() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(unix_ms(t), 1_700_000_000_123);
        assert_eq!(unix_secs(t), 1_700_000_000);
        let before = UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!((unix_ms(before), unix_secs(before)), (0, 0));
        assert!(now_ms() > 1_700_000_000_000);
    }
}
