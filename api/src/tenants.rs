//! What each tenant may use: quotas on what it stores and queues, its share
//! of the API's request slots, and its request rates. Read from the tenants
//! file (`--tenants-file`, YAML) at start and again on SIGHUP, so an
//! operator changes a limit without a restart.
//!
//! ```yaml
//! # Every tenant gets `defaults`; a tenant's own block overrides field by field.
//! defaults:
//!   max_models: 20
//!   max_queued_jobs: 10000
//!   rate: { per_sec: 200, burst: 400 }        # all of a tenant's requests
//! tenants:
//!   acme:
//!     max_models: 100
//!     model_rate: { per_sec: 50, burst: 100 }   # each of its models' routes
//!     request_share: 0.25                       # of --max-concurrent-requests
//!     webhook: { url: "https://acme.example/hooks", events: [completed] }
//! ```
//!
//! Fields and their built-in defaults are [`Policy`]'s. Without a file every
//! tenant gets the built-in defaults. A quota of 0 means unbounded; a rate
//! that is absent means no rate limit. Shares are fractions of the process's
//! pools (`--max-concurrent-requests`, `--max-long-polls`); their built-in
//! default is the whole pool when the API is open (one tenant) and half of
//! it when it has API keys, so no single tenant can take every slot.
//!
//! The checks live where the state they bound lives: queued jobs and bytes
//! in the submit script ([`crate::submit`]), datasets in the dataset script,
//! models and versions in the registry's register script, shares and rates
//! in [`crate::admission`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use shared::model::valid_tenant_name;
use shared::queue::datasets::DatasetQuota;
use shared::queue::ratelimit::Rate;
use shared::queue::registry;
use shared::queue::usage::JobQuota;
use shared::queue::webhooks::{Event, Subscription};
use shared::queue::wire::RegistryLimits;

/// One tenant's limits, as resolved from the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Models with at least one version.
    pub max_models: u64,
    /// Versions kept per model (delete old ones to make room).
    pub max_versions_per_model: u64,
    pub max_datasets: u64,
    /// All datasets' CSV bytes together.
    pub max_dataset_bytes: u64,
    /// Unfinished jobs (queued or running) at once, all models together.
    pub max_queued_jobs: u64,
    /// Stream payload bytes of those jobs.
    pub max_queued_bytes: u64,
    /// Fraction of `--max-concurrent-requests` the tenant's requests may
    /// hold at once.
    pub request_share: f64,
    /// Fraction of `--max-long-polls` its waiting `?wait=` polls may hold.
    pub long_poll_share: f64,
    /// All of the tenant's requests.
    pub rate: Option<Rate>,
    /// Requests naming one of its models, per model.
    pub model_rate: Option<Rate>,
    /// The webhook of every job that does not name its own.
    pub webhook: Option<Subscription>,
}

impl Policy {
    /// The built-in defaults; `shared_pools` is whether several tenants
    /// share the process (the API has keys).
    pub fn builtin(shared_pools: bool) -> Policy {
        let share = if shared_pools { 0.5 } else { 1.0 };
        Policy {
            max_models: 100,
            max_versions_per_model: 100,
            max_datasets: 100,
            max_dataset_bytes: 1 << 30,
            max_queued_jobs: 1_000_000,
            max_queued_bytes: 1 << 30,
            request_share: share,
            long_poll_share: share,
            rate: None,
            model_rate: None,
            webhook: None,
        }
    }

    pub fn job_quota(&self) -> JobQuota {
        JobQuota {
            max_jobs: self.max_queued_jobs,
            max_bytes: self.max_queued_bytes,
        }
    }

    /// The registry's bounds for this tenant: its models (counted in its
    /// model set) and each model's versions.
    pub fn registry_quota(&self, keys: &shared::Keys, tenant: &str) -> registry::Quota {
        let limits = self.registry_limits();
        registry::Quota {
            tenant_models: keys.tenant_models(tenant),
            max_versions: limits.max_versions,
            max_models: limits.max_models,
        }
    }

    /// The same bounds as a retrain job carries them to its worker.
    pub fn registry_limits(&self) -> RegistryLimits {
        let bound = |n: u64| (n > 0).then(|| u32::try_from(n).unwrap_or(u32::MAX));
        RegistryLimits {
            max_versions: bound(self.max_versions_per_model),
            max_models: bound(self.max_models),
        }
    }

