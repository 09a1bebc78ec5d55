//! Redis key layout. Every key starts with the deployment's namespace
//! (`--namespace`, default `infer`) so several deployments, or several test
//! runs, share one Redis without seeing each other.
//!
//! | key                               | type    | holds                                                   |
//! |-----------------------------------|---------|---------------------------------------------------------|
//! | `{ns}:job:{id}`                   | hash    | a job's record: status, attempts, times, result, error  |
//! | `{ns}:stream:{model}`             | stream  | the model's work queue, read by group [`GROUP`]         |
//! | `{ns}:models`                     | hash    | model name → signature JSON, written by workers         |
//! | `{ns}:events:job-finished`        | pub/sub | job ids, published when a job reaches a terminal state  |
//! | `{ns}:events:models`              | pub/sub | model names, published when a signature changes         |
//! | `{ns}:dead`                       | stream  | dead letters: jobs that exhausted their attempts        |
//! | `{ns}:delayed`                    | zset    | job ids waiting for a retry, scored by due time (ms)    |
//! | `{ns}:idem:{model}:{kind}:{key hash}` | string | `{job id} {body hash}` for an `Idempotency-Key`, one namespace per model and job kind |
//! | `{ns}:usage:{tenant}`             | hash    | a tenant's usage, kept by the scripts that change it ([`super::usage`]): `jobs`/`bytes` of unfinished jobs, `datasets`/`dataset_bytes` |
//! | `{ns}:rate:{tenant}[:{model}]`    | hash    | a token bucket (`tokens`, `at`) of a tenant, or of a tenant's model ([`super::ratelimit`]); expires when full |
//! | `{ns}:workers:{model}`            | zset    | worker heartbeats: consumer name → last beat (Redis ms); stale members pruned, key expires ([`super::heartbeat`]) |
//! | `{ns}:registry:{model}`           | hash    | model versions ([`super::registry`]): `seq` counter, `{n}` → version JSON, `sig:{n}` → signature JSON |
//! | `{ns}:current`                    | hash    | model → current version number                          |
//! | `{ns}:registry-epoch`             | string  | counter bumped whenever any `current` changes: a cheap periodic check |
//! | `{ns}:history:{model}`            | list    | earlier current versions, newest first (rollback)       |
//! | `{ns}:blob:{sha256}`              | string  | ONNX bytes of a version, content-addressed              |
//! | `{ns}:events:registry`            | pub/sub | model names, published when a model's current version changes |
//! | `{ns}:stream:.control`            | stream  | control jobs (`validate`) every worker reads; `.` cannot start a model name |
//! | `{ns}:stream:.train`              | stream  | `retrain` jobs, read only by workers' training slots (`--train-slots`) |
//! | `{ns}:dataset:{name}`             | hash    | an uploaded training dataset: CSV bytes and what the API checked ([`super::datasets`]) |
//! | `{ns}:datasets`                   | set     | names of the stored datasets                            |
//! | `{ns}:blob-refs`                  | hash    | sha256 → versions holding those bytes; field `.counted` once every blob is counted ([`super::registry`]) |
//! | `{ns}:tenant-models:{tenant}`     | set     | a tenant's model names, kept by quota-checked registrations |
//! | `{ns}:loading`                    | hash    | consumer → `{model} {version} {Redis ms}` while that worker loads a registry version ([`super::loading`]) |
//!
//! A job's stream follows from its kind ([`queue_of`]): predictions travel on
//! their model's stream, the rest on the two streams above, so a long
//! training run never holds up a batch of predictions.

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

/// The "model" naming the stream a job of `kind` for `model` travels on:
/// the one rule the API's submit, retries and dead-letter replays share.
pub fn queue_of(kind: JobKind, model: &str) -> &str {
    match kind {
        JobKind::Predict => model,
        JobKind::Validate => CONTROL,
        JobKind::Retrain => TRAIN,
    }
}

/// Builds the keys of one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    ns: String,
}

