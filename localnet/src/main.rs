//! `berth-localnet`: an XRP-Ledger-compatible ledger server for one machine.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use berth_localnet::{Config, Localnet, GENESIS_ADDRESS, GENESIS_SEED};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "berth-localnet",
    version,
    about = "An XRP-Ledger-compatible ledger server in standalone mode"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to serve the WebSocket API (at /) and JSON-RPC (POST /) on.
    #[arg(long, default_value = "127.0.0.1:6006", env = "BERTH_LOCALNET_LISTEN")]
    listen: SocketAddr,
    /// Milliseconds between ledger closes; 0 closes only on `ledger_accept`.
    #[arg(long, default_value_t = 1000)]
    close_interval: u64,
    /// Directory to persist the ledger in (SQLite); state is in memory without it.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Fund an address from the genesis account of a running localnet.
    Fund {
        /// The classic address (r…) to fund.
        address: String,
        /// Amount in XRP.
        #[arg(long, default_value_t = 1000)]
        xrp: u64,
        /// JSON-RPC URL of the localnet.
        #[arg(long, default_value = "http://127.0.0.1:6006/")]
        url: String,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_tracing(args.log_format);
    let cfg = Config {
        listen: args.listen,
        close_interval: Duration::from_millis(args.close_interval),
        data_dir: args.data_dir.clone(),
        ..Config::default()
    };
    let net = Localnet::start(cfg).await.context("starting localnet")?;
    let last = net.node().last_closed();
    println!("berth-localnet {} serving", env!("CARGO_PKG_VERSION"));
    println!("  websocket: {}", net.url());
    println!("  json-rpc:  {}", net.http_url());
    println!("  genesis:   {GENESIS_ADDRESS} (seed {GENESIS_SEED})");
    println!(
        "  ledger:    {} closed, closes every {} ms",
        last.seq, args.close_interval
    );
    match &args.data_dir {
        Some(d) => println!("  data dir:  {}", d.display()),
        None => println!("  data dir:  none (state in memory)"),
    }
    tokio::signal::ctrl_c()
        .await
        .context("waiting for ctrl-c")?;
    tracing::info!("shutting down");
    net.shutdown().await;
    Ok(())
}

async fn fund(address: String, xrp: u64, url: String, json: bool) -> anyhow::Result<()> {
    let drops = xrp.checked_mul(1_000_000).context("amount too large")?;
    let body = serde_json::json!({"method": "wallet_fund", "params": [{"destination": address, "amount": drops.to_string()}]});
    let res = http_post(&url, &body.to_string())
        .await
        .with_context(|| format!("posting to {url}"))?;
    let v: serde_json::Value = serde_json::from_str(&res).context("reading the answer")?;
    let r = &v["result"];
    if r["status"] != "success" {
        anyhow::bail!(
            "funding {address} failed: {}",
            r["error_message"].as_str().unwrap_or("unknown error")
        );
    }
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
    } else {
        println!(
            "funded {address} with {xrp} XRP (transaction {})",
            r["hash"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}

/// A minimal HTTP/1.1 POST over a plain TCP stream (localnet is on loopback).
async fn http_post(url: &str, body: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url
        .strip_prefix("http://")
        .context("the URL must start with http://")?;
    let host = rest.split('/').next().unwrap_or(rest);
    let mut s = tokio::net::TcpStream::connect(host)
        .await
        .with_context(|| format!("connecting to {host}"))?;
    let req = format!("POST / HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let (_, body) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP answer")?;
    Ok(body.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        None => serve(cli.serve).await,
        Some(Command::Fund {
            address,
            xrp,
            url,
            json,
        }) => fund(address, xrp, url, json).await,
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
