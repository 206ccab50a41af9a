#!/usr/bin/env python3
"""Patch slurmrestd's OpenAPI document so that progenitor generates a client from it
and so that the client accepts what slurmrestd really sends.

Usage:
    python3 openapi/patch.py           # write openapi/slurmrestd-v0.0.38.json
    python3 openapi/patch.py --check   # exit 1 when that file differs from a fresh patch

Input: openapi/slurmrestd-v0.0.38.raw.json, captured by openapi/capture.sh from
Debian 12's slurmrestd 22.05.8 started with `-s openapi/v0.0.38`. Each function below
is one change, and its docstring names the progenitor 0.15 error or the server
response that makes it necessary. The captured responses in slurm/tests/fixtures/ are
deserialized into the generated types by the crate's tests, which is how the
"matches the server" changes are checked.

Known differences that are left alone because the generated client still parses the
response and Spillway reads none of those fields: `job_resources.allocated_nodes[]
.sockets` is a map keyed by socket id on the wire, not an object with `cores`, and
job records carry keys that the document does not declare (`group_name`, `prefer`,
`tasks_per_node`), which serde ignores.
"""

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RAW = HERE / "slurmrestd-v0.0.38.raw.json"
PATCHED = HERE / "slurmrestd-v0.0.38.json"

API = "v0.0.38"
SCHEMAS = "#/components/schemas/"
ERROR_BODY = f"{API}_errors"
JSON = "application/json"

# Schemas that only describe request bodies. Their properties stay as declared,
# because the client writes them and slurmrestd rejects null values there.
REQUEST_SCHEMAS = {f"{API}_job_properties", f"{API}_job_submission"}


def operations(spec):
    """Yield (path, method, operation) for every operation in the document."""
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if isinstance(operation, dict) and "responses" in operation:
                yield path, method, operation


def drop_openapi_paths(spec):
    """Remove /openapi, /openapi.json, /openapi.yaml and /openapi/v3.

    They have no operationId, which progenitor requires ("path /openapi.yaml is
    missing operation ID"), and the client has no use for them: openapi/capture.sh
    fetches the document with curl.
    """
    for path in [p for p in spec["paths"] if p == "/openapi" or p.startswith("/openapi.") or p.startswith("/openapi/")]:
        del spec["paths"][path]


def keep_json_media_type(spec):
    """Keep only application/json in request bodies and responses.

    slurmrestd offers each body as JSON and as application/x-yaml, and progenitor
    supports one media type per request body ("not yet implemented: more media types
    than expected for slurm_v0_0_38_update_job: 2"). The client speaks JSON only.
    """
    for _, _, operation in operations(spec):
        bodies = [operation.get("requestBody")] + list(operation["responses"].values())
        for body in bodies:
            if body and "content" in body:
                body["content"] = {JSON: body["content"][JSON]}


def describe_error_body(spec):
    """Make `v0.0.38_errors` the object that slurmrestd sends on failure.

    The document declares it as a bare array of errors. On the wire every failed
    request returns an object `{"meta": …, "errors": [...]}`, for example HTTP 500
    for an invalid partition on job submit.
    """
    spec["components"]["schemas"][ERROR_BODY] = {
        "type": "object",
        "description": "Body of a failed request: plugin metadata and the errors",
        "properties": {
            "meta": {"$ref": f"{SCHEMAS}{API}_meta"},
            "errors": {
                "type": "array",
                "description": "slurm errors",
                "items": {"$ref": f"{SCHEMAS}{API}_error"},
            },
        },
    }


def add_error_fields(spec):
    """Declare the error fields that slurmrestd 22.05 sends but the document omits.

    The error number comes as `error_number`, `error_code` (job submit) or `errno`
    (nodes, partitions) depending on the operation, and most errors also carry a
    human-readable `description` and the failing Slurm call as `source`. A parse
    failure of the request body sends an entry with only `description` and `source`.
    """
    properties = spec["components"]["schemas"][f"{API}_error"]["properties"]
    properties["error_code"] = {"type": "integer", "description": "Slurm error number (job submit)"}
    properties["errno"] = {"type": "integer", "description": "Slurm error number (nodes, partitions)"}
    properties["description"] = {"type": "string", "description": "details of the error"}
    properties["source"] = {"type": "string", "description": "Slurm function that failed"}


