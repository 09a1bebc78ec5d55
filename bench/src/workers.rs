//! The workers under test: spawning them, and reading or dropping the
//! batch size (`--read-count` / `--max-batch`) in the extra worker
//! arguments, for the run that turns batching off.

use e2e::Worker;

pub(crate) fn spawn_workers(redis: &str, ns: &str, n: usize, args: &[String]) -> Vec<Worker> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (0..n).map(|_| Worker::spawn(redis, ns, &args)).collect()
}

/// The worker arguments without any batch size (`--read-count`/`--max-batch`).
pub(crate) fn without_batch_flag(args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip = false;
    for a in args {
        if skip {
            skip = false;
            continue;
        }
        if a == "--read-count" || a == "--max-batch" {
            skip = true;
            continue;
        }
        if a.starts_with("--read-count=") || a.starts_with("--max-batch=") {
            continue;
        }
        out.push(a.clone());
    }
    out
}

/// The batch size the arguments set, the worker's default (16) if none.
pub(crate) fn batch_flag(args: &[String]) -> String {
    let mut v = "16".to_owned();
    for (i, a) in args.iter().enumerate() {
        if a == "--read-count" || a == "--max-batch" {
            if let Some(n) = args.get(i + 1) {
                v.clone_from(n);
            }
        } else if let Some(n) = a
            .strip_prefix("--read-count=")
            .or_else(|| a.strip_prefix("--max-batch="))
        {
            v = n.to_owned();
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_batch_size_is_read_and_dropped_in_both_spellings() {
        assert_eq!(batch_flag(&[]), "16");
        assert_eq!(batch_flag(&args(&["--read-count", "8"])), "8");
        assert_eq!(
            batch_flag(&args(&["--max-batch=4", "--lease-ms", "900"])),
            "4"
        );
        assert_eq!(
            without_batch_flag(&args(&[
                "--read-count",
                "8",
                "--lease-ms",
                "900",
                "--max-batch=4"
            ])),
            args(&["--lease-ms", "900"])
        );
    }
}
