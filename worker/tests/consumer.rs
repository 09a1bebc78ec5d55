//! The consumer against a real Redis and nothing else: a private
//! `redis-server` on a free loopback port, and the worker's own slots
//! ([`worker::slots::start`]: read loop, start, execute, finish, lease
//! takeover) running in this process on a fake model. Jobs go in with
//! [`ops::submit`], as the API submits them. Due retries are released as
//! the worker's upkeep releases them ([`consume::release_due`]).
//!
//! Needs `redis-server` on the PATH and the ONNX Runtime library (the
//! model store holds an environment, though the fake model never uses it).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use shared::Keys;
use shared::job::{JobRecord, JobStatus};
use shared::model::ModelInfo;
use shared::queue::admin::{self, DeadLetterFilter};
use shared::queue::consume::{self, Policy};
use shared::queue::ops::{self, SubmitOptions, Submitted};
use shared::queue::wire::{JobEnvelope, JobSpec};
use shared::queue::{Durability, keys::GROUP};
use shared::redis_conn::{Limits, Pool, Topology};
use shared::tensor::{DataType, Tensor, TensorData, TensorSpec};
use tokio::sync::watch;
use uuid::Uuid;
use worker::backend::{Backend, RunControl};
use worker::consumer::Context;
use worker::models::{ModelStore, StoreSettings};
use worker::retrain::TrainerConfig;
use worker::sandbox::SandboxConfig;
use worker::{JobFailure, modelcheck, slots};

const MODEL: &str = "double";
/// A value that makes the fake model fail as a broken model would
/// (`inference_error`, retried).
const FLAKY: f32 = -1.0;
const WAIT: Duration = Duration::from_secs(20);

// ------------------------------------------------------------ redis-server

/// A private redis-server on a free loopback port, killed on drop.
struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Redis {
        let dir = tempfile::tempdir().expect("data dir");
        // A free port can be taken between the probe and the bind: try again.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let mut child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("cannot start redis-server: run scripts/setup");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if ping(port) {
                    return Redis {
                        child,
                        port,
                        _dir: dir,
                    };
                }
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("redis-server did not start");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

// ------------------------------------------------------------ the model

/// `y = 2x` over an FP32 `[-1, 2]` input; a run holding [`FLAKY`] fails
/// with `inference_error`. Counts its runs.
struct Double {
    info: ModelInfo,
    runs: AtomicUsize,
}

impl Double {
    fn new() -> Arc<Double> {
        let spec = |name: &str| TensorSpec {
            name: name.into(),
            datatype: DataType::Fp32,
            shape: vec![-1, 2],
        };
        Arc::new(Double {
            info: ModelInfo {
                name: MODEL.into(),
                version: "1".into(),
                inputs: vec![spec("x")],
                outputs: vec![spec("y")],
                updated_at_ms: 0,
            },
            runs: AtomicUsize::new(0),
        })
    }
}

impl Backend for Double {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn run(&self, inputs: &[Tensor], _: &RunControl<'_>) -> Result<Vec<Tensor>, JobFailure> {
        self.runs.fetch_add(1, Ordering::Relaxed);
        let x = &inputs[0];
        let TensorData::Fp32(v) = &x.data else {
            return Err(JobFailure::Inference("not FP32".into()));
        };
        if v.contains(&FLAKY) {
            return Err(JobFailure::Inference("the model fell over".into()));
        }
        Ok(vec![Tensor {
            name: "y".into(),
            shape: x.shape.clone(),
            data: TensorData::Fp32(v.iter().map(|a| a * 2.0).collect()),
        }])
    }
}

// ------------------------------------------------------------ the worker

/// The process's one ONNX Runtime environment (the store holds one).
fn ort_env() -> ort::environment::Environment {
    static ENV: OnceLock<ort::environment::Environment> = OnceLock::new();
    ENV.get_or_init(|| {
        let lib = std::env::var_os("ORT_DYLIB_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../.local/onnxruntime/libonnxruntime.so")
            });
        worker::runtime::start(&lib).unwrap_or_else(|e| panic!("{e} (run scripts/setup)"))
    })
    .clone()
}

/// How the worker under test is configured.
struct Settings {
    lease: Duration,
    max_attempts: u32,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            lease: Duration::from_millis(400),
            max_attempts: 3,
        }
    }
}

