//! `berth`: the tenant's command line. Exit codes: 0 ok, 1 failure, 2 usage.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use berth_tenant::hosts::{self, Filter, HostView};
use berth_tenant::instance::{self, InputView, Instance};
use berth_tenant::keys::{self, Keys};
use berth_tenant::settings::Settings;
use berth_xrpl_core::KeyType;
use clap::{Args, Parser, Subcommand};

mod sandbox_cmd;

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "Use the Berth host marketplace as a tenant"
)]
struct Cli {
    /// The tenant's home directory (keys); default `~/.berth`.
    #[arg(long, global = true, env = "BERTH_HOME")]
    home: Option<PathBuf>,
    /// Print data as JSON.
    #[arg(long, global = true)]
    json: bool,
    /// XRPL server (ws:// or wss://); default from `<home>/settings.json`.
    #[arg(long, global = true, env = "BERTH_LEDGER")]
    ledger: Option<String>,
    /// The registry account hosts register with; default from `<home>/settings.json`.
    #[arg(long, global = true, env = "BERTH_REGISTRY")]
    registry: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create, show or import the tenant's keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// List hosts from the registry with their live lease offers.
    Hosts(HostsArgs),
    /// Bundle a contract directory (or take a zip) and upload it to an instance as its owner.
    Deploy {
        /// The instance's user port: host:port or wss://host:port.
        instance: String,
        /// A contract directory (with contract.config) or a bundle zip.
        bundle: PathBuf,
        /// Refuse unless the instance announces this contract id.
        #[arg(long)]
        contract_id: Option<String>,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Send a signed input and print the contract's outputs for it.
    Input {
        /// The instance's user port: host:port or wss://host:port.
        instance: String,
        /// The input, or `@file` for a file's bytes.
        data: String,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Send a read request and print the contract's answer.
    Read {
        /// The instance's user port: host:port or wss://host:port.
        instance: String,
        /// The request, or `@file` for a file's bytes.
        data: String,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Show an instance's last closed ledger and status.
    Status {
        /// The instance's user port: host:port or wss://host:port.
        instance: String,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Run the whole marketplace locally (ledger, registry, host agent, funded tenant) until
    /// Ctrl-C; needs the Docker engine and the instance image.
    Sandbox(sandbox_cmd::SandboxArgs),
}

#[derive(Args)]
struct ConnArgs {
    /// Seconds allowed to connect and for each answer.
    #[arg(long, default_value_t = 20)]
    timeout: u64,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a new XRPL wallet and HotPocket user key.
    New {
        /// XRPL key type: ed25519 or secp256k1.
        #[arg(long, default_value = "ed25519")]
        key_type: KeyType,
        /// Replace existing keys.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        message_key: MessageKeyArgs,
        /// Print the seed and the HotPocket secret.
        #[arg(long)]
        show_secrets: bool,
    },
    /// Show the stored keys (public parts unless --show-secrets).
    Show {
        #[arg(long)]
        show_secrets: bool,
    },
    /// Import an XRPL wallet from its seed (and optionally a HotPocket user secret).
    Import {
        /// The XRPL family seed (s…); `-` reads it from stdin.
        #[arg(long, env = "BERTH_SEED", hide_env_values = true)]
        seed: String,
        /// The HotPocket user secret key, 64 hex chars; a new one is made when absent.
        #[arg(long, env = "BERTH_HOTPOCKET_SECRET", hide_env_values = true)]
        hotpocket_secret: Option<String>,
        /// Replace existing keys.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        message_key: MessageKeyArgs,
        /// Print the seed and the HotPocket secret.
        #[arg(long)]
        show_secrets: bool,
    },
}

#[derive(Args)]
struct MessageKeyArgs {
    /// Also set the account's MessageKey on the ledger (the account must be funded).
    #[arg(long)]
    set_message_key: bool,
}

#[derive(Args)]
struct HostsArgs {
    /// Highest price per moment, in drops.
    #[arg(long)]
    max_price: Option<u64>,
    /// Fewest free slots (live offers) a host must have; default 1.
    #[arg(long)]
    min_free: Option<usize>,
    /// Least memory per instance, in MB.
    #[arg(long)]
    min_memory: Option<u32>,
    /// Only hosts heard from (heartbeat or registration) within this many seconds.
    #[arg(long)]
    seen_within: Option<u64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn home(cli_home: Option<&Path>) -> anyhow::Result<PathBuf> {
    match cli_home {
        Some(h) => Ok(h.to_path_buf()),
        None => {
            keys::default_home().context("no home directory: set BERTH_HOME or pass --home <dir>")
        }
    }
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Where the ledger-facing commands connect: flags and environment first, then
/// `<home>/settings.json`.
struct Network {
    ledger: Option<String>,
    registry: Option<String>,
}

impl Network {
    fn resolve(cli: &Cli) -> anyhow::Result<Network> {
        let settings = match home(cli.home.as_deref()) {
            Ok(home) => Settings::load(&home)?,
            Err(_) => Settings::default(),
        };
        Ok(Network {
            ledger: cli.ledger.clone().or(settings.ledger),
            registry: cli.registry.clone().or(settings.registry),
        })
    }

    fn ledger(&self) -> anyhow::Result<&str> {
        self.ledger.as_deref().context(
            "no ledger server: pass --ledger ws://host:port, set BERTH_LEDGER, or run `berth sandbox` for a local one",
        )
    }

    fn registry(&self) -> anyhow::Result<&str> {
        self.registry.as_deref().context(
            "no registry account: pass --registry r…, set BERTH_REGISTRY, or run `berth sandbox` for a local one",
        )
    }

    async fn client(&self) -> anyhow::Result<berth_mb_xrpl::Client> {
        let url = self.ledger()?;
        berth_mb_xrpl::Client::connect(berth_mb_xrpl::ClientConfig::new([url.to_owned()]))
            .await
            .with_context(|| format!("connecting to the ledger at {url}; is it running?"))
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let json = cli.json;
    let net = Network::resolve(&cli)?;
    match cli.command {
        Command::Keys(cmd) => run_keys(&home(cli.home.as_deref())?, cmd, &net, json).await,
        Command::Hosts(args) => run_hosts(args, &net, json).await,
        Command::Sandbox(args) => sandbox_cmd::run(args, json).await,
        Command::Deploy {
            instance,
            bundle,
            contract_id,
            conn,
        } => {
            let keys = Keys::load(&home(cli.home.as_deref())?)?;
            let zip = instance::load_bundle(&bundle)?;
            eprintln!("bundle {}: {} bytes", bundle.display(), zip.len());
            let node = connect(&instance, &keys, &conn).await?;
            let announced = node.contract_id().to_owned();
            if let Some(want) = contract_id.filter(|want| *want != announced) {
                node.close().await;
                bail!("instance {instance} runs contract {announced}, not {want}; check the instance address");
            }
            eprintln!(
                "uploading {} bytes to {} (contract {announced}) as {}…",
                zip.len(),
                node.addr(),
                keys.user_pubkey_hex()
            );
            let reply = node.upload(&zip).await?;
            node.close().await;
            if json {
                print_json(&reply)?;
            } else {
                println!("bootstrap: {} {}", reply.status, reply.message);
            }
            if reply.status != "ok" {
                let hint = if reply.message.contains("UserNotAllowed") {
                    "; only the instance owner may deploy: use the owner's keys (`berth keys show`)"
                } else {
                    ""
                };
                bail!("the instance refused the bundle: {}{hint}", reply.message);
            }
            Ok(())
        }
        Command::Input {
            instance,
            data,
            conn,
        } => {
            let keys = Keys::load(&home(cli.home.as_deref())?)?;
            let data = instance::input_bytes(&data)?;
            let node = connect(&instance, &keys, &conn).await?;
            let outputs = node.input(&data).await;
            node.close().await;
            let view = InputView::from(outputs?);
            if json {
                print_json(&view)?;
            } else {
                eprintln!(
                    "accepted in ledger {} {}",
                    view.ledger_seq_no, view.ledger_hash
                );
                for o in &view.outputs {
                    println!("{o}");
                }
            }
            Ok(())
        }
        Command::Read {
            instance,
            data,
            conn,
        } => {
            let keys = Keys::load(&home(cli.home.as_deref())?)?;
            let data = instance::input_bytes(&data)?;
            let node = connect(&instance, &keys, &conn).await?;
            let answer = node.read(&data).await;
            node.close().await;
            let answer = String::from_utf8_lossy(&answer?).into_owned();
            if json {
                print_json(&serde_json::json!({ "output": answer }))?;
            } else {
                println!("{answer}");
            }
            Ok(())
        }
        Command::Status { instance, conn } => {
            let keys = Keys::load(&home(cli.home.as_deref())?)?;
            let node = connect(&instance, &keys, &conn).await?;
            let status = node.status().await;
            node.close().await;
            let s = status?;
            if json {
                print_json(&s)?;
            } else {
                println!("instance     {}", s.address);
                println!("contract     {}", s.contract_id);
                println!("lcl          {} {}", s.lcl_seq_no, s.lcl_hash);
                println!("hotpocket    {}", s.hp_version);
                println!("roundtime    {} ms", s.roundtime_ms);
                println!("executing    {}", s.contract_execution_enabled);
                println!("unl          {}", s.unl.join(", "));
            }
            Ok(())
        }
    }
}

async fn connect(url: &str, keys: &Keys, conn: &ConnArgs) -> anyhow::Result<Instance> {
    Instance::connect(url, &keys.user, Duration::from_secs(conn.timeout))
        .await
        .with_context(|| {
            format!("is the instance running and its address right? check it with the host (tried {url})")
        })
}

async fn run_keys(home: &Path, cmd: KeysCommand, net: &Network, json: bool) -> anyhow::Result<()> {
    let (keys, show) = match cmd {
        KeysCommand::Show { show_secrets } => (Keys::load(home)?, show_secrets),
        KeysCommand::New {
            key_type,
            force,
            message_key,
            show_secrets,
        } => {
            let keys = Keys::generate(key_type);
            let path = keys.save(home, force)?;
            eprintln!("keys written to {}", path.display());
            set_message_key_if_asked(&keys, message_key, net).await?;
            (keys, show_secrets)
        }
        KeysCommand::Import {
            seed,
            hotpocket_secret,
            force,
            message_key,
            show_secrets,
        } => {
            let seed = if seed == "-" {
                let mut line = String::new();
                std::io::stdin()
                    .read_line(&mut line)
                    .context("reading the seed from stdin")?;
                line
            } else {
                seed
            };
            let keys = Keys::import(&seed, hotpocket_secret.as_deref())?;
            let path = keys.save(home, force)?;
            eprintln!("keys written to {}", path.display());
            set_message_key_if_asked(&keys, message_key, net).await?;
            (keys, show_secrets)
        }
    };
    let view = keys.view(show);
    if json {
        return print_json(&view);
    }
    println!("address              {}", view.address);
    println!("key type             {}", view.key_type);
    println!("public key           {}", view.public_key);
    println!("hotpocket user key   {}", view.hotpocket_public_key);
    if let Some(seed) = &view.seed {
        println!("seed                 {seed}");
    }
    if let Some(secret) = &view.hotpocket_secret {
        println!("hotpocket secret     {secret}");
    }
    Ok(())
}

async fn set_message_key_if_asked(
    keys: &Keys,
    args: MessageKeyArgs,
    net: &Network,
) -> anyhow::Result<()> {
    if !args.set_message_key {
        return Ok(());
    }
    let client = net.client().await?;
    let result = keys::set_message_key(&client, keys).await;
    client.shutdown().await;
    let address = keys.wallet.address();
    let validated = result.with_context(|| {
        format!("the keys are saved; fund {address} (reserve plus fee) and run `berth keys import --force --set-message-key` with its seed")
    })?;
    if !validated.is_success() {
        bail!(
            "setting the MessageKey failed on the ledger with {}; fund {address} and try again",
            validated.result
        );
    }
    eprintln!("MessageKey set in ledger {}", validated.ledger_index);
    Ok(())
}

async fn run_hosts(args: HostsArgs, net: &Network, json: bool) -> anyhow::Result<()> {
    let registry = net.registry()?.to_owned();
    let client = net.client().await?;
    let listed = hosts::list(&client, &registry).await;
    client.shutdown().await;
    let listed = listed?;
    let now_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let filter = Filter {
        max_price_drops: args.max_price,
        min_free: args.min_free,
        min_memory_mb: args.min_memory,
        seen_within_secs: args.seen_within,
        now_unix,
    };
    let registered = listed.len();
    let found: Vec<HostView> = listed.into_iter().filter_map(|h| filter.apply(h)).collect();
    if found.is_empty() {
        let why = if registered == 0 {
            format!(
                "no host has registered with the registry {registry}; check --registry and --ledger"
            )
        } else {
            format!(
                "{registered} registered host(s), none with a live offer matching the filters; relax --max-price/--min-free/--min-memory/--seen-within or try again later"
            )
        };
        bail!("no host found: {why}");
    }
    if json {
        return print_json(&found);
    }
    println!(
        "{:<35} {:<28} {:<3} {:>5} {:>12} {:>8} {:>8} {:>9} {:>8}",
        "HOST", "DOMAIN", "CC", "FREE", "PRICE/MOMENT", "MOMENT", "CPU(m)", "MEM(MB)", "SEEN"
    );
    for h in &found {
        let seen = h
            .last_seen_unix
            .map(|t| format!("{}s ago", now_unix.saturating_sub(t)))
            .unwrap_or_else(|| "-".into());
        let mem = h.offers.iter().map(|o| o.memory_mb).max().unwrap_or(0);
        let cpu = h.offers.iter().map(|o| o.cpu_millicores).max().unwrap_or(0);
        println!(
            "{:<35} {:<28} {:<3} {:>5} {:>12} {:>7}s {:>8} {:>9} {:>8}",
            h.address,
            h.domain,
            h.country,
            h.free_slots(),
            h.lowest_price().unwrap_or(h.price_drops),
            h.moment_secs,
            cpu,
            mem,
            seen
        );
    }
    Ok(())
}
