//! One tracing-subscriber set-up for every service: `EnvFilter`, JSON in production, readable
//! output in development, silent in tests unless `TEST_LOG` is set.

mod json;

use tracing_subscriber::EnvFilter;

use crate::settings::{LogFormat, TelemetrySettings};

/// Installs the global subscriber. `RUST_LOG` overrides the configured filter. Calling it twice
/// is harmless (the second call keeps the first subscriber).
pub fn init(settings: &TelemetrySettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // A log line that cannot be written (stderr redirected to a file on a full disk) is
    // dropped: tracing-subscriber's default reports it with `eprintln!`, which panics when
    // stderr cannot be written — measured: on a full disk every request then died unanswered.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    let _ = match settings.format {
        LogFormat::Json => builder
            .fmt_fields(json::JsonFields)
            .event_format(json::JsonLine)
            .try_init(),
        // Colours only for a terminal: written to a file or a pipe (a supervisor's log, the
        // benchmark's), escape codes are noise, and formatting them was 8% of a tabular
        // request's instructions in diabetes-svc at `info` (callgrind).
        LogFormat::Pretty => builder
            .with_target(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
}

/// For tests: logs only when `TEST_LOG` is set (to stderr, readable).
pub fn init_for_tests() {
    if std::env::var_os("TEST_LOG").is_some() {
        init(&TelemetrySettings {
            format: LogFormat::Pretty,
            filter: "debug".into(),
        });
    }
}
