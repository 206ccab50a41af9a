//! Errors of the Slurm operations.
//!
//! Every error names the operation, and the Slurm job id where there is one.
//! Errors that Slurm reported carry its error entries, so the message shows the
//! server's description (for example "Invalid partition name specified").

use std::fmt;
use std::time::Duration;

use crate::auth::TokenError;
use crate::generated::types;

/// The operation that failed, with what identifies its target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    /// `ping`.
    Ping,
    /// `submit_array`, with the job name and the partition.
    Submit {
        /// The job name of the submission.
        job_name: String,
        /// The partition, or `None` for the cluster's default.
        partition: Option<String>,
    },
    /// `jobs`.
    ListJobs,
    /// `cancel`, with the Slurm job id.
    Cancel {
        /// The job id to cancel.
        job_id: u64,
    },
    /// `nodes`.
    ListNodes,
    /// `partitions`.
    ListPartitions,
    /// `diag`.
    Diag,
}

impl Operation {
    /// Returns the Slurm job id that the operation targets, if any.
    pub fn job_id(&self) -> Option<u64> {
        match self {
            Operation::Cancel { job_id } => Some(*job_id),
            _ => None,
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operation::Ping => f.write_str("ping"),
            Operation::Submit {
                job_name,
                partition: Some(partition),
            } => write!(
                f,
                "submission of array job {job_name:?} to partition {partition:?}"
            ),
            Operation::Submit {
                job_name,
                partition: None,
            } => write!(
                f,
                "submission of array job {job_name:?} to the default partition"
            ),
            Operation::ListJobs => f.write_str("job listing"),
            Operation::Cancel { job_id } => write!(f, "cancel of Slurm job {job_id}"),
            Operation::ListNodes => f.write_str("node listing"),
            Operation::ListPartitions => f.write_str("partition listing"),
            Operation::Diag => f.write_str("diagnostics"),
        }
    }
}

/// One error entry that Slurm sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerError {
    /// Slurm's error number (`error_number`, `error_code` or `errno`).
    pub code: Option<i64>,
    /// The short error text, such as "Invalid job id specified".
    pub message: Option<String>,
    /// The longer description, such as "Unable to find JobId=12".
    pub description: Option<String>,
    /// The Slurm function that failed, such as `slurm_load_job`.
    pub source: Option<String>,
}

impl From<&types::V0038Error> for ServerError {
    fn from(error: &types::V0038Error) -> ServerError {
        ServerError {
            code: error.error_number.or(error.error_code).or(error.errno),
            message: error.error.clone(),
            description: error.description.clone(),
            source: error.source.clone(),
        }
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut texts = Vec::new();
        texts.extend(self.message.as_deref());
        texts.extend(self.description.as_deref());
        texts.dedup();
        if texts.is_empty() {
            f.write_str("no description")?;
        } else {
            f.write_str(&texts.join(": "))?;
        }
        if let Some(code) = self.code {
            write!(f, " (Slurm error {code})")?;
        }
        Ok(())
    }
}

/// Formats the entries as one line, separated by semicolons.
pub(crate) struct ServerErrors<'a>(pub &'a [ServerError]);

impl fmt::Display for ServerErrors<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("no error description in the response");
        }
        for (position, error) in self.0.iter().enumerate() {
            if position > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// Formats " with HTTP 500" for a status, and nothing without one.
struct HttpStatus(Option<u16>);

impl fmt::Display for HttpStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(status) => write!(f, " with HTTP {status}"),
            None => Ok(()),
        }
    }
}

