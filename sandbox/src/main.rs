//! `berth-sandbox` (run as `berth sandbox`): flags, the ready message, and waiting for SIGINT /
//! SIGTERM. The work is in [`berth_sandbox::sandbox`]. Exit codes: 0 ok, 1 failure, 2 usage.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use berth_sandbox::demo::{self, DemoEnv};
use berth_sandbox::sandbox::{Sandbox, SandboxInfo, SandboxOptions};
use berth_schemas::config::PortRange;
use berth_tenant::progress::Progress;
use clap::{Args, Parser};
use tokio::signal::unix::{signal, SignalKind};

/// `berth sandbox`: run the whole marketplace locally (ledger, registry, host agent, funded
/// tenant) until Ctrl-C; needs the Docker engine and the instance image.
#[derive(Parser)]
#[command(name = "berth sandbox", bin_name = "berth sandbox", version)]
struct Cli {
    /// Print data as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    args: SandboxArgs,
}

/// `berth sandbox` flags. Defaults are those of [`SandboxOptions::default`].
#[derive(Args)]
struct SandboxArgs {
    /// Use (and create) this directory instead of a temporary one; it is kept at exit and
    /// must be empty or absent.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the temporary directory at exit.
    #[arg(long)]
    keep: bool,
    /// The tenant's home (keys and settings); default `<dir>/tenant`. Keys already there are
    /// used and funded; its settings.json is pointed at the sandbox.
    #[arg(long)]
    tenant_home: Option<PathBuf>,
    /// The instance image; build it with hotpocket/image/build.sh.
    #[arg(long, default_value = berth_provisioner::spec::HOTPOCKET_IMAGE)]
    image: String,
    /// Offer this Node.js and glibc image to purchases that ask for it (`berth acquire
    /// --image node`); build it with hotpocket/image/build-node.sh.
    #[arg(long)]
    node_image: Option<String>,
    /// Address the local ledger listens on (WebSocket and JSON-RPC).
    #[arg(long, default_value = "127.0.0.1:0")]
    ledger_listen: SocketAddr,
    /// Milliseconds between ledger closes.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    close_ms: u64,
    /// Host agents to run, each with its own account, slots, ports and (as root) address.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=i64::from(berth_sandbox::sandbox::MAX_HOSTS)))]
    hosts: u32,
    /// Number of lease slots each host offers.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=64))]
    slots: u32,
    /// Price of one moment of one slot, in drops (1 XRP = 1,000,000 drops).
    #[arg(long, default_value_t = 1_000_000)]
    price_drops: u64,
    /// Length of a moment (the lease time unit), in seconds.
    #[arg(long, default_value_t = 3600)]
    moment_secs: u32,
    /// Seconds an expired lease's instance is kept before it is destroyed.
    #[arg(long, default_value_t = 60)]
    grace_secs: u32,
    /// CPU of one instance, in millicores.
    #[arg(long, default_value_t = 500)]
    cpu_millicores: u32,
    /// Memory of one instance, in MB.
    #[arg(long, default_value_t = 256)]
    memory_mb: u32,
    /// Disk of one instance, in MB.
    #[arg(long, default_value_t = 1024)]
    disk_mb: u32,
    /// Host ports for the instances' user ports, first-last.
    #[arg(long, default_value = "26201-26299")]
    user_ports: PortRange,
    /// Host ports for the instances' peer ports, first-last.
    #[arg(long, default_value = "22861-22959")]
    peer_ports: PortRange,
    /// Seconds between the host agent's housekeeping passes (1 to 59).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=59))]
    housekeeping_secs: u32,
    /// XRP the tenant's account is funded with.
    #[arg(long, default_value_t = 1000)]
    tenant_xrp: u64,
    /// XRP the host's account is funded with.
    #[arg(long, default_value_t = 10_000)]
    host_xrp: u64,
    /// Docker namespace (container prefix and `berth.namespace` label); default
    /// berth-sandbox-<pid>.
    #[arg(long)]
    namespace: Option<String>,
    /// Seconds to wait for the host's lease offers.
    #[arg(long, default_value_t = 120)]
    ready_timeout_secs: u64,
    /// Run the whole tenant flow (hosts → acquire → deploy → input → output → extend →
    /// terminate) with timings, then stop; exit 0 only if every step worked.
    #[arg(long)]
    demo: bool,
    /// With --demo: run the cluster flow on this many nodes instead (create on distinct
    /// hosts, input signed by all, replace a node, terminate); runs one host more than
    /// nodes unless --hosts says otherwise.
    #[arg(long, requires = "demo", value_parser = clap::value_parser!(u32).range(1..=7))]
    cluster: Option<u32>,
    /// The contract the demo deploys: the counter example (directory or zip).
    #[arg(
        long,
        default_value = "examples/bundles/counter.zip",
        requires = "demo"
    )]
    bundle: PathBuf,
}

