//! Logs and spans. Set up once by the binary; personal data (national ID numbers, names, diagnoses)
//! never reaches a log field: the service never receives the first two, spans carry only ids that
//! are pseudonymous (member ids refuse ID-number shapes), and requests are never logged whole.

use tracing_subscriber::{fmt, EnvFilter};

/// Installs the global subscriber: `RUST_LOG` filters (default `info`), `CLAIMS_LOG_FORMAT=json`
/// switches to JSON lines.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("CLAIMS_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = fmt().with_env_filter(filter).with_target(false);
    let result = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    if let Err(e) = result {
        eprintln!("logging was already set up: {e}");
    }
}
