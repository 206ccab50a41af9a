//! The walk over a manifest's sections: the field tables of each object and the checks
//! that involve more than one value, such as duplicate inputs and the task count.

use std::collections::HashMap;

use serde_json::Value;

use super::rules::{self, UriKind};
use super::training;
use super::walk::{
    Field, Object, Report, expects, field_path, index_path, list_names, variant_fields,
};
use crate::manifest::MANIFEST_VERSION;

pub(super) const MAX_INPUTS: usize = 100_000;
pub(super) const MAX_RECORDS_PER_TASK: i128 = 100_000;
pub(super) const MAX_TASKS_PER_JOB: u64 = 1_000_000;
pub(super) const MAX_LABELS: usize = 32;

pub(super) const MANIFEST_FIELDS: &[Field] = &[
    Field {
        name: "version",
        required: true,
        expects: "the integer 1",
    },
    Field {
        name: "name",
        required: true,
        expects: "1 to 128 characters of A-Z a-z 0-9 . _ -, such as \"pubmed-abstracts-2026-05\"",
    },
    Field {
        name: "kernel",
        required: true,
        expects: "an object naming the kernel and its settings, such as {\"name\": \"embed\", \"max_seq_len\": 256}",
    },
    Field {
        name: "training",
        required: false,
        expects: "an object with `rounds` or `epochs`, `tasks_per_round`, `optimizer` and `seed`, such as {\"rounds\": 100, \"tasks_per_round\": 4, \"optimizer\": {\"name\": \"adamw\", \"lr\": 2e-5}, \"seed\": 0}",
    },
    Field {
        name: "model",
        required: true,
        expects: "an object with the model directory `uri` and its `sha256`",
    },
    Field {
        name: "inputs",
        required: true,
        expects: "an array of 1 to 100000 shards, each {\"uri\": ..., \"sha256\": ..., \"records\": ...}",
    },
    Field {
        name: "records_per_task",
        required: true,
        expects: "an integer from 1 to 100000",
    },
    Field {
        name: "output",
        required: true,
        expects: "a URI with scheme file, s3 or gs, such as file:///srv/spillway/out/",
    },
    Field {
        name: "worker",
        required: true,
        expects: "an object with exactly one of `image` or `binary_sha256`",
    },
    Field {
        name: "gpus_per_worker",
        required: false,
        expects: "an integer from 0 to 16, or leave it out for 0",
    },
    Field {
        name: "deadline",
        required: false,
        expects: "an RFC 3339 time with an offset, such as \"2026-12-05T06:00:00Z\"",
    },
    Field {
        name: "max_attempts",
        required: false,
        expects: "an integer from 1 to 20, or leave it out for 3",
    },
    Field {
        name: "priority",
        required: false,
        expects: "an integer from -100 to 100, or leave it out for 0",
    },
    Field {
        name: "idempotency_key",
        required: false,
        expects: "a string of 1 to 256 characters without control characters",
    },
    Field {
        name: "labels",
        required: false,
        expects: "an object of at most 32 string values, such as {\"team\": \"nlp\"}",
    },
    Field {
        name: "notify",
        required: false,
        expects: "a notification target that the site accepts, such as \"sqs://sqs.eu-west-1.amazonaws.com/123456789012/job-notices\" or \"pubsub://projects/my-lab/topics/job-notices\"",
    },
];

/// Each known kernel's name and the fields its object may contain, `name` included.
pub(super) const KERNELS: &[(&str, &[Field])] = &[
    ("embed", EMBED_FIELDS),
    ("contrastive", training::CONTRASTIVE_FIELDS),
    ("prompt_tune", training::PROMPT_TUNE_FIELDS),
];

const EMBED_FIELDS: &[Field] = &[
    Field {
        name: "name",
        required: true,
        expects: "\"embed\"",
    },
    Field {
        name: "max_seq_len",
        required: false,
        expects: "an integer from 1 to 512, or leave it out for 256",
    },
];

