//! The queue reads behind `/metrics` (`shared::queue::stats::sample`) and
//! `jobctl stats` / `jobctl dead list` (`shared::queue::admin`) against a
//! real redis-server, over RESP2 and RESP3: both report the same gauges of
//! every stream, a lag Redis cannot tell is counted across XRANGE pages, and
//! a dead-letter queue longer than a page is listed once, in order.

use e2e::{RedisServer, unique_namespace};
use redis::aio::MultiplexedConnection;
use shared::queue::admin::{self, DeadLetterFilter};
use shared::queue::keys::{GROUP, TRAIN};
use shared::queue::stats;
use shared::queue::wire::{FIELD_ID, FIELD_JOB, dead};
use shared::queue::{Keys, QueueError};

/// More than one XRANGE page (500 entries) on either side of a boundary.
const BIG: usize = 1_200;

async fn connect(redis: &RedisServer, resp3: bool) -> MultiplexedConnection {
    let url = if resp3 {
        format!("{}/?protocol=resp3", redis.url())
    } else {
        redis.url()
    };
    redis::Client::open(url)
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("async connection")
}

fn xadd(pipe: &mut redis::Pipeline, stream: &str, i: usize) {
    pipe.cmd("XADD")
        .arg(stream)
        .arg("*")
        .arg(FIELD_ID)
        .arg(i)
        .ignore();
}

