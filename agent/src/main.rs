//! `berth-agent`: the host daemon and the host's CLI. Thin over the `berth_agent` library.
//! Exit codes: 0 ok, 1 failure, 2 usage.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use berth_agent::setup::{self, load_config};
use berth_agent::status;
use berth_agent::store::Store;
use berth_schemas::config::HostConfig;
use clap::{Args, Parser, Subcommand};

/// The Berth host agent: sells instance leases on the XRP Ledger and runs them in Docker.
#[derive(Debug, Parser)]
#[command(name = "berth-agent", version)]
struct Cli {
    /// The agent's config file.
    #[arg(
        long,
        global = true,
        env = "BERTH_AGENT_CONFIG",
        default_value = "/etc/berth/berth-agent.toml"
    )]
    config: PathBuf,
    /// Print data as JSON on stdout (one document; `run` prints none).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a new config file and host key (mode 0600); refuses to overwrite either.
    Init(InitArgs),
    /// Run the agent: register, offer leases, serve purchases until stopped.
    Run,
    /// Show the host's state (works while `run` runs).
    Status,
    /// List leases.
    Leases {
        /// Include ended leases.
        #[arg(long)]
        all: bool,
    },
    /// Stop offering new leases; current leases keep being served.
    Drain {
        /// Offer leases again.
        #[arg(long)]
        undo: bool,
    },
}

#[derive(Debug, Args)]
struct InitArgs {
    /// rippled-compatible WebSocket server, primary first (repeat for fallbacks).
    #[arg(long = "server", required = true)]
    servers: Vec<String>,
    /// The registry account hosts register to.
    #[arg(long)]
    registry: String,
    /// DNS name or IP address tenants reach instances at.
    #[arg(long)]
    domain: String,
    /// ISO 3166-1 alpha-2 country code.
    #[arg(long)]
    country: String,
    /// Number of instance slots.
    #[arg(long, default_value_t = 4)]
    slots: u32,
    /// Price of one moment of one slot, in drops.
    #[arg(long, default_value_t = 1_000_000)]
    price_drops: u64,
    /// Length of a moment in seconds.
    #[arg(long, default_value_t = 3600)]
    moment_secs: u32,
    /// Host CPU given to instances, millicores.
    #[arg(long, default_value_t = 2000)]
    cpu_millicores: u32,
    /// Host memory given to instances, MB.
    #[arg(long, default_value_t = 2048)]
    memory_mb: u32,
    /// Host disk given to instances, MB.
    #[arg(long, default_value_t = 10240)]
    disk_mb: u32,
    /// Directory of the database (and the key file unless --key-file).
    #[arg(long, default_value = "/var/lib/berth")]
    data_dir: PathBuf,
    /// Where to write the host key. Default `<data-dir>/host.key`.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Import an existing account: a file holding its family seed.
    #[arg(long)]
    seed_file: Option<PathBuf>,
}

fn toml_string(text: &str) -> String {
    serde_json::Value::String(text.to_owned()).to_string()
}

fn init_config(args: &InitArgs) -> Result<HostConfig, berth_schemas::config::ConfigError> {
    let servers: Vec<String> = args.servers.iter().map(|s| toml_string(s)).collect();
    let key_file = args
        .key_file
        .as_ref()
        .map(|p| format!("key_file = {}\n", toml_string(&p.to_string_lossy())))
        .unwrap_or_default();
    HostConfig::from_toml(&format!(
        "[ledger]\nservers = [{servers}]\nregistry = {registry}\n\n\
         [host]\ndomain = {domain}\ncountry = {country}\ndata_dir = {data_dir}\n{key_file}\n\
         [lease]\nslots = {slots}\nprice_drops = \"{price}\"\nmoment_secs = {moment}\n\n\
         [resources]\ncpu_millicores = {cpu}\nmemory_mb = {memory}\ndisk_mb = {disk}\n",
        servers = servers.join(", "),
        registry = toml_string(&args.registry),
        domain = toml_string(&args.domain),
        country = toml_string(&args.country),
        data_dir = toml_string(&args.data_dir.to_string_lossy()),
        slots = args.slots,
        price = args.price_drops,
        moment = args.moment_secs,
        cpu = args.cpu_millicores,
        memory = args.memory_mb,
        disk = args.disk_mb,
    ))
}

fn database(config: &HostConfig) -> PathBuf {
    berth_agent::database_path(config)
}

