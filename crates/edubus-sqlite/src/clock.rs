//! Time and integer conversions between Rust values and SQLite columns (unix microseconds,
//! signed 64-bit integers).

use std::time::Duration;

use jiff::Timestamp;

/// Now, in unix microseconds.
pub(crate) fn now_micros() -> i64 {
    Timestamp::now().as_microsecond()
}

/// A stored unix-microsecond value as a timestamp (out-of-range values clamp).
pub(crate) fn timestamp(micros: i64) -> Timestamp {
    Timestamp::from_microsecond(micros).unwrap_or(if micros < 0 {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    })
}

/// A timestamp as stored: unix microseconds.
pub(crate) fn micros(at: Timestamp) -> i64 {
    at.as_microsecond()
}

/// A duration in microseconds, saturating.
pub(crate) fn duration_micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// An unsigned value (position, epoch, id) as an SQLite integer, saturating.
pub(crate) fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A stored non-negative integer back as unsigned (negative values read as 0).
pub(crate) fn uint(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_round_trip_and_saturate() {
        let now = Timestamp::now();
        assert_eq!(micros(timestamp(micros(now))), micros(now));
        assert_eq!(timestamp(i64::MAX), Timestamp::MAX);
        assert_eq!((int(u64::MAX), uint(-1), uint(7)), (i64::MAX, 0, 7));
        assert_eq!(duration_micros(Duration::from_millis(2)), 2000);
    }
}
