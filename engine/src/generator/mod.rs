//! Deterministic, realistic car-sale transaction generator.
//!
//! A [`Generator`] produces an endless stream of [`Transaction`]s (one JSON
//! object each) from a seed and a [`Clock`]:
//!
//! * **Catalog** — 22 brands with approximate US market shares, 3–6 models
//!   each (base MSRP, body type, fuel-type mix), 12 paint colors, and 150
//!   dealers in 76 real US cities weighted by metro population, each with
//!   3–12 salespeople (see [`catalog`] and [`dealers`]).
//! * **Time** — with [`Clock::Simulated`], event time follows a
//!   non-homogeneous Poisson process whose intensity is the population-weighted
//!   sum of each dealer time zone's local hour-of-day × day-of-week curve
//!   (afternoon peak, quiet nights, Saturday busiest), averaging
//!   `mean_per_hour` events per hour of event time. With [`Clock::Wall`],
//!   `sold_at` is the current wall-clock time.
//! * **Lateness** — event time is non-decreasing along the sequence except
//!   for bounded out-of-order jitter: about 5% of events are shifted back by
//!   1–60 s and about 0.5% by 1–3 min, never more than [`MAX_LATENESS_MS`]
//!   before the generator's clock ([`Generator::watermark_ms`]).
//! * **Determinism** — the same seed and clock config give the identical
//!   sequence (for [`Clock::Wall`] everything but the timestamps and the
//!   time-of-day dependent dealer choice); different seeds differ. Results
//!   use `f64` math (`ln`, `powf`), so they are reproducible on a given
//!   platform/toolchain; bit-identity across architectures is not promised.
//!
//! [`Generator::write_json`] is the allocation-free fast path; its output is
//! byte-identical to `serde_json::to_vec(&generator.next_transaction())` at
//! the same sequence position. [`Price`] serializes through serde_json's
//! `RawValue`, so serde_json's `raw_value` feature must be enabled.

pub mod calendar;
pub mod catalog;
pub mod dealers;
mod record;
mod rng;
mod sample;

#[cfg(test)]
mod tests;

pub use record::{ParsePriceError, Price, Transaction};
pub use sample::relative_intensity;

use calendar::{DstCache, HOUR_MS, clamp_timestamp_ms, utc_hour_of_week};
use rng::Rng;

/// Seed used when none is configured.
pub const DEFAULT_SEED: u64 = crate::config::defaults::GENERATOR_SEED;
/// Upper bound of how far `sold_at` can lag behind the generator clock
/// (3 minutes). Configure allowed lateness in the engine above this.
pub const MAX_LATENESS_MS: i64 = 180_000;
/// Default simulated start: 2026-01-01T00:00:00.000Z.
pub const DEFAULT_START_MS: i64 = crate::config::defaults::GENERATOR_START_MS;
/// Default simulated rate: transactions per hour of event time.
pub const DEFAULT_MEAN_PER_HOUR: f64 = crate::config::defaults::GENERATOR_MEAN_PER_HOUR;
/// Smallest accepted `mean_per_hour` (smaller values are raised to it).
pub const MIN_MEAN_PER_HOUR: f64 = 0.01;

/// Share of events shifted back by 1–60 s.
const JITTER_SMALL_SHARE: f64 = 0.05;
/// Share of events shifted back by 1–3 min.
const JITTER_LARGE_SHARE: f64 = 0.005;

/// Where event time (`sold_at`) comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Clock {
    /// Deterministic simulated event time starting at `start_ms` (Unix ms,
    /// UTC) and advancing by a non-homogeneous Poisson process averaging
    /// `mean_per_hour` transactions per hour of event time. Non-finite or
    /// tiny rates are raised to [`MIN_MEAN_PER_HOUR`]; a non-finite rate
    /// becomes [`DEFAULT_MEAN_PER_HOUR`]. Out-of-order jitter is on.
    Simulated {
        /// First instant of the simulation, Unix epoch milliseconds.
        start_ms: i64,
        /// Average transactions per hour of event time.
        mean_per_hour: f64,
    },
    /// `sold_at` is the current wall-clock time (made non-decreasing);
    /// jitter is off unless enabled with [`Generator::with_jitter`].
    Wall,
}