/// An error of a Slurm operation.
#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    /// Slurm rejected the request with error entries: slurmrestd in its response
    /// body, a command line tool on standard error or in its JSON output.
    #[error("{operation} failed{}: {}", HttpStatus(*.status), ServerErrors(.errors))]
    Rejected {
        /// The operation.
        operation: Operation,
        /// The HTTP status of the response. `None` when a command line tool
        /// reported the error.
        status: Option<u16>,
        /// The error entries of the response body, or the command's error output.
        errors: Vec<ServerError>,
    },

    /// slurmrestd still rejected the token after it was renewed once.
    #[error(
        "{operation} failed: slurmrestd rejected the token for user {user:?} \
         with HTTP {status} even after renewing it: {}; check that the token source \
         mints tokens for this user and that slurmrestd runs with -a rest_auth/jwt",
        ServerErrors(.errors)
    )]
    Unauthorized {
        /// The operation.
        operation: Operation,
        /// The user name sent in `X-SLURM-USER-NAME`.
        user: String,
        /// The HTTP status of the last response.
        status: u16,
        /// The error entries of the last response body, if it had any.
        errors: Vec<ServerError>,
    },

    /// No slurmctld replied to ping with state UP.
    #[error("{operation} failed: no slurmctld is up ({})", .controllers.join(", "))]
    ControllerDown {
        /// The operation.
        operation: Operation,
        /// Each controller's host name and state.
        controllers: Vec<String>,
    },

    /// No token could be obtained.
    #[error("{operation} failed: no Slurm token")]
    Token {
        /// The operation.
        operation: Operation,
        /// The token source's error.
        #[source]
        source: TokenError,
    },

    /// slurmrestd could not be reached, or the connection failed.
    #[error("{operation} failed: could not reach slurmrestd at {url}")]
    Unreachable {
        /// The operation.
        operation: Operation,
        /// slurmrestd's base URL.
        url: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },

    /// slurmrestd sent a response that this client cannot read.
    #[error("{operation} failed: unexpected response from slurmrestd: {detail}")]
    InvalidResponse {
        /// The operation.
        operation: Operation,
        /// The status, and what was wrong with the body.
        detail: String,
    },

    /// The request is invalid before it is sent.
    #[error("{operation} failed: invalid request: {reason}")]
    InvalidRequest {
        /// The operation.
        operation: Operation,
        /// The problem, in words.
        reason: String,
    },

    /// A Slurm command line tool was not found.
    #[error(
        "{operation} failed: the Slurm command {program:?} was not found; install \
         Slurm's client commands or set the command's path in the Slurm CLI settings"
    )]
    CommandNotFound {
        /// The operation.
        operation: Operation,
        /// The command's name or path as configured.
        program: String,
    },

    /// A Slurm command line tool could not be started, or its output not read.
    #[error("{operation} failed: could not run {program:?}")]
    CommandIo {
        /// The operation.
        operation: Operation,
        /// The command's name or path as configured.
        program: String,
        /// The error of starting the process or of reading its output.
        #[source]
        source: std::io::Error,
    },

    /// A Slurm command line tool did not exit in time and was killed.
    #[error(
        "{operation} failed: {program:?} did not exit within {:.1} s and was killed",
        .timeout.as_secs_f64()
    )]
    CommandTimedOut {
        /// The operation.
        operation: Operation,
        /// The command's name or path as configured.
        program: String,
        /// The time limit that the command exceeded.
        timeout: Duration,
    },

    /// The client configuration is invalid.
    #[error("invalid Slurm client configuration: {reason}")]
    Config {
        /// The problem, with the invalid value.
        reason: String,
    },
}

impl SlurmError {
    /// Returns the operation that failed, if the error came from one.
    pub fn operation(&self) -> Option<&Operation> {
        match self {
            SlurmError::Rejected { operation, .. }
            | SlurmError::Unauthorized { operation, .. }
            | SlurmError::ControllerDown { operation, .. }
            | SlurmError::Token { operation, .. }
            | SlurmError::Unreachable { operation, .. }
            | SlurmError::InvalidResponse { operation, .. }
            | SlurmError::InvalidRequest { operation, .. }
            | SlurmError::CommandNotFound { operation, .. }
            | SlurmError::CommandIo { operation, .. }
            | SlurmError::CommandTimedOut { operation, .. } => Some(operation),
            SlurmError::Config { .. } => None,
        }
    }

    /// Returns the Slurm job id that the failed operation targeted, if any.
    pub fn job_id(&self) -> Option<u64> {
        self.operation().and_then(Operation::job_id)
    }

    /// Returns the Slurm error numbers that the server sent.
    pub fn slurm_error_codes(&self) -> Vec<i64> {
        match self {
            SlurmError::Rejected { errors, .. } | SlurmError::Unauthorized { errors, .. } => {
                errors.iter().filter_map(|error| error.code).collect()
            }
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejected_submission_names_partition_and_reason() {
        let error = SlurmError::Rejected {
            operation: Operation::Submit {
                job_name: "spillway-1".into(),
                partition: Some("nosuch".into()),
            },
            status: Some(500),
            errors: vec![ServerError {
                code: Some(2000),
                message: Some("Invalid partition name specified".into()),
                ..ServerError::default()
            }],
        };
        assert_eq!(
            error.to_string(),
            "submission of array job \"spillway-1\" to partition \"nosuch\" failed with \
             HTTP 500: Invalid partition name specified (Slurm error 2000)"
        );
        assert_eq!(error.slurm_error_codes(), vec![2000]);
    }

    #[test]
    fn rejected_cancel_names_job_id() {
        let error = SlurmError::Rejected {
            operation: Operation::Cancel { job_id: 12 },
            status: Some(500),
            errors: vec![ServerError {
                code: Some(2017),
                message: Some("Invalid job id specified".into()),
                description: Some("Unable to find JobId=12".into()),
                source: Some("slurm_kill_job".into()),
            }],
        };
        assert_eq!(error.job_id(), Some(12));
        assert_eq!(
            error.to_string(),
            "cancel of Slurm job 12 failed with HTTP 500: Invalid job id specified: \
             Unable to find JobId=12 (Slurm error 2017)"
        );
    }
}