/// One worker's shared state, serving `model`, as `worker::run` builds it.
fn context(redis: &Redis, keys: &Keys, model: Arc<Double>, s: &Settings) -> Arc<Context> {
    let topology = Topology::parse(&redis.url()).expect("redis url");
    let limits = Limits {
        connect: Duration::from_secs(2),
        response: Duration::from_secs(2),
    };
    let cache = std::env::temp_dir().join("onnxq-consumer-test-cache");
    let settings = StoreSettings {
        intra_threads: 1,
        cache_dir: cache.clone(),
        consumer: "unused".into(),
        check: modelcheck::Limits::default(),
        sandbox: SandboxConfig {
            exe: PathBuf::from("/nonexistent"),
            ort_lib: PathBuf::from("/nonexistent"),
            external_data_dir: cache.join("no-external-data"),
            memory_bytes: 1 << 30,
            cpu_secs: 10,
            timeout: Duration::from_secs(10),
            max_tensor_bytes: 1 << 20,
            max_nodes: 1000,
        },
        max_loaded_models: 4,
        max_loaded_bytes: 1 << 30,
        load_stale: Duration::from_secs(10),
    };
    let models = ModelStore::serving(ort_env(), settings, keys.clone(), vec![model]);
    let ctx = Arc::new(Context {
        keys: keys.clone(),
        models: Arc::new(models),
        streams: keys
            .all_partitions()
            .map(|_| Arc::new(ArcSwap::from_pointee(Vec::new())))
            .collect(),
        consumer: worker::consumer::consumer_name(),
        pool: Pool::new(&topology, limits).expect("pool"),
        topology,
        limits,
        read_count: 8,
        max_batch_rows: 8,
        max_batch_delay_ms: 0,
        block_ms: 100,
        lease: s.lease,
        policy: Policy {
            max_attempts: s.max_attempts,
            succeeded_ttl_secs: 600,
            failed_ttl_secs: 600,
            durability: Durability::Async,
        },
        retry_base: Duration::from_millis(20),
        retry_max: Duration::from_millis(40),
    });
    ctx.refresh_streams();
    ctx
}

/// The worker's prediction slots and the release of due retries, running
/// until dropped.
struct Running {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    async fn start(ctx: &Arc<Context>) -> Running {
        ctx.ensure_groups().await.expect("consumer groups");
        let (stop, stop_rx) = watch::channel(false);
        let trainer = Arc::new(TrainerConfig {
            external: None,
            external_timeout: Duration::from_secs(1),
            work_dir: std::env::temp_dir(),
            max_train: Duration::from_secs(1),
            max_work: 1,
        });
        let mut tasks = slots::start(ctx, &trainer, 1, 0, &stop_rx);
        tasks.push(tokio::spawn(release_due_retries(Arc::clone(ctx), stop_rx)));
        Running { stop, tasks }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(WAIT, t).await;
        }
    }
}

/// What the worker's upkeep does for retries, every 20 ms.
async fn release_due_retries(ctx: Arc<Context>, mut stop: watch::Receiver<bool>) {
    loop {
        let mut conn = ctx.pool.get();
        let streams = ctx.served_streams();
        let _ =
            consume::release_due(&mut conn, &ctx.keys, &streams, shared::time::now_ms(), 100).await;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = stop.changed() => return,
        }
    }
}

// ------------------------------------------------------------ jobs

async fn submit(ctx: &Context, row: [f32; 2]) -> Uuid {
    let job = JobEnvelope {
        id: ctx.keys.new_job_id(0),
        model: MODEL.into(),
        submitted_at_ms: shared::time::now_ms(),
        deadline_ms: None,
        traceparent: None,
        spec: JobSpec::Predict {
            inputs: vec![Tensor {
                name: "x".into(),
                shape: vec![1, 2],
                data: TensorData::Fp32(row.to_vec()),
            }],
            pinned_version: None,
        },
    };
    let opts = SubmitOptions {
        max_queue_depth: 0,
        idempotency: None,
        quota: Default::default(),
        durability: Durability::Async,
        index_ttl_secs: 60,
        webhook: None,
    };
    let mut conn = ctx.pool.get();
    let submitted = ops::submit(&mut conn, &ctx.keys, &job, &opts)
        .await
        .expect("submit");
    assert!(matches!(submitted, Submitted::Created), "{submitted:?}");
    job.id
}

async fn record(ctx: &Context, id: Uuid) -> JobRecord {
    let mut conn = ctx.pool.get();
    ops::get_job(&mut conn, &ctx.keys, &id)
        .await
        .expect("get job")
        .expect("the job's record")
}

