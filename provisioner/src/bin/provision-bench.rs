//! Benchmark: time from create to the user port answering, for N probe instances one after
//! another and N at once. Usage: `provision-bench [N] [--hotpocket]` (default 20 probe
//! instances). `--hotpocket` runs the real instance image `berth-hotpocket:latest` (build it
//! first with `hotpocket/image/build.sh`). Needs the Docker engine.
use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use berth_provisioner::ports::allocate_many;
use berth_provisioner::spec::HOTPOCKET_IMAGE;
use berth_provisioner::{
    probe, DockerProvisioner, HostResources, InstanceIdentity, InstanceSpec, PortRange,
    Provisioner, ProvisionerConfig,
};

const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

const USAGE: &str = "usage: provision-bench [N] [--hotpocket]   (N: 1-200 instances, default 20)";

/// Exit codes: 0 ok, 1 failure, 2 usage.
#[tokio::main]
async fn main() -> ExitCode {
    let (count, hotpocket) = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(problem) => {
            eprintln!("provision-bench: {problem}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match bench(count, hotpocket).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("provision-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The instance count and `--hotpocket`, or what is wrong with the arguments.
fn parse_args(args: impl Iterator<Item = String>) -> Result<(usize, bool), String> {
    let mut count = None;
    let mut hotpocket = false;
    for arg in args {
        match arg.as_str() {
            "--hotpocket" => hotpocket = true,
            flag if flag.starts_with('-') => return Err(format!("unknown flag {flag}")),
            n if count.is_none() => {
                count = Some(
                    n.parse()
                        .map_err(|_| format!("count {n:?} is not a number"))?,
                );
            }
            extra => return Err(format!("unexpected argument {extra}")),
        }
    }
    match count.unwrap_or(20) {
        count @ 1..=200 => Ok((count, hotpocket)),
        count => Err(format!("count {count} must be 1-200")),
    }
}

async fn bench(count: usize, hotpocket: bool) -> anyhow::Result<()> {
    let slots = u32::try_from(count)?;
    let ports = u16::try_from(count)?;
    let config = ProvisionerConfig::new(
        format!("bench-{}", std::process::id()),
        HostResources {
            cpu_millis: 500 * u64::from(slots),
            memory_mib: if hotpocket { 128 } else { 64 } * u64::from(slots),
            swap_mib: 0,
            disk_mib: 64 * u64::from(slots),
            instances: slots,
        },
        PortRange::new(23000, 23000 + ports + 20),
        PortRange::new(23500, 23500 + ports + 20),
    );
    let provisioner = DockerProvisioner::connect(config)
        .await
        .context("connecting to docker")?;
    if hotpocket {
        let present = std::process::Command::new("docker")
            .args(["image", "inspect", HOTPOCKET_IMAGE])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !present {
            bail!("image {HOTPOCKET_IMAGE} is missing: build it with hotpocket/image/build.sh");
        }
    } else {
        let work_dir =
            std::env::temp_dir().join(format!("berth-probe-bench-{}", std::process::id()));
        provisioner
            .ensure_image(&probe::image(work_dir))
            .await
            .context("building the probe image")?;
    }

    let result = run(&provisioner, count, hotpocket).await;
    for summary in provisioner.list().await.unwrap_or_default() {
        if let Err(error) = provisioner.destroy(&summary.name).await {
            eprintln!("cleanup: {}", berth_log::chain(&error));
        }
    }
    result
}

async fn run(provisioner: &DockerProvisioner, count: usize, hotpocket: bool) -> anyhow::Result<()> {
    let image = if hotpocket { HOTPOCKET_IMAGE } else { "probe" };
    println!("create + start until the user port answers, {count} {image} instances");
    println!("disk quota mode: {}", provisioner.disk_quota_mode());

    let seq_specs = specs(provisioner, "seq", count, hotpocket).await?;
    let mut sequential = Vec::with_capacity(count);
    for spec in &seq_specs {
        sequential.push(provision(provisioner, spec).await?);
    }
    for spec in &seq_specs {
        provisioner.destroy(&spec.name).await?;
    }
    report("one after another", &sequential, None);

    let specs = specs(provisioner, "par", count, hotpocket).await?;
    let started = Instant::now();
    let results =
        futures_util::future::join_all(specs.iter().map(|spec| provision(provisioner, spec))).await;
    let wall = started.elapsed();
    let concurrent = results.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    report(&format!("{count} at once"), &concurrent, Some(wall));
    Ok(())
}

async fn specs(
    provisioner: &DockerProvisioner,
    prefix: &str,
    count: usize,
    hotpocket: bool,
) -> anyhow::Result<Vec<InstanceSpec>> {
    let config = provisioner.config();
    let in_use: BTreeSet<u16> = provisioner.ports_in_use().await?;
    let pairs = allocate_many(config.user_ports, config.peer_ports, &in_use, count)?;
    Ok(pairs
        .into_iter()
        .enumerate()
        .map(|(index, ports)| {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(index as u64 + 1).to_be_bytes());
            let owner = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
            let identity = InstanceIdentity {
                contract_id: format!("00000000-0000-4000-8000-{index:012}"),
                owner_pubkey: format!("ed{}", hex::encode(owner.as_bytes())),
                node_secret: format!("{:064x}", index + 1),
            };
            let spec = InstanceSpec::hotpocket(
                format!("{prefix}{index}"),
                format!("bench-lease-{prefix}{index}"),
                identity,
                ports,
            );
            if hotpocket {
                spec
            } else {
                probe::instance(spec)
            }
        })
        .collect())
}

/// How long one instance took: to be created, to be started, and to answer (from the start
/// of create).
struct Timing {
    create: Duration,
    start: Duration,
    answer: Duration,
}

/// Create, start and wait for the user port.
async fn provision(provisioner: &DockerProvisioner, spec: &InstanceSpec) -> anyhow::Result<Timing> {
    let began = Instant::now();
    provisioner.create(spec).await?;
    let created = began.elapsed();
    provisioner.start(&spec.name).await?;
    let started = began.elapsed();
    while !provisioner.user_port_answers(spec.ports.user).await {
        if began.elapsed() > ANSWER_TIMEOUT {
            bail!(
                "instance {} did not answer on port {} within {ANSWER_TIMEOUT:?}",
                spec.name,
                spec.ports.user
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(Timing {
        create: created,
        start: started - created,
        answer: began.elapsed(),
    })
}

fn report(label: &str, timings: &[Timing], wall: Option<Duration>) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let quantiles = |pick: fn(&Timing) -> Duration| {
        let mut samples: Vec<Duration> = timings.iter().map(pick).collect();
        samples.sort();
        let at = |q: f64| {
            let index = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
            ms(samples[index])
        };
        (at(0.50), at(0.95), at(1.0))
    };
    let wall = wall
        .map(|w| format!(", wall {:.0} ms", ms(w)))
        .unwrap_or_default();
    let (p50, p95, max) = quantiles(|t| t.answer);
    println!(
        "{label}: n={} create-to-answer p50 {p50:.0} ms, p95 {p95:.0} ms, max {max:.0} ms{wall}",
        timings.len()
    );
    let (create50, create95, _) = quantiles(|t| t.create);
    let (start50, start95, _) = quantiles(|t| t.start);
    println!(
        "  of which create p50 {create50:.0} ms (p95 {create95:.0}), start p50 {start50:.0} ms (p95 {start95:.0})"
    );
}
