//! Ridge regression on a synthetic linear dataset with noise: fit quality,
//! and the exported ONNX model in the real ONNX Runtime against the
//! trainer's own predictions.

mod common;

use std::ops::ControlFlow;

use trainer::{Dataset, Metrics, Predictions, Task, TrainParams, evaluate_regression, train};

/// y = 3·a − 2·b + 0.01·c + 0.5·d + 7 + noise(σ = 0.1), with features on
/// very different scales (c around 1000, d around 0.001) so standardisation
/// matters. Seeded xorshift + Box–Muller: the same data on every run.
fn linear_dataset(rows: usize, seed: u64) -> Dataset {
    let mut state = seed;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let mut normal = move || {
        let (u1, u2) = (uniform(), uniform());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    };
    let data: Vec<Vec<f64>> = (0..rows)
        .map(|_| {
            let a = normal();
            let b = 2.0 * normal() + 1.0;
            let c = 1000.0 + 50.0 * normal();
            let d = 0.001 * normal();
            let y = 3.0 * a - 2.0 * b + 0.01 * c + 0.5 * d + 7.0 + 0.1 * normal();
            vec![a, b, c, d, y]
        })
        .collect();
    let columns: Vec<String> = ["a", "b", "c", "d", "y"].map(String::from).to_vec();
    Dataset::from_rows(&columns, &data, "y").unwrap()
}

fn params() -> TrainParams {
    TrainParams {
        target_column: "y".into(),
        task: Task::Regression,
        ..TrainParams::default()
    }
}

#[test]
fn fits_a_noisy_linear_target() {
    let ds = linear_dataset(500, 0x5EED);
    let trained = train(&ds, &params(), |_| ControlFlow::Continue(())).unwrap();
    println!(
        "linear regression: {} (noise σ 0.1); {} epochs in {:?}",
        trained.metrics,
        trained.losses.len(),
        trained.elapsed
    );
    let Metrics::Regression { rmse, r2, rows } = trained.metrics else {
        panic!("regression metrics expected, got {:?}", trained.metrics)
    };
    assert_eq!(rows, 100);
    assert!(r2 > 0.99, "R² {r2}");
    // The noise floor is 0.1; mini-batch noise and l2 add a little.
    assert!(rmse < 0.2, "RMSE {rmse}");
    // Loss is reported in target units (MSE) and ends near σ² = 0.01.
    let last = *trained.losses.last().unwrap();
    assert!(
        last < 0.04 && last < trained.losses[0],
        "{:?}",
        trained.losses
    );
}

#[test]
fn exported_model_matches_predict_in_onnx_runtime() {
    let ds = linear_dataset(500, 0x5EED);
    let trained = train(&ds, &params(), |_| ControlFlow::Continue(())).unwrap();
    let bytes = trained.to_onnx();
    let mut session = common::session(&bytes);

    // The regression signature of the demo mlp128 model, with D = 4.
    let mlp = std::fs::read(common::repo_root().join("models/mlp128.onnx")).unwrap();
    let mlp = common::session(&mlp);
    assert_eq!(session.outputs().len(), 1);
    assert_eq!(session.outputs()[0].name(), "prediction");
    assert_eq!(session.outputs()[0].dtype(), mlp.outputs()[0].dtype());
    assert_eq!(session.inputs().len(), 1);
    assert_eq!(session.inputs()[0].name(), "features");
    assert_eq!(
        mlp.inputs()[0].dtype().to_string(),
        "Tensor<f32>(batch, 128)"
    );
    assert_eq!(
        session.inputs()[0].dtype().to_string(),
        "Tensor<f32>(batch, 4)"
    );
    assert_eq!(
        session.outputs()[0].dtype().to_string(),
        "Tensor<f32>(batch, 1)"
    );
    let meta = session.metadata().unwrap();
    assert_eq!(meta.custom("onnxq.task").as_deref(), Some("regression"));
    assert_eq!(
        meta.custom("onnxq.features").as_deref(),
        Some(r#"["a","b","c","d"]"#)
    );
    drop(meta);

    let (x32, x) = common::as_f32(ds.features());
    let got = common::regress(&mut session, &x32);
    let Predictions::Regression(want) = trained.model.predict(x.view()).unwrap() else {
        panic!("regression predictions expected")
    };
    assert_eq!(got.dim(), (500, 1));
    let max_diff = got
        .column(0)
        .iter()
        .zip(&want)
        .map(|(&g, &w)| (f64::from(g) - w).abs())
        .fold(0.0, f64::max);
    println!("max |ORT - predict| over 500 rows (targets around 5 ± 5): {max_diff:e}");
    assert!(max_diff <= 1e-5, "{max_diff}");

    // Scoring ONNX Runtime's output reproduces the trainer's metrics.
    let holdout = trained.split.holdout_features(&ds);
    let pred = common::regress(&mut session, &holdout);
    let via_ort = evaluate_regression(pred.column(0), &trained.split.holdout_targets(&ds)).unwrap();
    let (Metrics::Regression { rmse, .. }, Metrics::Regression { rmse: t, .. }) =
        (via_ort, trained.metrics)
    else {
        panic!()
    };
    assert!((rmse - t).abs() < 1e-5, "{rmse} vs {t}");
    assert!(via_ort.not_worse_than(&trained.metrics).is_ok());
}

#[test]
fn same_seed_gives_identical_onnx_bytes() {
    let ds = linear_dataset(200, 7);
    let p = TrainParams {
        epochs: 10,
        ..params()
    };
    let run = |p: &TrainParams| {
        train(&ds, p, |_| ControlFlow::Continue(()))
            .unwrap()
            .to_onnx()
    };
    assert_eq!(run(&p), run(&p));
    assert_ne!(
        run(&p),
        run(&TrainParams {
            seed: 99,
            ..p.clone()
        })
    );
}
