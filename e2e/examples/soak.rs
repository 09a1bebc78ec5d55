//! Soak: pushes many mlp128 jobs through a private redis-server, the API and
//! two workers (closed loop: each client submits, then long-polls its job),
//! sampling Redis memory as it goes and after results expire. Shows whether
//! Redis memory stays bounded over a long run.
//!
//! `cargo run --release -p e2e --example soak -- 100000`

use std::time::{Duration, Instant};

use e2e::{Api, RedisServer, Worker, unique_namespace};
use serde_json::json;

fn used_memory(redis: &RedisServer) -> u64 {
    let mut c = redis.client().get_connection().expect("redis");
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query(&mut c)
        .expect("info");
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn keys(redis: &RedisServer) -> u64 {
    let mut c = redis.client().get_connection().expect("redis");
    redis::cmd("DBSIZE").query(&mut c).expect("dbsize")
}

#[tokio::main]
async fn main() {
    let jobs: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let ttl = 5;
    let redis = RedisServer::start();
    let ns = unique_namespace("soak");
    let args = ["--result-ttl-secs", "5", "--trim-interval-secs", "2"];
    let _w1 = Worker::spawn(&redis.url(), &ns, &args);
    let _w2 = Worker::spawn(&redis.url(), &ns, &args);
    let api = Api::spawn(&redis.url(), &ns, &[]);
    let client = api.client();
    client
        .wait_for_models(&["mlp128"], Duration::from_secs(30))
        .await;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let base = used_memory(&redis);
    println!(
        "result TTL {ttl} s; baseline used_memory {:.2} MiB, {} keys",
        mib(base),
        keys(&redis)
    );

    let body = json!({ "features": (0..128).map(|i| i as f32 / 128.0).collect::<Vec<_>>() });
    let conc = 64;
    let step = jobs / 10;
    let start = Instant::now();
    let mut done = 0;
    let mut peak = base;
    while done < jobs {
        let wave = step.min(jobs - done);
        let mut set = tokio::task::JoinSet::new();
        for w in 0..conc {
            let (client, body) = (client.clone(), body.clone());
            set.spawn(async move {
                for _ in (w..wave).step_by(conc) {
                    let id = client.submit("mlp128", &body).await;
                    let job = client.wait_terminal(&id, Duration::from_secs(60)).await;
                    assert_eq!(job["status"], "succeeded", "{job}");
                }
            });
        }
        while let Some(r) = set.join_next().await {
            r.expect("client task");
        }
        done += wave;
        let m = used_memory(&redis);
        peak = peak.max(m);
        println!(
            "{done:>7} jobs  {:>6.1} s  used_memory {:>7.2} MiB  keys {:>6}",
            start.elapsed().as_secs_f64(),
            mib(m),
            keys(&redis)
        );
    }
    tokio::time::sleep(Duration::from_secs(ttl + 4)).await;
    let end = used_memory(&redis);
    println!(
        "after TTL + trim: used_memory {:.2} MiB ({:+.2} MiB vs baseline), {} keys; peak {:.2} MiB; {:.0} jobs/s",
        mib(end),
        mib(end) - mib(base),
        keys(&redis),
        mib(peak),
        jobs as f64 / start.elapsed().as_secs_f64()
    );
}
