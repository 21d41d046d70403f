//! The command line. Each subcommand parses its arguments, loads what it
//! needs, and hands over to `daemon` or `demo`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::auth::{KeyFileFormat, KeyStore};
use crate::config::Config;
use crate::daemon::{net, nts, query, run};

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
    /// Run NTS-KE with a server and print what it negotiated.
    Ke(KeArgs),
    /// Check a config as `run` would (keys, certificates, directories), printing every
    /// problem; exit status 1 if there are any (warnings allowed).
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Write a symmetric key file that ntimed, chrony and NTPsec all accept.
    Keygen(KeygenArgs),
    /// Ask the running daemon over its control socket.
    Ctl(CtlArgs),
    /// Show the whole path offline, on loopback, with a throwaway server.
    Demo,
    /// Run a simulated scenario (or `all`) and print its metrics.
    Sim(SimArgs),
    /// Load an NTP server on loopback from many client addresses at fixed request
    /// rates, and print what share it answered and how fast.
    Bench(BenchArgs),
    /// For packagers: write man pages (DIR/man) and bash, zsh and fish completions
    /// (DIR/completions), all made from these very definitions.
    #[command(hide = true)]
    Generate {
        #[arg(long)]
        out: PathBuf,
    },
    /// Internal: the privileged clock process `ntimed run` starts as root.
    #[command(name = "privsep-clock", hide = true)]
    PrivsepClock(crate::privsep::ChildArgs),
    /// Internal: the sandboxed engine `ntimed run` starts as root.
    #[command(name = "privsep-engine", hide = true)]
    PrivsepEngine(crate::privsep::ChildArgs),
}

#[derive(Args)]
struct CtlArgs {
    /// status, sources, server or reload.
    #[arg(value_parser = parse_query)]
    query: crate::daemon::control::Query,
    /// The daemon's control socket.
    #[arg(long, default_value = crate::daemon::control::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Print the JSON the daemon sent instead of a table.
    #[arg(long)]
    json: bool,
}

fn parse_query(text: &str) -> Result<crate::daemon::control::Query, String> {
    crate::daemon::control::Query::parse(text)
        .ok_or_else(|| "expected status, sources, server or reload".into())
}

#[derive(Args)]
struct SimArgs {
    /// defaults, large-jitter, large-wander, asym-jitter, falsetickers, iburst,
    /// packet-loss, or all.
    scenario: String,
    /// Runs with seeds 0..N; metrics are medians.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1000))]
    seeds: u64,
    /// Print one JSON object per scenario instead of a table row.
    #[arg(long)]
    json: bool,
    /// Draw phase and frequency error over time (seed 0) into this SVG file.
    #[arg(long)]
    plot: Option<PathBuf>,
}

