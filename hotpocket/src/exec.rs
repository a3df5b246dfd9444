//! Running a contract once (hpcore `src/sc/sc.cpp`): the args JSON on stdin, all inputs in one
//! memory file with `[offset, length]` per user, a length-prefixed output socket per user,
//! control and NPL sockets, `exec_timeout` enforced by killing the process group, and the
//! `round_limits` applied by a small wrapper (`hotpocket exec-contract`) that sets rlimits on
//! itself, hides the node's own files with Landlock (`crate::confine`), and then execs the
//! contract ([`Jail`]).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use crate::protocol::bundle::RoundLimits;
use crate::protocol::contract::{ContractArgs, UnlEntry, UserEntry};

/// Cap on one user's output bytes per run when `user_output_bytes` is 0.
pub const DEFAULT_USER_OUTPUT_BYTES: u64 = 64 * 1024 * 1024;

/// Errors setting up or running a contract, naming the step.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("contract run: {step}")]
    Io {
        step: &'static str,
        source: std::io::Error,
    },
    #[error("contract run: mapping descriptors")]
    FdMapping(#[from] command_fds::FdMappingCollision),
    #[error("contract run: encoding args")]
    Args(#[from] serde_json::Error),
    #[error("contract bin_path `{0}` is empty")]
    NoBinary(String),
}

fn io(step: &'static str) -> impl FnOnce(std::io::Error) -> ExecError {
    move |source| ExecError::Io { step, source }
}

/// How the contract is started.
#[derive(Debug, Clone)]
pub struct ContractCommand {
    /// How the contract is started and confined.
    pub jail: Jail,
    /// Working directory: the contract's state directory.
    pub state_dir: PathBuf,
    pub bin_path: String,
    pub bin_args: String,
    pub environment: BTreeMap<String, String>,
    pub limits: RoundLimits,
    pub timeout: Duration,
}

/// The round-specific part of a run.
#[derive(Debug, Clone)]
pub struct RunContext {
    pub hp_version: String,
    pub contract_id: String,
    pub public_key: String,
    pub private_key: String,
    pub timestamp: u64,
    pub readonly: bool,
    /// The last closed ledger (absent in read-only runs).
    pub lcl: Option<(u64, String)>,
    pub unl: Vec<String>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    Exited(i32),
    Signalled(i32),
    TimedOut,
}

/// The result of a run: outputs per user (in order) and how it ended.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub outputs: BTreeMap<String, Vec<Vec<u8>>>,
    pub end: RunEnd,
    /// Users whose outputs passed `user_output_bytes` and were cut.
    pub truncated: Vec<String>,
    /// Messages the contract sent on its control channel (`peer_changeset`, …), in order.
    pub control: Vec<ControlMessage>,
}

/// A message a contract sends on its control channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlMessage {
    /// `{"type":"peer_changeset","add":[host:port…],"remove":[…]}` (the official libraries'
    /// `updatePeers` / `hp_update_peers`): peers this node dials.
    PeerChangeset {
        add: Vec<String>,
        remove: Vec<String>,
    },
}

/// Most control messages kept from one run.
const MAX_CONTROL_MESSAGES: usize = 64;

impl ControlMessage {
    /// Parses one control packet; `Err` names what is wrong with it.
    pub fn parse(packet: &[u8]) -> Result<Option<ControlMessage>, String> {
        #[derive(serde::Deserialize)]
        struct Raw {
            #[serde(rename = "type")]
            kind: String,
            #[serde(default)]
            add: Vec<String>,
            #[serde(default)]
            remove: Vec<String>,
        }
        let raw: Raw =
            serde_json::from_slice(packet).map_err(|e| format!("not a control message: {e}"))?;
        match raw.kind.as_str() {
            "peer_changeset" => Ok(Some(ControlMessage::PeerChangeset {
                add: raw.add,
                remove: raw.remove,
            })),
            // Sent by some library versions when the contract is done; the run ends when the
            // process exits.
            "contract_end" => Ok(None),
            other => Err(format!("control message type `{other}` not known")),
        }
    }
}

