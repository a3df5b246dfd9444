//! `hotpocket`: the instance runtime binary. Parses arguments, starts tracing and calls the
//! library. Exit codes: 0 ok, 1 failure, 2 usage (what clap rejects); 127 when
//! `exec-contract` cannot start the contract.

mod assignment;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use berth_hotpocket::clock::SkewedClock;
use berth_hotpocket::config::{NewNode, NodeConfig, Overrides, CONFIG_FILE};
use berth_hotpocket::exec::{exec_with_limits, ProcLimits};
use berth_hotpocket::node::{self, StartOptions};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "hotpocket",
    version,
    about = "HotPocket-compatible instance runtime"
)]
struct Cli {
    /// Print data as JSON on stdout (one document; `run`: one line once the ports listen).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a node's state directory and config.
    New {
        dir: PathBuf,
        #[arg(long)]
        owner: String,
        #[arg(long)]
        contract_id: String,
        #[arg(long, default_value_t = 8081)]
        user_port: u16,
        #[arg(long, default_value_t = 22861)]
        peer_port: u16,
        #[arg(long)]
        roundtime_ms: Option<u64>,
        /// 64-hex ed25519 secret seed; generated when absent.
        #[arg(long)]
        node_secret: Option<String>,
        /// The UNL: comma-separated `ed…` keys (this node's own is added when missing).
        #[arg(long, value_delimiter = ',')]
        unl: Vec<String>,
        /// Peers to dial: comma-separated host:port.
        #[arg(long, value_delimiter = ',')]
        peers: Vec<String>,
        /// Percent of the UNL that must agree for a ledger to close (1–100, default 80).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
        threshold: Option<u32>,
        /// Join as an observer: this node's key is not added to the UNL (it syncs, follows
        /// and proposes once a `patch.cfg` adds it).
        #[arg(long, requires = "unl")]
        observer: bool,
        /// Hold at genesis: run no rounds until the owner's cluster request sets the UNL and
        /// the peers (for nodes whose keys the others learn only once they exist).
        #[arg(long)]
        await_cluster: bool,
    },
    /// Run a node. Creates the config from HP_* variables on first start.
    Run {
        #[arg(long, env = "HP_STATE_DIR", default_value = "/state")]
        state_dir: PathBuf,
        #[arg(long, env = "HP_CONTRACT_ID")]
        contract_id: Option<String>,
        #[arg(long, env = "HP_OWNER_PUBKEY")]
        owner: Option<String>,
        #[arg(long, env = "HP_NODE_SECRET", hide_env_values = true)]
        node_secret: Option<String>,
        #[arg(long, env = "HP_USER_PORT")]
        user_port: Option<u16>,
        #[arg(long, env = "HP_PEER_PORT")]
        peer_port: Option<u16>,
        #[arg(long, env = "HP_ROUNDTIME_MS")]
        roundtime_ms: Option<u64>,
        /// Address to listen on (default 0.0.0.0).
        #[arg(long, env = "HP_LISTEN")]
        listen: Option<String>,
        /// The UNL at creation: comma-separated `ed…` keys.
        #[arg(long, env = "HP_UNL", value_delimiter = ',')]
        unl: Vec<String>,
        /// Peers to dial: comma-separated host:port (replaces the configured ones).
        #[arg(long, env = "HP_PEERS", value_delimiter = ',')]
        peers: Option<Vec<String>>,
        /// Percent of the UNL that must agree, at creation (1–100).
        #[arg(long, env = "HP_THRESHOLD", value_parser = clap::value_parser!(u32).range(1..=100))]
        threshold: Option<u32>,
        /// At creation: join as an observer (this node's key is not added to the UNL).
        #[arg(long, env = "HP_OBSERVER", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
        observer: bool,
        /// At creation: hold at genesis (no rounds, no ledger) until the owner's cluster
        /// request sets the UNL and the peers.
        #[arg(long, env = "HP_AWAIT_CLUSTER", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
        await_cluster: bool,
        /// A pooled instance: wait (blocked, no CPU) until the host assigns it, then take the
        /// identity it was handed (`assign.env` in the state directory).
        #[arg(long)]
        await_assignment: bool,
        /// Testing only: run this node's clock this many ms ahead (negative: behind).
        #[arg(
            long,
            env = "HP_CLOCK_SKEW_MS",
            hide = true,
            allow_hyphen_values = true
        )]
        clock_skew_ms: Option<i64>,
    },
    /// Make a contract bundle zip from one executable (as `contract`) and optional files.
    Bundle {
        /// The contract executable.
        #[arg(long)]
        bin: PathBuf,
        /// The zip to write.
        #[arg(long)]
        out: PathBuf,
        /// Contract version for contract.config.
        #[arg(long, default_value = "1.0")]
        version: String,
        /// Extra files to put beside it (e.g. install.sh).
        #[arg(long = "file")]
        files: Vec<PathBuf>,
    },
    /// Write the instance image's docker build context into a directory.
    ImageContext {
        #[arg(long)]
        dir: PathBuf,
        /// Static hotpocket binary (default: located as the library does).
        #[arg(long)]
        hotpocket: Option<PathBuf>,
        /// Static busybox.
        #[arg(long, default_value = "/bin/busybox")]
        busybox: PathBuf,
    },
    /// Replay a contract's downloaded history (`berth audit` writes it): check the hash
    /// chain, execute every ledger again in a throw-away directory, and compare each ledger's
    /// state and outputs. Exits 1 at the first difference or a broken chain.
    Replay {
        /// The history (JSON: contract_id, unl, ledgers from 1 with raw inputs and outputs).
        #[arg(long)]
        history: PathBuf,
        /// The contract bundle zip you expect: only an upload of these bytes installs it (a
        /// history that installed another differs at the ledger after that upload). Default:
        /// the owner's first upload found in the history.
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// The owner's key, `ed…` (default: the user whose upload is installed).
        #[arg(long)]
        owner: Option<String>,
        /// Compare from this ledger on; earlier ones are replayed to build the state.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Replay up to this ledger (default: the history's last).
        #[arg(long)]
        to: Option<u64>,
        /// Work in this empty directory and keep it (default: a temporary one, removed).
        #[arg(long)]
        work_dir: Option<PathBuf>,
    },
    /// Internal: apply round limits and the file-system confinement to this process and exec
    /// the contract (or a bootstrap script).
    #[command(hide = true)]
    ExecContract {
        #[arg(long, default_value_t = 0)]
        cpu_seconds: u64,
        #[arg(long, default_value_t = 0)]
        mem_bytes: u64,
        #[arg(long, default_value_t = 0)]
        open_files: u64,
        /// The node directory to hide (Landlock); only `--writable` and `--rw-file` in it stay
        /// reachable.
        #[arg(long)]
        hide: Option<PathBuf>,
        /// The directory the process may change (its working directory).
        #[arg(long, requires = "hide")]
        writable: Option<PathBuf>,
        /// A file in the hidden directory the process may read and write (`patch.cfg`).
        #[arg(long = "rw-file", requires = "hide")]
        rw_files: Vec<PathBuf>,
        program: String,
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::ExecContract {
        cpu_seconds,
        mem_bytes,
        open_files,
        hide,
        writable,
        rw_files,
        program,
        args,
    } = cli.command
    {
        if let Some(hidden) = hide {
            let writable = match writable.map_or_else(std::env::current_dir, Ok) {
                Ok(dir) => dir,
                Err(e) => {
                    eprintln!("hotpocket: confining contract `{program}`: working directory: {e}");
                    return ExitCode::from(126);
                }
            };
            let confinement = berth_hotpocket::confine::Confinement {
                hidden,
                writable,
                rw_files,
            };
            if let Err(e) = berth_hotpocket::confine::confine_self(&confinement) {
                eprintln!("hotpocket: confining contract `{program}`: {e}");
                return ExitCode::from(126);
            }
        }
        let limits = ProcLimits {
            cpu_seconds,
            mem_bytes,
            open_files,
        };
        let err = exec_with_limits(limits, &program, &args);
        eprintln!("hotpocket: starting contract `{program}`: {err}");
        return ExitCode::from(127);
    }
    berth_log::init("info", berth_log::Format::from_env());
    match real_main(cli.command, cli.json) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hotpocket: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints one JSON document on stdout.
fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(value).context("writing JSON")?
    );
    Ok(())
}

