//! Smoke: the API and a worker on a real 6-node cluster with partitions.

use std::time::Duration;

use e2e::{Api, RedisCluster, Worker, unique_namespace};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predictions_succeed_on_a_cluster_with_partitions() {
    let cluster = RedisCluster::start();
    let ns = unique_namespace("csmoke");
    let url = cluster.url();
    let _w = Worker::spawn(&url, &ns, &["--partitions", "3"]);
    let api = Api::spawn(&url, &ns, &["--partitions", "3"]);
    let c = api.client();
    c.wait_for_models(&["mlp128"], Duration::from_secs(30))
        .await;
    let mut ids = Vec::new();
    for _ in 0..30 {
        ids.push(
            c.submit("mlp128", &json!({"features": vec![0.1f32; 128]}))
                .await,
        );
    }
    for id in &ids {
        let job = c.wait_terminal(id, Duration::from_secs(30)).await;
        assert_eq!(job["status"], "succeeded", "{job}");
    }
}
