//! Key-value and counter contract whose state persists in `kv.json` in the state directory.
//!
//! Inputs (text): `set <key> <value>`, `get <key>`, `incr <key>`, `del <key>`. Every input
//! gets one output line. Read requests may only `get`.

#[path = "../common/sdk.rs"]
mod sdk;

use std::collections::BTreeMap;
use std::io::stdin;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;

use sdk::{read_args, read_input, take_fd, write_output};

const STATE_FILE: &str = "kv.json";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("counter contract: {}", sdk::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = read_args(stdin().lock())?;
    let mut kv: BTreeMap<String, String> = match std::fs::read(STATE_FILE) {
        Ok(bytes) => serde_json::from_slice(&bytes)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => return Err(e.into()),
    };
    let inputs = std::fs::File::from(take_fd(args.user_in_fd));
    let mut changed = false;
    for (out_fd, spans) in args.users.values() {
        let mut out = UnixStream::from(take_fd(*out_fd));
        for span in spans {
            let input = read_input(&inputs, *span)?;
            let text = String::from_utf8_lossy(&input);
            let reply = apply(&mut kv, &text, args.readonly, &mut changed);
            write_output(&mut out, reply.as_bytes())?;
        }
    }
    if changed {
        std::fs::write(STATE_FILE, serde_json::to_vec_pretty(&kv)?)?;
    }
    Ok(())
}

fn apply(
    kv: &mut BTreeMap<String, String>,
    text: &str,
    readonly: bool,
    changed: &mut bool,
) -> String {
    let mut parts = text.trim().splitn(3, ' ');
    let (cmd, key, value) = (parts.next().unwrap_or(""), parts.next(), parts.next());
    match (cmd, key, value) {
        ("get", Some(k), None) => kv.get(k).cloned().unwrap_or_else(|| "(none)".to_owned()),
        (_, _, _) if readonly => "error: read requests may only get".to_owned(),
        ("set", Some(k), Some(v)) => {
            kv.insert(k.to_owned(), v.to_owned());
            *changed = true;
            format!("ok {k}")
        }
        ("incr", Some(k), None) => {
            let n = kv.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0) + 1;
            kv.insert(k.to_owned(), n.to_string());
            *changed = true;
            n.to_string()
        }
        ("del", Some(k), None) => {
            *changed |= kv.remove(k).is_some();
            format!("ok {k}")
        }
        _ => format!("error: unknown command `{}`", text.trim()),
    }
}
