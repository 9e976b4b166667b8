#![forbid(unsafe_code)]
//! The `pgwake` command: `run`, `check`, `doctor`, `demo` and
//! `import-pgbouncer`. Wiring only;
//! the work is in the crates.

mod demo;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use pgwake_config::{Config, LogFormat};

/// jemalloc, not the system allocator: every new client allocates a task
/// and a socket registration aligned to 128 bytes and a login larger than
/// glibc's per-thread cache takes, which glibc serves from its slow paths;
/// jemalloc's thread cache serves them all. Measured per new connection
/// (callgrind, `pgbench -S -C`): 31,700 → 29,400 instructions; per `-S`
/// transaction 2.7 % (10 clients) and 5 % (50) fewer; an idle client 0.93 →
/// 0.70 KiB. The start-up RSS is about 1 MiB larger.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "pgwake",
    version,
    about = "A Postgres connection pooler for managed Postgres"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run(Source),
    /// Validate the configuration and print it with secrets redacted.
    Check(Source),
    /// Time every phase of reaching the server and say which one is slow or failed.
    ///
    /// Uses the effective configuration, as `run` would: config, DNS, TCP
    /// connect, TLS, token, authentication, first query (`SELECT 1`), and the
    /// [lifecycle] provider's state. Prints one row per phase, then a
    /// `verdict:` line naming the failed or slowest phase and its usual cause.
    /// Exit status: 0 when no phase failed (the server answered, or it is
    /// stopped and pgwake will start it when a client arrives), 1 when a phase
    /// failed, 2 for a bad configuration.
    Doctor(Source),
    /// Start a throwaway PostgreSQL and pgwake in front of it, and show pooling at work.
    Demo(demo::DemoArgs),
    /// Print the pgwake configuration equivalent to a PgBouncer one.
    ///
    /// Reads PGBOUNCER.INI (following %include, and reading its auth_file
    /// and auth_hba_file) and prints pgwake's TOML on stdout, with the
    /// comments that explain its settings. On stderr, one line per setting
    /// that has no equivalent or a different meaning in pgwake, saying what
    /// pgwake does instead (FILE:LINE: KEY: …). Relative paths are taken
    /// from the current directory, as PgBouncer takes them. The output
    /// passes `pgwake check`. Exit status: 0 when converted (warnings or
    /// not), 2 when the file cannot be read or converted.
    ImportPgbouncer(ImportArgs),
}

/// What `import-pgbouncer` reads.
#[derive(Args)]
struct ImportArgs {
    /// PgBouncer's configuration file (pgbouncer.ini).
    #[arg(value_name = "PGBOUNCER.INI")]
    ini: PathBuf,
    /// The user list to read in place of the file's auth_file (userlist.txt
    /// format), e.g. a copy when the original is on another machine.
    #[arg(long, value_name = "FILE")]
    userlist: Option<PathBuf>,
}

/// Where the configuration comes from.
#[derive(Args)]
struct Source {
    /// TOML configuration file.
    #[arg(long, short, env = "PGWAKE_CONFIG")]
    config: Option<PathBuf>,
    /// The server to pool, e.g. postgres://app@db.example.com:5432/app?sslmode=require
    #[arg(long, env = "PGWAKE_SERVER_URL")]
    server_url: Option<String>,
}

