//! Property tests: `parse` never panics, accepts every manifest built within the
//! documented limits, and slicing and job ids behave as the task module promises.

use std::collections::{BTreeMap, HashSet};

use proptest::prelude::*;
use serde_json::Value;
use spillway_common::digest::Sha256Hex;
use spillway_common::manifest::{Kernel, Manifest, ModelRef, ShardRef, WorkerRef, parse};
use spillway_common::task::{job_id, slice, task_id};

const EXAMPLE: &str = include_str!("../../docs/examples/embed-manifest.json");

fn digest() -> impl Strategy<Value = Sha256Hex> {
    "[0-9a-f]{64}".prop_map(|hex| Sha256Hex::parse(&hex).unwrap())
}

fn shards() -> impl Strategy<Value = Vec<ShardRef>> {
    prop::collection::vec((digest(), 1_u64..2_000), 1..12).prop_map(|shards| {
        shards
            .into_iter()
            .enumerate()
            .map(|(index, (sha256, records))| ShardRef {
                uri: format!("s3://lab-data/run/part-{index:05}.jsonl"),
                sha256,
                records,
            })
            .collect()
    })
}

fn worker() -> impl Strategy<Value = WorkerRef> {
    prop_oneof![
        digest().prop_map(|binary| WorkerRef {
            image: None,
            binary_sha256: Some(binary),
        }),
        ("[a-z0-9]{1,10}(/[a-z0-9]{1,10}){0,2}", "[0-9a-f]{64}").prop_map(|(name, hex)| {
            WorkerRef {
                image: Some(format!("ghcr.io/{name}@sha256:{hex}")),
                binary_sha256: None,
            }
        }),
    ]
}

fn notify_target() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9.-]{1,40}(:[0-9]{1,5})?/[0-9]{12}/[A-Za-z0-9_-]{1,80}"
            .prop_map(|rest| format!("sqs://{rest}")),
        ("[a-z][a-z0-9-]{5,29}", "[A-Za-z][A-Za-z0-9._~+%-]{2,100}")
            .prop_map(|(project, topic)| format!("pubsub://projects/{project}/topics/{topic}")),
    ]
}

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map("[a-z0-9_.-]{1,63}", ".{0,40}", 0..6)
}

prop_compose! {
    /// Generates a manifest within every documented limit, small enough to slice quickly.
    fn valid_manifest()(
        name in "[A-Za-z0-9._-]{1,128}",
        max_seq_len in 1_u32..=512,
        model_sha256 in digest(),
        inputs in shards(),
        records_per_task in 1_u32..600,
        worker in worker(),
        gpus_per_worker in 0_u32..=16,
        deadline in prop::option::of("20[0-9]{2}-0[1-9]-1[0-9]T0[0-9]:[0-5][0-9]:[0-5][0-9](Z|[+-]0[0-9]:[03]0)"),
        max_attempts in prop::option::of(1_u32..=20),
        priority in -100_i32..=100,
        idempotency_key in prop::option::of("[ -~]{1,256}"),
        labels in labels(),
        notify in prop::option::of(notify_target()),
    ) -> Manifest {
        Manifest {
            version: 1,
            name,
            kernel: Kernel::Embed { max_seq_len },
            training: None,
            model: ModelRef {
                uri: "file:///opt/models/all-MiniLM-L6-v2/".to_owned(),
                sha256: model_sha256,
            },
            inputs,
            records_per_task,
            output: "gs://lab-out/embeddings/".to_owned(),
            worker,
            gpus_per_worker,
            deadline,
            max_attempts,
            priority,
            idempotency_key,
            labels,
            notify,
        }
    }
}

/// Generates any JSON value, nested up to four levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,100}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(".{0,12}", inner, 0..8)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

fn example() -> Value {
    serde_json::from_str(EXAMPLE).unwrap()
}

/// Collects into `out` the JSON pointer of every value inside `value`, the root included.
fn pointers(value: &Value, prefix: String, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                pointers(child, format!("{prefix}/{key}"), out);
            }
        }
        Value::Array(items) => {
            for (index, child) in items.iter().enumerate() {
                pointers(child, format!("{prefix}/{index}"), out);
            }
        }
        _ => {}
    }
    out.push(prefix);
}

