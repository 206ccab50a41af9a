//! Malformed manifests: each case checks the path of the error, the rejected value and
//! the fix that `parse` reports.

use serde_json::{Value, json};
use spillway_common::manifest::{ManifestError, parse};

const EXAMPLE: &str = include_str!("../../docs/examples/embed-manifest.json");
const DIGEST: &str = "80a9517c7e13b3337a5f9c888d5ff88ae17fe23226ab015b8abca3e023307351";

fn example() -> Value {
    serde_json::from_str(EXAMPLE).expect("the example manifest is valid JSON")
}

/// Returns the example with the value at JSON pointer `pointer` replaced.
fn with(pointer: &str, value: Value) -> Value {
    let mut document = example();
    *document
        .pointer_mut(pointer)
        .unwrap_or_else(|| panic!("the example has no `{pointer}`")) = value;
    document
}

/// Returns the example with field `field` of the object at `parent` removed.
fn without(parent: &str, field: &str) -> Value {
    let mut document = example();
    let object = document
        .pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .unwrap_or_else(|| panic!("the example has no object at `{parent}`"));
    object.remove(field);
    document
}

fn errors_of_bytes(bytes: &[u8]) -> Vec<ManifestError> {
    match parse(bytes) {
        Ok(manifest) => panic!("expected errors, but the manifest parsed: {manifest:?}"),
        Err(errors) => errors.0,
    }
}

fn errors_of(document: &Value) -> Vec<ManifestError> {
    errors_of_bytes(&serde_json::to_vec(document).unwrap())
}

/// Returns the only error for `document`, failing when there are more.
fn single_error(document: &Value) -> ManifestError {
    let errors = errors_of(document);
    assert_eq!(errors.len(), 1, "expected one error, found {errors:#?}");
    errors.into_iter().next().unwrap()
}

fn error_at<'e>(errors: &'e [ManifestError], path: &str) -> &'e ManifestError {
    errors
        .iter()
        .find(|error| error.path == path)
        .unwrap_or_else(|| panic!("no error at `{path}` in {errors:#?}"))
}

#[track_caller]
fn assert_contains(text: &str, part: &str) {
    assert!(text.contains(part), "`{part}` not found in `{text}`");
}

#[test]
fn bad_json_reports_line_and_column() {
    let text = EXAMPLE.replacen("\"version\": 1,", "\"version\": 1", 1);
    let errors = errors_of_bytes(text.as_bytes());
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].path, "");
    assert_contains(&errors[0].problem, "invalid JSON");
    assert_contains(&errors[0].problem, "line 3");
    assert_contains(&errors[0].value, "\"name\"");
    assert_contains(&errors[0].fix, "line 3, column 3");
}

#[test]
fn truncated_json_asks_for_whole_file() {
    let errors = errors_of_bytes(&EXAMPLE.as_bytes()[..EXAMPLE.len() / 2]);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].path, "");
    assert_contains(&errors[0].problem, "EOF");
    assert_contains(&errors[0].fix, "ends early");
}

#[test]
fn empty_document_is_invalid_json() {
    let errors = errors_of_bytes(b"");
    assert_eq!(errors.len(), 1);
    assert_contains(&errors[0].problem, "invalid JSON");
}

#[test]
fn trailing_text_is_invalid_json() {
    let text = format!("{EXAMPLE}\n{{}}");
    let errors = errors_of_bytes(text.as_bytes());
    assert_eq!(errors.len(), 1);
    assert_contains(&errors[0].problem, "trailing characters");
}

#[test]
fn invalid_utf8_is_invalid_json() {
    let mut bytes = EXAMPLE.as_bytes().to_vec();
    let position = EXAMPLE.find("nlp").unwrap();
    bytes[position] = 0xff;
    let errors = errors_of_bytes(&bytes);
    assert_eq!(errors.len(), 1);
    assert_contains(&errors[0].problem, "invalid JSON");
    assert_contains(&errors[0].problem, "invalid unicode");
}

