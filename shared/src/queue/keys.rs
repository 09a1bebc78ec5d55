//! Redis key layout, and the hash slot of every key.
//!
//! Every key starts with the deployment's namespace (`--namespace`, default
//! `infer`) so several deployments, or several test runs, share one Redis
//! without seeing each other. After the namespace comes a hash tag in
//! braces: Redis Cluster places a key by the CRC16 of its tag alone, so
//! keys with one tag share a slot, and one Lua script may touch them all.
//! The same layout serves a single node, where tags are just characters.
//!
//! # Tags
//!
//! | tag            | keys under it                                          | why together                |
//! |----------------|--------------------------------------------------------|-----------------------------|
//! | `{p<i>.<k>}`   | partition `i`: jobs, streams, retries, dead letters, jobs' usage, idempotency, the job index | submit, start, finish, cancel, replay each touch a job with its stream and counters |
//! | `{reg}`        | registry, signatures, datasets, heartbeats, load markers, datasets' usage | register, promote, quarantine, dataset writes touch several of them |
//! | `{t.<tenant>}` | a tenant's rate buckets                                | one request draws from the tenant's and its model's bucket at once |
//!
//! # Partitions
//!
//! A model's jobs spread over `--partitions P` partitions. Partition `i`
//! has its own tag, so its slot and master: one hot model uses P slots.
//! Every partition holds a stream per model (and a `.control` and a
//! `.train` stream), so a worker reads partition `i` of all its models in
//! one `XREADGROUP` (one slot), on a connection of its own.
//!
//! A job's partition is written into its id (the last two bytes of the
//! UUIDv7, [`Keys::new_job_id`]), so `GET /v1/jobs/{id}` finds the record
//! with no lookup: [`Keys::job`] reads the partition from the id. The API
//! deals jobs to partitions round robin; a job with an `Idempotency-Key`
//! goes to the partition its key hashes to, so a retry finds the first
//! attempt's record.
//!
//! The tag of partition `i` is `p<i>.<k>` with the smallest `k` that puts it
//! in a slot near a target that depends on `i` alone: the first 2, 3 or 6
//! partitions, and any multiple of 6, fall one per half, third or sixth of
//! the slot space, so evenly over 2, 3 or 6 masters with the equal ranges
//! `redis-cli --cluster create` gives them; the tag of `i` never depends
//! on P. Other layouts are balanced by moving the partitions' slots
//! (`redis-cli --cluster reshard`; `jobctl stats` shows each partition's
//! slot).
//!
//! **Choosing P**: at least the number of masters, so every master takes
//! part; a multiple of it balances them. More partitions cost each worker
//! one blocking connection per partition, and the queue bounds are split
//! over partitions (each holds `ceil(bound / P)`). **Changing P** later:
//! raising it is safe at any time (new jobs use the new partitions as soon
//! as the API restarts with it; start workers with the new P first, so
//! someone reads them). Lowering it strands the jobs in the partitions
//! dropped until they are drained: keep a worker running with the old P
//! until `jobctl stats` shows them empty. Ids stay readable either way.
//!
//! # Keys
//!
//! `P` stands for a partition's tag, `{ns}` for the namespace.
//!
//! | key                               | type    | holds                                                   |
//! |-----------------------------------|---------|---------------------------------------------------------|
//! | `{ns}:{P}:job:{id}`               | hash    | a job's record: status, attempts, times, result, error ([`crate::job::JobRecord::FIELDS`]) |
//! | `{ns}:{P}:stream:{queue}`         | stream  | a model's work queue in one partition, read by group [`GROUP`]; `queue` is the model, `.control` or `.train` ([`queue_of`]) |
//! | `{ns}:{P}:delayed:{queue}`        | zset    | job ids of that stream waiting for a retry, scored by due time (ms) |
//! | `{ns}:{P}:dead`                   | stream  | the partition's dead letters: jobs that exhausted their attempts |
//! | `{ns}:{P}:usage:{tenant}`         | hash    | a tenant's unfinished `jobs`/`bytes` in the partition ([`super::usage`]) |
//! | `{ns}:{P}:idem:{model}:{kind}:{key hash}` | string | `{job id} {body hash}` for an `Idempotency-Key`, one namespace per model and job kind |
//! | `{ns}:{P}:jobs:{tenant}:{bucket}` | zset | the job index ([`super::index`]): ids of the tenant's jobs submitted into the partition in hour `bucket` (Unix ms / [`INDEX_BUCKET_MS`]), all scored 0 so they sort by id (UUIDv7: by time); written by the submit script, expires [`Keys::job_index`]'s retention after the hour ends |
//! | `{ns}:{P}:webhooks`               | stream  | the webhook outbox ([`super::webhooks`]): calls queued by the scripts that change a job, read by group [`super::webhooks::GROUP`], deleted once settled |
//! | `{ns}:{P}:webhooks:retries`       | zset    | calls waiting out a back-off, scored by due time (ms) |
//! | `{ns}:{P}:webhooks:dead`          | stream  | calls that exhausted their retries, for `jobctl webhooks` |
//! | `{ns}:{t.<tenant>}:webhook-secrets` | hash  | a tenant's signing secrets: `current`, `previous`, `previous_until` (ms) |
//! | `{ns}:{reg}:models`               | hash    | model name → signature JSON, written by workers         |
//! | `{ns}:{reg}:registry:{model}`     | hash    | model versions ([`super::registry`]): `seq` counter, `{n}` → version JSON, `sig:{n}` → signature JSON |
//! | `{ns}:{reg}:current`              | hash    | model → current version number                          |
//! | `{ns}:{reg}:registry-epoch`       | string  | counter bumped whenever any `current` changes: a cheap periodic check |
//! | `{ns}:{reg}:history:{model}`      | list    | earlier current versions, newest first (rollback)       |
//! | `{ns}:{reg}:blob:{sha256}`        | string  | ONNX bytes of a version, content-addressed              |
//! | `{ns}:{reg}:blob-refs`            | hash    | sha256 → versions holding those bytes; field `.counted` once every blob is counted ([`super::registry`]) |
//! | `{ns}:{reg}:tenant-models:{tenant}` | set   | a tenant's model names, kept by quota-checked registrations |
//! | `{ns}:{reg}:loading`              | hash    | consumer → `{model} {version} {Redis ms}` while that worker loads a registry version ([`super::loading`]) |
//! | `{ns}:{reg}:dataset:{name}`       | hash    | an uploaded training dataset: CSV bytes and what the API checked ([`super::datasets`]) |
//! | `{ns}:{reg}:datasets`             | set     | names of the stored datasets                            |
//! | `{ns}:{reg}:usage:{tenant}`       | hash    | a tenant's `datasets`/`dataset_bytes` ([`super::usage`]) |
//! | `{ns}:{reg}:workers:{model}`      | zset    | worker heartbeats: consumer name → last beat (Redis ms); stale members pruned, key expires ([`super::heartbeat`]) |
//! | `{ns}:{t.<tenant>}:rate[:{model}]` | hash   | a token bucket (`tokens`, `at`) of a tenant, or of a tenant's model ([`super::ratelimit`]); expires when full |
//!
//! Pub/sub channels are not keys (no slot):
//!
//! | channel                    | carries                                                       |
//! |----------------------------|---------------------------------------------------------------|
//! | `{ns}:events:job-finished` | job ids, published when a job reaches a terminal state; for a job an event stream follows (`watched`, [`super::watch`]) also at each start, progress and retry |
//! | `{ns}:events:models`       | model names, published when a signature changes               |
//! | `{ns}:events:registry`     | model names, published when a model's current version changes |
//!
//! A job's stream follows from its kind ([`queue_of`]): predictions travel on
//! their model's stream, the rest on the `.control` and `.train` streams, so
//! a long training run never holds up a batch of predictions.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use uuid::Uuid;

