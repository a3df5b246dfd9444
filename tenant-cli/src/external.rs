//! Subcommands that are binaries of their own, found the way git and cargo find theirs:
//! `berth <name>` runs `berth-<name>` from the directory of the `berth` executable, else
//! from the PATH.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Where the executable `file` is: next to this executable first, then on the PATH.
pub fn find(file: &str) -> Option<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(file)));
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(file));
    beside.into_iter().chain(on_path).find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Replaces this process with `berth-<name> <args>` (so signals and the exit code are the
/// subcommand's own); returns only when it cannot be started.
pub fn run(name: &str, args: &[OsString]) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let Some(program) = find(&format!("berth-{name}")) else {
        let here = std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.display().to_string()))
            .unwrap_or_else(|| "the directory of berth".into());
        eprintln!(
            "error: `berth {name}` needs the `berth-{name}` binary, found neither in {here} nor on the PATH\n\
             install it with `cargo install --path {name}` from a Berth checkout, or run scripts/{name}.sh there"
        );
        return ExitCode::FAILURE;
    };
    let mut command = std::process::Command::new(&program);
    command.args(args);
    // The subcommand sees the `berth` it was run as (its messages name `berth`).
    if let Some(argv0) = std::env::args_os().next() {
        command.arg0(argv0);
    }
    let error = command.exec();
    eprintln!("error: running {}: {error}", program.display());
    ExitCode::FAILURE
}
