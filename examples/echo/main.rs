//! Echo contract: sends every input back to its user unchanged (also for read requests).

#[path = "../common/sdk.rs"]
mod sdk;

use std::io::stdin;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;

use sdk::{read_args, read_input, take_fd, write_output};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo contract: {}", sdk::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = read_args(stdin().lock())?;
    let inputs = std::fs::File::from(take_fd(args.user_in_fd));
    for (out_fd, spans) in args.users.values() {
        let mut out = UnixStream::from(take_fd(*out_fd));
        for span in spans {
            let input = read_input(&inputs, *span)?;
            write_output(&mut out, &input)?;
        }
    }
    Ok(())
}
