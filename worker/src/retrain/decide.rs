//! Whether a retrained version becomes current: the job's
//! [`PromotePolicy`] applied to the candidate's holdout scores and the
//! current version's on the same rows. Pure, so every row of the policy
//! table is tested here; registering and promoting are the caller's.
//!
//! Which score is better is [`Metrics::not_worse_than`]'s rule:
//! classification prefers higher accuracy, then (at equal accuracy) a
//! log-loss no higher; regression an RMSE no higher. Equal counts as not
//! worse, so retraining on unchanged data still rolls forward.

use shared::queue::wire::PromotePolicy;
use shared::retrain::Decision as Outcome;
use trainer::{EvalError, Metrics};

/// The model's current version, as the decision sees it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Current<'a> {
    pub version: u32,
    /// Its scores on the candidate's holdout rows, or why it has none (a
    /// different signature, a run that failed, a version not loadable).
    pub scores: Result<&'a Metrics, &'a str>,
}

/// What becomes of the new version, and why.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Decision {
    /// `never`: registered only.
    Never,
    /// `always`: promoted whatever the scores.
    Always,
    /// `if_not_worse` and the model has no current version.
    NoCurrent,
    /// `if_not_worse`: scored at least as well as the current version.
    NotWorse { current: u32, baseline: Metrics },
    /// `if_not_worse`: scored worse; the current version stays.
    Worse { current: u32, baseline: Metrics },
    /// `if_not_worse`: both have scores that cannot be compared (another
    /// task, other rows); the current version stays.
    NotComparable { current: u32, error: EvalError },
    /// `if_not_worse`: the current version has no scores; it stays, since
    /// nothing shows that the new one is not worse.
    Unscored { current: u32, why: String },
}

/// Applies `policy` to the `candidate`'s scores and the `current`
/// version's, if the model has one.
pub(super) fn decide(
    policy: PromotePolicy,
    current: Option<Current<'_>>,
    candidate: &Metrics,
) -> Decision {
    match policy {
        PromotePolicy::Never => Decision::Never,
        PromotePolicy::Always => Decision::Always,
        PromotePolicy::IfNotWorse => match current {
            None => Decision::NoCurrent,
            Some(Current {
                version,
                scores: Err(why),
            }) => Decision::Unscored {
                current: version,
                why: why.to_owned(),
            },
            Some(Current {
                version,
                scores: Ok(baseline),
            }) => match candidate.not_worse_than(baseline) {
                Ok(true) => Decision::NotWorse {
                    current: version,
                    baseline: *baseline,
                },
                Ok(false) => Decision::Worse {
                    current: version,
                    baseline: *baseline,
                },
                Err(error) => Decision::NotComparable {
                    current: version,
                    error,
                },
            },
        },
    }
}

impl Decision {
    /// The decision as the job's result reports it.
    pub(super) fn outcome(&self) -> Outcome {
        match self {
            Decision::Never => Outcome::RegisteredOnly,
            Decision::Always | Decision::NoCurrent | Decision::NotWorse { .. } => Outcome::Promoted,
            Decision::Worse { .. } | Decision::NotComparable { .. } | Decision::Unscored { .. } => {
                Outcome::KeptCurrent
            }
        }
    }

    /// The decision in words, for the result's `reason`, naming the new
    /// `version` and its `candidate` scores.
    pub(super) fn reason(&self, version: u32, candidate: &Metrics) -> String {
        match self {
            Decision::Never => format!("promote is \"never\"; new version {version}: {candidate}"),
            Decision::Always => {
                format!("promote is \"always\"; new version {version}: {candidate}")
            }
            Decision::NoCurrent => {
                format!("the model had no current version; new version {version}: {candidate}")
            }
            Decision::NotWorse { current, baseline } => format!(
                "new version {version} ({candidate}) is not worse than current version {current} ({baseline})"
            ),
            Decision::Worse { current, baseline } => format!(
                "new version {version} ({candidate}) is worse than current version {current} ({baseline})"
            ),
            Decision::NotComparable { current, error } => format!(
                "new version {version} cannot be compared with current version {current}: {error}"
            ),
            Decision::Unscored { current, why } => format!(
                "new version {version} ({candidate}) was not compared with current version {current}: {why}; promote it explicitly if wanted"
            ),
        }
    }
}