pub(super) const MODEL_FIELDS: &[Field] = &[
    Field {
        name: "uri",
        required: true,
        expects: "a directory URI ending in `/`, such as \"file:///opt/models/all-MiniLM-L6-v2/\"",
    },
    Field {
        name: "sha256",
        required: true,
        expects: "the SHA-256 of the text that `sha256sum config.json model.safetensors tokenizer.json` prints in the model directory",
    },
];

pub(super) const SHARD_FIELDS: &[Field] = &[
    Field {
        name: "uri",
        required: true,
        expects: "the URI of one JSONL file with scheme file, s3 or gs",
    },
    Field {
        name: "sha256",
        required: true,
        expects: "the SHA-256 of the file as 64 characters 0-9 a-f, the first column of `sha256sum FILE`",
    },
    Field {
        name: "records",
        required: true,
        expects: "an integer of at least 1, the number of lines in the file",
    },
];

pub(super) const WORKER_FIELDS: &[Field] = &[
    Field {
        name: "image",
        required: false,
        expects: "an image pinned by digest, such as \"ghcr.io/lab/spillway-worker@sha256:<64 hex>\"",
    },
    Field {
        name: "binary_sha256",
        required: false,
        expects: "the SHA-256 of the spillway-worker binary, the first column of `sha256sum spillway-worker`",
    },
];

/// Walks the whole document and records every error in `report`.
pub(super) fn check_manifest(report: &mut Report, document: &Value) {
    let expects = format!(
        "one JSON object with the fields {}",
        list_names(MANIFEST_FIELDS.iter().map(|field| field.name))
    );
    let Some(top) = Object::open(report, "", document, MANIFEST_FIELDS, &expects) else {
        return;
    };

    check_version(report, &top);
    top.checked_string(report, "name", rules::job_name);
    if let Some(kernel) = top.get("kernel") {
        check_kernel(report, &top.path_of("kernel"), kernel);
    }
    if let Some(model) = top.get("model") {
        check_model(report, &top.path_of("model"), model);
    }
    let shard_records = top
        .get("inputs")
        .and_then(|inputs| check_inputs(report, &top.path_of("inputs"), inputs));
    let records_per_task = top.integer(report, "records_per_task", 1..=MAX_RECORDS_PER_TASK);
    let mut tasks = None;
    if let (Some(shard_records), Some(records_per_task)) = (&shard_records, records_per_task) {
        check_task_count(report, &top, shard_records, records_per_task);
        tasks = u64::try_from(records_per_task)
            .ok()
            .map(|per_task| task_count(shard_records, per_task));
    }
    training::check_training(report, &top, tasks, records_per_task);
    top.checked_string(report, "output", |uri| {
        rules::storage_uri(uri, UriKind::Prefix).map(drop)
    });
    if let Some(worker) = top.get("worker") {
        check_worker(report, &top.path_of("worker"), worker);
    }
    check_limits(report, &top);
    if let Some(labels) = top.get("labels") {
        check_labels(report, &top.path_of("labels"), labels);
    }
}

fn check_version(report: &mut Report, top: &Object) {
    let Some(version) = top.integer(report, "version", 0..=i128::from(u32::MAX)) else {
        return;
    };
    if version != i128::from(MANIFEST_VERSION) {
        report.reject(
            &top.path_of("version"),
            top.get("version"),
            format!("unsupported manifest version {version}: this build reads version {MANIFEST_VERSION}"),
            format!("set `version` to {MANIFEST_VERSION} and use the fields of manifest v{MANIFEST_VERSION}"),
        );
    }
}

/// Checks the scheduling and retry fields that are plain ranges or strings.
fn check_limits(report: &mut Report, top: &Object) {
    top.integer(report, "gpus_per_worker", 0..=16);
    top.integer(report, "max_attempts", 1..=20);
    top.integer(report, "priority", -100..=100);
    top.checked_string(report, "deadline", rules::deadline);
    top.checked_string(report, "idempotency_key", rules::idempotency_key);
    top.checked_string(report, "notify", rules::notify_target);
}