impl Default for Clock {
    fn default() -> Self {
        Self::Simulated {
            start_ms: DEFAULT_START_MS,
            mean_per_hour: DEFAULT_MEAN_PER_HOUR,
        }
    }
}

/// Generator configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GeneratorConfig {
    /// PRNG seed; the same seed and clock give the same sequence.
    pub seed: u64,
    /// Event-time source.
    pub clock: Clock,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        Self {
            seed: DEFAULT_SEED,
            clock: Clock::default(),
        }
    }
}

/// Internal clock state.
#[derive(Debug, Clone, Copy)]
enum ClockState {
    /// Current instant as whole ms plus a fraction in `[0, 1)`.
    Simulated {
        ms: i64,
        frac: f64,
        mean_per_ms: f64,
    },
    /// Last wall-clock reading (kept non-decreasing).
    Wall { last_ms: i64 },
}

/// Deterministic car-sale transaction generator. See the module docs.
#[derive(Debug, Clone)]
pub struct Generator {
    config: GeneratorConfig,
    rng: Rng,
    clock: ClockState,
    dst: DstCache,
    jitter: bool,
    generated: u64,
}

impl Default for Generator {
    fn default() -> Self {
        Self::new(GeneratorConfig::default())
    }
}

impl Generator {
    /// Creates a generator. Never fails: out-of-range inputs are clamped
    /// (start to years 0000–9999, rate as documented on [`Clock`]).
    pub fn new(config: GeneratorConfig) -> Self {
        let (clock, jitter) = match config.clock {
            Clock::Simulated {
                start_ms,
                mean_per_hour,
            } => {
                let rate = if mean_per_hour.is_finite() {
                    mean_per_hour.max(MIN_MEAN_PER_HOUR)
                } else {
                    DEFAULT_MEAN_PER_HOUR
                };
                let state = ClockState::Simulated {
                    ms: clamp_timestamp_ms(start_ms),
                    frac: 0.0,
                    mean_per_ms: rate / HOUR_MS as f64,
                };
                (state, true)
            }
            Clock::Wall => (ClockState::Wall { last_ms: i64::MIN }, false),
        };
        // Touch the shared tables so the first draw does not pay for them.
        let _ = sample::tables();
        Self {
            config,
            rng: Rng::new(config.seed),
            clock,
            dst: DstCache::new(),
            jitter,
            generated: 0,
        }
    }

    /// Enables or disables out-of-order jitter (default: on for
    /// [`Clock::Simulated`], off for [`Clock::Wall`]). Jitter randomness is
    /// drawn either way, so toggling it changes only `sold_at`.
    pub fn with_jitter(mut self, enabled: bool) -> Self {
        self.jitter = enabled;
        self
    }

    /// Whether out-of-order jitter is enabled.
    pub fn jitter_enabled(&self) -> bool {
        self.jitter
    }

    /// The configuration this generator was built with.
    pub fn config(&self) -> &GeneratorConfig {
        &self.config
    }

    /// Number of transactions generated so far.
    pub fn generated(&self) -> u64 {
        self.generated
    }

    /// The generator clock (Unix ms) as of the last transaction: every
    /// generated `sold_at` is `<=` it, and every future one is `>=`
    /// [`Generator::watermark_ms`]. Before the first transaction this is the
    /// simulated start (or `i64::MIN` for [`Clock::Wall`]).
    pub fn clock_ms(&self) -> i64 {
        match self.clock {
            ClockState::Simulated { ms, .. } => ms,
            ClockState::Wall { last_ms } => last_ms,
        }
    }

    /// `clock_ms() - MAX_LATENESS_MS`: a safe event-time watermark; no
    /// later transaction will have an earlier `sold_at`.
    pub fn watermark_ms(&self) -> i64 {
        self.clock_ms().saturating_sub(MAX_LATENESS_MS)
    }

    /// Generates the next transaction as an owned struct.
    pub fn next_transaction(&mut self) -> Transaction {
        self.next_draw().to_transaction()
    }

