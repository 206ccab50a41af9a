//! Measures the `contrastive` kernel's forward and backward pass over a JSONL file of
//! `{"anchor", "positive"}` pairs, and the in-process cost of a round's reduction.
//! Prints one JSON object on stdout.
//!
//! `bench/train_throughput.py` runs this program next to `bench/train_torch.py` (the
//! same step in PyTorch) with the same pairs, batch size, trained layers and threads.
//!
//! Each step takes the next `batch_size` pairs and times three parts: the forward and
//! backward pass (tokenization included), copying the gradients out of libtorch, and
//! encoding them as a partial gradient file. After the steps, one round of
//! `round_tasks` partials is reduced, stepped with AdamW and loaded back, and timed.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use serde::Deserialize;
use spillway_common::digest::Sha256Hex;
use spillway_common::manifest::{Kernel, Optimizer, Trainable, Training};
use spillway_common::train::{apply_round, reduce_partials};
use spillway_worker::embed;
use spillway_worker::train::{TextPair, TrainKernel};
use tch::Device;

#[derive(Parser)]
struct Args {
    /// Directory with config.json, model.safetensors and tokenizer.json.
    #[arg(long)]
    model_dir: PathBuf,
    /// JSONL file with one {"anchor": ..., "positive": ...} object per line.
    #[arg(long)]
    input: PathBuf,
    /// Pairs per step (the task's micro-batch).
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// libtorch intra-op threads.
    #[arg(long)]
    threads: i32,
    /// Maximum tokens per text, special tokens included.
    #[arg(long, default_value_t = 128)]
    max_seq_len: u32,
    /// Trained parameters: `all`, or the number of top layers.
    #[arg(long, default_value = "2")]
    trainable: String,
    /// Untimed steps before the timed ones.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Partial gradients in the timed round reduction; 0 skips it.
    #[arg(long, default_value_t = 4)]
    round_tasks: usize,
}

#[derive(Deserialize)]
struct Line {
    anchor: String,
    positive: String,
}

fn read_pairs(path: &PathBuf) -> anyhow::Result<Vec<Line>> {
    let file = File::open(path).with_context(|| format!("failed to open {}", path.display()))?;
    let mut pairs = Vec::new();
    for (number, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("failed to read {}", path.display()))?;
        let parsed: Line = serde_json::from_str(&line).with_context(|| {
            format!("invalid JSON on line {} of {}", number + 1, path.display())
        })?;
        pairs.push(parsed);
    }
    anyhow::ensure!(!pairs.is_empty(), "{} contains no pairs", path.display());
    Ok(pairs)
}

fn trainable(text: &str) -> anyhow::Result<Trainable> {
    if text == "all" {
        return Ok(Trainable::All);
    }
    let layers = text.parse().with_context(|| {
        format!("invalid --trainable {text:?}: expected `all` or a layer count")
    })?;
    Ok(Trainable::TopLayers(layers))
}

/// Returns the pairs of step `step`, wrapping around the input.
fn batch(pairs: &[Line], step: usize, size: usize) -> Vec<TextPair<'_>> {
    (0..size)
        .map(|offset| &pairs[(step * size + offset) % pairs.len()])
        .map(|line| TextPair {
            anchor: &line.anchor,
            positive: &line.positive,
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    embed::set_threads(args.threads)?;
    embed::tune_malloc()?;
    let pairs = read_pairs(&args.input)?;

    let kernel = Kernel::Contrastive {
        max_seq_len: args.max_seq_len,
        temperature: 0.05,
        trainable: trainable(&args.trainable)?,
    };
    let load_started = Instant::now();
    let mut model = TrainKernel::load(&args.model_dir, Device::Cpu, &kernel, 0)?;
    let load_secs = load_started.elapsed().as_secs_f64();

    for step in 0..args.warmup {
        model.backward(&batch(&pairs, step, args.batch_size), &[args.batch_size])?;
        model.take_gradients()?;
    }

    let mut step_secs = Vec::with_capacity(args.steps);
    let mut extract_secs = Vec::with_capacity(args.steps);
    let mut encode_secs = Vec::with_capacity(args.steps);
    let mut partials = Vec::new();
    for step in 0..args.steps {
        let pairs = batch(&pairs, args.warmup + step, args.batch_size);

        let started = Instant::now();
        let loss = model.backward(&pairs, &[pairs.len()])?;
        step_secs.push(started.elapsed().as_secs_f64());

        let started = Instant::now();
        let gradients = model.take_gradients()?;
        extract_secs.push(started.elapsed().as_secs_f64());

        let started = Instant::now();
        let partial = spillway_common::train::PartialGradient {
            round: 0,
            weights_sha256: model.base_weights_sha256().clone(),
            samples: pairs.len() as u64,
            loss,
            gradients,
        };
        let bytes = partial.encode(&[]);
        encode_secs.push(started.elapsed().as_secs_f64());
        if partials.len() < args.round_tasks {
            partials.push((step as u32, bytes));
        }
    }

    let round_secs = time_round(&args, &kernel, &mut model, partials)?;
    let report = serde_json::json!({
        "batch_size": args.batch_size,
        "threads": args.threads,
        "max_seq_len": args.max_seq_len,
        "trainable": args.trainable,
        "load_secs": load_secs,
        "step_secs": step_secs,
        "extract_secs": extract_secs,
        "encode_secs": encode_secs,
        "round": round_secs,
    });
    println!("{report}");
    Ok(())
}

/// Times one round's reduction of `partials`, the AdamW update and loading the new
/// weights into the kernel.
fn time_round(
    args: &Args,
    kernel: &Kernel,
    model: &mut TrainKernel,
    partials: Vec<(u32, Vec<u8>)>,
) -> anyhow::Result<serde_json::Value> {
    if partials.is_empty() {
        return Ok(serde_json::Value::Null);
    }
    let tasks = partials.len();
    let partial_bytes = partials[0].1.len();
    let weights = std::fs::read(args.model_dir.join("model.safetensors"))?;
    let training = Training {
        rounds: Some(1),
        epochs: None,
        tasks_per_round: tasks as u32,
        optimizer: Optimizer::AdamW {
            lr: 2e-5,
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.01,
        },
        seed: 0,
    };

    let started = Instant::now();
    let reduced = reduce_partials(0, Sha256Hex::of(&weights), partials)?;
    let reduce_secs = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let update = apply_round(kernel, &training, &weights, None, &reduced)?;
    let update_secs = started.elapsed().as_secs_f64();

    let started = Instant::now();
    model.load_weights(1, &update.weights)?;
    let load_weights_secs = started.elapsed().as_secs_f64();

    Ok(serde_json::json!({
        "tasks": tasks,
        "partial_bytes": partial_bytes,
        "weights_bytes": update.weights.len(),
        "reduce_secs": reduce_secs,
        "update_secs": update_secs,
        "load_weights_secs": load_weights_secs,
    }))
}