    pub fn dataset_quota(&self) -> DatasetQuota {
        DatasetQuota {
            max_datasets: self.max_datasets,
            max_bytes: self.max_dataset_bytes,
        }
    }

    /// How many of `pool` slots this tenant may hold: its share, at least one.
    pub fn slots_of(share: f64, pool: u32) -> u32 {
        ((f64::from(pool) * share).floor() as u32).clamp(1, pool.max(1))
    }

    fn apply(&mut self, o: &Overrides) {
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = o.$f { self.$f = v; } )* };
        }
        set!(
            max_models,
            max_versions_per_model,
            max_datasets,
            max_dataset_bytes,
            max_queued_jobs,
            max_queued_bytes,
            request_share,
            long_poll_share
        );
        if let Some(r) = &o.rate {
            self.rate = r.as_ref().map(RateSpec::as_rate);
        }
        if let Some(r) = &o.model_rate {
            self.model_rate = r.as_ref().map(RateSpec::as_rate);
        }
        if let Some(w) = &o.webhook {
            self.webhook = w.as_ref().map(|w| Subscription {
                url: w.url.clone(),
                events: w.events.clone().unwrap_or_else(|| vec![Event::Completed]),
            });
        }
    }
}

/// A block of the file: every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Overrides {
    max_models: Option<u64>,
    max_versions_per_model: Option<u64>,
    max_datasets: Option<u64>,
    max_dataset_bytes: Option<u64>,
    max_queued_jobs: Option<u64>,
    max_queued_bytes: Option<u64>,
    request_share: Option<f64>,
    long_poll_share: Option<f64>,
    /// Absent: keep the default; `null`: no rate; a value: that rate.
    #[serde(default, deserialize_with = "present")]
    rate: Option<Option<RateSpec>>,
    #[serde(default, deserialize_with = "present")]
    model_rate: Option<Option<RateSpec>>,
    #[serde(default, deserialize_with = "present")]
    webhook: Option<Option<WebhookSpec>>,
}

/// `{url, events}`; `events` defaults to `[completed]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookSpec {
    url: String,
    #[serde(default)]
    events: Option<Vec<Event>>,
}

/// A field that is present, `null` included (absent stays `None`).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// `{per_sec, burst}`; `burst` defaults to one second's worth.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateSpec {
    per_sec: f64,
    #[serde(default)]
    burst: Option<u64>,
}

impl RateSpec {
    fn as_rate(&self) -> Rate {
        Rate {
            per_sec: self.per_sec,
            burst: self
                .burst
                .unwrap_or_else(|| self.per_sec.ceil().max(1.0) as u64),
        }
    }

    fn check(&self, at: &str) -> Result<(), String> {
        if !(self.per_sec.is_finite() && self.per_sec > 0.0) {
            return Err(format!("{at}.per_sec must be a positive number"));
        }
        if self.burst == Some(0) {
            return Err(format!("{at}.burst must be at least 1"));
        }
        Ok(())
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    defaults: Overrides,
    #[serde(default)]
    tenants: HashMap<String, Overrides>,
}

/// Errors reading the tenants file: they stop the process at start-up, and
/// keep the previous policies on a reload.
#[derive(Debug, thiserror::Error)]
pub enum TenantsError {
    #[error("cannot read the tenants file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Every tenant's policy.
#[derive(Debug, Clone)]
pub struct Policies {
    defaults: Policy,
    tenants: HashMap<String, Policy>,
}

impl Policies {
    /// No file: the built-in defaults for everyone.
    pub fn builtin(shared_pools: bool) -> Policies {
        Policies {
            defaults: Policy::builtin(shared_pools),
            tenants: HashMap::new(),
        }
    }

    pub fn load(path: &Path, shared_pools: bool) -> Result<Policies, TenantsError> {
        let text = std::fs::read_to_string(path).map_err(|source| TenantsError::Read {
            path: path.to_owned(),
            source,
        })?;
        Policies::parse(&text, shared_pools).map_err(|message| TenantsError::Invalid {
            path: path.to_owned(),
            message,
        })
    }