/// The node's side of a run's NPL socket: what the contract sends goes to `outgoing` (one
/// item per packet); what arrives on `incoming` (sender's `ed…` key, data) is written to the
/// contract as HotPocket delivers it, two packets: the sender's key, then the data.
#[derive(Debug)]
pub struct NplLink {
    pub outgoing: tokio::sync::mpsc::Sender<Vec<u8>>,
    pub incoming: tokio::sync::mpsc::Receiver<(String, Vec<u8>)>,
}

/// Largest NPL packet read from a contract.
pub const MAX_NPL_PACKET: usize = 128 * 1024;

/// Runs the contract once with `users` (every user of the round with their inputs, in
/// consensus order). `npl` connects the run's NPL socket (absent in read-only runs).
pub async fn run_contract(
    cmd: &ContractCommand,
    ctx: &RunContext,
    users: &BTreeMap<String, Vec<Vec<u8>>>,
    npl_link: Option<NplLink>,
) -> Result<RunResult, ExecError> {
    if cmd.bin_path.trim().is_empty() {
        return Err(ExecError::NoBinary(cmd.bin_path.clone()));
    }
    // All inputs in one memory file.
    let memfd = rustix::fs::memfd_create("hp_user_inputs", rustix::fs::MemfdFlags::CLOEXEC)
        .map_err(|e| ExecError::Io {
            step: "creating the input memory file",
            source: e.into(),
        })?;
    let mut file = std::fs::File::from(memfd);
    let mut offset = 0u64;
    let mut mappings = Vec::new();
    let mut entries = BTreeMap::new();
    let mut readers = Vec::new();
    let mut next_fd = 3;
    let user_in_fd = next_fd;
    next_fd += 1;
    let mut user_parts = Vec::new();
    for (user, inputs) in users {
        let mut spans = Vec::with_capacity(inputs.len());
        for input in inputs {
            file.write_all(input).map_err(io("writing inputs"))?;
            spans.push((offset, input.len() as u64));
            offset += input.len() as u64;
        }
        user_parts.push((user.clone(), spans));
    }
    file.flush().map_err(io("writing inputs"))?;
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(0)).map_err(io("rewinding inputs"))?;
    mappings.push(FdMapping {
        parent_fd: OwnedFd::from(file),
        child_fd: user_in_fd,
    });

    let control_fd = next_fd;
    next_fd += 1;
    let (control_parent, control_child) = seqpacket_pair()?;
    mappings.push(FdMapping {
        parent_fd: control_child,
        child_fd: control_fd,
    });
    let npl = if ctx.readonly {
        None
    } else {
        let fd = next_fd;
        next_fd += 1;
        let (parent, child) = seqpacket_pair()?;
        mappings.push(FdMapping {
            parent_fd: child,
            child_fd: fd,
        });
        Some((fd, parent))
    };

    let output_cap = if cmd.limits.user_output_bytes == 0 {
        DEFAULT_USER_OUTPUT_BYTES
    } else {
        cmd.limits.user_output_bytes
    };
    for (user, spans) in user_parts {
        let (parent, child) =
            std::os::unix::net::UnixStream::pair().map_err(io("making output sockets"))?;
        parent
            .set_nonblocking(true)
            .map_err(io("making output sockets"))?;
        let parent =
            tokio::net::UnixStream::from_std(parent).map_err(io("registering output sockets"))?;
        let fd = next_fd;
        next_fd += 1;
        mappings.push(FdMapping {
            parent_fd: OwnedFd::from(child),
            child_fd: fd,
        });
        entries.insert(
            user.clone(),
            UserEntry {
                out_fd: fd,
                inputs: spans,
            },
        );
        readers.push((user, tokio::spawn(read_outputs(parent, output_cap))));
    }

    let args = ContractArgs {
        hp_version: ctx.hp_version.clone(),
        contract_id: ctx.contract_id.clone(),
        public_key: ctx.public_key.clone(),
        private_key: ctx.private_key.clone(),
        timestamp: ctx.timestamp,
        readonly: ctx.readonly,
        lcl_seq_no: ctx.lcl.as_ref().map(|l| l.0),
        lcl_hash: ctx.lcl.as_ref().map(|l| l.1.clone()),
        npl_fd: npl.as_ref().map(|n| n.0),
        control_fd: Some(control_fd),
        user_in_fd,
        users: entries,
        unl: ctx
            .unl
            .iter()
            .map(|k| (k.clone(), UnlEntry { active_on: 0 }))
            .collect(),
    };
    let args_json = serde_json::to_vec(&args)?;

    let mut command = wrapped_command(cmd);
    command.fd_mappings(mappings)?;
    let mut child = command.spawn().map_err(io("starting the contract"))?;
    // The child holds its ends now; drop ours so EOF arrives when the contract exits.
    drop(command);
    let log_tasks = forward_output(&mut child, "contract");
    let control_task = {
        let fd = control_parent
            .try_clone()
            .map_err(io("sharing the control socket"))?;
        tokio::spawn(read_control(fd))
    };
    let npl_task = match (npl.as_ref(), npl_link) {
        (Some((_, parent)), Some(link)) => {
            let fd = parent.try_clone().map_err(io("sharing the npl socket"))?;
            Some(tokio::spawn(serve_npl(fd, link)))
        }
        _ => None,
    };
    let pid = child.id();
    if let Some(mut stdin) = child.stdin.take() {
        // A contract that exits without reading its args is not our error.
        let _ = stdin.write_all(&args_json).await;
        drop(stdin);
    }
    let end = match tokio::time::timeout(cmd.timeout, child.wait()).await {
        Ok(status) => exit_kind(status.map_err(io("waiting for the contract"))?),
        Err(_) => {
            kill_group(pid);
            let _ = child.wait().await;
            RunEnd::TimedOut
        }
    };
    // No group kill after a normal exit: once the leader is reaped its id may be reused.
    // Descendants that keep output sockets open are cut off by the reader timeout below.
    finish_output(log_tasks).await;
    drop(control_parent);
    drop(npl);
    if let Some(task) = npl_task {
        task.abort();
    }
    // The contract's end of the control socket closed with it: the reader sees EOF.
    let control = match tokio::time::timeout(Duration::from_millis(500), control_task).await {
        Ok(Ok(messages)) => messages,
        _ => Vec::new(),
    };

    let mut outputs = BTreeMap::new();
    let mut truncated = Vec::new();
    for (user, handle) in readers {
        let (msgs, cut) = match tokio::time::timeout(Duration::from_secs(2), handle).await {
            Ok(Ok(result)) => result,
            _ => (Vec::new(), false),
        };
        if cut {
            truncated.push(user.clone());
        }
        outputs.insert(user, msgs);
    }
    Ok(RunResult {
        outputs,
        end,
        truncated,
        control,
    })
}