impl Source {
    fn load(&self) -> anyhow::Result<Result<Config, pgwake_config::ConfigErrors>> {
        let text = match &self.config {
            Some(path) => Some((
                path.display().to_string(),
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?,
            )),
            None => None,
        };
        let env: Vec<(String, String)> = std::env::vars().collect();
        Ok(pgwake_config::load(
            text.as_ref().map(|(n, t)| (n.as_str(), t.as_str())),
            self.server_url.as_deref(),
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        ))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check(src) => check(&src),
        Command::Run(src) => run(&src),
        Command::Doctor(src) => doctor(&src),
        Command::Demo(args) => demo::main(args),
        Command::ImportPgbouncer(args) => import_pgbouncer(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pgwake: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn report(errors: &pgwake_config::ConfigErrors) -> ExitCode {
    let n = errors.0.len();
    eprintln!(
        "pgwake: the configuration has {n} problem{}:\n{errors}",
        if n == 1 { "" } else { "s" }
    );
    ExitCode::from(2)
}

fn check(src: &Source) -> anyhow::Result<ExitCode> {
    match src.load()? {
        Ok(config) => {
            let problems = pgwake_proxy::check_client_files(&config);
            if !problems.is_empty() {
                return Ok(report(&pgwake_config::ConfigErrors(problems)));
            }
            println!("# pgwake: configuration is valid; effective settings (secrets redacted):");
            print!("{}", config.to_toml());
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => Ok(report(&errors)),
    }
}

fn import_pgbouncer(args: &ImportArgs) -> anyhow::Result<ExitCode> {
    let options = pgwake_config::pgbouncer::ImportOptions {
        base_dir: std::env::current_dir().context("cannot tell the current directory")?,
        userlist: args.userlist.clone(),
    };
    let imported = match pgwake_config::pgbouncer::import(&args.ini, &options) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("pgwake: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    // The files it names (user file, TLS certificate) are read as
    // `pgwake check` reads them, so the output passes it as printed.
    let loaded = pgwake_config::load(
        Some(("the imported configuration", &imported.toml)),
        None,
        std::iter::empty(),
    );
    let problems = match loaded {
        Ok(config) => pgwake_proxy::check_client_files(&config),
        Err(errors) => errors.0,
    };
    if !problems.is_empty() {
        eprintln!(
            "pgwake: {}: the imported configuration would not pass pgwake check:\n{}",
            args.ini.display(),
            pgwake_config::ConfigErrors(problems)
        );
        return Ok(ExitCode::from(2));
    }
    for w in &imported.warnings {
        eprintln!("{w}");
    }
    print!("{}", imported.toml);
    Ok(ExitCode::SUCCESS)
}

fn doctor(src: &Source) -> anyhow::Result<ExitCode> {
    let began = std::time::Instant::now();
    let config = match src.load()? {
        Ok(c) => c,
        Err(errors) => {
            let code = report(&errors);
            println!(
                "verdict: loading the config failed: {} problem(s), listed above",
                errors.0.len()
            );
            return Ok(code);
        }
    };
    let loaded_in = began.elapsed();
    // Quiet unless asked: the table is the output.
    if std::env::var_os("RUST_LOG").is_some() {
        init_logging(&config);
    }
    let overrides = std::env::vars()
        .filter(|(k, _)| {
            k.starts_with("PGWAKE_") && k != "PGWAKE_CONFIG" && k != "PGWAKE_SERVER_URL"
        })
        .count();
    // Never the URL itself: it may carry a password.
    let mut from = match (&src.config, &src.server_url) {
        (Some(path), None) => path.display().to_string(),
        (Some(path), Some(_)) => format!("{} and the server URL", path.display()),
        (None, Some(_)) => "the server URL".to_string(),
        (None, None) => "defaults".to_string(),
    };
    if overrides > 0 {
        from.push_str(&format!(" (and {overrides} PGWAKE_* variables)"));
    }
    let rt = runtime(1)?;
    let report = rt.block_on(pgwake_proxy::doctor::diagnose(&config, loaded_in, &from));
    // A name lookup stuck in the resolver must not hold the exit.
    rt.shutdown_background();
    print!("{report}");
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn run(src: &Source) -> anyhow::Result<ExitCode> {
    let config = match src.load()? {
        Ok(c) => c,
        Err(errors) => return Ok(report(&errors)),
    };
    let set_log_level = init_logging(&config);
    raise_fd_limit(config.listen.max_client_conn);
    let rt = runtime(config.listen.worker_threads)?;
    let reload_from = Source {
        config: src.config.clone(),
        server_url: src.server_url.clone(),
    };
    let hooks = pgwake_proxy::Hooks {
        reload: Some(Box::new(move || match reload_from.load() {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(errors)) => Err(format!("the configuration has problems:\n{errors}")),
            Err(e) => Err(format!("{e:#}")),
        })),
        set_log_level,
    };
    rt.block_on(async move {
        let proxy = pgwake_proxy::Proxy::bind_with(config, hooks).await?;
        let shared = proxy.shared();
        // SIGHUP reloads the configuration.
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot install the SIGHUP handler")?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP received: reloading the configuration");
                let s = shared.clone();
                // Reading the file and building credentials block briefly.
                let _ = tokio::task::spawn_blocking(move || s.reload()).await;
            }
        });
        let stop = watch_stop_signals(proxy.shared())?;
        proxy.run(stop).await;
        Ok(ExitCode::SUCCESS)
    })
}

/// Handles SIGTERM and SIGINT, and PgBouncer's SIGUSR1 (PAUSE) and
/// SIGUSR2 (RESUME), on a thread of their own, so that they are obeyed
/// whatever the runtime is doing. The first SIGTERM or SIGINT begins the
/// graceful stop (after `listen.shutdown_delay`, during which pgwake serves
/// as usual); a second stops pgwake at once, as PgBouncer's second SIGINT
/// does. Should the graceful stop not finish well after its grace period,
/// the process ends anyway. Returns what `Proxy::run` waits on.
fn watch_stop_signals(
    shared: std::sync::Arc<pgwake_proxy::Shared>,
) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGUSR1, SIGUSR2])
        .context("cannot install the SIGTERM/SIGINT/SIGUSR1/SIGUSR2 handlers")?;
    let control = shared.clone();
    let requested = tokio_util::sync::CancellationToken::new();
    let on_signal = requested.clone();
    let settings = shared.clone();
    let listen = move || settings.config().listen.clone();
    std::thread::Builder::new()
        .name("pgwake-signals".into())
        .spawn(move || {
            let mut received = false;
            for sig in signals.forever() {
                // PAUSE and RESUME without waiting: a signal has no one to answer.
                if sig == SIGUSR1 || sig == SIGUSR2 {
                    let (name, done, action) = if sig == SIGUSR1 {
                        let was = control.pause();
                        ("SIGUSR1", !was, "PAUSE (SIGUSR2 resumes)")
                    } else {
                        ("SIGUSR2", control.resume(), "RESUME")
                    };
                    if done {
                        tracing::info!("{name} received: {action}");
                    } else {
                        tracing::info!("{name} received: nothing to do (paused: {})", sig == SIGUSR1);
                    }
                    continue;
                }
                let name = if sig == SIGINT { "SIGINT" } else { "SIGTERM" };
                if received {
                    tracing::warn!("{name} received again: stopping at once");
                    std::process::exit(0);
                }
                received = true;
                let listen = listen();
                tracing::info!(delay = ?listen.shutdown_delay, grace = ?listen.shutdown_grace, "{name} received: stopping gracefully (send it again to stop at once)");
                on_signal.cancel();
                // A last resort, for a stop that cannot finish on its own.
                let limit = listen.shutdown_delay + listen.shutdown_grace + Duration::from_secs(10);
                let _ = std::thread::Builder::new()
                    .name("pgwake-stop-limit".into())
                    .spawn(move || {
                        std::thread::sleep(limit);
                        tracing::error!("pgwake did not stop within {limit:?} of the signal; exiting");
                        std::process::exit(1);
                    });
            }
        })
        .context("cannot start the signal thread")?;
    Ok(async move {
        requested.cancelled().await;
        let delay = shared.config().listen.shutdown_delay;
        if !delay.is_zero() {
            tracing::info!(?delay, "still accepting clients for listen.shutdown_delay");
            tokio::time::sleep(delay).await;
        }
    })
}