impl SandboxArgs {
    fn options(&self) -> anyhow::Result<SandboxOptions> {
        let drops = |xrp: u64, flag: &str| {
            xrp.checked_mul(1_000_000)
                .with_context(|| format!("{flag} {xrp} is too large"))
        };
        Ok(SandboxOptions {
            dir: self.dir.clone(),
            keep: self.keep,
            tenant_home: self.tenant_home.clone(),
            image: self.image.clone(),
            node_image: self.node_image.clone(),
            ledger_listen: self.ledger_listen,
            close_interval: Duration::from_millis(self.close_ms),
            slots: self.slots,
            price_drops: self.price_drops,
            moment_secs: self.moment_secs,
            grace_secs: self.grace_secs,
            cpu_millicores_per_slot: self.cpu_millicores,
            memory_mb_per_slot: self.memory_mb,
            disk_mb_per_slot: self.disk_mb,
            user_ports: self.user_ports,
            peer_ports: self.peer_ports,
            housekeeping_secs: self.housekeeping_secs,
            tenant_drops: drops(self.tenant_xrp, "--tenant-xrp")?,
            host_drops: drops(self.host_xrp, "--host-xrp")?,
            namespace: self.namespace.clone(),
            ready_timeout: Duration::from_secs(self.ready_timeout_secs),
            log_to_file: true,
            hosts: self.hosts,
        })
    }
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
    match runtime.block_on(run(cli.args, cli.json)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the sandbox until SIGINT or SIGTERM (or until its agent fails).
async fn run(args: SandboxArgs, json: bool) -> anyhow::Result<()> {
    if args.demo {
        return demo(args, json).await;
    }
    let opts = args.options()?;
    // Listen before starting: a signal during start-up stops the sandbox once it is up.
    let mut interrupt = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let started = Instant::now();
    let progress = Progress::stages();
    let started_sandbox = Sandbox::start(opts, &mut |line| progress.line(line)).await;
    progress.finish();
    let mut sandbox = started_sandbox?;
    if json {
        println!("{}", serde_json::to_string(&sandbox.info)?);
    } else {
        print_ready(&sandbox.info, started.elapsed());
    }
    let failed = tokio::select! {
        _ = interrupt.recv() => None,
        _ = terminate.recv() => None,
        error = sandbox.agent_stopped() => Some(error),
    };
    eprintln!("stopping the sandbox…");
    let removed = sandbox.shutdown().await?;
    let plural = if removed == 1 { "" } else { "s" };
    let stopped = format!("sandbox stopped, {removed} instance{plural} removed");
    if json {
        eprintln!("{stopped}");
    } else {
        println!("{stopped}");
    }
    match failed {
        Some(error) => Err(error.into()),
        None => Ok(()),
    }
}

fn print_ready(info: &SandboxInfo, took: Duration) {
    let xrp = |drops: u64| {
        if drops % 1_000_000 == 0 {
            format!("{} XRP", drops / 1_000_000)
        } else {
            format!("{drops} drops")
        }
    };
    println!(
        "sandbox ready in {:.1} s (dir {})",
        took.as_secs_f64(),
        info.dir.display()
    );
    println!(
        "  ledger     {}  (json-rpc {})",
        info.ledger, info.ledger_http
    );
    println!("  registry   {}", info.registry);
    for host in &info.hosts {
        println!(
            "  host       {}  {} slots at {} per {} s moment, instances on {}:{}",
            host.account,
            info.slots,
            xrp(info.price_drops),
            info.moment_secs,
            host.address,
            host.user_ports
        );
    }
    println!(
        "  tenant     {}  {}, keys and settings in {}",
        info.tenant,
        xrp(info.tenant_drops),
        info.tenant_home.display()
    );
    println!("  logs       {}", info.log.display());
    println!("next steps (in another shell):");
    // Run by path (scripts/sandbox.sh, target/…): `berth` may not be on the PATH.
    // `berth` runs this binary with its own argv[0]; it sits next to this one.
    if std::env::args_os()
        .next()
        .is_some_and(|argv0| Path::new(&argv0).components().count() > 1)
    {
        if let Some(berth) = std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.join("berth")))
            .filter(|berth| berth.is_file())
        {
            println!("  alias berth={}", berth.display());
        }
    }
    println!("  export BERTH_HOME={}", info.tenant_home.display());
    println!("  berth hosts");
    println!("  berth acquire {}", info.host);
    println!("  berth deploy <lease> examples/bundles/counter.zip");
    println!("  berth input <lease> hello");
    println!("  berth leases");
    println!("  berth extend <lease> 1");
    println!("  berth terminate <lease>");
    if info.hosts.len() > 1 {
        println!(
            "  berth cluster create --nodes {} --bundle examples/bundles/counter.zip",
            info.hosts.len()
        );
    }
    println!("Ctrl-C stops the sandbox and removes its instances.");
}

