//! The parsers an untrusted client feeds, at their limits: a dataset at the
//! API's size limit (`--max-dataset-bytes`, 32 MiB by default) in its worst
//! legal shape, half of it (the time must scale linearly), and the shapes the
//! caps refuse (a header wider than [`trainer::dataset::MAX_COLUMNS`], a line
//! longer than [`trainer::dataset::MAX_LINE_BYTES`]), which must be refused
//! in a time that does not depend on how wide the attacker made them.
//!
//! The parse runs in this process, as the API runs it (`trainer::Dataset::
//! from_csv`), on one core; the figures are times, so they come with the
//! ratio that matters (double the bytes, about double the time).

use std::time::{Duration, Instant};

use trainer::Dataset;
use trainer::dataset::{MAX_COLUMNS, MAX_LINE_BYTES};

/// The API's default `--max-dataset-bytes`.
pub(crate) const LIMIT_BYTES: usize = 32 * 1024 * 1024;

/// A dataset of about `bytes` bytes: as many columns as allowed, each value
/// a short number, so every byte goes through the per-field checks.
pub(crate) fn wide_csv(bytes: usize) -> Vec<u8> {
    let cols = MAX_COLUMNS;
    let mut out = Vec::with_capacity(bytes + 64 * cols);
    for j in 0..cols - 1 {
        out.extend_from_slice(format!("c{j},").as_bytes());
    }
    out.extend_from_slice(b"target\n");
    let mut row = Vec::new();
    for j in 0..cols - 1 {
        row.extend_from_slice(if j % 2 == 0 { b"0.5," } else { b"-1," });
    }
    row.extend_from_slice(b"1\n");
    while out.len() + row.len() <= bytes {
        out.extend_from_slice(&row);
    }
    out
}

/// Best of `n` parses of `bytes` (the least disturbed by the rest of the
/// machine), and whether they succeeded.
pub(crate) fn time_parse(bytes: &[u8], n: usize) -> (Duration, bool) {
    let mut best = Duration::MAX;
    let mut ok = false;
    for _ in 0..n.max(1) {
        let t = Instant::now();
        ok = Dataset::from_csv(bytes, "target").is_ok();
        best = best.min(t.elapsed());
    }
    (best, ok)
}

/// Time of the full dataset over the half one above which the parse is not
/// linear: 2 is linear, 4 quadratic; between them, noise.
pub(crate) const LINEAR_AT_MOST: f64 = 3.2;

/// The cases' rows (metric, value, note), and whether every check held:
/// the worst legal dataset parses, linearly, and the attack shapes are
/// refused.
pub(crate) fn measure(quick: bool) -> (Vec<(String, String, String)>, bool) {
    let n = if quick { 1 } else { 3 };
    let full = wide_csv(LIMIT_BYTES);
    let half = wide_csv(LIMIT_BYTES / 2);
    let (t_full, ok_full) = time_parse(&full, n);
    let (t_half, ok_half) = time_parse(&half, n);
    let wide_header: Vec<u8> = (0..80_000)
        .map(|j| format!("c{j},"))
        .collect::<String>()
        .into_bytes();
    let (t_wide, accepted_wide) = time_parse(&[wide_header.as_slice(), b"target\n1\n"].concat(), n);
    let mut long_line = b"a,target\n".to_vec();
    long_line.extend(std::iter::repeat_n(b'1', MAX_LINE_BYTES + 1));
    long_line.extend_from_slice(b",0\n");
    let (t_long, accepted_long) = time_parse(&long_line, n);
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1e3);
    let ratio = t_full.as_secs_f64() / t_half.as_secs_f64().max(1e-9);
    let held = ok_full && ok_half && ratio <= LINEAR_AT_MOST && !accepted_wide && !accepted_long;
    let rows = vec![
        (
            format!(
                "dataset at the limit: {:.0} MiB, {MAX_COLUMNS} columns",
                mib(full.len())
            ),
            ms(t_full),
            format!(
                "{:.0} MiB/s{}",
                mib(full.len()) / t_full.as_secs_f64(),
                if ok_full { "" } else { "; REFUSED" }
            ),
        ),
        (
            format!("half of it: {:.0} MiB", mib(half.len())),
            ms(t_half),
            format!(
                "full / half = {ratio:.2} (linear: 2, quadratic: 4; at most {LINEAR_AT_MOST} passes){}",
                if ok_half { "" } else { "; REFUSED" }
            ),
        ),
        (
            "80,000-column header (the reproduced attack)".into(),
            ms(t_wide),
            if accepted_wide {
                "ACCEPTED".into()
            } else {
                "refused: too many columns".into()
            },
        ),
        (
            format!("a line over {} MiB", MAX_LINE_BYTES >> 20),
            ms(t_long),
            if accepted_long {
                "ACCEPTED".into()
            } else {
                "refused: line too long".into()
            },
        ),
    ];
    (rows, held)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_legal_shape_parses() {
        let small = wide_csv(400_000);
        assert!(small.len() <= 400_000);
        let ds = Dataset::from_csv(&small, "target").expect("a legal dataset");
        assert_eq!(ds.n_features(), MAX_COLUMNS - 1);
        assert!(ds.n_rows() >= 5, "{}", ds.n_rows());
    }
}