/// The async runtime: one thread (no cross-thread wake-ups), or a pool of them.
pub(crate) fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if threads > 1 {
            b.worker_threads(threads);
        }
        b
    };
    builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Each client and server connection is a file descriptor: raise the soft
/// limit to the hard one, and say so when `max_client_conn` cannot fit.
fn raise_fd_limit(max_clients: usize) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            let need = u64::try_from(max_clients)
                .unwrap_or(u64::MAX)
                .saturating_add(256);
            if limit < need {
                tracing::warn!(limit, max_client_conn = max_clients, "the open-file limit is below listen.max_client_conn; clients beyond it will be refused at accept");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}

/// Logs to stderr, as text or JSON, at `log.level` unless `RUST_LOG` says
/// otherwise. Returns the means to change the level on reload.
pub(crate) fn init_logging(config: &Config) -> Option<pgwake_proxy::LogLevelSetter> {
    use tracing_subscriber::EnvFilter;
    let from_env = EnvFilter::try_from_default_env().ok();
    let pinned = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(&config.log.level));
    let setter = move |reload: Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>| -> pgwake_proxy::LogLevelSetter {
        Box::new(move |level| {
            if pinned {
                return Err("RUST_LOG is set and takes precedence".into());
            }
            reload(EnvFilter::new(level))
        })
    };
    // Colour only for a person at a terminal: container runtimes, the
    // journal and log collectors read a pipe or a file, where escape codes
    // are noise. NO_COLOR (any non-empty value) turns it off everywhere.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    // The text and JSON builders differ in type: one body for both.
    macro_rules! install {
        ($fmt:expr) => {{
            let builder = $fmt
                .with_ansi(colour)
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .with_filter_reloading();
            let handle = builder.reload_handle();
            builder.try_init().ok()?;
            setter(Box::new(move |f| {
                handle.reload(f).map_err(|e| e.to_string())
            }))
        }};
    }
    let setter = match config.log.format {
        LogFormat::Json => install!(tracing_subscriber::fmt().json()),
        LogFormat::Text => install!(tracing_subscriber::fmt()),
    };
    Some(setter)
}

/// Completes on SIGTERM or SIGINT.
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
