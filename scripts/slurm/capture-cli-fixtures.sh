#!/usr/bin/env bash
# Capture the output of Slurm's command line tools as test fixtures for the slurm
# crate's CLI client.
#
# Usage:
#   scripts/slurm/capture-cli-fixtures.sh [OUTPUT_DIR]
#
# Needs a fresh cluster from scripts/slurm-cluster.sh, because the job listings
# contain every job that the cluster still remembers. Source its env file first
# (SLURM_CONF). OUTPUT_DIR defaults to slurm/tests/fixtures/cli. JSON files are
# reindented by jq; *.txt files are standard output and *.stderr files standard
# error, as the tool printed them. The jobs run as the calling user in a temporary
# folder. Took 21 s on the test cluster, mostly waiting for the arrays and for
# squeue and sinfo to give up on a controller that does not listen.

set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
readonly REPO
readonly OUTPUT_DIR=${1:-$REPO/slurm/tests/fixtures/cli}

die() {
    printf 'capture-cli-fixtures.sh: error: %s\n' "$*" >&2
    exit 1
}

log() {
    printf 'capture-cli-fixtures.sh: %s\n' "$*" >&2
}

[[ -n ${SLURM_CONF:-} ]] || die "SLURM_CONF is not set; source DIR/env of scripts/slurm-cluster.sh"
[[ -z $(squeue --noheader --format=%A) ]] || die "the cluster has jobs; start a fresh cluster"

WORK_DIR=$(mktemp -d)
readonly WORK_DIR
trap 'rm -rf "$WORK_DIR"' EXIT
mkdir -p "$OUTPUT_DIR"

# capture_json NAME COMMAND...: the command must exit 0.
capture_json() {
    local name=$1
    shift
    "$@" >"$WORK_DIR/stdout" || die "$* exited with status $?"
    jq . "$WORK_DIR/stdout" >"$OUTPUT_DIR/$name.json"
    log "$* -> $name.json"
}

# capture_text NAME EXPECTED_STATUS COMMAND...: writes NAME.txt and NAME.stderr, each
# only when the command printed something there. The script goes on stdin.
capture_text() {
    local name=$1 expected=$2 status=0
    shift 2
    "$@" <"$WORK_DIR/script" >"$WORK_DIR/stdout" 2>"$WORK_DIR/stderr" || status=$?
    ((status == expected)) || die "$* exited with status $status, expected $expected: $(cat "$WORK_DIR/stderr")"
    rm -f "$OUTPUT_DIR/$name.txt" "$OUTPUT_DIR/$name.stderr"
    [[ -s $WORK_DIR/stdout ]] && cp "$WORK_DIR/stdout" "$OUTPUT_DIR/$name.txt"
    [[ -s $WORK_DIR/stderr ]] && cp "$WORK_DIR/stderr" "$OUTPUT_DIR/$name.stderr"
    log "$* -> $name (status $status)"
}

# submit NAME ARRAY: prints the job id. Even elements exit 0 and odd ones exit 3,
# after SLEEP_SECONDS.
submit() {
    sbatch --parsable --job-name="$1" --array="$2" --partition=gpu --gpus-per-node=1 \
        --nodes=1 --ntasks=1 --time=5 --chdir="$WORK_DIR" --output="$WORK_DIR/%A_%a.out" \
        --export=PATH,SPILLWAY_FIXTURE <"$WORK_DIR/script"
}

# Wait until the array has COUNT running elements.
wait_for_running() {
    local job_id=$1 count=$2 deadline=$((SECONDS + 60))
    while (($(squeue --noheader --jobs="$job_id" --states=RUNNING --format=%i 2>/dev/null | wc -l) < count)); do
        ((SECONDS < deadline)) || die "array $job_id did not start $count elements within 60 s"
        sleep 0.2
    done
}

# Wait until no job of the array is pending or running.
wait_for_array() {
    local job_id=$1 deadline=$((SECONDS + 60))
    while squeue --noheader --jobs="$job_id" --format=%T 2>/dev/null | grep -qE 'PENDING|RUNNING|COMPLETING'; do
        ((SECONDS < deadline)) || die "array $job_id did not finish within 60 s"
        sleep 0.5
    done
}

printf '#!/bin/sh\n' >"$WORK_DIR/script"
capture_json sinfo-idle sinfo --json
capture_text scontrol-ping 0 scontrol ping
capture_text scontrol-show-config 0 scontrol show config
capture_text scontrol-show-partition 0 scontrol --all --oneliner show partition
capture_text sdiag 0 sdiag

export PATH=/usr/bin:/bin SPILLWAY_FIXTURE=1
# shellcheck disable=SC2016 # the job's shell expands it
printf '#!/bin/sh\nsleep 2\nexit $(( SLURM_ARRAY_TASK_ID %% 2 * 3 ))\n' >"$WORK_DIR/script"
finishing_id=$(submit fixture-finishing 0-5%2)
printf '#!/bin/sh\nsleep 300\n' >"$WORK_DIR/script"
sleeping_id=$(submit fixture-cancelled 0-3%2)

# Both arrays run two elements at a time; four fake GPUs fit both.
wait_for_running "$finishing_id" 2
wait_for_running "$sleeping_id" 2
capture_json squeue-arrays-running squeue --json
capture_json sinfo-busy sinfo --json

capture_text scancel-sleeping 0 scancel --verbose "$sleeping_id"
sleep 1
capture_text scancel-ended 0 scancel --verbose "$sleeping_id"
capture_text scancel-unknown-job 0 scancel --verbose 999999

printf '#!/bin/sh\ntrue\n' >"$WORK_DIR/script"
capture_text sbatch-parsable 0 sbatch --parsable --array=0-1 --output=/dev/null
capture_text sbatch-invalid-partition 1 sbatch --parsable --array=0-1 --partition=nosuch
capture_text sbatch-impossible-gpus 1 sbatch --parsable --array=0-1 --gpus-per-node=5
capture_text sbatch-array-too-large 1 sbatch --parsable --array=0-5000

# A configuration whose slurmctld port nobody listens on. squeue and sinfo report the
# failure inside their JSON and exit 0; the others exit non-zero.
unused_port=$(python3 -c 'import socket
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])')
sed "s/^SlurmctldPort=.*/SlurmctldPort=$unused_port/" "$SLURM_CONF" >"$WORK_DIR/down.conf"
SLURM_CONF=$WORK_DIR/down.conf capture_text scontrol-ping-down 1 scontrol ping
SLURM_CONF=$WORK_DIR/down.conf capture_json squeue-controller-down squeue --json
SLURM_CONF=$WORK_DIR/down.conf capture_json sinfo-controller-down sinfo --json

wait_for_array "$finishing_id"
capture_json squeue-arrays-finished squeue --json
