//! Job, node and partition records as Slurm sends them in JSON, and their
//! conversion into [`JobInfo`], [`NodeInfo`] and [`PartitionInfo`].
//!
//! A record keeps the JSON object as received, so that no field of any Slurm
//! version fails deserialization. The conversion reads each field in every shape
//! that it has had. The generated slurmrestd client uses these types for the `jobs`,
//! `nodes` and `partitions` arrays of its responses, and `squeue --json` and
//! `sinfo --json` output has the same arrays.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::api::{JobInfo, NodeInfo, PartitionInfo};
use crate::state::{ExitStatus, JobState, NodeState};
use crate::values::{ArrayIndexSet, ArrayPart, SlurmNumber, TimeLimit, count_gpus};

/// A record that lacks a required field or has one in an unknown shape.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} record {id}: field {field} is {value}")]
pub struct InvalidRecord {
    kind: &'static str,
    id: String,
    field: &'static str,
    value: String,
}

/// One job record: an element of `jobs` in slurmrestd and `squeue --json` output.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobRecord(pub Map<String, Value>);

/// One node record: an element of `nodes`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeRecord(pub Map<String, Value>);

/// One partition record: an element of `partitions`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PartitionRecord(pub Map<String, Value>);

/// Reads a dotted path such as `nodes.total`. Returns `None` for a missing or null
/// value.
fn lookup_path<'a>(object: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut value = object.get(parts.next()?)?;
    for part in parts {
        value = value.get(part)?;
    }
    (!value.is_null()).then_some(value)
}

/// Reads the first of several paths whose value `parse` accepts, because the same
/// field moved between Slurm versions (`total_nodes` became `nodes.total`).
fn first<'a, T>(
    object: &'a Map<String, Value>,
    paths: &[&str],
    parse: impl Fn(&'a Value) -> Option<T>,
) -> Option<T> {
    paths
        .iter()
        .find_map(|path| lookup_path(object, path).and_then(&parse))
}

fn lookup<'a>(object: &'a Map<String, Value>, paths: &[&str]) -> Option<&'a Value> {
    first(object, paths, Some)
}

fn text(object: &Map<String, Value>, paths: &[&str]) -> Option<String> {
    first(object, paths, |value| match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    })
}

fn non_empty_text(object: &Map<String, Value>, paths: &[&str]) -> Option<String> {
    text(object, paths).filter(|text| !text.is_empty() && text != "(null)")
}

fn number(object: &Map<String, Value>, paths: &[&str]) -> SlurmNumber {
    first(object, paths, SlurmNumber::from_json).unwrap_or_default()
}

fn unix_time(object: &Map<String, Value>, path: &str) -> Option<SystemTime> {
    let seconds = number(object, &[path])
        .value()
        .filter(|seconds| *seconds > 0)?;
    Some(UNIX_EPOCH + Duration::from_secs(seconds))
}

fn time_limit(object: &Map<String, Value>, paths: &[&str]) -> TimeLimit {
    first(object, paths, TimeLimit::from_json).unwrap_or(TimeLimit::NotSet)
}

fn string_list(object: &Map<String, Value>, paths: &[&str]) -> Vec<String> {
    match lookup(object, paths) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|item| item.as_str().map(str::to_string))
            .collect(),
        Some(Value::String(text)) if !text.is_empty() => {
            text.split(',').map(str::to_string).collect()
        }
        _ => Vec::new(),
    }
}

impl JobRecord {
    /// Converts the record, reading the shapes of slurmrestd 22.05 and later.
    pub fn to_job_info(&self) -> Result<JobInfo, InvalidRecord> {
        let record = &self.0;
        let invalid = |field: &'static str| InvalidRecord {
            kind: "job",
            id: text(record, &["job_id"]).unwrap_or_else(|| "without id".to_string()),
            field,
            value: lookup(record, &[field]).map_or("missing".to_string(), Value::to_string),
        };

        let job_id = number(record, &["job_id"])
            .value()
            .ok_or_else(|| invalid("job_id"))?;
        let array_job_id = number(record, &["array_job_id"])
            .value()
            .filter(|id| *id != 0);
        let array = match (array_job_id, self.array_part()) {
            (None, _) => None,
            (Some(_), Ok(part)) => part,
            (Some(_), Err(())) => return Err(invalid("array_task_string")),
        };
        let state: JobState = lookup(record, &["job_state"])
            .map(|value| serde_json::from_value(value.clone()))
            .transpose()
            .map_err(|_| invalid("job_state"))?
            .unwrap_or_default();
        let exit_status = if state.is_finished() {
            lookup(record, &["exit_code"]).and_then(ExitStatus::from_json)
        } else {
            None
        };

