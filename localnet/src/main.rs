//! `berth-localnet`: an XRP-Ledger-compatible ledger server for one machine. Exit codes: 0 ok,
//! 1 failure, 2 usage.

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
    /// Print data as JSON on stdout: `fund`'s answer as one document; when serving, one line
    /// once the server listens.
    #[arg(long, global = true)]
    json: bool,
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
        /// URL of the localnet (its WebSocket, ws://; an http:// URL names the same server).
        #[arg(long, default_value = "ws://127.0.0.1:6006/")]
        url: String,
    },
}

fn init_tracing(format: LogFormat) {
    let format = match format {
        LogFormat::Text => berth_log::Format::Text,
        LogFormat::Json => berth_log::Format::Json,
    };
    berth_log::init("info", format);
}

async fn serve(args: ServeArgs, json: bool) -> anyhow::Result<()> {
    init_tracing(args.log_format);
    let cfg = Config {
        listen: args.listen,
        close_interval: Duration::from_millis(args.close_interval),
        data_dir: args.data_dir.clone(),
        ..Config::default()
    };
    let net = Localnet::start(cfg).await.context("starting localnet")?;
    let last = net.node().last_closed();
    if json {
        let ready = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "websocket": net.url(),
            "json_rpc": net.http_url(),
            "genesis": {"address": GENESIS_ADDRESS, "seed": GENESIS_SEED},
            "ledger": last.seq,
            "close_interval_ms": args.close_interval,
            "data_dir": args.data_dir.as_ref().map(|d| d.display().to_string()),
        });
        println!("{ready}");
    } else {
        print_ready(&net, last.seq, &args);
    }
    tokio::signal::ctrl_c()
        .await
        .context("waiting for ctrl-c")?;
    tracing::info!("shutting down");
    net.shutdown().await;
    Ok(())
}

fn print_ready(net: &Localnet, last: u32, args: &ServeArgs) {
    println!("berth-localnet {} serving", env!("CARGO_PKG_VERSION"));
    println!("  websocket: {}", net.url());
    println!("  json-rpc:  {}", net.http_url());
    println!("  genesis:   {GENESIS_ADDRESS} (seed {GENESIS_SEED})");
    println!(
        "  ledger:    {last} closed, closes every {} ms",
        args.close_interval
    );
    match &args.data_dir {
        Some(d) => println!("  data dir:  {}", d.display()),
        None => println!("  data dir:  none (state in memory)"),
    }
}

async fn fund(address: String, xrp: u64, url: String, json: bool) -> anyhow::Result<()> {
    let drops = xrp.checked_mul(1_000_000).context("amount too large")?;
    let request = serde_json::json!({
        "id": 1,
        "command": "wallet_fund",
        "destination": address,
        "amount": drops.to_string(),
    });
    let answer = ws_request(&url, &request)
        .await
        .with_context(|| format!("asking the localnet at {url}"))?;
    if answer["status"] != "success" {
        anyhow::bail!(
            "funding {address} failed: {}",
            answer["error_message"]
                .as_str()
                .or(answer["error"].as_str())
                .unwrap_or("unknown error")
        );
    }
    let r = &answer["result"];
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

/// One request over localnet's WebSocket API (`ws://…`; an `http://` URL names the same
/// server, whose WebSocket is at `/` too) and its answer.
async fn ws_request(url: &str, request: &serde_json::Value) -> anyhow::Result<serde_json::Value> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let url = match url.strip_prefix("http://") {
        Some(rest) => format!("ws://{rest}"),
        None => url.to_owned(),
    };
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .context("connecting")?;
    ws.send(Message::text(request.to_string()))
        .await
        .context("sending the request")?;
    while let Some(message) = ws.next().await {
        match message.context("reading the answer")? {
            Message::Text(text) => {
                let _ = ws.close(None).await;
                return serde_json::from_str(text.as_str()).context("reading the answer");
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    anyhow::bail!("the connection closed without an answer")
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        None => serve(cli.serve, cli.json).await,
        Some(Command::Fund { address, xrp, url }) => fund(address, xrp, url, cli.json).await,
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
