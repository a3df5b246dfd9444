//! The probe: a stand-in for the `hotpocket` runtime in the provisioner's tests and benchmark.
//! Built as a static binary (std only) into a FROM scratch image by `berth_provisioner::probe`.
//!
//! Commands:
//!   run --state-dir DIR   listen on HP_USER_PORT and HP_PEER_PORT, greet each connection with
//!                         `berth-probe <HP_CONTRACT_ID>`; writes DIR/started first; without
//!                         HP_CONTRACT_ID (a pooled instance) it first waits for DIR/assigned
//!                         and takes HP_CONTRACT_ID from DIR/assign.env;
//!                         `crash` sent to the peer port makes it exit with status 3
//!   alloc MIB             allocate and touch MIB mebibytes, print `allocated <n>` as it goes
//!   spawn N               start up to N sleeping threads, print `spawned <k>`
//!   fill DIR MIB          write MIB mebibytes into DIR/fill.bin
//!   status                print uid, effective capabilities, no_new_privs, root writability
//!   connect IP:PORT       try a TCP connection for 2 s; print `connected` or `unreachable`
use std::io::{Read, Write};
use std::net::TcpListener;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("run") => run(&args[1..]),
        Some("alloc") => alloc(&args[1..]),
        Some("spawn") => spawn(&args[1..]),
        Some("fill") => fill(&args[1..]),
        Some("status") => status(),
        Some("connect") => connect(&args[1..]),
        _ => {
            eprintln!("usage: probe run|alloc|spawn|fill|status|connect");
            2
        }
    };
    std::process::exit(code);
}

fn number(args: &[String], index: usize) -> Option<u64> {
    args.get(index).and_then(|value| value.parse().ok())
}

fn run(args: &[String]) -> i32 {
    let state_dir = match (args.first().map(String::as_str), args.get(1)) {
        (Some("--state-dir"), Some(dir)) => dir.clone(),
        _ => {
            eprintln!("usage: probe run --state-dir DIR");
            return 2;
        }
    };
    if let Err(error) = std::fs::write(format!("{state_dir}/started"), b"started\n") {
        eprintln!("cannot write {state_dir}/started: {error}");
        return 1;
    }
    let contract = match std::env::var("HP_CONTRACT_ID") {
        Ok(contract) if !contract.is_empty() => contract,
        _ => assigned_contract(&state_dir),
    };
    let mut listeners = Vec::new();
    for key in ["HP_USER_PORT", "HP_PEER_PORT"] {
        let port = std::env::var(key).unwrap_or_default();
        match TcpListener::bind(format!("0.0.0.0:{port}")) {
            Ok(listener) => listeners.push(listener),
            Err(error) => {
                eprintln!("cannot listen on {key}={port}: {error}");
                return 1;
            }
        }
    }
    println!("probe listening, contract {contract}");
    let peer = listeners.pop();
    if let Some(peer) = peer {
        let contract = contract.clone();
        std::thread::spawn(move || serve(peer, &contract, true));
    }
    if let Some(user) = listeners.pop() {
        serve(user, &contract, false);
    }
    0
}

/// Waits for a pooled instance's assignment and returns its contract id.
fn assigned_contract(state_dir: &str) -> String {
    while std::fs::metadata(format!("{state_dir}/assigned")).is_err() {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let text = std::fs::read_to_string(format!("{state_dir}/assign.env")).unwrap_or_default();
    text.lines()
        .find_map(|line| line.strip_prefix("HP_CONTRACT_ID="))
        .unwrap_or_default()
        .to_owned()
}

/// Greets each connection; on the peer port, a connection that sends `crash` makes the whole
/// process exit with status 3 (the tests check the restart policy with it).
fn serve(listener: TcpListener, contract: &str, obey_crash: bool) {
    for stream in listener.incoming().flatten() {
        let mut stream = stream;
        let _ = writeln!(stream, "berth-probe {contract}");
        if obey_crash {
            let _ = stream.set_read_timeout(Some(std::time::Duration::from_millis(500)));
            let mut word = [0u8; 5];
            if stream.read_exact(&mut word).is_ok() && &word == b"crash" {
                eprintln!("probe crashing on request");
                std::process::exit(3);
            }
        }
    }
}

fn alloc(args: &[String]) -> i32 {
    let Some(mib) = number(args, 0) else {
        eprintln!("usage: probe alloc MIB");
        return 2;
    };
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    for index in 0..mib {
        blocks.push(vec![(index % 251) as u8 + 1; 1 << 20]);
        println!("allocated {}", index + 1);
    }
    let total: u64 = blocks.iter().map(|block| u64::from(block[0])).sum();
    println!("done {total}");
    0
}

fn spawn(args: &[String]) -> i32 {
    let Some(count) = number(args, 0) else {
        eprintln!("usage: probe spawn N");
        return 2;
    };
    let mut spawned = 0u64;
    let mut handles = Vec::new();
    for _ in 0..count {
        let thread = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(|| std::thread::sleep(std::time::Duration::from_secs(3)));
        match thread {
            Ok(handle) => {
                spawned += 1;
                handles.push(handle);
            }
            Err(_) => break,
        }
    }
    println!("spawned {spawned}");
    for handle in handles {
        let _ = handle.join();
    }
    0
}

fn fill(args: &[String]) -> i32 {
    let (Some(dir), Some(mib)) = (args.first(), number(args, 1)) else {
        eprintln!("usage: probe fill DIR MIB");
        return 2;
    };
    let path = format!("{dir}/fill.bin");
    let mut file = match std::fs::File::create(&path) {
        Ok(file) => file,
        Err(error) => {
            eprintln!("cannot create {path}: {error}");
            return 1;
        }
    };
    let block = vec![7u8; 1 << 20];
    for _ in 0..mib {
        if let Err(error) = file.write_all(&block) {
            eprintln!("cannot write {path}: {error}");
            return 1;
        }
    }
    let _ = file.sync_all();
    println!("filled {mib}");
    0
}

fn connect(args: &[String]) -> i32 {
    let Some(addr) = args.first().and_then(|a| a.parse::<std::net::SocketAddr>().ok()) else {
        eprintln!("usage: probe connect IP:PORT");
        return 2;
    };
    match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)) {
        Ok(_) => {
            println!("connected");
            0
        }
        Err(error) => {
            println!("unreachable: {error}");
            1
        }
    }
}

fn status() -> i32 {
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open("/proc/self/status") {
        let _ = file.read_to_string(&mut text);
    }
    for line in text.lines() {
        if line.starts_with("Uid:") || line.starts_with("CapEff:") || line.starts_with("NoNewPrivs:") {
            println!("{line}");
        }
    }
    match std::fs::write("/probe-root-write", b"x") {
        Ok(()) => println!("root: writable"),
        Err(_) => println!("root: read-only"),
    }
    match std::fs::write("/tmp/probe-tmp-write", b"x") {
        Ok(()) => println!("tmp: writable"),
        Err(_) => println!("tmp: read-only"),
    }
    0
}