use crate::job::JobKind;

/// The consumer group every worker joins on every model stream.
pub const GROUP: &str = "workers";

/// The "model" whose stream carries control jobs (model validation) that any
/// worker may run. No model name can start with `.`, so it never clashes.
pub const CONTROL: &str = ".control";

/// The "model" whose stream carries `retrain` jobs. Only training slots read
/// it, so a worker takes a training job only when it has a slot free.
pub const TRAIN: &str = ".train";

/// The tag of the registry and control keys.
const REGISTRY_TAG: &str = "{reg}";

/// Redis Cluster's slot count.
const SLOTS: u16 = 16384;

/// Most partitions a deployment may have (ids carry the partition in two
/// bytes; far beyond any useful count of masters).
pub const MAX_PARTITIONS: u16 = 1024;

/// A partition number, `0..P`.
pub type Partition = u16;

/// The span of one bucket of the job index ([`Keys::job_index`]), in ms:
/// an hour, so a bucket outlives its last record by at most an hour.
pub const INDEX_BUCKET_MS: i64 = 3_600_000;

/// The "model" naming the stream a job of `kind` for `model` travels on:
/// the one rule the API's submit, retries and dead-letter replays share.
pub fn queue_of(kind: JobKind, model: &str) -> &str {
    match kind {
        JobKind::Predict => model,
        JobKind::Validate => CONTROL,
        JobKind::Retrain => TRAIN,
    }
}

