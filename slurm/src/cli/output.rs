//! Parsers of what the Slurm tools print: the JSON of `squeue --json` and
//! `sinfo --json`, and the text of `sbatch --parsable`, `scontrol`, `sdiag` and
//! `scancel --verbose`, in the formats of Slurm 22.05.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::ServerError;
use crate::generated::types;
use crate::records::PartitionRecord;

/// The message of Slurm error 2021 (ESLURM_ALREADY_DONE), which `scancel` prints
/// for a job that has already ended.
pub(crate) const ALREADY_DONE_MESSAGE: &str = "Job/step already completing or completed";

/// The records and errors of a `squeue --json` or `sinfo --json` document.
#[derive(Debug)]
pub(crate) struct Listing<R> {
    /// The entries of `errors`. Slurm 22.05 puts an unreachable controller here
    /// and still exits with status 0.
    pub(crate) errors: Vec<ServerError>,
    pub(crate) records: Vec<R>,
}

/// Reads the `errors` array and the records under `key` (`jobs`, `nodes`).
pub(crate) fn parse_listing<R: DeserializeOwned>(
    json: &str,
    key: &str,
) -> Result<Listing<R>, String> {
    let mut document = serde_json::from_str::<Map<String, Value>>(json)
        .map_err(|error| format!("the output is not a JSON object: {error}"))?;
    let errors = match document.remove("errors") {
        None | Some(Value::Null) => Vec::new(),
        Some(errors) => serde_json::from_value::<Vec<types::V0038Error>>(errors)
            .map_err(|error| format!("its errors array cannot be read: {error}"))?
            .iter()
            .map(ServerError::from)
            .collect(),
    };
    let records = match document.remove(key) {
        Some(Value::Array(records)) => records
            .into_iter()
            .map(serde_json::from_value::<R>)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| format!("its {key} array cannot be read: {error}"))?,
        _ => {
            let mut keys = document.keys().cloned().collect::<Vec<_>>();
            keys.sort();
            return Err(format!(
                "the output has no {key} array, only {}",
                keys.join(", ")
            ));
        }
    };
    Ok(Listing { errors, records })
}

/// Reads the job id from `sbatch --parsable` output, `ID` or `ID;CLUSTER`, on its
/// last non-empty line.
pub(crate) fn parse_submitted_job_id(stdout: &str) -> Option<u64> {
    let line = stdout
        .lines()
        .map(str::trim)
        .rfind(|line| !line.is_empty())?;
    let (job_id, _cluster) = line.split_once(';').unwrap_or((line, ""));
    job_id.trim().parse().ok()
}

/// Returns the value of `key` in `scontrol show config` output, whose lines read
/// `Key = Value`.
pub(crate) fn config_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|line| {
        let (name, value) = line.split_once('=')?;
        (name.trim() == key).then(|| value.trim())
    })
}

/// Splits a line of `Key=Value` pairs. A word without `=` continues the previous
/// value, which then contained a space.
fn key_values(line: &str) -> Vec<(&str, String)> {
    let mut pairs: Vec<(&str, String)> = Vec::new();
    for word in line.split_whitespace() {
        match word.split_once('=') {
            Some((key, value)) if !key.is_empty() => pairs.push((key, value.to_string())),
            _ => {
                if let Some((_, value)) = pairs.last_mut() {
                    value.push(' ');
                    value.push_str(word);
                }
            }
        }
    }
    pairs
}

/// Converts `scontrol --oneliner show partition` output, one partition per line,
/// into records with slurmrestd 22.05's field names, which
/// [`PartitionRecord::to_partition_info`] reads.
pub(crate) fn parse_partitions(text: &str) -> Vec<PartitionRecord> {
    text.lines()
        .filter(|line| line.trim_start().starts_with("PartitionName="))
        .map(partition_record)
        .collect()
}

fn partition_record(line: &str) -> PartitionRecord {
    let mut record = Map::new();
    let mut flags = Vec::new();
    for (key, value) in key_values(line) {
        let field = match key {
            "PartitionName" => "name",
            "State" => "state",
            "Nodes" => "nodes",
            "TotalNodes" => "total_nodes",
            "TotalCPUs" => "total_cpus",
            "TRES" => "tres",
            "MaxTime" => "max_time_limit",
            "DefaultTime" => "default_time_limit",
            "Default" => {
                if value == "YES" {
                    flags.push(Value::from("default"));
                }
                continue;
            }
            _ => continue,
        };
        let value = match value.as_str() {
            // scontrol's words for "not set".
            "(null)" | "NONE" => Value::Null,
            text => match text.parse::<u64>() {
                Ok(number) => Value::from(number),
                Err(_) => Value::from(text),
            },
        };
        record.insert(field.to_string(), value);
    }
    record.insert("flags".to_string(), Value::Array(flags));
    PartitionRecord(record)
}

/// Controller statistics from `sdiag`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Statistics {
    pub(crate) server_thread_count: Option<u64>,
    pub(crate) jobs_submitted: Option<u64>,
    pub(crate) jobs_running: Option<u64>,
    pub(crate) jobs_pending: Option<u64>,
    pub(crate) schedule_cycle_last_micros: Option<u64>,
}

/// Reads the `Name: value` lines of `sdiag` output. Only the lines before the
/// backfill section count, because that section repeats names such as
/// `Last cycle`.
pub(crate) fn parse_sdiag(text: &str) -> Statistics {
    let mut statistics = Statistics::default();
    for line in text.lines() {
        if line.starts_with("Backfilling stats") {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let number = value
            .split_whitespace()
            .next()
            .and_then(|word| word.parse::<u64>().ok());
        let slot = match name.trim() {
            "Server thread count" => &mut statistics.server_thread_count,
            "Jobs submitted" => &mut statistics.jobs_submitted,
            "Jobs running" => &mut statistics.jobs_running,
            "Jobs pending" => &mut statistics.jobs_pending,
            "Last cycle" => &mut statistics.schedule_cycle_last_micros,
            _ => continue,
        };
        if slot.is_none() {
            *slot = number;
        }
    }
    statistics
}

/// One controller's line of `scontrol ping`: `Slurmctld(primary) at HOST is UP`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ControllerState {
    /// `primary` or `backup`.
    pub(crate) role: String,
    pub(crate) host: String,
    /// `UP` or `DOWN`.
    pub(crate) state: String,
}

impl ControllerState {
    pub(crate) fn is_up(&self) -> bool {
        self.state == "UP"
    }
}

impl std::fmt::Display for ControllerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}) {}", self.host, self.role, self.state)
    }
}

/// Reads the controller lines of `scontrol ping` output and skips the others.
pub(crate) fn parse_ping(stdout: &str) -> Vec<ControllerState> {
    stdout
        .lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("Slurmctld(")?;
            let (role, rest) = rest.split_once(") at ")?;
            let (host, state) = rest.rsplit_once(" is ")?;
            Some(ControllerState {
                role: role.to_string(),
                host: host.to_string(),
                state: state.trim().to_string(),
            })
        })
        .collect()
}

/// Returns the reasons of the `Kill job error on job id ID: REASON` lines that
/// `scancel --verbose` prints.
pub(crate) fn scancel_errors(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter_map(|line| {
            let (_, rest) = line.split_once("Kill job error on job id ")?;
            let (_job_id, reason) = rest.split_once(": ")?;
            Some(reason.trim())
        })
        .collect()
}

#[cfg(test)]
#[path = "output_tests.rs"]
mod tests;