fn check_kernel(report: &mut Report, path: &str, kernel: &Value) {
    if !kernel.is_object() {
        let fix = format!("set `{path}` to {}", expects(MANIFEST_FIELDS, "kernel"));
        report.reject_type(path, kernel, "an object", fix);
        return;
    }
    let Some(fields) = variant_fields(report, path, kernel, KERNELS, "kernel") else {
        return;
    };
    let Some(settings) = Object::open(report, path, kernel, fields, "an object") else {
        return;
    };
    match kernel.get("name").and_then(Value::as_str) {
        Some("embed") => {
            settings.integer(report, "max_seq_len", 1..=512);
        }
        Some(name) => training::check_kernel_settings(report, &settings, name),
        None => {}
    }
}

fn check_model(report: &mut Report, path: &str, model: &Value) {
    let model_expects = expects(MANIFEST_FIELDS, "model");
    let Some(model) = Object::open(report, path, model, MODEL_FIELDS, model_expects) else {
        return;
    };
    model.checked_string(report, "uri", |uri| {
        rules::storage_uri(uri, UriKind::Directory).map(drop)
    });
    model.checked_string(report, "sha256", |sha256| {
        rules::sha256(sha256, "the model directory's `sha256sum` listing")
    });
}

/// Checks the input shards and returns each shard's record count when every shard's
/// count is valid.
fn check_inputs(report: &mut Report, path: &str, inputs: &Value) -> Option<Vec<u64>> {
    let Some(shards) = inputs.as_array() else {
        let fix = format!("set `{path}` to {}", expects(MANIFEST_FIELDS, "inputs"));
        report.reject_type(path, inputs, "an array", fix);
        return None;
    };
    if shards.is_empty() {
        report.reject(
            path,
            Some(inputs),
            "invalid inputs: the array is empty, so the job has no records",
            "list at least one shard: {\"uri\": \"file:///srv/data/part-00000.jsonl\", \"sha256\": \"<64 hex>\", \"records\": 10000}",
        );
        return None;
    }
    if shards.len() > MAX_INPUTS {
        report.reject(
            path,
            Some(inputs),
            format!(
                "too many inputs: {} shards, the maximum is {MAX_INPUTS}",
                shards.len()
            ),
            "merge small shards into larger files, or split the job into several manifests",
        );
    }

    let mut first_index_of_uri: HashMap<String, usize> = HashMap::new();
    let mut records = Some(Vec::with_capacity(shards.len()));
    for (index, shard) in shards.iter().enumerate() {
        let shard_records = check_shard(
            report,
            &index_path(path, index),
            shard,
            index,
            &mut first_index_of_uri,
        );
        match (shard_records, records.as_mut()) {
            (Some(count), Some(all)) => all.push(count),
            _ => records = None,
        }
    }
    records
}

/// Checks one shard and returns its record count when valid. `first_index_of_uri` maps
/// each normalised URI seen so far to the index of the shard that listed it first.
fn check_shard(
    report: &mut Report,
    path: &str,
    shard: &Value,
    index: usize,
    first_index_of_uri: &mut HashMap<String, usize>,
) -> Option<u64> {
    let expects = "an object {\"uri\": ..., \"sha256\": ..., \"records\": ...}";
    let shard = Object::open(report, path, shard, SHARD_FIELDS, expects)?;

    if let Some(uri) = shard.string(report, "uri") {
        let uri_path = shard.path_of("uri");
        match rules::storage_uri(uri, UriKind::File) {
            Ok(url) => {
                if let Some(first) = first_index_of_uri.get(url.as_str()) {
                    report.reject(
                        &uri_path,
                        Some(&Value::from(uri)),
                        format!(
                            "duplicate input: the same file as `{}`",
                            field_path(&index_path("inputs", *first), "uri")
                        ),
                        "list each shard once: remove this entry or point it at another file",
                    );
                } else {
                    first_index_of_uri.insert(url.to_string(), index);
                }
            }
            Err(invalid) => report.check(&uri_path, &Value::from(uri), Err(invalid)),
        }
    }
    shard.checked_string(report, "sha256", |sha256| {
        rules::sha256(sha256, "the shard file")
    });
    let records = shard.integer(report, "records", 1..=i128::from(u64::MAX))?;
    u64::try_from(records).ok()
}