/// The job's record once it is terminal.
async fn terminal(ctx: &Context, id: Uuid) -> JobRecord {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = record(ctx, id).await;
        if r.status.is_terminal() {
            return r;
        }
        assert!(Instant::now() < deadline, "job {id} not terminal: {r:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Entries of the model's stream delivered and not acknowledged.
async fn pending(ctx: &Context) -> usize {
    let mut conn = ctx.pool.get();
    let reply: redis::Value = redis::cmd("XPENDING")
        .arg(ctx.keys.stream(MODEL, 0))
        .arg(GROUP)
        .query_async(&mut conn)
        .await
        .expect("XPENDING");
    match reply {
        redis::Value::Array(fields) => match fields.first() {
            Some(redis::Value::Int(n)) => usize::try_from(*n).unwrap_or(0),
            other => panic!("XPENDING count: {other:?}"),
        },
        other => panic!("XPENDING: {other:?}"),
    }
}

fn namespace(test: &str) -> Keys {
    Keys::new(&format!("consumer-{test}-{}", Uuid::now_v7().simple()))
}

// ------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_and_its_result_is_stored_with_its_entry_acknowledged() {
    let redis = Redis::start();
    let keys = namespace("ok");
    let model = Double::new();
    let ctx = context(&redis, &keys, Arc::clone(&model), &Settings::default());
    let worker = Running::start(&ctx).await;

    let id = submit(&ctx, [1.5, -2.0]).await;
    let job = terminal(&ctx, id).await;
    worker.stop().await;

    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    assert_eq!(job.attempts, 1);
    assert_eq!(job.model_version.as_deref(), Some("1"));
    let result: serde_json::Value =
        serde_json::from_str(job.result_json.as_deref().expect("a result")).expect("JSON");
    assert_eq!(
        result["outputs"][0],
        serde_json::json!({"name": "y", "shape": [1, 2], "datatype": "FP32", "data": [3.0, -4.0]})
    );
    assert_eq!(model.runs.load(Ordering::Relaxed), 1);
    assert_eq!(pending(&ctx).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_is_retried_then_dead_lettered() {
    let redis = Redis::start();
    let keys = namespace("flaky");
    let model = Double::new();
    let ctx = context(&redis, &keys, Arc::clone(&model), &Settings::default());
    let worker = Running::start(&ctx).await;

    let flaky = submit(&ctx, [FLAKY, 0.0]).await;
    let fine = submit(&ctx, [1.0, 1.0]).await;
    let job = terminal(&ctx, flaky).await;
    let other = terminal(&ctx, fine).await;
    worker.stop().await;

    assert_eq!(job.status, JobStatus::Failed, "{job:?}");
    assert_eq!(job.attempts, 3, "every attempt was made: {job:?}");
    let error = job.error.expect("an error");
    assert_eq!(error.code, "inference_error");
    // Three runs of the flaky job, whether or not the first was stacked
    // with the fine one (a failed stack runs its jobs again one by one).
    let runs = model.runs.load(Ordering::Relaxed);
    assert!((4..=5).contains(&runs), "{runs} runs");
    assert_eq!(other.status, JobStatus::Succeeded, "{other:?}");

    let mut conn = ctx.pool.get();
    let dead = admin::list_dead(&mut conn, &ctx.keys, &DeadLetterFilter::default())
        .await
        .expect("dead letters");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].job_id, Some(flaky));
    assert_eq!(dead[0].attempts, 3);
    assert_eq!(dead[0].error.code, "inference_error");
    assert_eq!(dead[0].model, MODEL);
    let envelope = dead[0].envelope.as_ref().expect("the payload decodes");
    assert_eq!(envelope.id, flaky);
    drop(conn);
    assert_eq!(pending(&ctx).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_consumers_job_is_taken_over_by_another_once_its_lease_expires() {
    let redis = Redis::start();
    let keys = namespace("takeover");
    let settings = Settings::default();
    let model = Double::new();
    let ctx = context(&redis, &keys, Arc::clone(&model), &settings);
    ctx.ensure_groups().await.expect("consumer groups");
    let id = submit(&ctx, [2.0, 3.0]).await;

    // A consumer that read the job and started its first attempt, then
    // died: the entry stays pending under its name, its lease unrenewed.
    let crashed = "crashed-consumer";
    let mut conn = ctx.pool.get();
    let read = consume::read_new(&mut conn, &ctx.served_streams(), crashed, 10, 100)
        .await
        .expect("read");
    assert_eq!(read.len(), 1);
    let refs: Vec<&consume::Delivery> = read.iter().collect();
    let started = consume::start(
        &mut conn,
        &ctx.keys,
        crashed,
        &ctx.policy,
        &refs,
        shared::time::now_ms(),
    )
    .await
    .expect("start");
    assert!(
        matches!(started[..], [consume::Start::Run(1)]),
        "{started:?}"
    );
    drop(conn);
    assert_eq!(record(&ctx, id).await.status, JobStatus::Running);
    let crashed_at = Instant::now();

    let worker = Running::start(&ctx).await;
    let job = terminal(&ctx, id).await;
    worker.stop().await;

    assert!(
        crashed_at.elapsed() >= settings.lease,
        "taken over before the lease expired"
    );
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    assert_eq!(job.attempts, 2, "the takeover is the second attempt");
    let result: serde_json::Value =
        serde_json::from_str(job.result_json.as_deref().expect("a result")).expect("JSON");
    assert_eq!(result["outputs"][0]["data"], serde_json::json!([4.0, 6.0]));
    assert_eq!(model.runs.load(Ordering::Relaxed), 1);
    assert_eq!(pending(&ctx).await, 0);
}