def type_error_responses(spec):
    """Replace `default` and bare 500 responses with typed 400 and 500 responses.

    progenitor treats `default` as both a success and an error response, so a
    `default` whose type differs from the 200 response fails its assertion
    `response_types.len() <= 1`. slurmrestd sends the error body with HTTP 400 when
    it cannot parse a request and with HTTP 500 for every Slurm error, including an
    unknown job id, an invalid partition and a rejected token. Other statuses stay
    undeclared on purpose: the 401 for a missing token has a plain-text body, and
    progenitor reports an undeclared status with the status code, where a declared
    one whose body fails to parse loses it.
    """
    error_response = {
        "description": "the request failed; the body lists the errors",
        "content": {JSON: {"schema": {"$ref": f"{SCHEMAS}{ERROR_BODY}"}}},
    }
    for _, _, operation in operations(spec):
        responses = operation["responses"]
        responses.pop("default", None)
        responses["400"] = error_response
        responses["500"] = error_response


def type_empty_success_responses(spec):
    """Give the 200 responses of job update and job cancel the error-body type.

    The document declares them without content, but slurmrestd sends
    `{"meta": …, "errors": []}`, so the client can see errors sent with HTTP 200.
    """
    for path, method, operation in operations(spec):
        ok = operation["responses"].get("200")
        if ok is not None and "content" not in ok:
            ok["content"] = {JSON: {"schema": {"$ref": f"{SCHEMAS}{ERROR_BODY}"}}}


def fix_boolean_default(spec):
    """Turn the string default "false" of `oversubscribe` into the boolean false.

    progenitor rejects a default whose type differs from the schema's type ("value
    does not conform to the given schema").
    """
    oversubscribe = spec["components"]["schemas"][f"{API}_job_properties"]["properties"]["oversubscribe"]
    assert oversubscribe["default"] == "false", oversubscribe
    oversubscribe["default"] = False


def drop_signal_pattern(spec):
    """Remove the pattern of the `signal` job property.

    The pattern `(B:|)sig_num(@sig_time|)` is usage text, not a regular expression
    for real values: it matches only the literal word sig_num, so the generated
    string type would reject every real value such as `B:USR1@60`.
    """
    signal = spec["components"]["schemas"][f"{API}_job_properties"]["properties"]["signal"]
    del signal["pattern"]


def fix_version_integers(spec):
    """Declare `meta.Slurm.version.{major,micro,minor}` as integers.

    The document declares strings, but slurmrestd sends `{"major": 22, "micro": 8,
    "minor": 5}`, which a string field fails to deserialize.
    """
    version = spec["components"]["schemas"][f"{API}_meta"]["properties"]["Slurm"]["properties"]["version"]
    for part in ("major", "micro", "minor"):
        version["properties"][part]["type"] = "integer"


def rename_min_nodes_per_job(spec):
    """Rename the partition property `min_nodes_per_job` to `min nodes per job`.

    slurmrestd 22.05 sends the key with spaces, so the declared name never appears.
    """
    properties = spec["components"]["schemas"][f"{API}_partition"]["properties"]
    properties["min nodes per job"] = properties.pop("min_nodes_per_job")


def make_response_properties_nullable(spec):
    """Mark every property of every response schema as nullable.

    slurmrestd 22.05 writes null for any value that is unset in Slurm, whatever the
    declared type: `array_task_id` of an array's pending parent record, `profile`
    (an array), `cpus_per_task`, `time_limit` of a job without one, `owner` of a
    node, `default_time_limit` of a partition. Which fields are null depends on the
    job's state and request, so a list of fields would break on the next job.
    """

    def visit(schema):
        if not isinstance(schema, dict):
            return
        for child in schema.get("properties", {}).values():
            if "$ref" not in child:
                child["nullable"] = True
            visit(child)
        visit(schema.get("items"))

    for name, schema in spec["components"]["schemas"].items():
        if name not in REQUEST_SCHEMAS:
            visit(schema)


PATCHES = [
    drop_openapi_paths,
    keep_json_media_type,
    describe_error_body,
    add_error_fields,
    type_error_responses,
    type_empty_success_responses,
    fix_boolean_default,
    drop_signal_pattern,
    fix_version_integers,
    rename_min_nodes_per_job,
    make_response_properties_nullable,
]


def patched_text(raw_text):
    """Return the patched document as text, formatted like openapi/capture.sh's output."""
    spec = json.loads(raw_text)
    for patch in PATCHES:
        patch(spec)
    return json.dumps(spec, indent=2, ensure_ascii=False) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help=f"exit 1 when {PATCHED.name} is not the patch of {RAW.name}")
    args = parser.parse_args()

    text = patched_text(RAW.read_text())
    if args.check:
        if not PATCHED.exists() or PATCHED.read_text() != text:
            print(f"{PATCHED} is stale; run: python3 openapi/patch.py", file=sys.stderr)
            return 1
        return 0
    PATCHED.write_text(text)
    print(f"wrote {PATCHED}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
