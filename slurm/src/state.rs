//! Job and node states, and job exit statuses, in every shape Slurm reports them.
//!
//! A job state is a base state (PENDING, RUNNING, COMPLETED, …) plus flags
//! (COMPLETING, REQUEUED, …). slurmrestd 22.05 and `squeue --json` of that version
//! send one string, which is a flag's name while that flag is set (for example
//! `COMPLETING` while a finished job's epilog runs), else the base state's name.
//! Slurm 23.02 and later send a list: the base state first, then the flags.
//! `sacct` and `squeue` text output may add `by UID` to CANCELLED.

use std::fmt;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::values::SlurmNumber;

/// A job's base state.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum JobBaseState {
    /// Queued, waiting for resources or a limit.
    Pending,
    /// Running on its nodes.
    Running,
    /// Suspended by an administrator or by preemption.
    Suspended,
    /// Finished with exit code 0.
    Completed,
    /// Cancelled by a user or an administrator.
    Cancelled,
    /// Finished with a non-zero exit code or failed to start.
    Failed,
    /// Ended at its time limit.
    Timeout,
    /// Ended because a node failed.
    NodeFail,
    /// Ended by preemption.
    Preempted,
    /// Ended because its node failed to boot.
    BootFail,
    /// Ended at its deadline.
    Deadline,
    /// Ended by running out of memory.
    OutOfMemory,
    /// A state name this crate does not know, as sent.
    Other(String),
}

impl JobBaseState {
    fn from_name(name: &str) -> Option<JobBaseState> {
        Some(match name {
            "PENDING" => JobBaseState::Pending,
            "RUNNING" => JobBaseState::Running,
            "SUSPENDED" => JobBaseState::Suspended,
            "COMPLETED" => JobBaseState::Completed,
            "CANCELLED" => JobBaseState::Cancelled,
            "FAILED" => JobBaseState::Failed,
            "TIMEOUT" => JobBaseState::Timeout,
            "NODE_FAIL" => JobBaseState::NodeFail,
            "PREEMPTED" => JobBaseState::Preempted,
            "BOOT_FAIL" => JobBaseState::BootFail,
            "DEADLINE" => JobBaseState::Deadline,
            "OUT_OF_MEMORY" => JobBaseState::OutOfMemory,
            _ => return None,
        })
    }

    /// Returns Slurm's name of the state.
    pub fn name(&self) -> &str {
        match self {
            JobBaseState::Pending => "PENDING",
            JobBaseState::Running => "RUNNING",
            JobBaseState::Suspended => "SUSPENDED",
            JobBaseState::Completed => "COMPLETED",
            JobBaseState::Cancelled => "CANCELLED",
            JobBaseState::Failed => "FAILED",
            JobBaseState::Timeout => "TIMEOUT",
            JobBaseState::NodeFail => "NODE_FAIL",
            JobBaseState::Preempted => "PREEMPTED",
            JobBaseState::BootFail => "BOOT_FAIL",
            JobBaseState::Deadline => "DEADLINE",
            JobBaseState::OutOfMemory => "OUT_OF_MEMORY",
            JobBaseState::Other(name) => name,
        }
    }
}

/// A flag on a job's state.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum JobStateFlag {
    /// The job has ended and its epilog or step cleanup still runs.
    Completing,
    /// The job is allocated and its nodes are booting or configuring.
    Configuring,
    /// The job is being requeued.
    Requeued,
    /// The job is requeued and held.
    RequeueHold,
    /// The job changes size.
    Resizing,
    /// The job is being signalled.
    Signaling,
    /// The job's burst buffer is staging out.
    StageOut,
    /// The job is stopped (SIGSTOP) but keeps its allocation.
    Stopped,
    /// Any other flag, by name.
    Other(String),
}

impl JobStateFlag {
    fn from_name(name: &str) -> JobStateFlag {
        match name {
            "COMPLETING" => JobStateFlag::Completing,
            "CONFIGURING" => JobStateFlag::Configuring,
            "REQUEUED" => JobStateFlag::Requeued,
            "REQUEUE_HOLD" => JobStateFlag::RequeueHold,
            "RESIZING" => JobStateFlag::Resizing,
            "SIGNALING" => JobStateFlag::Signaling,
            "STAGE_OUT" => JobStateFlag::StageOut,
            "STOPPED" => JobStateFlag::Stopped,
            other => JobStateFlag::Other(other.to_string()),
        }
    }

