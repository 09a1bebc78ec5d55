//! `jobctl` end to end: the real binary against a real redis-server, with
//! dead letters seeded in exactly the format workers write (see
//! `shared::queue::wire::dead`), and one real worker to run a replayed job.

use std::collections::{BTreeMap, HashSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{Fixture, RedisServer, Worker, assert_outputs_match, free_port, unique_namespace};
use redis::streams::StreamRangeReply;
use serde_json::Value;
use shared::job::JobError;
use shared::queue::admin::{self, DeadLetterFilter, ReplayOutcome};
use shared::queue::wire::{FIELD_ID, FIELD_JOB, JobEnvelope, JobSpec, dead};
use shared::queue::{Keys, keys::GROUP};
use shared::tensor::{Tensor, TensorData};
use shared::time::{now_ms, rfc3339_ms};
use uuid::Uuid;

const MINUTE: i64 = 60_000;

/// The outcome of one `jobctl` run.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self) -> Run {
        assert_eq!(
            self.code,
            Some(0),
            "jobctl failed\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    fn failed(self) -> Run {
        assert_eq!(
            self.code,
            Some(1),
            "jobctl should have failed\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        assert!(!self.stderr.contains("panicked"), "{}", self.stderr);
        self
    }

    /// stdout as JSON lines.
    fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }
}

/// `jobctl` pointed at one Redis and namespace.
struct Ctl {
    url: String,
    ns: String,
}

