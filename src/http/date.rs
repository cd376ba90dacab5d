//! The per-shard cache of the `Date` header value (IMF-fixdate); never reads a socket, and reads
//! the clock only in `DateCache::new`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Length of an IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT` (RFC 9110 §5.6.7).
pub const DATE_BYTES: usize = 29;

/// 9999-12-31T23:59:59Z: the last second an IMF-fixdate (4-digit year) can name; `httpdate`
/// panics past it.
const DATE_SECS_MAX: u64 = 253_402_300_799;

/// The `Date` header value, recomputed only when the second changes.
#[derive(Clone, Debug)]
pub struct DateCache {
    secs_since_epoch: u64,
    bytes: [u8; DATE_BYTES],
}

impl DateCache {
    pub fn new() -> DateCache {
        let mut cache = DateCache {
            secs_since_epoch: 0,
            bytes: format_date(0),
        };
        cache.refresh(SystemTime::now());
        cache
    }

    /// Recomputes the value if `now` is in another second than the cached one. Clocks before
    /// 1970 or after 9999 are clamped, never a panic.
    pub fn refresh(&mut self, now: SystemTime) {
        let secs = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let secs = secs.min(DATE_SECS_MAX);
        if secs != self.secs_since_epoch {
            self.secs_since_epoch = secs;
            self.bytes = format_date(secs);
        }
    }

    pub fn get(&self) -> &[u8; DATE_BYTES] {
        &self.bytes
    }

    /// The second the value names: equal seconds, equal bytes.
    pub fn secs(&self) -> u64 {
        self.secs_since_epoch
    }
}

impl Default for DateCache {
    fn default() -> DateCache {
        DateCache::new()
    }
}

fn format_date(secs_since_epoch: u64) -> [u8; DATE_BYTES] {
    assert!(secs_since_epoch <= DATE_SECS_MAX);
    let time = UNIX_EPOCH + Duration::from_secs(secs_since_epoch);
    let mut writer = DateWriter {
        bytes: [0; DATE_BYTES],
        len: 0,
    };
    let written = std::fmt::Write::write_fmt(
        &mut writer,
        format_args!("{}", httpdate::HttpDate::from(time)),
    );
    assert!(
        written.is_ok() && writer.len == DATE_BYTES,
        "IMF-fixdate is 29 bytes"
    );
    writer.bytes
}

/// Formats into a fixed array, so a refresh allocates nothing.
struct DateWriter {
    bytes: [u8; DATE_BYTES],
    len: usize,
}

impl std::fmt::Write for DateWriter {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        let end = self.len + text.len();
        let slot = self.bytes.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        slot.copy_from_slice(text.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(secs_since_epoch: u64, expected: &str) {
        let mut cache = DateCache::new();
        cache.refresh(UNIX_EPOCH + Duration::from_secs(secs_since_epoch));
        assert_eq!(std::str::from_utf8(cache.get()).unwrap(), expected);
    }

    #[test]
    fn formats() {
        let cases = [
            (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
            (784_111_777, "Sun, 06 Nov 1994 08:49:37 GMT"),
            (DATE_SECS_MAX, "Fri, 31 Dec 9999 23:59:59 GMT"),
            (DATE_SECS_MAX + 1, "Fri, 31 Dec 9999 23:59:59 GMT"),
            (u64::MAX / 2, "Fri, 31 Dec 9999 23:59:59 GMT"),
        ];
        for (secs, expected) in cases {
            check(secs, expected);
        }
    }

    #[test]
    fn before_epoch_clamps() {
        let mut cache = DateCache::new();
        cache.refresh(UNIX_EPOCH - Duration::from_secs(5));
        assert_eq!(cache.get(), b"Thu, 01 Jan 1970 00:00:00 GMT");
    }

    #[test]
    fn same_second_keeps_value_and_next_second_changes_it() {
        let mut cache = DateCache::new();
        let base = UNIX_EPOCH + Duration::from_secs(784_111_777);
        cache.refresh(base);
        cache.refresh(base + Duration::from_millis(999));
        assert_eq!(cache.get(), b"Sun, 06 Nov 1994 08:49:37 GMT");
        cache.refresh(base + Duration::from_millis(1000));
        assert_eq!(cache.get(), b"Sun, 06 Nov 1994 08:49:38 GMT");
    }

    #[test]
    fn round_trips_through_httpdate() {
        let cache = DateCache::new();
        let text = std::str::from_utf8(cache.get()).unwrap();
        assert!(httpdate::parse_http_date(text).is_ok());
    }
}