impl Keys {
    pub fn new(namespace: &str) -> Keys {
        Keys {
            ns: namespace.to_owned(),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.ns
    }

    pub fn job(&self, id: &Uuid) -> String {
        format!("{}:job:{}", self.ns, id)
    }

    pub fn stream(&self, model: &str) -> String {
        format!("{}:stream:{}", self.ns, model)
    }

    /// The model name of a stream key of this namespace.
    pub fn model_of_stream<'a>(&self, stream_key: &'a str) -> Option<&'a str> {
        stream_key
            .strip_prefix(self.ns.as_str())?
            .strip_prefix(":stream:")
    }

    pub fn models(&self) -> String {
        format!("{}:models", self.ns)
    }

    /// The dead-letter stream shared by all models (see
    /// [`super::wire::dead`] for its fields).
    pub fn dead_letters(&self) -> String {
        format!("{}:dead", self.ns)
    }

    /// Jobs waiting out a retry back-off; their payload waits in the job
    /// record's `payload` field.
    pub fn delayed(&self) -> String {
        format!("{}:delayed", self.ns)
    }

    /// An idempotency record; `key_hash` is a hex digest of the client's
    /// key, so arbitrary header bytes never end up in a key name. Scoped by
    /// job kind: the same key sent to predict and to retrain names two
    /// requests, not a reuse.
    pub fn idempotency(&self, model: &str, kind: JobKind, key_hash: &str) -> String {
        format!("{}:idem:{}:{}:{}", self.ns, model, kind.as_str(), key_hash)
    }

    /// A tenant's usage counters (see [`super::usage`]).
    pub fn usage(&self, tenant: &str) -> String {
        format!("{}:usage:{}", self.ns, tenant)
    }

    /// A tenant's request token bucket (see [`super::ratelimit`]).
    pub fn rate(&self, tenant: &str) -> String {
        format!("{}:rate:{}", self.ns, tenant)
    }

    /// The token bucket of one model of a tenant (`model` is the internal,
    /// tenant-qualified name, so it cannot collide with another tenant's).
    pub fn model_rate(&self, model: &str) -> String {
        format!(
            "{}:rate:{}:{}",
            self.ns,
            crate::model::tenant_of(model),
            model
        )
    }

    /// Heartbeats of the workers serving `model` (see
    /// [`super::heartbeat`]).
    pub fn workers(&self, model: &str) -> String {
        format!("{}:workers:{}", self.ns, model)
    }

    /// A model's versions (see [`super::registry`]).
    pub fn registry(&self, model: &str) -> String {
        format!("{}:registry:{}", self.ns, model)
    }

    /// Model → current version number.
    pub fn current(&self) -> String {
        format!("{}:current", self.ns)
    }

    /// Bumped whenever a current version changes.
    pub fn registry_epoch(&self) -> String {
        format!("{}:registry-epoch", self.ns)
    }

    /// Earlier current versions of a model, for rollback.
    pub fn history(&self, model: &str) -> String {
        format!("{}:history:{}", self.ns, model)
    }

    /// ONNX bytes by content hash.
    pub fn blob(&self, sha256: &str) -> String {
        format!("{}:blob:{}", self.ns, sha256)
    }

    /// sha256 → how many versions hold those bytes.
    pub fn blob_refs(&self) -> String {
        format!("{}:blob-refs", self.ns)
    }

    /// The model names of a tenant, for per-tenant quotas.
    pub fn tenant_models(&self, tenant: &str) -> String {
        format!("{}:tenant-models:{}", self.ns, tenant)
    }

    /// Which worker is loading which version right now (quarantine).
    pub fn loading(&self) -> String {
        format!("{}:loading", self.ns)
    }

    /// A `SCAN MATCH` pattern of every blob key of this namespace.
    pub fn blob_pattern(&self) -> String {
        format!("{}:blob:*", glob_escape(&self.ns))
    }

    /// A `SCAN MATCH` pattern of every registry key of this namespace.
    pub fn registry_pattern(&self) -> String {
        format!("{}:registry:*", glob_escape(&self.ns))
    }

    /// The sha256 of a blob key of this namespace.
    pub fn sha_of_blob<'a>(&self, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(self.ns.as_str())?.strip_prefix(":blob:")
    }

    /// The model of a registry key of this namespace.
    pub fn model_of_registry<'a>(&self, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(self.ns.as_str())?
            .strip_prefix(":registry:")
    }

    /// A training dataset by (tenant-qualified) name.
    pub fn dataset(&self, name: &str) -> String {
        format!("{}:dataset:{}", self.ns, name)
    }

    /// Names of the stored datasets.
    pub fn datasets(&self) -> String {
        format!("{}:datasets", self.ns)
    }

    pub fn registry_channel(&self) -> String {
        format!("{}:events:registry", self.ns)
    }

    pub fn job_finished_channel(&self) -> String {
        format!("{}:events:job-finished", self.ns)
    }

    pub fn models_channel(&self) -> String {
        format!("{}:events:models", self.ns)
    }
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

    #[test]
    fn every_key_is_prefixed_by_the_namespace() {
        let k = Keys::new("t1");
        let id = Uuid::parse_str("0193a1b2-0000-7000-8000-000000000001").unwrap();
        assert_eq!(k.job(&id), "t1:job:0193a1b2-0000-7000-8000-000000000001");
        assert_eq!(k.stream("mlp128"), "t1:stream:mlp128");
        assert_eq!(k.models(), "t1:models");
        assert_eq!(k.job_finished_channel(), "t1:events:job-finished");
        assert_eq!(k.models_channel(), "t1:events:models");
        assert_eq!(k.dead_letters(), "t1:dead");
        assert_eq!(k.delayed(), "t1:delayed");
        assert_eq!(
            k.idempotency("m", JobKind::Predict, "ab12"),
            "t1:idem:m:predict:ab12"
        );
        assert_ne!(
            k.idempotency("m", JobKind::Predict, "ab12"),
            k.idempotency("m", JobKind::Retrain, "ab12")
        );
        assert_eq!(k.usage("acme"), "t1:usage:acme");
        assert_eq!(k.rate("acme"), "t1:rate:acme");
        assert_eq!(k.model_rate("acme~m"), "t1:rate:acme:acme~m");
        assert_eq!(k.model_rate("m"), "t1:rate:default:m");
        assert_eq!(k.workers("mlp128"), "t1:workers:mlp128");
        assert_eq!(k.registry("m"), "t1:registry:m");
        assert_eq!(k.current(), "t1:current");
        assert_eq!(k.registry_epoch(), "t1:registry-epoch");
        assert_eq!(k.history("m"), "t1:history:m");
        assert_eq!(k.blob("ab"), "t1:blob:ab");
        assert_eq!(k.registry_channel(), "t1:events:registry");
        assert_eq!(k.stream(CONTROL), "t1:stream:.control");
        assert!(!crate::model::valid_internal_model_name(CONTROL));
        assert_eq!(k.stream(TRAIN), "t1:stream:.train");
        assert!(!crate::model::valid_internal_model_name(TRAIN));
        assert_eq!(k.dataset("acme~bc"), "t1:dataset:acme~bc");
        assert_eq!(k.datasets(), "t1:datasets");
        assert_eq!(k.blob_refs(), "t1:blob-refs");
        assert_eq!(k.tenant_models("acme"), "t1:tenant-models:acme");
        assert_eq!(k.loading(), "t1:loading");
        assert_eq!(k.sha_of_blob(&k.blob("ab")), Some("ab"));
        assert_eq!(k.model_of_registry(&k.registry("acme~m")), Some("acme~m"));
        assert_eq!(Keys::new("a*b").blob_pattern(), "a\\*b:blob:*");
        assert_eq!(k.registry_pattern(), "t1:registry:*");
    }

    #[test]
    fn kinds_are_routed_to_their_streams() {
        assert_eq!(queue_of(JobKind::Predict, "mlp128"), "mlp128");
        assert_eq!(queue_of(JobKind::Validate, "mlp128"), CONTROL);
        assert_eq!(queue_of(JobKind::Retrain, "mlp128"), TRAIN);
    }

    #[test]
    fn model_of_stream_inverts_stream_and_respects_namespace() {
        let k = Keys::new("infer");
        assert_eq!(k.model_of_stream(&k.stream("mlp128")), Some("mlp128"));
        assert_eq!(k.model_of_stream("other:stream:mlp128"), None);
        assert_eq!(k.model_of_stream("infer:models"), None);
    }

    #[test]
    fn namespaces_do_not_collide() {
        let a = Keys::new("a");
        let b = Keys::new("b");
        assert_ne!(a.stream("m"), b.stream("m"));
        assert_ne!(a.models(), b.models());
    }
}