impl Ctl {
    fn run(&self, args: &[&str]) -> Run {
        let out = Command::new(e2e::binary("jobctl"))
            .args(["--redis-url", &self.url, "--namespace", &self.ns])
            .args(args)
            // Not a terminal: no progress bar, and no confirmation prompt.
            .stdin(Stdio::null())
            .output()
            .expect("cannot run jobctl");
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// A Redis with its own namespace and a blocking connection to inspect it.
struct Env {
    redis: RedisServer,
    keys: Keys,
    ctl: Ctl,
    con: redis::Connection,
}

fn env(prefix: &str) -> Env {
    let redis = RedisServer::start();
    let ns = unique_namespace(prefix);
    let con = redis.client().get_connection().expect("redis connection");
    Env {
        keys: Keys::new(&ns),
        ctl: Ctl {
            url: redis.url(),
            ns,
        },
        con,
        redis,
    }
}

fn envelope(model: &str, inputs: Vec<Tensor>, submitted_at_ms: i64) -> JobEnvelope {
    JobEnvelope {
        id: shared::Keys::new("x").new_job_id(0),
        model: model.to_owned(),
        submitted_at_ms,
        deadline_ms: None,
        traceparent: None,
        spec: JobSpec::Predict {
            inputs,
            pinned_version: None,
        },
    }
}

fn features(n: usize) -> Vec<Tensor> {
    vec![Tensor {
        name: "features".into(),
        shape: vec![1, n as i64],
        data: TensorData::Fp32((0..n).map(|i| i as f32 / 10.0).collect()),
    }]
}

/// The first mlp128 fixture case as tensors, with its expected outputs.
fn mlp128_case() -> (Vec<Tensor>, Vec<Value>) {
    let case = Fixture::load("mlp128").cases.swap_remove(0);
    let input = &case.inputs[0];
    let tensor = Tensor {
        name: input["name"].as_str().expect("name").to_owned(),
        shape: serde_json::from_value(input["shape"].clone()).expect("shape"),
        data: TensorData::Fp32(serde_json::from_value(input["data"].clone()).expect("data")),
    };
    (vec![tensor], case.outputs)
}

/// A dead letter the way a worker leaves it: the job record `failed` with
/// its error and a TTL, and an entry in `{ns}:dead`. Returns the payload.
fn seed_dead(e: &mut Env, env: &JobEnvelope, failed_at_ms: i64, with_record: bool) -> Vec<u8> {
    let payload = env.encode().expect("encode envelope");
    let err = serde_json::to_string(&JobError {
        code: "inference_error".into(),
        message: format!("model {} rejected the input after 3 attempts", env.model),
    })
    .expect("error json");
    if with_record {
        let key = e.keys.job(&env.id);
        redis::pipe()
            .cmd("HSET")
            .arg(&key)
            .arg(&[
                ("kind", "predict".to_owned()),
                ("model", env.model.clone()),
                ("status", "failed".into()),
                ("attempts", "3".into()),
                ("created_at", env.submitted_at_ms.to_string()),
                ("started_at", (failed_at_ms - 5).to_string()),
                ("finished_at", failed_at_ms.to_string()),
                ("model_version", "e88749235523a6dc".into()),
                ("worker", "host-1-abc".into()),
                ("error", err.clone()),
            ])
            .cmd("EXPIRE")
            .arg(&key)
            .arg(3600)
            .query::<()>(&mut e.con)
            .expect("seed job record");
    }
    redis::cmd("XADD")
        .arg(e.keys.dead_letters(0))
        .arg("*")
        .arg(FIELD_ID)
        .arg(env.id.to_string())
        .arg(FIELD_JOB)
        .arg(&payload)
        .arg(dead::MODEL)
        .arg(&env.model)
        .arg(dead::ERROR)
        .arg(&err)
        .arg(dead::ATTEMPTS)
        .arg(3)
        .arg(dead::FAILED_AT)
        .arg(failed_at_ms)
        .query::<String>(&mut e.con)
        .expect("seed dead letter");
    payload
}

fn range(con: &mut redis::Connection, key: &str) -> StreamRangeReply {
    redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query(con)
        .expect("xrange")
}

fn field_bytes(entry: &redis::streams::StreamId, field: &str) -> Vec<u8> {
    match entry.map.get(field) {
        Some(redis::Value::BulkString(b)) => b.clone(),
        other => panic!("field {field}: {other:?}"),
    }
}

fn dead_job_ids(e: &mut Env) -> Vec<String> {
    let key = e.keys.dead_letters(0);
    range(&mut e.con, &key)
        .ids
        .iter()
        .map(|entry| String::from_utf8_lossy(&field_bytes(entry, FIELD_ID)).into_owned())
        .collect()
}

fn record(e: &mut Env, id: &Uuid) -> BTreeMap<String, String> {
    redis::cmd("HGETALL")
        .arg(e.keys.job(id))
        .query(&mut e.con)
        .expect("hgetall")
}

fn ttl(e: &mut Env, id: &Uuid) -> i64 {
    redis::cmd("TTL")
        .arg(e.keys.job(id))
        .query(&mut e.con)
        .expect("ttl")
}

fn ids_of(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["job_id"].as_str().expect("job_id").to_owned())
        .collect()
}

#[test]
fn lists_filters_and_shows_dead_letters() {
    let mut e = env("jobctl-list");
    let now = now_ms();
    let a = envelope("mlp128", features(128), now - 3 * 60 * MINUTE);
    let b = envelope("mlp128", features(128), now - 11 * MINUTE);
    let c = envelope("two_input", features(4), now - 2 * MINUTE);
    seed_dead(&mut e, &a, now - 3 * 60 * MINUTE + 1_000, true);
    seed_dead(&mut e, &b, now - 10 * MINUTE, true);
    seed_dead(&mut e, &c, now - MINUTE, false);
    let (a_id, b_id, c_id) = (a.id.to_string(), b.id.to_string(), c.id.to_string());

    let all = e.ctl.run(&["dead", "list", "--json"]).ok().json_lines();
    assert_eq!(
        ids_of(&all),
        [a_id.as_str(), b_id.as_str(), c_id.as_str()],
        "oldest first"
    );
    assert_eq!(all[0]["model"], "mlp128");
    assert_eq!(all[0]["attempts"], 3);
    assert_eq!(all[0]["error"]["code"], "inference_error");
    assert_eq!(
        all[0]["failed_at"],
        rfc3339_ms(now - 3 * 60 * MINUTE + 1_000)
    );
    assert!(all[0].get("not_replayable").is_none(), "{}", all[0]);

    let list = |args: &[&str]| {
        let mut argv = vec!["dead", "list", "--json"];
        argv.extend(args);
        ids_of(&e.ctl.run(&argv).ok().json_lines())
    };
    assert_eq!(list(&["--model", "mlp128"]), [a_id.as_str(), b_id.as_str()]);
    assert_eq!(list(&["--model", "two_input"]), [c_id.as_str()]);
    assert!(list(&["--model", "nope"]).is_empty());
    assert_eq!(list(&["--since", "1h"]), [b_id.as_str(), c_id.as_str()]);
    assert_eq!(list(&["--until", "1h"]), [a_id.as_str()]);
    assert_eq!(list(&["--since", "30m", "--until", "5m"]), [b_id.as_str()]);
    assert_eq!(
        list(&["--since", &rfc3339_ms(now - 20 * MINUTE)]),
        [b_id.as_str(), c_id.as_str()],
        "RFC 3339 works as well as ages"
    );
    assert_eq!(
        list(&["--model", "mlp128", "--since", "1h"]),
        [b_id.as_str()]
    );
    assert_eq!(list(&["--limit", "1"]), [a_id.as_str()]);

    // The table names every job with its error code and message.
    let table = e.ctl.run(&["dead", "list"]).ok().stdout;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(lines[0].starts_with("JOB ID"), "{table}");
    assert!(
        lines[1].contains(&a_id) && lines[1].contains("inference_error"),
        "{table}"
    );
    assert!(lines[3].contains(&c_id) && lines[3].contains("two_input"));
    assert!(lines[3].contains(&rfc3339_ms(now - MINUTE)), "{table}");

    // show: the payload's inputs and the record, as text and as JSON.
    let shown = e.ctl.run(&["dead", "show", &a_id]).ok().stdout;
    for want in [
        a_id.as_str(),
        "features FP32 [1, 128] (128 values)",
        "inference_error",
        "status",
        "failed",
    ] {
        assert!(shown.contains(want), "{want:?} missing from:\n{shown}");
    }
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("replayable") && l.ends_with(" yes")),
        "{shown}"
    );
    let json = e.ctl.run(&["dead", "show", "--json", &a_id]).ok().json();
    let letter = &json["dead_letters"][0];
    assert_eq!(letter["job_id"], a_id.as_str());
    assert_eq!(letter["payload"]["kind"], "predict");
    assert_eq!(letter["payload"]["inputs"][0]["name"], "features");
    assert_eq!(letter["payload"]["inputs"][0]["datatype"], "FP32");
    assert_eq!(
        letter["payload"]["inputs"][0]["shape"],
        serde_json::json!([1, 128])
    );
    assert_eq!(json["record"]["fields"]["status"], "failed");
    assert!(json["record"]["ttl_secs"].as_i64().is_some_and(|t| t > 0));
    // c was seeded without a record, like one that expired.
    let json = e.ctl.run(&["dead", "show", "--json", &c_id]).ok().json();
    assert!(json["record"].is_null(), "{json}");
    let shown = e.ctl.run(&["dead", "show", &c_id]).ok().stdout;
    assert!(shown.contains("gone (expired)"), "{shown}");

    let missing = Uuid::now_v7().to_string();
    let r = e.ctl.run(&["dead", "show", &missing]).failed();
    assert!(r.stderr.contains("no dead letter for job"), "{}", r.stderr);
    let r = e
        .ctl
        .run(&["dead", "list", "--since", "yesterday"])
        .failed();
    assert!(r.stderr.contains("invalid time"), "{}", r.stderr);
    let r = e.ctl.run(&["dead", "list", "--since", "5"]).failed();
    assert!(r.stderr.contains("no unit"), "{}", r.stderr);
}

