//! Webhooks: what a job's subscription is, how a call waits in Redis, and
//! what the job's record says about its deliveries. The API's dispatcher
//! (`api::webhooks`) sends the calls; this module owns every key and script
//! they go through.
//!
//! # Protocol
//!
//! ```text
//!  API     ── submit (Lua): HSET job:{id} webhook <Subscription JSON> hook <flags>
//!  scripts ── start / progress / finish / cancel (Lua), in the call that changes the job:
//!             if the job's `hook` flags ask for the event → XADD webhooks * id event attempt [progress]
//!  API     ── dispatcher: XREADGROUP GROUP dispatchers {consumer} … webhooks >, and XAUTOCLAIM of
//!             calls whose dispatcher died (idle past the lease), one task per partition
//!         ── POST to the URL, signed (Standard Webhooks), bounded in time, redirects not followed
//!         ── settle (Lua): record the attempt in job:{id} webhook_deliveries, XACK + XDEL, and
//!             delivered → done | failed → ZADD webhooks:retries <due> <call> | exhausted → XADD webhooks:dead
//!         ── release (Lua), every second: due retries → XADD webhooks * call <call JSON>
//!  jobctl  ── webhooks list / replay: webhooks:dead → XADD webhooks (tries reset), XDEL
//! ```
//!
//! # Guarantees
//!
//! * A job whose subscription asks for an event has the call queued by the
//!   same script that makes the event happen: a finished job always has its
//!   `completed` call in the outbox, whoever crashes after.
//! * A call leaves the outbox only in the script that settles it, which
//!   also parks it for a retry or dead-letters it: a dispatcher killed
//!   mid-delivery leaves it pending, and another one (or the same after a
//!   restart) takes it over once its lease ran out. Delivery is therefore
//!   at least once; the `webhook-id` header ([`Call::webhook_id`]) is the
//!   same on every attempt, so a receiver can deduplicate.
//! * A job without a webhook pays one more field in a read its scripts do
//!   anyway (`hook`), and nothing else.

pub mod outbox;
pub mod secrets;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The consumer group of every dispatcher on every outbox.
pub const GROUP: &str = "dispatchers";

/// Record field: the job's [`Subscription`] (JSON).
pub const FIELD_WEBHOOK: &str = "webhook";
/// Record field: what became of each event's calls (JSON object, event →
/// [`DeliveryState`]), written by the settle script.
pub const FIELD_DELIVERIES: &str = "webhook_deliveries";

/// What a subscription may ask to be called for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// The job started running (each attempt).
    Start,
    /// A retrain job finished an epoch.
    Progress,
    /// The job reached a terminal status.
    Completed,
}

impl Event {
    pub const ALL: [Event; 3] = [Event::Start, Event::Progress, Event::Completed];

    pub fn as_str(self) -> &'static str {
        match self {
            Event::Start => "start",
            Event::Progress => "progress",
            Event::Completed => "completed",
        }
    }

    pub fn parse(s: &str) -> Option<Event> {
        Event::ALL.into_iter().find(|e| e.as_str() == s)
    }

    /// Its letter in the record's `hook` flags, as the scripts test it.
    fn flag(self) -> char {
        match self {
            Event::Start => 's',
            Event::Progress => 'p',
            Event::Completed => 'c',
        }
    }

    /// The payload's `type`.
    pub fn type_name(self) -> &'static str {
        match self {
            Event::Start => "job.started",
            Event::Progress => "job.progress",
            Event::Completed => "job.completed",
        }
    }
}

/// A job's webhook: where to call, and for what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    pub url: String,
    pub events: Vec<Event>,
}

impl Subscription {
    /// The record's `hook` flags the scripts read.
    pub fn flags(&self) -> String {
        let mut out = String::with_capacity(3);
        for e in Event::ALL {
            if self.events.contains(&e) {
                out.push(e.flag());
            }
        }
        out
    }
}

/// One queued webhook call, as the dispatcher reads it from the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Call {
    /// The job it is about.
    pub id: Uuid,
    pub event: Event,
    /// The job's attempt the event happened in.
    pub attempt: u32,
    /// A progress event's progress JSON, as the worker wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// The `webhook-id`: the outbox entry id the call was first queued
    /// under, kept through retries and replays.
    pub wid: String,
    /// Delivery attempts made so far.
    #[serde(default)]
    pub tries: u32,
}

impl Call {
    /// The `webhook-id` header: stable over every attempt of this call,
    /// unique among calls (a stream entry id is unique in its partition, and
    /// the job id names the partition).
    pub fn webhook_id(&self) -> String {
        format!("msg_{}_{}", self.id.simple(), self.wid)
    }

    /// The call's JSON form, as a retry and a dead letter carry it.
    pub fn to_json(&self) -> String {
        // A struct of strings and numbers always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// How one event's calls stand, as the job's view shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeliveryState {
    pub webhook_id: String,
    pub event: Event,
    /// Delivery attempts so far.
    pub attempts: u32,
    pub state: DeliveryStatus,
    /// HTTP status of the last attempt, if the receiver answered.
    pub last_status_code: Option<u16>,
    pub last_duration_ms: u64,
    /// Why the last attempt failed (`null` once delivered).
    pub last_error: Option<String>,
    /// Unix ms.
    pub last_attempt_at: i64,
    /// When the next attempt is due (Unix ms), while `retrying`.
    pub next_attempt_at: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Delivered,
    Retrying,
    /// Out of retries: the call is in the dead-letter list.
    Dead,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_name_each_event_once_in_a_fixed_order() {
        let s = Subscription {
            url: "https://example.com/h".into(),
            events: vec![Event::Completed, Event::Start, Event::Completed],
        };
        assert_eq!(s.flags(), "sc");
    }

    #[test]
    fn a_call_round_trips_through_its_json() {
        let c = Call {
            id: Uuid::now_v7(),
            event: Event::Progress,
            attempt: 2,
            progress: Some(r#"{"epoch":1}"#.into()),
            wid: "1-0".into(),
            tries: 3,
        };
        let back: Call = serde_json::from_str(&c.to_json()).unwrap();
        assert_eq!(back, c);
        assert!(c.webhook_id().starts_with("msg_"));
    }
}