/// Rejects a job that would slice into more than [`MAX_TASKS_PER_JOB`] tasks. A task
/// never spans two shards, so each shard contributes `ceil(records / records_per_task)`.
fn check_task_count(
    report: &mut Report,
    top: &Object,
    shard_records: &[u64],
    records_per_task: i128,
) {
    let Ok(records_per_task) = u64::try_from(records_per_task) else {
        return;
    };
    let tasks = task_count(shard_records, records_per_task);
    if tasks <= MAX_TASKS_PER_JOB {
        return;
    }

    let largest = MAX_RECORDS_PER_TASK as u64;
    let fix = if task_count(shard_records, largest) > MAX_TASKS_PER_JOB {
        format!(
            "split the inputs into several jobs: even {largest} records per task gives {} tasks",
            task_count(shard_records, largest)
        )
    } else {
        let smallest_fitting = smallest_records_per_task(shard_records, records_per_task, largest);
        format!(
            "raise `records_per_task` to at least {smallest_fitting}, or split the inputs into several jobs"
        )
    };
    report.reject(
        &top.path_of("records_per_task"),
        top.get("records_per_task"),
        format!(
            "too many tasks: the job slices into {tasks} tasks, the maximum is {MAX_TASKS_PER_JOB}"
        ),
        fix,
    );
}

fn task_count(shard_records: &[u64], records_per_task: u64) -> u64 {
    shard_records
        .iter()
        .map(|records| records.div_ceil(records_per_task))
        .fold(0, u64::saturating_add)
}

/// Finds the smallest `records_per_task` in `low..=high` that keeps the task count
/// within the limit. Binary search works because the count never grows as
/// `records_per_task` grows.
fn smallest_records_per_task(shard_records: &[u64], mut low: u64, mut high: u64) -> u64 {
    while low < high {
        let middle = low + (high - low) / 2;
        if task_count(shard_records, middle) <= MAX_TASKS_PER_JOB {
            high = middle;
        } else {
            low = middle + 1;
        }
    }
    low
}

fn check_worker(report: &mut Report, path: &str, worker: &Value) {
    let worker_expects = expects(MANIFEST_FIELDS, "worker");
    let Some(worker) = Object::open(report, path, worker, WORKER_FIELDS, worker_expects) else {
        return;
    };
    worker.checked_string(report, "image", rules::image);
    worker.checked_string(report, "binary_sha256", |binary| {
        rules::sha256(binary, "the spillway-worker binary")
    });

    let image_set = worker.get("image").is_some();
    let binary_set = worker.get("binary_sha256").is_some();
    if image_set && binary_set {
        report.reject(
            worker.path(),
            None,
            "invalid worker: both `image` and `binary_sha256` are set, but a job runs exactly one worker build",
            "keep `image` to run the worker in that container, or `binary_sha256` to run the installed spillway-worker binary, and remove the other",
        );
    } else if !image_set && !binary_set {
        report.reject(
            worker.path(),
            None,
            "missing worker build: neither `image` nor `binary_sha256` is set",
            format!(
                "add `image`: {}, or `binary_sha256`: {}",
                expects(WORKER_FIELDS, "image"),
                expects(WORKER_FIELDS, "binary_sha256")
            ),
        );
    }
}

fn check_labels(report: &mut Report, path: &str, labels: &Value) {
    let Some(labels) = labels.as_object() else {
        let fix = format!("set `{path}` to {}", expects(MANIFEST_FIELDS, "labels"));
        report.reject_type(path, labels, "an object", fix);
        return;
    };
    if labels.len() > MAX_LABELS {
        report.reject(
            path,
            None,
            format!(
                "too many labels: {}, the maximum is {MAX_LABELS}",
                labels.len()
            ),
            format!("remove {} labels", labels.len() - MAX_LABELS),
        );
    }

    for (key, value) in labels {
        let label_path = field_path(path, key);
        report.check(
            &label_path,
            &Value::from(key.as_str()),
            rules::label_key(key),
        );
        match value.as_str() {
            Some(text) => report.check(&label_path, value, rules::label_value(text)),
            None => {
                let fix = format!(
                    "set `{label_path}` to a string of at most 256 characters, quoting numbers and booleans"
                );
                report.reject_type(&label_path, value, "a string", fix);
            }
        }
    }
}