#[test]
fn dry_run_changes_nothing_and_replay_requeues_the_exact_payload() {
    let mut e = env("jobctl-replay");
    let now = now_ms();
    let a = envelope("mlp128", features(128), now - 20 * MINUTE);
    let b = envelope("mlp128", features(128), now - 19 * MINUTE);
    let a_payload = seed_dead(&mut e, &a, now - 5 * MINUTE, true);
    seed_dead(&mut e, &b, now - 4 * MINUTE, true);
    let (a_id, b_id) = (a.id.to_string(), b.id.to_string());
    let stream = e.keys.stream("mlp128", 0);
    let dead_key = e.keys.dead_letters(0);

    let snapshot = |e: &mut Env| {
        let dead: Vec<_> = range(&mut e.con, &dead_key)
            .ids
            .into_iter()
            .map(|s| (s.id, s.map.len()))
            .collect();
        let exists: bool = redis::cmd("EXISTS")
            .arg(&stream)
            .query(&mut e.con)
            .expect("exists");
        (
            dead,
            record(e, &a.id),
            record(e, &b.id),
            ttl(e, &a.id) > 0,
            exists,
        )
    };
    // What a worker's retry path leaves behind (a stale result field, the
    // parked payload, a delayed-set entry): a replay must clear it all, or
    // the job could come back a second way.
    redis::pipe()
        .cmd("HSET")
        .arg(e.keys.job(&a.id))
        .arg(&[
            ("result", "{}"),
            ("payload", "x"),
            ("retry_at", "1"),
            ("last_error", "{}"),
        ])
        .cmd("ZADD")
        .arg(e.keys.delayed("mlp128", 0))
        .arg(1)
        .arg(&a_id)
        .query::<()>(&mut e.con)
        .expect("seed retry leftovers");
    let before = snapshot(&mut e);
    assert!(before.3, "seeded record expires");

    let dry = e
        .ctl
        .run(&["replay", "--model", "mlp128", "--dry-run"])
        .ok()
        .stdout;
    assert!(dry.contains(&a_id) && dry.contains(&b_id), "{dry}");
    assert!(
        dry.contains("dry run: would replay 2 of 2 selected"),
        "{dry}"
    );
    assert_eq!(snapshot(&mut e), before, "a dry run changed Redis");

    // No selector: an error, and nothing happens.
    let r = e.ctl.run(&["replay", "--yes"]).failed();
    assert!(r.stderr.contains("say what to replay"), "{}", r.stderr);
    // No terminal to confirm on and no --yes: refused.
    let r = e.ctl.run(&["replay", "--id", &a_id]).failed();
    assert!(r.stderr.contains("--yes"), "{}", r.stderr);
    assert_eq!(snapshot(&mut e), before, "a refused replay changed Redis");

    let r = e.ctl.run(&["replay", "--id", &a_id, "--yes"]).ok();
    assert!(
        r.stdout
            .contains("selected 1, replayed 1, already replayed 0"),
        "{}",
        r.stdout
    );

    // The dead letter is gone, the other one is untouched.
    assert_eq!(dead_job_ids(&mut e), [b_id.as_str()]);
    // The record is a fresh queued job that no longer expires.
    let rec = record(&mut e, &a.id);
    assert_eq!(rec.get("status").map(String::as_str), Some("queued"));
    assert_eq!(rec.get("attempts").map(String::as_str), Some("0"));
    assert_eq!(rec.get("kind").map(String::as_str), Some("predict"));
    assert_eq!(rec.get("model").map(String::as_str), Some("mlp128"));
    assert_eq!(
        rec.get("created_at"),
        Some(&a.submitted_at_ms.to_string()),
        "creation time kept"
    );
    for gone in [
        "result",
        "error",
        "started_at",
        "finished_at",
        "model_version",
        "worker",
        "payload",
        "retry_at",
        "last_error",
    ] {
        assert!(!rec.contains_key(gone), "{gone} left in {rec:?}");
    }
    let delayed: Option<f64> = redis::cmd("ZSCORE")
        .arg(e.keys.delayed("mlp128", 0))
        .arg(&a_id)
        .query(&mut e.con)
        .expect("zscore");
    assert_eq!(delayed, None, "still in the delayed set");
    assert_eq!(ttl(&mut e, &a.id), -1, "the replayed record still expires");
    // Same job id, byte-identical payload, on a stream workers read.
    let entries = range(&mut e.con, &stream).ids;
    assert_eq!(entries.len(), 1);
    assert_eq!(field_bytes(&entries[0], FIELD_ID), a_id.as_bytes());
    assert_eq!(field_bytes(&entries[0], FIELD_JOB), a_payload);
    let groups: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(&stream)
        .query(&mut e.con)
        .expect("xinfo groups");
    assert_eq!(groups.len(), 1, "the workers group was created");
    assert!(format!("{groups:?}").contains(GROUP));
    // b's record was not touched.
    assert_eq!(record(&mut e, &b.id), before.2);

    // Again: nothing to replay, no duplicate on the stream.
    let r = e.ctl.run(&["replay", "--id", &a_id, "--yes"]).ok();
    assert!(r.stdout.contains("selected 0, replayed 0"), "{}", r.stdout);
    assert!(
        r.stderr.contains("not in the dead-letter queue"),
        "{}",
        r.stderr
    );
    assert_eq!(range(&mut e.con, &stream).ids.len(), 1, "replayed twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_is_atomic_and_never_enqueues_a_job_twice() {
    let mut e = env("jobctl-atomic");
    let now = now_ms();
    let mut con = e
        .redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("async connection");
    let stream = e.keys.stream("mlp128", 0);

    // Two replays of the same dead letter (as two operators would race):
    // the second finds the entry gone and writes nothing.
    let a = envelope("mlp128", features(128), now - MINUTE);
    seed_dead(&mut e, &a, now, true);
    let only_a = DeadLetterFilter {
        job_ids: vec![a.id],
        ..Default::default()
    };
    let letters = admin::list_dead(&mut con, &e.keys, &only_a)
        .await
        .expect("list");
    assert_eq!(letters.len(), 1);
    let first = admin::replay(&mut con, &e.keys, &letters[0])
        .await
        .expect("replay");
    assert!(matches!(first, ReplayOutcome::Replayed { .. }), "{first:?}");
    let second = admin::replay(&mut con, &e.keys, &letters[0])
        .await
        .expect("replay again");
    assert_eq!(second, ReplayOutcome::AlreadyReplayed);
    assert_eq!(range(&mut e.con, &stream).ids.len(), 1);

    // A job dead-lettered twice has two entries; once one is replayed the
    // job is queued, and the other entry must not enqueue it again.
    let b = envelope("mlp128", features(128), now - MINUTE);
    seed_dead(&mut e, &b, now - 2_000, true);
    seed_dead(&mut e, &b, now - 1_000, false);
    let only_b = DeadLetterFilter {
        job_ids: vec![b.id],
        ..Default::default()
    };
    let letters = admin::list_dead(&mut con, &e.keys, &only_b)
        .await
        .expect("list");
    assert_eq!(letters.len(), 2);
    let first = admin::replay(&mut con, &e.keys, &letters[0])
        .await
        .expect("replay");
    assert!(matches!(first, ReplayOutcome::Replayed { .. }));
    let second = admin::replay(&mut con, &e.keys, &letters[1])
        .await
        .expect("replay");
    assert_eq!(
        second,
        ReplayOutcome::JobActive {
            status: "queued".into()
        }
    );
    assert_eq!(range(&mut e.con, &stream).ids.len(), 2);
    assert_eq!(dead_job_ids(&mut e), [b.id.to_string()], "kept for review");
    redis::cmd("DEL")
        .arg(e.keys.dead_letters(0))
        .query::<()>(&mut e.con)
        .expect("del");

    // A record that expired is rebuilt from the payload.
    let c = envelope("two_input", features(4), now - 7 * MINUTE);
    seed_dead(&mut e, &c, now, false);
    let letters = admin::list_dead(&mut con, &e.keys, &DeadLetterFilter::default())
        .await
        .expect("list");
    let out = admin::replay(&mut con, &e.keys, &letters[0])
        .await
        .expect("replay");
    assert!(matches!(out, ReplayOutcome::Replayed { .. }));
    let rec = record(&mut e, &c.id);
    let want: BTreeMap<String, String> = [
        ("kind", "predict".to_owned()),
        ("model", "two_input".to_owned()),
        ("created_at", c.submitted_at_ms.to_string()),
        ("status", "queued".to_owned()),
        ("attempts", "0".to_owned()),
        // The payload's size, counted against its tenant until it ends.
        ("bytes", c.encode().expect("encode").len().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(rec, want);

    // Two jobctl processes replaying the same 40 dead letters at once:
    // every job lands on its stream exactly once.
    let jobs: Vec<JobEnvelope> = (0..40)
        .map(|_| envelope("breast_cancer", features(30), now))
        .collect();
    for j in &jobs {
        seed_dead(&mut e, j, now, true);
    }
    let racers: Vec<_> = (0..2)
        .map(|_| {
            let ctl = Ctl {
                url: e.ctl.url.clone(),
                ns: e.ctl.ns.clone(),
            };
            std::thread::spawn(move || ctl.run(&["replay", "--model", "breast_cancer", "--yes"]))
        })
        .collect();
    let mut replayed = 0;
    for r in racers {
        let r = r.join().expect("racer").ok();
        let count = |label: &str| -> usize {
            let summary = r.stdout.lines().last().unwrap_or_default();
            summary
                .split(", ")
                .find_map(|part| part.strip_prefix(label)?.trim().parse().ok())
                .unwrap_or_else(|| panic!("no {label:?} in {summary:?}"))
        };
        replayed += count("replayed ");
    }
    assert_eq!(replayed, 40, "replays of both processes");
    let entries = range(&mut e.con, &e.keys.stream("breast_cancer", 0)).ids;
    let ids: HashSet<Vec<u8>> = entries.iter().map(|s| field_bytes(s, FIELD_ID)).collect();
    assert_eq!(entries.len(), 40, "a job was enqueued twice");
    assert_eq!(ids.len(), 40);
    assert!(dead_job_ids(&mut e).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_job_runs_on_a_real_worker() {
    let mut e = env("jobctl-worker");
    let _worker = Worker::spawn(&e.ctl.url, &e.ctl.ns, &["--block-ms", "200"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !redis::cmd("HEXISTS")
        .arg(e.keys.models())
        .arg("mlp128")
        .query::<bool>(&mut e.con)
        .expect("hexists")
    {
        assert!(Instant::now() < deadline, "worker never published mlp128");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (inputs, outputs) = mlp128_case();
    let job = envelope("mlp128", inputs, now_ms() - MINUTE);
    seed_dead(&mut e, &job, now_ms(), true);
    let r = e.ctl.run(&["replay", "--model", "mlp128", "--yes"]).ok();
    assert!(r.stdout.contains("replayed 1"), "{}", r.stdout);

    let deadline = Instant::now() + Duration::from_secs(30);
    let rec = loop {
        let rec = record(&mut e, &job.id);
        if rec.get("status").map(String::as_str) == Some("succeeded") {
            break rec;
        }
        assert!(
            Instant::now() < deadline,
            "replayed job did not succeed: {rec:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        rec.get("attempts").map(String::as_str),
        Some("1"),
        "counted afresh"
    );
    assert!(!rec.contains_key("error"), "{rec:?}");
    let result: Value = serde_json::from_str(rec.get("result").expect("result")).expect("json");
    assert_outputs_match(&result["outputs"], &outputs, 1e-5);
    assert!(dead_job_ids(&mut e).is_empty());
}

#[test]
fn stats_report_depth_lag_pending_and_the_oldest_pending_age() {
    let mut e = env("jobctl-stats");
    let stream = e.keys.stream("mlp128", 0);
    // A published model with no stream yet, and a stream no worker joined.
    redis::cmd("HSET")
        .arg(e.keys.models())
        .arg("mlp128")
        .arg("{}")
        .arg("idle")
        .arg("{}")
        .query::<()>(&mut e.con)
        .expect("hset models");
    for _ in 0..2 {
        redis::cmd("XADD")
            .arg(e.keys.stream("orphan", 0))
            .arg("*")
            .arg("id")
            .arg("x")
            .query::<String>(&mut e.con)
            .expect("xadd orphan");
    }
    // mlp128: four entries, one delivered to a fake consumer and never
    // acknowledged.
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query::<()>(&mut e.con)
        .expect("xgroup create");
    let entry_ids: Vec<String> = (0..4)
        .map(|i| {
            redis::cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("id")
                .arg(i)
                .query(&mut e.con)
                .expect("xadd")
        })
        .collect();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(GROUP)
        .arg("fake-1")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query(&mut e.con)
        .expect("xreadgroup");
    // Deleting an undelivered entry makes Redis unsure of the lag (it
    // reports none); the count must still be right.
    redis::cmd("XDEL")
        .arg(&stream)
        .arg(&entry_ids[3])
        .query::<()>(&mut e.con)
        .expect("xdel");
    let now = now_ms();
    seed_dead(&mut e, &envelope("mlp128", features(128), now), now, false);
    seed_dead(&mut e, &envelope("two_input", features(4), now), now, false);
    std::thread::sleep(Duration::from_millis(1_100));

    let json = e.ctl.run(&["stats", "--json"]).ok().json();
    assert_eq!(json["dead_letters_total"], 2);
    let models: Vec<&str> = json["models"]
        .as_array()
        .expect("models")
        .iter()
        .map(|m| m["model"].as_str().expect("name"))
        .collect();
    assert_eq!(models, ["idle", "mlp128", "orphan", "two_input"]);
    let m = |name: &str| {
        json["models"]
            .as_array()
            .and_then(|a| a.iter().find(|m| m["model"] == name))
            .cloned()
            .expect("model")
    };
    let q = m("mlp128");
    assert_eq!(q["stream_length"], 3, "{q}");
    assert_eq!(q["pending"], 1, "{q}");
    assert_eq!(q["lag"], 2, "{q}");
    assert_eq!(q["depth"], 3, "{q}");
    assert_eq!(q["group_exists"], true);
    assert_eq!(q["dead_letters"], 1);
    assert_eq!(q["consumers"][0]["name"], "fake-1");
    assert_eq!(q["consumers"][0]["pending"], 1);
    let oldest = &q["oldest_pending"];
    assert_eq!(oldest["entry_id"], entry_ids[0].as_str());
    assert_eq!(oldest["consumer"], "fake-1");
    assert_eq!(oldest["deliveries"], 1);
    let age = oldest["age_ms"].as_u64().expect("age");
    let idle = oldest["idle_ms"].as_u64().expect("idle");
    assert!((1_000..60_000).contains(&age), "age {age}");
    assert!((1_000..60_000).contains(&idle), "idle {idle}");

    let idle_q = m("idle");
    assert_eq!(idle_q["stream_length"], 0);
    assert_eq!(idle_q["depth"], 0);
    assert_eq!(idle_q["group_exists"], false);
    assert!(idle_q["oldest_pending"].is_null());
    let orphan = m("orphan");
    assert_eq!(orphan["lag"], 2, "nothing delivered: all of it waits");
    assert_eq!(orphan["depth"], 2);
    assert_eq!(m("two_input")["dead_letters"], 1);

    let text = e.ctl.run(&["stats"]).ok().stdout;
    let header = text.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("MODEL") && header.contains("OLDEST PENDING"),
        "{text}"
    );
    let row = text
        .lines()
        .find(|l| l.starts_with("mlp128"))
        .unwrap_or_else(|| panic!("{text}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    // MODEL DEPTH PENDING LAG CONSUMERS OLDEST STREAM-LEN DEAD
    assert_eq!(cells[..5], ["mlp128", "3", "1", "2", "1"], "{row}");
    assert!(cells[5].ends_with('s'), "{row}");
    assert_eq!(cells[6..], ["3", "1"], "{row}");
    assert!(text.contains("dead letters: 2 total"), "{text}");
}

#[test]
fn unreachable_redis_is_one_clear_line() {
    let ctl = Ctl {
        url: format!("redis://:hunter2@127.0.0.1:{}", free_port()),
        ns: "infer".into(),
    };
    for args in [
        &["stats"][..],
        &["dead", "list"],
        &["replay", "--all", "--yes"],
    ] {
        let r = ctl.run(args).failed();
        let lines: Vec<&str> = r.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{}", r.stderr);
        assert!(
            lines[0].starts_with("jobctl: cannot reach Redis at 127.0.0.1:"),
            "{}",
            r.stderr
        );
        assert!(!r.stderr.contains("hunter2"), "password printed");
        assert!(r.stdout.is_empty(), "{}", r.stdout);
    }
}
