//! The deployment files against the real binaries: `compose.yaml`,
//! `deploy/k8s/*.yaml`, `deploy/prometheus/prometheus.yml`, the Grafana
//! provisioning and dashboard, and the `Dockerfile`. Scrapers read the API
//! on its operator listener (`OPS_LISTEN`, never published), since its
//! public `/metrics` leaves tenants' models out.
//!
//! Nothing here trusts a hand-kept list: flags and environment variables come
//! from the binaries' own `--help`, probe paths are requested from the real
//! `api` and `worker` started with the manifests' environment (listen ports
//! swapped for free loopback ones), stream names and the consumer group come
//! from `shared::queue::keys`, the model list from `models/*.onnx`, and the
//! dashboard's metric names and labels from real `/metrics` scrapes after a
//! run of jobs covering success, failure, retry, dead letter, cancel,
//! deadline, rejection and deduplication.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use e2e::{Client, ModelsDir, RedisServer, StatusCode, binary, free_port, ort_lib, repo_root};
use promql_parser::parser::{Expr, VectorSelector};
use promql_parser::util::{ExprVisitor, walk_expr};
use serde::Deserialize;
use serde_json::{Value, json};
use shared::queue::keys::{GROUP, Keys};

// ------------------------------------------------------------ file loading

fn read(rel: &str) -> String {
    let path = repo_root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every non-empty document of a YAML file, as JSON values.
fn yaml_docs(rel: &str) -> Vec<Value> {
    let text = read(rel);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{rel} does not parse: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn yaml(rel: &str) -> Value {
    let mut docs = yaml_docs(rel);
    assert_eq!(docs.len(), 1, "{rel}: expected one YAML document");
    docs.remove(0)
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {v}"))
}

/// A scalar YAML value as text (`8080`, `"8080"` and `true` alike).
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn arr<'a>(v: &'a Value, what: &str) -> &'a Vec<Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("{what}: expected a list, got {v}"))
}

fn strings(v: &Value, what: &str) -> Vec<String> {
    arr(v, what)
        .iter()
        .map(|s| scalar(s).unwrap_or_else(|| panic!("{what}: not a scalar: {s}")))
        .collect()
}

fn port_of_addr(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("{addr:?} is not host:port"))
}

/// Models the image serves: `models/*.onnx` (the worker does not recurse).
fn served_models() -> BTreeSet<String> {
    let dir = repo_root().join("models");
    let models: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "onnx"))
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    assert!(!models.is_empty(), "no models/*.onnx");
    models
}

// ------------------------------------------------------ the binaries' help

/// What a binary really accepts, read from its `--help` (clap prints every
/// environment fallback as `[env: NAME=...]`).
struct Help {
    flags: BTreeSet<String>,
    envs: BTreeSet<String>,
}

fn help(bin: &str) -> Help {
    let out = Command::new(binary(bin))
        .arg("--help")
        .env_clear()
        .output()
        .unwrap_or_else(|e| panic!("cannot run {bin} --help: {e}"));
    assert!(out.status.success(), "{bin} --help failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let envs: BTreeSet<String> = text
        .split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split_once('=').map(|(name, _)| name.to_owned()))
        .collect();
    let flags: BTreeSet<String> = text
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with('-'))
        .flat_map(|l| {
            l.split_whitespace()
                .take_while(|t| t.starts_with('-'))
                .map(|t| t.trim_end_matches(',').to_owned())
                .collect::<Vec<_>>()
        })
        .filter(|t| t.starts_with("--"))
        .collect();
    // The parse itself must work, or every check below passes vacuously.
    assert!(
        envs.contains("REDIS_URL") && flags.contains("--redis-url") && flags.contains("--help"),
        "cannot read flags and env vars from {bin} --help:\n{text}"
    );
    Help { flags, envs }
}

// ------------------------------------------------ containers of both files

#[derive(Debug, Clone)]
struct Probe {
    kind: String,
    path: String,
    /// The port as the manifest names it, resolved to a number.
    port: u16,
}

/// An `api` or `worker` container as a deployment file runs it.
#[derive(Debug, Clone)]
struct Container {
    origin: String,
    binary: String,
    args: Vec<String>,
    /// `None` for values taken from elsewhere (`valueFrom`).
    env: BTreeMap<String, Option<String>>,
    /// Named container ports (k8s); empty for compose.
    ports: BTreeMap<String, u16>,
    probes: Vec<Probe>,
    /// Seconds between SIGTERM and SIGKILL.
    grace_secs: Option<u64>,
    pre_stop_sleep_secs: u64,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    resources: Value,
}

impl Container {
    fn env(&self, name: &str) -> Option<&str> {
        self.env.get(name).and_then(|v| v.as_deref())
    }

    /// The env var that sets this binary's HTTP listener.
    fn listen_var(&self) -> &'static str {
        match self.binary.as_str() {
            "api" => "LISTEN_ADDR",
            "worker" => "METRICS_LISTEN",
            other => panic!("{}: unexpected binary {other}", self.origin),
        }
    }

    /// The port the process listens on, from its environment.
    fn listen_port(&self) -> u16 {
        let var = self.listen_var();
        port_of_addr(self.env(var).unwrap_or_else(|| {
            panic!(
                "{}: {var} must be set explicitly (probes and scrapes depend on it)",
                self.origin
            )
        }))
    }

    /// The port its metrics are scraped on: the API's operator listener
    /// (its public `/metrics` leaves tenants' models out), a worker's
    /// metrics port.
    fn scrape_port(&self) -> u16 {
        match self.binary.as_str() {
            "api" => port_of_addr(self.env("OPS_LISTEN").unwrap_or_else(|| {
                panic!(
                    "{}: set OPS_LISTEN: scrapers need the operator listener, since the public \
                     /metrics leaves every tenant's series out",
                    self.origin
                )
            })),
            _ => self.listen_port(),
        }
    }
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| scalar(v).map(|s| (k.clone(), s)))
                .collect()
        })
        .unwrap_or_default()
}

fn binary_of(command: &[String], origin: &str) -> String {
    let first = command
        .first()
        .unwrap_or_else(|| panic!("{origin}: no command: the image's default would run the api"));
    let name = Path::new(first)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    assert!(
        name == "api" || name == "worker",
        "{origin}: command {command:?} runs neither api nor worker"
    );
    name
}

// ------------------------------------------------------------- kubernetes

struct K8s {
    /// (file, document) for every manifest.
    docs: Vec<(String, Value)>,
}

impl K8s {
    fn load() -> K8s {
        let dir = repo_root().join("deploy/k8s");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
            .collect();
        files.sort();
        let mut docs = Vec::new();
        for f in files {
            for d in yaml_docs(&format!("deploy/k8s/{f}")) {
                for key in ["apiVersion", "kind"] {
                    assert!(
                        d[key].is_string(),
                        "deploy/k8s/{f}: a document without {key}"
                    );
                }
                docs.push((f.clone(), d));
            }
        }
        K8s { docs }
    }

    fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a (String, Value)> + 'a {
        self.docs.iter().filter(move |(_, d)| d["kind"] == kind)
    }

    fn one<'a>(&'a self, kind: &'a str, name: &str) -> &'a Value {
        let found: Vec<&Value> = self
            .of_kind(kind)
            .filter(|(_, d)| d["metadata"]["name"] == name)
            .map(|(_, d)| d)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "expected exactly one {kind}/{name} in deploy/k8s"
        );
        found[0]
    }

    /// Pod-owning workloads: (file, kind/name, document).
    fn workloads(&self) -> impl Iterator<Item = (&str, String, &Value)> {
        self.docs
            .iter()
            .filter(|(_, d)| d["kind"] == "Deployment" || d["kind"] == "StatefulSet")
            .map(|(f, d)| {
                (
                    f.as_str(),
                    format!(
                        "{}/{}",
                        str_of(&d["kind"], "kind"),
                        str_of(&d["metadata"]["name"], "name")
                    ),
                    d,
                )
            })
    }

    /// The api and worker containers of every Deployment.
    fn containers(&self) -> Vec<Container> {
        let mut out = Vec::new();
        for (file, d) in self.of_kind("Deployment") {
            let name = str_of(&d["metadata"]["name"], "Deployment name");
            let pod = &d["spec"]["template"];
            for c in arr(&pod["spec"]["containers"], "containers") {
                let origin = format!(
                    "deploy/k8s/{file} Deployment/{name} container {}",
                    str_of(&c["name"], "container name")
                );
                let command = if c["command"].is_null() {
                    Vec::new()
                } else {
                    strings(&c["command"], &origin)
                };
                let binary = binary_of(&command, &origin);
                let mut args: Vec<String> = command[1..].to_vec();
                if !c["args"].is_null() {
                    args.extend(strings(&c["args"], &origin));
                }
                let mut env = BTreeMap::new();
                for e in c["env"].as_array().into_iter().flatten() {
                    let n = str_of(&e["name"], &origin).to_owned();
                    // The API server takes only strings here (`"2"`, not `2`).
                    let v = e["value"].as_str().map(str::to_owned);
                    assert!(
                        v.is_some() || e["valueFrom"].is_object(),
                        "{origin}: env {n} needs a string value or valueFrom"
                    );
                    assert!(
                        env.insert(n.clone(), v).is_none(),
                        "{origin}: env {n} set twice"
                    );
                }
                let mut ports = BTreeMap::new();
                for p in c["ports"].as_array().into_iter().flatten() {
                    let number = p["containerPort"]
                        .as_u64()
                        .and_then(|n| u16::try_from(n).ok())
                        .unwrap_or_else(|| panic!("{origin}: bad containerPort {p}"));
                    let pname = p["name"].as_str().unwrap_or("").to_owned();
                    ports.insert(pname, number);
                }
                let mut probes = Vec::new();
                for kind in ["startupProbe", "livenessProbe", "readinessProbe"] {
                    let probe = &c[kind];
                    if probe.is_null() {
                        continue;
                    }
                    let get = &probe["httpGet"];
                    assert!(get.is_object(), "{origin}: {kind} is not an httpGet probe");
                    let port = match &get["port"] {
                        Value::Number(n) => n
                            .as_u64()
                            .and_then(|n| u16::try_from(n).ok())
                            .unwrap_or_else(|| panic!("{origin}: {kind} port {n}")),
                        Value::String(s) => *ports.get(s).unwrap_or_else(|| {
                            panic!("{origin}: {kind} names port {s:?}, not a container port")
                        }),
                        other => panic!("{origin}: {kind} port {other}"),
                    };
                    probes.push(Probe {
                        kind: kind.to_owned(),
                        path: str_of(&get["path"], &origin).to_owned(),
                        port,
                    });
                }
                let pre_stop = &c["lifecycle"]["preStop"];
                let pre_stop_sleep_secs = if pre_stop.is_null() {
                    0
                } else {
                    let cmd = strings(&pre_stop["exec"]["command"], &origin);
                    assert_eq!(cmd.len(), 2, "{origin}: preStop must be [sleep, N]");
                    assert_eq!(cmd[0], "sleep", "{origin}: preStop must be [sleep, N]");
                    cmd[1]
                        .parse()
                        .unwrap_or_else(|_| panic!("{origin}: preStop {cmd:?}"))
                };
                out.push(Container {
                    origin,
                    binary,
                    args,
                    env,
                    ports,
                    probes,
                    grace_secs: pod["spec"]["terminationGracePeriodSeconds"].as_u64(),
                    pre_stop_sleep_secs,
                    labels: string_map(&pod["metadata"]["labels"]),
                    annotations: string_map(&pod["metadata"]["annotations"]),
                    resources: c["resources"].clone(),
                });
            }
        }
        out
    }

    fn container(&self, bin: &str) -> Container {
        let found: Vec<Container> = self
            .containers()
            .into_iter()
            .filter(|c| c.binary == bin)
            .collect();
        assert_eq!(found.len(), 1, "expected one {bin} container in deploy/k8s");
        found.into_iter().next().expect("one container")
    }
}