/// Reads the contract's control packets until the socket closes.
async fn read_control(fd: OwnedFd) -> Vec<ControlMessage> {
    let mut messages = Vec::new();
    if rustix::io::ioctl_fionbio(&fd, true).is_err() {
        return messages;
    }
    // As in `serve_npl`: the AsyncFd owns the fd for its whole life.
    #[allow(deprecated)]
    let Ok(afd) = tokio::io::unix::AsyncFd::new(fd) else {
        return messages;
    };
    let mut buf = vec![0u8; MAX_NPL_PACKET + 1];
    loop {
        let Ok(mut guard) = afd.readable().await else {
            return messages;
        };
        match guard.try_io(|inner| {
            rustix::net::recv(inner.get_ref(), &mut buf, rustix::net::RecvFlags::DONTWAIT)
                .map_err(std::io::Error::from)
        }) {
            Ok(Ok(0)) | Ok(Err(_)) => return messages,
            Ok(Ok(n)) => match ControlMessage::parse(&buf[..n.min(buf.len())]) {
                Ok(Some(m)) if messages.len() < MAX_CONTROL_MESSAGES => messages.push(m),
                Ok(_) => {}
                Err(why) => tracing::warn!(reason = %why, "contract control message dropped"),
            },
            Err(_would_block) => continue,
        }
    }
}

