//! Measures the Rust embed kernel: time to the first embedding and throughput
//! over a JSONL file of `{"text": ...}` lines. Prints one JSON object on stdout.
//!
//! `bench/embed_throughput.py` runs this program next to sentence-transformers
//! with the same texts, batch size and thread count.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use serde::Deserialize;
use spillway_worker::embed::{self, EmbedModel};
use tch::Device;

#[derive(Parser)]
struct Args {
    /// Directory with config.json, model.safetensors and tokenizer.json.
    #[arg(long)]
    model_dir: PathBuf,
    /// JSONL file with one {"text": ...} object per line.
    #[arg(long)]
    input: PathBuf,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// libtorch intra-op threads.
    #[arg(long)]
    threads: i32,
    /// Maximum tokens per text, special tokens included.
    #[arg(long, default_value_t = embed::DEFAULT_MAX_SEQ_LEN)]
    max_seq_len: usize,
    /// Timed passes over the whole input after the warm-up.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Texts per embed call within a pass, each call timed on its own; 0 embeds
    /// the whole input in one call.
    #[arg(long, default_value_t = 0)]
    slice_size: usize,
    /// Keep glibc's default malloc thresholds instead of calling embed::tune_malloc.
    #[arg(long)]
    default_malloc: bool,
    /// Exit after the first embedding, for cold-start runs.
    #[arg(long)]
    first_only: bool,
}

#[derive(Deserialize)]
struct Line {
    text: String,
}

fn unix_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("system clock before 1970")
        .as_secs_f64()
}

fn read_texts(path: &PathBuf) -> anyhow::Result<Vec<String>> {
    let file = File::open(path).with_context(|| format!("failed to open {}", path.display()))?;
    let mut texts = Vec::new();
    for (number, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("failed to read {}", path.display()))?;
        let parsed: Line = serde_json::from_str(&line).with_context(|| {
            format!("invalid JSON on line {} of {}", number + 1, path.display())
        })?;
        texts.push(parsed.text);
    }
    anyhow::ensure!(!texts.is_empty(), "{} contains no texts", path.display());
    Ok(texts)
}

fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    let args = Args::parse();
    let batch_size =
        NonZeroUsize::new(args.batch_size).context("--batch-size must be at least 1")?;
    embed::set_threads(args.threads)?;
    if !args.default_malloc {
        embed::tune_malloc()?;
    }

    let texts = read_texts(&args.input)?;
    let model = EmbedModel::load(&args.model_dir, Device::Cpu, args.max_seq_len)?
        .with_batch_size(batch_size);
    let load_secs = started.elapsed().as_secs_f64();

    let _first = model.embed(&[texts[0].as_str()])?;
    let first_embedding_unix_secs = unix_secs();
    let first_embedding_secs = started.elapsed().as_secs_f64();

    let mut report = serde_json::json!({
        "implementation": "spillway-rust",
        "threads": tch::get_num_threads(),
        "batch_size": batch_size.get(),
        "max_seq_len": model.max_seq_len(),
        "tuned_malloc": !args.default_malloc,
        "load_secs": load_secs,
        "first_embedding_secs": first_embedding_secs,
        "first_embedding_unix_secs": first_embedding_unix_secs,
    });
    if args.first_only {
        println!("{report}");
        return Ok(());
    }

    let text_refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let token_count: usize = model.count_tokens(&text_refs)?.iter().sum();

    // Warm-up over two batches, so that allocator and kernel caches are filled.
    let warm_up_len = text_refs.len().min(2 * batch_size.get());
    let _warm_up = model.embed(&text_refs[..warm_up_len])?;

    let slice_size = if args.slice_size == 0 {
        text_refs.len()
    } else {
        args.slice_size
    };
    let mut run_secs = Vec::with_capacity(args.repeats);
    let mut run_slice_secs = Vec::with_capacity(args.repeats);
    for _ in 0..args.repeats {
        let mut slice_secs = Vec::new();
        for slice in text_refs.chunks(slice_size) {
            let slice_started = Instant::now();
            let embeddings = model.embed(slice)?;
            slice_secs.push(slice_started.elapsed().as_secs_f64());

            let rows = embeddings.size()[0];
            anyhow::ensure!(
                rows as usize == slice.len(),
                "expected {} rows, got {rows}",
                slice.len()
            );
        }
        run_secs.push(slice_secs.iter().sum::<f64>());
        run_slice_secs.push(slice_secs);
    }

    report["texts"] = text_refs.len().into();
    report["tokens"] = token_count.into();
    report["run_secs"] = run_secs.into();
    report["run_slice_secs"] = run_slice_secs.into();
    println!("{report}");
    Ok(())
}
