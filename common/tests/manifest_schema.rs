//! The committed JSON Schema in `docs/manifest.schema.json`: it must match the one that
//! schemars generates from the manifest types, and it must agree with `parse` on field
//! names, required fields and integer bounds.

use std::path::PathBuf;

use serde_json::{Value, json};
use spillway_common::manifest::{Manifest, parse};

const EXAMPLE: &str = include_str!("../../docs/examples/embed-manifest.json");
const BLESS_VARIABLE: &str = "SPILLWAY_BLESS";

fn schema_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/manifest.schema.json")
}

fn generated_schema_text() -> String {
    let schema = Manifest::json_schema();
    let mut text = serde_json::to_string_pretty(&schema).expect("the schema serializes");
    text.push('\n');
    text
}

fn generated_schema() -> Value {
    serde_json::to_value(Manifest::json_schema()).expect("the schema serializes")
}

fn example() -> Value {
    serde_json::from_str(EXAMPLE).expect("the example manifest is valid JSON")
}

/// Returns the paths of the errors `parse` reports for `document`, or none when it parses.
fn error_paths(document: &Value) -> Vec<String> {
    match parse(&serde_json::to_vec(document).unwrap()) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.0.into_iter().map(|error| error.path).collect(),
    }
}

#[test]
fn schema_file_is_current() {
    let path = schema_path();
    let generated = generated_schema_text();

    if std::env::var_os(BLESS_VARIABLE).is_some_and(|value| value == "1") {
        std::fs::write(&path, &generated)
            .unwrap_or_else(|error| panic!("writing {} failed: {error}", path.display()));
        return;
    }

    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/manifest.schema.json is missing or differs from the schema generated from \
         common/src/manifest/types.rs; refresh it with \
         `{BLESS_VARIABLE}=1 cargo test -p spillway-common schema` and commit it"
    );
}

/// Returns the object schemas in the generated schema, each with the JSON pointer of the same
/// object in the example manifest.
fn object_schemas(schema: &Value) -> Vec<(&'static str, Value)> {
    let definition = |name: &str| schema["$defs"][name].clone();
    vec![
        ("", schema.clone()),
        ("/kernel", definition("Kernel")["oneOf"][0].clone()),
        ("/model", definition("ModelRef")),
        ("/inputs/0", definition("ShardRef")),
        ("/worker", definition("WorkerRef")),
    ]
}

/// Returns the field names that the fix of an unknown-field error lists as allowed in
/// the object at `pointer`.
fn allowed_fields(pointer: &str) -> Vec<String> {
    let mut document = example();
    let object = document
        .pointer_mut(pointer)
        .unwrap()
        .as_object_mut()
        .unwrap();
    object.insert("not_a_field".to_owned(), json!(1));
    let errors = parse(&serde_json::to_vec(&document).unwrap())
        .unwrap_err()
        .0;
    let unknown = errors
        .iter()
        .find(|error| error.problem == "unknown field `not_a_field`")
        .unwrap_or_else(|| panic!("no unknown-field error under `{pointer}`: {errors:#?}"));
    let list = unknown.fix.split(": ").last().unwrap();
    list.split(", ")
        .map(|name| name.trim_matches('`').to_owned())
        .collect()
}

#[test]
fn schema_properties_match_allowed_fields() {
    let schema = generated_schema();
    for (pointer, object_schema) in object_schemas(&schema) {
        let mut properties: Vec<String> = object_schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        properties.sort();
        let mut allowed = allowed_fields(pointer);
        allowed.sort();
        assert_eq!(allowed, properties, "fields of the object at `{pointer}`");
    }
}

#[test]
fn schema_required_fields_match_parse() {
    let schema = generated_schema();
    for (pointer, object_schema) in object_schemas(&schema) {
        let required: Vec<&str> = object_schema["required"]
            .as_array()
            .map(|names| names.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let properties = object_schema["properties"].as_object().unwrap();
        for property in properties.keys() {
            let mut document = example();
            let object = document
                .pointer_mut(pointer)
                .unwrap()
                .as_object_mut()
                .unwrap();
            if object.remove(property).is_none() {
                continue;
            }
            let reported_missing = !error_paths(&document).is_empty();
            // `worker` needs one of its two optional fields, which the schema does not
            // express, and the example sets only `image`.
            let needed_by_worker_rule = pointer == "/worker" && property == "image";
            assert_eq!(
                reported_missing,
                required.contains(&property.as_str()) || needed_by_worker_rule,
                "removing `{property}` under `{pointer}`"
            );
        }
    }
}

#[test]
fn schema_integer_bounds_match_parse() {
    let schema = generated_schema();
    for (pointer, object_schema) in object_schemas(&schema) {
        let properties = object_schema["properties"].as_object().unwrap();
        for (property, property_schema) in properties {
            let bounds = [
                (property_schema["minimum"].as_i64(), -1),
                (property_schema["maximum"].as_i64(), 1),
            ];
            for (bound, step) in bounds {
                let Some(bound) = bound else { continue };
                let field_pointer = format!("{pointer}/{property}");
                let mut document = example();

                let object = document
                    .pointer_mut(pointer)
                    .unwrap()
                    .as_object_mut()
                    .unwrap();
                object.insert(property.clone(), json!(bound));
                let at_bound = error_paths(&document);
                assert!(
                    at_bound.is_empty(),
                    "{field_pointer} = {bound} is rejected: {at_bound:?}"
                );

                let beyond = bound + step;
                let object = document
                    .pointer_mut(pointer)
                    .unwrap()
                    .as_object_mut()
                    .unwrap();
                object.insert(property.clone(), json!(beyond));
                let beyond_bound = error_paths(&document);
                assert!(
                    !beyond_bound.is_empty(),
                    "{field_pointer} = {beyond} is accepted"
                );
            }
        }
    }
}