    /// Appends the next transaction as one compact JSON object (no
    /// newline). Byte-identical to `serde_json::to_vec` of
    /// [`Generator::next_transaction`] at the same position; allocates
    /// nothing beyond growing `out`.
    pub fn write_json(&mut self, out: &mut Vec<u8>) {
        let draw = self.next_draw();
        draw.as_record().write_json(out);
    }

    /// The next `n` transactions as compact JSON strings (what [`Self::write_json`] writes).
    pub fn json_lines(&mut self, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| {
                let mut out = Vec::with_capacity(448);
                self.write_json(&mut out);
                // The writer only emits UTF-8 (it copies `str`s and ASCII).
                String::from_utf8(out).unwrap_or_default()
            })
            .collect()
    }

    /// Appends the next `count` transactions as newline-delimited JSON
    /// (each object followed by `\n`).
    pub fn write_ndjson(&mut self, count: usize, out: &mut Vec<u8>) {
        out.reserve(count.saturating_mul(400));
        for _ in 0..count {
            self.write_json(out);
            out.push(b'\n');
        }
    }

    /// Advances the clock, applies jitter and samples the attributes.
    fn next_draw(&mut self) -> sample::Draw {
        let clock_ms = self.advance_clock();
        // Always consume the jitter randomness so the rest of the record
        // does not depend on whether jitter is enabled.
        let kind = self.rng.next_f64();
        let amount = self.rng.next_u64();
        let shift = if !self.jitter {
            0
        } else if kind < JITTER_LARGE_SHARE {
            scale(amount, 60_000, MAX_LATENESS_MS)
        } else if kind < JITTER_LARGE_SHARE + JITTER_SMALL_SHARE {
            scale(amount, 1_000, 60_000)
        } else {
            0
        };
        let sold_at_ms = clamp_timestamp_ms(clock_ms.saturating_sub(shift));
        let dst = self.dst.lookup(clock_ms);
        let zone_slot = usize::from(dst) * 168 + utc_hour_of_week(clock_ms);
        let draw = sample::draw(&mut self.rng, clock_ms, sold_at_ms, zone_slot);
        self.generated += 1;
        draw
    }

    /// Moves the clock to the next event time and returns it (Unix ms).
    fn advance_clock(&mut self) -> i64 {
        match &mut self.clock {
            ClockState::Wall { last_ms } => {
                let now = clamp_timestamp_ms(chrono::Utc::now().timestamp_millis());
                *last_ms = (*last_ms).max(now);
                *last_ms
            }
            ClockState::Simulated {
                ms,
                frac,
                mean_per_ms,
            } => {
                // Exact inversion of a Poisson process whose rate is constant
                // within each UTC hour: spend Exp(1) "expected events" hour by
                // hour.
                let rates = &sample::tables().rate;
                let mut budget = self.rng.exp1();
                while *ms < calendar::MAX_TIMESTAMP_MS {
                    let dst = usize::from(self.dst.lookup(*ms));
                    let rate = *mean_per_ms * rates[dst][utc_hour_of_week(*ms)];
                    let hour_end = (ms.div_euclid(HOUR_MS) + 1) * HOUR_MS;
                    let room = (hour_end - *ms) as f64 - *frac;
                    if rate > 0.0 && budget < room * rate {
                        let step = *frac + budget / rate;
                        let whole = step.floor();
                        *ms += whole as i64;
                        *frac = step - whole;
                        break;
                    }
                    budget -= room * rate;
                    *ms = hour_end;
                    *frac = 0.0;
                }
                *ms = clamp_timestamp_ms(*ms);
                *ms
            }
        }
    }
}

/// Maps 64 random bits uniformly onto `[lo, hi]`.
fn scale(bits: u64, lo: i64, hi: i64) -> i64 {
    let span = (hi - lo + 1).max(1) as u128;
    lo + ((u128::from(bits) * span) >> 64) as i64
}

impl Iterator for Generator {
    type Item = Transaction;

    /// Never returns `None`.
    fn next(&mut self) -> Option<Transaction> {
        Some(self.next_transaction())
    }
}
