//! The one tracing set-up of Berth's binaries (`berth`, `berth-sandbox`, `berth-agent`,
//! `berth-localnet`, `hotpocket`): the filter from `RUST_LOG` or a default per binary, text
//! or JSON lines, ANSI colour only when the output is a terminal (never in journald or a
//! file).
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl Format {
    /// JSON when `BERTH_LOG_JSON=1`, otherwise text.
    pub fn from_env() -> Format {
        if std::env::var("BERTH_LOG_JSON").as_deref() == Ok("1") {
            Format::Json
        } else {
            Format::Text
        }
    }
}

fn filter(default: &str) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default))
}

/// Installs the process's subscriber, writing to stderr. `default_filter` applies when
/// `RUST_LOG` is unset (e.g. `info`, or `warn` for a CLI). Does nothing when the process
/// already has a subscriber.
pub fn init(default_filter: &str, format: Format) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(default_filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        Format::Text => builder.try_init(),
        Format::Json => builder.json().try_init(),
    };
}

/// Installs the process's subscriber, appending text lines without colour to `file`. Does
/// nothing when the process already has a subscriber (its logs then go there).
pub fn init_file(default_filter: &str, file: std::fs::File) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter(default_filter))
        .with_ansi(false)
        .with_writer(Mutex::new(file))
        .try_init();
}

/// An error and its sources as one line, `a: b: c`: how a library error is shown where it
/// becomes text (a report, a log field), since its own message never repeats its source.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
