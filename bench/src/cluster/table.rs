//! The `--cluster` table: the header naming what ran, one section per
//! topology (jobs/s, latency, CPU per job of every process, each Redis
//! node with its role and the partitions it serves) and the ratios between
//! topologies, all from one run so the machine's noise cancels as far as
//! it can.

use std::time::Duration;

use super::{Measured, Run, jobs};
use crate::MODEL;
use crate::report::{Report, machine, ms};

pub(super) fn header(run: &Run<'_>, took: Duration) -> Vec<String> {
    let (nproc, cpu) = machine();
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let cmdline: Vec<String> = std::env::args().collect();
    vec![
        format!("bench: {}", cmdline.join(" ")),
        format!("date: {date}; took {:.0} s", took.as_secs_f64()),
        format!(
            "machine: nproc {nproc}, CPU {cpu}; every redis-server, the api, {} worker(s) and this load generator share it, all on 127.0.0.1",
            run.workers
        ),
        format!(
            "model {MODEL}; per topology: fresh api and workers, 32 warm-up jobs, then {} jobs closed loop (submit, then ?wait=) at concurrency {}; worker args: {:?}",
            jobs(run),
            run.concurrency,
            run.worker_args
        ),
        "CPU per job: utime+stime from /proc/<pid>/stat over the measured jobs only (10 ms ticks)"
            .into(),
    ]
}

fn us(v: f64) -> String {
    format!("{v:.0} us")
}

fn times(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2} x", a / b)
    } else {
        "n/a".into()
    }
}

pub(super) fn report_topology(rep: &mut Report, m: &Measured, base: &Measured) {
    let s = m.label.as_str();
    let vs = |a: f64, b: f64| {
        if std::ptr::eq(m, base) {
            "baseline".to_owned()
        } else {
            format!("{} single node", times(a, b))
        }
    };
    rep.row(
        s,
        "end-to-end closed loop",
        format!("{:.0} jobs/s", m.jps),
        vs(m.jps, base.jps),
    );
    rep.row(
        s,
        "end-to-end latency p50 / p99",
        format!("{} / {}", ms(m.p50), ms(m.p99)),
        String::new(),
    );
    rep.row(
        s,
        &format!("redis CPU per job, {} process(es)", m.nodes.len()),
        us(m.redis_us()),
        vs(m.redis_us(), base.redis_us()),
    );
    let redis = m.redis_us();
    for (n, v) in &m.nodes {
        rep.row(
            s,
            &format!("  {}", n.label),
            us(*v),
            if redis > 0.0 {
                format!("{:.0}% of redis", 100.0 * v / redis)
            } else {
                String::new()
            },
        );
    }
    rep.row(
        s,
        "api CPU per job",
        us(m.api_us),
        vs(m.api_us, base.api_us),
    );
    rep.row(
        s,
        "workers CPU per job (all)",
        us(m.workers_us),
        vs(m.workers_us, base.workers_us),
    );
    rep.row(
        s,
        "load generator CPU per job",
        us(m.loadgen_us),
        String::new(),
    );
    let (nproc, _) = machine();
    rep.row(
        s,
        "total CPU per job",
        us(m.total_us()),
        format!(
            "ceiling on {nproc} cores {:.0} jobs/s",
            nproc as f64 * 1e6 / m.total_us()
        ),
    );
    rep.row(
        s,
        "errors",
        m.errors.total().to_string(),
        m.errors.summary(),
    );
}

pub(super) fn report_ratios(rep: &mut Report, a: &Measured, b: &Measured, c: &Measured) {
    let s = "ratios (same run)";
    let pn = c.label.rsplit(' ').next().unwrap_or("P=n");
    let pair = |x: f64, y: f64| format!("{x:.0} vs {y:.0}");
    rep.row(
        s,
        "jobs/s: cluster P=1 / single",
        times(b.jps, a.jps),
        pair(b.jps, a.jps),
    );
    rep.row(
        s,
        &format!("jobs/s: cluster {pn} / single"),
        times(c.jps, a.jps),
        pair(c.jps, a.jps),
    );
    rep.row(
        s,
        &format!("jobs/s: cluster {pn} / cluster P=1"),
        times(c.jps, b.jps),
        pair(c.jps, b.jps),
    );
    rep.row(
        s,
        "redis CPU/job, all nodes: cluster P=1 / single",
        times(b.redis_us(), a.redis_us()),
        format!("{} us", pair(b.redis_us(), a.redis_us())),
    );
    rep.row(
        s,
        &format!("redis CPU/job, all nodes: cluster {pn} / single"),
        times(c.redis_us(), a.redis_us()),
        format!("{} us", pair(c.redis_us(), a.redis_us())),
    );
    rep.row(
        s,
        "busiest master CPU/job: cluster P=1 / single",
        times(b.busiest_master_us(), a.busiest_master_us()),
        format!("{} us", pair(b.busiest_master_us(), a.busiest_master_us())),
    );
    rep.row(
        s,
        &format!("busiest master CPU/job: cluster {pn} / single"),
        times(c.busiest_master_us(), a.busiest_master_us()),
        format!(
            "{} us; the per-node load a core per node would carry",
            pair(c.busiest_master_us(), a.busiest_master_us())
        ),
    );
    rep.row(
        s,
        &format!("api CPU/job: cluster {pn} / single"),
        times(c.api_us, a.api_us),
        format!("{} us", pair(c.api_us, a.api_us)),
    );
    rep.row(
        s,
        &format!("workers CPU/job: cluster {pn} / single"),
        times(c.workers_us, a.workers_us),
        format!("{} us", pair(c.workers_us, a.workers_us)),
    );
}