/// Moves NPL packets between the contract's socket and the node until the run ends (the
/// caller aborts the task).
async fn serve_npl(fd: OwnedFd, mut link: NplLink) {
    if rustix::io::ioctl_fionbio(&fd, true).is_err() {
        tracing::warn!("npl socket could not be made non-blocking; NPL disabled for this run");
        return;
    }
    // `AsyncFd::new` is deprecated for I/O safety: the fd must stay open while registered.
    // Here the AsyncFd owns the fd for its whole life, so that cannot happen.
    #[allow(deprecated)]
    let Ok(afd) = tokio::io::unix::AsyncFd::new(fd) else {
        tracing::warn!("npl socket could not be registered; NPL disabled for this run");
        return;
    };
    let mut buf = vec![0u8; MAX_NPL_PACKET + 1];
    loop {
        tokio::select! {
            ready = afd.readable() => {
                let Ok(mut guard) = ready else { return };
                match guard.try_io(|inner| {
                    rustix::net::recv(inner.get_ref(), &mut buf, rustix::net::RecvFlags::DONTWAIT)
                        .map_err(std::io::Error::from)
                }) {
                    Ok(Ok(0)) => return,
                    Ok(Ok(n)) if n > MAX_NPL_PACKET => {
                        tracing::warn!(bytes = n, "contract npl message over 128 KiB; dropped");
                    }
                    Ok(Ok(n)) => {
                        if link.outgoing.send(buf[..n].to_vec()).await.is_err() {
                            return;
                        }
                    }
                    Ok(Err(_)) => return,
                    Err(_would_block) => continue,
                }
            }
            msg = link.incoming.recv() => {
                let Some((sender, data)) = msg else { return };
                for packet in [sender.as_bytes(), data.as_slice()] {
                    loop {
                        let Ok(mut guard) = afd.writable().await else { return };
                        match guard.try_io(|inner| {
                            rustix::net::send(inner.get_ref(), packet, rustix::net::SendFlags::DONTWAIT)
                                .map_err(std::io::Error::from)
                        }) {
                            Ok(Ok(_)) => break,
                            Ok(Err(_)) => return,
                            Err(_would_block) => continue,
                        }
                    }
                }
            }
        }
    }
}

fn seqpacket_pair() -> Result<(OwnedFd, OwnedFd), ExecError> {
    rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| ExecError::Io {
        step: "making control/npl sockets",
        source: e.into(),
    })
}

/// How contract processes (the contract, `install.sh`, `post_exec.sh`) are started: through
/// `hotpocket exec-contract`, which applies the round's rlimits and, where the kernel offers
/// Landlock, hides the node's directory from them (`crate::confine`), then execs.
#[derive(Debug, Clone)]
pub struct Jail {
    /// The `hotpocket` executable.
    pub wrapper: PathBuf,
    /// The node's directory (absolute), hidden from contract processes except their working
    /// directory and `../patch.cfg`; None where Landlock is unavailable (the node said so at
    /// start).
    pub hide: Option<PathBuf>,
}

impl Jail {
    /// `program` (then the caller's arguments) run in `cwd` through the wrapper, with `limits`.
    fn command(&self, cwd: &Path, limits: &ProcLimits, program: &Path) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.wrapper);
        command
            .arg("exec-contract")
            .arg("--cpu-seconds")
            .arg(limits.cpu_seconds.to_string())
            .arg("--mem-bytes")
            .arg(limits.mem_bytes.to_string())
            .arg("--open-files")
            .arg(limits.open_files.to_string());
        if let Some(hide) = &self.hide {
            command.arg("--hide").arg(hide).arg("--writable").arg(cwd);
            if let Some(contract_fs) = cwd.parent() {
                command.arg("--rw-file").arg(contract_fs.join("patch.cfg"));
            }
        }
        command
            .arg("--")
            .arg(program)
            .current_dir(cwd)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        command
    }
}

/// The contract's command line, through the wrapper.
fn wrapped_command(cmd: &ContractCommand) -> tokio::process::Command {
    let limits = ProcLimits {
        cpu_seconds: cmd.limits.proc_cpu_seconds,
        mem_bytes: cmd.limits.proc_mem_bytes,
        open_files: cmd.limits.proc_ofd_count,
    };
    let mut command = cmd
        .jail
        .command(&cmd.state_dir, &limits, &cmd.state_dir.join(&cmd.bin_path));
    // Read by the runtime and passed on within a budget (`contract_log`).
    command
        .args(cmd.bin_args.split_whitespace())
        .envs(&cmd.environment)
        .stdin(Stdio::piped());
    command
}

/// Passes a child's stdout and stderr on to the log within the budget (`contract_log`).
fn forward_output(child: &mut tokio::process::Child, who: &'static str) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    if let Some(out) = child.stdout.take() {
        tasks.push(crate::contract_log::forward(out, who, "stdout"));
    }
    if let Some(err) = child.stderr.take() {
        tasks.push(crate::contract_log::forward(err, who, "stderr"));
    }
    tasks
}