#[test]
fn array_document_is_not_an_object() {
    let error = single_error(&json!([example()]));
    assert_eq!(error.path, "");
    assert_contains(&error.problem, "expected an object, found an array");
    assert_contains(&error.value, "[{");
    assert_contains(&error.fix, "`records_per_task`");
}

#[test]
fn oversized_document_names_limit() {
    let padding = " ".repeat(4 * 1024 * 1024);
    let text = format!("{EXAMPLE}{padding}");
    let errors = errors_of_bytes(text.as_bytes());
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].path, "");
    assert_contains(&errors[0].problem, "4194304 bytes (4 MiB)");
    assert_contains(&errors[0].value, &format!("{} bytes", text.len()));
    assert_contains(&errors[0].fix, "split the job");
}

#[test]
fn unknown_top_level_field() {
    let mut document = example();
    document["colour"] = json!("blue");
    let error = single_error(&document);
    assert_eq!(error.path, "colour");
    assert_eq!(error.value, "\"blue\"");
    assert_contains(&error.problem, "unknown field `colour`");
    assert_contains(&error.fix, "remove it");
    assert_contains(&error.fix, "`records_per_task`");
    assert_contains(&error.fix, "`labels`");
}

#[test]
fn misspelled_field_suggests_name() {
    let mut document = without("", "records_per_task");
    document["records_per_tasks"] = json!(100);
    let errors = errors_of(&document);
    assert_eq!(errors.len(), 2, "{errors:#?}");
    let unknown = error_at(&errors, "records_per_tasks");
    assert_contains(&unknown.fix, "rename it to `records_per_task`");
    let missing = error_at(&errors, "records_per_task");
    assert_contains(&missing.problem, "missing required field");
    assert_eq!(missing.value, "");
    assert_contains(&missing.fix, "1 to 100000");
}

#[test]
fn unknown_nested_fields() {
    let mut document = example();
    document["inputs"][1]["checksum"] = json!("abc");
    document["kernel"]["batch_size"] = json!(64);
    let errors = errors_of(&document);
    assert_eq!(errors.len(), 2, "{errors:#?}");

    let shard = error_at(&errors, "inputs[1].checksum");
    assert_eq!(shard.value, "\"abc\"");
    assert_contains(&shard.fix, "in `inputs[1]`: `uri`, `sha256`, `records`");

    let kernel = error_at(&errors, "kernel.batch_size");
    assert_eq!(kernel.value, "64");
    assert_contains(&kernel.fix, "`name`, `max_seq_len`");
}

#[test]
fn unknown_kernel_lists_known_ones() {
    let error = single_error(&with("/kernel/name", json!("embedd")));
    assert_eq!(error.path, "kernel.name");
    assert_eq!(error.value, "\"embedd\"");
    assert_contains(&error.problem, "unknown kernel `embedd`");
    assert_contains(&error.fix, "did you mean `embed`?");
    assert_contains(&error.fix, "known kernels: `embed`");
}

#[test]
fn missing_kernel_name() {
    let error = single_error(&without("/kernel", "name"));
    assert_eq!(error.path, "kernel.name");
    assert_contains(&error.problem, "missing required field `name`");
    assert_contains(&error.fix, "`embed`");
}

#[test]
fn kernel_as_string_is_wrong_type() {
    let error = single_error(&with("/kernel", json!("embed")));
    assert_eq!(error.path, "kernel");
    assert_contains(&error.problem, "expected an object, found a string");
    assert_contains(&error.fix, "{\"name\": \"embed\"");
}

#[test]
fn max_seq_len_out_of_range() {
    let error = single_error(&with("/kernel/max_seq_len", json!(1024)));
    assert_eq!(error.path, "kernel.max_seq_len");
    assert_eq!(error.value, "1024");
    assert_contains(&error.problem, "must be from 1 to 512");
    assert_contains(&error.fix, "an integer from 1 to 512");
}

