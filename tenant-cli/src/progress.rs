//! Progress of long waits (acquire, deploy, extend, terminate, sandbox start): on a terminal
//! a spinner or a bar in bytes on stderr, otherwise (a pipe, a log, CI) the same stages as
//! plain lines on stderr.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// Where progress goes: a live bar on a terminal, plain lines otherwise.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// Stages, one line each: a spinner with the current stage and the time spent on a
    /// terminal (earlier stages stay above it), plain lines otherwise.
    pub fn stages() -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress { bar: None };
        }
        let bar = ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress { bar: Some(bar) }
    }

    /// A transfer of `total` bytes: a bar in bytes on a terminal; otherwise `message` and
    /// the byte count as one line.
    pub fn bytes(total: u64, message: &str) -> Progress {
        if !std::io::stderr().is_terminal() {
            eprintln!("{message} ({total} bytes)");
            return Progress { bar: None };
        }
        let bar = ProgressBar::new(total).with_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message(message.to_owned());
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress { bar: Some(bar) }
    }

    /// A new stage.
    pub fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => {
                let previous = bar.message();
                if !previous.is_empty() {
                    bar.println(previous);
                }
                bar.set_message(text.to_owned());
            }
            None => eprintln!("{text}"),
        }
    }

    /// Bytes done so far (a [`Progress::bytes`] transfer).
    pub fn set_position(&self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(bytes);
        }
    }

    /// Ends the display, leaving the last stage printed.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            let last = bar.message();
            bar.finish_and_clear();
            if !last.is_empty() && bar.length().is_none() {
                eprintln!("{last}");
            }
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
