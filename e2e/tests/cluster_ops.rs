//! What an operator reads and does on a cluster with several partitions:
//! dead letters land in the partitions of their jobs, and `jobctl` lists,
//! counts and replays them across all partitions and nodes; `jobctl stats`
//! and the API's `/metrics` add every partition up.

use std::process::Command;
use std::time::Duration;

use e2e::{Api, ModelsDir, RedisCluster, Worker, binary, unique_namespace};
use serde_json::{Value, json};
use shared::queue::keys::{Keys, partition_of};

const P: &str = "3";

fn jobctl(url: &str, ns: &str, args: &[&str]) -> String {
    let out = Command::new(binary("jobctl"))
        .args(["--redis-url", url, "--namespace", ns, "--partitions", P])
        .args(args)
        .output()
        .expect("run jobctl");
    assert!(
        out.status.success(),
        "jobctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_of_every_partition_are_listed_counted_and_replayed() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let ns = unique_namespace("cops");
    let models = ModelsDir::with(&[("flaky", "testdata/flaky_broken.onnx")]);
    let args = [
        "--partitions",
        P,
        "--max-attempts",
        "2",
        "--retry-base-ms",
        "50",
        "--retry-max-ms",
        "100",
        "--block-ms",
        "200",
    ];
    let w = Worker::spawn_with_models(&url, &ns, &models.path, &args);
    let api = Api::spawn(&url, &ns, &["--partitions", P]);
    let c = api.client();
    c.wait_for_models(&["flaky"], Duration::from_secs(30)).await;

    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(
            c.submit("flaky", &json!({ "features": [1.0, 2.0, 3.0, 4.0] }))
                .await,
        );
    }
    let keys = Keys::with_partitions(&ns, 3);
    let mut partitions: Vec<u16> = ids
        .iter()
        .map(|id| partition_of(&id.parse().expect("uuid")))
        .collect();
    partitions.sort();
    partitions.dedup();
    assert_eq!(partitions, [0, 1, 2], "jobs are dealt over every partition");
    let masters: std::collections::BTreeSet<u16> = keys
        .all_partitions()
        .map(|p| cluster.master_of_key(&keys.dead_letters(p)))
        .collect();
    assert_eq!(
        masters.len(),
        3,
        "the three partitions live on three masters"
    );
    for id in &ids {
        let job = c.wait_terminal(id, Duration::from_secs(30)).await;
        assert_eq!(job["status"], "failed", "{job}");
    }

    let listed = jobctl(&url, &ns, &["dead", "list", "--json"]);
    let listed: Vec<Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let mut got: Vec<String> = listed
        .iter()
        .map(|d| d["job_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    got.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(got, want, "every partition's dead letters are listed");

    let stats: Value =
        serde_json::from_str(&jobctl(&url, &ns, &["stats", "--json"])).expect("stats json");
    assert_eq!(stats["dead_letters_total"], 6, "{stats}");
    let metrics = c.get("/metrics").await.text;
    assert!(
        metrics.lines().any(|l| l == "onnxq_dead_letters 6"),
        "the gauge adds up every partition: {}",
        metrics
            .lines()
            .filter(|l| l.contains("dead_letters"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Fixed: every dead letter goes back to its own partition and succeeds.
    drop(w);
    models.put("flaky", "testdata/flaky_fixed.onnx");
    let _w = Worker::spawn_with_models(&url, &ns, &models.path, &args);
    jobctl(&url, &ns, &["replay", "--model", "flaky", "--yes"]);
    for id in &ids {
        let job = c.wait_terminal(id, Duration::from_secs(30)).await;
        assert_eq!(job["status"], "succeeded", "{job}");
    }
    let stats: Value =
        serde_json::from_str(&jobctl(&url, &ns, &["stats", "--json"])).expect("stats json");
    assert_eq!(stats["dead_letters_total"], 0, "{stats}");
}
