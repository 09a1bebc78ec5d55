//! The ceilings the system is measured against, each taken alone while the
//! system is idle: ONNX Runtime in this process on one thread (rows/s by
//! batch size), and Redis driven by the protocol's own functions with the
//! calls one job costs ([`RT_PER_JOB`] round trips), so the bound moves
//! whenever what the API and the workers send per job moves.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use e2e::unique_namespace;
use ort::session::{Session, builder::GraphOptimizationLevel};
use ort::value::TensorRef;
use shared::Keys;
use shared::job::JobRecord;
use shared::queue::consume::{self, Finish, Outcome, Policy, Start};
use shared::queue::ops::{self, SubmitOptions, Submitted};
use shared::queue::usage::JobQuota;
use shared::queue::wire::{JobEnvelope, JobSpec};
use shared::queue::{Durability, QueueError};
use shared::tensor::{Tensor, TensorData};
use shared::trace::TraceContext;

use crate::MODEL;
use crate::report::Report;

/// Round trips one job costs in Redis: submit (the submit script), read
/// (`XREADGROUP`), start and finish (one script call each), poll (`HMGET`).
pub(crate) const RT_PER_JOB: f64 = 5.0;

// Builder errors are not Send/Sync; keep them inside an ort::Result.
fn ort_session(env: &ort::environment::Environment, model: &Path) -> ort::Result<Session> {
    Session::builder(env)?
        .with_optimization_level(GraphOptimizationLevel::Level3)?
        .with_intra_threads(1)?
        .commit_from_file(model)
}

/// Rows/s of `model` in this process for each batch size, `secs` each.
pub(crate) fn ort_rows_per_sec(
    lib: &Path,
    model: &Path,
    batches: &[usize],
    secs: f64,
) -> Result<Vec<(usize, f64)>, String> {
    let env = ort::init_from(lib)
        .map_err(|e| e.to_string())?
        .with_name("bench")
        .build()
        .map_err(|e| e.to_string())?;
    let mut session = ort_session(&env, model).map_err(|e| e.to_string())?;
    bench_batches(&mut session, batches, secs).map_err(|e| e.to_string())
}

fn bench_batches(
    session: &mut Session,
    batches: &[usize],
    secs: f64,
) -> ort::Result<Vec<(usize, f64)>> {
    let mut out = Vec::new();
    for &b in batches {
        let x = ndarray::Array2::<f32>::from_shape_fn((b, 128), |(i, j)| {
            ((i + j) % 128) as f32 / 128.0
        });
        let run = |s: &mut Session| -> ort::Result<()> {
            let o = s.run(ort::inputs!["features" => TensorRef::from_array_view(&x)?])?;
            let y = o["prediction"].try_extract_array::<f32>()?;
            std::hint::black_box(y.sum());
            Ok(())
        };
        for _ in 0..20 {
            run(session)?;
        }
        let start = Instant::now();
        let mut runs = 0u64;
        while start.elapsed().as_secs_f64() < secs {
            run(session)?;
            runs += 1;
        }
        out.push((b, (runs * b as u64) as f64 / start.elapsed().as_secs_f64()));
    }
    Ok(out)
}

/// What one job of the bench model carries: its 128 features, and the
/// `traceparent` the API always stores.
fn job(keys: &Keys) -> JobEnvelope {
    JobEnvelope {
        id: keys.new_job_id(0),
        model: MODEL.to_owned(),
        spec: JobSpec::Predict {
            inputs: vec![Tensor {
                name: "features".into(),
                shape: vec![1, 128],
                data: TensorData::Fp32((0..128).map(|i| i as f32 / 128.0).collect()),
            }],
            pinned_version: None,
        },
        submitted_at_ms: shared::time::now_ms(),
        deadline_ms: None,
        traceparent: Some(TraceContext::child_of(None).to_string()),
    }
}

/// The API's defaults (`--max-queue-depth`, the tenants' default quota),
/// so the submit script takes the same branches as under the bench's load.
const SUBMIT: SubmitOptions<'static> = SubmitOptions {
    max_queue_depth: 100_000,
    idempotency: None,
    quota: JobQuota {
        max_jobs: 1_000_000,
        max_bytes: 1 << 30,
    },
    durability: Durability::Async,
    index_ttl_secs: 86_400,
    webhook: None,
};

const POLICY: Policy = Policy {
    max_attempts: 3,
    succeeded_ttl_secs: 60,
    failed_ttl_secs: 60,
    durability: Durability::Async,
};

/// A result of the size the bench model's jobs return.
const RESULT: &str = r#"{"outputs":[{"name":"prediction","shape":[1,1],"datatype":"FP32","data":[0.5377]}],"prediction":0.5377}"#;

