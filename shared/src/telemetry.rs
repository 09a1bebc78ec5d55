//! Logging set-up shared by the binaries: `tracing` with a JSON or a
//! human-readable format (`LOG_FORMAT=json|pretty`) and `RUST_LOG` filtering.
//! Logs go to stderr; stdout stays free for machine-readable lines such as
//! the API's `LISTENING <addr>`.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Installs the global subscriber. `format` is `json` or `pretty`; anything
/// else falls back to the compact human format.
pub fn init(format: &str, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let registry = tracing_subscriber::registry().with(filter);
    let result = if format.eq_ignore_ascii_case("json") {
        registry
            .with(
                fmt::layer()
                    .with_writer(std::io::stderr)
                    .json()
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init()
    } else {
        registry
            .with(fmt::layer().with_writer(std::io::stderr).with_target(false))
            .try_init()
    };
    // A second init (tests) is harmless; keep the first subscriber.
    drop(result);
}
