//! The Redis Cluster overlay (`deploy/k8s-cluster/`) against the code: the
//! KEDA triggers name exactly the streams the binaries read for the
//! overlay's `QUEUE_PARTITIONS` (from `shared::queue::keys`, for every model
//! of `models/`), api and workers agree on the queue settings, the URL is a
//! cluster URL the binaries parse, and every partition has a reader.

use std::collections::{BTreeMap, BTreeSet};

use e2e::repo_root;
use serde::Deserialize;
use serde_json::Value;
use shared::queue::keys::{GROUP, Keys};
use shared::redis_conn::Topology;

fn docs(rel: &str) -> Vec<Value> {
    let path = repo_root().join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{rel}: {e}"));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{rel}: {e}")))
        .collect()
}

fn served_models() -> BTreeSet<String> {
    std::fs::read_dir(repo_root().join("models"))
        .expect("models dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "onnx"))
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect()
}

/// Container env of each Deployment the patch sets: deployment → name → value.
fn env_by_deployment() -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for d in docs("deploy/k8s-cluster/cluster-env.yaml") {
        let name = d["metadata"]["name"].as_str().expect("name").to_owned();
        let mut env = BTreeMap::new();
        for c in d["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("containers")
        {
            for e in c["env"].as_array().expect("env") {
                let v = match &e["value"] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                env.insert(e["name"].as_str().expect("env name").to_owned(), v);
            }
        }
        out.insert(name, env);
    }
    out
}

#[test]
fn the_cluster_overlay_agrees_with_the_code() {
    let env = env_by_deployment();
    let (api, worker) = (&env["api"], &env["worker"]);
    for var in ["REDIS_URL", "QUEUE_PARTITIONS", "DURABILITY"] {
        assert_eq!(
            api.get(var),
            worker.get(var),
            "api and worker disagree on {var}"
        );
    }
    let url = &api["REDIS_URL"];
    assert!(
        matches!(Topology::parse(url), Ok(Topology::Cluster(ref n)) if n.len() >= 3),
        "{url} is not a cluster URL with the seed nodes"
    );
    assert_eq!(api["DURABILITY"], "replicated");
    let p: u16 = api["QUEUE_PARTITIONS"].parse().expect("QUEUE_PARTITIONS");
    let concurrency: u16 = worker["WORKER_CONCURRENCY"]
        .parse()
        .expect("WORKER_CONCURRENCY");
    assert!(concurrency >= p, "fewer prediction slots than partitions");

    let keys = Keys::with_partitions("infer", p);
    let want: BTreeSet<String> = served_models()
        .iter()
        .flat_map(|m| {
            keys.all_partitions()
                .map(|i| keys.stream(m, i))
                .collect::<Vec<_>>()
        })
        .collect();
    let so = docs("deploy/k8s-cluster/keda-scaledobject.yaml").remove(0);
    assert_eq!(so["spec"]["scaleTargetRef"]["name"], "worker");
    let (mut lag, mut pending) = (BTreeSet::new(), BTreeSet::new());
    for t in so["spec"]["triggers"].as_array().expect("triggers") {
        assert_eq!(t["type"], "redis-cluster-streams", "{t}");
        let m = &t["metadata"];
        assert_eq!(m["consumerGroup"], GROUP, "{t}");
        assert!(
            m["addresses"]
                .as_str()
                .is_some_and(|a| a.split(',').count() >= 3),
            "{t}: seed addresses"
        );
        let stream = m["stream"].as_str().expect("stream").to_owned();
        if m.get("lagCount").is_some() {
            assert!(m.get("activationLagCount").is_some(), "{t}");
            lag.insert(stream);
        } else {
            assert!(m.get("pendingEntriesCount").is_some(), "{t}");
            pending.insert(stream);
        }
    }
    assert_eq!(lag, want, "one lag trigger per model and partition");
    assert_eq!(pending, want, "one pending trigger per model and partition");

    let k = docs("deploy/k8s-cluster/kustomization.yaml").remove(0);
    let resources: Vec<&str> = k["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(resources, ["../k8s", "keda-scaledobject.yaml"]);
    for patch in k["patches"].as_array().expect("patches") {
        let path = patch["path"].as_str().expect("patch path");
        assert!(
            repo_root().join("deploy/k8s-cluster").join(path).is_file(),
            "{path} missing"
        );
    }
}