/// Whether a namespace may prefix keys: not empty, and no brace, which
/// would start a hash tag of its own.
pub fn valid_namespace(ns: &str) -> bool {
    !ns.is_empty() && !ns.contains(['{', '}'])
}

/// The partition a job id names (see [`Keys::new_job_id`]).
pub fn partition_of(id: &Uuid) -> Partition {
    let b = id.as_bytes();
    u16::from_be_bytes([b[14], b[15]])
}

/// Cluster slot of a hash tag's content.
pub fn slot_of_tag(tag: &str) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(tag.as_bytes()) % SLOTS
}

/// Where partition `i` would like its slot, as a fraction of the slot
/// space: `i`'s base-6 digits reversed, each digit placed by [`SPREAD`], and
/// the middle of the cell so reached. Any first 2, 3 or 6 partitions (and
/// every multiple of 6) land one per half, third or sixth: balanced on 2,
/// 3 or 6 masters holding equal slot ranges, whatever P is.
fn target(i: Partition) -> f64 {
    /// The order a cell's six sub-cells are used in, so that each prefix
    /// of 2 and 3 partitions spans halves and thirds.
    const SPREAD: [u16; 6] = [0, 4, 2, 5, 1, 3];
    let (mut x, mut scale, mut n) = (0.0, 1.0 / 6.0, i);
    loop {
        x += f64::from(SPREAD[usize::from(n % 6)]) * scale;
        n /= 6;
        if n == 0 {
            return x + scale / 2.0;
        }
        scale /= 6.0;
    }
}

/// The tag (without braces) of partition `i`: `p<i>.<k>` with the smallest
/// `k` whose slot is within a few slots of [`target`].
fn partition_tag(i: Partition) -> String {
    let want = (target(i) * f64::from(SLOTS)) as i32;
    const WINDOW: i32 = 32;
    for k in 0..1_000_000u32 {
        let tag = format!("p{i}.{k}");
        if (i32::from(slot_of_tag(&tag)) - want).abs() < WINDOW {
            return tag;
        }
    }
    format!("p{i}")
}

/// The keys of a partition's webhook delivery ([`Keys::webhooks`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookKey {
    Outbox,
    Retries,
    Dead,
}

/// Builds the keys of one namespace.
#[derive(Debug, Clone)]
pub struct Keys {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    ns: String,
    /// `{ns}:{tag}` of each partition `0..P`.
    prefixes: Vec<String>,
    /// `{ns}:{reg}`.
    registry: String,
    /// Round-robin dealer of new jobs.
    next: AtomicU32,
}