/// One job through the protocol, as the API and a worker send it: submit,
/// read one entry (whichever job it is), start and finish it, then poll the
/// job submitted. Returns the round trips made and what the poll read.
async fn one_job(
    con: &mut redis::aio::MultiplexedConnection,
    keys: &Keys,
    stream: &[String],
    consumer: &str,
) -> Result<(u64, Option<JobRecord>), QueueError> {
    let job = job(keys);
    let mut rts = 1;
    if ops::submit(con, keys, &job, &SUBMIT).await? != Submitted::Created {
        return Err(QueueError::Corrupt(
            "the submit script refused a job".into(),
        ));
    }
    // Every task submits before it reads, so an entry always waits: the
    // 1 ms BLOCK (Redis reads 0 as "forever") never blocks the shared
    // connection.
    let read = consume::read_new(con, stream, consumer, 1, 1).await?;
    rts += 1;
    let now = shared::time::now_ms();
    if let Some(delivery) = read.first() {
        let started = consume::start(con, keys, consumer, &POLICY, &[delivery], now).await?;
        rts += 1;
        if let (Some(&Start::Run(attempt)), Some(job_id)) = (started.first(), delivery.job_id) {
            let finish = Finish {
                delivery,
                job_id,
                attempt,
                model_version: "bench",
                outcome: Outcome::Succeeded {
                    result_json: RESULT.to_owned(),
                },
            };
            consume::finish(con, keys, &POLICY, &[finish], now).await?;
            rts += 1;
        }
    }
    let polled = ops::get_job(con, keys, &job.id).await?;
    Ok((rts + 1, polled))
}

/// Round trips/s of the Redis calls of one job ([`one_job`]), `conc` tasks
/// sharing one multiplexed connection, each doing its jobs in sequence.
pub(crate) async fn redis_round_trips(url: &str, conc: usize, secs: f64) -> Result<f64> {
    let client = redis::Client::open(url)?;
    let con = client.get_multiplexed_async_connection().await?;
    let keys = Keys::new(&unique_namespace("bench-rt"));
    let stream = vec![keys.stream(MODEL, 0)];
    consume::ensure_group(&mut con.clone(), &stream[0]).await?;
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for t in 0..conc {
        let (mut con, keys, stream) = (con.clone(), keys.clone(), stream.clone());
        set.spawn(async move {
            let consumer = format!("c{t}");
            let mut rts = 0u64;
            while Instant::now() < deadline {
                rts += one_job(&mut con, &keys, &stream, &consumer).await?.0;
            }
            Ok::<u64, QueueError>(rts)
        });
    }
    let mut total = 0;
    for r in set.join_all().await {
        total += r?;
    }
    let elapsed = start.elapsed();
    let _: redis::Value = redis::cmd("DEL")
        .arg(&stream[0])
        .query_async(&mut con.clone())
        .await?;
    Ok(total as f64 / elapsed.as_secs_f64())
}

/// What the later phases compare against.
pub(crate) struct Limits {
    /// In-process ONNX Runtime rows/s at batch 1.
    pub(crate) ort_batch1: f64,
    /// Jobs/s Redis alone allows: the best round trips/s ÷ [`RT_PER_JOB`].
    pub(crate) redis_jobs: f64,
}

/// Both limits, `secs` per figure, with their rows of the report.
pub(crate) async fn measure(rep: &mut Report, redis_url: &str, secs: f64) -> Result<Limits> {
    crate::progress("limits: in-process ONNX Runtime");
    let lib = e2e::ort_lib();
    let model = e2e::repo_root()
        .join("models")
        .join(format!("{MODEL}.onnx"));
    let ort =
        tokio::task::spawn_blocking(move || ort_rows_per_sec(&lib, &model, &[1, 8, 32, 128], secs))
            .await?
            .map_err(anyhow::Error::msg)
            .context("in-process ONNX Runtime")?;
    let ort_batch1 = ort.first().map_or(0.0, |o| o.1);
    for (b, r) in &ort {
        rep.row(
            "limit: ORT in-process",
            &format!("{MODEL}, 1 intra thread, batch {b}"),
            format!("{r:.0} rows/s"),
            format!("{:.2} x batch 1", r / ort_batch1),
        );
    }
    crate::progress("limits: Redis round trips");
    let mut best = 0.0f64;
    for conc in [1, 32] {
        let r = redis_round_trips(redis_url, conc, secs).await?;
        best = best.max(r);
        rep.row(
            "limit: Redis",
            &format!("round trips, 1 mux conn, concurrency {conc}"),
            format!("{r:.0} rt/s"),
            format!(
                "jobs/s upper bound {:.0} (÷ {RT_PER_JOB} rt/job)",
                r / RT_PER_JOB
            ),
        );
    }
    Ok(Limits {
        ort_batch1,
        redis_jobs: best / RT_PER_JOB,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::job::JobStatus;

    #[tokio::test]
    async fn a_limit_job_runs_the_real_protocol_to_succeeded() {
        let redis = e2e::RedisServer::start();
        let client = redis::Client::open(redis.url()).unwrap();
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        let keys = Keys::new(&unique_namespace("bench-rt-test"));
        let stream = vec![keys.stream(MODEL, 0)];
        consume::ensure_group(&mut con, &stream[0]).await.unwrap();
        for _ in 0..3 {
            let (rts, polled) = one_job(&mut con, &keys, &stream, "c0").await.unwrap();
            assert_eq!(rts, RT_PER_JOB as u64);
            let record = polled.expect("the job's record");
            assert_eq!(record.status, JobStatus::Succeeded);
            assert_eq!(record.attempts, 1);
        }
        // Every entry was acknowledged by the finish script.
        let pending: (u64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
            .arg(&stream[0])
            .arg("workers")
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(pending.0, 0);
    }
}