/// Workloads whose pods carry every label of `selector`.
fn pods_matching<'a>(
    k8s: &'a K8s,
    selector: &BTreeMap<String, String>,
) -> Vec<(String, &'a Value)> {
    k8s.workloads()
        .filter(|(_, _, w)| {
            let labels = string_map(&w["spec"]["template"]["metadata"]["labels"]);
            selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
        .map(|(_, n, w)| (n, w))
        .collect()
}

// ----------------------------------------------------------------- compose

struct Compose {
    doc: Value,
}

impl Compose {
    fn load() -> Compose {
        Compose {
            doc: yaml("compose.yaml"),
        }
    }

    fn service(&self, name: &str) -> &Value {
        let s = &self.doc["services"][name];
        assert!(s.is_object(), "compose.yaml has no service {name}");
        s
    }

    fn service_names(&self) -> BTreeSet<String> {
        self.doc["services"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn container(&self, service: &str) -> Container {
        let s = self.service(service);
        let origin = format!("compose.yaml service {service}");
        let command = match &s["command"] {
            Value::String(c) => c.split_whitespace().map(str::to_owned).collect(),
            Value::Array(_) => strings(&s["command"], &origin),
            _ => Vec::new(),
        };
        let binary = binary_of(&command, &origin);
        let env: BTreeMap<String, Option<String>> = match &s["environment"] {
            Value::Object(m) => m.iter().map(|(k, v)| (k.clone(), scalar(v))).collect(),
            Value::Array(list) => list
                .iter()
                .map(|e| {
                    let e = str_of(e, &origin);
                    match e.split_once('=') {
                        Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                        None => (e.to_owned(), None),
                    }
                })
                .collect(),
            _ => BTreeMap::new(),
        };
        let mut probes = Vec::new();
        if s["healthcheck"].is_object() {
            let test = strings(&s["healthcheck"]["test"], &origin);
            let url = test
                .iter()
                .find(|t| t.starts_with("http://"))
                .unwrap_or_else(|| {
                    panic!("{origin}: healthcheck {test:?} requests no http:// URL")
                });
            let rest = url.trim_start_matches("http://");
            let (hostport, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            probes.push(Probe {
                kind: "healthcheck".into(),
                path: if path.is_empty() {
                    "/".into()
                } else {
                    path.into()
                },
                port: port_of_addr(hostport),
            });
        }
        Container {
            origin,
            binary,
            args: command[1..].to_vec(),
            env,
            ports: BTreeMap::new(),
            probes,
            grace_secs: s["stop_grace_period"].as_str().map(duration_secs),
            pre_stop_sleep_secs: 0,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            resources: Value::Null,
        }
    }
}

/// A compose duration such as `30s`, `1m30s`, `2m`.
fn duration_secs(text: &str) -> u64 {
    let mut total = 0;
    let mut num = String::new();
    for ch in text.chars() {
        if ch.is_ascii_digit() {
            num.push(ch);
            continue;
        }
        let n: u64 = num
            .parse()
            .unwrap_or_else(|_| panic!("bad duration {text:?}"));
        num.clear();
        total += match ch {
            's' => n,
            'm' => n * 60,
            'h' => n * 3600,
            _ => panic!("bad duration {text:?}"),
        };
    }
    assert!(num.is_empty(), "duration {text:?} needs a unit");
    total
}

// -------------------------------------------------------------- Dockerfile

struct Dockerfile {
    /// Instructions of the final stage, continuation lines joined.
    runtime: Vec<(String, String)>,
}

impl Dockerfile {
    fn load() -> Dockerfile {
        let text = read("Dockerfile");
        let mut instructions: Vec<(String, String)> = Vec::new();
        let mut current = String::new();
        for line in text.lines() {
            let t = line.trim();
            if current.is_empty() && (t.is_empty() || t.starts_with('#')) {
                continue;
            }
            if t.starts_with('#') {
                continue;
            }
            if let Some(cont) = t.strip_suffix('\\') {
                current.push_str(cont);
                current.push(' ');
                continue;
            }
            current.push_str(t);
            let (op, rest) = current.split_once(' ').unwrap_or((current.as_str(), ""));
            instructions.push((op.to_uppercase(), rest.trim().to_owned()));
            current.clear();
        }
        let last_from = instructions
            .iter()
            .rposition(|(op, _)| op == "FROM")
            .expect("Dockerfile has no FROM");
        Dockerfile {
            runtime: instructions[last_from..].to_vec(),
        }
    }

    fn env(&self) -> BTreeMap<String, String> {
        self.runtime
            .iter()
            .filter(|(op, _)| op == "ENV")
            .flat_map(|(_, rest)| {
                rest.split_whitespace()
                    .filter_map(|kv| {
                        kv.split_once('=')
                            .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Destinations of the final stage's COPY instructions.
    fn copy_destinations(&self) -> Vec<String> {
        self.runtime
            .iter()
            .filter(|(op, _)| op == "COPY")
            .filter_map(|(_, rest)| rest.split_whitespace().last().map(str::to_owned))
            .collect()
    }

    fn last(&self, op: &str) -> Option<&str> {
        self.runtime
            .iter()
            .rev()
            .find(|(o, _)| o == op)
            .map(|(_, r)| r.as_str())
    }

    fn installs(&self, package: &str) -> bool {
        self.runtime.iter().any(|(op, rest)| {
            op == "RUN"
                && rest.contains("apt-get install")
                && rest.split_whitespace().any(|w| w == package)
        })
    }
}

// ------------------------------------------------------------- Prometheus

/// A scrape target: a compose service, its port and metrics path.
#[derive(Debug)]
struct ScrapeTarget {
    job: String,
    host: String,
    port: u16,
    path: String,
}

fn scrape_targets() -> Vec<ScrapeTarget> {
    let prom = yaml("deploy/prometheus/prometheus.yml");
    let mut out = Vec::new();
    for job in arr(&prom["scrape_configs"], "scrape_configs") {
        let name = str_of(&job["job_name"], "job_name").to_owned();
        let path = job["metrics_path"]
            .as_str()
            .unwrap_or("/metrics")
            .to_owned();
        for sc in job["static_configs"].as_array().into_iter().flatten() {
            for t in strings(&sc["targets"], &name) {
                let (host, port) = t
                    .rsplit_once(':')
                    .unwrap_or_else(|| panic!("job {name}: target {t} has no port"));
                out.push(ScrapeTarget {
                    job: name.clone(),
                    host: host.to_owned(),
                    port: port.parse().unwrap_or_else(|_| panic!("job {name}: {t}")),
                    path: path.clone(),
                });
            }
        }
        for dns in job["dns_sd_configs"].as_array().into_iter().flatten() {
            // SRV records carry their own port; only A/AAAA use `port`.
            let ty = dns["type"].as_str().unwrap_or("SRV");
            assert!(
                ty == "A" || ty == "AAAA",
                "job {name}: dns_sd type {ty}: compose's DNS answers A records"
            );
            let port = dns["port"]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .unwrap_or_else(|| panic!("job {name}: dns_sd_configs of type {ty} need a port"));
            for host in strings(&dns["names"], &name) {
                out.push(ScrapeTarget {
                    job: name.clone(),
                    host: host.trim_start_matches("tasks.").to_owned(),
                    port,
                    path: path.clone(),
                });
            }
        }
        for key in job.as_object().map(|m| m.keys()).into_iter().flatten() {
            assert!(
                !key.ends_with("_sd_configs") || key == "dns_sd_configs",
                "job {name}: {key} is not checked by this test"
            );
        }
    }
    out
}

// =================================================================== tests

#[test]
fn deployment_files_parse_and_set_only_real_flags_and_env_vars() {
    let helps: BTreeMap<&str, Help> = [("api", help("api")), ("worker", help("worker"))].into();
    let k8s = K8s::load();
    let compose = Compose::load();
    let mut containers = k8s.containers();
    containers.extend(["api", "worker"].map(|s| compose.container(s)));
    for bin in ["api", "worker"] {
        assert_eq!(
            containers.iter().filter(|c| c.binary == bin).count(),
            2,
            "one {bin} in compose.yaml and one in deploy/k8s"
        );
    }
    for c in &containers {
        let h = &helps[c.binary.as_str()];
        for name in c.env.keys() {
            assert!(
                h.envs.contains(name),
                "{}: {name} is not an environment variable {} reads (its --help lists {:?})",
                c.origin,
                c.binary,
                h.envs
            );
        }
        for a in c.args.iter().filter(|a| a.starts_with("--")) {
            let flag = a.split_once('=').map_or(a.as_str(), |(f, _)| f);
            assert!(
                h.flags.contains(flag),
                "{}: {flag} is not a flag of {}",
                c.origin,
                c.binary
            );
        }
        assert!(!c.probes.is_empty(), "{}: no health probe", c.origin);
    }

    // The dashboard and the Grafana provisioning parse too.
    let dash: Value = serde_json::from_str(&read("deploy/grafana/onnx-queue-dashboard.json"))
        .expect("deploy/grafana/onnx-queue-dashboard.json is not JSON");
    assert!(dash["uid"].is_string() && dash["title"].is_string());
    let datasource = yaml("deploy/grafana/provisioning/datasources/prometheus.yml");
    let url = str_of(&datasource["datasources"][0]["url"], "datasource url");
    assert!(
        url.starts_with("http://prometheus:") && compose.service_names().contains("prometheus"),
        "the Grafana datasource {url} is not the compose prometheus service"
    );
    let providers = yaml("deploy/grafana/provisioning/dashboards/onnx-queue.yml");
    let dash_dir = str_of(
        &providers["providers"][0]["options"]["path"],
        "provider path",
    );
    let grafana_mounts = strings(&compose.service("grafana")["volumes"], "grafana volumes");
    assert!(
        grafana_mounts.iter().any(|m| m
            .split(':')
            .nth(1)
            .is_some_and(|target| target.starts_with(dash_dir)
                && target.ends_with("onnx-queue-dashboard.json"))),
        "compose does not mount the dashboard into {dash_dir}: {grafana_mounts:?}"
    );

    // Every bind mount names a file of the repository.
    for name in compose.service_names() {
        for v in compose.service(&name)["volumes"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let spec = str_of(v, "volume");
            if let Some(src) = spec.split(':').next().filter(|s| s.starts_with("./")) {
                assert!(
                    repo_root().join(src).exists(),
                    "compose service {name} mounts {src}, which does not exist"
                );
            }
        }
    }

    // kustomization.yaml lists every manifest of the directory.
    let kustomization = yaml("deploy/k8s/kustomization.yaml");
    let listed: BTreeSet<String> = strings(&kustomization["resources"], "resources")
        .into_iter()
        .collect();
    let files: BTreeSet<String> = k8s
        .docs
        .iter()
        .map(|(f, _)| f.clone())
        .filter(|f| f != "kustomization.yaml")
        .collect();
    assert_eq!(listed, files, "deploy/k8s/kustomization.yaml resources");
}

#[test]
fn ports_probes_selectors_scrapes_and_keda_agree_with_the_code() {
    let k8s = K8s::load();
    let compose = Compose::load();
    let api = k8s.container("api");
    let worker = k8s.container("worker");

    // Every probe points at the port the process listens on, every scrape
    // annotation at the port its metrics are scraped on.
    for c in [&api, &worker] {
        let listen = c.listen_port();
        let scrape = c.scrape_port();
        for port in [listen, scrape] {
            assert!(
                c.ports.values().any(|&p| p == port),
                "{}: no containerPort for {port}",
                c.origin,
            );
        }
        let kinds: BTreeSet<&str> = c.probes.iter().map(|p| p.kind.as_str()).collect();
        assert!(
            kinds.contains("livenessProbe") && kinds.contains("readinessProbe"),
            "{}: needs liveness and readiness probes, has {kinds:?}",
            c.origin
        );
        for p in &c.probes {
            assert_eq!(
                p.port, listen,
                "{}: {} on a port nothing listens on",
                c.origin, p.kind
            );
            let want = if p.kind == "readinessProbe" {
                "/readyz"
            } else {
                "/healthz"
            };
            assert_eq!(p.path, want, "{}: {}", c.origin, p.kind);
        }
        assert_eq!(
            c.annotations
                .get("prometheus.io/scrape")
                .map(String::as_str),
            Some("true")
        );
        assert_eq!(
            c.annotations.get("prometheus.io/port"),
            Some(&scrape.to_string()),
            "{}: prometheus.io/port",
            c.origin
        );
        assert_eq!(
            c.annotations.get("prometheus.io/path").map(String::as_str),
            Some("/metrics")
        );

        // SIGTERM handling fits in the pod's grace period.
        let shutdown: u64 = c
            .env("SHUTDOWN_GRACE_SECS")
            .unwrap_or_else(|| panic!("{}: set SHUTDOWN_GRACE_SECS explicitly", c.origin))
            .parse()
            .expect("SHUTDOWN_GRACE_SECS is a number");
        let grace = c.grace_secs.unwrap_or(30);
        assert!(
            grace > shutdown + c.pre_stop_sleep_secs,
            "{}: terminationGracePeriodSeconds {grace} must exceed preStop {} + SHUTDOWN_GRACE_SECS {shutdown}",
            c.origin,
            c.pre_stop_sleep_secs
        );

        // Requests and a memory limit on every container.
        for path in ["requests.cpu", "requests.memory", "limits.memory"] {
            let (a, b) = path.split_once('.').expect("dotted");
            assert!(
                scalar(&c.resources[a][b]).is_some(),
                "{}: resources.{path} missing",
                c.origin
            );
        }
    }
    for (_, name, w) in k8s.workloads() {
        for c in arr(&w["spec"]["template"]["spec"]["containers"], &name) {
            assert!(
                c["resources"]["requests"]["memory"].is_string(),
                "{name}: no memory request"
            );
        }
    }

    // Deployments select their own pods; Services select existing pods and
    // target ports those pods have.
    for (_, name, w) in k8s.workloads() {
        let selector = string_map(&w["spec"]["selector"]["matchLabels"]);
        let labels = string_map(&w["spec"]["template"]["metadata"]["labels"]);
        assert!(!selector.is_empty(), "{name}: empty selector");
        for key in ["labels", "annotations"] {
            let map = &w["spec"]["template"]["metadata"][key];
            assert!(
                map.as_object()
                    .is_none_or(|o| o.values().all(Value::is_string)),
                "{name}: pod {key} must be strings (quote \"true\", \"9090\")"
            );
        }
        for (k, v) in &selector {
            assert_eq!(
                labels.get(k),
                Some(v),
                "{name}: selector {k}={v} does not match its pods"
            );
        }
    }
    let container_ports = |w: &Value| -> Vec<(String, u64)> {
        arr(&w["spec"]["template"]["spec"]["containers"], "containers")
            .iter()
            .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
            .map(|p| {
                (
                    p["name"].as_str().unwrap_or("").to_owned(),
                    p["containerPort"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    };
    for (file, svc) in k8s.of_kind("Service") {
        let name = format!(
            "{file} Service/{}",
            str_of(&svc["metadata"]["name"], "name")
        );
        let selector = string_map(&svc["spec"]["selector"]);
        let matched = pods_matching(&k8s, &selector);
        assert_eq!(
            matched.len(),
            1,
            "{name}: selector {selector:?} matches {matched:?}"
        );
        let ports = container_ports(matched[0].1);
        // The operator listener is for in-cluster scrapers only.
        let ops_port = api.scrape_port();
        for p in arr(&svc["spec"]["ports"], &name) {
            let exposes_ops = match &p["targetPort"] {
                Value::String(n) => ports
                    .iter()
                    .any(|(pn, pp)| pn == n && *pp == u64::from(ops_port)),
                Value::Number(n) => n.as_u64() == Some(u64::from(ops_port)),
                _ => p["port"].as_u64() == Some(u64::from(ops_port)),
            };
            assert!(
                !(exposes_ops && matched[0].0.ends_with("/api")),
                "{name}: exposes the API's operator port {ops_port}"
            );
            let target = &p["targetPort"];
            let ok = match target {
                Value::String(n) => ports.iter().any(|(pn, _)| pn == n),
                Value::Number(n) => ports.iter().any(|(_, pp)| Some(*pp) == n.as_u64()),
                Value::Null => ports.iter().any(|(_, pp)| Some(*pp) == p["port"].as_u64()),
                _ => false,
            };
            assert!(
                ok,
                "{name}: targetPort {target} is not a port of {}",
                matched[0].0
            );
        }
    }
    for (file, pm) in k8s.of_kind("PodMonitor") {
        let selector = string_map(&pm["spec"]["selector"]["matchLabels"]);
        assert!(!selector.is_empty(), "{file}: empty selector");
        let endpoints: Vec<String> = arr(&pm["spec"]["podMetricsEndpoints"], file)
            .iter()
            .map(|e| str_of(&e["port"], "podMetricsEndpoints port").to_owned())
            .collect();
        for c in [&api, &worker] {
            let scrape = c.scrape_port();
            assert!(
                c.ports
                    .iter()
                    .any(|(n, &p)| p == scrape && endpoints.contains(n)),
                "{file}: no endpoint scrapes {} on its port {scrape} ({endpoints:?})",
                c.origin
            );
            assert!(
                selector.iter().all(|(k, v)| c.labels.get(k) == Some(v)),
                "{file}: selector {selector:?} misses {}",
                c.origin
            );
        }
    }

    // Both sides use one Redis and one namespace; the Redis persists.
    let redis_svc = k8s.one("Service", "redis");
    let redis_ns = str_of(&redis_svc["metadata"]["namespace"], "redis namespace");
    let redis_port = redis_svc["spec"]["ports"][0]["port"]
        .as_u64()
        .expect("redis port");
    for c in [&api, &worker] {
        assert_eq!(
            c.env("REDIS_URL"),
            Some(format!("redis://redis:{redis_port}").as_str()),
            "{}: REDIS_URL is not the redis Service",
            c.origin
        );
    }
    let ns = worker
        .env("QUEUE_NAMESPACE")
        .expect("worker QUEUE_NAMESPACE");
    assert_eq!(
        api.env("QUEUE_NAMESPACE"),
        Some(ns),
        "api and worker namespaces differ"
    );
    let redis_args = strings(
        &k8s.one("StatefulSet", "redis")["spec"]["template"]["spec"]["containers"][0]["args"],
        "redis args",
    )
    .join(" ");
    let compose_redis = strings(&compose.service("redis")["command"], "redis command").join(" ");
    for args in [&redis_args, &compose_redis] {
        assert!(
            args.contains("--appendonly yes") && args.contains("--appendfsync everysec"),
            "Redis must run with AOF everysec (README, Durability): {args}"
        );
    }

    // KEDA scales the worker Deployment on the streams and group the code uses.
    let so = k8s.one("ScaledObject", "worker");
    let target = &so["spec"]["scaleTargetRef"];
    assert_eq!(
        target["kind"].as_str().unwrap_or("Deployment"),
        "Deployment"
    );
    let worker_deploy = k8s
        .of_kind("Deployment")
        .find(|(_, d)| {
            arr(&d["spec"]["template"]["spec"]["containers"], "containers")
                .iter()
                .any(|c| c["command"][0] == "worker")
        })
        .map(|(_, d)| d)
        .expect("worker Deployment");
    assert_eq!(
        target["name"], worker_deploy["metadata"]["name"],
        "ScaledObject target"
    );
    assert_eq!(
        so["metadata"]["namespace"],
        worker_deploy["metadata"]["namespace"]
    );
    assert!(
        worker_deploy["spec"]["replicas"].is_null(),
        "the worker Deployment must leave replicas to KEDA"
    );
    let keys = Keys::new(ns);
    let want_streams: BTreeSet<String> =
        served_models().iter().map(|m| keys.stream(m, 0)).collect();
    let mut lag_streams = BTreeSet::new();
    let mut pending_streams = BTreeSet::new();
    for t in arr(&so["spec"]["triggers"], "triggers") {
        assert_eq!(t["type"], "redis-streams", "{t}");
        let m = &t["metadata"];
        assert!(
            m.as_object()
                .is_some_and(|o| o.values().all(Value::is_string)),
            "trigger {t}: KEDA takes metadata values as strings only"
        );
        assert_eq!(m["consumerGroup"], GROUP, "trigger {t}: consumer group");
        assert_eq!(
            m["address"],
            format!("redis.{redis_ns}.svc.cluster.local:{redis_port}").as_str(),
            "trigger {t}: address is not the redis Service"
        );
        let stream = str_of(&m["stream"], "stream").to_owned();
        let count = |key: &str| -> Option<u64> {
            scalar(&m[key]).map(|s| s.parse().unwrap_or_else(|_| panic!("{t}: {key} {s:?}")))
        };
        if let Some(lag) = count("lagCount") {
            assert!(lag > 0, "{t}: lagCount 0");
            // KEDA refuses a lag trigger without it.
            assert!(
                count("activationLagCount").is_some(),
                "{t}: activationLagCount missing"
            );
            lag_streams.insert(stream);
        } else if let Some(pending) = count("pendingEntriesCount") {
            assert!(pending > 0, "{t}: pendingEntriesCount 0");
            pending_streams.insert(stream);
        } else {
            panic!("trigger {t} is neither a lag nor a pending trigger");
        }
    }
    assert_eq!(
        lag_streams, want_streams,
        "one lag trigger per served model stream"
    );
    assert_eq!(
        pending_streams, want_streams,
        "one pending trigger per served model stream"
    );

    // The image holds what the manifests point at, as the user they expect.
    let docker = Dockerfile::load();
    let image_env = docker.env();
    let dests = docker.copy_destinations();
    for c in [&worker, &compose.container("worker")] {
        for var in ["ORT_DYLIB_PATH", "MODELS_DIR"] {
            let v = c
                .env(var)
                .unwrap_or_else(|| panic!("{}: {var} unset", c.origin));
            assert_eq!(
                image_env.get(var).map(String::as_str),
                Some(v),
                "{}: {var}",
                c.origin
            );
            assert!(
                dests
                    .iter()
                    .any(|d| d.trim_end_matches('/') == v.trim_end_matches('/')),
                "{}: {var}={v} but the Dockerfile copies nothing there ({dests:?})",
                c.origin
            );
        }
    }
    let user = docker.last("USER").expect("Dockerfile USER");
    let uid = user.split(':').next().unwrap_or(user);
    assert!(
        uid.parse::<u32>().is_ok_and(|u| u != 0),
        "USER {user}: numeric non-root"
    );
    // The process runs in a directory of its own user's, not in `/`.
    let workdir = docker
        .last("WORKDIR")
        .expect("Dockerfile WORKDIR in the runtime stage");
    assert!(
        docker.runtime.iter().any(|(op, rest)| op == "RUN"
            && rest.contains(&format!("chown {uid}"))
            && rest.split_whitespace().any(|w| w == workdir)),
        "WORKDIR {workdir} must be chowned to {uid} in the runtime stage"
    );
    for (_, name, w) in k8s.workloads().filter(|(_, n, _)| !n.ends_with("/redis")) {
        let sc = &w["spec"]["template"]["spec"]["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true, "{name}");
        assert_eq!(
            scalar(&sc["runAsUser"]).as_deref(),
            Some(uid),
            "{name}: runAsUser"
        );
    }

    // Compose: healthchecks, grace periods and Prometheus targets.
    let names = compose.service_names();
    let uses_curl = names.iter().any(|n| {
        compose.service(n)["healthcheck"]["test"]
            .as_array()
            .is_some_and(|t| t.iter().any(|a| a == "curl"))
    });
    assert!(
        !uses_curl || docker.installs("curl"),
        "compose healthchecks run curl, which the runtime image does not install"
    );
    let compose_api = compose.container("api");
    let published = compose.service("api")["ports"]
        .as_array()
        .map(|ps| strings(&Value::Array(ps.clone()), "api ports"))
        .unwrap_or_default();
    assert!(
        !published
            .iter()
            .any(|p| p.rsplit(':').next() == Some(compose_api.scrape_port().to_string().as_str())),
        "compose api publishes its operator port: {published:?}"
    );
    for svc in ["api", "worker"] {
        let c = compose.container(svc);
        let listen = c.listen_port();
        for p in &c.probes {
            assert_eq!(p.port, listen, "{}: healthcheck port", c.origin);
            assert_eq!(p.path, "/healthz", "{}: healthcheck path", c.origin);
        }
        let shutdown: u64 = c
            .env("SHUTDOWN_GRACE_SECS")
            .unwrap_or_else(|| panic!("{}: set SHUTDOWN_GRACE_SECS", c.origin))
            .parse()
            .expect("number");
        let grace = c.grace_secs.unwrap_or(10);
        assert!(
            grace > shutdown,
            "{}: stop_grace_period {grace}s <= {shutdown}s",
            c.origin
        );
        assert_eq!(
            c.env("REDIS_URL"),
            Some("redis://redis:6379"),
            "{}",
            c.origin
        );
        assert!(names.contains("redis"));
        assert_eq!(
            c.env("QUEUE_NAMESPACE"),
            Some(ns),
            "{}: namespace",
            c.origin
        );
    }
    assert!(
        compose.service("worker")["deploy"]["replicas"]
            .as_u64()
            .is_some_and(|r| r >= 1),
        "compose worker needs deploy.replicas"
    );
    let targets = scrape_targets();
    for svc in ["api", "worker"] {
        assert!(
            targets.iter().any(|t| t.host == svc),
            "Prometheus scrapes no {svc}: {targets:?}"
        );
    }
    for t in &targets {
        assert!(
            names.contains(&t.host),
            "job {}: {} is no compose service",
            t.job,
            t.host
        );
        let c = compose.container(&t.host);
        assert_eq!(
            t.port,
            c.scrape_port(),
            "job {}: scrapes {}:{} but its metrics are on {}",
            t.job,
            t.host,
            t.port,
            c.scrape_port()
        );
        assert_eq!(t.path, "/metrics", "job {}", t.job);
    }
}

// ---------------------------------------------------------- live processes

/// A binary started with a deployment file's environment; killed on drop.
struct Running {
    child: std::process::Child,
    log: PathBuf,
    origin: String,
}

impl Running {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{sig} {}", self.origin);
    }

    fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited ({status}); log:\n{}",
                self.origin,
                self.log_text()
            );
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `c` with its own environment, except what must change on this
/// machine: Redis, listen addresses (free loopback ports), models and the
/// ONNX Runtime library path. Returns the process and manifest port → local
/// port. `extra` adds or replaces variables (only to make retries fast).
fn start(
    c: &Container,
    redis_url: &str,
    models: &Path,
    extra: &[(&str, &str)],
) -> (Running, BTreeMap<u16, u16>) {
    static N: AtomicU64 = AtomicU64::new(0);
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let mut ports = BTreeMap::new();
    for (name, value) in &c.env {
        let Some(value) = value else { continue };
        let local = match name.as_str() {
            "REDIS_URL" => redis_url.to_owned(),
            "LISTEN_ADDR" | "METRICS_LISTEN" | "OPS_LISTEN" => {
                let port = free_port();
                ports.insert(port_of_addr(value), port);
                format!("127.0.0.1:{port}")
            }
            "MODELS_DIR" => models.display().to_string(),
            "ORT_DYLIB_PATH" => ort_lib().display().to_string(),
            _ => value.clone(),
        };
        env.insert(name.clone(), local);
    }
    for (k, v) in extra {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    let dir = repo_root().join("target/e2e-logs");
    let _ = std::fs::create_dir_all(&dir);
    let log = dir.join(format!(
        "deploy-{}-{}-{}.log",
        c.binary,
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let file = std::fs::File::create(&log).expect("log file");
    let child = Command::new(binary(&c.binary))
        .args(&c.args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(&env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(file))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", c.origin));
    (
        Running {
            child,
            log,
            origin: c.origin.clone(),
        },
        ports,
    )
}

/// GETs `path` until it answers 200 (a worker listens once its models are
/// loaded).
async fn wait_ok(proc: &mut Running, port: u16, path: &str) {
    let client = Client::new(&format!("http://127.0.0.1:{port}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        proc.assert_alive();
        let reply = client
            .http
            .get(format!("{}{path}", client.base))
            .send()
            .await;
        let last = match reply {
            Ok(r) if r.status() == StatusCode::OK => return,
            Ok(r) => format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
            Err(e) => e.to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "{}: GET {path} on its port never answered 200 (last: {last}); log:\n{}",
            proc.origin,
            proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manifests_environment_starts_the_binaries_and_every_probe_answers() {
    let redis = RedisServer::start();
    let models = repo_root().join("models");
    let k8s = K8s::load();
    let compose = Compose::load();
    let targets = scrape_targets();
    let mut containers = k8s.containers();
    containers.extend(["api", "worker"].map(|s| compose.container(s)));

    let mut started = Vec::new();
    for c in &containers {
        let (proc, ports) = start(c, &redis.url(), &models, &[]);
        started.push((c, proc, ports));
    }
    let mut checked = 0;
    for (c, proc, ports) in &mut started {
        let mut paths: Vec<(u16, String)> =
            c.probes.iter().map(|p| (p.port, p.path.clone())).collect();
        // What Prometheus (compose) or the pod annotations (k8s) scrape.
        if c.origin.starts_with("compose.yaml") {
            let service = c.origin.rsplit(' ').next().unwrap_or_default();
            paths.extend(
                targets
                    .iter()
                    .filter(|t| t.host == service)
                    .map(|t| (t.port, t.path.clone())),
            );
        } else if let (Some(port), Some(path)) = (
            c.annotations.get("prometheus.io/port"),
            c.annotations.get("prometheus.io/path"),
        ) {
            paths.push((port.parse().expect("annotation port"), path.clone()));
        }
        for (port, path) in paths {
            let local = *ports.get(&port).unwrap_or_else(|| {
                panic!(
                    "{}: {path} is requested on port {port}, where the process does not listen",
                    c.origin
                )
            });
            wait_ok(proc, local, &path).await;
            checked += 1;
        }
        proc.assert_alive();
    }
    assert!(
        checked >= 10,
        "only {checked} probe and scrape paths checked"
    );
}

// -------------------------------------------------------------- dashboard

/// Metric names with the label names used in their selectors, and the
/// labels of `by (...)`/`on (...)` clauses, of one PromQL expression.
#[derive(Debug, Default)]
struct Query {
    metrics: BTreeMap<String, BTreeSet<String>>,
    grouping: BTreeSet<String>,
    /// What is wrong with the expression as a query of histograms.
    errors: Vec<String>,
}

impl ExprVisitor for Query {
    type Error = std::convert::Infallible;

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, Self::Error> {
        let mut selector = |vs: &VectorSelector| {
            let Some(name) = vs.name.clone() else {
                self.errors
                    .push(format!("a selector without a metric name: {vs}"));
                return;
            };
            self.metrics.entry(name).or_default().extend(
                vs.matchers
                    .matchers
                    .iter()
                    .map(|m| m.name.clone())
                    .filter(|n| n != "__name__"),
            );
        };
        match expr {
            Expr::VectorSelector(vs) => selector(vs),
            Expr::MatrixSelector(ms) => selector(&ms.vs),
            Expr::Aggregate(a) => {
                if let Some(m) = &a.modifier {
                    self.grouping.extend(m.labels().labels.iter().cloned());
                }
            }
            Expr::Binary(b) => {
                if let Some(m) = &b.modifier {
                    if let Some(on) = &m.matching {
                        self.grouping.extend(on.labels().labels.iter().cloned());
                    }
                    if let Some(group) = m.card.labels() {
                        self.grouping.extend(group.labels.iter().cloned());
                    }
                }
            }
            Expr::Call(call) if call.func.name == "histogram_quantile" => {
                let mut inner = Query::default();
                for arg in &call.args.args {
                    let _ = walk_expr(&mut inner, arg);
                }
                for m in inner.metrics.keys().filter(|m| !m.ends_with("_bucket")) {
                    self.errors
                        .push(format!("histogram_quantile over {m}, not a _bucket series"));
                }
                if !inner.grouping.contains("le") {
                    self.errors
                        .push("histogram_quantile without `by (le)`".to_owned());
                }
            }
            _ => {}
        }
        Ok(true)
    }
}

/// Parses a dashboard query as Prometheus would once Grafana has filled in
/// its variables (`$__rate_interval`, `$model`, ...).
fn parse_promql(expr: &str) -> Result<Query, String> {
    let mut text = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        text.push_str(&rest[..at]);
        let var: String = rest[at + 1..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        text.push_str(if var.starts_with("__") { "5m" } else { ".*" });
        rest = &rest[at + 1 + var.len()..];
    }
    text.push_str(rest);
    let ast = promql_parser::parser::parse(&text).map_err(|e| format!("{e} in {text}"))?;
    let mut q = Query::default();
    let _ = walk_expr(&mut q, &ast);
    Ok(q)
}

/// Every PromQL expression of the dashboard: panel targets (rows nested or
/// not) and query variables.
fn dashboard_queries() -> Vec<(String, String)> {
    let dash: Value = serde_json::from_str(&read("deploy/grafana/onnx-queue-dashboard.json"))
        .expect("dashboard JSON");
    let mut out = Vec::new();
    let mut ids = BTreeSet::new();
    let mut stack: Vec<&Value> = arr(&dash["panels"], "panels").iter().collect();
    while let Some(p) = stack.pop() {
        let title = p["title"].as_str().unwrap_or("?").to_owned();
        let id = p["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("panel {title} has no id"));
        assert!(ids.insert(id), "panel id {id} used twice");
        assert!(p["gridPos"].is_object(), "panel {title} has no gridPos");
        stack.extend(p["panels"].as_array().into_iter().flatten());
        if p["type"] == "row" {
            continue;
        }
        let targets = arr(&p["targets"], &title);
        assert!(!targets.is_empty(), "panel {title} has no query");
        for t in targets {
            out.push((title.clone(), str_of(&t["expr"], &title).to_owned()));
        }
    }
    for v in arr(&dash["templating"]["list"], "templating") {
        if v["type"] != "query" {
            continue;
        }
        let q = match &v["query"] {
            Value::String(s) => s.clone(),
            other => str_of(&other["query"], "variable query").to_owned(),
        };
        // label_values(metric, label) -> a selector-free query on the metric.
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable query {q} is not label_values(metric, label)"));
        let (metric, label) = inner.split_once(',').expect("label_values(metric, label)");
        out.push((
            format!("variable {}", v["name"]),
            format!("count by ({}) ({})", label.trim(), metric.trim()),
        ));
    }
    out
}

/// Sample names of a Prometheus text exposition, with the label names each
/// carries.
fn scrape_labels(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..end].to_owned()).or_default();
        if line[end..].starts_with('{') {
            let body = &line[end + 1..line.rfind('}').unwrap_or(line.len())];
            let mut in_quotes = false;
            let mut name = String::new();
            let mut chars = body.chars();
            while let Some(ch) = chars.next() {
                match ch {
                    '\\' if in_quotes => {
                        chars.next();
                    }
                    '"' => in_quotes = !in_quotes,
                    '=' if !in_quotes => {
                        labels.insert(name.trim().trim_start_matches(',').to_owned());
                        name.clear();
                    }
                    _ if !in_quotes => name.push(ch),
                    _ => {}
                }
            }
        }
    }
    out
}

/// Family name of a sample (histogram series collapse to their metric).
fn family(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

/// Labels Prometheus adds to every scraped series.
const TARGET_LABELS: [&str; 2] = ["job", "instance"];

/// Queries that are not PromQL, use no `onnxq_` metric, or take quantiles
/// of something other than histogram buckets by `le`.
fn malformed(queries: &[(String, String)]) -> Vec<String> {
    let mut out = Vec::new();
    for (title, expr) in queries {
        match parse_promql(expr) {
            Err(e) => out.push(format!("panel {title:?}: not PromQL: {e}")),
            Ok(q) => {
                if q.metrics.is_empty() {
                    out.push(format!("panel {title:?}: {expr} uses no metric"));
                }
                for m in q.metrics.keys().filter(|m| !m.starts_with("onnxq_")) {
                    out.push(format!("panel {title:?}: {m} is not an onnxq_ metric"));
                }
                out.extend(q.errors.iter().map(|e| format!("panel {title:?}: {e}")));
            }
        }
    }
    out
}

/// Names and labels the dashboard needs that `scraped` lacks.
fn missing(
    queries: &[(String, String)],
    scraped: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<String> {
    let mut out = BTreeSet::new();
    for (title, expr) in queries {
        // Malformed queries are reported by `malformed`.
        let Ok(q) = parse_promql(expr) else { continue };
        for (m, labels) in &q.metrics {
            let Some(have) = scraped.get(m) else {
                out.insert(format!("metric {} ({m})", family(m)));
                continue;
            };
            for l in labels.iter().filter(|l| !have.contains(*l)) {
                out.insert(format!("label {l} of {m} (panel {title:?})"));
            }
        }
        for l in &q.grouping {
            let known = TARGET_LABELS.contains(&l.as_str())
                || q.metrics
                    .keys()
                    .any(|m| scraped.get(m).is_some_and(|have| have.contains(l)));
            if !known && q.metrics.keys().all(|m| scraped.contains_key(m)) {
                out.insert(format!(
                    "label {l} in `by` of panel {title:?}: on none of {:?}",
                    q.metrics.keys()
                ));
            }
        }
    }
    out.into_iter().collect()
}

#[test]
fn the_promql_checks_find_names_labels_groupings_and_mistakes() {
    let q = parse_promql(
        r#"histogram_quantile(0.99, sum by (le, model) (rate(onnxq_x_bucket{model=~"$model", status!="a,b"}[$__rate_interval]))) / on (model) onnxq_y"#,
    )
    .expect("valid PromQL");
    assert_eq!(
        q.metrics.keys().collect::<Vec<_>>(),
        vec!["onnxq_x_bucket", "onnxq_y"]
    );
    assert_eq!(
        q.metrics["onnxq_x_bucket"].iter().collect::<Vec<_>>(),
        vec!["model", "status"]
    );
    assert_eq!(q.grouping.iter().collect::<Vec<_>>(), vec!["le", "model"]);
    assert!(q.errors.is_empty(), "{:?}", q.errors);
    assert!(parse_promql("sum(rate(onnxq_y[5m])").is_err(), "unbalanced");
    let q = parse_promql("histogram_quantile(0.5, sum by (model) (rate(onnxq_y[5m])))")
        .expect("valid PromQL");
    assert_eq!(q.errors.len(), 2, "{:?}", q.errors);

    let s =
        scrape_labels("# HELP a b\nonnxq_x_bucket{model=\"m,=\\\"\",le=\"0.5\"} 1\nonnxq_y 2\n");
    assert_eq!(
        s["onnxq_x_bucket"].iter().collect::<Vec<_>>(),
        vec!["le", "model"]
    );
    assert!(s["onnxq_y"].is_empty());
    let queries = vec![
        (
            "p".to_owned(),
            r#"sum by (reason) (rate(onnxq_y{model="a"}[1m]))"#.to_owned(),
        ),
        ("q".to_owned(), "up".to_owned()),
    ];
    assert_eq!(
        missing(&queries, &s).len(),
        3,
        "{:?}",
        missing(&queries, &s)
    );
    assert_eq!(malformed(&queries).len(), 1, "{:?}", malformed(&queries));
    let broken = [("b".to_owned(), "sum(rate(onnxq_y[5m])".to_owned())];
    assert_eq!(malformed(&broken).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_queries_only_metrics_and_labels_the_binaries_export() {
    let queries = dashboard_queries();
    let bad = malformed(&queries);
    assert!(
        bad.is_empty(),
        "malformed dashboard queries:\n  {}",
        bad.join("\n  ")
    );
    assert!(
        queries.len() >= 20,
        "the dashboard has only {} queries",
        queries.len()
    );

    let mut redis = RedisServer::start();
    let models = ModelsDir::with(&[
        ("mlp128", "mlp128.onnx"),
        ("inf", "testdata/inf_output.onnx"),
        ("flaky", "testdata/flaky_broken.onnx"),
    ]);
    let k8s = K8s::load();
    // The k8s environment, with retries made quick enough for a test.
    let fast = [
        ("MAX_ATTEMPTS", "2"),
        ("RETRY_BASE_MS", "20"),
        ("RETRY_MAX_MS", "50"),
        ("BLOCK_MS", "200"),
    ];
    let worker_c = k8s.container("worker");
    let api_c = k8s.container("api");
    let (mut worker, worker_ports) = start(&worker_c, &redis.url(), &models.path, &fast);
    let (mut api, api_ports) = start(&api_c, &redis.url(), &models.path, &[]);
    let api_port = api_ports[&api_c.listen_port()];
    // Where Prometheus scrapes: the operator listener.
    let api_scrape_port = api_ports[&api_c.scrape_port()];
    let worker_port = worker_ports[&worker_c.scrape_port()];
    wait_ok(&mut api, api_port, "/healthz").await;
    wait_ok(&mut worker, worker_port, "/healthz").await;
    let c = Client::new(&format!("http://127.0.0.1:{api_port}"));
    c.wait_for_models(&["mlp128", "inf", "flaky"], Duration::from_secs(30))
        .await;

    let row = json!({ "features": vec![0.25f32; 128] });
    let ok = c.submit("mlp128", &row).await;
    let first = c.predict_with_key("mlp128", &row, "deploy-key").await;
    let again = c.predict_with_key("mlp128", &row, "deploy-key").await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.text);
    assert_eq!(again.json["job_id"], first.json["job_id"], "{}", again.text);
    let bad = c
        .predict("mlp128", &json!({ "features": [1.0, 2.0] }))
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.text);
    let inf = c.submit("inf", &json!({ "features": [1.0] })).await;
    let flaky = c
        .submit("flaky", &json!({ "features": [1.0, 2.0, 3.0, 4.0] }))
        .await;
    for (id, status) in [(&ok, "succeeded"), (&inf, "failed"), (&flaky, "failed")] {
        let job = c.wait_terminal(id, Duration::from_secs(30)).await;
        assert_eq!(job["status"], status, "{job}");
    }

    // With the worker frozen: one job canceled, one past its deadline.
    worker.signal("STOP");
    let canceled = c.submit("mlp128", &row).await;
    let late = c
        .submit(
            "mlp128",
            &json!({ "features": vec![0.5f32; 128], "deadline": 0.05 }),
        )
        .await;
    let r = c.cancel(&canceled).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    worker.signal("CONT");
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let job = c.wait_terminal(&late, Duration::from_secs(30)).await;
    assert_eq!(job["error"]["code"], "deadline_exceeded", "{job}");

    let scrape = || async {
        let mut all: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for port in [api_scrape_port, worker_port] {
            let r = Client::new(&format!("http://127.0.0.1:{port}"))
                .get("/metrics")
                .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
            for (k, v) in scrape_labels(&r.text) {
                all.entry(k).or_default().extend(v);
            }
        }
        all
    };
    // Sampled gauges show up within their sampling interval; only the Redis
    // error counter needs more: a Redis error, so Redis is stopped after.
    let needs_outage = |gap: &String| gap.contains("onnxq_redis_errors_total");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut gaps = missing(&queries, &scrape().await);
    while !gaps.iter().all(needs_outage) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        gaps = missing(&queries, &scrape().await);
    }
    if !gaps.is_empty() && gaps.iter().all(needs_outage) {
        redis.kill();
        let deadline = Instant::now() + Duration::from_secs(8);
        while !gaps.is_empty() && Instant::now() < deadline {
            let _ = c.job(&ok, None).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            gaps = missing(&queries, &scrape().await);
        }
    }
    api.assert_alive();
    worker.assert_alive();
    assert!(
        gaps.is_empty(),
        "the dashboard queries what no real scrape of the api and worker exports:\n  {}",
        gaps.join("\n  ")
    );
}