impl PartialEq for Keys {
    fn eq(&self, other: &Keys) -> bool {
        self.inner.ns == other.inner.ns && self.partitions() == other.partitions()
    }
}

impl Eq for Keys {}

impl Keys {
    /// One partition: the layout of a deployment that never set `--partitions`.
    pub fn new(namespace: &str) -> Keys {
        Keys::with_partitions(namespace, 1)
    }

    /// `partitions` is clamped to `1..=MAX_PARTITIONS`; configurations
    /// refuse values outside it before they get here.
    pub fn with_partitions(namespace: &str, partitions: Partition) -> Keys {
        let p = partitions.clamp(1, MAX_PARTITIONS);
        Keys {
            inner: Arc::new(Inner {
                ns: namespace.to_owned(),
                prefixes: (0..p).map(|i| prefix(namespace, i)).collect(),
                registry: format!("{namespace}:{REGISTRY_TAG}"),
                next: AtomicU32::new(rand::random()),
            }),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.inner.ns
    }

    /// P, the number of partitions.
    pub fn partitions(&self) -> Partition {
        self.inner.prefixes.len() as Partition
    }

    /// Every partition, `0..P`.
    pub fn all_partitions(&self) -> std::ops::Range<Partition> {
        0..self.partitions()
    }

    /// `{ns}:{tag}` of partition `p`. A partition at or over P (a job from
    /// before P was lowered) gets its tag computed, never a wrong one.
    fn part(&self, p: Partition) -> std::borrow::Cow<'_, str> {
        match self.inner.prefixes.get(usize::from(p)) {
            Some(s) => std::borrow::Cow::Borrowed(s.as_str()),
            None => std::borrow::Cow::Owned(prefix(&self.inner.ns, p)),
        }
    }

    /// The partition for a new job: the one its idempotency key hashes to,
    /// so a retry lands where the first attempt is, else the next in turn.
    pub fn pick_partition(&self, idempotency_key_hash: Option<&str>) -> Partition {
        let p = u32::from(self.partitions());
        let n = match idempotency_key_hash {
            Some(h) => h.bytes().fold(0u32, |acc, b| {
                acc.wrapping_mul(31).wrapping_add(u32::from(b))
            }),
            None => self.inner.next.fetch_add(1, Ordering::Relaxed),
        };
        (n % p) as Partition
    }

    /// A new job id (UUIDv7, time-ordered) naming partition `p` in its last
    /// two bytes (46 random bits remain beside the millisecond clock).
    pub fn new_job_id(&self, p: Partition) -> Uuid {
        let mut b = *Uuid::now_v7().as_bytes();
        b[14..16].copy_from_slice(&p.to_be_bytes());
        Uuid::from_bytes(b)
    }

    pub fn job(&self, id: &Uuid) -> String {
        format!("{}:job:{}", self.part(partition_of(id)), id)
    }

    /// The stream of `queue` (a model, [`CONTROL`] or [`TRAIN`]) in
    /// partition `p`.
    pub fn stream(&self, queue: &str, p: Partition) -> String {
        format!("{}:stream:{}", self.part(p), queue)
    }

    /// The stream a job travels on: its kind's queue in its id's partition.
    pub fn stream_of(&self, kind: JobKind, model: &str, id: &Uuid) -> String {
        self.stream(queue_of(kind, model), partition_of(id))
    }