/// The `decision` label of the retrain decisions counter.
pub(super) fn label(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Promoted => "promoted",
        Outcome::KeptCurrent => "kept_current",
        Outcome::RegisteredOnly => "registered_only",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROWS: usize = 100;

    fn classification(accuracy: f64, log_loss: f64) -> Metrics {
        Metrics::Classification {
            accuracy,
            log_loss,
            rows: ROWS,
        }
    }

    fn regression(rmse: f64) -> Metrics {
        Metrics::Regression {
            rmse,
            r2: 0.5,
            rows: ROWS,
        }
    }

    /// The current version's scores in one row of the table.
    #[derive(Debug, Clone, Copy)]
    enum Row {
        NoCurrent,
        CandidateBetter,
        Equal,
        CandidateWorse,
        /// The current version could not be scored.
        Missing,
        /// Scores of another task, or of other rows.
        NotComparable,
    }

    const ROWS_OF_TABLE: [Row; 6] = [
        Row::NoCurrent,
        Row::CandidateBetter,
        Row::Equal,
        Row::CandidateWorse,
        Row::Missing,
        Row::NotComparable,
    ];

    /// (candidate, current scores) of a row, in both tasks. Better means a
    /// higher accuracy, a lower log-loss at equal accuracy, a lower RMSE.
    fn cases(row: Row) -> Vec<(Metrics, Option<Result<Metrics, &'static str>>)> {
        let c = classification(0.95, 0.10);
        let r = regression(1.0);
        let other_rows = Metrics::Regression {
            rmse: 1.0,
            r2: 0.5,
            rows: ROWS - 1,
        };
        match row {
            Row::NoCurrent => vec![(c, None), (r, None)],
            Row::CandidateBetter => vec![
                (c, Some(Ok(classification(0.94, 0.01)))),
                (c, Some(Ok(classification(0.95, 0.20)))),
                (r, Some(Ok(regression(1.5)))),
            ],
            Row::Equal => vec![(c, Some(Ok(c))), (r, Some(Ok(r)))],
            Row::CandidateWorse => vec![
                (c, Some(Ok(classification(0.96, 0.50)))),
                (c, Some(Ok(classification(0.95, 0.05)))),
                (r, Some(Ok(regression(0.5)))),
            ],
            Row::Missing => vec![
                (c, Some(Err("current version 1 could not be scored"))),
                (r, Some(Err("current version 1 has a different signature"))),
            ],
            Row::NotComparable => vec![(r, Some(Ok(c))), (r, Some(Ok(other_rows)))],
        }
    }

    /// What each policy decides in each row.
    fn expected(policy: PromotePolicy, row: Row) -> Outcome {
        match (policy, row) {
            (PromotePolicy::Never, _) => Outcome::RegisteredOnly,
            (PromotePolicy::Always, _) => Outcome::Promoted,
            (PromotePolicy::IfNotWorse, Row::NoCurrent | Row::CandidateBetter | Row::Equal) => {
                Outcome::Promoted
            }
            (
                PromotePolicy::IfNotWorse,
                Row::CandidateWorse | Row::Missing | Row::NotComparable,
            ) => Outcome::KeptCurrent,
        }
    }

    #[test]
    fn every_policy_in_every_row_of_the_table() {
        for policy in [
            PromotePolicy::Never,
            PromotePolicy::Always,
            PromotePolicy::IfNotWorse,
        ] {
            for row in ROWS_OF_TABLE {
                for (candidate, current) in cases(row) {
                    let current = current.as_ref().map(|scores| Current {
                        version: 1,
                        scores: scores.as_ref().map_err(|why| *why),
                    });
                    let d = decide(policy, current, &candidate);
                    assert_eq!(
                        d.outcome(),
                        expected(policy, row),
                        "{policy:?}, {row:?}: {candidate} against {current:?}: {d:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn if_not_worse_says_why() {
        let c = classification(0.95, 0.10);
        let worse_than = classification(0.97, 0.10);
        let d = decide(
            PromotePolicy::IfNotWorse,
            Some(Current {
                version: 4,
                scores: Ok(&worse_than),
            }),
            &c,
        );
        assert_eq!(
            d,
            Decision::Worse {
                current: 4,
                baseline: worse_than
            }
        );
        assert_eq!(
            d.reason(5, &c),
            "new version 5 (accuracy 0.9500, log-loss 0.1000 on 100 holdout rows) is worse \
             than current version 4 (accuracy 0.9700, log-loss 0.1000 on 100 holdout rows)"
        );
        let d = decide(
            PromotePolicy::IfNotWorse,
            Some(Current {
                version: 4,
                scores: Err("current version 4 is not loaded"),
            }),
            &c,
        );
        assert!(
            d.reason(5, &c)
                .ends_with("current version 4 is not loaded; promote it explicitly if wanted"),
            "{d:?}"
        );
        let d = decide(
            PromotePolicy::IfNotWorse,
            Some(Current {
                version: 4,
                scores: Ok(&regression(1.0)),
            }),
            &c,
        );
        assert_eq!(
            d.reason(5, &c),
            "new version 5 cannot be compared with current version 4: \
             cannot compare classification metrics with regression metrics"
        );
        assert_eq!(
            decide(PromotePolicy::IfNotWorse, None, &c).reason(1, &c),
            "the model had no current version; new version 1: \
             accuracy 0.9500, log-loss 0.1000 on 100 holdout rows"
        );
    }

    #[test]
    fn the_policies_that_ignore_scores_say_so() {
        let c = regression(2.0);
        let better = regression(1.0);
        let current = Some(Current {
            version: 1,
            scores: Ok(&better),
        });
        assert!(
            decide(PromotePolicy::Always, current, &c)
                .reason(2, &c)
                .starts_with("promote is \"always\"; new version 2: RMSE 2.000000")
        );
        assert!(
            decide(PromotePolicy::Never, current, &c)
                .reason(2, &c)
                .starts_with("promote is \"never\"; new version 2: RMSE 2.000000")
        );
        assert_eq!(label(Outcome::KeptCurrent), "kept_current");
    }
}
