//! A small, versioned pseudo-random source: SplitMix64. Written out here (not a
//! crate's `StdRng`) so that a seed gives the same trace on every toolchain and every
//! release of every dependency, which the determinism promise needs.

/// SplitMix64 (Steele, Lea, Flood 2014): a 64-bit state, one add and a mix per draw.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed ^ 0x5DEE_CE66_D1CE_4E5B }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.state)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform integer in [lo, hi] (inclusive).
    pub fn int(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo + 1)
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Exponential with the given mean.
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }

    /// Standard normal (Box-Muller, one value per call).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.unit();
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            return None;
        }
        items.get((self.next_u64() % items.len() as u64) as usize)
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A stateless draw in [0, 1) from a seed and a few keys: the same question (this
/// launch of this chute at this second) gets the same answer whatever strategy asks
/// and whatever was drawn before, so strategies are compared on equal luck.
pub fn hash_unit(seed: u64, keys: &[u64]) -> f64 {
    let mut h = mix(seed ^ 0xA076_1D64_78BD_642F);
    for k in keys {
        h = mix(h ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    }
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// FNV-1a of a string, to key [`hash_unit`] by ids.
pub fn key(s: &str) -> u64 {
    s.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sequence_is_fixed_by_the_seed() {
        let a: Vec<u64> = {
            let mut r = Rng::new(7);
            (0..4).map(|_| r.next_u64()).collect()
        };
        let mut r = Rng::new(7);
        assert_eq!(a, (0..4).map(|_| r.next_u64()).collect::<Vec<_>>());
        let mut other = Rng::new(8);
        assert_ne!(a[0], other.next_u64());
        let u = Rng::new(1).unit();
        assert!((0.0..1.0).contains(&u));
        assert_eq!(hash_unit(3, &[1, 2]), hash_unit(3, &[1, 2]));
        assert_ne!(hash_unit(3, &[1, 2]), hash_unit(3, &[2, 1]));
    }
}
