//! A parser for the Prometheus text exposition format (version 0.0.4), so
//! tests assert on samples and label sets rather than on substrings: label
//! values are unescaped, every sample line must parse, and histograms are
//! checked for consistency (cumulative buckets, `+Inf` bucket = count).

use std::collections::{BTreeMap, HashMap};

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed scrape.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub samples: Vec<Sample>,
    /// `# TYPE` lines: metric family → counter, gauge, histogram, ...
    pub types: HashMap<String, String>,
    pub help: HashMap<String, String>,
}

/// A histogram series: the buckets (upper bound → cumulative count), the
/// count and the sum.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    pub buckets: Vec<(f64, f64)>,
    pub count: f64,
    pub sum: f64,
}

impl Histogram {
    /// The cumulative count of the bucket whose upper bound is `le`.
    pub fn bucket(&self, le: f64) -> Option<f64> {
        self.buckets.iter().find(|(b, _)| *b == le).map(|(_, c)| *c)
    }
}

impl Scrape {
    /// Parses a whole scrape; any line that is neither a comment, blank nor
    /// a well-formed sample is an error.
    pub fn parse(text: &str) -> Result<Scrape, String> {
        let mut scrape = Scrape::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_end();
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, ty) = rest
                    .split_once(' ')
                    .ok_or_else(|| format!("line {}: bad TYPE: {line}", n + 1))?;
                scrape.types.insert(name.to_owned(), ty.trim().to_owned());
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
                scrape.help.insert(name.to_owned(), help.to_owned());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let sample = parse_sample(line).map_err(|e| format!("line {}: {e}: {line}", n + 1))?;
            scrape.samples.push(sample);
        }
        Ok(scrape)
    }

    /// Samples of `name` whose labels include every `(key, value)` of `with`.
    pub fn find<'a>(
        &'a self,
        name: &'a str,
        with: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && with
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
        })
    }

    /// The value of the one sample of `name` with exactly the labels `labels`
    /// (no more, no fewer); `None` if there is none.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut hits = self
            .samples
            .iter()
            .filter(|s| s.name == name && s.labels == want);
        let first = hits.next()?;
        assert!(hits.next().is_none(), "duplicate series {name}{want:?}");
        Some(first.value)
    }

    /// The sum of every sample of `name` matching `with` (0 when none).
    pub fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.find(name, with).map(|s| s.value).sum()
    }

    /// The histogram `name` with exactly the labels `labels`, checked for
    /// consistency; `None` if it has no samples.
    pub fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Option<Histogram> {
        let count = self.value(&format!("{name}_count"), labels)?;
        let sum = self.value(&format!("{name}_sum"), labels)?;
        let bucket_name = format!("{name}_bucket");
        let mut buckets: Vec<(f64, f64)> = self
            .samples
            .iter()
            .filter(|s| s.name == bucket_name)
            .filter(|s| {
                s.labels.len() == labels.len() + 1
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
            })
            .map(|s| {
                let le = s
                    .labels
                    .get("le")
                    .unwrap_or_else(|| panic!("{bucket_name} sample without le"));
                (parse_value(le).expect("le is a number"), s.value)
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(
            !buckets.is_empty(),
            "{name}{labels:?} has no buckets: not rendered as a histogram"
        );
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{name}{labels:?}: buckets are not cumulative: {buckets:?}"
        );
        assert_eq!(
            buckets.last().map(|b| b.0),
            Some(f64::INFINITY),
            "{name}{labels:?} lacks a +Inf bucket"
        );
        assert_eq!(
            buckets.last().map(|b| b.1),
            Some(count),
            "{name}{labels:?}: +Inf bucket differs from the count"
        );
        Some(Histogram {
            buckets,
            count,
            sum,
        })
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if name.is_empty()
        || name.starts_with(|c: char| c.is_ascii_digit())
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        let (parsed, tail) = parse_labels(after)?;
        labels = parsed;
        rest = tail;
    }
    let mut fields = rest.split_whitespace();
    let value = parse_value(fields.next().ok_or("no value")?)?;
    // An optional timestamp may follow; nothing else may.
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .map_err(|_| format!("bad timestamp {ts:?}"))?;
    }
    if fields.next().is_some() {
        return Err("trailing text".into());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `k="v",k2="v2"}` and returns the labels and the text after `}`.
fn parse_labels(mut s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    loop {
        s = s.trim_start();
        if let Some(tail) = s.strip_prefix('}') {
            return Ok((labels, tail));
        }
        let eq = s.find('=').ok_or("label without =")?;
        let key = s[..eq].trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("bad label name {key:?}"));
        }
        s = s[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value".into()),
            }
        };
        if labels.insert(key.to_owned(), value).is_some() {
            return Err(format!("label {key} twice"));
        }
        s = &s[end + 1..];
        s = s.trim_start();
        if let Some(tail) = s.strip_prefix(',') {
            s = tail;
        } else if !s.starts_with('}') {
            return Err("expected , or }".into());
        }
    }
}

fn parse_value(v: &str) -> Result<f64, String> {
    match v {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => v.parse().map_err(|_| format!("bad value {v:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_escapes_histograms_and_rejects_junk() {
        let text = r#"# HELP c A counter.
# TYPE c counter
c{a="x",b="q\"uo\\te\nd"} 3
g 1.5 1700000000000
# TYPE h histogram
h_bucket{m="a",le="0.5"} 1
h_bucket{m="a",le="1"} 2
h_bucket{m="a",le="+Inf"} 3
h_sum{m="a"} 4.25
h_count{m="a"} 3
"#;
        let s = Scrape::parse(text).unwrap();
        assert_eq!(s.types["c"], "counter");
        assert_eq!(
            s.value("c", &[("a", "x"), ("b", "q\"uo\\te\nd")]),
            Some(3.0)
        );
        assert_eq!(
            s.value("c", &[("a", "x")]),
            None,
            "labels must match exactly"
        );
        assert_eq!(s.sum("c", &[("a", "x")]), 3.0);
        assert_eq!(s.value("g", &[]), Some(1.5));
        let h = s.histogram("h", &[("m", "a")]).unwrap();
        assert_eq!((h.count, h.sum, h.bucket(1.0)), (3.0, 4.25, Some(2.0)));
        for bad in ["x{a=1} 2", "x{a=\"1\" 2", "x 1 2 3", "x{} y", "1x 2"] {
            assert!(Scrape::parse(bad).is_err(), "{bad}");
        }
    }
}
