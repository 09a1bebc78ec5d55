//! Logistic regression on the breast-cancer CSV and a three-class dataset:
//! holdout quality, the exported ONNX model in the real ONNX Runtime against
//! the trainer's own predictions, determinism, and the progress callback.

mod common;

use std::ops::ControlFlow;
use std::time::Instant;

use ndarray::Axis;
use trainer::{
    Dataset, Metrics, Predictions, Progress, Split, TrainError, TrainParams,
    evaluate_classification, train,
};

fn go(_: Progress) -> ControlFlow<()> {
    ControlFlow::Continue(())
}

#[test]
fn breast_cancer_default_params_reach_093_holdout_accuracy() {
    let ds = common::breast_cancer();
    assert_eq!((ds.n_rows(), ds.n_features()), (569, 30));
    let started = Instant::now();
    let trained = train(&ds, &TrainParams::default(), go).unwrap();
    let wall = started.elapsed();
    let Metrics::Classification {
        accuracy,
        log_loss,
        rows,
    } = trained.metrics
    else {
        panic!("classification metrics expected, got {:?}", trained.metrics)
    };
    println!(
        "breast cancer, default params: holdout accuracy {accuracy:.4}, log-loss {log_loss:.4} \
         on {rows} rows; trained on {} rows, {} epochs in {:?} (call took {wall:?})",
        trained.split.train_idx.len(),
        trained.losses.len(),
        trained.elapsed,
    );
    assert_eq!(rows, 114);
    assert!(accuracy >= 0.93, "accuracy {accuracy}");
    assert!(log_loss < 0.2, "log-loss {log_loss}");
}

#[test]
fn exported_model_matches_predict_in_onnx_runtime() {
    let ds = common::breast_cancer();
    let trained = train(&ds, &TrainParams::default(), go).unwrap();
    let bytes = trained.to_onnx();
    let mut session = common::session(&bytes);

    // Same signature as the skl2onnx demo model.
    let demo = std::fs::read(common::repo_root().join("models/breast_cancer.onnx")).unwrap();
    let demo = common::session(&demo);
    let sig = |s: &ort::session::Session| {
        let names = |o: &[ort::value::Outlet]| {
            o.iter()
                .map(|o| (o.name().to_owned(), o.dtype().clone()))
                .collect::<Vec<_>>()
        };
        (names(s.inputs()), names(s.outputs()))
    };
    assert_eq!(sig(&session), sig(&demo));

    let meta = session.metadata().unwrap();
    assert_eq!(meta.producer().as_deref(), Some("onnx-queue trainer"));
    let doc = meta.description().unwrap_or_default();
    assert!(
        doc.contains("accuracy") && doc.contains("learning_rate"),
        "{doc}"
    );
    let params: TrainParams = serde_json::from_str(&meta.custom("onnxq.params").unwrap()).unwrap();
    assert_eq!(params, TrainParams::default());
    assert_eq!(meta.custom("onnxq.task").as_deref(), Some("classification"));
    drop(meta);

    let (x32, x) = common::as_f32(ds.features());
    let (labels, probs) = common::classify(&mut session, &x32);
    let Predictions::Classification {
        labels: want_labels,
        probabilities: want_probs,
    } = trained.model.predict(x.view()).unwrap()
    else {
        panic!("classification predictions expected")
    };
    assert_eq!(probs.dim(), (569, 2));
    let max_diff = probs
        .iter()
        .zip(&want_probs)
        .map(|(&a, &b)| (f64::from(a) - b).abs())
        .fold(0.0, f64::max);
    println!("max |ORT - predict| over all 569 rows: {max_diff:e}");
    assert!(max_diff <= 1e-5, "{max_diff}");
    assert_eq!(labels, want_labels);
    // Not a constant model: both classes are predicted.
    assert!(labels.iter().any(|&l| l == 0) && labels.iter().any(|&l| l == 1));

    // Scoring ONNX Runtime's holdout output reproduces the trainer's metrics.
    let holdout = trained.split.holdout_features(&ds);
    let (_, hp) = common::classify(&mut session, &holdout);
    let via_ort =
        evaluate_classification(hp.view(), &trained.split.holdout_labels(&ds).unwrap()).unwrap();
    let (
        Metrics::Classification {
            accuracy: a,
            log_loss: l,
            ..
        },
        Metrics::Classification {
            accuracy: ta,
            log_loss: tl,
            ..
        },
    ) = (via_ort, trained.metrics)
    else {
        panic!()
    };
    assert_eq!(a, ta);
    assert!((l - tl).abs() < 1e-5);
}