#[test]
fn missing_input_sha256() {
    let error = single_error(&without("/inputs/2", "sha256"));
    assert_eq!(error.path, "inputs[2].sha256");
    assert_eq!(error.value, "");
    assert_contains(&error.problem, "missing required field `sha256`");
    assert_contains(&error.fix, "sha256sum FILE");
}

#[test]
fn short_model_sha256() {
    let short = &DIGEST[..63];
    let error = single_error(&with("/model/sha256", json!(short)));
    assert_eq!(error.path, "model.sha256");
    assert_contains(&error.value, short);
    assert_contains(
        &error.problem,
        "expected 64 hexadecimal characters, found 63",
    );
    assert_contains(&error.fix, "64 characters 0-9 a-f");
}

#[test]
fn non_hex_input_sha256() {
    let not_hex = "z".repeat(64);
    let error = single_error(&with("/inputs/0/sha256", json!(not_hex)));
    assert_eq!(error.path, "inputs[0].sha256");
    assert_contains(&error.value, "zzzz");
    assert_contains(&error.problem, "0-9 and a-f");
    assert_contains(&error.fix, "the shard file");
}

#[test]
fn empty_inputs() {
    let error = single_error(&with("/inputs", json!([])));
    assert_eq!(error.path, "inputs");
    assert_eq!(error.value, "[]");
    assert_contains(&error.problem, "empty");
    assert_contains(&error.fix, "\"records\"");
}

#[test]
fn input_not_an_object() {
    let error = single_error(&with("/inputs/1", json!("part-00001.jsonl")));
    assert_eq!(error.path, "inputs[1]");
    assert_contains(&error.problem, "expected an object, found a string");
    assert_contains(&error.fix, "set `inputs[1]` to an object");
}

#[test]
fn zero_records_per_task() {
    let error = single_error(&with("/records_per_task", json!(0)));
    assert_eq!(error.path, "records_per_task");
    assert_eq!(error.value, "0");
    assert_contains(&error.problem, "invalid value 0");
    assert_contains(&error.fix, "an integer from 1 to 100000");
}

#[test]
fn fractional_records_per_task() {
    let error = single_error(&with("/records_per_task", json!(2.5)));
    assert_eq!(error.path, "records_per_task");
    assert_eq!(error.value, "2.5");
    assert_contains(
        &error.problem,
        "expected an integer, found a fractional number",
    );
}

#[test]
fn string_records_is_wrong_type() {
    let error = single_error(&with("/inputs/0/records", json!("50000")));
    assert_eq!(error.path, "inputs[0].records");
    assert_eq!(error.value, "\"50000\"");
    assert_contains(&error.problem, "expected an integer, found a string");
    assert_contains(&error.fix, "written without quotes");
}

#[test]
fn zero_records_in_shard() {
    let error = single_error(&with("/inputs/1/records", json!(0)));
    assert_eq!(error.path, "inputs[1].records");
    assert_contains(&error.problem, "must be at least 1");
}

#[test]
fn too_many_tasks_suggests_records_per_task() {
    let mut document = with("/inputs/0/records", json!(2_000_000_000_u64));
    document["records_per_task"] = json!(1000);
    let error = single_error(&document);
    assert_eq!(error.path, "records_per_task");
    assert_eq!(error.value, "1000");
    assert_contains(&error.problem, "2000063 tasks, the maximum is 1000000");
    assert_contains(&error.fix, "at least 2001");
}

#[test]
fn too_many_tasks_beyond_largest_batch() {
    let document = with("/inputs/0/records", json!(u64::MAX));
    let error = single_error(&document);
    assert_eq!(error.path, "records_per_task");
    assert_contains(&error.fix, "split the inputs into several jobs");
}

#[test]
fn image_with_tag_only() {
    let image = "ghcr.io/example-lab/spillway-worker:1.4.0";
    let error = single_error(&with("/worker/image", json!(image)));
    assert_eq!(error.path, "worker.image");
    assert_contains(&error.value, image);
    assert_contains(&error.problem, "not pinned by digest");
    assert_contains(
        &error.fix,
        "ghcr.io/example-lab/spillway-worker@sha256:<64 hex>",
    );
    assert_contains(&error.fix, "docker buildx imagetools inspect");
}

