//! One direction of an emulated link: netem's model without a clock.
//!
//! Time is nanoseconds since an epoch the caller chooses. A frame offered at `now` is, in this
//! order (netem's `netem_enqueue`): lost with probability `loss` (a seeded ChaCha stream, so a
//! seed gives the same losses every run); dropped if `limit` frames are already in flight
//! (accepted and not yet delivered, as netem's `limit` counts them); otherwise it departs at
//! `max(now, link_free) + len * 8 / rate` and is delivered `delay` later. Departures are
//! monotone and the delay is fixed, so deliveries come out in offer order: a FIFO is the timer
//! queue.

use std::collections::VecDeque;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The shape of one direction of a link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkParams {
    /// Serialisation rate in bits per second (at least 1).
    pub rate_bits_per_sec: u64,
    /// One-way propagation delay in nanoseconds (half the round trip).
    pub delay_ns: u64,
    /// Probability that a frame is lost, in [0, 1].
    pub loss: f64,
    /// Frames in flight (accepted, not yet delivered) beyond which a new frame is dropped.
    pub limit: usize,
}

impl LinkParams {
    /// Time on the wire for a frame of `len` bytes, rounded up to the nanosecond.
    pub fn serialisation_ns(&self, len: usize) -> u64 {
        let bits = len as u128 * 8 * 1_000_000_000;
        let rate = u128::from(self.rate_bits_per_sec.max(1));
        bits.div_ceil(rate) as u64
    }
}

/// Frames and bytes seen by one direction. `offered = sent + lost + overflow + in flight`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub offered_frames: u64,
    pub offered_bytes: u64,
    /// Delivered to the far end.
    pub sent_frames: u64,
    pub sent_bytes: u64,
    /// Lost at random.
    pub lost_frames: u64,
    pub lost_bytes: u64,
    /// Dropped because the queue held `limit` frames.
    pub overflow_frames: u64,
    pub overflow_bytes: u64,
}

/// What became of an offered frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Queued: it leaves the sender at `departs_ns` and reaches the far end at `delivers_ns`.
    Queued { departs_ns: u64, delivers_ns: u64 },
    /// Lost at random.
    Lost,
    /// Dropped: the queue was full.
    Overflow,
}

struct InFlight<F> {
    delivers_ns: u64,
    len: usize,
    frame: F,
}

/// One direction of a link: a queue of frames in flight, the time the wire is next free, the
/// loss stream and the counters.
pub struct Direction<F> {
    params: LinkParams,
    rng: ChaCha8Rng,
    link_free_ns: u64,
    queue: VecDeque<InFlight<F>>,
    counters: Counters,
}

impl<F> Direction<F> {
    /// A direction with an idle wire and an empty queue; `seed` fixes the loss pattern.
    pub fn new(params: LinkParams, seed: u64) -> Self {
        Self {
            params,
            rng: ChaCha8Rng::seed_from_u64(seed),
            link_free_ns: 0,
            queue: VecDeque::new(),
            counters: Counters::default(),
        }
    }

    /// Offers a frame of `len` bytes at `now_ns` (times must not go backwards).
    pub fn offer(&mut self, now_ns: u64, len: usize, frame: F) -> Verdict {
        let c = &mut self.counters;
        c.offered_frames += 1;
        c.offered_bytes += len as u64;
        // Drawn for every frame, lossy link or not, so the pattern depends on the seed alone.
        let draw: f64 = self.rng.r#gen();
        if draw < self.params.loss {
            c.lost_frames += 1;
            c.lost_bytes += len as u64;
            return Verdict::Lost;
        }
        if self.queue.len() >= self.params.limit {
            c.overflow_frames += 1;
            c.overflow_bytes += len as u64;
            return Verdict::Overflow;
        }
        let departs_ns = now_ns.max(self.link_free_ns) + self.params.serialisation_ns(len);
        self.link_free_ns = departs_ns;
        let delivers_ns = departs_ns + self.params.delay_ns;
        self.queue.push_back(InFlight { delivers_ns, len, frame });
        Verdict::Queued { departs_ns, delivers_ns }
    }