#[test]
fn deployed_model_is_scored_on_the_same_holdout_rows() {
    // What the worker does before replacing a model: score the deployed
    // model (here the skl2onnx demo) on the candidate's holdout rows.
    let ds = common::breast_cancer();
    let params = TrainParams::default();
    let trained = train(&ds, &params, go).unwrap();
    let split = Split::new(ds.n_rows(), params.holdout_fraction, params.seed).unwrap();
    assert_eq!(split, trained.split);
    let demo = std::fs::read(common::repo_root().join("models/breast_cancer.onnx")).unwrap();
    let mut deployed = common::session(&demo);
    let (_, probs) = common::classify(&mut deployed, &split.holdout_features(&ds));
    let baseline =
        evaluate_classification(probs.view(), &split.holdout_labels(&ds).unwrap()).unwrap();
    println!(
        "deployed demo model: {baseline}; candidate: {}",
        trained.metrics
    );
    let Metrics::Classification { accuracy, .. } = baseline else {
        panic!()
    };
    // The demo model saw these rows in training: it must score well.
    assert!(accuracy > 0.95, "{baseline}");
    let verdict = trained.metrics.not_worse_than(&baseline).unwrap();
    let Metrics::Classification { accuracy: ca, .. } = trained.metrics else {
        panic!()
    };
    if ca > accuracy {
        assert!(verdict);
    } else if ca < accuracy {
        assert!(!verdict);
    }
}

#[test]
fn same_seed_gives_identical_onnx_bytes() {
    let ds = common::breast_cancer();
    let p = TrainParams {
        epochs: 20,
        ..TrainParams::default()
    };
    let a = train(&ds, &p, go).unwrap().to_onnx();
    let b = train(&ds, &p, go).unwrap().to_onnx();
    assert_eq!(a, b);
    let c = train(
        &ds,
        &TrainParams {
            seed: 1,
            ..p.clone()
        },
        go,
    )
    .unwrap();
    assert_ne!(c.to_onnx(), a);
    assert_ne!(c.split, Split::new(569, 0.2, 0).unwrap());
}

#[test]
fn progress_sees_every_epoch_and_the_loss_decreases() {
    let ds = common::breast_cancer();
    let p = TrainParams {
        epochs: 30,
        ..TrainParams::default()
    };
    let mut seen = Vec::new();
    let trained = train(&ds, &p, |pr| {
        seen.push(pr);
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(seen.len(), 30);
    for (i, pr) in seen.iter().enumerate() {
        assert_eq!((pr.epoch, pr.epochs), (i as u32 + 1, 30));
        assert!(pr.train_loss.is_finite() && pr.train_loss > 0.0);
    }
    let losses: Vec<f64> = seen.iter().map(|p| p.train_loss).collect();
    assert_eq!(losses, trained.losses);
    // ln 2 (all-zero weights) is where training starts.
    assert!(losses[0] < std::f64::consts::LN_2, "{losses:?}");
    assert!(losses[29] < 0.5 * losses[0], "{losses:?}");
    let rises = losses.windows(2).filter(|w| w[1] > w[0]).count();
    assert!(rises <= 10, "loss rose in {rises} of 29 epochs: {losses:?}");
}

#[test]
fn callback_can_stop_training() {
    let ds = common::breast_cancer();
    let mut calls = 0;
    let err = train(&ds, &TrainParams::default(), |p| {
        calls += 1;
        if p.epoch == 3 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap_err();
    assert_eq!(err, TrainError::Stopped { epoch: 3 });
    assert_eq!(calls, 3);
}

#[test]
fn three_classes_export_softmax_that_matches_predict() {
    // Three Gaussian-ish clusters in 4 features, two of them with large
    // offsets so standardisation matters; labels 0, 1, 2.
    let mut state = 12345u64;
    let mut unit = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    };
    let centers = [
        [0.0, 0.0, 1000.0, 0.0],
        [2.0, 0.0, 1010.0, 5.0],
        [0.0, 2.0, 990.0, -5.0],
    ];
    let rows: Vec<Vec<f64>> = (0..300)
        .map(|i| {
            let c = i % 3;
            let mut r: Vec<f64> = centers[c]
                .iter()
                .enumerate()
                .map(|(j, m)| m + unit() * if j >= 2 { 10.0 } else { 2.0 })
                .collect();
            r.push(c as f64);
            r
        })
        .collect();
    let columns: Vec<String> = ["a", "b", "c", "d", "class"].map(String::from).to_vec();
    let ds = Dataset::from_rows(&columns, &rows, "class").unwrap();
    let p = TrainParams {
        target_column: "class".into(),
        ..TrainParams::default()
    };
    let trained = train(&ds, &p, go).unwrap();
    println!("three classes: {}", trained.metrics);
    let Metrics::Classification { accuracy, .. } = trained.metrics else {
        panic!()
    };
    assert!(accuracy > 0.8, "{}", trained.metrics);

    let mut session = common::session(&trained.to_onnx());
    let (x32, x) = common::as_f32(ds.features());
    let (labels, probs) = common::classify(&mut session, &x32);
    let Predictions::Classification {
        labels: want_labels,
        probabilities: want,
    } = trained.model.predict(x.view()).unwrap()
    else {
        panic!()
    };
    assert_eq!(probs.dim(), (300, 3));
    for (got, want) in probs.iter().zip(&want) {
        assert!((f64::from(*got) - want).abs() <= 1e-5, "{got} vs {want}");
    }
    assert_eq!(labels, want_labels);
    for row in probs.axis_iter(Axis(0)) {
        assert!((row.sum() - 1.0).abs() < 1e-5);
    }
}