    /// The queue and partition of a stream key of this namespace.
    pub fn parse_stream<'a>(&self, stream_key: &'a str) -> Option<(&'a str, Partition)> {
        let rest = stream_key
            .strip_prefix(self.inner.ns.as_str())?
            .strip_prefix(":{p")?;
        let (tag, rest) = rest.split_once('}')?;
        let p = tag.split_once('.').map_or(tag, |(i, _)| i).parse().ok()?;
        let queue = rest.strip_prefix(":stream:")?;
        (self.part(p).as_ref() == &stream_key[..stream_key.len() - rest.len()])
            .then_some((queue, p))
    }

    /// The model (or control/training queue) of a stream key.
    pub fn model_of_stream<'a>(&self, stream_key: &'a str) -> Option<&'a str> {
        self.parse_stream(stream_key).map(|(q, _)| q)
    }

    /// A `SCAN MATCH` pattern of every stream of partition `p`.
    pub fn stream_pattern(&self, p: Partition) -> String {
        format!("{}*", glob_escape(&self.stream("", p)))
    }

    /// The dead-letter stream of partition `p`, shared by all its models
    /// (see [`super::wire::dead`] for its fields).
    pub fn dead_letters(&self, p: Partition) -> String {
        format!("{}:dead", self.part(p))
    }

    /// Jobs of one stream waiting out a retry back-off; their payload waits
    /// in the job record's `payload` field.
    pub fn delayed(&self, queue: &str, p: Partition) -> String {
        format!("{}:delayed:{}", self.part(p), queue)
    }

    /// The delayed set of the stream a job travels on.
    pub fn delayed_of(&self, kind: JobKind, model: &str, id: &Uuid) -> String {
        self.delayed(queue_of(kind, model), partition_of(id))
    }

    /// An idempotency record, in the partition its key picked; `key_hash`
    /// is a hex digest of the client's key, so arbitrary header bytes never
    /// end up in a key name. Scoped by job kind: the same key sent to
    /// predict and to retrain names two requests, not a reuse.
    pub fn idempotency(&self, p: Partition, model: &str, kind: JobKind, key_hash: &str) -> String {
        format!(
            "{}:idem:{}:{}:{}",
            self.part(p),
            model,
            kind.as_str(),
            key_hash
        )
    }

    /// A tenant's job usage counters in partition `p` (see [`super::usage`]).
    pub fn job_usage(&self, tenant: &str, p: Partition) -> String {
        format!("{}:usage:{}", self.part(p), tenant)
    }

    /// The job index of `tenant` in partition `p` for hour `bucket` (Unix
    /// ms / [`INDEX_BUCKET_MS`]; see [`super::index`]). The tenant name is
    /// followed by the bucket number, which holds no `:`, so two tenants'
    /// keys never collide.
    pub fn job_index(&self, tenant: &str, p: Partition, bucket: i64) -> String {
        format!("{}:jobs:{}:{}", self.part(p), tenant, bucket)
    }

    /// A tenant's dataset usage counters (see [`super::usage`]).
    pub fn dataset_usage(&self, tenant: &str) -> String {
        format!("{}:usage:{}", self.inner.registry, tenant)
    }

    /// Partition `p`'s webhook outbox, its retries and its dead letters
    /// ([`super::webhooks`]); `part` is [`WebhookKey`].
    pub fn webhooks(&self, p: Partition, part: WebhookKey) -> String {
        let suffix = match part {
            WebhookKey::Outbox => "",
            WebhookKey::Retries => ":retries",
            WebhookKey::Dead => ":dead",
        };
        format!("{}:webhooks{suffix}", self.part(p))
    }

    /// A tenant's webhook signing secrets ([`super::webhooks::secrets`]).
    pub fn webhook_secrets(&self, tenant: &str) -> String {
        format!("{}:{{t.{}}}:webhook-secrets", self.inner.ns, tenant)
    }

    /// A tenant's request token bucket (see [`super::ratelimit`]).
    pub fn rate(&self, tenant: &str) -> String {
        format!("{}:{{t.{}}}:rate", self.inner.ns, tenant)
    }

    /// The token bucket of one model of a tenant (`model` is the internal,
    /// tenant-qualified name, so it cannot collide with another tenant's);
    /// under the tenant's tag, so one script takes from both.
    pub fn model_rate(&self, model: &str) -> String {
        format!("{}:{}", self.rate(crate::model::tenant_of(model)), model)
    }

    fn reg(&self, rest: std::fmt::Arguments<'_>) -> String {
        format!("{}:{}", self.inner.registry, rest)
    }

    pub fn models(&self) -> String {
        self.reg(format_args!("models"))
    }

    /// Heartbeats of the workers serving `model` (see
    /// [`super::heartbeat`]).
    pub fn workers(&self, model: &str) -> String {
        self.reg(format_args!("workers:{model}"))
    }

    /// A model's versions (see [`super::registry`]).
    pub fn registry(&self, model: &str) -> String {
        self.reg(format_args!("registry:{model}"))
    }

    /// Model → current version number.
    pub fn current(&self) -> String {
        self.reg(format_args!("current"))
    }

    /// Bumped whenever a current version changes.
    pub fn registry_epoch(&self) -> String {
        self.reg(format_args!("registry-epoch"))
    }

    /// Earlier current versions of a model, for rollback.
    pub fn history(&self, model: &str) -> String {
        self.reg(format_args!("history:{model}"))
    }

    /// ONNX bytes by content hash.
    pub fn blob(&self, sha256: &str) -> String {
        self.reg(format_args!("blob:{sha256}"))
    }

    /// sha256 → how many versions hold those bytes.
    pub fn blob_refs(&self) -> String {
        self.reg(format_args!("blob-refs"))
    }

    /// The model names of a tenant, for per-tenant quotas.
    pub fn tenant_models(&self, tenant: &str) -> String {
        self.reg(format_args!("tenant-models:{tenant}"))
    }

    /// Which worker is loading which version right now (quarantine).
    pub fn loading(&self) -> String {
        self.reg(format_args!("loading"))
    }

    /// A `SCAN MATCH` pattern of every blob key of this namespace.
    pub fn blob_pattern(&self) -> String {
        format!("{}*", glob_escape(&self.blob("")))
    }

    /// A `SCAN MATCH` pattern of every registry key of this namespace.
    pub fn registry_pattern(&self) -> String {
        format!("{}*", glob_escape(&self.registry("")))
    }

    /// The slot every registry key lives in: where a `SCAN` for them goes.
    pub fn registry_slot(&self) -> u16 {
        slot_of_tag("reg")
    }

    /// The slot of partition `p`.
    pub fn partition_slot(&self, p: Partition) -> u16 {
        slot_of_tag(&partition_tag(p))
    }

    /// The sha256 of a blob key of this namespace.
    pub fn sha_of_blob<'a>(&self, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(self.inner.registry.as_str())?
            .strip_prefix(":blob:")
    }

    /// The model of a registry key of this namespace.
    pub fn model_of_registry<'a>(&self, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(self.inner.registry.as_str())?
            .strip_prefix(":registry:")
    }

    /// A training dataset by (tenant-qualified) name.
    pub fn dataset(&self, name: &str) -> String {
        self.reg(format_args!("dataset:{name}"))
    }

    /// Names of the stored datasets.
    pub fn datasets(&self) -> String {
        self.reg(format_args!("datasets"))
    }

    pub fn registry_channel(&self) -> String {
        format!("{}:events:registry", self.inner.ns)
    }

    pub fn job_finished_channel(&self) -> String {
        format!("{}:events:job-finished", self.inner.ns)
    }

    pub fn models_channel(&self) -> String {
        format!("{}:events:models", self.inner.ns)
    }
}