#[test]
fn image_with_short_digest() {
    let image = format!(
        "ghcr.io/example-lab/spillway-worker@sha256:{}",
        &DIGEST[..12]
    );
    let error = single_error(&with("/worker/image", json!(image)));
    assert_eq!(error.path, "worker.image");
    assert_contains(&error.problem, "invalid image digest");
    assert_contains(&error.fix, "64 characters");
}

#[test]
fn image_and_binary_both_set() {
    let mut document = example();
    document["worker"]["binary_sha256"] = json!(DIGEST);
    let error = single_error(&document);
    assert_eq!(error.path, "worker");
    assert_contains(&error.problem, "both `image` and `binary_sha256`");
    assert_contains(&error.fix, "remove the other");
}

#[test]
fn neither_image_nor_binary() {
    let error = single_error(&with("/worker", json!({})));
    assert_eq!(error.path, "worker");
    assert_contains(&error.problem, "neither `image` nor `binary_sha256`");
    assert_contains(&error.fix, "@sha256:<64 hex>");
    assert_contains(&error.fix, "sha256sum spillway-worker");
}

#[test]
fn deadline_without_offset() {
    let error = single_error(&with("/deadline", json!("2026-06-01T06:00:00")));
    assert_eq!(error.path, "deadline");
    assert_eq!(error.value, "\"2026-06-01T06:00:00\"");
    assert_contains(&error.problem, "invalid RFC 3339 time");
    assert_contains(&error.fix, "2026-12-05T06:00:00Z");
}

#[test]
fn deadline_as_date_only() {
    let error = single_error(&with("/deadline", json!("next friday")));
    assert_eq!(error.path, "deadline");
    assert_contains(&error.value, "next friday");
}

#[test]
fn input_with_https_scheme() {
    let uri = "https://example.org/data/part-00000.jsonl";
    let error = single_error(&with("/inputs/0/uri", json!(uri)));
    assert_eq!(error.path, "inputs[0].uri");
    assert_contains(&error.value, uri);
    assert_contains(&error.problem, "unsupported URI scheme `https`");
    assert_contains(&error.fix, "`file`, `s3`, `gs`");
}

#[test]
fn input_pointing_at_directory() {
    let uri = "s3://lab-data/pubmed/";
    let error = single_error(&with("/inputs/1/uri", json!(uri)));
    assert_eq!(error.path, "inputs[1].uri");
    assert_contains(&error.problem, "names a directory");
    assert_contains(&error.fix, "one JSONL file");
}

#[test]
fn file_uri_with_two_slashes() {
    let error = single_error(&with("/inputs/0/uri", json!("file://srv/data/a.jsonl")));
    assert_eq!(error.path, "inputs[0].uri");
    assert_contains(&error.problem, "`srv` is read as a host name");
    assert_contains(&error.fix, "file:///srv/data/a.jsonl");
}

#[test]
fn output_as_plain_path() {
    let error = single_error(&with("/output", json!("/srv/spillway/out/")));
    assert_eq!(error.path, "output");
    assert_contains(&error.problem, "invalid URI");
    assert_contains(&error.fix, "file:///srv/spillway/out/");
}

#[test]
fn model_uri_without_trailing_slash() {
    let uri = "file:///srv/spillway/models/all-MiniLM-L6-v2";
    let error = single_error(&with("/model/uri", json!(uri)));
    assert_eq!(error.path, "model.uri");
    assert_contains(&error.problem, "does not end in `/`");
    assert_contains(&error.fix, &format!("{uri}/"));
}

#[test]
fn duplicate_input_names_first() {
    let first_uri = example()["inputs"][0]["uri"].clone();
    let error = single_error(&with("/inputs/2/uri", first_uri));
    assert_eq!(error.path, "inputs[2].uri");
    assert_contains(&error.value, "part-00000.jsonl");
    assert_contains(&error.problem, "the same file as `inputs[0].uri`");
    assert_contains(&error.fix, "list each shard once");
}