    pub fn parse(text: &str, shared_pools: bool) -> Result<Policies, String> {
        let file: File = if text.trim().is_empty() {
            File::default()
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?
        };
        check(&file.defaults, "defaults")?;
        let mut defaults = Policy::builtin(shared_pools);
        defaults.apply(&file.defaults);
        let mut tenants = HashMap::new();
        for (name, o) in &file.tenants {
            if !valid_tenant_name(name) {
                return Err(format!("invalid tenant name {name:?}"));
            }
            check(o, &format!("tenants.{name}"))?;
            let mut p = defaults.clone();
            p.apply(o);
            tenants.insert(name.clone(), p);
        }
        Ok(Policies { defaults, tenants })
    }

    /// The policy of `tenant` (the defaults for a tenant the file does not
    /// name).
    pub fn of(&self, tenant: &str) -> &Policy {
        self.tenants.get(tenant).unwrap_or(&self.defaults)
    }
}

fn check(o: &Overrides, at: &str) -> Result<(), String> {
    for (name, share) in [
        ("request_share", o.request_share),
        ("long_poll_share", o.long_poll_share),
    ] {
        if let Some(s) = share
            && !(s > 0.0 && s <= 1.0)
        {
            return Err(format!("{at}.{name} must be more than 0 and at most 1"));
        }
    }
    if let Some(Some(w)) = &o.webhook {
        // The operator's own choice: only its form is checked here (an
        // internal address is theirs to allow with --webhook-allow-private,
        // and the dispatcher checks again).
        if crate::webhooks::guard::check_url(&w.url, true).is_err() {
            return Err(format!("{at}.webhook.url must be an http or https URL"));
        }
        if w.events.as_ref().is_some_and(Vec::is_empty) {
            return Err(format!("{at}.webhook.events must name at least one event"));
        }
    }
    for (name, rate) in [("rate", &o.rate), ("model_rate", &o.model_rate)] {
        if let Some(Some(r)) = rate {
            r.check(&format!("{at}.{name}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
defaults:
  max_models: 20
  rate: { per_sec: 200, burst: 400 }
tenants:
  acme:
    max_models: 100
    model_rate: { per_sec: 50 }
    request_share: 0.25
  globex:
    rate: null
"#;

    #[test]
    fn tenants_override_defaults_field_by_field() {
        let p = Policies::parse(FILE, true).unwrap();
        let acme = p.of("acme");
        assert_eq!(acme.max_models, 100);
        assert_eq!(acme.max_datasets, 100, "built-in default kept");
        assert_eq!(acme.request_share, 0.25);
        assert_eq!(acme.long_poll_share, 0.5, "shared pools: half by default");
        assert_eq!(
            acme.rate,
            Some(Rate {
                per_sec: 200.0,
                burst: 400
            })
        );
        assert_eq!(
            acme.model_rate,
            Some(Rate {
                per_sec: 50.0,
                burst: 50
            })
        );
        assert_eq!(p.of("globex").rate, None, "null switches a default off");
        assert_eq!(p.of("globex").max_models, 20);
        assert_eq!(
            p.of("initech").max_models,
            20,
            "unnamed tenants get defaults"
        );
    }

    #[test]
    fn bad_files_are_refused_with_the_field_named() {
        for (text, needle) in [
            ("defaults: {max_modles: 3}", "max_modles"),
            ("tenants: {Acme: {}}", "Acme"),
            (
                "tenants: {acme: {request_share: 0}}",
                "tenants.acme.request_share",
            ),
            ("defaults: {rate: {per_sec: -1}}", "defaults.rate.per_sec"),
            ("defaults: {rate: {per_sec: 1, burst: 0}}", "burst"),
        ] {
            let err = Policies::parse(text, false).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
        assert!(Policies::parse("", false).is_ok());
    }

    #[test]
    fn shares_become_at_least_one_slot() {
        assert_eq!(Policy::slots_of(0.5, 1024), 512);
        assert_eq!(Policy::slots_of(0.001, 10), 1);
        assert_eq!(Policy::slots_of(1.0, 10), 10);
    }

    #[test]
    fn an_open_api_gives_its_one_tenant_every_slot() {
        assert_eq!(Policies::builtin(false).of("default").request_share, 1.0);
        assert_eq!(Policies::builtin(true).of("acme").request_share, 0.5);
    }
}