fn prefix(ns: &str, p: Partition) -> String {
    format!("{ns}:{{{}}}", partition_tag(p))
}

/// `s` with Redis glob characters escaped, for `SCAN MATCH`, so a namespace
/// such as `a[1]` matches only itself.
pub(crate) fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The slot Redis gives a key: its tag's, if it has one.
    fn slot(key: &str) -> u16 {
        let tag = key
            .split_once('{')
            .and_then(|(_, r)| r.split_once('}'))
            .map_or(key, |(t, _)| t);
        slot_of_tag(tag)
    }

    #[test]
    fn every_key_is_prefixed_by_the_namespace_and_tagged() {
        let k = Keys::with_partitions("t1", 4);
        let id = k.new_job_id(2);
        let p2 = format!("t1:{{{}}}", partition_tag(2));
        assert_eq!(k.job(&id), format!("{p2}:job:{id}"));
        assert_eq!(k.stream("mlp128", 2), format!("{p2}:stream:mlp128"));
        assert_eq!(k.stream_of(JobKind::Predict, "m", &id), k.stream("m", 2));
        assert_eq!(k.stream_of(JobKind::Retrain, "m", &id), k.stream(TRAIN, 2));
        assert_eq!(k.delayed("m", 2), format!("{p2}:delayed:m"));
        assert_eq!(k.dead_letters(2), format!("{p2}:dead"));
        assert_eq!(k.job_usage("acme", 2), format!("{p2}:usage:acme"));
        assert_eq!(
            k.job_index("acme", 2, 493_000),
            format!("{p2}:jobs:acme:493000")
        );
        assert_eq!(
            k.idempotency(2, "m", JobKind::Predict, "ab12"),
            format!("{p2}:idem:m:predict:ab12")
        );
        assert_ne!(
            k.idempotency(2, "m", JobKind::Predict, "ab12"),
            k.idempotency(2, "m", JobKind::Retrain, "ab12")
        );
        assert_eq!(k.models(), "t1:{reg}:models");
        assert_eq!(k.workers("mlp128"), "t1:{reg}:workers:mlp128");
        assert_eq!(k.registry("m"), "t1:{reg}:registry:m");
        assert_eq!(k.current(), "t1:{reg}:current");
        assert_eq!(k.registry_epoch(), "t1:{reg}:registry-epoch");
        assert_eq!(k.history("m"), "t1:{reg}:history:m");
        assert_eq!(k.blob("ab"), "t1:{reg}:blob:ab");
        assert_eq!(k.blob_refs(), "t1:{reg}:blob-refs");
        assert_eq!(k.tenant_models("acme"), "t1:{reg}:tenant-models:acme");
        assert_eq!(k.loading(), "t1:{reg}:loading");
        assert_eq!(k.dataset("acme~bc"), "t1:{reg}:dataset:acme~bc");
        assert_eq!(k.datasets(), "t1:{reg}:datasets");
        assert_eq!(k.dataset_usage("acme"), "t1:{reg}:usage:acme");
        assert_eq!(k.rate("acme"), "t1:{t.acme}:rate");
        assert_eq!(k.model_rate("acme~m"), "t1:{t.acme}:rate:acme~m");
        assert_eq!(k.model_rate("m"), "t1:{t.default}:rate:m");
        assert_eq!(k.job_finished_channel(), "t1:events:job-finished");
        assert_eq!(k.models_channel(), "t1:events:models");
        assert_eq!(k.registry_channel(), "t1:events:registry");
        assert!(!crate::model::valid_internal_model_name(CONTROL));
        assert!(!crate::model::valid_internal_model_name(TRAIN));
        assert_eq!(k.sha_of_blob(&k.blob("ab")), Some("ab"));
        assert_eq!(k.model_of_registry(&k.registry("acme~m")), Some("acme~m"));
        assert_eq!(Keys::new("a*b").blob_pattern(), "a\\*b:{reg}:blob:*");
        assert_eq!(k.registry_pattern(), "t1:{reg}:registry:*");
    }

    #[test]
    fn the_keys_of_each_script_share_a_slot() {
        let k = Keys::with_partitions("infer", 6);
        for p in k.all_partitions() {
            let id = k.new_job_id(p);
            let s = slot(&k.job(&id));
            assert_eq!(s, k.partition_slot(p));
            for key in [
                k.stream("m", p),
                k.stream(CONTROL, p),
                k.delayed("m", p),
                k.dead_letters(p),
                k.job_usage("acme", p),
                k.job_index("acme", p, 7),
                k.idempotency(p, "m", JobKind::Predict, "ab"),
            ] {
                assert_eq!(slot(&key), s, "{key}");
            }
        }
        let r = slot(&k.registry("m"));
        assert_eq!(r, k.registry_slot());
        for key in [
            k.models(),
            k.current(),
            k.registry_epoch(),
            k.history("m"),
            k.blob("ab"),
            k.blob_refs(),
            k.tenant_models("t"),
            k.loading(),
            k.dataset("d"),
            k.datasets(),
            k.dataset_usage("t"),
            k.workers("m"),
        ] {
            assert_eq!(slot(&key), r, "{key}");
        }
        assert_eq!(slot(&k.rate("acme")), slot(&k.model_rate("acme~m")));
    }

    #[test]
    fn partitions_spread_over_the_slot_space_whatever_p_is() {
        // With masters holding equal slot ranges, partitions spread evenly.
        let spread = |p: u16, masters: usize| {
            let k = Keys::with_partitions("infer", p);
            let mut per = vec![0; masters];
            for i in k.all_partitions() {
                per[usize::from(k.partition_slot(i)) * masters / usize::from(SLOTS)] += 1;
            }
            per
        };
        assert_eq!(spread(6, 3), [2, 2, 2]);
        assert_eq!(spread(3, 3), [1, 1, 1]);
        assert_eq!(spread(2, 2), [1, 1]);
        assert_eq!(spread(4, 2), [2, 2]);
        assert_eq!(spread(12, 3), [4, 4, 4]);
        assert_eq!(spread(12, 6), [2; 6]);
        assert_eq!(spread(36, 6), [6; 6]);
        // A partition's tag does not depend on P.
        assert_eq!(
            Keys::with_partitions("infer", 2).stream("m", 1),
            Keys::with_partitions("infer", 9).stream("m", 1)
        );
    }

    #[test]
    fn a_job_id_names_its_partition() {
        let k = Keys::with_partitions("infer", 8);
        for p in k.all_partitions() {
            let id = k.new_job_id(p);
            assert_eq!(partition_of(&id), p);
            assert_eq!(id.get_version_num(), 7);
        }
        // A partition beyond P (P was lowered) still has its own keys.
        let small = Keys::with_partitions("infer", 2);
        let id = k.new_job_id(5);
        assert_eq!(small.job(&id), k.job(&id));
    }

    #[test]
    fn new_jobs_are_dealt_round_robin_and_keys_pin_theirs() {
        let k = Keys::with_partitions("infer", 3);
        let mut seen = [0; 3];
        for _ in 0..30 {
            seen[usize::from(k.pick_partition(None))] += 1;
        }
        assert_eq!(seen, [10, 10, 10]);
        assert_eq!(
            k.pick_partition(Some("abcd")),
            k.pick_partition(Some("abcd"))
        );
        assert_eq!(Keys::new("infer").pick_partition(Some("abcd")), 0);
    }

    #[test]
    fn kinds_are_routed_to_their_streams() {
        assert_eq!(queue_of(JobKind::Predict, "mlp128"), "mlp128");
        assert_eq!(queue_of(JobKind::Validate, "mlp128"), CONTROL);
        assert_eq!(queue_of(JobKind::Retrain, "mlp128"), TRAIN);
    }

    #[test]
    fn parse_stream_inverts_stream_and_respects_namespace() {
        let k = Keys::with_partitions("infer", 4);
        assert_eq!(k.parse_stream(&k.stream("mlp128", 3)), Some(("mlp128", 3)));
        assert_eq!(k.model_of_stream(&k.stream(TRAIN, 0)), Some(TRAIN));
        assert_eq!(
            k.parse_stream(&Keys::new("other").stream("mlp128", 0)),
            None
        );
        assert_eq!(k.parse_stream(&k.models()), None);
        assert_eq!(k.parse_stream("infer:{p1.999999}:stream:m"), None);
        assert!(valid_namespace("infer"));
        assert!(!valid_namespace("a{b}"));
        assert!(!valid_namespace(""));
    }

    #[test]
    fn namespaces_do_not_collide() {
        let a = Keys::new("a");
        let b = Keys::new("b");
        assert_ne!(a.stream("m", 0), b.stream("m", 0));
        assert_ne!(a.models(), b.models());
    }
}