#[test]
fn duplicate_input_after_normalisation() {
    let uri = "file:///srv/spillway/data/pubmed-2026-05/./part-00000.jsonl";
    let error = single_error(&with("/inputs/1/uri", json!(uri)));
    assert_eq!(error.path, "inputs[1].uri");
    assert_contains(&error.problem, "duplicate input");
}

#[test]
fn duplicate_json_key() {
    let text = EXAMPLE.replacen(
        "\"records_per_task\": 2048,",
        "\"records_per_task\": 2048,\n  \"records_per_task\": 4096,",
        1,
    );
    let errors = errors_of_bytes(text.as_bytes());
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].path, "records_per_task");
    assert_eq!(errors[0].value, "4096");
    assert_contains(&errors[0].problem, "duplicate field `records_per_task`");
}

#[test]
fn label_key_with_upper_case() {
    let mut document = example();
    document["labels"]["Team"] = json!("nlp");
    let error = single_error(&document);
    assert_eq!(error.path, "labels.Team");
    assert_eq!(error.value, "\"Team\"");
    assert_contains(&error.problem, "invalid label key `Team`");
    assert_contains(&error.fix, "such as `team`");
}

#[test]
fn label_value_too_long() {
    let long = "x".repeat(300);
    let error = single_error(&with("/labels/team", json!(long)));
    assert_eq!(error.path, "labels.team");
    assert_contains(&error.value, "xxxx");
    assert!(error.value.chars().count() <= 80, "{}", error.value);
    assert_contains(&error.problem, "300 characters");
}

#[test]
fn label_value_as_number() {
    let error = single_error(&with("/labels/team", json!(7)));
    assert_eq!(error.path, "labels.team");
    assert_contains(&error.problem, "expected a string, found an integer");
    assert_contains(&error.fix, "quoting numbers");
}

#[test]
fn too_many_labels() {
    let labels: serde_json::Map<String, Value> = (0..33)
        .map(|i| (format!("key-{i}"), json!("value")))
        .collect();
    let error = single_error(&with("/labels", Value::Object(labels)));
    assert_eq!(error.path, "labels");
    assert_contains(&error.problem, "too many labels: 33, the maximum is 32");
    assert_contains(&error.fix, "remove 1 labels");
}

#[test]
fn version_two_is_unsupported() {
    let error = single_error(&with("/version", json!(2)));
    assert_eq!(error.path, "version");
    assert_eq!(error.value, "2");
    assert_contains(&error.problem, "unsupported manifest version 2");
    assert_contains(&error.fix, "set `version` to 1");
}

#[test]
fn negative_gpus_per_worker() {
    let error = single_error(&with("/gpus_per_worker", json!(-1)));
    assert_eq!(error.path, "gpus_per_worker");
    assert_eq!(error.value, "-1");
    assert_contains(&error.problem, "must be from 0 to 16");
    assert_contains(&error.fix, "an integer from 0 to 16");
}

#[test]
fn max_attempts_out_of_range() {
    for attempts in [0, 21] {
        let error = single_error(&with("/max_attempts", json!(attempts)));
        assert_eq!(error.path, "max_attempts");
        assert_eq!(error.value, attempts.to_string());
        assert_contains(&error.fix, "from 1 to 20");
    }
}

#[test]
fn priority_out_of_range() {
    let error = single_error(&with("/priority", json!(101)));
    assert_eq!(error.path, "priority");
    assert_contains(&error.fix, "from -100 to 100");
}

#[test]
fn idempotency_key_empty() {
    let error = single_error(&with("/idempotency_key", json!("")));
    assert_eq!(error.path, "idempotency_key");
    assert_contains(&error.problem, "0 characters");
    assert_contains(&error.fix, "1 to 256 characters");
}

#[test]
fn idempotency_key_with_newline() {
    let error = single_error(&with("/idempotency_key", json!("run\n1")));
    assert_eq!(error.path, "idempotency_key");
    assert_contains(&error.problem, "control character '\\n'");
}

