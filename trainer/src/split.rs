//! The deterministic train/holdout split. The same `(rows, fraction, seed)`
//! always gives the same rows, so the worker can score the deployed model on
//! exactly the rows the new one was evaluated on.

use ndarray::{Array2, Axis};

use crate::dataset::Dataset;
use crate::error::TrainError;
use crate::labels::class_labels;
use crate::rng::SplitMix64;

// Keeps the split's random stream apart from the mini-batch stream of the
// same seed.
const SPLIT_STREAM: u64 = 0x5B11_7000_0000_0001;

/// Row indices (into the dataset) of the training and holdout parts, each in
/// ascending order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub train_idx: Vec<usize>,
    pub holdout_idx: Vec<usize>,
}

impl Split {
    /// Shuffles `0..n_rows` with `seed` and holds out the first
    /// `round(n_rows × holdout_fraction)` (at least one row; at least one row
    /// stays for training). Needs two rows or more.
    pub fn new(n_rows: usize, holdout_fraction: f64, seed: u64) -> Result<Split, TrainError> {
        if n_rows < 2 {
            return Err(TrainError::TooFewRows { rows: n_rows });
        }
        let mut order: Vec<usize> = (0..n_rows).collect();
        SplitMix64::new(seed ^ SPLIT_STREAM).shuffle(&mut order);
        let n_holdout = ((n_rows as f64 * holdout_fraction).round() as usize).clamp(1, n_rows - 1);
        let mut holdout_idx = order[..n_holdout].to_vec();
        let mut train_idx = order[n_holdout..].to_vec();
        holdout_idx.sort_unstable();
        train_idx.sort_unstable();
        Ok(Split {
            train_idx,
            holdout_idx,
        })
    }

    /// The holdout rows' features as `f32` (the models' input type), rows in
    /// `holdout_idx` order: feed this to any model to score it.
    pub fn holdout_features(&self, dataset: &Dataset) -> Array2<f32> {
        dataset
            .features()
            .select(Axis(0), &self.holdout_idx)
            .mapv(|v| v as f32)
    }

    /// The holdout rows' target values (regression), in `holdout_idx` order.
    pub fn holdout_targets(&self, dataset: &Dataset) -> Vec<f64> {
        let target = dataset.target();
        self.holdout_idx.iter().map(|&i| target[i]).collect()
    }

    /// The holdout rows' class indices (classification), in `holdout_idx`
    /// order; fails like training does on a target that is not a class index.
    pub fn holdout_labels(&self, dataset: &Dataset) -> Result<Vec<usize>, TrainError> {
        let (labels, _) = class_labels(dataset.target())?;
        Ok(self.holdout_idx.iter().map(|&i| labels[i]).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_deterministic_disjoint_and_sized() {
        let a = Split::new(569, 0.2, 42).unwrap();
        assert_eq!(a, Split::new(569, 0.2, 42).unwrap());
        assert_ne!(a, Split::new(569, 0.2, 43).unwrap());
        assert_eq!(a.holdout_idx.len(), 114);
        assert_eq!(a.train_idx.len(), 455);
        let mut all: Vec<usize> = a.train_idx.iter().chain(&a.holdout_idx).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..569).collect::<Vec<_>>());
        assert!(a.holdout_idx.windows(2).all(|w| w[0] < w[1]));
        // Not simply the first or last rows.
        assert!(a.holdout_idx[0] < 100 && *a.holdout_idx.last().unwrap() > 469);
    }

    #[test]
    fn tiny_datasets_keep_one_row_on_each_side() {
        let s = Split::new(2, 0.05, 0).unwrap();
        assert_eq!((s.train_idx.len(), s.holdout_idx.len()), (1, 1));
        let s = Split::new(3, 0.5, 0).unwrap();
        assert_eq!((s.train_idx.len(), s.holdout_idx.len()), (1, 2));
        assert!(matches!(
            Split::new(1, 0.2, 0),
            Err(TrainError::TooFewRows { rows: 1 })
        ));
    }
}