/// Creates the group, appends `entries`, delivers the first `delivered` to
/// one consumer and deletes one entry nobody was given: Redis then reports
/// no lag, so it has to be counted.
fn seed_stream(con: &mut redis::Connection, stream: &str, entries: usize, delivered: usize) {
    let mut pipe = redis::pipe();
    pipe.cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .ignore();
    for i in 0..entries {
        xadd(&mut pipe, stream, i);
    }
    pipe.cmd("XREADGROUP")
        .arg("GROUP")
        .arg(GROUP)
        .arg("consumer-1")
        .arg("COUNT")
        .arg(delivered)
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .ignore();
    pipe.query::<()>(con).expect("seed stream");
    let ids: Vec<String> = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query::<redis::streams::StreamRangeReply>(con)
        .expect("xrange")
        .ids
        .into_iter()
        .map(|e| e.id)
        .collect();
    redis::cmd("XDEL")
        .arg(stream)
        .arg(&ids[delivered])
        .query::<()>(con)
        .expect("xdel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_jobctl_read_the_same_gauges_in_both_protocols() {
    let redis = RedisServer::start();
    let keys = Keys::new(&unique_namespace("gauges"));
    let mut con = redis.client().get_connection().expect("connection");
    for model in ["published", "busy", "big", "waiting"] {
        redis::cmd("HSET")
            .arg(keys.models())
            .arg(model)
            .arg("{}")
            .query::<()>(&mut con)
            .expect("hset models");
    }
    seed_stream(&mut con, &keys.stream("busy", 0), 4, 1);
    seed_stream(&mut con, &keys.stream("big", 0), BIG, 100);
    let mut pipe = redis::pipe();
    for i in 0..2 {
        xadd(&mut pipe, &keys.stream("waiting", 0), i);
    }
    xadd(&mut pipe, &keys.stream(TRAIN, 0), 0);
    pipe.query::<()>(&mut con)
        .expect("seed streams without a group");

    // (length, lag, pending, group) per model.
    let want = [
        (TRAIN, (1, 1, 0, false)),
        ("big", (BIG as u64 - 1, BIG as u64 - 101, 100, true)),
        ("busy", (3, 2, 1, true)),
        ("published", (0, 0, 0, false)),
        ("waiting", (2, 2, 0, false)),
    ];
    for resp3 in [false, true] {
        let mut conn = connect(&redis, resp3).await;
        let sample = stats::sample(&mut conn, &keys).await.expect("sample");
        let overview = admin::queue_stats(&mut conn, &keys)
            .await
            .expect("queue stats");
        let sampled: Vec<&str> = sample.streams.iter().map(|s| s.model.as_str()).collect();
        let listed: Vec<&str> = overview.queues.iter().map(|q| q.model.as_str()).collect();
        let names: Vec<&str> = want.iter().map(|(m, _)| *m).collect();
        assert_eq!(sampled, names, "resp3 {resp3}");
        assert_eq!(listed, names, "resp3 {resp3}");
        for ((model, (length, lag, pending, group)), (s, q)) in
            want.iter().zip(sample.streams.iter().zip(&overview.queues))
        {
            let got = (q.stream_length, q.lag, q.pending, q.group_exists);
            assert_eq!(
                got,
                (*length, *lag, *pending, *group),
                "{model} resp3 {resp3}"
            );
            assert_eq!((s.length, s.lag, s.pending), (*length, *lag, *pending));
            assert_eq!(s.consumers, q.consumers.len() as u64, "{model}");
            match &q.oldest_pending {
                None => assert_eq!(s.oldest_pending_age_ms, 0, "{model}"),
                Some(p) => {
                    assert_eq!(p.consumer, "consumer-1");
                    assert_eq!(p.deliveries, 1);
                    // Two readings a few ms apart of the same entry.
                    assert!(
                        p.age_ms.abs_diff(s.oldest_pending_age_ms) < 1_000,
                        "{model}"
                    );
                }
            }
        }
        let busy = &overview.queues[2];
        assert_eq!(busy.consumers[0].name, "consumer-1");
        assert_eq!(busy.consumers[0].pending, 1);
        assert_eq!(overview.dead_letters, 0);
        assert_eq!(sample.dead_letters, 0);
    }
}

/// A stream entry id as the pair Redis orders by.
fn id_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').expect("entry id");
    (ms.parse().expect("ms"), seq.parse().expect("seq"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_queue_longer_than_a_page_is_listed_once_in_order() {
    let redis = RedisServer::start();
    let keys = Keys::new(&unique_namespace("dead-pages"));
    let mut con = redis.client().get_connection().expect("connection");
    let mut pipe = redis::pipe();
    for i in 0..BIG {
        let model = if i % 3 == 0 { "a" } else { "b" };
        pipe.cmd("XADD")
            .arg(keys.dead_letters(0))
            .arg("*")
            .arg(FIELD_ID)
            .arg(format!("not-a-uuid-{i}"))
            .arg(FIELD_JOB)
            .arg(b"\xc1".as_slice())
            .arg(dead::MODEL)
            .arg(model)
            .arg(dead::ATTEMPTS)
            .arg(3)
            .arg(dead::FAILED_AT)
            .arg(i)
            .ignore();
    }
    pipe.query::<()>(&mut con).expect("seed dead letters");

    for resp3 in [false, true] {
        let mut conn = connect(&redis, resp3).await;
        let all = admin::list_dead(&mut conn, &keys, &DeadLetterFilter::default())
            .await
            .expect("list");
        assert_eq!(all.len(), BIG);
        let ids: Vec<(u64, u64)> = all.iter().map(|d| id_order(&d.entry_id)).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "entries repeat or go back"
        );
        let times: Vec<i64> = all.iter().map(|d| d.failed_at_ms).collect();
        assert_eq!(times, (0..BIG as i64).collect::<Vec<_>>());
        assert!(
            all.iter()
                .all(|d| d.attempts == 3 && d.replay_blocker().is_some())
        );

        let only_a = DeadLetterFilter {
            model: Some("a".into()),
            since_ms: Some(300),
            until_ms: Some(900),
            limit: Some(150),
            ..Default::default()
        };
        let a = admin::list_dead(&mut conn, &keys, &only_a)
            .await
            .expect("list a");
        assert_eq!(a.len(), 150);
        assert_eq!(a[0].failed_at_ms, 300);
        assert!(a.iter().all(|d| d.model == "a"));

        let overview = admin::queue_stats(&mut conn, &keys)
            .await
            .expect("queue stats");
        assert_eq!(overview.dead_letters, BIG as u64);
        let dead_of = |m: &str| {
            overview
                .queues
                .iter()
                .find(|q| q.model == m)
                .and_then(|q| q.dead_letters)
        };
        assert_eq!(dead_of("a"), Some(BIG as u64 / 3));
        assert_eq!(dead_of("b"), Some(BIG as u64 - BIG as u64 / 3));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_is_an_unavailable_error() {
    let redis = RedisServer::start();
    let keys = Keys::new(&unique_namespace("gone"));
    let mut conn = connect(&redis, false).await;
    drop(redis);
    let e: QueueError = stats::sample(&mut conn, &keys).await.expect_err("gone");
    assert!(e.is_unavailable(), "{e}");
    let e = admin::queue_stats(&mut conn, &keys)
        .await
        .expect_err("gone");
    assert!(e.is_unavailable(), "{e}");
}
