//! The answers many operations share, written once as
//! `components/responses` and referenced from every operation they apply to.
//!
//! An operation documents what is its own (its 2xx, its 404, a 422 that names
//! its fields); [`Common`] adds what the layers in front of every handler may
//! answer, so a new route cannot forget them:
//!
//! | applies to | status | code(s) | layer |
//! |---|---|---|---|
//! | `/v1/...` | 401 | `unauthorized` | authentication |
//! | `/v1/...` | 400 | `ambiguous_credentials` | authentication |
//! | `/v1/...` | 429 | `rate_limited`, `tenant_concurrency_limit` | admission |
//! | `/v1/...` | 503 | `overloaded`, `redis_unavailable`, `not_replicated` | admission, Redis |
//! | every route | 500 | `internal` | panic containment |
//! | operations with a body | 408 | `request_timeout` | body deadlines |
//! | operations with a body | 413 | `payload_too_large` | body limit |
//!
//! Where an operation documents a status itself (a predict's 429 also names
//! `queue_full`), the shared answer is added to its text.

use std::collections::btree_map::Entry;

use utoipa::Modify;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{Object, Type};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, Response, ResponseBuilder};

/// Adds the shared responses to the document (see the module docs).
pub(crate) struct Common;

struct Shared {
    name: &'static str,
    status: &'static str,
    description: &'static str,
    /// A header the answer carries: name and description.
    header: Option<(&'static str, &'static str)>,
}

const RETRY_AFTER: Option<(&str, &str)> = Some(("Retry-After", "Seconds to wait before retrying"));

/// Every `/v1` operation.
const TENANT: [Shared; 4] = [
    Shared {
        name: "Unauthorized",
        status: "401",
        description: "`unauthorized`: API keys are configured (`--api-keys-file`) and the request carries none or an unknown one (`Authorization: Bearer <key>` or `X-API-Key`)",
        header: Some(("WWW-Authenticate", "`Bearer`")),
    },
    Shared {
        name: "Throttled",
        status: "429",
        description: "`rate_limited` (the tenant's or the model's token bucket is empty) or `tenant_concurrency_limit` (the tenant's share of the request pool is in use)",
        header: RETRY_AFTER,
    },
    Shared {
        name: "Unavailable",
        status: "503",
        description: "`overloaded` (the request pool is full), `redis_unavailable`, `not_replicated` (`--durability replicated` and too few replicas acknowledged the write) or `too_many_connections` (the connection table is full: only probes are served)",
        header: RETRY_AFTER,
    },
    Shared {
        name: "AmbiguousCredentials",
        status: "400",
        description: "`ambiguous_credentials`: two credentials (two `Authorization` headers, or one of each kind)",
        header: None,
    },
];

/// Every operation.
const EVERY: Shared = Shared {
    name: "Internal",
    status: "500",
    description: "`internal`: a fault of the server (logged with the request)",
    header: None,
};

/// Every operation with a request body.
const WITH_BODY: [Shared; 2] = [
    Shared {
        name: "RequestTimeout",
        status: "408",
        description: "`request_timeout`: the body stalled (`--body-timeout-ms`) or arrived slower than `--min-body-bytes-per-sec`; the connection is closed",
        header: None,
    },
    Shared {
        name: "PayloadTooLarge",
        status: "413",
        description: "`payload_too_large`: the body is over the route's limit",
        header: None,
    },
];

impl Shared {
    fn response(&self) -> Response {
        let body = ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ErrorBody")))
            .build();
        let mut r = ResponseBuilder::new()
            .description(self.description)
            .content("application/json", body);
        if let Some((name, description)) = self.header {
            r = r.header(
                name,
                HeaderBuilder::new()
                    .schema(Object::with_type(if name == "Retry-After" {
                        Type::Integer
                    } else {
                        Type::String
                    }))
                    .description(Some(description))
                    .build(),
            );
        }
        r.build()
    }

    /// References the shared response, or, where the operation documents
    /// the status itself, adds the shared answer to its text unless the
    /// text names the shared code already.
    fn add_to(&self, op: &mut Operation) {
        match op.responses.responses.entry(self.status.to_owned()) {
            Entry::Vacant(e) => {
                e.insert(RefOr::Ref(Ref::from_response_name(self.name)));
            }
            Entry::Occupied(mut e) => {
                if let RefOr::T(own) = e.get_mut() {
                    let code = self.description.split('`').nth(1).unwrap_or_default();
                    if !own.description.contains(code) {
                        own.description = format!("{}; also {}", own.description, self.description);
                    }
                }
            }
        }
    }
}

impl Modify for Common {
    fn modify(&self, doc: &mut OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        for s in TENANT.iter().chain([&EVERY]).chain(&WITH_BODY) {
            components
                .responses
                .insert(s.name.to_owned(), RefOr::T(s.response()));
        }
        for (path, item) in doc.paths.paths.iter_mut() {
            let tenant = path.starts_with("/v1/");
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                EVERY.add_to(op);
                if tenant {
                    TENANT.iter().for_each(|s| s.add_to(op));
                }
                if op.request_body.is_some() {
                    WITH_BODY.iter().for_each(|s| s.add_to(op));
                }
            }
        }
    }
}
