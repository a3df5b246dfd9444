//! Probe contract for the runtime's tests: commands that exercise limits and failures.
//!
//! `echo <text>`, `limits` (its rlimits), `crash`, `sleep <secs>`, `alloc <MiB>`,
//! `files <count>`, `spam <bytes>`, `args` (the args document it got), `write <name> <text>`,
//! `cat <name>`; for clusters: `npl` (sends its key over NPL and answers with the sorted keys
//! it heard from in this round, its own included), `random` (writes random bytes to its
//! state: a non-deterministic contract), `patch-unl <k1,k2,…>` (writes `../patch.cfg` with a
//! new UNL), `track-unl` (from then on appends `<lcl_seq_no> <unl keys>` to `unl.log` every
//! round); for state sync: `fill <name> <offset> <len> <seed>` (writes `len` pseudo-random
//! bytes from `seed` at `offset` of a file, creating it); `peers add|remove <h:p,…>` (sends a
//! `peer_changeset` on the control channel, as the official libraries' `updatePeers`).

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
    let lcl = args.raw.get("lcl_seq_no").and_then(|v| v.as_u64());
    let mut unl: Vec<String> = args
        .raw
        .get("unl")
        .and_then(|v| v.as_object())
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    unl.sort();
    if let (Some(seq), true) = (lcl, std::path::Path::new("track-unl").exists()) {
        use std::io::Write;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open("unl.log")?;
        writeln!(log, "{seq} {}", unl.join(","))?;
    }
    let npl_fd = args
        .raw
        .get("npl_fd")
        .and_then(|v| v.as_i64())
        .and_then(|n| i32::try_from(n).ok());
    let mut npl = npl_fd.map(|fd| UnixStream::from(take_fd(fd)));
    let control_fd = args
        .raw
        .get("control_fd")
        .and_then(|v| v.as_i64())
        .and_then(|n| i32::try_from(n).ok());
    let mut control = control_fd.map(|fd| UnixStream::from(take_fd(fd)));
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
                "cat" => std::fs::read_to_string(rest.trim()).unwrap_or_default(),
                "npl" => match npl.as_mut() {
                    Some(sock) => npl_round(sock, &args.raw, &unl)?,
                    None => "no npl in this run".to_owned(),
                },
                "random" => {
                    let mut bytes = [0u8; 16];
                    std::io::Read::read_exact(
                        &mut std::fs::File::open("/dev/urandom")?,
                        &mut bytes,
                    )?;
                    std::fs::write("random.bin", bytes)?;
                    "wrote random.bin".to_owned()
                }
                "patch-unl" => {
                    let mut patch: serde_json::Value =
                        serde_json::from_slice(&std::fs::read("../patch.cfg")?)?;
                    let keys: Vec<&str> = rest.trim().split(',').collect();
                    patch["unl"] = serde_json::json!(keys);
                    std::fs::write("../patch.cfg", serde_json::to_vec_pretty(&patch)?)?;
                    "patched".to_owned()
                }
                "track-unl" => {
                    std::fs::write("track-unl", b"")?;
                    "tracking".to_owned()
                }
                "write" => {
                    let mut kv = rest.splitn(2, ' ');
                    let (name, body) = (kv.next().unwrap_or("out"), kv.next().unwrap_or(""));
                    std::fs::write(name, body)?;
                    format!("wrote {name}")
                }
                "peers" => {
                    let mut f = rest.split_whitespace();
                    let (op, list) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
                    let peers: Vec<&str> = list.split(',').filter(|p| !p.is_empty()).collect();
                    let (add, remove) = match op {
                        "add" => (peers, Vec::new()),
                        "remove" => (Vec::new(), peers),
                        _ => (Vec::new(), Vec::new()),
                    };
                    let msg =
                        serde_json::json!({"type": "peer_changeset", "add": add, "remove": remove});
                    match control.as_mut() {
                        Some(sock) => {
                            std::io::Write::write_all(sock, msg.to_string().as_bytes())?;
                            "peers changed".to_owned()
                        }
                        None => "no control channel".to_owned(),
                    }
                }
                "fill" => {
                    let f: Vec<&str> = rest.split_whitespace().collect();
                    match f.as_slice() {
                        [name, offset, len, seed] => {
                            fill(name, offset.parse()?, len.parse()?, seed.parse()?)?;
                            format!("filled {name}")
                        }
                        _ => "usage: fill <name> <offset> <len> <seed>".to_owned(),
                    }
                }
                _ => format!("unknown `{text}`"),
            };
            write_output(&mut out, reply.as_bytes())?;
        }
    }
    Ok(0)
}

/// Sends this node's key over NPL and collects the keys heard in this run (each NPL
/// message arrives as two packets: the sender's key, then the data) until every UNL member
/// was heard or 5 s passed.
fn npl_round(
    sock: &mut UnixStream,
    raw: &serde_json::Value,
    unl: &[String],
) -> Result<String, Box<dyn std::error::Error>> {
    use std::io::{Read, Write};
    let me = raw.get("public_key").and_then(|v| v.as_str()).unwrap_or("");
    sock.write_all(me.as_bytes())?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut heard = std::collections::BTreeSet::new();
    let mut buf = vec![0u8; 128 * 1024];
    while heard.len() < unl.len() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        sock.set_read_timeout(Some(left))?;
        let Ok(n) = sock.read(&mut buf) else { break };
        let sender = String::from_utf8_lossy(&buf[..n]).into_owned();
        let Ok(m) = sock.read(&mut buf) else { break };
        let data = String::from_utf8_lossy(&buf[..m]).into_owned();
        if sender == data {
            heard.insert(sender);
        }
    }
    Ok(heard.into_iter().collect::<Vec<_>>().join(","))
}

/// Writes `len` pseudo-random bytes (xorshift from `seed`) at `offset` of `name`.
fn fill(name: &str, offset: u64, len: usize, seed: u64) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(name)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf.extend_from_slice(&x.to_le_bytes());
    }
    buf.truncate(len);
    file.write_all(&buf)
}
