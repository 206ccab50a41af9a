//! `spillway`: the daemon and its command line. This file only wires modules.

mod admission;
mod backend;
mod cli;
mod commands;
mod config;
mod cost;
mod intake;
mod metrics;
mod notify;
mod placement;
mod reconcile;
mod reduce;
mod rounds;
mod service;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};
use config::Config;

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`spillway status | head`) instead of panicking.
    // SAFETY: restoring the default action of SIGPIPE before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: failed to start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Validate { file, output } => return commands::submit::validate(file, *output),
        Command::Simulate(args) => return commands::simulate::run(args),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut command, "spillway", &mut std::io::stdout());
            return Ok(());
        }
        Command::Man => {
            let command = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(command).render(&mut std::io::stdout())?;
            return Ok(());
        }
        _ => {}
    }
    let config = Config::load(&cli.config)?;
    match cli.command {
        Command::Serve => commands::serve::run(config, cli.config.clone()).await,
        Command::Submit {
            file,
            no_validate,
            sqs,
            pubsub,
        } => {
            let destination = match (sqs, pubsub) {
                (Some(queue_url), _) => commands::submit::Destination::Sqs(queue_url),
                (None, Some(topic)) => commands::submit::Destination::Pubsub(topic),
                (None, None) => commands::submit::Destination::RedisStream,
            };
            commands::submit::run(&config, &file, !no_validate, &destination).await
        }
        Command::Status { job, watch, output } => {
            let ledger = connect(&config).await?;
            let prices = cost::PriceTable::new(config.cost.clone());
            commands::status::run(&ledger, &prices, job.as_deref(), watch, output).await
        }
        Command::Results { job, output } => {
            let ledger = connect(&config).await?;
            commands::results::run(&ledger, &job, output).await
        }
        Command::DeadLetters { limit, output } => {
            commands::dead_letters::run(&config, limit, output).await
        }
        Command::CheckConfig { output } => commands::check_config::run(&config, output).await,
        Command::Cancel { job, reason } => {
            let ledger = connect(&config).await?;
            let state = ledger.cancel_job(&job, &reason).await?;
            println!("job {job} is {state}");
            Ok(())
        }
        Command::Drain { off } => {
            let ledger = connect(&config).await?;
            ledger.set_draining(!off).await?;
            match off {
                false => println!(
                    "draining: no message is admitted and no worker starts; `spillway drain --off` resumes"
                ),
                true => println!("drain cleared: daemons admit messages and start workers again"),
            }
            Ok(())
        }
        Command::Validate { .. }
        | Command::Simulate(_)
        | Command::Completions { .. }
        | Command::Man => {
            unreachable!("handled above")
        }
    }
}

async fn connect(config: &Config) -> anyhow::Result<spillway_common::ledger::Ledger> {
    let url = config.ledger_url()?;
    Ok(spillway_common::ledger::Ledger::connect(&url, &config.ledger.prefix).await?)
}

fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = tracing_subscriber::EnvFilter::try_from_env("SPILLWAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));

    // Under systemd, stderr goes to the journal: send structured fields there directly.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        match tracing_journald::layer() {
            Ok(journald) => {
                tracing_subscriber::registry()
                    .with(filter)
                    .with(journald)
                    .init();
                return;
            }
            Err(error) => {
                eprintln!("warning: failed to connect to the journal ({error}); logging to stderr")
            }
        }
    }

    let json = std::env::var("SPILLWAY_LOG_FORMAT").is_ok_and(|format| format == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
