//! What serving untrusted models without constant folding costs: the same
//! model loaded as an operator's file (`Level3`) and as a tenant's upload
//! (`Level3` minus `ConstantFolding`), run on the same input.
//!
//! ```text
//! cargo run --release -p worker --example opt_cost -- compare 2000
//! valgrind --tool=callgrind target/release/examples/opt_cost one tenant mlp128 1000
//! ```
//!
//! `compare RUNS`: per-run time of each demo model, both ways, interleaved
//! in rounds in one process; prints medians and their ratio.
//! `one TRUST MODEL RUNS`: loads one way and runs RUNS times (for an
//! instruction count; subtract a run with RUNS = 0 to drop the load).
//! `rss MODEL N`: resident memory before and after loading N sessions of
//! MODEL (and one run each), for the LRU's per-version estimate.

use std::time::Instant;

use shared::tensor::{DataType, Tensor, TensorData};
use worker::backend::{Backend, LoadOptions, OnnxModel, Trust};

const MODELS: [&str; 3] = ["mlp128", "breast_cancer", "two_input"];

fn input(model: &OnnxModel) -> Vec<Tensor> {
    model
        .info()
        .inputs
        .iter()
        .map(|s| {
            let shape: Vec<i64> = s.shape.iter().map(|&d| d.max(1)).collect();
            let n = shape.iter().product::<i64>() as usize;
            let data = match s.datatype {
                DataType::Fp32 => TensorData::Fp32((0..n).map(|i| (i % 7) as f32 * 0.1).collect()),
                DataType::Fp64 => TensorData::Fp64((0..n).map(|i| (i % 7) as f64 * 0.1).collect()),
                DataType::Int32 => TensorData::Int32((0..n).map(|i| (i % 3) as i32).collect()),
                DataType::Int64 => TensorData::Int64((0..n).map(|i| (i % 3) as i64).collect()),
                DataType::Bool => TensorData::Bool((0..n).map(|i| i % 2 == 0).collect()),
            };
            Tensor {
                name: s.name.clone(),
                shape,
                data,
            }
        })
        .collect()
}

fn load(env: &ort::environment::Environment, name: &str, trust: Trust) -> OnnxModel {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
    let bytes = std::fs::read(root.join(format!("{name}.onnx"))).expect("model file");
    let opts = LoadOptions {
        trust,
        intra_threads: 1,
        external_data_dir: std::env::temp_dir().join("opt-cost-no-external-data"),
    };
    OnnxModel::load(env, name, &bytes, &opts).expect("load")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let lib = std::env::var("ORT_DYLIB_PATH").expect("set ORT_DYLIB_PATH");
    let env = worker::runtime::start(std::path::Path::new(&lib)).expect("ONNX Runtime");
    match args.get(1).map(String::as_str) {
        Some("rss") => {
            let rss = || {
                std::fs::read_to_string("/proc/self/status")
                    .unwrap_or_default()
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().to_owned()))
                    .unwrap_or_default()
            };
            let n: usize = args[3].parse().expect("count");
            let before = rss();
            let kept: Vec<OnnxModel> = (0..n)
                .map(|_| load(&env, &args[2], Trust::Tenant))
                .collect();
            for m in &kept {
                m.run(&input(m), &worker::backend::RunControl::SOLO)
                    .expect("run");
            }
            println!("{} sessions of {}: VmRSS {before} -> {}", n, args[2], rss());
        }
        Some("one") => {
            let trust = if args[2] == "tenant" {
                Trust::Tenant
            } else {
                Trust::Operator
            };
            let m = load(&env, &args[3], trust);
            let x = input(&m);
            let runs: usize = args[4].parse().expect("runs");
            for _ in 0..runs {
                m.run(&x, &worker::backend::RunControl::SOLO).expect("run");
            }
        }
        _ => {
            let runs: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2000);
            println!("model           operator µs/run  tenant µs/run  tenant/operator");
            for name in MODELS {
                let a = load(&env, name, Trust::Operator);
                let b = load(&env, name, Trust::Tenant);
                let x = input(&a);
                let (mut ta, mut tb) = (Vec::new(), Vec::new());
                for _ in 0..15 {
                    for (m, t) in [(&a, &mut ta), (&b, &mut tb)] {
                        let started = Instant::now();
                        for _ in 0..runs {
                            m.run(&x, &worker::backend::RunControl::SOLO).expect("run");
                        }
                        t.push(started.elapsed().as_secs_f64() * 1e6 / runs as f64);
                    }
                }
                let (ma, mb) = (median(ta), median(tb));
                println!("{name:<15} {ma:>16.2} {mb:>14.2} {:>16.3}", mb / ma);
            }
        }
    }
}