/// `berth sandbox --demo`: a sandbox, the tenant flow against it, then a clean stop.
async fn demo(args: SandboxArgs, json: bool) -> anyhow::Result<()> {
    // Check the bundle before starting anything.
    berth_tenant::instance::load_bundle(&args.bundle).with_context(|| {
        format!(
            "the demo deploys {}: build the examples with hotpocket/image/build.sh or pass --bundle",
            args.bundle.display()
        )
    })?;
    let mut opts = args.options()?;
    if let Some(nodes) = args.cluster {
        // A spare host for the replacement.
        opts.hosts = opts.hosts.max(nodes + 1);
    }
    let mut interrupt = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let started = Instant::now();
    eprintln!(
        "starting the sandbox: local ledger, {} host agent(s) with {} slots each on Docker, funded tenant…",
        opts.hosts, opts.slots
    );
    let progress = Progress::stages();
    let started_sandbox = Sandbox::start(opts, &mut |line| progress.line(line)).await;
    progress.finish();
    let mut sandbox = started_sandbox?;
    eprintln!(
        "sandbox ready in {:.1} s; host {} (logs in {})",
        started.elapsed().as_secs_f64(),
        sandbox.info.host,
        sandbox.info.log.display()
    );
    let env = DemoEnv {
        ledger: sandbox.info.ledger.clone(),
        registry: sandbox.info.registry.clone(),
        tenant_home: sandbox.info.tenant_home.clone(),
        host: sandbox.info.host.clone(),
        bundle: args.bundle.clone(),
        wait: Duration::from_secs(120),
    };
    let flow_started = Instant::now();
    let mut out = |line: &str| eprintln!("{line}");
    let flow = async {
        match args.cluster {
            Some(nodes) => demo::run_cluster(&env, nodes as usize, &mut out).await,
            None => demo::run(&env, &mut out).await,
        }
    };
    let outcome = tokio::select! {
        report = flow => Ok(report),
        _ = interrupt.recv() => Err(anyhow::anyhow!("interrupted")),
        _ = terminate.recv() => Err(anyhow::anyhow!("terminated")),
        error = sandbox.agent_stopped() => Err(anyhow::Error::from(error)),
    };
    let flow_secs = flow_started.elapsed().as_secs_f64();
    let info = serde_json::to_value(&sandbox.info)?;
    let removed = sandbox.shutdown().await?;
    eprintln!("sandbox stopped, {removed} instance(s) removed");
    let report = outcome?;
    if json {
        let mut value = serde_json::to_value(&report)?;
        value["sandbox"] = info;
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else if report.ok {
        println!(
            "demo passed: {} steps in {flow_secs:.1} s (sandbox start {:.1} s before)",
            report.steps.len(),
            flow_started.duration_since(started).as_secs_f64()
        );
    }
    if !report.ok {
        let failed = report
            .steps
            .iter()
            .find(|s| !s.ok)
            .map(|s| format!("step `{}`: {}", s.name, s.detail))
            .unwrap_or_else(|| "a step did not run".into());
        anyhow::bail!("demo failed at {failed}");
    }
    Ok(())
}
