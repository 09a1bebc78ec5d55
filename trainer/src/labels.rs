//! Class labels of a classification target: every target value must be a
//! class index `0..k`, with `k` at most [`MAX_CLASSES`]. Training and the
//! holdout split read labels through the same check, so the deployed model
//! is scored on labels read by the same rules.

use ndarray::ArrayView1;

/// Classes are indices `0..k`; a larger index is more likely a regression
/// target or an id column than a class, and would allocate k columns.
pub const MAX_CLASSES: usize = 1000;

/// A target value that is not a class index (see
/// [`crate::TrainError::InvalidLabel`], which it becomes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct NotAClass {
    pub(crate) row: usize,
    pub(crate) value: f64,
}

/// Validates class indices; returns them with the class count (max + 1).
pub(crate) fn class_labels(target: ArrayView1<f64>) -> Result<(Vec<usize>, usize), NotAClass> {
    let labels = target
        .iter()
        .enumerate()
        .map(|(row, &value)| {
            if value.fract() == 0.0 && (0.0..MAX_CLASSES as f64).contains(&value) {
                Ok(value as usize)
            } else {
                Err(NotAClass { row, value })
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let k = labels.iter().max().map_or(0, |m| m + 1);
    Ok((labels, k))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_small_non_negative_integers() {
        let (labels, k) = class_labels(ndarray::array![0.0, 2.0, 1.0, 2.0].view()).unwrap();
        assert_eq!((labels, k), (vec![0, 2, 1, 2], 3));
        for (bad, row) in [(0.5, 1), (-1.0, 1), (MAX_CLASSES as f64, 1)] {
            assert_eq!(
                class_labels(ndarray::array![0.0, bad].view()),
                Err(NotAClass { row, value: bad })
            );
        }
    }
}
