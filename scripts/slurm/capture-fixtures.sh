#!/usr/bin/env bash
# Capture slurmrestd responses as test fixtures for the slurm crate.
#
# Usage:
#   scripts/slurm/capture-fixtures.sh [OUTPUT_DIR]
#
# Needs a running cluster from scripts/slurm-cluster.sh, ideally a fresh one, because
# the job listings contain every job the cluster still remembers. Source its env
# file first (SLURMRESTD_URL, SLURMRESTD_USER, SLURM_TOKEN_COMMAND, SLURM_CONF).
# OUTPUT_DIR defaults to slurm/tests/fixtures. Each file contains one response body
# as slurmrestd sent it, reindented by jq. Files named error-* contain the bodies of
# failed requests. The jobs run as SLURMRESTD_USER in a temporary folder. Takes about 20 s.

set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
readonly REPO
readonly OUTPUT_DIR=${1:-$REPO/slurm/tests/fixtures}
readonly API=slurm/v0.0.38

die() {
    printf 'capture-fixtures.sh: error: %s\n' "$*" >&2
    exit 1
}

for name in SLURMRESTD_URL SLURMRESTD_USER SLURM_TOKEN_COMMAND SLURM_CONF; do
    [[ -n ${!name:-} ]] || die "$name is not set; source DIR/env of scripts/slurm-cluster.sh"
done

TOKEN=$("$SLURM_TOKEN_COMMAND" 600)
readonly TOKEN
WORK_DIR=$(mktemp -d)
readonly WORK_DIR
trap 'rm -rf "$WORK_DIR"' EXIT
# The jobs run as SLURMRESTD_USER and write their output here.
chmod 777 "$WORK_DIR"
mkdir -p "$OUTPUT_DIR"

# request METHOD PATH EXPECTED_STATUS OUTPUT_NAME [BODY] [TOKEN]
request() {
    local method=$1 path=$2 expected=$3 name=$4 body=${5:-} token=${6:-$TOKEN} status
    local args=(--silent --show-error --max-time 30 --request "$method" --output "$WORK_DIR/response"
        --write-out '%{http_code}' --header "X-SLURM-USER-NAME: $SLURMRESTD_USER"
        --header "X-SLURM-USER-TOKEN: $token")
    [[ -n $body ]] && args+=(--header 'Content-Type: application/json' --data "$body")
    status=$(curl "${args[@]}" "$SLURMRESTD_URL/$API/$path")
    [[ $status == "$expected" ]] ||
        die "$method $path returned HTTP $status, expected $expected: $(head -c 300 "$WORK_DIR/response")"
    jq . "$WORK_DIR/response" >"$OUTPUT_DIR/$name.json"
    printf 'capture-fixtures.sh: %s %s -> %s (%s.json)\n' "$method" "$path" "$status" "$name" >&2
}

# submission NAME ARRAY SCRIPT [EXTRA_JOB_FIELDS]: a job submission body as JSON.
submission() {
    jq -n --arg name "$1" --arg array "$2" --arg script "$3" --arg dir "$WORK_DIR" \
        --argjson extra "${4:-{\}}" '{
            script: $script,
            job: ({
                name: $name,
                array: $array,
                partition: "gpu",
                gpus_per_node: "1",
                time_limit: 5,
                current_working_directory: $dir,
                standard_output: ($dir + "/%A_%a.out"),
                environment: {PATH: "/usr/bin:/bin", SPILLWAY_FIXTURE: "1"}
            } + $extra)
        }'
}

job_id_of() {
    jq -r .job_id "$OUTPUT_DIR/$1.json"
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

request GET ping 200 ping
request GET nodes 200 nodes
request GET partitions 200 partitions
request GET diag 200 diag

# Even elements exit 0 and odd ones exit 3, so the finished listing has both.
finishing_script=$'#!/bin/sh\nsleep 2\nexit $(( SLURM_ARRAY_TASK_ID % 2 * 3 ))\n'
request POST job/submit 200 submit "$(submission fixture-finishing 0-5%2 "$finishing_script")"
finishing_id=$(job_id_of submit)

sleeping_script=$'#!/bin/sh\nsleep 300\n'
request POST job/submit 200 submit-sleeping "$(submission fixture-cancelled 0-3%2 "$sleeping_script")"
sleeping_id=$(job_id_of submit-sleeping)

# Both arrays run two elements at a time; four fake GPUs fit both.
wait_for_running "$finishing_id" 2
wait_for_running "$sleeping_id" 2
request GET jobs 200 jobs-arrays-running
request GET "job/$finishing_id" 200 job-array-running

request DELETE "job/$sleeping_id" 200 cancel
sleep 1
# The running elements end as CANCELLED with wait status 15 (SIGTERM); the pending
# ones stay collapsed in the parent record, which ends as CANCELLED too.
request GET "job/$sleeping_id" 200 job-array-cancelled

request POST job/submit 500 error-invalid-partition \
    "$(submission fixture-bad-partition 0-1 "$finishing_script" '{"partition": "nosuch"}')"
request POST job/submit 500 error-impossible-gres \
    "$(submission fixture-five-gpus 0-1 "$finishing_script" '{"gpus_per_node": "5"}')"
request POST job/submit 400 error-unknown-key \
    "$(submission fixture-unknown-key 0-1 "$finishing_script" '{"bogus_key": 1}')"
request GET job/999999 500 error-job-not-found
request DELETE job/999999 500 error-cancel-job-not-found

expired=$("$SLURM_TOKEN_COMMAND" 1)
sleep 2
request GET ping 500 error-expired-token-ping "" "$expired"
request GET nodes 500 error-expired-token-nodes "" "$expired"
request GET jobs 500 error-expired-token-jobs "" "$expired"
request DELETE "job/$finishing_id" 500 error-expired-token-cancel "" "$expired"

wait_for_array "$finishing_id"
request GET jobs 200 jobs-arrays-finished