fn real_main(command: Command, json: bool) -> anyhow::Result<()> {
    match command {
        Command::New {
            dir,
            owner,
            contract_id,
            user_port,
            peer_port,
            roundtime_ms,
            node_secret,
            unl,
            peers,
            threshold,
            observer,
            await_cluster,
        } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            if dir.join(CONFIG_FILE).exists() {
                bail!("{} already holds a node config", dir.display());
            }
            let cfg = NodeConfig::create(&NewNode {
                contract_id,
                owner_pubkey: owner,
                node_secret_hex: node_secret,
                user_port,
                peer_port,
                roundtime_ms,
                unl,
                peers,
                threshold,
                observer,
                await_cluster,
            })?;
            cfg.save(&dir)?;
            if json {
                return print_json(&serde_json::json!({
                    "public_key": cfg.node.public_key,
                    "dir": dir.display().to_string(),
                }));
            }
            println!("created node {} in {}", cfg.node.public_key, dir.display());
            Ok(())
        }
        Command::Run {
            state_dir,
            contract_id,
            owner,
            node_secret,
            user_port,
            peer_port,
            roundtime_ms,
            listen,
            unl,
            peers,
            threshold,
            observer,
            await_cluster,
            await_assignment,
            clock_skew_ms,
        } => {
            let (contract_id, owner, node_secret) = if await_assignment {
                assignment::wait(&state_dir)?;
                let handed = assignment::read(&state_dir)?;
                tracing::info!("assigned");
                (
                    handed.contract_id.or(contract_id),
                    handed.owner.or(owner),
                    handed.node_secret.or(node_secret),
                )
            } else {
                (contract_id, owner, node_secret)
            };
            let mut cfg = if state_dir.join(CONFIG_FILE).exists() {
                NodeConfig::load(&state_dir)?
            } else {
                let (Some(contract_id), Some(owner)) = (contract_id, owner) else {
                    bail!("{} has no {CONFIG_FILE}; set HP_CONTRACT_ID and HP_OWNER_PUBKEY to create one", state_dir.display());
                };
                std::fs::create_dir_all(&state_dir)
                    .with_context(|| format!("creating {}", state_dir.display()))?;
                let cfg = NodeConfig::create(&NewNode {
                    contract_id,
                    owner_pubkey: owner,
                    node_secret_hex: node_secret,
                    user_port: user_port.unwrap_or(8081),
                    peer_port: peer_port.unwrap_or(22861),
                    roundtime_ms,
                    unl,
                    peers: peers.clone().unwrap_or_default(),
                    threshold,
                    observer,
                    await_cluster,
                })?;
                cfg.save(&state_dir)?;
                tracing::info!(node = %cfg.node.public_key, await_cluster, "created node config");
                cfg
            };
            cfg.apply_overrides(&Overrides {
                user_port,
                peer_port,
                roundtime_ms,
                listen,
                peers: peers.map(|p| p.into_iter().filter(|s| !s.trim().is_empty()).collect()),
            });
            cfg.validate()?;
            let wrapper = std::env::current_exe().context("locating the hotpocket executable")?;
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(async move {
                let shutdown = shutdown_signal()?;
                let mut opts = StartOptions::new(state_dir, wrapper);
                if let Some(skew_ms) = clock_skew_ms {
                    tracing::warn!(skew_ms, "clock skewed for testing");
                    opts.clock = std::sync::Arc::new(SkewedClock { skew_ms });
                }
                let running = node::start(cfg, opts).await?;
                if json {
                    // One line, so that a supervisor reading stdout gets it whole.
                    let ready = serde_json::json!({
                        "user_addr": running.user_addr.to_string(),
                        "peer_addr": running.peer_addr.to_string(),
                    });
                    println!("{ready}");
                } else {
                    println!("hotpocket user port listening on {}", running.user_addr);
                    println!("hotpocket peer port listening on {}", running.peer_addr);
                }
                tracing::info!(version = env!("CARGO_PKG_VERSION"), "hotpocket running");
                running.run_until(shutdown).await?;
                anyhow::Ok(())
            })
        }
        Command::Bundle {
            bin,
            out,
            version,
            files,
        } => {
            let mut entries = vec![(
                "contract".to_owned(),
                std::fs::read(&bin).with_context(|| format!("reading {}", bin.display()))?,
                0o755,
            )];
            for file in files {
                let name = file
                    .file_name()
                    .and_then(|n| n.to_str())
                    .with_context(|| format!("{} has no usable file name", file.display()))?
                    .to_owned();
                let bytes =
                    std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
                entries.push((name, bytes, 0o755));
            }
            let config: berth_hotpocket_client::protocol::bundle::ContractConfig =
                serde_json::from_value(
                    serde_json::json!({"bin_path": "contract", "version": version}),
                )
                .context("building contract.config")?;
            let zip = berth_hotpocket_client::protocol::bundle::build_bundle(&config, &entries)?;
            if let Some(parent) = out.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            std::fs::write(&out, &zip).with_context(|| format!("writing {}", out.display()))?;
            if json {
                return print_json(
                    &serde_json::json!({ "path": out.display().to_string(), "bytes": zip.len() }),
                );
            }
            println!("wrote {} ({} bytes)", out.display(), zip.len());
            Ok(())
        }
        Command::ImageContext {
            dir,
            hotpocket,
            busybox,
        } => {
            let sources = match hotpocket {
                Some(hotpocket) => berth_hotpocket::image::ImageSources { hotpocket, busybox },
                None => berth_hotpocket::image::ImageSources {
                    busybox,
                    ..berth_hotpocket::image::ImageSources::locate()?
                },
            };
            let dir = berth_hotpocket::image::prepare_context_from(&dir, &sources)?;
            if json {
                return print_json(&serde_json::json!({ "dir": dir.display().to_string() }));
            }
            println!("image context in {}", dir.display());
            Ok(())
        }
        Command::Replay {
            history,
            bundle,
            owner,
            from,
            to,
            work_dir,
        } => replay(history, bundle, owner, from, to, work_dir, json),
        Command::ExecContract { .. } => bail!("exec-contract is handled before start-up"),
    }
}

