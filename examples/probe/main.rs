//! Probe contract for the runtime's tests: commands that exercise limits and failures.
//!
//! `echo <text>`, `limits` (its rlimits), `crash`, `sleep <secs>`, `alloc <MiB>`,
//! `files <count>`, `spam <bytes>`, `args` (the args document it got), `write <name> <text>`.

#[path = "../common/sdk.rs"]
mod sdk;

use std::io::stdin;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;

use sdk::{read_args, read_input, take_fd, write_output};

fn main() -> ExitCode {
    match run() {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("probe contract: {}", sdk::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<u8, Box<dyn std::error::Error>> {
    let args = read_args(stdin().lock())?;
    let raw = args.raw.to_string();
    let inputs = std::fs::File::from(take_fd(args.user_in_fd));
    for (out_fd, spans) in args.users.values() {
        let mut out = UnixStream::from(take_fd(*out_fd));
        for span in spans {
            let input = read_input(&inputs, *span)?;
            let text = String::from_utf8_lossy(&input).into_owned();
            let mut parts = text.splitn(2, ' ');
            let (cmd, rest) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let reply = match cmd {
                "echo" => rest.to_owned(),
                "args" => raw.clone(),
                "limits" => std::fs::read_to_string("/proc/self/limits")?,
                "crash" => return Ok(3),
                "sleep" => {
                    std::thread::sleep(std::time::Duration::from_secs(rest.trim().parse()?));
                    "slept".to_owned()
                }
                "alloc" => {
                    let mib: usize = rest.trim().parse()?;
                    let mut v: Vec<u8> = Vec::new();
                    match v.try_reserve_exact(mib * 1024 * 1024) {
                        Ok(()) => {
                            v.resize(mib * 1024 * 1024, 1);
                            format!("allocated {mib}")
                        }
                        Err(_) => format!("alloc of {mib} MiB failed"),
                    }
                }
                "files" => {
                    let want: usize = rest.trim().parse()?;
                    let mut held = Vec::new();
                    for _ in 0..want {
                        match std::fs::File::open("/dev/null") {
                            Ok(f) => held.push(f),
                            Err(_) => break,
                        }
                    }
                    format!("opened {}", held.len())
                }
                "spam" => "x".repeat(rest.trim().parse()?),
                "write" => {
                    let mut kv = rest.splitn(2, ' ');
                    let (name, body) = (kv.next().unwrap_or("out"), kv.next().unwrap_or(""));
                    std::fs::write(name, body)?;
                    format!("wrote {name}")
                }
                _ => format!("unknown `{text}`"),
            };
            write_output(&mut out, reply.as_bytes())?;
        }
    }
    Ok(0)
}
