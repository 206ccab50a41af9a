//! `spillway-worker`: the one worker binary that every backend starts.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use spillway_worker::embed::EmbedModel;
use spillway_worker::search::Index;
use spillway_worker::worker::{self, WorkerConfig};

#[derive(Parser)]
#[command(
    version,
    about = "Spillway worker: leases tasks from the ledger and runs their kernel"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Lease and run the tasks of the job named by SPILLWAY_JOB_ID until none is left
    /// (the default).
    Run,
    /// Print the SHA-256 of this binary, the value a manifest's `worker.binary_sha256` pins.
    Digest,
    /// Embed a query and print the nearest rows of an embeddings artefact.
    Query {
        /// Artefact URI, such as file:///srv/spillway/out/j-.../embeddings.safetensors.
        #[arg(long)]
        artefact: String,
        /// Directory with config.json, model.safetensors and tokenizer.json.
        #[arg(long)]
        model_dir: PathBuf,
        /// Number of results.
        #[arg(long, default_value_t = 5)]
        top: usize,
        /// The query text.
        text: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;

    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            let config = WorkerConfig::from_env()?;
            if let Some(threads) = config.threads {
                tch::set_num_threads(threads);
            }
            let code = runtime.block_on(worker::run(config))?;
            std::process::exit(code);
        }
        Command::Digest => {
            println!("{}", worker::own_digest()?);
            Ok(())
        }
        Command::Query {
            artefact,
            model_dir,
            top,
            text,
        } => runtime.block_on(query(&artefact, &model_dir, top, &text)),
    }
}

async fn query(
    artefact: &str,
    model_dir: &std::path::Path,
    top: usize,
    text: &str,
) -> anyhow::Result<()> {
    let bytes = spillway_common::store::get(artefact).await?;
    let index = Index::from_safetensors(&bytes)?;
    let model = EmbedModel::load(model_dir, tch::Device::Cpu, 256)?;
    let query = model.embed(&[text])?.get(0);

    println!("query: {text}");
    for (rank, (id, score)) in index.top_k(&query, top).into_iter().enumerate() {
        println!("{:>2}. {score:.4}  {id}", rank + 1);
    }
    Ok(())
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SPILLWAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
