//! The bench's output: one aligned table of (section, metric, value, ratio
//! or note) rows, printed under a header of the command, date and machine,
//! and the small formatting helpers every section shares (milliseconds,
//! percentiles of sorted latencies, what machine this ran on).

use std::time::Duration;

pub(crate) struct Report {
    pub(crate) rows: Vec<[String; 4]>,
}

impl Report {
    pub(crate) fn row(&mut self, section: &str, metric: &str, value: String, ratio: String) {
        self.rows
            .push([section.to_owned(), metric.to_owned(), value, ratio]);
    }

    pub(crate) fn print(&self, header: &[String]) {
        let titles = ["section", "metric", "value", "ratio / note"];
        let mut w = titles.map(str::len);
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                w[i] = w[i].max(c.chars().count());
            }
        }
        for h in header {
            println!("{h}");
        }
        println!();
        let line = |c: &[String; 4]| {
            format!(
                "{:<w0$}  {:<w1$}  {:>w2$}  {}",
                c[0],
                c[1],
                c[2],
                c[3],
                w0 = w[0],
                w1 = w[1],
                w2 = w[2]
            )
            .trim_end()
            .to_owned()
        };
        println!("{}", line(&titles.map(str::to_owned)));
        println!("{}", "-".repeat(w.iter().sum::<usize>() + 6));
        let mut last = String::new();
        for r in &self.rows {
            let mut r = r.clone();
            if r[0] == last {
                r[0].clear();
            } else {
                last.clone_from(&r[0]);
            }
            println!("{}", line(&r));
        }
    }
}

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

pub(crate) fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub(crate) fn machine() -> (usize, String) {
    let n = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    (n, cpu)
}
