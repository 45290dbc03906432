//! Exponential backoff with jitter for reconnecting to an unreachable peer.

use std::time::Duration;

use ring::rand::SecureRandom;

/// A random number from the system's generator (falls back to the clock).
pub fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return now.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32);
    }
    u64::from_le_bytes(bytes)
}

/// Delays that double from `base` up to `max`, each drawn uniformly from the
/// upper half of the current step ("equal jitter"), so that many stations
/// cut off at once do not come back in lockstep, yet none retries too soon.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    step: Duration,
    state: u64,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max: max.max(base),
            step: base,
            state: random_u64() | 1,
        }
    }

    /// The delay before the next attempt; each call grows the step.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let half = step / 2;
        let fraction = self.next_random() as f64 / u64::MAX as f64;
        half + half.mul_f64(fraction)
    }

    /// Starts again from the base delay (after a success).
    pub fn reset(&mut self) {
        self.step = self.base;
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: plenty for jitter.
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_with_jitter_and_reset() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(3);
        let mut backoff = Backoff::new(base, max);
        let delays: Vec<Duration> = (0..10).map(|_| backoff.next_delay()).collect();
        let mut step = base;
        for delay in &delays {
            assert!(
                *delay >= step / 2 && *delay <= step,
                "{delay:?} outside {step:?}"
            );
            step = (step * 2).min(max);
        }
        assert!(delays[9] >= max / 2);
        // Jitter: the capped delays are not all equal.
        assert!(delays[6..].windows(2).any(|w| w[0] != w[1]));
        backoff.reset();
        assert!(backoff.next_delay() <= base);
    }
}
