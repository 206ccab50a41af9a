//! Valid manifests: the documented example, defaults, accepted spellings and values
//! that look suspicious but are allowed.

use serde_json::{Value, json};
use spillway_common::digest::Sha256Hex;
use spillway_common::manifest::{DEFAULT_MAX_ATTEMPTS, Kernel, Manifest, parse};
use spillway_common::task::{is_job_id, job_id, slice};

const EXAMPLE: &str = include_str!("../../docs/examples/embed-manifest.json");
const DIGEST: &str = "cfced6941c133df2e9b36fe30b8cd70e63c3988953e4620530f411f3e09911cc";

fn example() -> Value {
    serde_json::from_str(EXAMPLE).expect("the example manifest is valid JSON")
}

fn parse_value(document: &Value) -> Manifest {
    parse(&serde_json::to_vec(document).unwrap()).unwrap_or_else(|errors| panic!("{errors}"))
}

/// Returns the smallest valid manifest: required fields only.
fn minimal() -> Value {
    json!({
        "version": 1,
        "name": "minimal",
        "kernel": {"name": "embed"},
        "model": {
            "uri": "s3://lab-models/all-MiniLM-L6-v2/",
            "sha256": DIGEST
        },
        "inputs": [
            {"uri": "gs://lab-data/part-00000.jsonl", "sha256": DIGEST, "records": 10}
        ],
        "records_per_task": 4,
        "output": "s3://lab-out/minimal",
        "worker": {"binary_sha256": DIGEST}
    })
}

#[test]
fn example_manifest_parses() {
    let manifest = parse(EXAMPLE.as_bytes()).unwrap_or_else(|errors| panic!("{errors}"));
    assert_eq!(manifest.name, "pubmed-abstracts-2026-05");
    assert_eq!(manifest.kernel, Kernel::Embed { max_seq_len: 256 });
    assert_eq!(manifest.inputs.len(), 3);
    assert_eq!(manifest.total_records(), 112_731);
    assert_eq!(manifest.labels["team"], "nlp");
    assert!(is_job_id(&job_id(&manifest)));
}

#[test]
fn example_job_id_matches_docs() {
    // docs/manifest.md derives this id by hand with `printf … | sha256sum`.
    let manifest = parse(EXAMPLE.as_bytes()).unwrap();
    assert_eq!(job_id(&manifest), "j-0411eee70e1fabec566c");
}

#[test]
fn job_id_ignores_layout_and_defaults() {
    let mut document = minimal();
    let compact = parse_value(&document);
    document["priority"] = json!(0);
    document["gpus_per_worker"] = json!(0);
    document["kernel"]["max_seq_len"] = json!(256);
    let explicit = parse(serde_json::to_string_pretty(&document).unwrap().as_bytes()).unwrap();
    assert_eq!(job_id(&explicit), job_id(&compact));
}

// NOTE: `max_attempts` is serialized only when set, so writing the default value
// changes the job id. docs/manifest.md states this, and the test keeps the two in step.
#[test]
fn job_id_depends_on_explicit_max_attempts() {
    let mut document = minimal();
    let implicit = parse_value(&document);
    document["max_attempts"] = json!(DEFAULT_MAX_ATTEMPTS);
    let explicit = parse_value(&document);
    assert_eq!(explicit.max_attempts(), implicit.max_attempts());
    assert_ne!(job_id(&explicit), job_id(&implicit));
}

#[test]
fn example_slices_into_expected_tasks() {
    let manifest = parse(EXAMPLE.as_bytes()).unwrap();
    let tasks = slice(&manifest);
    // 50000 / 2048 rounds up to 25 tasks per full shard, 12731 / 2048 to 7.
    assert_eq!(tasks.len(), 25 + 25 + 7);
    assert_eq!(tasks[24].records, 50_000 - 24 * 2048);
    assert_eq!(tasks[25].first_record, 0);
}

#[test]
fn minimal_manifest_gets_defaults() {
    let manifest = parse_value(&minimal());
    assert_eq!(manifest.kernel, Kernel::Embed { max_seq_len: 256 });
    assert_eq!(manifest.gpus_per_worker, 0);
    assert_eq!(manifest.priority, 0);
    assert_eq!(manifest.max_attempts(), DEFAULT_MAX_ATTEMPTS);
    assert_eq!(manifest.deadline, None);
    assert!(manifest.labels.is_empty());
}

#[test]
fn null_optional_fields_count_as_absent() {
    let mut document = minimal();
    for field in [
        "gpus_per_worker",
        "deadline",
        "max_attempts",
        "priority",
        "idempotency_key",
        "labels",
    ] {
        document[field] = Value::Null;
    }
    document["kernel"]["max_seq_len"] = Value::Null;
    document["worker"]["image"] = Value::Null;
    assert_eq!(parse_value(&document), parse_value(&minimal()));
}

#[test]
fn past_deadline_is_accepted() {
    let mut document = minimal();
    document["deadline"] = json!("2001-01-01T00:00:00+09:00");
    let manifest = parse_value(&document);
    assert_eq!(
        manifest.deadline.as_deref(),
        Some("2001-01-01T00:00:00+09:00")
    );
}

#[test]
fn prefixed_upper_case_digest_is_normalised() {
    let mut document = minimal();
    document["inputs"][0]["sha256"] = json!(format!("sha256:{}", DIGEST.to_ascii_uppercase()));
    let manifest = parse_value(&document);
    assert_eq!(manifest.inputs[0].sha256, Sha256Hex::parse(DIGEST).unwrap());
}

#[test]
fn byte_order_mark_is_ignored() {
    let mut bytes = b"\xEF\xBB\xBF".to_vec();
    bytes.extend_from_slice(EXAMPLE.as_bytes());
    assert_eq!(parse(&bytes).unwrap(), parse(EXAMPLE.as_bytes()).unwrap());
}

#[test]
fn image_with_tag_and_digest_is_accepted() {
    let mut document = example();
    document["worker"]["image"] = json!(format!("localhost:5000/lab/worker:1.4.0@sha256:{DIGEST}"));
    parse_value(&document);
}

#[test]
fn label_keys_with_dots_are_accepted() {
    let mut document = minimal();
    document["labels"] = json!({"lab.example.org-team_1": "", "cost-centre": "4711"});
    let manifest = parse_value(&document);
    assert_eq!(manifest.labels.len(), 2);
}

#[test]
fn idempotency_key_may_use_unicode() {
    let mut document = minimal();
    document["idempotency_key"] = json!("Lauf 2026-05 für Größe ä");
    parse_value(&document);
}

#[test]
fn task_limit_is_inclusive() {
    let mut document = minimal();
    document["inputs"][0]["records"] = json!(1_000_000_u64);
    document["records_per_task"] = json!(1);
    assert_eq!(slice(&parse_value(&document)).len(), 1_000_000);
}
