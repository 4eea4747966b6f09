use std::time::Duration;

use rand::Rng;

/// Capped exponential backoff with "equal jitter": with `c = min(cap, initial·2^n)`
/// each delay is uniform in `[c/2, c]`, so many miners (or many validator sockets)
/// that lost the same server do not come back in lock step, yet none retries hot.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, cap: Duration) -> Self {
        Backoff { initial, cap: cap.max(initial), attempt: 0 }
    }

    /// The next delay to wait; grows until the cap.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.initial.saturating_mul(1u32 << self.attempt.min(20));
        let ceiling = exp.min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let floor = ceiling / 2;
        let span = ceiling.saturating_sub(floor).as_millis() as u64;
        floor + Duration::from_millis(if span == 0 { 0 } else { rand::thread_rng().gen_range(0..=span) })
    }

    /// After a success: the next failure starts from the initial delay again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Failures since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let delays: Vec<_> = (0..10).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(2)), "{delays:?}");
        assert!(delays[9] >= Duration::from_secs(1), "capped delays stay in [cap/2, cap]: {delays:?}");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
            for _ in 0..5 {
                b.next_delay();
            }
            seen.insert(b.next_delay().as_millis());
        }
        assert!(seen.len() > 10, "50 clients should not retry in lock step: {seen:?}");
    }
}