    /// When the oldest frame in flight reaches the far end, if any is in flight.
    pub fn next_delivery_ns(&self) -> Option<u64> {
        self.queue.front().map(|f| f.delivers_ns)
    }

    /// The oldest frame in flight if it has arrived by `now_ns`; counts it as sent.
    pub fn pop_due(&mut self, now_ns: u64) -> Option<F> {
        if self.queue.front()?.delivers_ns > now_ns {
            return None;
        }
        let f = self.queue.pop_front()?;
        self.counters.sent_frames += 1;
        self.counters.sent_bytes += f.len as u64;
        Some(f.frame)
    }

    /// Frames accepted and not yet delivered.
    pub fn in_flight(&self) -> usize {
        self.queue.len()
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn params(rate: u64, delay_ns: u64, loss: f64, limit: usize) -> LinkParams {
        LinkParams { rate_bits_per_sec: rate, delay_ns, loss, limit }
    }

    fn queued(v: Verdict) -> (u64, u64) {
        match v {
            Verdict::Queued { departs_ns, delivers_ns } => (departs_ns, delivers_ns),
            other => panic!("expected a queued frame, got {other:?}"),
        }
    }

    #[test]
    fn one_frame_takes_its_serialisation_time_then_the_delay() {
        // 1500 bytes at 50 Mbit/s: 12,000 bits / 50e6 = 240 us; then 20 ms of propagation.
        let mut d = Direction::new(params(50_000_000, 20_000_000, 0.0, 1000), 1);
        assert_eq!(queued(d.offer(1_000, 1500, ())), (241_000, 20_241_000));
        // The second frame, offered while the first is on the wire, waits for it.
        assert_eq!(queued(d.offer(2_000, 1500, ())), (481_000, 20_481_000));
        // One offered after the wire went idle starts at once.
        assert_eq!(queued(d.offer(10_000_000, 100, ())), (10_016_000, 30_016_000));
        assert_eq!(d.pop_due(20_240_999), None);
        assert_eq!(d.pop_due(20_241_000), Some(()));
        assert_eq!(d.next_delivery_ns(), Some(20_481_000));
    }

    #[test]
    fn a_full_queue_drops_the_new_frame() {
        let mut d = Direction::new(params(1_000_000, 0, 0.0, 3), 1);
        for _ in 0..3 {
            queued(d.offer(0, 1000, ()));
        }
        assert_eq!(d.offer(0, 1000, ()), Verdict::Overflow);
        // Delivering one frees one slot.
        assert_eq!(d.pop_due(8_000_000), Some(()));
        queued(d.offer(8_000_000, 1000, ()));
        let c = d.counters();
        assert_eq!((c.offered_frames, c.overflow_frames, c.sent_frames), (5, 1, 1));
        assert_eq!(c.overflow_bytes, 1000);
    }

    #[test]
    fn the_loss_pattern_depends_on_the_seed_alone() {
        let pattern = |seed| {
            let mut d = Direction::new(params(1_000_000_000, 0, 0.1, 100_000), seed);
            (0..2000).map(|i| d.offer(i, 64, ()) == Verdict::Lost).collect::<Vec<_>>()
        };
        assert_eq!(pattern(7), pattern(7));
        assert_ne!(pattern(7), pattern(8));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Every departure is exactly max(arrival, previous departure) + serialisation, every
        /// delivery exactly one delay later, and deliveries come out in order at those times.
        #[test]
        fn departures_respect_rate_and_delay(
            rate in 1_000u64..10_000_000_000,
            delay_ns in 0u64..100_000_000,
            frames in prop::collection::vec((0u64..2_000_000, 60usize..1515), 1..200),
        ) {
            let p = params(rate, delay_ns, 0.0, usize::MAX);
            let mut d = Direction::new(p, 3);
            let (mut now, mut free) = (0u64, 0u64);
            let mut expected = Vec::new();
            for (i, &(gap, len)) in frames.iter().enumerate() {
                now += gap;
                let (departs, delivers) = queued(d.offer(now, len, i));
                let bit_ns = len as u128 * 8_000_000_000;
                let rate128 = u128::from(rate);
                let whole = bit_ns / rate128;
                let wire_ns = (whole + u128::from(whole * rate128 != bit_ns)) as u64;
                prop_assert_eq!(departs, now.max(free) + wire_ns);
                prop_assert_eq!(delivers, departs + delay_ns);
                free = departs;
                expected.push((delivers, i));
            }
            for (delivers, i) in expected {
                if delivers > 0 {
                    prop_assert_eq!(d.pop_due(delivers - 1), None);
                }
                prop_assert_eq!(d.pop_due(delivers), Some(i));
            }
            prop_assert_eq!(d.in_flight(), 0);
        }

        /// A backlogged link moves exactly `rate` bits per second: a burst offered at once
        /// finishes at total_bits / rate, give or take a nanosecond per frame of rounding.
        #[test]
        fn a_burst_drains_at_the_rate(
            rate in 1_000_000u64..1_000_000_000,
            lens in prop::collection::vec(60usize..1515, 1..500),
        ) {
            let mut d = Direction::new(params(rate, 0, 0.0, usize::MAX), 5);
            let mut last = 0;
            for &len in &lens {
                last = queued(d.offer(0, len, ())).0;
            }
            let bits: u64 = lens.iter().map(|&l| l as u64 * 8).sum();
            let ideal = bits as f64 * 1e9 / rate as f64;
            prop_assert!(last as f64 >= ideal - 1e-6);
            prop_assert!(last as f64 <= ideal + lens.len() as f64 + 1.0);
        }

        /// Lost frames follow Binomial(n, p): within five standard deviations for every seed.
        #[test]
        fn loss_rate_within_a_binomial_bound(seed in any::<u64>(), loss in 0.0f64..0.5) {
            let n = 20_000u64;
            let mut d = Direction::new(params(10_000_000_000, 0, loss, usize::MAX), seed);
            for i in 0..n {
                d.offer(i, 100, ());
            }
            let lost = d.counters().lost_frames as f64;
            let mean = n as f64 * loss;
            let sd = (n as f64 * loss * (1.0 - loss)).sqrt();
            prop_assert!(
                (lost - mean).abs() <= 5.0 * sd + 1.0,
                "lost {} of {}, p {}",
                lost,
                n,
                loss
            );
        }

        /// The queue never holds more than `limit` frames, and every offered frame and byte is
        /// accounted for as sent, lost, dropped or still in flight.
        #[test]
        fn queue_bound_and_counters_add_up(
            limit in 1usize..50,
            loss in 0.0f64..0.3,
            ops in prop::collection::vec((0u64..500_000, 60usize..1515, any::<bool>()), 1..400),
        ) {
            let mut d = Direction::new(params(10_000_000, 1_000_000, loss, limit), 9);
            let mut now = 0;
            let mut in_flight_bytes = std::collections::VecDeque::new();
            for &(gap, len, drain) in &ops {
                now += gap;
                if drain {
                    while d.pop_due(now).is_some() {
                        in_flight_bytes.pop_front();
                    }
                }
                if let Verdict::Queued { .. } = d.offer(now, len, ()) {
                    in_flight_bytes.push_back(len as u64);
                }
                prop_assert!(d.in_flight() <= limit);
                let c = d.counters();
                prop_assert_eq!(
                    c.offered_frames,
                    c.sent_frames + c.lost_frames + c.overflow_frames + d.in_flight() as u64
                );
                let queued_bytes: u64 = in_flight_bytes.iter().sum();
                prop_assert_eq!(
                    c.offered_bytes,
                    c.sent_bytes + c.lost_bytes + c.overflow_bytes + queued_bytes
                );
            }
        }
    }
}