/// Waits briefly for the log forwarders to see the end of their pipes; a descendant that
/// keeps a pipe open is cut off.
async fn finish_output(tasks: Vec<JoinHandle<()>>) {
    for mut task in tasks {
        if tokio::time::timeout(Duration::from_secs(1), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

fn exit_kind(status: std::process::ExitStatus) -> RunEnd {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => RunEnd::Exited(code),
        (None, Some(sig)) => RunEnd::Signalled(sig),
        (None, None) => RunEnd::Exited(-1),
    }
}

fn kill_group(pid: Option<u32>) {
    let Some(pid) = pid
        .and_then(|p| i32::try_from(p).ok())
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    // The group may be gone already.
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::Kill);
}

async fn read_outputs(stream: tokio::net::UnixStream, cap: u64) -> (Vec<Vec<u8>>, bool) {
    let mut stream = tokio::io::BufReader::with_capacity(64 * 1024, stream);
    let mut msgs = Vec::new();
    let mut total = 0u64;
    let mut cut = false;
    loop {
        let mut len = [0u8; 4];
        if stream.read_exact(&mut len).await.is_err() {
            break;
        }
        let len = u32::from_be_bytes(len) as u64;
        if cut || total + len > cap {
            cut = true;
            // Drain and drop the rest so the contract does not block on a full socket.
            let mut sink = tokio::io::sink();
            if tokio::io::copy(&mut (&mut stream).take(len), &mut sink)
                .await
                .is_err()
            {
                break;
            }
            continue;
        }
        let mut body = vec![0u8; len as usize];
        if stream.read_exact(&mut body).await.is_err() {
            break;
        }
        total += len;
        msgs.push(body);
    }
    (msgs, cut)
}

/// The rlimits `hotpocket exec-contract` applies before exec (0 = leave unlimited).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcLimits {
    pub cpu_seconds: u64,
    pub mem_bytes: u64,
    pub open_files: u64,
}

/// Applies the limits to this process, then replaces it with `program args…`. Returns only
/// on failure.
pub fn exec_with_limits(limits: ProcLimits, program: &str, args: &[String]) -> std::io::Error {
    use rustix::process::{setrlimit, Resource, Rlimit};
    use std::os::unix::process::CommandExt;
    let set = |resource, value: u64, hard: u64| {
        setrlimit(
            resource,
            Rlimit {
                current: Some(value),
                maximum: Some(hard),
            },
        )
    };
    if limits.cpu_seconds > 0 {
        if let Err(e) = set(Resource::Cpu, limits.cpu_seconds, limits.cpu_seconds + 1) {
            return e.into();
        }
    }
    // RLIMIT_DATA, as hpcore: it bounds what a process allocates (heap and private
    // mappings) but not the address space it reserves, which V8 (Node.js) needs by the GiB.
    if limits.mem_bytes > 0 {
        if let Err(e) = set(Resource::Data, limits.mem_bytes, limits.mem_bytes) {
            return e.into();
        }
    }
    if limits.open_files > 0 {
        if let Err(e) = set(Resource::Nofile, limits.open_files, limits.open_files) {
            return e.into();
        }
    }
    std::process::Command::new(program).args(args).exec()
}

/// Runs `/bin/sh <script> <args…>` in `dir` with a timeout (install.sh, post_exec.sh);
/// returns the exit code, or None when it timed out and was killed.
pub async fn run_script(
    jail: &Jail,
    dir: &Path,
    script: &str,
    args: &[String],
    timeout: Duration,
) -> Result<Option<i32>, ExecError> {
    let mut command = jail.command(dir, &ProcLimits::default(), Path::new("/bin/sh"));
    command.arg(script).args(args).stdin(Stdio::null());
    let mut child = command.spawn().map_err(io("starting a script"))?;
    let log_tasks = forward_output(&mut child, "script");
    let pid = child.id();
    let result = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => {
            let status = status.map_err(io("waiting for a script"))?;
            Some(status.code().unwrap_or(-1))
        }
        Err(_) => {
            kill_group(pid);
            let _ = child.wait().await;
            None
        }
    };
    finish_output(log_tasks).await;
    Ok(result)
}
