//! The core scenarios, written once and run on both topologies: a single
//! `redis-server` with one partition, and a 3-master/3-replica Redis
//! Cluster with `--partitions 3` (each scenario is a module with a `single`
//! and a `cluster` test). Every scenario deals its jobs over every
//! partition, so on the cluster they span three masters.
//!
//! * predict + poll: results match the Python reference; `?wait=` times
//!   out on a queued job and wakes as soon as the job is done;
//! * cancel of queued jobs: canceled for good, their entries acknowledged
//!   unrun by the worker that reads them later;
//! * retries into dead letters: a model that cannot run its input is
//!   retried with back-off, then dead-lettered in its job's partition;
//! * replay of dead letters with `jobctl` (`--id` and `--model`) once the
//!   model is fixed: same ids, succeeded, no dead letter left anywhere;
//! * hot swap: a version promoted under load; no job fails, each result is
//!   its version's, every worker swaps;
//! * retrain: a dataset uploaded, a retrain promoted, the new version
//!   serving exactly what the trainer itself predicts.
//!
//! After every scenario nothing is pending in any partition's consumer
//! group, and no worker failed to publish its models (workers re-publish
//! every second here).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use e2e::topology::{Store, entry_text};
use e2e::{
    Api, Client, Fixture, ModelsDir, StatusCode, Worker, assert_outputs_match, binary, repo_root,
    unique_namespace,
};
use ndarray::Axis;
use serde_json::{Value, json};
use shared::Keys;
use shared::queue::keys::{CONTROL, TRAIN, partition_of};
use trainer::{Dataset, Predictions, TrainParams};

const WAIT: Duration = Duration::from_secs(30);
const TOL: f64 = 1e-5;

/// Writes a `single` and a `cluster` test for each scenario function.
macro_rules! on_both_topologies {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            use e2e::topology::Store;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn single() {
                super::$scenario(Store::single()).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cluster() {
                super::$scenario(Store::cluster(3)).await
            }
        }
    )*};
}

on_both_topologies!(
    predict_and_poll,
    cancel_queued,
    retries_into_dead_letters,
    dead_letter_replay,
    hot_swap,
    retrain,
);

/// Processes of one scenario on one store.
struct System {
    store: Store,
    ns: String,
    keys: Keys,
    models: Option<ModelsDir>,
    worker_args: Vec<String>,
    workers: Vec<Worker>,
    api: Api,
}

impl System {
    /// The API and `workers` workers (serving `models`, or the repository's
    /// `models/`) on `store`, with the models published.
    async fn start(
        store: Store,
        models: Option<ModelsDir>,
        workers: usize,
        worker_args: &[&str],
        wait_for: &[&str],
    ) -> System {
        let ns = unique_namespace(&format!("topo-{}", store.name()));
        let keys = store.keys(&ns);
        let mut args = store.queue_args();
        // Re-published every second, so a scenario sees several rounds.
        args.extend(["--publish-interval-secs", "1", "--block-ms", "200"].map(String::from));
        args.extend(worker_args.iter().map(|s| s.to_string()));
        let api = Api::spawn(
            &store.url(),
            &ns,
            &store
                .queue_args()
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        );
        let mut sys = System {
            store,
            ns,
            keys,
            models,
            worker_args: args,
            workers: Vec::new(),
            api,
        };
        for _ in 0..workers {
            sys.spawn_worker();
        }
        sys.client().wait_for_models(wait_for, WAIT).await;
        sys
    }

    fn spawn_worker(&mut self) {
        let args: Vec<&str> = self.worker_args.iter().map(String::as_str).collect();
        let w = match &self.models {
            Some(dir) => Worker::spawn_with_models(&self.store.url(), &self.ns, &dir.path, &args),
            None => Worker::spawn(&self.store.url(), &self.ns, &args),
        };
        w.consumer_name(WAIT);
        self.workers.push(w);
    }

    fn client(&self) -> Client {
        self.api.client()
    }

