//! Webhooks on the API's side: the flags, the subscription a submission
//! carries (checked here, so a bad one is a 422 before anything is
//! written), and the dispatcher ([`dispatch`]) that sends the calls the
//! queue's scripts put in the outbox (see [`shared::queue::webhooks`]).
//!
//! The dispatcher runs in the API process, one task per partition, not in
//! the workers: the calls go to URLs tenants chose, and workers, which run
//! tenants' models, never open connections to the outside; the API already
//! renders the job view the call carries and holds the tenants' defaults;
//! and the calls are network waits like the API's own, kept off the hosts
//! that do the CPU work. Every API replica dispatches; a killed one's calls
//! are taken over by the others (or by itself once restarted).

pub(crate) mod dispatch;
pub(crate) mod guard;
pub(crate) mod sign;

use std::time::Duration;

use shared::queue::webhooks::{Event, Subscription};

use crate::error::ApiError;

/// The webhook flags of the API (`--webhook-*`).
#[derive(Debug, Clone, clap::Args)]
pub struct WebhookArgs {
    /// Let webhooks call loopback, private, link-local and other internal
    /// addresses (refused by default: SSRF). For tests and trusted
    /// networks only.
    #[arg(long, env = "WEBHOOK_ALLOW_PRIVATE", default_value_t = false,
          action = clap::ArgAction::Set)]
    pub webhook_allow_private: bool,

    /// Whether this process delivers webhook calls (every replica may; at
    /// least one must).
    #[arg(long, env = "WEBHOOK_DISPATCH", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub webhook_dispatch: bool,

    /// Time limit of one call (connect, send, answer), in ms.
    #[arg(long, env = "WEBHOOK_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(100..=120_000))]
    pub webhook_timeout_ms: u64,

    /// Calls in flight at once in this process.
    #[arg(long, env = "WEBHOOK_CONCURRENCY", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub webhook_concurrency: u32,

    /// The waits before each retry of a failed call, in ms, each with
    /// ±20% jitter; after the last one the call is dead-lettered. The
    /// default retries for about 15.7 hours (5 s, 30 s, 2 min, 10 min,
    /// 30 min, 1 h, 2 h, 4 h, 8 h).
    #[arg(
        long,
        env = "WEBHOOK_RETRY_DELAYS_MS",
        value_delimiter = ',',
        default_value = "5000,30000,120000,600000,1800000,3600000,7200000,14400000,28800000"
    )]
    pub webhook_retry_delays_ms: Vec<u64>,

    /// How long a rotated-out signing secret still signs calls, in seconds.
    #[arg(long, env = "WEBHOOK_SECRET_OVERLAP_SECS", default_value_t = 86_400)]
    pub webhook_secret_overlap_secs: u64,
}

impl WebhookArgs {
    pub(crate) fn timeout(&self) -> Duration {
        Duration::from_millis(self.webhook_timeout_ms)
    }
}

/// The webhook fields a submission body carries (`webhook`,
/// `webhook_events_filter`), as its handler parsed them.
#[derive(Debug, Default)]
pub(crate) struct WebhookFields {
    pub webhook: Option<String>,
    pub webhook_events_filter: Option<Vec<Event>>,
}

impl WebhookFields {
    /// The subscription they ask for, if any; 422 `invalid_webhook` or
    /// `webhook_not_allowed` when it cannot be.
    pub(crate) fn subscription(
        &self,
        allow_private: bool,
    ) -> Result<Option<Subscription>, ApiError> {
        let Some(url) = self.webhook.as_deref() else {
            if self.webhook_events_filter.is_some() {
                return Err(ApiError::InvalidWebhook(
                    "webhook_events_filter needs a webhook".into(),
                ));
            }
            return Ok(None);
        };
        guard::check_url(url, allow_private).map_err(|r| match r {
            guard::Refusal::Invalid => ApiError::InvalidWebhook(r.to_string()),
            guard::Refusal::Internal => ApiError::WebhookNotAllowed,
        })?;
        let events = match self.webhook_events_filter.as_deref() {
            None => vec![Event::Completed],
            Some([]) => {
                return Err(ApiError::InvalidWebhook(
                    "webhook_events_filter must name at least one event".into(),
                ));
            }
            Some(list) => list.to_vec(),
        };
        Ok(Some(Subscription {
            url: url.to_owned(),
            events,
        }))
    }
}