        Ok(JobInfo {
            job_id,
            array_job_id,
            array,
            name: text(record, &["name"]).unwrap_or_default(),
            partition: text(record, &["partition"]).unwrap_or_default(),
            reason: non_empty_text(record, &["state_reason"]).filter(|reason| reason != "None"),
            exit_status,
            nodes: non_empty_text(record, &["nodes"]),
            time_limit: time_limit(record, &["time_limit"]),
            submit_time: unix_time(record, "submit_time"),
            start_time: unix_time(record, "start_time"),
            end_time: unix_time(record, "end_time"),
            state,
        })
    }

    /// Reads which elements an array record stands for. Fails on an unreadable
    /// `array_task_string`.
    fn array_part(&self) -> Result<Option<ArrayPart>, ()> {
        if let Some(index) = number(&self.0, &["array_task_id"]).value() {
            return Ok(u32::try_from(index).ok().map(ArrayPart::Task));
        }
        match non_empty_text(&self.0, &["array_task_string"]) {
            Some(expression) => ArrayIndexSet::parse(&expression)
                .map(|set| Some(ArrayPart::Collapsed(set)))
                .map_err(|_| ()),
            None => Ok(None),
        }
    }
}

impl NodeRecord {
    /// Converts the record. GPUs come from `gres` (`gpu:4`), or from the TRES
    /// string (`gres/gpu=4`) when gres names none.
    pub fn to_node_info(&self) -> Result<NodeInfo, InvalidRecord> {
        let record = &self.0;
        let name = non_empty_text(record, &["name"]).ok_or_else(|| InvalidRecord {
            kind: "node",
            id: "without name".to_string(),
            field: "name",
            value: lookup(record, &["name"]).map_or("missing".to_string(), Value::to_string),
        })?;
        let gpus_in = |gres_path: &str, tres_path: &str| {
            text(record, &[gres_path])
                .and_then(|gres| count_gpus(&gres))
                .or_else(|| text(record, &[tres_path]).and_then(|tres| count_gpus(&tres)))
                .unwrap_or(0)
        };

        Ok(NodeInfo {
            state: NodeState::from_json(
                record.get("state").unwrap_or(&Value::Null),
                record.get("state_flags").unwrap_or(&Value::Null),
            ),
            cpus: number(record, &["cpus"]).value().unwrap_or(0),
            allocated_cpus: number(record, &["alloc_cpus"]).value().unwrap_or(0),
            gpus: gpus_in("gres", "tres"),
            allocated_gpus: gpus_in("gres_used", "tres_used"),
            partitions: string_list(record, &["partitions"]),
            reason: non_empty_text(record, &["reason"]),
            name,
        })
    }
}

impl PartitionRecord {
    /// Converts the record, reading slurmrestd 22.05's flat fields and the nested
    /// ones of Slurm 23.02 and later (`nodes.configured`, `maximums.time`, …).
    /// `gpus` is the TRES count; [`PartitionInfo::gpus`] is filled from the nodes
    /// by the caller when the TRES string has none.
    pub fn to_partition_info(&self) -> Result<(PartitionInfo, Option<u64>), InvalidRecord> {
        let record = &self.0;
        let name = non_empty_text(record, &["name"]).ok_or_else(|| InvalidRecord {
            kind: "partition",
            id: "without name".to_string(),
            field: "name",
            value: lookup(record, &["name"]).map_or("missing".to_string(), Value::to_string),
        })?;
        let state = first(record, &["state", "partition.state"], |value| match value {
            Value::Array(items) => items.first().and_then(Value::as_str).map(str::to_string),
            Value::String(state) => Some(state.clone()),
            _ => None,
        });
        // NOTE: only slurmrestd 22.05's `flags: ["default"]` was checked against a
        // server; where later versions put the flag is unverified.
        let is_default = string_list(record, &["flags"])
            .iter()
            .any(|flag| flag.eq_ignore_ascii_case("default"));
        let tres_gpus =
            text(record, &["tres", "tres.configured"]).and_then(|tres| count_gpus(&tres));

        let partition = PartitionInfo {
            state: state.unwrap_or_default(),
            is_default,
            nodes: text(record, &["nodes", "nodes.configured"]).unwrap_or_default(),
            total_nodes: number(record, &["total_nodes", "nodes.total"])
                .value()
                .unwrap_or(0),
            total_cpus: number(record, &["total_cpus", "cpus.total"])
                .value()
                .unwrap_or(0),
            gpus: tres_gpus.unwrap_or(0),
            max_time: time_limit(record, &["max_time_limit", "maximums.time"]),
            default_time: time_limit(record, &["default_time_limit", "defaults.time"]),
            name,
        };
        Ok((partition, tres_gpus))
    }
}

#[cfg(test)]
#[path = "records_tests.rs"]
mod tests;