#[derive(Args)]
struct BenchArgs {
    /// The server, as HOST:PORT on loopback (port 123 by default).
    server: String,
    /// Requests per second, one step per rate: e.g. 1000,10000,50000.
    #[arg(long, value_delimiter = ',', default_value = "1000", value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    rate: Vec<u32>,
    /// Seconds per rate step.
    #[arg(long, default_value_t = 5.0, value_parser = parse_seconds)]
    duration: f64,
    /// Clients, each from its own address from 127.101.0.1 on.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    clients: u32,
    /// Key file (ntp.keys or chrony format) holding --key-id: keyed requests.
    #[arg(long, requires = "key_id", conflicts_with = "nts_c2s")]
    key: Option<PathBuf>,
    /// The key to sign with.
    #[arg(long, requires = "key")]
    key_id: Option<u32>,
    /// NTS requests: the C2S key in hex, as `ntimed ke --export` prints it.
    #[arg(long, requires_all = ["nts_s2c", "nts_cookie"])]
    nts_c2s: Option<String>,
    /// The S2C key in hex.
    #[arg(long, requires = "nts_c2s")]
    nts_s2c: Option<String>,
    /// A cookie in hex; every client starts with copies of it.
    #[arg(long, requires = "nts_c2s")]
    nts_cookie: Option<String>,
    /// Ask for interleaved mode and report the share of interleaved answers.
    #[arg(long)]
    xleave: bool,
    /// One JSON object per rate step, one per line.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct KeygenArgs {
    /// AES128 (RFC 8573 AES-CMAC, the default: ntimed, chrony and NTPsec all accept
    /// it), AES256, SHA256, SHA1 or MD5. NTPsec truncates SHA256 MACs to 20 bytes, so
    /// with NTPsec use AES128, AES256 or SHA1.
    #[arg(long = "type", default_value = "AES128", value_parser = crate::ops::keygen::parse_type)]
    key_type: crate::auth::KeyType,
    /// Number of keys.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::ops::keygen::MAX_COUNT)))]
    count: u32,
    /// ntp (ntp.keys: ntpd, NTPsec) or chrony.
    #[arg(long, default_value = "ntp", value_parser = parse_keygen_format)]
    format: KeyFileFormat,
    /// The first key's id; the others follow (ids up to 65535).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::ops::keygen::MAX_ID)))]
    id_start: u32,
    /// Create this file (mode 0600; an existing file is not overwritten) instead of
    /// writing to standard output.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

fn parse_keygen_format(text: &str) -> Result<KeyFileFormat, String> {
    match parse_key_format(text)? {
        KeyFileFormat::Auto => Err("expected ntp or chrony".into()),
        format => Ok(format),
    }
}

#[derive(Args)]
struct KeArgs {
    /// The NTS-KE server, as HOST, HOST:PORT or [IPv6]:PORT (port 4460 by default).
    server: String,
    /// A PEM file of CA certificates to trust besides the system's.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Also print the exported keys and the cookies in hex (secrets: debugging only).
    #[arg(long)]
    export: bool,
    /// Seconds to wait for the exchange.
    #[arg(long, default_value_t = 5.0, value_parser = parse_seconds)]
    timeout: f64,
}

#[derive(Args)]
struct QueryArgs {
    /// The server, as HOST, HOST:PORT or [IPv6]:PORT (port 123 by default; with
    /// --nts, the NTS-KE server, port 4460 by default).
    server: String,
    /// Authenticate with NTS: key exchange with SERVER, then NTP where it says.
    #[arg(long, conflicts_with_all = ["key_file", "key_id"])]
    nts: bool,
    /// With --nts: a PEM file of CA certificates to trust besides the system's.
    #[arg(long, requires = "nts")]
    ca: Option<PathBuf>,
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
        Command::Run { .. } | Command::PrivsepClock(_) | Command::PrivsepEngine(_) => {
            tracing::Level::INFO
        }
        _ => tracing::Level::WARN,
    };
    let level = cli.log_level.unwrap_or(default_level);
    // Colour only for a person at a terminal: files and journald get plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .init();
    let simulator = matches!(cli.command, Command::Run { .. }) && crate::util::under_clknetsim();
    if simulator {
        tracing::warn!(
            "{} set: one thread, no privilege separation — for the simulator only",
            crate::util::CLKNETSIM_ENV
        );
    }
    // These fork, drop privileges or sandbox themselves before any runtime (and its
    // threads) exists.
    let early = match cli.command {
        Command::Run { config } if !simulator && crate::sys::effective_uid() == 0 => {
            crate::ops::check::before_run(&config, true)
                .and_then(|()| crate::privsep::supervise(&config, level))
        }
        Command::PrivsepClock(args) => crate::privsep::clock_main(args),
        Command::PrivsepEngine(args) => crate::privsep::engine_main(args),
        // Neither needs a runtime.
        Command::Check { config } => return crate::ops::check::main(&config),
        Command::Keygen(args) => run_keygen(args),
        Command::Generate { out } => generate(&out),
        Command::Ctl(args) => return crate::ops::ctl::main(&args.socket, args.query, args.json),
        command => return run_in_runtime(command, simulator),
    };
    match early {
        Ok(code) => code,
        Err(message) => {
            eprintln!("ntimed: {message}");
            ExitCode::from(2)
        }
    }
}

