//! Memory and descriptors of the API per open connection: starts a private
//! redis-server and the API, opens N idle connections (from 127.0.0.2 and
//! up, `--max-connections-per-ip` apart), then sends each a partial request
//! head, and prints the API's VmRSS, VmHWM and open descriptors after each
//! step. Sizes the API's memory limit for `--max-connections`.
//!
//! `cargo run --release -p e2e --example edge_memory -- 4000`

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use e2e::{Api, RedisServer, unique_namespace};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;

fn status(pid: u32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim_start_matches(':').trim().to_owned())
            .unwrap_or_default()
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    format!(
        "VmRSS {}, VmHWM {}, {fds} fds",
        field("VmRSS"),
        field("VmHWM")
    )
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(4000);
    let per_ip = 1000;
    let redis = RedisServer::start();
    let ns = unique_namespace("edge-memory");
    // Long header timeout: the connections must outlive the measurement.
    let api = Api::spawn(
        &redis.url(),
        &ns,
        &[
            "--header-read-timeout-ms",
            "120000",
            "--max-connections-per-ip",
            &per_ip.to_string(),
            "--max-connections",
            &n.to_string(),
        ],
    );
    let pid = api.proc.pid();
    let addr: SocketAddr = api.addr().parse().expect("address");
    tokio::time::sleep(Duration::from_millis(300)).await;
    println!("idle API:                     {}", status(pid));

    let started = Instant::now();
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let from = Ipv4Addr::new(127, 0, 0, 2 + u8::try_from(i / per_ip).expect("< 254k"));
        let socket = TcpSocket::new_v4().expect("socket");
        socket.bind(SocketAddr::from((from, 0))).expect("bind");
        conns.push(socket.connect(addr).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!(
        "{n} idle connections:       {} (connected in {:?})",
        status(pid),
        started.elapsed()
    );
    let head = format!(
        "GET /healthz HTTP/1.1\r\nhost: x\r\nx-pad: {}",
        "a".repeat(2000)
    );
    for c in &mut conns {
        let _ = c.write_all(head.as_bytes()).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!("each with a 2 kB partial head: {}", status(pid));
}