    /// Returns Slurm's name of the flag.
    pub fn name(&self) -> &str {
        match self {
            JobStateFlag::Completing => "COMPLETING",
            JobStateFlag::Configuring => "CONFIGURING",
            JobStateFlag::Requeued => "REQUEUED",
            JobStateFlag::RequeueHold => "REQUEUE_HOLD",
            JobStateFlag::Resizing => "RESIZING",
            JobStateFlag::Signaling => "SIGNALING",
            JobStateFlag::StageOut => "STAGE_OUT",
            JobStateFlag::Stopped => "STOPPED",
            JobStateFlag::Other(name) => name,
        }
    }
}

/// A job's state: its base state and flags.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobState {
    /// The base state. `None` when Slurm sent only a flag, which 22.05 does for
    /// COMPLETING, CONFIGURING, REQUEUED and the other flags while they are set.
    pub base: Option<JobBaseState>,
    /// The flags, in the order sent.
    pub flags: Vec<JobStateFlag>,
    /// The user id after `CANCELLED by`, when the text carried one.
    pub cancelled_by: Option<u32>,
}

impl JobState {
    /// Parses one state text such as `RUNNING`, `COMPLETING` or `CANCELLED by 1000`.
    pub fn parse(text: &str) -> JobState {
        let mut words = text.split_whitespace();
        let name = words.next().unwrap_or_default().to_ascii_uppercase();
        let cancelled_by = match (words.next(), words.next()) {
            (Some("by"), Some(uid)) => uid.parse().ok(),
            _ => None,
        };
        let mut state = JobState::default();
        state.add_name(&name);
        state.cancelled_by = cancelled_by;
        state
    }

    /// Builds a state from the list form: the base state and flags, in any order.
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> JobState {
        let mut state = JobState::default();
        for name in names {
            state.add_name(&name.to_ascii_uppercase());
        }
        state
    }

    fn add_name(&mut self, name: &str) {
        if name.is_empty() {
            return;
        }
        match JobBaseState::from_name(name) {
            Some(base) if self.base.is_none() => self.base = Some(base),
            Some(_) => self.flags.push(JobStateFlag::from_name(name)),
            None => self.flags.push(JobStateFlag::from_name(name)),
        }
    }

    /// Returns true when the flag is set.
    pub fn has_flag(&self, flag: &JobStateFlag) -> bool {
        self.flags.contains(flag)
    }

    /// Returns true while the job waits to start (PENDING, or requeued).
    pub fn is_pending(&self) -> bool {
        self.base == Some(JobBaseState::Pending)
            || (self.base.is_none()
                && (self.has_flag(&JobStateFlag::Requeued)
                    || self.has_flag(&JobStateFlag::RequeueHold)))
    }

    /// Returns true while the job has its allocation: running, suspended,
    /// configuring, or still completing.
    pub fn is_running(&self) -> bool {
        matches!(
            self.base,
            Some(JobBaseState::Running) | Some(JobBaseState::Suspended)
        ) || self.has_flag(&JobStateFlag::Configuring)
            || self.has_flag(&JobStateFlag::Completing)
            || self.has_flag(&JobStateFlag::Stopped)
    }

    /// Returns true while the job is pending or running, so it may still do work
    /// or hold resources.
    pub fn is_active(&self) -> bool {
        self.is_pending() || self.is_running()
    }

    /// Returns true once the job has ended and released its allocation.
    pub fn is_finished(&self) -> bool {
        !self.is_active() && self.base.is_some()
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = self
            .base
            .iter()
            .map(JobBaseState::name)
            .chain(self.flags.iter().map(JobStateFlag::name))
            .collect::<Vec<_>>();
        f.write_str(&names.join("+"))?;
        if let Some(uid) = self.cancelled_by {
            write!(f, " by {uid}")?;
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for JobState {
    /// Accepts a string, a list of strings, or null (an empty state).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Value::deserialize(deserializer)? {
            Value::Null => Ok(JobState::default()),
            Value::String(text) => Ok(JobState::parse(&text)),
            Value::Array(items) => {
                let names = items
                    .iter()
                    .map(|item| item.as_str().ok_or(item))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|item| D::Error::custom(format!("invalid job state {item}")))?;
                Ok(JobState::from_names(names))
            }
            other => Err(D::Error::custom(format!("invalid job state {other}"))),
        }
    }
}

impl Serialize for JobState {
    /// Writes the list form, which reads back unchanged except for `cancelled_by`.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let names = self
            .base
            .iter()
            .map(JobBaseState::name)
            .chain(self.flags.iter().map(JobStateFlag::name))
            .collect::<Vec<_>>();
        names.serialize(serializer)
    }
}

/// The exit status of a job's batch script.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// The script exited with this code.
    Exited(i32),
    /// The script was killed by this signal number.
    Signaled(i32),
}