    /// Runs `jobctl` with this system's URL, namespace and partitions.
    fn jobctl(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(binary("jobctl"))
            .args(["--redis-url", &self.store.url(), "--namespace", &self.ns])
            .args(self.store.queue_args())
            .args(args)
            .output()
            .expect("run jobctl");
        assert!(
            out.status.success(),
            "jobctl {args:?} on {}: {}",
            self.store.name(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Nothing pending in any partition of `queues` (models, and the
    /// control and training streams) once the workers are done, and no
    /// worker that failed to publish its models.
    async fn assert_clean(&self, models: &[&str]) {
        let mut probe = self.store.probe().await;
        let mut queues: Vec<&str> = models.to_vec();
        queues.extend([CONTROL, TRAIN]);
        let deadline = Instant::now() + Duration::from_secs(10);
        for q in queues {
            loop {
                let pending = probe.pending_per_partition(&self.keys, q).await;
                if pending.iter().all(|&n| n == 0) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{}: entries of {q} left pending: {pending:?}",
                    self.store.name()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        for w in &self.workers {
            let failed = w.log_events("cannot publish models; retrying");
            assert!(
                failed.is_empty(),
                "{}: a worker could not publish its models: {:?}",
                self.store.name(),
                failed.first()
            );
        }
    }
}

/// The partitions `ids` fall in, sorted and deduplicated.
fn partitions_of(ids: &[String]) -> Vec<u16> {
    let mut p: Vec<u16> = ids
        .iter()
        .map(|id| partition_of(&id.parse().expect("job id")))
        .collect();
    p.sort_unstable();
    p.dedup();
    p
}

/// Every partition, `0..P`.
fn all(keys: &Keys) -> Vec<u16> {
    keys.all_partitions().collect()
}

/// Polls (no `wait`) until the job reports `status`.
async fn wait_status(c: &Client, id: &str, status: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = c.job(id, None).await;
        if r.json["status"] == status {
            return;
        }
        assert!(Instant::now() < deadline, "job never {status}: {}", r.text);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ------------------------------------------------------ predict and poll

async fn predict_and_poll(store: Store) {
    let sys = System::start(store, None, 1, &[], &["mlp128", "breast_cancer"]).await;
    let c = sys.client();

    // Three cases of each model, so the jobs are dealt over every partition.
    let mut ids = Vec::new();
    for model in ["mlp128", "breast_cancer"] {
        for case in Fixture::load(model).cases.iter().take(3) {
            let id = c.submit(model, &json!({ "inputs": case.inputs })).await;
            let t = Instant::now();
            let r = c.job(&id, Some(10.0)).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
            assert_eq!(r.json["status"], "succeeded", "{}", r.text);
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "a long poll took {:?} for an idle worker's job",
                t.elapsed()
            );
            assert_outputs_match(&r.json["result"]["outputs"], &case.outputs, TOL);
            ids.push(id);
        }
    }
    assert_eq!(partitions_of(&ids), all(&sys.keys));

    // A queued job (its worker frozen): `?wait=1` answers queued after a
    // second; a long poll wakes as soon as the job is done, on whichever
    // node its finish was published.
    let w = &sys.workers[0];
    w.proc.signal("STOP");
    let row = json!({ "features": vec![0.1f32; 128] });
    let queued: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..sys.keys.partitions() {
            v.push(c.submit("mlp128", &row).await);
        }
        v
    };
    assert_eq!(partitions_of(&queued), all(&sys.keys));
    let t = Instant::now();
    let r = c.job(&queued[0], Some(1.0)).await;
    let waited = t.elapsed();
    assert_eq!(r.json["status"], "queued", "{}", r.text);
    assert!(
        waited >= Duration::from_millis(950) && waited < Duration::from_millis(2500),
        "wait=1 took {waited:?}"
    );
    let polls: Vec<_> = queued
        .iter()
        .map(|id| {
            let (c, id) = (c.clone(), id.clone());
            tokio::spawn(async move {
                let r = c.job(&id, Some(25.0)).await;
                (r, Instant::now())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.proc.signal("CONT");
    let resumed = Instant::now();
    for p in polls {
        let (r, at) = p.await.expect("long poll");
        assert_eq!(r.json["status"], "succeeded", "{}", r.text);
        assert!(
            at - resumed < Duration::from_secs(10),
            "a long poll woke {:?} after the worker resumed",
            at - resumed
        );
    }
    sys.assert_clean(&["mlp128", "breast_cancer"]).await;
}

// ----------------------------------------------------------------- cancel

async fn cancel_queued(store: Store) {
    let sys = System::start(store, None, 1, &[], &["mlp128"]).await;
    let c = sys.client();
    let p = usize::from(sys.keys.partitions());
    let row = |v: f32| json!({ "features": vec![v; 128] });

    // Frozen worker: everything stays queued. Round robin deals one job of
    // each kind to every partition.
    sys.workers[0].proc.signal("STOP");
    let mut canceled = Vec::new();
    let mut kept = Vec::new();
    for _ in 0..p {
        canceled.push(c.submit("mlp128", &row(0.5)).await);
        kept.push(c.submit("mlp128", &row(0.25)).await);
    }
    assert_eq!(partitions_of(&canceled), all(&sys.keys));
    for id in &canceled {
        let r = c.delete(&format!("/v1/jobs/{id}")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.json["status"], "canceled", "{}", r.text);
        assert_eq!(r.json["attempts"], 0, "{}", r.text);
        assert_eq!(
            c.job(id, None).await.json,
            r.json,
            "GET differs from DELETE"
        );
        let again = c.delete(&format!("/v1/jobs/{id}")).await;
        assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);
        assert_eq!(again.error_code(), "job_not_cancelable");
    }

    // The worker reads the canceled entries first (stream order) and must
    // acknowledge them without running them.
    sys.workers[0].proc.signal("CONT");
    for id in &kept {
        let job = c.wait_terminal(id, WAIT).await;
        assert_eq!(job["status"], "succeeded", "{job}");
    }
    for id in &canceled {
        let job = c.job(id, None).await.json;
        assert_eq!(job["status"], "canceled", "{job}");
        assert_eq!(job["attempts"], 0, "a canceled job was started: {job}");
        assert!(
            job["started_at"].is_null() && job["result"].is_null(),
            "{job}"
        );
    }
    sys.assert_clean(&["mlp128"]).await;
}

// ------------------------------------------------------------ dead letters

/// Worker flags that retry a failing job twice, quickly.
const RETRY_ARGS: [&str; 6] = [
    "--max-attempts",
    "3",
    "--retry-base-ms",
    "100",
    "--retry-max-ms",
    "400",
];

/// A system serving `flaky` (which cannot run a 4-feature input) and
/// failed, dead-lettered jobs in every partition (at least two, so a
/// replay can pick one by id and the others by model).
async fn with_dead_letters(store: Store) -> (System, Vec<String>) {
    let models = ModelsDir::with(&[("flaky", "testdata/flaky_broken.onnx")]);
    let sys = System::start(store, Some(models), 1, &RETRY_ARGS, &["flaky"]).await;
    let c = sys.client();
    let mut ids = Vec::new();
    for _ in 0..sys.keys.partitions().max(2) {
        ids.push(
            c.submit("flaky", &json!({ "features": [1.0, 2.0, 3.0, 4.0] }))
                .await,
        );
    }
    assert_eq!(partitions_of(&ids), all(&sys.keys));
    for id in &ids {
        let job = c.wait_terminal(id, WAIT).await;
        assert_eq!(job["status"], "failed", "{job}");
        assert_eq!(job["attempts"], 3, "{job}");
        assert_eq!(job["error"]["code"], "inference_error", "{job}");
        assert!(job["result"].is_null(), "{job}");
    }
    (sys, ids)
}

async fn retries_into_dead_letters(store: Store) {
    let (sys, ids) = with_dead_letters(store).await;
    // Two retries per job, each logged by the worker.
    let retries = sys.workers[0].log_events("job will be retried");
    assert_eq!(retries.len(), 2 * ids.len(), "{retries:?}");

    // Each job is dead-lettered once, in its own partition.
    let mut probe = sys.store.probe().await;
    let dead = probe.dead_letters(&sys.keys).await;
    let mut by_id: HashMap<String, u16> = HashMap::new();
    for (p, entry) in &dead {
        let id = entry_text(entry, "id");
        assert_eq!(entry_text(entry, "model"), "flaky");
        assert_eq!(entry_text(entry, "attempts"), "3");
        let err: Value = serde_json::from_str(&entry_text(entry, "error")).expect("error json");
        assert_eq!(err["code"], "inference_error");
        assert_eq!(partition_of(&id.parse().expect("id")), *p, "{id}");
        assert!(by_id.insert(id.clone(), *p).is_none(), "{id} dead twice");
    }
    let mut got: Vec<&String> = by_id.keys().collect();
    got.sort();
    let mut want: Vec<&String> = ids.iter().collect();
    want.sort();
    assert_eq!(got, want, "{}: dead letters", sys.store.name());
    sys.assert_clean(&["flaky"]).await;
}

async fn dead_letter_replay(store: Store) {
    let (mut sys, ids) = with_dead_letters(store).await;
    let c = sys.client();

    // jobctl sees every partition's dead letters.
    let listed: HashSet<String> = sys
        .jobctl(&["dead", "list", "--json"])
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("a JSON line");
            v["job_id"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    assert_eq!(listed, ids.iter().cloned().collect::<HashSet<_>>());

    // The cause is fixed (the model file replaced, the worker restarted);
    // the first job is replayed by id, the rest by model.
    sys.workers.clear();
    if let Some(dir) = &sys.models {
        dir.put("flaky", "testdata/flaky_fixed.onnx");
    }
    sys.spawn_worker();
    sys.jobctl(&["replay", "--id", &ids[0], "--yes"]);
    let job = c.wait_terminal(&ids[0], WAIT).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    sys.jobctl(&["replay", "--model", "flaky", "--yes"]);
    for id in &ids {
        let job = c.wait_terminal(id, WAIT).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(
            job["result"]["outputs"][0]["data"],
            json!([2.0, 4.0, 6.0, 8.0]),
            "{job}"
        );
    }
    let mut probe = sys.store.probe().await;
    let left = probe.dead_letters(&sys.keys).await;
    assert!(
        left.is_empty(),
        "dead letters left after the replay: {left:?}"
    );
    sys.assert_clean(&["flaky"]).await;
}

// --------------------------------------------------------------- hot swap

/// `x` of job `i` for the 4-wide test models.
fn x4(i: usize) -> Vec<f32> {
    let b = (i % 997) as f32 * 0.25;
    vec![b, -b, b + 1.0, 0.5]
}

async fn hot_swap(store: Store) {
    const JOBS: usize = 900;
    const PROMOTE_AFTER: usize = 300;
    let models = ModelsDir::with(&[("m", "testdata/flaky_fixed.onnx")]);
    let sys = System::start(store, Some(models), 2, &[], &["m"]).await;
    let c = sys.client();

    // Version 2 (`3x`) uploaded and validated before the load starts.
    let bytes = std::fs::read(repo_root().join("models/testdata/scale3.onnx")).expect("model");
    let r = c.upload_version("m", bytes).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let job = c
        .wait_terminal(r.json["job_id"].as_str().expect("job_id"), WAIT)
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");

    let submitted = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (c, next, submitted) = (c.clone(), Arc::clone(&next), Arc::clone(&submitted));
            tokio::spawn(async move {
                let mut ids = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= JOBS {
                        return ids;
                    }
                    let body = json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": x4(i)}]});
                    ids.push((i, c.submit("m", &body).await));
                    submitted.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    while submitted.load(Ordering::Relaxed) < PROMOTE_AFTER {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let r = c.promote("m", 2).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let mut ids = Vec::with_capacity(JOBS);
    for t in tasks {
        ids.extend(t.await.expect("submitter"));
    }

    let mut per_version: HashMap<String, usize> = HashMap::new();
    for (i, id) in &ids {
        let job = c.wait_terminal(id, WAIT).await;
        assert_eq!(job["status"], "succeeded", "job {i}: {job}");
        let version = job["model_version"].as_str().unwrap_or("").to_owned();
        let k = match version.as_str() {
            "1" => 2.0,
            "2" => 3.0,
            other => panic!("job {i} ran on version {other:?}: {job}"),
        };
        let expected: Vec<f64> = x4(*i).iter().map(|&v| f64::from(v) * k).collect();
        let got: Vec<f64> = job["result"]["outputs"][0]["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|v| v.as_f64().expect("number"))
            .collect();
        assert_eq!(got, expected, "job {i} on version {version}");
        *per_version.entry(version).or_default() += 1;
    }
    let ids_only: Vec<String> = ids.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(partitions_of(&ids_only), all(&sys.keys));
    assert!(
        per_version.get("1").copied().unwrap_or(0) > 0
            && per_version.get("2").copied().unwrap_or(0) > 0,
        "the swap did not happen under load: {per_version:?}"
    );
    // Every worker swapped, once, from 1 to 2.
    for w in &sys.workers {
        let swaps = w.log_events("model version swapped");
        assert_eq!(swaps.len(), 1, "{swaps:?}");
        assert_eq!(swaps[0]["fields"]["to"], 2, "{swaps:?}");
    }
    println!(
        "HOT SWAP on {}: {JOBS} jobs, 0 failed: {per_version:?}",
        sys.store.name()
    );
    sys.assert_clean(&["m"]).await;
}

// ---------------------------------------------------------------- retrain

async fn retrain(store: Store) {
    let sys = System::start(store, None, 1, &[], &["breast_cancer"]).await;
    let c = sys.client();
    let csv = std::fs::read(repo_root().join("models/datasets/breast_cancer.csv")).expect("csv");
    let r = c
        .send(
            c.http
                .put(format!("{}/v1/datasets/bc", c.base))
                .header("content-type", "text/csv")
                .body(csv.clone()),
        )
        .await;
    assert!(
        r.status == StatusCode::CREATED || r.status == StatusCode::OK,
        "{}",
        r.text
    );
    assert_eq!(r.json["rows"], 569, "{}", r.text);

    let params = json!({"epochs": 200, "learning_rate": 0.05});
    let r = c
        .send(
            c.http
                .post(format!("{}/v1/models/breast_cancer/retrain", c.base))
                .json(&json!({"dataset": "bc", "params": params, "promote": "always"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let id = r.json["job_id"].as_str().expect("job_id").to_owned();
    wait_status(&c, &id, "running").await;
    let job = c.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["kind"], "retrain");
    let res = &job["result"];
    assert_eq!(res["decision"], "promoted", "{res}");
    assert_eq!(res["version"], 2, "{res}");
    assert_eq!(res["current_version"], 2, "{res}");

    // The promoted version serves exactly what the trainer predicts for
    // the same data and parameters.
    let ds = Dataset::from_csv(&csv, "target").expect("dataset");
    let p: TrainParams = serde_json::from_value(params).expect("params");
    let trained = trainer::train(&ds, &p, |_| std::ops::ControlFlow::Continue(())).expect("train");
    let deadline = Instant::now() + Duration::from_secs(10);
    let rows: Vec<usize> = (0..ds.n_rows()).step_by(97).collect();
    let mut served = Vec::new();
    let mut i = 0;
    while i < rows.len() {
        let x = ds.features().select(Axis(0), &[rows[i]]);
        let row: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let id = c.submit("breast_cancer", &json!({ "features": row })).await;
        let job = c.wait_terminal(&id, WAIT).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        if job["model_version"] != "2" {
            // Workers switch within a second of the promotion.
            assert!(Instant::now() < deadline, "still served by {job}");
            continue;
        }
        let probs: Vec<f64> = job["result"]["outputs"]
            .as_array()
            .expect("outputs")
            .iter()
            .find(|o| o["name"] == "probabilities")
            .expect("probabilities")["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|v| v.as_f64().expect("number"))
            .collect();
        let Predictions::Classification { probabilities, .. } =
            trained.model.predict(x.view()).expect("predict")
        else {
            panic!("classification expected")
        };
        for (a, b) in probs.iter().zip(probabilities.row(0)) {
            assert!(
                (a - b).abs() <= 1e-5,
                "row {}: served {a}, trainer {b}",
                rows[i]
            );
        }
        served.push(id);
        i += 1;
    }
    assert_eq!(partitions_of(&served), all(&sys.keys));
    sys.assert_clean(&["breast_cancer"]).await;
}
