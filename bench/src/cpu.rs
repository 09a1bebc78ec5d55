//! CPU per job: every process's CPU time read around a measured phase and
//! divided by its jobs, with the jobs/s their total allows on this
//! machine's cores, the ceiling no tuning of one process can lift past.

use std::time::Duration;

use crate::procstat::cpu_time;
use crate::report::Report;

/// CPU time of each process of the system under test, and of this one.
pub(crate) struct CpuSample(Vec<(String, Option<Duration>)>);

impl CpuSample {
    pub(crate) fn take(procs: &[(String, u32)]) -> CpuSample {
        let mut v: Vec<_> = procs
            .iter()
            .map(|(name, pid)| (name.clone(), cpu_time(*pid)))
            .collect();
        v.push(("load generator".into(), cpu_time(std::process::id())));
        CpuSample(v)
    }

    /// Rows of CPU microseconds per job between `self` and `later`, their
    /// total, and the jobs/s that total allows on `cores`.
    pub(crate) fn report(
        &self,
        later: &CpuSample,
        jobs: usize,
        cores: usize,
        measured: f64,
        rep: &mut Report,
    ) {
        let section = "CPU per job (closed loop)";
        let mut total = 0.0;
        for ((name, a), (_, b)) in self.0.iter().zip(&later.0) {
            let (Some(a), Some(b)) = (a, b) else { continue };
            let us = (*b - *a).as_secs_f64() * 1e6 / jobs as f64;
            total += us;
            rep.row(section, name, format!("{us:.0} us"), String::new());
        }
        let ceiling = cores as f64 * 1e6 / total;
        rep.row(
            section,
            "total",
            format!("{total:.0} us"),
            format!(
                "ceiling on {cores} cores: {ceiling:.0} jobs/s; measured {measured:.0} ({:.2} x ceiling)",
                measured / ceiling
            ),
        );
    }
}
