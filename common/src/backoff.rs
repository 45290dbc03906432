//! Backoff: delays that double up to a cap, with "equal jitter" where many
//! stations might otherwise retry in lockstep. Reconnecting to a peer, the
//! legacy HALT_FLAG wait and a failed file's next attempt all use it.

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

/// The delay of attempt `attempt` (0 first) of a series that doubles from
/// `base` up to `max`.
pub fn doubled(base: Duration, max: Duration, attempt: u32) -> Duration {
    base.saturating_mul(1 << attempt.min(31)).min(max)
}

/// A delay drawn uniformly between half of `step` and `step` ("equal
/// jitter"), `random` choosing where.
pub fn jittered(step: Duration, random: u64) -> Duration {
    let half = step / 2;
    let fraction = random as f64 / u64::MAX as f64;
    (half + (step - half).mul_f64(fraction)).min(step)
}

/// Delays that double from `base` up to `max`, each drawn uniformly from the
/// upper half of the current step ("equal jitter"), so that many stations
/// cut off at once do not come back in lockstep, yet none retries too soon.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
    state: u64,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max: max.max(base),
            attempt: 0,
            state: random_u64() | 1,
        }
    }

    /// The delay before the next attempt; each call grows the step.
    pub fn next_delay(&mut self) -> Duration {
        let step = doubled(self.base, self.max, self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        jittered(step, self.next_random())
    }

    /// Starts again from the base delay (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
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

    #[test]
    fn doubling_stops_at_the_cap_and_jitter_stays_in_the_upper_half() {
        let (base, max) = (Duration::from_secs(5), Duration::from_secs(3600));
        let steps: Vec<u64> = [0, 1, 9, 10, 11, 40, u32::MAX]
            .map(|a| doubled(base, max, a).as_secs())
            .to_vec();
        assert_eq!(steps, [5, 10, 2560, 3600, 3600, 3600, 3600]);
        let step = Duration::from_nanos(1001);
        assert_eq!(jittered(step, 0), Duration::from_nanos(500));
        assert_eq!(jittered(step, u64::MAX), step);
    }
}