impl ExitStatus {
    /// Decodes a wait status as `waitpid` returns it and slurmrestd 22.05 sends it
    /// in `exit_code`: 768 is exit code 3, 15 is signal 15 (SIGTERM). Slurm also
    /// stores 1 for a job that failed before it started, which decodes as signal 1,
    /// the same as `sacct` shows it (`0:1`).
    pub fn from_wait_status(status: u32) -> ExitStatus {
        let signal = status & 0x7f;
        if signal == 0 {
            ExitStatus::Exited(((status >> 8) & 0xff) as i32)
        } else {
            ExitStatus::Signaled(signal as i32)
        }
    }

    /// Parses the `CODE:SIGNAL` text of `sacct` and `squeue`.
    pub fn parse(text: &str) -> Option<ExitStatus> {
        let (code, signal) = text.trim().split_once(':')?;
        let (code, signal) = (code.parse::<i32>().ok()?, signal.parse::<i32>().ok()?);
        Some(if signal != 0 {
            ExitStatus::Signaled(signal)
        } else {
            ExitStatus::Exited(code)
        })
    }

    /// Interprets `exit_code` in any shape: a wait status number, a `CODE:SIGNAL`
    /// text, or the object of Slurm 23.02 and later, `{"status": ["EXITED"],
    /// "return_code": …, "signal": {"id": …}}`. Returns `None` when no status is
    /// known yet (a pending job, an unset value).
    pub fn from_json(value: &Value) -> Option<ExitStatus> {
        match value {
            Value::Object(object) => Self::from_json_object(object),
            Value::String(text) => Self::parse(text),
            other => SlurmNumber::from_json(other)?
                .value()
                .and_then(|status| u32::try_from(status).ok())
                .map(ExitStatus::from_wait_status),
        }
    }

    fn from_json_object(object: &serde_json::Map<String, Value>) -> Option<ExitStatus> {
        let statuses = object
            .get("status")
            .and_then(Value::as_array)
            .map(|items| items.iter().filter_map(Value::as_str).collect::<Vec<_>>())
            .unwrap_or_default();
        let number = |value: Option<&Value>| {
            value
                .and_then(SlurmNumber::from_json)
                .and_then(SlurmNumber::value)
                .and_then(|number| i32::try_from(number).ok())
        };
        let signal = number(object.get("signal").and_then(|signal| signal.get("id")));
        let return_code = number(object.get("return_code"));
        if statuses.contains(&"SIGNALED") || statuses.contains(&"CORE_DUMPED") {
            return signal.map(ExitStatus::Signaled);
        }
        if statuses.contains(&"EXITED") {
            return return_code.map(ExitStatus::Exited);
        }
        None
    }

    /// Returns true for exit code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Exited(0)
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Exited(code) => write!(f, "exit code {code}"),
            ExitStatus::Signaled(signal) => write!(f, "signal {signal}"),
        }
    }
}

/// A node's state: its base state in lower case and its flags in upper case, as
/// `sinfo` names them (`idle`, `mixed`, `allocated`, `down`; `DRAIN`, …).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeState {
    /// The base state, such as `idle` or `down`.
    pub base: String,
    /// Flags such as `DRAIN`, `NOT_RESPONDING` or `MAINTENANCE`.
    pub flags: Vec<String>,
}