/// Checks the shape of every error that `parse` returns for `bytes`.
fn assert_errors_well_formed(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Err(errors) = parse(bytes) {
        prop_assert!(!errors.0.is_empty());
        for error in &errors.0 {
            // Inputs here stay under the size limit, so "invalid manifest:" can only
            // come from serde rejecting a document that the walk accepted.
            prop_assert!(
                !error.problem.starts_with("invalid manifest:"),
                "{:?}",
                error
            );
            prop_assert!(!error.problem.is_empty(), "{:?}", error);
            prop_assert!(!error.fix.is_empty(), "{:?}", error);
            prop_assert!(error.value.chars().count() <= 80, "{:?}", error);
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn parse_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        assert_errors_well_formed(&bytes)?;
    }

    #[test]
    fn parse_never_panics_on_damaged_example(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        keep in any::<prop::sample::Index>(),
    ) {
        let mut bytes = EXAMPLE.as_bytes().to_vec();
        for (position, byte) in edits {
            let index = position.index(bytes.len());
            bytes[index] = byte;
        }
        bytes.truncate(keep.index(bytes.len() + 1));
        assert_errors_well_formed(&bytes)?;
    }

    #[test]
    fn parse_never_panics_on_json_values(value in json_value()) {
        assert_errors_well_formed(&serde_json::to_vec(&value).unwrap())?;
    }

    #[test]
    fn parse_never_panics_on_replaced_fields(
        value in json_value(),
        target in any::<prop::sample::Index>(),
    ) {
        let mut document = example();
        let mut targets = Vec::new();
        pointers(&document, String::new(), &mut targets);
        let pointer = &targets[target.index(targets.len())];
        *document.pointer_mut(pointer).unwrap() = value;
        assert_errors_well_formed(&serde_json::to_vec(&document).unwrap())?;
    }

    #[test]
    fn valid_manifest_round_trips(manifest in valid_manifest()) {
        let bytes = serde_json::to_vec(&manifest).unwrap();
        match parse(&bytes) {
            Ok(parsed) => prop_assert_eq!(parsed, manifest),
            Err(errors) => prop_assert!(false, "valid manifest rejected: {}", errors),
        }
    }

    #[test]
    fn slicing_covers_every_record_once(manifest in valid_manifest()) {
        let tasks = slice(&manifest);
        let per_task = u64::from(manifest.records_per_task);

        // Walk the tasks in order: each continues its shard where the previous task
        // stopped, and moves to the next shard only after the last record.
        let mut shard_index = 0;
        let mut next_record = 0;
        for (index, task) in tasks.iter().enumerate() {
            if next_record == manifest.inputs[shard_index].records {
                shard_index += 1;
                next_record = 0;
            }
            prop_assert_eq!(task.index as usize, index);
            prop_assert_eq!(&task.shard, &manifest.inputs[shard_index]);
            prop_assert_eq!(task.first_record, next_record);
            prop_assert!(task.records >= 1);
            prop_assert!(task.records <= per_task);
            next_record += task.records;
        }
        prop_assert_eq!(shard_index, manifest.inputs.len() - 1);
        prop_assert_eq!(next_record, manifest.inputs[shard_index].records);
        let covered: u64 = tasks.iter().map(|task| task.records).sum();
        prop_assert_eq!(covered, manifest.total_records());
    }

    #[test]
    fn task_ids_are_unique_and_deterministic(manifest in valid_manifest()) {
        let tasks = slice(&manifest);
        let ids: HashSet<&str> = tasks.iter().map(|task| task.task_id.as_str()).collect();
        prop_assert_eq!(ids.len(), tasks.len());
        for task in &tasks {
            prop_assert_eq!(&task.task_id, &task_id(task.index));
        }

        let reparsed = parse(&serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
        prop_assert_eq!(slice(&reparsed), tasks);
    }

    #[test]
    fn job_id_survives_reserialisation(manifest in valid_manifest()) {
        let id = job_id(&manifest);

        let pretty = serde_json::to_vec_pretty(&manifest).unwrap();
        prop_assert_eq!(job_id(&parse(&pretty).unwrap()), id.clone());

        // A `Value` writes keys in sorted order, unlike the struct's field order.
        let sorted = serde_json::to_vec(&serde_json::to_value(&manifest).unwrap()).unwrap();
        prop_assert_eq!(job_id(&parse(&sorted).unwrap()), id);
    }

    #[test]
    fn job_id_differs_for_different_manifest(manifest in valid_manifest()) {
        let id = job_id(&manifest);

        let mut renamed = manifest.clone();
        if renamed.name.len() < 128 {
            renamed.name.push('x');
        } else {
            renamed.name.pop();
        }
        prop_assert_ne!(job_id(&renamed), id.clone());

        let mut changed = manifest.clone();
        changed.records_per_task += 1;
        match changed.idempotency_key.clone() {
            // With a key, the id depends only on the name and the key.
            Some(mut key) => {
                prop_assert_eq!(job_id(&changed), id.clone());
                let last = key.pop();
                key.push(if last == Some('a') { 'b' } else { 'a' });
                changed.idempotency_key = Some(key);
                prop_assert_ne!(job_id(&changed), id);
            }
            None => prop_assert_ne!(job_id(&changed), id),
        }
    }
}