/// Runs `command` on a multi-thread runtime, or on one thread under the simulator.
fn run_in_runtime(command: Command, simulator: bool) -> ExitCode {
    let mut builder = if simulator {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ntimed: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match command {
            Command::Run { config } => run(config, simulator).await,
            Command::PrivsepClock(_)
            | Command::PrivsepEngine(_)
            | Command::Check { .. }
            | Command::Ctl(_)
            | Command::Generate { .. }
            | Command::Keygen(_) => Err("these commands run before the runtime".into()),
            Command::Query(args) => run_query(args).await,
            Command::Ke(args) => run_ke(args).await,
            Command::Demo => crate::demo::run().await,
            Command::Sim(args) => run_sim(args),
            Command::Bench(args) => run_bench(args).await,
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

/// `ntimed run` without root: one process, which can set no clock. Under the
/// simulator (`simulator`) that one process steers the system clock, which is then
/// clknetsim's.
async fn run(config: PathBuf, simulator: bool) -> Result<ExitCode, String> {
    if !simulator {
        crate::ops::check::before_run(&config, false)?;
    }
    let loaded = Config::load(&config).map_err(|e| e.to_string())?;
    if !simulator {
        let mode = loaded.config.clock.as_ref().map(|c| c.get_ref().mode);
        tracing::info!(
            "running unprivileged in one process{}; started as root, ntimed separates privileges",
            mode.map(|m| format!(" with the {m:?} clock").to_lowercase())
                .unwrap_or_default()
        );
    }
    run::run(loaded).await?;
    Ok(ExitCode::SUCCESS)
}

async fn run_query(args: QueryArgs) -> Result<ExitCode, String> {
    let auth = match (&args.key_file, args.key_id) {
        _ if args.nts => query::QueryAuth::Nts {
            ke_port: 0,
            tls: nts::client_config(args.ca.as_deref())?,
        },
        (Some(file), Some(id)) => {
            let store = KeyStore::load(file, args.key_format).map_err(|e| e.to_string())?;
            let key = store
                .get(id)
                .ok_or_else(|| format!("{}: no key {id}", file.display()))?;
            query::QueryAuth::Key(key.clone())
        }
        _ => query::QueryAuth::None,
    };
    let default_port = if args.nts { nts::DEFAULT_KE_PORT } else { 123 };
    let (host, port) = net::split_host_port(&args.server, default_port)?;
    let auth = match auth {
        query::QueryAuth::Nts { tls, .. } => query::QueryAuth::Nts { ke_port: port, tls },
        other => other,
    };
    let options = query::QueryOptions {
        auth,
        count: args.count,
        timeout: Duration::from_secs_f64(args.timeout),
        interval: Duration::from_secs_f64(args.interval),
    };
    let mut all_ok = true;
    for result in query::query(&host, port, options).await {
        match result {
            Ok(report) => {
                // A reply that must never steer a clock is no success for a script.
                all_ok &= report.unusable.is_none();
                if args.json {
                    let line = serde_json::to_string(&report).map_err(|e| e.to_string())?;
                    println!("{line}");
                } else {
                    println!("{report}");
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

/// The whole command line as clap sees it, for `generate`.
fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

fn generate(out: &std::path::Path) -> Result<ExitCode, String> {
    for path in crate::ops::generate::generate(command(), out)? {
        println!("{}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn run_keygen(args: KeygenArgs) -> Result<ExitCode, String> {
    use crate::ops::keygen;
    let options = keygen::KeygenOptions {
        key_type: args.key_type,
        count: args.count,
        format: args.format,
        id_start: args.id_start,
    };
    let text = keygen::key_file(options, &mut rand::rng())?;
    match &args.output {
        Some(path) => keygen::write_new_file(path, &text)?,
        None => std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes())
            .map_err(|e| format!("standard output: {e}"))?,
    }
    Ok(ExitCode::SUCCESS)
}

fn run_sim(args: SimArgs) -> Result<ExitCode, String> {
    use crate::sim;
    let scenarios: Vec<&sim::Scenario> = if args.scenario == "all" {
        sim::SCENARIOS.iter().collect()
    } else {
        let names: Vec<_> = sim::SCENARIOS.iter().map(|s| s.name).collect();
        vec![sim::scenario(&args.scenario).ok_or_else(|| {
            format!(
                "unknown scenario {:?}; one of: {}, all",
                args.scenario,
                names.join(", ")
            )
        })?]
    };
    if let Some(file) = &args.plot {
        let [scenario] = scenarios[..] else {
            return Err("--plot needs one scenario".into());
        };
        let mut trace = sim::Trace::default();
        sim::run(scenario, 0, Some(&mut trace));
        sim::plot::draw(file, scenario.name, &trace)?;
    }
    if !args.json {
        println!(
            "{:<14} {:>9} {:>12} {:>12} {:>12} {:>10}  falseticker selected",
            "scenario", "sync (s)", "max (µs)", "RMS (µs)", "RMS (ppb)", "poll (s)"
        );
    }
    for scenario in scenarios {
        let m = sim::run_seeds(scenario, args.seeds);
        if args.json {
            let mut value = serde_json::to_value(&m).map_err(|e| e.to_string())?;
            if let Some(object) = value.as_object_mut() {
                object.insert("scenario".into(), scenario.name.into());
                object.insert("seeds".into(), args.seeds.into());
            }
            println!("{value}");
        } else {
            println!(
                "{:<14} {:>9.0} {:>12.1} {:>12.1} {:>12.1} {:>10.0}  {}",
                scenario.name,
                m.sync_time,
                m.max_offset * 1e6,
                m.rms_offset * 1e6,
                m.rms_freq * 1e9,
                m.mean_poll_interval,
                if m.falseticker_selected { "YES" } else { "no" }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_bench(args: BenchArgs) -> Result<ExitCode, String> {
    use crate::ops::bench::{BenchAuth, BenchOptions, format_table, parse_hex, run};
    let auth = match (
        args.key,
        args.key_id,
        args.nts_c2s,
        args.nts_s2c,
        args.nts_cookie,
    ) {
        (Some(file), Some(id), ..) => {
            let store = KeyStore::load(&file, KeyFileFormat::Auto).map_err(|e| e.to_string())?;
            let key = store
                .get(id)
                .ok_or_else(|| format!("{}: no key {id}", file.display()))?;
            BenchAuth::Key(key.clone())
        }
        (_, _, Some(c2s), Some(s2c), Some(cookie)) => {
            let hex =
                |what: &str, text: &str| parse_hex(text).map_err(|e| format!("--nts-{what}: {e}"));
            BenchAuth::Nts {
                c2s: hex("c2s", &c2s)?,
                s2c: hex("s2c", &s2c)?,
                cookie: hex("cookie", &cookie)?,
            }
        }
        _ => BenchAuth::None,
    };
    let (host, port) = net::split_host_port(&args.server, 123)?;
    let server = net::resolve(&host, port).await?;
    let options = BenchOptions {
        server,
        rates: args.rate,
        duration: args.duration,
        clients: args.clients as usize,
        auth,
        xleave: args.xleave,
    };
    let reports = run(&options).await?;
    if args.json {
        for r in &reports {
            println!("{}", serde_json::to_string(r).map_err(|e| e.to_string())?);
        }
    } else {
        print!("{}", format_table(&reports));
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_ke(args: KeArgs) -> Result<ExitCode, String> {
    let (host, port) = net::split_host_port(&args.server, nts::DEFAULT_KE_PORT)?;
    let tls = nts::client_config(args.ca.as_deref())?;
    let timeout = Duration::from_secs_f64(args.timeout);
    let outcome = match nts::key_exchange(&host, port, tls, timeout).await {
        Ok(outcome) => outcome,
        Err(message) => {
            eprintln!("ntimed: {message}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let cookies = &outcome.response.cookies;
    println!("NTS-KE with {host}:{port}");
    println!(
        "  AEAD        {} ({})",
        outcome.keys.algorithm().name(),
        outcome.keys.algorithm().id()
    );
    println!("  NTP server  {}:{}", outcome.ntp_host, outcome.ntp_port);
    println!(
        "  cookies     {} of {} bytes",
        cookies.len(),
        cookies.first().map_or(0, Vec::len)
    );
    if args.export {
        println!("  C2S key     {}", hex(outcome.keys.c2s.bytes()));
        println!("  S2C key     {}", hex(outcome.keys.s2c.bytes()));
        for (i, cookie) in cookies.iter().enumerate() {
            println!("  cookie {i}    {}", hex(cookie));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