impl NodeState {
    /// Builds a state from slurmrestd 22.05's `state` string and `state_flags`
    /// list, or from the list that Slurm 23.02 and later send as `state`.
    pub fn from_json(state: &Value, flags: &Value) -> NodeState {
        let mut names = match state {
            Value::String(text) => text.split('+').map(str::to_string).collect(),
            Value::Array(items) => items
                .iter()
                .filter_map(|item| item.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        if let Value::Array(items) = flags {
            names.extend(
                items
                    .iter()
                    .filter_map(|item| item.as_str().map(str::to_string)),
            );
        }
        let base = if names.is_empty() {
            String::new()
        } else {
            names.remove(0).to_ascii_lowercase()
        };
        let flags = names
            .into_iter()
            .map(|name| name.to_ascii_uppercase())
            .collect();
        NodeState { base, flags }
    }

    /// Returns true when the scheduler may start new jobs on the node: its base
    /// state is idle, mixed or allocated, and it is not draining, failing, being
    /// maintained, powered down or unresponsive.
    pub fn accepts_jobs(&self) -> bool {
        const BLOCKING: [&str; 9] = [
            "DRAIN",
            "DRAINING",
            "DRAINED",
            "FAIL",
            "MAINTENANCE",
            "NOT_RESPONDING",
            "POWERED_DOWN",
            "POWERING_DOWN",
            "REBOOT_ISSUED",
        ];
        matches!(self.base.as_str(), "idle" | "mixed" | "allocated")
            && !self
                .flags
                .iter()
                .any(|flag| BLOCKING.contains(&flag.as_str()))
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base)?;
        for flag in &self.flags {
            write!(f, "+{flag}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn state(value: Value) -> JobState {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn job_state_from_string() {
        let running = state(json!("RUNNING"));
        assert_eq!(running.base, Some(JobBaseState::Running));
        assert!(running.flags.is_empty());
        assert!(running.is_running());
        assert!(running.is_active());
        assert!(!running.is_finished());
    }

    #[test]
    fn job_state_flag_only_string() {
        let completing = state(json!("COMPLETING"));
        assert_eq!(completing.base, None);
        assert_eq!(completing.flags, vec![JobStateFlag::Completing]);
        assert!(completing.is_active());
        assert!(!completing.is_finished());
    }

    #[test]
    fn job_state_from_list() {
        let requeued = state(json!(["PENDING", "REQUEUED"]));
        assert_eq!(requeued.base, Some(JobBaseState::Pending));
        assert_eq!(requeued.flags, vec![JobStateFlag::Requeued]);
        assert!(requeued.is_pending());

        let completing = state(json!(["COMPLETED", "COMPLETING"]));
        assert_eq!(completing.base, Some(JobBaseState::Completed));
        assert!(completing.is_active());

        let done = state(json!(["FAILED"]));
        assert!(done.is_finished());
    }

    #[test]
    fn job_state_cancelled_by_user() {
        let cancelled = JobState::parse("CANCELLED by 1000");
        assert_eq!(cancelled.base, Some(JobBaseState::Cancelled));
        assert_eq!(cancelled.cancelled_by, Some(1000));
        assert!(cancelled.is_finished());
        assert_eq!(cancelled.to_string(), "CANCELLED by 1000");
    }

    #[test]
    fn job_state_unknown_name_is_kept() {
        let unknown = state(json!("HIBERNATING"));
        assert_eq!(unknown.base, None);
        assert_eq!(
            unknown.flags,
            vec![JobStateFlag::Other("HIBERNATING".into())]
        );
        assert!(!unknown.is_finished());
    }

    #[test]
    fn job_state_serialization_round_trips() {
        let original = state(json!(["RUNNING", "CONFIGURING"]));
        let text = serde_json::to_string(&original).unwrap();
        assert_eq!(serde_json::from_str::<JobState>(&text).unwrap(), original);
    }

    #[test]
    fn exit_status_from_wait_status() {
        assert_eq!(ExitStatus::from_wait_status(0), ExitStatus::Exited(0));
        assert_eq!(ExitStatus::from_wait_status(768), ExitStatus::Exited(3));
        assert_eq!(ExitStatus::from_wait_status(15), ExitStatus::Signaled(15));
        assert_eq!(ExitStatus::from_wait_status(9), ExitStatus::Signaled(9));
        assert_eq!(ExitStatus::from_wait_status(1), ExitStatus::Signaled(1));
        assert!(ExitStatus::from_wait_status(0).success());
        assert!(!ExitStatus::from_wait_status(768).success());
    }

    #[test]
    fn exit_status_json_shapes() {
        let cases = [
            (json!(768), Some(ExitStatus::Exited(3))),
            (json!(null), None),
            (json!("2:0"), Some(ExitStatus::Exited(2))),
            (json!("0:9"), Some(ExitStatus::Signaled(9))),
            (
                json!({"status": ["EXITED"], "return_code": {"set": true, "infinite": false, "number": 4}, "signal": {"id": {"set": false, "infinite": false, "number": 0}, "name": ""}}),
                Some(ExitStatus::Exited(4)),
            ),
            (
                json!({"status": ["SIGNALED"], "return_code": {"set": false, "infinite": false, "number": 0}, "signal": {"id": {"set": true, "infinite": false, "number": 15}, "name": "TERM"}}),
                Some(ExitStatus::Signaled(15)),
            ),
            (json!({"status": ["PENDING"]}), None),
        ];
        for (input, expected) in cases {
            assert_eq!(ExitStatus::from_json(&input), expected, "{input}");
        }
    }

    #[test]
    fn node_state_shapes() {
        let drained = NodeState::from_json(&json!("idle"), &json!(["DRAIN"]));
        assert_eq!(drained.base, "idle");
        assert_eq!(drained.flags, vec!["DRAIN".to_string()]);
        assert!(!drained.accepts_jobs());

        let listed = NodeState::from_json(&json!(["MIXED", "COMPLETING"]), &Value::Null);
        assert_eq!(listed.base, "mixed");
        assert!(listed.accepts_jobs());

        let down = NodeState::from_json(&json!("down"), &json!([]));
        assert!(!down.accepts_jobs());
        assert_eq!(down.to_string(), "down");
    }
}
