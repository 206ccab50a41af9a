//! The round schedule: the tasks of each round and the number of rounds a job runs.
//!
//! The job's tasks are numbered 0 to `task_count − 1` as [`crate::task::slice`]
//! numbers them. Epoch `e` visits them in a permutation drawn from the seed and `e`
//! (a Fisher–Yates shuffle driven by SplitMix64, so the order is the same on every
//! platform and build). The epoch's permutation is cut into
//! `floor(task_count / tasks_per_round)` rounds of `tasks_per_round` tasks, and the
//! remainder is skipped in that epoch, so no round contains a task twice.

use crate::manifest::Training;

/// A SplitMix64 generator (Steele, Lea and Flood, 2014): small, fast and the same
/// on every platform.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Returns a value in `0..bound`, without modulo bias (Lemire's method with rejection).
    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "bound must be positive");
        let threshold = bound.wrapping_neg() % bound;
        loop {
            let product = u128::from(self.next_u64()) * u128::from(bound);
            if (product as u64) >= threshold {
                return (product >> 64) as u64;
            }
        }
    }

    /// Returns a value in `[0, 1)` with 53 random bits.
    pub(crate) fn unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1_u64 << 53) as f64
    }
}

/// Domain separator so that the shuffle and the prompt initialisation draw different
/// streams from the same seed.
const SHUFFLE_STREAM: u64 = 0x7368_7566_666c_6521;

/// Returns the rounds in one epoch: `floor(task_count / tasks_per_round)`, or 0 when a
/// round needs more tasks than the job has.
pub fn rounds_per_epoch(task_count: u64, tasks_per_round: u32) -> u64 {
    if tasks_per_round == 0 {
        return 0;
    }
    task_count / u64::from(tasks_per_round)
}

/// Returns the number of rounds the job runs: `rounds`, or `epochs × rounds_per_epoch`.
pub fn total_rounds(training: &Training, task_count: u64) -> u64 {
    match (training.rounds, training.epochs) {
        (Some(rounds), _) => u64::from(rounds),
        (None, Some(epochs)) => {
            u64::from(epochs) * rounds_per_epoch(task_count, training.tasks_per_round)
        }
        (None, None) => 0,
    }
}

/// Returns the task indices of round `round`, sorted ascending, which is the order in
/// which their partial gradients are reduced. Returns an empty list when the job has
/// fewer tasks than `tasks_per_round`.
pub fn round_tasks(task_count: u32, tasks_per_round: u32, seed: u64, round: u64) -> Vec<u32> {
    let per_epoch = rounds_per_epoch(u64::from(task_count), tasks_per_round);
    if per_epoch == 0 {
        return Vec::new();
    }
    let epoch = round / per_epoch;
    let position = (round % per_epoch) as usize * tasks_per_round as usize;

    let order = epoch_order(task_count, seed, epoch);
    let mut tasks = order[position..position + tasks_per_round as usize].to_vec();
    tasks.sort_unstable();
    tasks
}

/// Returns the permutation of `0..task_count` that epoch `epoch` visits.
pub fn epoch_order(task_count: u32, seed: u64, epoch: u64) -> Vec<u32> {
    let mut order: Vec<u32> = (0..task_count).collect();
    let mut rng = SplitMix64::new(seed ^ SHUFFLE_STREAM);
    // Skip ahead by the epoch so that each epoch has its own stream.
    let mut rng = SplitMix64::new(rng.next_u64() ^ epoch.wrapping_mul(0xd1b5_4a32_d192_ed03));
    for i in (1..order.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Optimizer;

    fn training(rounds: Option<u32>, epochs: Option<u32>, tasks_per_round: u32) -> Training {
        Training {
            rounds,
            epochs,
            tasks_per_round,
            optimizer: Optimizer::Sgd {
                lr: 0.1,
                momentum: 0.0,
                weight_decay: 0.0,
            },
            seed: 7,
        }
    }

    #[test]
    fn splitmix_matches_reference_values() {
        // First outputs for seed 1234567 of the algorithm published at
        // https://prng.di.unimi.it/splitmix64.c, computed with a separate Python
        // transcription of it.
        let mut rng = SplitMix64::new(1_234_567);
        assert_eq!(rng.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(rng.next_u64(), 3_203_168_211_198_807_973);
    }

    #[test]
    fn epoch_order_is_a_permutation() {
        let mut order = epoch_order(50, 3, 0);
        order.sort_unstable();

        assert_eq!(order, (0..50).collect::<Vec<u32>>());
    }

    #[test]
    fn epochs_shuffle_differently() {
        assert_ne!(epoch_order(50, 3, 0), epoch_order(50, 3, 1));
        assert_ne!(epoch_order(50, 3, 0), epoch_order(50, 4, 0));
        assert_eq!(epoch_order(50, 3, 2), epoch_order(50, 3, 2));
    }

    #[test]
    fn rounds_of_an_epoch_cover_distinct_tasks() {
        // 10 tasks in rounds of 3: 3 rounds per epoch, one task skipped.
        let mut seen: Vec<u32> = (0..3)
            .flat_map(|round| round_tasks(10, 3, 9, round))
            .collect();
        seen.sort_unstable();
        seen.dedup();

        assert_eq!(seen.len(), 9);
        assert_eq!(round_tasks(10, 3, 9, 3).len(), 3);
    }

    #[test]
    fn round_tasks_are_sorted() {
        let tasks = round_tasks(100, 10, 1, 4);

        assert!(tasks.windows(2).all(|pair| pair[0] < pair[1]), "{tasks:?}");
    }

    #[test]
    fn round_tasks_empty_when_too_few_tasks() {
        assert!(round_tasks(2, 3, 0, 0).is_empty());
    }

    #[test]
    fn total_rounds_counts_epochs() {
        assert_eq!(total_rounds(&training(Some(5), None, 4), 10), 5);
        assert_eq!(total_rounds(&training(None, Some(3), 4), 10), 6);
        assert_eq!(total_rounds(&training(None, Some(3), 11), 10), 0);
    }

    #[test]
    fn below_stays_in_range() {
        let mut rng = SplitMix64::new(0);
        for bound in [1_u64, 2, 3, 1000, u64::MAX] {
            for _ in 0..100 {
                assert!(rng.below(bound) < bound);
            }
        }
    }
}
