//! `berth`: the tenant's command line. Exit codes: 0 ok, 1 failure, 2 usage.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use berth_hotpocket_client::client::ClientError;
use berth_tenant::anchor::{self, CheckpointReport, NodeTarget, Verdict};
use berth_tenant::book::{Book, BookError, LeaseRecord};
use berth_tenant::cluster::{ClusterView, Clusters, CreateOptions};
use berth_tenant::hosts::{self, Filter, HostView};
use berth_tenant::instance::{self, InputView, Instance, InstanceError};
use berth_tenant::keys::{self, Keys};
use berth_tenant::lease::{self, AcquireOptions, Tenant, Xrp};
use berth_tenant::progress::Progress;
use berth_tenant::settings::Settings;
use berth_xrpl_core::KeyType;
use clap::{Args, Parser, Subcommand};

mod external;

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
    /// Buy a lease from a host and wait for its instance (resumable with --resume).
    Acquire(AcquireArgs),
    /// Bundle a contract directory (or take a zip) and upload it to an instance as its owner.
    Deploy {
        /// A lease (its id or a unique part of it such as its last 8 digits, see `berth leases`), or an instance's
        /// user port as host:port or wss://host:port.
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
        /// A lease (its id or a unique part of it such as its last 8 digits, see `berth leases`), or an instance's
        /// user port as host:port or wss://host:port.
        instance: String,
        /// The input, or `@file` for a file's bytes.
        data: String,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Send a read request and print the contract's answer.
    Read {
        /// A lease (its id or a unique part of it such as its last 8 digits, see `berth leases`), or an instance's
        /// user port as host:port or wss://host:port.
        instance: String,
        /// The request, or `@file` for a file's bytes.
        data: String,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Check what an instance's hosts did: download its ledgers with their inputs and
    /// outputs, check the hash chain, replay the contract locally (`hotpocket replay`, found
    /// beside `berth` or on the PATH) and compare every ledger's state and outputs. Prints
    /// `verified N ledgers` or the first ledger that differs; exits 1 then. Progress on
    /// stderr.
    Audit {
        /// A lease, a cluster (any live node of it), or an instance's user port as host:port
        /// or wss://host:port (any user may audit: an address is queried with a throw-away
        /// key when this home has none).
        target: String,
        /// Compare from this ledger on (earlier ones are replayed to build the state).
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Audit up to this ledger (default: the node's last closed ledger).
        #[arg(long)]
        to: Option<u64>,
        /// The contract bundle zip (default: the upload found in the history).
        #[arg(long)]
        bundle: Option<PathBuf>,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Show an instance's last closed ledger and status.
    Status {
        /// A lease (its id or a unique part of it such as its last 8 digits, see `berth leases`), or an instance's
        /// user port as host:port or wss://host:port.
        instance: String,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Pay for more moments of a lease.
    Extend {
        /// The lease: its id or a unique part of it such as its last 8 digits (see `berth leases`).
        lease: String,
        /// Moments to add.
        moments: u32,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// End a lease now (no refund of unused time); the host destroys its instance.
    Terminate {
        /// The lease: its id or a unique part of it such as its last 8 digits (see `berth leases`).
        lease: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Run one contract on several hosts: create, inspect, extend and end clusters.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// List the account's leases, from the ledger (token, host, expiry, instance address).
    Leases {
        /// Also show leases that ended (terminated, expired).
        #[arg(long)]
        all: bool,
    },
    /// Run the whole marketplace locally (ledger, registry, host agent, funded tenant) until
    /// Ctrl-C; needs the Docker engine and the instance image. Runs `berth-sandbox` (next to
    /// `berth` or on the PATH); `berth sandbox --help` lists its flags.
    #[command(disable_help_flag = true)]
    Sandbox {
        /// Flags of `berth-sandbox`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

#[derive(Args)]
struct AcquireArgs {
    /// The host's account (r…), from `berth hosts`.
    #[arg(required_unless_present = "resume")]
    host: Option<String>,
    /// Moments to buy in all: the purchase buys one, an extension the rest.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    moments: u32,
    /// The instance's HotPocket contract id (a UUID); a fresh one when absent.
    #[arg(long)]
    contract_id: Option<berth_schemas::field::ContractId>,
    /// Highest price per moment to pay, in drops.
    #[arg(long)]
    max_price: Option<u64>,
    /// Buy even from a host silent for more than three of its moments (its agent is likely
    /// down: the price would wait for a refund until it comes back).
    #[arg(long)]
    allow_silent: bool,
    /// The instance image: minimal (static binaries, the hosts' default) or node (Node.js
    /// and glibc, for Evernode's usual Node.js bundles); a host that does not offer it
    /// refunds the purchase.
    #[arg(long)]
    image: Option<berth_schemas::message::InstanceImage>,
    /// Resume an interrupted purchase by its transaction hash (printed when it started).
    #[arg(long, value_name = "HASH", conflicts_with_all = ["host", "contract_id", "max_price", "allow_silent", "image"])]
    resume: Option<String>,
    #[command(flatten)]
    wait: WaitArgs,
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Buy N leases on N distinct hosts together, wire the nodes into one UNL and peer
    /// mesh, deploy the bundle, and return once every node follows the cluster's ledgers.
    Create(ClusterCreateArgs),
    /// Per node: host, lease expiry, last closed ledger, in sync, peers; and the cluster's
    /// last agreed ledger.
    Status {
        /// The cluster's name (see `berth cluster list`).
        name: String,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// The clusters recorded in this home.
    List,
    /// Pay for more moments of every lease of the cluster.
    Extend {
        name: String,
        /// Moments to add to each lease.
        moments: u32,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// End every lease of the cluster now; the hosts destroy the instances.
    Terminate {
        name: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Add a node on another host: it joins as an observer, catches up, then the UNL
    /// changes through consensus to include it.
    AddNode {
        name: String,
        /// The host (r…); default the cheapest live host not in the cluster.
        #[arg(long)]
        host: Option<String>,
        #[command(flatten)]
        pick: PickArgs,
    },
    /// Take a node out of the UNL (through consensus), then end its lease.
    RemoveNode {
        name: String,
        /// The node: its number in `berth cluster status`, or the end of its lease id.
        node: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Move a node to another host with the contract's state and history: the new node
    /// is added and in sync before the old one leaves and its lease ends.
    ReplaceNode {
        name: String,
        /// The node: its number in `berth cluster status`, or the end of its lease id.
        node: String,
        /// The new host (r…); default the cheapest live host not in the cluster.
        #[arg(long)]
        host: Option<String>,
        #[command(flatten)]
        pick: PickArgs,
    },
    /// Anchor the cluster's state on the XRP Ledger. `--setup` makes the cluster's account:
    /// funded from your wallet, its signer list the UNL's node keys with the quorum of the
    /// cluster's threshold, its master key disabled. Then each run writes a checkpoint (the
    /// contract id, a ledger's seq and hash, its state hash and the bundle's hash) signed by
    /// a quorum of the nodes, each of which signs only a ledger it closed.
    Anchor {
        /// The cluster's name (see `berth cluster list`).
        #[arg(long)]
        cluster: String,
        /// Make and fund the cluster's account (finishes an interrupted setup).
        #[arg(long)]
        setup: bool,
        /// With --setup: drops to fund the account with; default its reserve (base and one
        /// signer list) plus 1 XRP for checkpoint fees.
        #[arg(long, requires = "setup")]
        fund: Option<u64>,
        /// Checkpoint the latest ledger that is a multiple of K, and keep doing so as
        /// ledgers close (until Ctrl-C) unless --once.
        #[arg(long, value_name = "K", conflicts_with = "setup")]
        every: Option<u64>,
        /// Write one checkpoint and stop.
        #[arg(long)]
        once: bool,
        /// After a UNL change (add-node, remove-node, replace-node): set the account's
        /// signer list to the current members, signed by a quorum of the old list through
        /// the nodes.
        #[arg(long, conflicts_with_all = ["setup", "every", "once"])]
        update_signers: bool,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Check a cluster's checkpoints on the XRP Ledger and ask each node for the same
    /// ledgers: per node `agrees`, `lags` (behind the checkpoint, or unreachable) or
    /// `contradicts` (another ledger or state at a checkpointed seq). Needs only the ledger
    /// and the nodes' user ports. Exits 1 when a node contradicts a checkpoint or a
    /// checkpoint is not validly signed.
    Verify {
        /// A cluster of this home: its account and nodes from its record.
        #[arg(long, conflicts_with = "account")]
        cluster: Option<String>,
        /// The cluster's account (r…), for a cluster that is not yours.
        #[arg(long, required_unless_present = "cluster")]
        account: Option<String>,
        /// A node's user port (wss://host:port), with --account; repeat for each node.
        #[arg(long = "node", value_name = "URL")]
        nodes: Vec<String>,
        #[command(flatten)]
        conn: ConnArgs,
    },
}

#[derive(Args)]
struct PickArgs {
    /// Highest price per moment to pay, in drops.
    #[arg(long)]
    max_price: Option<u64>,
    /// Allow a host that already runs a node of the cluster.
    #[arg(long)]
    allow_same_host: bool,
    /// Buy even from hosts silent for more than three of their moments.
    #[arg(long)]
    allow_silent: bool,
    #[command(flatten)]
    wait: WaitArgs,
    #[command(flatten)]
    conn: ConnArgs,
}

impl PickArgs {
    fn options(&self) -> CreateOptions {
        CreateOptions {
            nodes: 1,
            hosts: Vec::new(),
            allow_same_host: self.allow_same_host,
            roundtime_ms: None,
            threshold: None,
            image: None,
            max_price_drops: self.max_price,
            allow_silent: self.allow_silent,
            wait: wait(&self.wait),
        }
    }
}

#[derive(Args)]
struct ClusterCreateArgs {
    /// Number of nodes (each on its own host unless --allow-same-host).
    #[arg(long, required_unless_present = "resume", value_parser = clap::value_parser!(u32).range(1..=16))]
    nodes: Option<u32>,
    /// The cluster's name (a-z, 0-9, '-', '_'); default `c-` and the contract id's start.
    #[arg(long)]
    name: Option<String>,
    /// Hosts to use, comma-separated accounts (r…), one per node; default: the cheapest
    /// live hosts with a free slot.
    #[arg(long, value_delimiter = ',')]
    hosts: Vec<String>,
    /// Allow two nodes on one host (they then fail together).
    #[arg(long)]
    allow_same_host: bool,
    /// A contract directory (with contract.config) or a bundle zip to deploy once the
    /// cluster runs.
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// Consensus round time in milliseconds.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    roundtime: Option<u64>,
    /// Percent of the UNL that must agree for a ledger to close (1-100; default 80).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    threshold: Option<u32>,
    /// The instance image of every node: minimal or node (Node.js and glibc).
    #[arg(long)]
    image: Option<berth_schemas::message::InstanceImage>,
    /// Highest price per moment to pay on each host, in drops.
    #[arg(long)]
    max_price: Option<u64>,
    /// Buy even from hosts silent for more than three of their moments.
    #[arg(long)]
    allow_silent: bool,
    /// Finish an interrupted `cluster create` by the cluster's name: purchases already made
    /// are finished, never paid again.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["nodes", "name", "hosts", "roundtime", "threshold", "image"])]
    resume: Option<String>,
    #[command(flatten)]
    wait: WaitArgs,
    #[command(flatten)]
    conn: ConnArgs,
}

#[derive(Args)]
struct WaitArgs {
    /// Seconds to wait for the host's answer.
    #[arg(long = "wait", value_name = "SECS", default_value_t = 180)]
    wait_secs: u64,
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
    /// Also list hosts silent for more than three of their moments (they heartbeat once per
    /// moment; a silent host's agent is likely down and would not answer a purchase).
    #[arg(long)]
    include_silent: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Sandbox { args } = &cli.command {
        // The sandbox is a binary of its own, so that a tenant's `berth` builds none of the
        // host agent, the ledger server, the Docker client or SQLite.
        let mut args = args.clone();
        if cli.json {
            args.insert(0, "--json".into());
        }
        return external::run("sandbox", &args);
    }
    // Every command logs to stderr, quiet unless RUST_LOG asks (e.g.
    // RUST_LOG=berth_tenant=debug,berth_mb_xrpl=debug).
    {
        berth_log::init("warn", berth_log::Format::from_env());
    }
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
        command @ (Command::Acquire(_)
        | Command::Extend { .. }
        | Command::Terminate { .. }
        | Command::Leases { .. }) => {
            run_lease_command(command, &home(cli.home.as_deref())?, &net, json).await
        }
        Command::Sandbox { .. } => unreachable!("`berth sandbox` runs berth-sandbox in main"),
        Command::Cluster(cmd) => run_cluster(cmd, &home(cli.home.as_deref())?, &net, json).await,
        Command::Deploy {
            instance,
            bundle,
            contract_id,
            conn,
        } => {
            let home = home(cli.home.as_deref())?;
            let keys = Keys::load(&home)?;
            let zip = instance::load_bundle(&bundle)?;
            eprintln!("bundle {}: {} bytes", bundle.display(), zip.len());
            let (node, record) = open_instance(&instance, &keys, &conn, &home, &net).await?;
            let contract_id = contract_id.or(record.map(|r| r.contract_id));
            let announced = node.contract_id().to_owned();
            if let Some(want) = contract_id.filter(|want| *want != announced) {
                node.close().await;
                bail!("instance {instance} runs contract {announced}, not {want}; check the instance address");
            }
            // The client sends a bundle as one message: the bar fills when the node has it.
            let progress = Progress::bytes(
                zip.len() as u64,
                &format!(
                    "uploading to {} (contract {announced}) as {}",
                    node.addr(),
                    keys.user_pubkey_hex()
                ),
            );
            let reply = node.upload(&zip).await;
            progress.set_position(zip.len() as u64);
            progress.finish();
            let reply = match reply {
                Ok(reply) => reply,
                // A node takes large messages from its owner only: it closes a connection that
                // sends another user's bundle (the close may cut the upload short).
                Err(e) if closed_during_upload(&e) => {
                    return Err(anyhow::Error::from(e).context(
                        "the node closed the connection during the upload: it takes a bundle this large from the instance's owner only; use the owner's keys (`berth keys show`)",
                    ))
                }
                Err(e) => return Err(e.into()),
            };
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
            let home = home(cli.home.as_deref())?;
            let keys = Keys::load(&home)?;
            let data = instance::input_bytes(&data)?;
            let (node, _) = open_instance(&instance, &keys, &conn, &home, &net).await?;
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
            let home = home(cli.home.as_deref())?;
            let keys = Keys::load(&home)?;
            let data = instance::input_bytes(&data)?;
            let (node, _) = open_instance(&instance, &keys, &conn, &home, &net).await?;
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
        Command::Audit {
            target,
            from,
            to,
            bundle,
            conn,
        } => {
            let home = home(cli.home.as_deref())?;
            audit(&target, from, to, bundle, &conn, &home, &net, json).await
        }
        Command::Status { instance, conn } => {
            let home = home(cli.home.as_deref())?;
            let keys = Keys::load(&home)?;
            let (node, _) = open_instance(&instance, &keys, &conn, &home, &net).await?;
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

/// `berth audit`: the history downloaded here, the replay run by `hotpocket replay`, whose
/// report (text or `--json`) is this command's output.
#[allow(clippy::too_many_arguments)]
async fn audit(
    target: &str,
    from: u64,
    to: Option<u64>,
    bundle: Option<PathBuf>,
    conn: &ConnArgs,
    home: &Path,
    net: &Network,
    json: bool,
) -> anyhow::Result<()> {
    let hotpocket = external::find("hotpocket").context(
        "`berth audit` replays with the `hotpocket` runtime, found neither beside berth nor on \
         the PATH; install it with `cargo install --path hotpocket` from a Berth checkout",
    )?;
    let node = match Keys::load(home) {
        Ok(keys) => open_instance(target, &keys, conn, home, net).await?.0,
        Err(_) if target.contains(':') => {
            let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
            Instance::connect(target, &key, Duration::from_secs(conn.timeout))
                .await
                .with_context(|| format!("is the instance running? (tried {target})"))?
        }
        Err(e) => return Err(e.into()),
    };
    let started = std::time::Instant::now();
    let mut shown = std::time::Instant::now();
    let history = node
        .history(to, |done, total| {
            if shown.elapsed() >= Duration::from_secs(1) || done == total {
                shown = std::time::Instant::now();
                let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-3);
                eprintln!("downloaded {done}/{total} ledgers ({rate:.0} ledgers/s)");
            }
        })
        .await;
    let addr = node.addr().to_owned();
    node.close().await;
    let history = history?;
    let file = std::env::temp_dir().join(format!(
        "berth-audit-{}-{}.json",
        std::process::id(),
        history.contract_id
    ));
    std::fs::write(
        &file,
        serde_json::to_vec(&history).context("encoding the history")?,
    )
    .with_context(|| format!("writing {}", file.display()))?;
    let mut command = std::process::Command::new(&hotpocket);
    command
        .arg("replay")
        .arg("--history")
        .arg(&file)
        .arg("--from")
        .arg(from.to_string());
    if let Some(bundle) = &bundle {
        command.arg("--bundle").arg(bundle);
    }
    if json {
        command.arg("--json");
    }
    let status = command.status();
    let _ = std::fs::remove_file(&file);
    let status = status.with_context(|| format!("running {}", hotpocket.display()))?;
    if !status.success() {
        bail!("audit of {addr}: the replay refused the history or found a difference (above)");
    }
    Ok(())
}

/// The node closed the connection (or the send failed) during an upload: what a node does
/// to a bundle over its limit for users other than the owner.
fn closed_during_upload(e: &InstanceError) -> bool {
    matches!(e, InstanceError::Request { source, .. } if matches!(
        **source,
        ClientError::Send(_) | ClientError::Closed | ClientError::ClosedByNode(_)
    ))
}

async fn connect(url: &str, keys: &Keys, conn: &ConnArgs) -> anyhow::Result<Instance> {
    Instance::connect(url, &keys.user, Duration::from_secs(conn.timeout))
        .await
        .with_context(|| {
            format!("is the instance running and its address right? check it with the host (tried {url})")
        })
}

/// The instance an argument names: an address (`host:port`, `wss://…`) as it is, else a lease
/// of the tenant's book (or, for a full lease id, of the ledger) that has not ended.
async fn open_instance(
    arg: &str,
    keys: &Keys,
    conn: &ConnArgs,
    home: &Path,
    net: &Network,
) -> anyhow::Result<(Instance, Option<LeaseRecord>)> {
    if arg.contains(':') {
        return Ok((connect(arg, keys, conn).await?, None));
    }
    let book = Book::new(home);
    if book.cluster_path_if_exists(arg).is_some() {
        // A cluster: any of its live nodes.
        let tenant = Tenant::new(net.client().await?, keys, book.clone())?;
        let clusters = Clusters {
            tenant: &tenant,
            book: book.clone(),
            user: &keys.user,
            node_timeout: Duration::from_secs(conn.timeout),
        };
        let found = match clusters.load(arg) {
            Ok(record) => clusters.any_node(&record).await.map(|(i, node)| {
                let lease = record.nodes[i].lease.clone();
                (node, lease)
            }),
            Err(e) => Err(e),
        };
        tenant_shutdown(tenant).await;
        let (node, lease) = found?;
        eprintln!(
            "cluster {arg}: using node {} (lease …{})",
            node.addr(),
            berth_tenant::book::short_lease(&lease)
        );
        let record = book.find(&lease).ok();
        return Ok((node, record));
    }
    let record = match book.find(arg) {
        Ok(record) => record,
        Err(BookError::NoMatch { .. }) if arg.trim().len() == 64 && net.ledger.is_some() => {
            let tenant = Tenant::new(net.client().await?, keys, book)?;
            let found = tenant.find(arg).await;
            tenant_shutdown(tenant).await;
            found?
        }
        Err(BookError::NoMatch { dir, .. }) => bail!(
            "`{arg}` is neither a lease in {} (list them with `berth leases`) nor an instance address (host:port or wss://host:port)",
            dir.display()
        ),
        Err(e) => return Err(e.into()),
    };
    let record = lease::live(record)?;
    let url = record.instance_url();
    let connected = Instance::connect_expecting(
        &url,
        &keys.user,
        Duration::from_secs(conn.timeout),
        &record.node_key,
        &record.contract_id,
    )
    .await;
    let instance = match connected {
        Ok(instance) => instance,
        Err(e @ InstanceError::Unreachable { .. }) => {
            return Err(anyhow::Error::from(e).context(format!(
                "the instance of lease {} at {url} is unreachable: its host may be down or the lease ended early; check `berth leases` and `berth hosts`",
                record.lease
            )))
        }
        Err(e) => return Err(anyhow::Error::from(e).context(format!("lease {}", record.lease))),
    };
    Ok((instance, Some(record)))
}

async fn tenant_shutdown(tenant: Tenant) {
    tenant.client().shutdown().await;
}

fn wait(args: &WaitArgs) -> Duration {
    Duration::from_secs(args.wait_secs)
}

fn when(unix: u64) -> String {
    let now = lease::now_unix();
    if unix > now {
        format!("{unix} (in {})", span(unix - now))
    } else {
        format!("{unix} ({} ago)", span(now - unix))
    }
}

fn span(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} d", s / 86_400),
    }
}

async fn run_lease_command(
    command: Command,
    home: &Path,
    net: &Network,
    json: bool,
) -> anyhow::Result<()> {
    let keys = Keys::load(home)?;
    let tenant = Tenant::new(net.client().await?, &keys, Book::new(home))?;
    let result = lease_command(&tenant, command, json).await;
    tenant_shutdown(tenant).await;
    result
}

async fn lease_command(tenant: &Tenant, command: Command, json: bool) -> anyhow::Result<()> {
    let bar = Progress::stages();
    let mut progress = |line: &str| bar.line(line);
    match command {
        Command::Acquire(args) => {
            let acquired = match &args.resume {
                Some(hash) => tenant.resume(hash, wait(&args.wait), &mut progress).await,
                None => {
                    let host = args.host.as_deref().context("name the host (r…)")?;
                    let opts = AcquireOptions {
                        contract_id: args.contract_id,
                        max_price_drops: args.max_price,
                        moments: args.moments,
                        wait: wait(&args.wait),
                        allow_silent: args.allow_silent,
                        config: args
                            .image
                            .map(|image| berth_schemas::message::ContractConfig {
                                image: Some(image),
                                ..Default::default()
                            }),
                        avoid_offers: Vec::new(),
                    };
                    tenant.acquire(host, &opts, &mut progress).await
                }
            };
            bar.finish();
            let acquired = acquired?;
            if json {
                return print_json(&acquired);
            }
            let r = &acquired.record;
            println!("lease        {}", r.lease);
            println!("host         {}", r.host);
            println!("instance     {} ({})", r.instance_url(), r.name);
            println!("node key     {}", r.node_key);
            println!("contract     {}", r.contract_id);
            println!("expires      {}", when(r.expires_at));
            println!("purchase     {}", acquired.purchase);
            eprintln!(
                "next: `berth deploy {} <contract dir or zip>`",
                berth_tenant::book::short_lease(&r.lease)
            );
            Ok(())
        }
        Command::Extend {
            lease,
            moments,
            wait: w,
        } => {
            let extended = tenant
                .extend(&lease, moments, wait(&w), &mut progress)
                .await;
            bar.finish();
            let extended = extended?;
            if json {
                return print_json(&extended);
            }
            println!(
                "lease {} extended by {} moment(s); it now ends at {} ({} returned)",
                extended.lease,
                extended.moments,
                when(extended.expires_at),
                Xrp(extended.returned_drops)
            );
            Ok(())
        }
        Command::Terminate { lease, wait: w } => {
            let record = tenant.find(&lease).await?;
            let request = tenant.terminate(&lease, wait(&w), &mut progress).await;
            bar.finish();
            let request = request?;
            if json {
                return print_json(&serde_json::json!({
                    "lease": record.lease, "terminated": true, "request": request,
                }));
            }
            println!("lease {} terminated (request {request})", record.lease);
            Ok(())
        }
        Command::Leases { all } => {
            let leases = tenant.leases(all).await?;
            if json {
                return print_json(&leases);
            }
            if leases.is_empty() {
                println!(
                    "no leases held by {}; buy one with `berth acquire <host>` (see `berth hosts`)",
                    tenant.address()
                );
                return Ok(());
            }
            println!(
                "{:<64} {:<11} {:<35} {:<26} EXPIRES",
                "LEASE", "STATE", "HOST", "INSTANCE"
            );
            for l in &leases {
                println!(
                    "{:<64} {:<11} {:<35} {:<26} {}",
                    l.lease,
                    l.state,
                    l.host,
                    l.instance.as_deref().unwrap_or("-"),
                    l.expires_at.map(when).unwrap_or_else(|| "-".into())
                );
            }
            Ok(())
        }
        _ => bail!("not a lease command"),
    }
}

async fn run_cluster(
    cmd: ClusterCommand,
    home: &Path,
    net: &Network,
    json: bool,
) -> anyhow::Result<()> {
    if let ClusterCommand::Verify {
        cluster,
        account,
        nodes,
        conn,
    } = cmd
    {
        return run_verify(home, net, json, cluster, account, nodes, conn).await;
    }
    let keys = Keys::load(home)?;
    let tenant = Tenant::new(net.client().await?, &keys, Book::new(home))?;
    let result = cluster_command(&tenant, &keys, home, cmd, net, json).await;
    tenant_shutdown(tenant).await;
    result
}

async fn cluster_command(
    tenant: &Tenant,
    keys: &Keys,
    home: &Path,
    cmd: ClusterCommand,
    net: &Network,
    json: bool,
) -> anyhow::Result<()> {
    let bar = Progress::stages();
    let mut progress = |line: &str| bar.line(line);
    let clusters = |timeout: u64| Clusters {
        tenant,
        book: Book::new(home),
        user: &keys.user,
        node_timeout: Duration::from_secs(timeout),
    };
    match cmd {
        ClusterCommand::Create(args) => {
            let bundle = match &args.bundle {
                Some(path) => Some(instance::load_bundle(path)?),
                None => None,
            };
            let registry = net.registry()?;
            let c = clusters(args.conn.timeout);
            let opts = CreateOptions {
                nodes: args.nodes.map_or(0, |n| n as usize),
                hosts: args.hosts.clone(),
                allow_same_host: args.allow_same_host,
                roundtime_ms: args.roundtime,
                threshold: args.threshold,
                image: args.image,
                max_price_drops: args.max_price,
                allow_silent: args.allow_silent,
                wait: wait(&args.wait),
            };
            let created = match &args.resume {
                Some(name) => {
                    let record = c.load(name)?;
                    let opts = CreateOptions {
                        nodes: record.size,
                        ..opts
                    };
                    c.resume(name, registry, &opts, bundle.as_deref(), &mut progress)
                        .await
                }
                None => {
                    c.create(
                        args.name.clone(),
                        registry,
                        &opts,
                        bundle.as_deref(),
                        &mut progress,
                    )
                    .await
                }
            };
            bar.finish();
            let created = created?;
            if json {
                return print_json(&created);
            }
            print_cluster(&created.cluster);
            eprintln!(
                "cluster up in {:.1} s (leases {:.1} s, wired {:.1} s, first agreed ledger {:.1} s); talk to it with `berth input {} <data>`",
                created.timings.total_secs,
                created.timings.purchases_secs,
                created.timings.wired_secs,
                created.timings.first_agreed_ledger_secs,
                created.cluster.name
            );
            Ok(())
        }
        ClusterCommand::Status { name, conn } => {
            let c = clusters(conn.timeout);
            let record = c.load(&name)?;
            let view = c.status(&record).await?;
            if json {
                return print_json(&view);
            }
            print_cluster(&view);
            Ok(())
        }
        ClusterCommand::List => {
            let all = clusters(20).list()?;
            if json {
                return print_json(&all);
            }
            if all.is_empty() {
                println!(
                    "no clusters in {}; make one with `berth cluster create --nodes 3`",
                    home.display()
                );
                return Ok(());
            }
            println!("{:<24} {:<38} {:>5}", "NAME", "CONTRACT", "NODES");
            for r in &all {
                let live = r
                    .nodes
                    .iter()
                    .filter(|n| n.state != berth_tenant::cluster::NodeState::Gone)
                    .count();
                println!("{:<24} {:<38} {:>5}", r.name, r.contract_id, live);
            }
            Ok(())
        }
        ClusterCommand::Extend {
            name,
            moments,
            wait: w,
        } => {
            let extended = clusters(20)
                .extend(&name, moments, wait(&w), &mut progress)
                .await;
            bar.finish();
            let extended = extended?;
            if json {
                return print_json(&extended);
            }
            for e in &extended {
                println!(
                    "lease {} extended by {} moment(s); it now ends at {}",
                    e.lease,
                    e.moments,
                    when(e.expires_at)
                );
            }
            Ok(())
        }
        ClusterCommand::Terminate { name, wait: w } => {
            let ended = clusters(20).terminate(&name, wait(&w), &mut progress).await;
            bar.finish();
            let ended = ended?;
            if json {
                return print_json(
                    &serde_json::json!({ "cluster": name, "terminated": ended.len() }),
                );
            }
            println!("cluster {name}: {} lease(s) terminated", ended.len());
            Ok(())
        }
        ClusterCommand::AddNode { name, host, pick } => {
            let c = clusters(pick.conn.timeout);
            let added = c
                .add_node(&name, host, net.registry()?, &pick.options(), &mut progress)
                .await;
            bar.finish();
            let added = added?;
            let view = c.status(&c.load(&name)?).await?;
            if json {
                return print_json(&serde_json::json!({ "added": added + 1, "cluster": view }));
            }
            println!("node {} added to cluster {name}", added + 1);
            print_cluster(&view);
            Ok(())
        }
        ClusterCommand::RemoveNode {
            name,
            node,
            wait: w,
        } => {
            let c = clusters(20);
            let request = c.remove_node(&name, &node, wait(&w), &mut progress).await;
            bar.finish();
            let request = request?;
            if json {
                return print_json(
                    &serde_json::json!({ "cluster": name, "removed": node, "request": request }),
                );
            }
            println!("node {node} removed from cluster {name}; its lease is terminated");
            Ok(())
        }
        ClusterCommand::Verify { .. } => unreachable!("verify runs before the keys load"),
        ClusterCommand::Anchor {
            cluster,
            setup,
            fund,
            every,
            once,
            update_signers,
            conn,
        } => {
            let c = clusters(conn.timeout);
            if update_signers {
                let report = c.update_signers(&cluster, &mut progress).await;
                bar.finish();
                let report = report?;
                if json {
                    return print_json(&report);
                }
                match report {
                    Some(r) => println!(
                        "cluster {cluster}: signer list of {} set to {} node(s), quorum {} (tx {}, fee {} drops)",
                        r.account,
                        r.signers.len(),
                        r.quorum,
                        r.tx,
                        r.fee_drops
                    ),
                    None => eprintln!("cluster {cluster}: the signer list is the current UNL already"),
                }
                return Ok(());
            }
            if setup {
                let report = c.anchor_setup(&cluster, fund, &mut progress).await;
                bar.finish();
                let report = report?;
                if json {
                    return print_json(&report);
                }
                println!("account      {}", report.account);
                println!("quorum       {} of {}", report.quorum, report.signers.len());
                for (key, account) in &report.signers {
                    println!("signer       {account}  {key}");
                }
                println!(
                    "cost         funded {} drops, reserve {} drops, fees {} drops",
                    report.funded_drops, report.reserve_drops, report.fees_drops
                );
                return Ok(());
            }
            let print = |r: &CheckpointReport| {
                if json {
                    // One JSON line per checkpoint when anchoring continuously.
                    println!("{}", serde_json::to_string(r).unwrap_or_default());
                } else {
                    println!(
                        "ledger {:<8} {}  tx {}  xrpl ledger {}  fee {} drops  {} signers  {} ms from close to validated",
                        r.seq,
                        short_hash(&r.ledger),
                        r.tx,
                        r.xrpl_ledger,
                        r.fee_drops,
                        r.signers,
                        r.close_to_validated_ms
                    );
                }
            };
            match (every, once) {
                (Some(k), false) => {
                    let stop = async {
                        let _ = tokio::signal::ctrl_c().await;
                    };
                    let done =
                        anchor::anchor_every(&c, &cluster, k, stop, print, &mut progress).await;
                    bar.finish();
                    done?;
                }
                _ => {
                    let r = c.checkpoint(&cluster, every, &mut progress).await;
                    bar.finish();
                    match r? {
                        Some(r) => print(&r),
                        None if json => println!("null"),
                        None => eprintln!("cluster {cluster}: that ledger is anchored already"),
                    }
                }
            }
            Ok(())
        }
        ClusterCommand::ReplaceNode {
            name,
            node,
            host,
            pick,
        } => {
            let c = clusters(pick.conn.timeout);
            let started = std::time::Instant::now();
            let added = c
                .replace_node(
                    &name,
                    &node,
                    host,
                    net.registry()?,
                    &pick.options(),
                    &mut progress,
                )
                .await;
            bar.finish();
            let added = added?;
            let secs = started.elapsed().as_secs_f64();
            let view = c.status(&c.load(&name)?).await?;
            if json {
                return print_json(&serde_json::json!({
                    "replaced": node, "by": added, "secs": secs, "cluster": view,
                }));
            }
            println!("node {node} of cluster {name} replaced by node {added} in {secs:.1} s");
            print_cluster(&view);
            Ok(())
        }
    }
}

async fn run_verify(
    home: &Path,
    net: &Network,
    json: bool,
    cluster: Option<String>,
    account: Option<String>,
    nodes: Vec<String>,
    conn: ConnArgs,
) -> anyhow::Result<()> {
    let mut targets: Vec<NodeTarget> = nodes
        .iter()
        .enumerate()
        .map(|(i, url)| NodeTarget {
            label: (i + 1).to_string(),
            url: url.clone(),
            key: None,
        })
        .collect();
    let account = match (&cluster, account) {
        (Some(name), _) => {
            let book = Book::new(home);
            let record = book
                .cluster(name)?
                .with_context(|| format!("no cluster named {name} in {}", home.display()))?;
            targets.extend(anchor::targets_of(&book, &record));
            record
                .anchor
                .filter(|a| a.setup_seed.is_none())
                .map(|a| a.account)
                .with_context(|| format!("cluster {name} has no account on the ledger yet: run `berth cluster anchor --setup --cluster {name}`"))?
        }
        (None, Some(account)) => account,
        (None, None) => bail!("name the cluster (--cluster) or its account (--account)"),
    };
    let client = net.client().await?;
    let bar = Progress::stages();
    let mut progress = |line: &str| bar.line(line);
    let report = anchor::verify(
        &client,
        &account,
        &targets,
        Duration::from_secs(conn.timeout),
        &mut progress,
    )
    .await;
    bar.finish();
    client.shutdown().await;
    let report = report.with_context(|| format!("verifying the checkpoints of {account}"))?;
    if json {
        print_json(&report)?;
    } else {
        println!("account      {}", report.account);
        println!(
            "signer list  {} account(s), quorum {}",
            report.signer_list.len(),
            report.quorum
        );
        for c in &report.checkpoints {
            println!(
                "checkpoint   ledger {:<8} {}  tx {}  {}",
                c.seq,
                short_hash(&c.ledger),
                short_hash(&c.tx),
                match (&c.problem, c.valid) {
                    (_, true) => format!("{} signature(s), valid", c.signers.len()),
                    (Some(p), false) => format!("NOT VALID: {p}"),
                    (None, false) => "NOT VALID".to_owned(),
                }
            );
        }
        for n in &report.nodes {
            let verdict = match n.verdict {
                Verdict::Agrees => "agrees",
                Verdict::Lags => "lags",
                Verdict::Contradicts => "CONTRADICTS",
            };
            println!(
                "node {:<4} {:<12} {}  ({})",
                n.node, verdict, n.url, n.detail
            );
        }
    }
    if report.contradicted() {
        bail!("a node contradicts a checkpoint, or a checkpoint is not validly signed");
    }
    Ok(())
}

fn short_hash(hash: &str) -> &str {
    hash.get(..16).unwrap_or(hash)
}

fn print_cluster(view: &ClusterView) {
    println!("cluster      {}", view.name);
    println!("contract     {}", view.contract_id);
    match (view.lcl_seq_no, &view.lcl_hash) {
        (Some(seq), Some(hash)) => println!("agreed lcl   {seq} {hash}"),
        _ => println!("agreed lcl   -"),
    }
    println!("in sync      {} of {}", view.in_sync, view.members);
    println!(
        "{:<4} {:<9} {:<35} {:<10} {:<26} {:>8} {:<7} {:>5}  EXPIRES",
        "NODE", "STATE", "HOST", "LEASE", "INSTANCE", "LCL", "IN SYNC", "PEERS"
    );
    for n in &view.nodes {
        println!(
            "{:<4} {:<9} {:<35} {:<10} {:<26} {:>8} {:<7} {:>5}  {}",
            n.node,
            format!("{:?}", n.state).to_lowercase(),
            n.host,
            format!("…{}", berth_tenant::book::short_lease(&n.lease)),
            n.instance.as_deref().unwrap_or("-"),
            n.lcl_seq_no
                .map_or_else(|| "-".to_owned(), |s| s.to_string()),
            if n.in_sync { "yes" } else { "no" },
            n.peers.len(),
            n.expires_at.map(when).unwrap_or_else(|| "-".into())
        );
        if let Some(problem) = &n.problem {
            println!("     {problem}");
        }
    }
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
        include_silent: args.include_silent,
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
                "{registered} registered host(s), none with a live offer matching the filters; relax --max-price/--min-free/--min-memory/--seen-within, add --include-silent, or try again later"
            )
        };
        if json {
            // A list that happens to be empty is still a list: scripts get `[]`, people the
            // reason.
            eprintln!("no host found: {why}");
            return print_json(&found);
        }
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