/// `hotpocket replay`: the report on stdout, progress on stderr, exit 1 on a difference.
fn replay(
    history: PathBuf,
    bundle: Option<PathBuf>,
    owner: Option<String>,
    from: u64,
    to: Option<u64>,
    work_dir: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<()> {
    use berth_hotpocket::replay;
    use berth_hotpocket_client::protocol::history::HistoryFile;
    let text = std::fs::read(&history).with_context(|| format!("reading {}", history.display()))?;
    let mut file: HistoryFile = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a history file", history.display()))?;
    if let Some(to) = to {
        file.ledgers.retain(|l| l.seq_no <= to);
    }
    let bundle = bundle
        .map(|p| std::fs::read(&p).with_context(|| format!("reading {}", p.display())))
        .transpose()?;
    let (work, _temp) = match work_dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            (dir, None)
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("hotpocket-replay-")
                .tempdir()
                .context("making the replay directory")?;
            (temp.path().to_path_buf(), Some(temp))
        }
    };
    let cfg = replay::ReplayConfig {
        contract_id: file.contract_id.clone(),
        unl: file.unl.clone(),
        bundle,
        owner,
        work_dir: work,
        wrapper: std::env::current_exe().context("locating the hotpocket executable")?,
        compare_from: from,
    };
    let started = std::time::Instant::now();
    let mut last_shown = std::time::Instant::now();
    let progress = |done: u64, total: u64| {
        if last_shown.elapsed() >= std::time::Duration::from_secs(1) || done == total {
            last_shown = std::time::Instant::now();
            let secs = started.elapsed().as_secs_f64().max(1e-3);
            eprintln!(
                "replayed {done}/{total} ledgers ({:.0} ledgers/s)",
                done as f64 / secs
            );
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = runtime
        .block_on(replay::replay(&file.ledgers, &cfg, progress))
        .context("replay")?;
    if json {
        print_json(&serde_json::to_value(&report).context("encoding the report")?)?;
    } else if let Some(m) = &report.mismatch {
        println!("ledger {} differs ({})", m.seq_no, m.what);
        if let Some(user) = &m.user {
            println!("  user:     {user}");
        }
        println!("  recorded: {}", m.recorded);
        println!("  replayed: {}", m.replayed);
        println!("  inputs of ledger {}:", m.seq_no);
        for input in &m.inputs {
            println!("    {} #{}: {}", input.user, input.nonce, input.input);
        }
    } else {
        let secs = (report.elapsed_ms as f64 / 1000.0).max(1e-3);
        println!(
            "verified {} ledgers ({} replayed, {} inputs, {:.0} ledgers/s, {:.0} inputs/s)",
            report.ledgers_verified,
            report.ledgers_replayed,
            report.inputs_replayed,
            report.ledgers_replayed as f64 / secs,
            report.inputs_replayed as f64 / secs
        );
    }
    match &report.mismatch {
        Some(m) => bail!(
            "ledger {} differs from the node's record ({})",
            m.seq_no,
            m.what
        ),
        None => Ok(()),
    }
}

/// Resolves on SIGTERM or SIGINT; the handlers are installed when this is called, so call it
/// before announcing that the node is up.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("watching SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("watching SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutting down");
    })
}
