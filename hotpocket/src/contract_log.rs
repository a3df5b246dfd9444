//! What a contract (and `install.sh`, `post_exec.sh`) writes to stdout and stderr: the
//! runtime reads it itself and passes it on to its own log within a budget, so a contract
//! that floods its output spends its own container's CPU (the reading), never the Docker
//! engine's: dockerd and containerd only see the budgeted stream.
//!
//! Lines are cut at [`MAX_LINE`] bytes. The budget is a token bucket shared by every run of
//! the process: [`RATE`] bytes a second with a burst of [`BURST`], each line charged its
//! length plus [`LINE_OVERHEAD`]. What is over is dropped
//! and counted; one line says how much, once the bucket has room again.

use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::task::JoinHandle;

/// Longest line passed on; the rest of a longer line is dropped (and counted).
pub const MAX_LINE: usize = 1024;
/// Bytes a second passed on, over every run.
pub const RATE: u64 = 64 * 1024;
/// Bytes passed on at once after a quiet spell.
pub const BURST: u64 = 256 * 1024;
/// What a log line costs beyond its text (timestamp, level, fields), charged to the budget
/// so that a flood of short lines is held to the rate too.
pub const LINE_OVERHEAD: usize = 96;

/// A token bucket of bytes.
#[derive(Debug)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
    rate: f64,
    burst: f64,
    /// Bytes dropped since the last report.
    dropped: u64,
}

impl Bucket {
    pub fn new(rate: u64, burst: u64, now: Instant) -> Self {
        Self {
            tokens: burst as f64,
            at: now,
            rate: rate as f64,
            burst: burst as f64,
            dropped: 0,
        }
    }

    /// Whether `len` bytes may pass at `now`: `Some(bytes dropped before them)` (to report
    /// once) when they may, `None` when they are dropped.
    pub fn take(&mut self, len: usize, now: Instant) -> Option<u64> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= len as f64 {
            self.tokens -= len as f64;
            Some(std::mem::take(&mut self.dropped))
        } else {
            self.dropped += len as u64;
            None
        }
    }

    /// Counts bytes dropped without asking (the cut-off end of a long line).
    pub fn drop_bytes(&mut self, len: usize) {
        self.dropped += len as u64;
    }
}

fn budget() -> &'static Mutex<Bucket> {
    static BUDGET: OnceLock<Mutex<Bucket>> = OnceLock::new();
    BUDGET.get_or_init(|| Mutex::new(Bucket::new(RATE, BURST, Instant::now())))
}

/// Reads `reader` to its end, passing lines on to the log (`stream` names it: `stdout` or
/// `stderr`, and `who`: contract, install.sh, …) within the process's budget.
pub fn forward<R>(reader: R, who: &'static str, stream: &'static str) -> JoinHandle<()>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut reader = BufReader::with_capacity(64 * 1024, reader);
        let mut line = Vec::with_capacity(MAX_LINE);
        loop {
            line.clear();
            // At most MAX_LINE + 1 bytes of the line are kept; the rest is read and dropped.
            let (read, cut) = match read_line_capped(&mut reader, &mut line).await {
                Ok(Some(r)) => r,
                Ok(None) | Err(_) => break,
            };
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\n', '\r']);
            let passed = {
                let Ok(mut bucket) = budget().lock() else {
                    break;
                };
                if cut > 0 {
                    bucket.drop_bytes(cut);
                }
                bucket.take(read + LINE_OVERHEAD, Instant::now())
            };
            if let Some(dropped) = passed {
                if dropped > 0 {
                    tracing::warn!(
                        dropped,
                        "contract output over the log budget ({RATE} bytes/s) was dropped"
                    );
                }
                tracing::info!(target: "contract", who, stream, "{text}");
            }
        }
    })
}

/// Reads one line into `line`, keeping at most [`MAX_LINE`] bytes of it. `None` at the end;
/// else the bytes kept and the bytes cut off.
async fn read_line_capped<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    line: &mut Vec<u8>,
) -> std::io::Result<Option<(usize, usize)>> {
    let mut cut = 0usize;
    let mut any = false;
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok(any.then_some((line.len(), cut)));
        }
        any = true;
        let (chunk, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (&buf[..=i], true),
            None => (buf, false),
        };
        let room = MAX_LINE.saturating_sub(line.len());
        let keep = chunk.len().min(room);
        line.extend_from_slice(&chunk[..keep]);
        cut += chunk.len() - keep;
        let used = chunk.len();
        reader.consume(used);
        if done {
            return Ok(Some((line.len(), cut)));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_bucket_passes_a_burst_then_the_rate_and_counts_what_it_dropped() {
        let start = Instant::now();
        let mut bucket = Bucket::new(1000, 5000, start);
        assert_eq!(bucket.take(5000, start), Some(0));
        assert!(bucket.take(10, start).is_none());
        assert!(bucket.take(20, start).is_none());
        // Half a second later: 500 bytes of room; the report names the 30 dropped.
        let later = start + Duration::from_millis(500);
        assert_eq!(bucket.take(400, later), Some(30));
        assert_eq!(bucket.take(100, later), Some(0));
        assert!(bucket.take(1, later).is_none());
        // Room never exceeds the burst.
        let much_later = later + Duration::from_secs(3600);
        assert_eq!(bucket.take(5000, much_later), Some(1));
        assert!(bucket.take(1, much_later).is_none());
    }

    #[tokio::test]
    async fn long_lines_are_cut_and_every_line_is_read() {
        let mut input = vec![b'x'; 3000];
        input.push(b'\n');
        input.extend_from_slice(b"short\nlast");
        let mut reader = BufReader::with_capacity(16, &input[..]);
        let mut line = Vec::new();
        assert_eq!(
            read_line_capped(&mut reader, &mut line).await.unwrap(),
            Some((MAX_LINE, 3001 - MAX_LINE))
        );
        line.clear();
        assert_eq!(
            read_line_capped(&mut reader, &mut line).await.unwrap(),
            Some((6, 0))
        );
        assert_eq!(line, b"short\n");
        line.clear();
        assert_eq!(
            read_line_capped(&mut reader, &mut line).await.unwrap(),
            Some((4, 0))
        );
        line.clear();
        assert_eq!(
            read_line_capped(&mut reader, &mut line).await.unwrap(),
            None
        );
    }
}
