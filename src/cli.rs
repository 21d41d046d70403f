//! Layer 6: the command line. Each subcommand parses its arguments, loads what it
//! needs, and hands over to `daemon` or `demo`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::auth::{KeyFileFormat, KeyStore};
use crate::config::Config;
use crate::daemon::{net, query, serve};

#[derive(Parser)]
#[command(name = "ntimed", version, about = "A secure NTP daemon")]
struct Cli {
    /// Log level: error, warn, info, debug or trace (default: info for `run`, warn
    /// otherwise).
    #[arg(long, global = true)]
    log_level: Option<tracing::Level>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon from a TOML config.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Ask a server for the time once (or --count times) and print what it said.
    Query(QueryArgs),
    /// Show the whole path offline, on loopback, with a throwaway server.
    Demo,
}

#[derive(Args)]
struct QueryArgs {
    /// The server, as HOST, HOST:PORT or [IPv6]:PORT (port 123 by default).
    server: String,
    /// Key file (ntp.keys or chrony format) holding --key-id.
    #[arg(long, requires = "key_id")]
    key_file: Option<PathBuf>,
    /// Sign requests with this key and accept only replies signed with it.
    #[arg(long, requires = "key_file")]
    key_id: Option<u32>,
    /// Key file format: auto, ntp or chrony.
    #[arg(long, default_value = "auto", value_parser = parse_key_format)]
    key_format: KeyFileFormat,
    /// Number of exchanges.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    count: u32,
    /// Seconds to wait for each reply.
    #[arg(long, default_value_t = 2.0, value_parser = parse_seconds)]
    timeout: f64,
    /// Seconds between exchanges.
    #[arg(long, default_value_t = 1.0, value_parser = parse_seconds)]
    interval: f64,
    /// One JSON object per reply, one per line.
    #[arg(long)]
    json: bool,
}

fn parse_key_format(text: &str) -> Result<KeyFileFormat, String> {
    match text {
        "auto" => Ok(KeyFileFormat::Auto),
        "ntp" => Ok(KeyFileFormat::Ntp),
        "chrony" => Ok(KeyFileFormat::Chrony),
        _ => Err("expected auto, ntp or chrony".into()),
    }
}

fn parse_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if (0.01..=3600.0).contains(&s) => Ok(s),
        _ => Err("expected seconds from 0.01 to 3600".into()),
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Run { .. } => tracing::Level::INFO,
        _ => tracing::Level::WARN,
    };
    tracing_subscriber::fmt()
        .with_max_level(cli.log_level.unwrap_or(default_level))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ntimed: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run { config } => run(config).await,
            Command::Query(args) => run_query(args).await,
            Command::Demo => crate::demo::run().await,
        }
    });
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("ntimed: {message}");
            ExitCode::from(2)
        }
    }
}

async fn run(config: PathBuf) -> Result<ExitCode, String> {
    let loaded = Config::load(&config).map_err(|e| e.to_string())?;
    serve::run(loaded).await?;
    Ok(ExitCode::SUCCESS)
}

async fn run_query(args: QueryArgs) -> Result<ExitCode, String> {
    let key = match (&args.key_file, args.key_id) {
        (Some(file), Some(id)) => {
            let store = KeyStore::load(file, args.key_format).map_err(|e| e.to_string())?;
            let key = store
                .get(id)
                .ok_or_else(|| format!("{}: no key {id}", file.display()))?;
            Some(key.clone())
        }
        _ => None,
    };
    let (host, port) = net::split_host_port(&args.server, 123)?;
    let server = net::resolve(&host, port).await?;
    let options = query::QueryOptions {
        key,
        count: args.count,
        timeout: Duration::from_secs_f64(args.timeout),
        interval: Duration::from_secs_f64(args.interval),
    };
    let mut all_ok = true;
    for result in query::query(server, options).await {
        match result {
            Ok(report) => {
                // A reply that must never steer a clock is no success for a script.
                all_ok &= report.unusable.is_none();
                if args.json {
                    let line = serde_json::to_string(&report).map_err(|e| e.to_string())?;
                    println!("{line}");
                } else {
                    println!("{}", describe(&report));
                }
            }
            Err(message) => {
                all_ok = false;
                eprintln!("ntimed: {message}");
            }
        }
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A reply in one line, for people.
pub fn describe(r: &query::Report) -> String {
    let auth = match r.key_id {
        Some(id) => format!("authenticated (key {id})"),
        None => "NOT authenticated".to_string(),
    };
    let warning = r
        .unusable
        .map(|why| format!("\n  warning: unusable: {why}"))
        .unwrap_or_default();
    format!(
        "{}  offset {:+.6} s  delay {:.6} s  stratum {}  refid {}  leap {}  root distance {:.6} s  {auth}{warning}",
        r.server, r.offset, r.delay, r.stratum, r.refid, r.leap, r.root_distance
    )
}
