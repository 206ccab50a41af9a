#!/usr/bin/env bash
# Fetch the OpenAPI document that a running slurmrestd serves and store it as JSON.
#
# Usage:
#   openapi/capture.sh [OUTPUT]
#
# Reads from the environment, as written by scripts/slurm-cluster.sh into DIR/env:
#   SLURMRESTD_URL       base URL, for example http://127.0.0.1:6820
#   SLURMRESTD_USER      user name sent in X-SLURM-USER-NAME
#   SLURM_JWT            a token for that user, or else
#   SLURM_TOKEN_COMMAND  a command that prints one (its output may start with SLURM_JWT=)
#
# OUTPUT defaults to openapi/slurmrestd-v0.0.38.raw.json beside this script. The
# document is written as slurmrestd sends it, only reindented by jq, so that a diff
# against another site's capture shows real differences. Run openapi/patch.py
# afterwards to refresh the patched document that the slurm crate generates from.
#
# Example against a private test cluster:
#   scripts/slurm-cluster.sh start /tmp/slurm && . /tmp/slurm/env && openapi/capture.sh

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly HERE
readonly OUTPUT=${1:-$HERE/slurmrestd-v0.0.38.raw.json}

die() {
    printf 'capture.sh: error: %s\n' "$*" >&2
    exit 1
}

[[ -n ${SLURMRESTD_URL:-} ]] || die "SLURMRESTD_URL is not set; source DIR/env of scripts/slurm-cluster.sh or export it"
[[ -n ${SLURMRESTD_USER:-} ]] || die "SLURMRESTD_USER is not set"

token=${SLURM_JWT:-}
if [[ -z $token ]]; then
    [[ -n ${SLURM_TOKEN_COMMAND:-} ]] || die "set SLURM_JWT to a token, or SLURM_TOKEN_COMMAND to a command that prints one"
    token=$(bash -c "$SLURM_TOKEN_COMMAND") || die "the token command failed: $SLURM_TOKEN_COMMAND"
    token=${token#SLURM_JWT=}
fi

tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT

status=$(curl --silent --show-error --max-time 30 --output "$tmp" --write-out '%{http_code}' \
    --header "X-SLURM-USER-NAME: $SLURMRESTD_USER" --header "X-SLURM-USER-TOKEN: $token" \
    "${SLURMRESTD_URL%/}/openapi/v3") || die "could not reach $SLURMRESTD_URL"
[[ $status == 200 ]] || die "GET $SLURMRESTD_URL/openapi/v3 returned HTTP $status: $(head -c 500 "$tmp")"

jq . "$tmp" >"$OUTPUT.tmp" || die "the response of GET /openapi/v3 is not JSON"
mv -f "$OUTPUT.tmp" "$OUTPUT"
printf 'capture.sh: wrote %s (OpenAPI %s, API version %s)\n' "$OUTPUT" \
    "$(jq -r .openapi "$OUTPUT")" "$(jq -r .info.version "$OUTPUT")" >&2