#[test]
fn name_with_space_suggests_dash() {
    let error = single_error(&with("/name", json!("pubmed abstracts")));
    assert_eq!(error.path, "name");
    assert_eq!(error.value, "\"pubmed abstracts\"");
    assert_contains(&error.problem, "invalid character ' '");
    assert_contains(&error.fix, "\"pubmed-abstracts\"");
}

#[test]
fn name_too_long() {
    let error = single_error(&with("/name", json!("n".repeat(129))));
    assert_eq!(error.path, "name");
    assert_contains(&error.problem, "129 characters");
}

#[test]
fn null_required_field() {
    let error = single_error(&with("/name", Value::Null));
    assert_eq!(error.path, "name");
    assert_eq!(error.value, "null");
    assert_contains(&error.problem, "expected a string, found null");
}

#[test]
fn missing_output() {
    let error = single_error(&without("", "output"));
    assert_eq!(error.path, "output");
    assert_contains(&error.problem, "missing required field `output`");
    assert_contains(&error.fix, "file:///srv/spillway/out/");
}

#[test]
fn many_problems_reported_together() {
    let mut document = example();
    document["version"] = json!(2);
    document["name"] = json!("");
    document["kernel"]["max_seq_len"] = json!(0);
    document["inputs"][1]["sha256"] = json!("abc");
    document["inputs"][2]["records"] = json!("many");
    document["records_per_task"] = json!(0);
    document["worker"]["image"] = json!("ubuntu:22.04");
    document["deadline"] = json!("tomorrow");
    document["labels"]["Bad Key"] = json!("x");
    document["extra"] = json!(true);

    let errors = errors_of(&document);
    let mut paths: Vec<&str> = errors.iter().map(|error| error.path.as_str()).collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        [
            "deadline",
            "extra",
            "inputs[1].sha256",
            "inputs[2].records",
            "kernel.max_seq_len",
            "labels[\"Bad Key\"]",
            "name",
            "records_per_task",
            "version",
            "worker.image",
        ]
    );
    for error in &errors {
        assert!(!error.problem.is_empty(), "{error:?}");
        assert!(!error.fix.is_empty(), "{error:?}");
    }
}

#[test]
fn errors_display_every_problem() {
    let mut document = example();
    document["version"] = json!(2);
    document["priority"] = json!(500);
    let errors = parse(&serde_json::to_vec(&document).unwrap()).unwrap_err();
    let text = errors.to_string();
    assert_contains(&text, "invalid manifest, 2 error(s):");
    assert_contains(&text, "version: unsupported manifest version 2");
    assert_contains(&text, "(value: 2); fix: set `version` to 1");
    assert_contains(&text, "priority: invalid value 500");
}

#[test]
fn docs_error_example_is_current() {
    let mut document = example();
    document["inputs"][2]["sha256"] = json!("abc");
    document["records_per_task"] = json!("100");
    document["worker"]["image"] = json!("ghcr.io/lab/w:1.0");
    let errors = parse(&serde_json::to_vec(&document).unwrap()).unwrap_err();

    let docs = include_str!("../../docs/manifest.md");
    let rendered = errors.to_string();
    assert!(
        docs.contains(&rendered),
        "update the error example in docs/manifest.md to:\n{rendered}"
    );
}

#[test]
fn error_list_is_capped() {
    let shards = vec![json!(1); 5000];
    let errors = errors_of(&with("/inputs", Value::Array(shards)));
    assert_eq!(errors.len(), 1001);
    assert_eq!(errors[999].path, "inputs[999]");
    let summary = &errors[1000];
    assert_eq!(summary.path, "");
    assert_contains(&summary.problem, "4000 more errors are not listed");
    assert_contains(&summary.fix, "validate the manifest again");
}

#[test]
fn deeply_nested_json_is_rejected() {
    let depth = 100_000;
    let text = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let errors = errors_of_bytes(text.as_bytes());
    assert_eq!(errors.len(), 1);
    assert_contains(&errors[0].problem, "recursion limit exceeded");
}
