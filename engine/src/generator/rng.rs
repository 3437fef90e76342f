//! Small, dependency-free deterministic PRNG and sampling helpers.
//!
//! [`Rng`] is xoshiro256** seeded through SplitMix64, which is fast (a few
//! ns per draw), has a 2^256 - 1 period and passes BigCrush. It is *not*
//! cryptographically secure; it only has to make reproducible test data.
//!
//! [`CumTable`] turns a list of non-negative weights into a cumulative
//! `u32` threshold table so that a categorical draw costs one PRNG call and
//! a short binary search.

/// SplitMix64 step: advances `state` and returns the next output.
///
/// Used to expand a 64-bit seed into xoshiro's 256-bit state and as a cheap
/// stateless hash for catalog-derived constants.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// xoshiro256** pseudo-random generator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// Seeds the generator; every seed (including 0) gives a valid state.
    pub fn new(seed: u64) -> Self {
        let mut sm = seed;
        let mut s = [0u64; 4];
        for word in &mut s {
            *word = splitmix64(&mut sm);
        }
        if s == [0; 4] {
            // Unreachable in practice (SplitMix64 outputs are a bijection of
            // distinct states), but the all-zero state would be a fixed point.
            s[0] = 1;
        }
        Self { s }
    }

    /// Next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Next 32 random bits (the high half of a 64-bit draw).
    #[inline]
    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// Uniform `f64` in `[0, 1)` with 53 bits of precision.
    #[inline]
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in `[lo, hi]` (inclusive). Returns `lo` if `hi < lo`.
    ///
    /// Uses the multiply-high method; the bias is below 2^-32 for the small
    /// ranges used here, which is irrelevant for synthetic data.
    #[inline]
    pub fn range_u64(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        let span = hi - lo + 1;
        if span == 0 {
            // Full 64-bit range.
            return self.next_u64();
        }
        lo + ((u128::from(self.next_u64()) * u128::from(span)) >> 64) as u64
    }

    /// Exponentially distributed `f64` with mean 1.
    #[inline]
    pub fn exp1(&mut self) -> f64 {
        // 1 - u is in (0, 1], so the logarithm is finite.
        -(1.0 - self.next_f64()).ln()
    }

    /// Draws an index from a cumulative table.
    #[inline]
    pub fn pick(&mut self, table: &CumTable) -> usize {
        table.index_of(self.next_u32())
    }
}

/// Cumulative weight table for categorical sampling with a `u32` draw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CumTable {
    /// `upper[i]` is the exclusive upper bound of entry `i` in `0..=2^32`,
    /// stored as `u64` so that the last bound can be exactly `2^32`.
    upper: Vec<u64>,
}

impl CumTable {
    /// Builds a table from weights. Negative or non-finite weights count as
    /// zero; if all weights are zero, entries are equally likely.
    pub fn new<I: IntoIterator<Item = f64>>(weights: I) -> Self {
        let mut w: Vec<f64> = weights
            .into_iter()
            .map(|x| if x.is_finite() && x > 0.0 { x } else { 0.0 })
            .collect();
        let mut total: f64 = w.iter().sum();
        if total <= 0.0 {
            w.iter_mut().for_each(|x| *x = 1.0);
            total = w.len() as f64;
        }
        let scale = (1u64 << 32) as f64;
        let mut acc = 0.0;
        let mut upper: Vec<u64> = w
            .iter()
            .map(|x| {
                acc += x;
                ((acc / total) * scale).round().min(scale) as u64
            })
            .collect();
        if let Some(last) = upper.last_mut() {
            *last = 1u64 << 32;
        }
        Self { upper }
    }

    /// Index of the entry that a uniform `u32` draw falls into.
    /// Returns 0 for an empty table.
    #[inline]
    pub fn index_of(&self, r: u32) -> usize {
        let r = u64::from(r);
        let i = self.upper.partition_point(|&u| u <= r);
        i.min(self.upper.len().saturating_sub(1))
    }
}