fn init(config_path: &Path, args: &InitArgs, json: bool) -> Result<()> {
    let config = init_config(args).context("invalid init options")?;
    let seed = args
        .seed_file
        .as_ref()
        .map(|path| {
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read seed file {}", path.display()))
        })
        .transpose()?;
    let report = setup::init(config_path, &config, seed.as_deref())
        .context("cannot initialize the agent")?;
    if json {
        return print_json(&serde_json::json!({
            "config": report.config_path.display().to_string(),
            "key_file": report.key_path.display().to_string(),
            "address": report.address,
            "message_key": report.message_key,
        }));
    }
    println!("config       {}", report.config_path.display());
    println!("host key     {} (mode 0600)", report.key_path.display());
    println!("host address {}", report.address);
    println!("message key  {}", report.message_key);
    println!("Fund the host address, then start `berth-agent run`.");
    Ok(())
}

fn open_read_only(config_path: &Path) -> Result<(HostConfig, Store)> {
    let config = load_config(config_path).context("cannot load the config")?;
    let store = Store::open_read_only(&database(&config)).context("cannot open the database")?;
    Ok((config, store))
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(value).context("cannot write JSON")?
    );
    Ok(())
}

fn run_command(cli: Cli) -> Result<()> {
    let json = cli.json;
    match &cli.command {
        Command::Init(args) => init(&cli.config, args, json),
        Command::Run => {
            let config = load_config(&cli.config).context("cannot load the config")?;
            let keys = setup::load_keys(&config.key_file()).context("cannot load the host key")?;
            run(config, keys)
        }
        Command::Status => {
            let (_, store) = open_read_only(&cli.config)?;
            let report = status::report(&store.read()).context("cannot read the status")?;
            if json {
                print_json(&report)
            } else {
                print!("{}", status::render(&report));
                Ok(())
            }
        }
        Command::Leases { all } => {
            let (_, store) = open_read_only(&cli.config)?;
            let leases = status::leases(&store.read(), *all).context("cannot read leases")?;
            if json {
                print_json(&leases)
            } else {
                print!("{}", status::render_leases(&leases));
                Ok(())
            }
        }
        Command::Drain { undo } => {
            let config = load_config(&cli.config).context("cannot load the config")?;
            let mut store = Store::open(&database(&config)).context("cannot open the database")?;
            if *undo {
                let n = store
                    .transaction(|tx| {
                        berth_agent::machine::undrain(tx, config.lease.price_drops.get())
                    })
                    .context("cannot undo drain")?;
                if json {
                    return print_json(&serde_json::json!({"draining": false, "slots_offered": n}));
                }
                println!("draining off: {n} slots offered again");
            } else {
                let n = store
                    .transaction(berth_agent::machine::drain)
                    .context("cannot drain")?;
                if json {
                    return print_json(
                        &serde_json::json!({"draining": true, "offers_cancelled": n}),
                    );
                }
                println!("draining: {n} offers being cancelled; current leases are served");
            }
            Ok(())
        }
    }
}

/// Tracing to stderr: `RUST_LOG` (default `info`), JSON when `BERTH_LOG_JSON=1`.
fn init_tracing() {
    berth_log::init("info", berth_log::Format::from_env());
}

fn run(config: HostConfig, keys: berth_agent::setup::HostKeys) -> Result<()> {
    init_tracing();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        // Signals first: a SIGTERM during start-up stops the agent once start-up is done.
        let shutdown = tokio_util::sync::CancellationToken::new();
        let signals = shutdown.clone();
        let (installed, ready) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            wait_for_signal(installed).await;
            signals.cancel();
        });
        let _ = ready.await;
        let mut provisioner_config = berth_agent::run::provisioner_config(&config);
        if let Ok(namespace) = std::env::var("BERTH_DOCKER_NAMESPACE") {
            provisioner_config.namespace = namespace;
        }
        let provisioner = berth_provisioner::DockerProvisioner::connect(provisioner_config)
            .await
            .context("cannot connect to the Docker engine")?;
        // Before anything is sold: a host set to block private egress does not start open.
        provisioner
            .secure_network()
            .await
            .context("cannot set up the instances' network")?;
        berth_agent::run::run(
            config,
            keys,
            std::sync::Arc::new(provisioner),
            berth_agent::run::RunSettings::default(),
            shutdown,
        )
        .await
        .context("agent stopped on an error")
    })
}

async fn wait_for_signal(installed: tokio::sync::oneshot::Sender<()>) {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let _ = installed.send(());
    match term {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run_command(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("berth-agent: {error:#}");
            ExitCode::FAILURE
        }
    }
}
