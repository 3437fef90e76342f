//! Calendar arithmetic (proleptic Gregorian, UTC, millisecond epoch),
//! a fast RFC 3339 formatter, US daylight-saving bounds and the local-time
//! sales-intensity curve (hour of day × day of week).
//!
//! Everything here is allocation-free integer math so it can run on the
//! generator's hot path.

/// Milliseconds per hour.
pub const HOUR_MS: i64 = 3_600_000;
/// Milliseconds per day.
pub const DAY_MS: i64 = 86_400_000;
/// Earliest timestamp the formatter handles: `0000-01-01T00:00:00.000Z`.
pub const MIN_TIMESTAMP_MS: i64 = -62_167_219_200_000;
/// Latest timestamp the formatter handles: `9999-12-31T23:59:59.999Z`.
pub const MAX_TIMESTAMP_MS: i64 = 253_402_300_799_999;
/// Length of a formatted timestamp, e.g. `2026-11-27T14:03:12.345Z`.
pub const TIMESTAMP_LEN: usize = 24;

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
pub const fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = month as i64;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Civil date `(year, month 1-12, day 1-31)` of a day number since 1970-01-01.
pub const fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    (year, month, day)
}

/// Day of week of a day number, Monday = 0 … Sunday = 6.
pub const fn weekday_from_days(days: i64) -> u32 {
    // 1970-01-01 was a Thursday.
    (days + 3).rem_euclid(7) as u32
}

/// Clamps a timestamp into the formattable range (years 0000–9999).
pub const fn clamp_timestamp_ms(ms: i64) -> i64 {
    if ms < MIN_TIMESTAMP_MS {
        MIN_TIMESTAMP_MS
    } else if ms > MAX_TIMESTAMP_MS {
        MAX_TIMESTAMP_MS
    } else {
        ms
    }
}

/// Formats `ms` (clamped to years 0000–9999) as RFC 3339 UTC with
/// milliseconds: `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn format_timestamp_ms(ms: i64) -> [u8; TIMESTAMP_LEN] {
    let ms = clamp_timestamp_ms(ms);
    let days = ms.div_euclid(DAY_MS);
    let rem = ms.rem_euclid(DAY_MS);
    let (year, month, day) = civil_from_days(days);
    let year = year.clamp(0, 9999) as u32;
    let secs = (rem / 1000) as u32;
    let millis = (rem % 1000) as u32;
    let (h, mi, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut b = *b"0000-00-00T00:00:00.000Z";
    let digit = |v: u32| b'0' + (v % 10) as u8;
    b[0] = digit(year / 1000);
    b[1] = digit(year / 100);
    b[2] = digit(year / 10);
    b[3] = digit(year);
    b[5] = digit(month / 10);
    b[6] = digit(month);
    b[8] = digit(day / 10);
    b[9] = digit(day);
    b[11] = digit(h / 10);
    b[12] = digit(h);
    b[14] = digit(mi / 10);
    b[15] = digit(mi);
    b[17] = digit(s / 10);
    b[18] = digit(s);
    b[20] = digit(millis / 100);
    b[21] = digit(millis / 10);
    b[22] = digit(millis);
    b
}

/// UTC instants `[start, end)` of US daylight saving time in `year`:
/// second Sunday of March to first Sunday of November.
///
/// Simplification: the switch is placed at 2:00 Eastern time for every
/// zone (07:00 UTC in March, 06:00 UTC in November) instead of 2:00 local,
/// so western zones switch a few hours early in the intensity model.
pub const fn us_dst_bounds_ms(year: i64) -> (i64, i64) {
    let march1 = days_from_civil(year, 3, 1);
    // Days until the first Sunday (weekday 6), then one more week.
    let first_sun_mar = march1 + (6 - weekday_from_days(march1) as i64).rem_euclid(7);
    let start = (first_sun_mar + 7) * DAY_MS + 7 * HOUR_MS;
    let nov1 = days_from_civil(year, 11, 1);
    let first_sun_nov = nov1 + (6 - weekday_from_days(nov1) as i64).rem_euclid(7);
    let end = first_sun_nov * DAY_MS + 6 * HOUR_MS;
    (start, end)
}

/// Whether US daylight saving time is in effect at `ms` (see
/// [`us_dst_bounds_ms`]).
pub fn is_us_dst(ms: i64) -> bool {
    let (year, _, _) = civil_from_days(ms.div_euclid(DAY_MS));
    let (start, end) = us_dst_bounds_ms(year);
    (start..end).contains(&ms)
}

/// Caches the DST flag over the interval of time where it is constant, so
/// the hot path only does two comparisons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DstCache {
    lo: i64,
    hi: i64,
    dst: bool,
}

impl Default for DstCache {
    fn default() -> Self {
        Self::new()
    }
}

impl DstCache {
    /// An empty cache (the first lookup computes).
    pub const fn new() -> Self {
        Self {
            lo: 0,
            hi: 0,
            dst: false,
        }
    }

    /// DST flag at `ms`.
    pub fn lookup(&mut self, ms: i64) -> bool {
        if ms < self.lo || ms >= self.hi {
            let (year, _, _) = civil_from_days(ms.div_euclid(DAY_MS));
            let (start, end) = us_dst_bounds_ms(year);
            let year_start = days_from_civil(year, 1, 1) * DAY_MS;
            let year_end = days_from_civil(year + 1, 1, 1) * DAY_MS;
            (self.lo, self.hi, self.dst) = if ms < start {
                (year_start, start, false)
            } else if ms < end {
                (start, end, true)
            } else {
                (end, year_end, false)
            };
        }
        self.dst
    }
}

/// Hour of the week of `ms` in UTC, Monday 00:00 = 0 … Sunday 23:00 = 167.
pub const fn utc_hour_of_week(ms: i64) -> usize {
    // Epoch day 0 is a Thursday: shift by 3 days so Monday starts a week.
    (ms.div_euclid(HOUR_MS) + 72).rem_euclid(168) as usize
}

/// Relative sales intensity by local hour of day (peak 14:00–17:00; almost
/// nothing between 22:00 and 08:00).
pub const HOUR_PROFILE: [f64; 24] = [
    0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.04, // 00-07
    0.20, 0.45, 0.70, 0.85, 0.90, 1.00, 1.15, 1.20, // 08-15
    1.20, 1.10, 0.90, 0.70, 0.45, 0.20, 0.03, 0.01, // 16-23
];

/// Relative sales intensity by local day of week, Monday … Sunday
/// (Saturday highest, Sunday lower, Tuesday quietest).
pub const WEEKDAY_PROFILE: [f64; 7] = [0.85, 0.75, 0.80, 0.85, 1.05, 1.60, 0.90];

/// Unnormalised local intensity at a local hour of the week (Monday 00:00 = 0).
pub const fn local_intensity(local_hour_of_week: usize) -> f64 {
    let how = local_hour_of_week % 168;
    HOUR_PROFILE[how % 24] * WEEKDAY_PROFILE[how / 24]
}
