//! `spillway simulate TRACE`: replay an arrival trace through the placement engine
//! with simulated backends and compare its cost with two dedicated clusters. Needs
//! neither Redis nor a configuration file.

use std::path::PathBuf;

use anyhow::Context;

use super::output::{OutputFormat, print_json};
use crate::placement::sim::{self, Report, ScenarioReport, SimSettings};

/// Arguments of `spillway simulate`. A flag overrides the same setting of the trace's
/// settings line.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// Arrival trace: JSON Lines, one job per line, with an optional settings line
    /// (format in docs/placement.md).
    pub trace: PathBuf,
    /// Print a text table or one JSON document.
    #[arg(long, short, value_enum, default_value_t)]
    pub output: OutputFormat,
    /// Pool workers (one GPU each) in the burst scenario [default: the mean-sized
    /// cluster].
    #[arg(long)]
    pub pool_workers: Option<u32>,
    /// Cost of one owned pool worker per hour, paid busy or idle [default: 1.5].
    #[arg(long)]
    pub pool_price: Option<f64>,
    /// Price of one burst worker per hour, on every burst backend [default: 3].
    #[arg(long)]
    pub burst_price: Option<f64>,
    /// Seconds from a Slurm request to a running pool worker [default: 60].
    #[arg(long)]
    pub slurm_queue_wait_secs: Option<f64>,
    /// Seconds from a Batch request to a running worker, on every burst backend
    /// [default: 240].
    #[arg(long)]
    pub batch_startup_secs: Option<f64>,
    /// Spot interruptions per burst worker-hour, on every burst backend [default: 0.05].
    #[arg(long)]
    pub interruptions_per_worker_hour: Option<f64>,
    /// Seconds the owned pools are paid for [default: the last arrival or deadline,
    /// rounded up to a whole hour].
    #[arg(long)]
    pub period_secs: Option<f64>,
    /// Seed of the random task durations and interruptions [default: 1].
    #[arg(long)]
    pub seed: Option<u64>,
}

/// Reads the trace, applies the flags, runs the simulation and prints the report.
pub fn run(args: &SimulateArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.trace)
        .with_context(|| format!("failed to read trace {}", args.trace.display()))?;
    let mut trace = sim::parse(&text).with_context(|| args.trace.display().to_string())?;

    apply_flags(args, &mut trace.settings);
    let problems = trace.settings.problems();
    if !problems.is_empty() {
        anyhow::bail!("invalid simulation settings:\n{}", problems.join("\n"));
    }

    let report = sim::simulate(&trace);
    match args.output {
        OutputFormat::Json => print_json(&report),
        OutputFormat::Text => {
            print!("{}", render(&report, &trace.settings));
            Ok(())
        }
    }
}

fn apply_flags(args: &SimulateArgs, settings: &mut SimSettings) {
    if let Some(workers) = args.pool_workers {
        settings.pool_workers = Some(workers);
    }
    if let Some(price) = args.pool_price {
        settings.pool_price_per_worker_hour = price;
    }
    if let Some(wait) = args.slurm_queue_wait_secs {
        settings.slurm_queue_wait_secs = wait;
    }
    if let Some(period) = args.period_secs {
        settings.period_secs = Some(period);
    }
    if let Some(seed) = args.seed {
        settings.seed = seed;
    }
    for burst in &mut settings.burst {
        if let Some(price) = args.burst_price {
            burst.price_per_worker_hour = price;
        }
        if let Some(startup) = args.batch_startup_secs {
            burst.startup_secs = startup;
        }
        if let Some(rate) = args.interruptions_per_worker_hour {
            burst.interruptions_per_worker_hour = rate;
        }
    }
}

/// Formats the report as a summary, a table with one row per scenario and the
/// burst scenario's requests by reason.
fn render(report: &Report, settings: &SimSettings) -> String {
    let mut text = format!(
        "trace: {} jobs, {} tasks, {:.1} worker-hours of work over {:.1} h\n",
        report.jobs,
        report.tasks,
        report.work_worker_hours,
        report.period_secs / 3600.0
    );
    text += &format!(
        "pool: {:.2} per worker-hour, Slurm queue wait {} s\n",
        settings.pool_price_per_worker_hour, settings.slurm_queue_wait_secs
    );
    for burst in &settings.burst {
        text += &format!(
            "burst: {} at {:.2} per worker-hour, start-up {} s, {} interruptions per worker-hour\n",
            burst.id,
            burst.price_per_worker_hour,
            burst.startup_secs,
            burst.interruptions_per_worker_hour
        );
    }

    text += "\nscenario  pool workers       cost  pool cost  burst cost  burst worker-h  burst peak  pool busy  misses  p50 done  p99 done\n";
    for scenario in [&report.burst, &report.peak, &report.mean] {
        text += &row(scenario);
    }

    text += &format!(
        "\nsaving of burst: {:.1}% against peak, {:.1}% against mean (negative: burst costs more)\n",
        report.saving_vs_peak * 100.0,
        report.saving_vs_mean * 100.0
    );
    let reasons: Vec<String> = report
        .burst
        .workers_requested_by_reason
        .iter()
        .map(|(reason, workers)| format!("{reason} {workers}"))
        .collect();
    text += &format!(
        "burst scenario, workers requested by reason: {}\n",
        reasons.join(", ")
    );
    text
}

fn row(scenario: &ScenarioReport) -> String {
    format!(
        "{:<8}  {:>12}  {:>9.2}  {:>9.2}  {:>10.2}  {:>14.1}  {:>10}  {:>8.1}%  {:>6}  {:>8}  {:>8}\n",
        scenario.name,
        scenario.pool_workers,
        scenario.cost,
        scenario.pool_cost,
        scenario.burst_cost,
        scenario.burst_worker_hours,
        scenario.peak_burst_workers,
        scenario.pool_utilisation * 100.0,
        scenario.deadline_misses,
        duration(scenario.completion_p50_secs),
        duration(scenario.completion_p99_secs),
    )
}

/// Formats seconds as `1h05m`, `42m07s` or `30s`.
fn duration(secs: f64) -> String {
    let secs = secs.max(0.0).round() as u64;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}
