//! Running one Slurm command: a chosen environment, standard input, a time limit,
//! and the translation of a failed run into [`SlurmError`].

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{ChildStdin, Command};

use crate::error::{Operation, ServerError, SlurmError};

/// Maximum length of the error output kept in an error, in characters.
const MAX_DESCRIPTION_CHARS: usize = 2000;

/// Slurm error numbers of messages that the tools print without their number. Each
/// pair was checked against slurmrestd 22.05.8, which sends the number and the
/// message together.
const KNOWN_ERROR_MESSAGES: [(i64, &str); 5] = [
    (2000, "Invalid partition name specified"),
    (2002, "Access/permission denied"),
    (2014, "Requested node configuration is not available"),
    (2017, "Invalid job id specified"),
    (2081, "Invalid job array specification"),
];

/// One command to run.
#[derive(Debug)]
pub(crate) struct Invocation<'a> {
    program: &'a Path,
    args: Vec<String>,
    input: Option<&'a str>,
    environment: Option<&'a BTreeMap<String, String>>,
}

impl<'a> Invocation<'a> {
    pub(crate) fn new(program: &'a Path, args: Vec<String>) -> Invocation<'a> {
        Invocation {
            program,
            args,
            input: None,
            environment: None,
        }
    }

    pub(crate) fn program(&self) -> &'a Path {
        self.program
    }

    /// Sets the text that the command reads on standard input.
    pub(crate) fn input(mut self, input: &'a str) -> Invocation<'a> {
        self.input = Some(input);
        self
    }

    /// Sets the command's variables, which replace `PATH`.
    pub(crate) fn environment(
        mut self,
        environment: &'a BTreeMap<String, String>,
    ) -> Invocation<'a> {
        self.environment = Some(environment);
        self
    }
}

/// The output and exit status of a command that ran to its end.
#[derive(Debug)]
pub(crate) struct CommandOutput {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// Runs commands with a time limit in an environment of a few chosen variables.
///
/// A command gets `PATH` and `SLURM_CONF`, or, when its [`Invocation`] brings its
/// own variables, those and `SLURM_CONF`. No other variable of the calling process
/// reaches it.
#[derive(Debug)]
pub(crate) struct CommandRunner {
    timeout: Duration,
    /// The calling process's `PATH`, where commands given by name are searched.
    search_path: Option<OsString>,
    /// `SLURM_CONF` for every command.
    slurm_conf: Option<OsString>,
}

impl CommandRunner {
    pub(crate) fn new(
        timeout: Duration,
        search_path: Option<OsString>,
        slurm_conf: Option<OsString>,
    ) -> Self {
        CommandRunner {
            timeout,
            search_path,
            slurm_conf,
        }
    }

    /// Finds a program given by name in `search_path`, because a command with its
    /// own variables may have another `PATH` or none, and the operating system
    /// would search that one. Returns `None` when the name is in no folder of
    /// `search_path`, and `program` unchanged when it contains a `/` or there is no
    /// `search_path`.
    fn resolve(&self, program: &Path) -> Option<PathBuf> {
        if program.to_string_lossy().contains('/') {
            return Some(program.to_path_buf());
        }
        let Some(search_path) = &self.search_path else {
            return Some(program.to_path_buf());
        };
        std::env::split_paths(search_path)
            .map(|dir| dir.join(program))
            .find(|candidate| is_executable(candidate))
    }

    fn set_environment(&self, command: &mut Command, invocation: &Invocation<'_>) {
        command.env_clear();
        match invocation.environment {
            Some(environment) => {
                command.envs(environment);
            }
            None => {
                if let Some(path) = &self.search_path {
                    command.env("PATH", path);
                }
            }
        }
        // Last, so that a job's own SLURM_CONF cannot point sbatch at another cluster.
        if let Some(slurm_conf) = &self.slurm_conf {
            command.env("SLURM_CONF", slurm_conf);
        }
    }

    /// Runs a command to its end and returns its output, whatever its exit status.
    /// A command that runs longer than the time limit is killed.
    pub(crate) async fn run(
        &self,
        operation: &Operation,
        invocation: Invocation<'_>,
    ) -> Result<CommandOutput, SlurmError> {
        let program = invocation.program.display().to_string();
        let executable =
            self.resolve(invocation.program)
                .ok_or_else(|| SlurmError::CommandNotFound {
                    operation: operation.clone(),
                    program: program.clone(),
                })?;
        let mut command = Command::new(&executable);
        self.set_environment(&mut command, &invocation);
        command
            .args(&invocation.args)
            .stdin(match invocation.input {
                Some(_) => Stdio::piped(),
                None => Stdio::null(),
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);

        let started = Instant::now();
        let mut child = command
            .spawn()
            .map_err(|source| spawn_error(operation, &program, source))?;
        let pid = child.id();
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let completion = async {
            let ((), stdout, stderr, status) = tokio::try_join!(
                write_input(stdin, invocation.input),
                read_all(stdout),
                read_all(stderr),
                child.wait(),
            )?;
            Ok::<_, io::Error>(CommandOutput {
                status,
                stdout,
                stderr,
            })
        };
        let result = tokio::time::timeout(self.timeout, completion).await;

        match result {
            Ok(Ok(output)) => {
                tracing::debug!(%operation, %program, executable = %executable.display(), args = ?invocation.args, status = %output.status, elapsed_ms = started.elapsed().as_millis() as u64, "ran Slurm command");
                Ok(output)
            }
            Ok(Err(source)) => {
                kill(&mut child, &program, pid).await;
                Err(SlurmError::CommandIo {
                    operation: operation.clone(),
                    program,
                    source,
                })
            }
            Err(_elapsed) => {
                tracing::warn!(%operation, %program, pid, timeout_secs = self.timeout.as_secs_f64(), "killing a Slurm command that exceeded its time limit");
                kill(&mut child, &program, pid).await;
                Err(SlurmError::CommandTimedOut {
                    operation: operation.clone(),
                    program,
                    timeout: self.timeout,
                })
            }
        }
    }

    /// Runs a command and fails with [`SlurmError::Rejected`] unless it exits with
    /// status 0.
    pub(crate) async fn run_checked(
        &self,
        operation: &Operation,
        invocation: Invocation<'_>,
    ) -> Result<CommandOutput, SlurmError> {
        let program = invocation.program;
        let output = self.run(operation, invocation).await?;
        if output.status.success() {
            Ok(output)
        } else {
            Err(rejection(operation, program, &output))
        }
    }
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .is_ok_and(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
}

fn spawn_error(operation: &Operation, program: &str, source: io::Error) -> SlurmError {
    if source.kind() == io::ErrorKind::NotFound {
        SlurmError::CommandNotFound {
            operation: operation.clone(),
            program: program.to_string(),
        }
    } else {
        SlurmError::CommandIo {
            operation: operation.clone(),
            program: program.to_string(),
            source,
        }
    }
}

/// Kills the child and waits for it, so that it leaves no zombie. Only the child
/// itself gets SIGKILL.
// NOTE: processes that the command started itself, such as those of a site's
// wrapper script around sbatch, are not killed.
async fn kill(child: &mut tokio::process::Child, program: &str, pid: Option<u32>) {
    if let Err(error) = child.kill().await {
        tracing::warn!(%program, pid, %error, "could not kill a Slurm command");
    }
}

async fn write_input(stdin: Option<ChildStdin>, input: Option<&str>) -> io::Result<()> {
    let (Some(mut stdin), Some(input)) = (stdin, input) else {
        return Ok(());
    };
    match stdin.write_all(input.as_bytes()).await {
        // A command that exits before it reads its input, such as sbatch rejecting
        // an option, closes the pipe. Its exit status and error output tell why.
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        result => result,
    }
    // Dropping `stdin` here closes the pipe, so the command reads end of file.
}

async fn read_all(pipe: Option<impl AsyncRead + Unpin>) -> io::Result<String> {
    let mut bytes = Vec::new();
    if let Some(mut pipe) = pipe {
        pipe.read_to_end(&mut bytes).await?;
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Builds the error of a command that exited with a non-zero status.
pub(crate) fn rejection(
    operation: &Operation,
    program: &Path,
    output: &CommandOutput,
) -> SlurmError {
    let program = program.display();
    let ending = match output.status.code() {
        Some(code) => format!("{program} exited with status {code}"),
        None => format!("{program} ended without an exit status ({})", output.status),
    };
    let description = error_description(&output.stderr);
    SlurmError::Rejected {
        operation: operation.clone(),
        status: None,
        errors: vec![ServerError {
            code: description.as_deref().and_then(known_error_code),
            message: Some(ending),
            description,
            source: None,
        }],
    }
}

/// Builds the error of a command that reported an error on standard error but
/// exited with status 0, as `scancel` does for an unknown job id.
pub(crate) fn reported_error(operation: &Operation, stderr: &str) -> SlurmError {
    let description = error_description(stderr);
    SlurmError::Rejected {
        operation: operation.clone(),
        status: None,
        errors: vec![ServerError {
            code: description.as_deref().and_then(known_error_code),
            description,
            ..ServerError::default()
        }],
    }
}

/// Returns the error lines of a command's standard error joined by `; `, or all of
/// its lines when none contains `error:`. Returns `None` when it printed nothing.
pub(crate) fn error_description(stderr: &str) -> Option<String> {
    let lines = stderr
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>();
    let error_lines = lines
        .iter()
        .copied()
        .filter(|line| line.contains("error:"))
        .collect::<Vec<_>>();
    let chosen = if error_lines.is_empty() {
        lines
    } else {
        error_lines
    };
    if chosen.is_empty() {
        return None;
    }

    let joined = chosen.join("; ");
    if joined.chars().count() <= MAX_DESCRIPTION_CHARS {
        return Some(joined);
    }
    let mut shortened = joined
        .chars()
        .take(MAX_DESCRIPTION_CHARS)
        .collect::<String>();
    shortened.push_str(" …");
    Some(shortened)
}

/// Returns the Slurm error number of the first known message in `text`.
pub(crate) fn known_error_code(text: &str) -> Option<i64> {
    KNOWN_ERROR_MESSAGES
        .iter()
        .find(|(_, message)| text.contains(message))
        .map(|(code, _)| *code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = format!("{}/tests/fixtures/cli/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{path}: {error}"))
    }

    /// Writes an executable shell script into `dir` and returns its path.
    fn stub(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn runner(timeout: Duration) -> CommandRunner {
        CommandRunner::new(
            timeout,
            Some("/usr/bin:/bin".into()),
            Some("/etc/slurm-test/slurm.conf".into()),
        )
    }

    /// Returns the variables that a stub printed, without those the shell sets.
    fn variables(printed: &str) -> Vec<&str> {
        printed
            .lines()
            .filter(|line| {
                !["PWD=", "OLDPWD=", "SHLVL=", "_="]
                    .iter()
                    .any(|shell| line.starts_with(shell))
            })
            .collect()
    }

    #[tokio::test]
    async fn output_input_and_environment() {
        let dir = tempfile::tempdir().unwrap();
        let program = stub(
            dir.path(),
            "echoing",
            "/bin/cat; /usr/bin/env | /usr/bin/sort >&2",
        );
        let runner = runner(Duration::from_secs(10));

        let output = runner
            .run(
                &Operation::Ping,
                Invocation::new(&program, vec![]).input("script text\n"),
            )
            .await
            .unwrap();
        assert!(output.status.success());
        assert_eq!(output.stdout, "script text\n");
        assert_eq!(
            variables(&output.stderr),
            vec![
                "PATH=/usr/bin:/bin",
                "SLURM_CONF=/etc/slurm-test/slurm.conf"
            ]
        );

        // A command's own variables replace PATH, and SLURM_CONF stays the configured one.
        let environment = BTreeMap::from([
            ("JOB_VALUE".to_string(), "a,b c".to_string()),
            ("SLURM_CONF".to_string(), "/elsewhere.conf".to_string()),
        ]);
        let invocation = Invocation::new(&program, vec![]).environment(&environment);
        let output = runner.run(&Operation::Ping, invocation).await.unwrap();
        assert_eq!(output.stdout, "");
        assert_eq!(
            variables(&output.stderr),
            vec!["JOB_VALUE=a,b c", "SLURM_CONF=/etc/slurm-test/slurm.conf"]
        );
    }

    #[tokio::test]
    async fn program_found_in_base_path_despite_job_path() {
        let dir = tempfile::tempdir().unwrap();
        stub(dir.path(), "fake-sbatch", "echo \"$PATH\"");
        let base_path = format!("{}:/usr/bin:/bin", dir.path().display());
        let runner = CommandRunner::new(Duration::from_secs(10), Some(base_path.into()), None);
        let job_environment = BTreeMap::from([("PATH".to_string(), "/nonexistent".to_string())]);

        let invocation =
            Invocation::new(Path::new("fake-sbatch"), vec![]).environment(&job_environment);
        let output = runner.run(&Operation::Ping, invocation).await.unwrap();
        assert_eq!(output.stdout, "/nonexistent\n");
    }

    #[tokio::test]
    async fn missing_program_is_named() {
        let program = PathBuf::from("/nonexistent/sbatch");
        let error = runner(Duration::from_secs(10))
            .run(&Operation::Ping, Invocation::new(&program, vec![]))
            .await
            .unwrap_err();

        assert!(
            matches!(&error, SlurmError::CommandNotFound { program, .. } if program == "/nonexistent/sbatch"),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(
            message.contains("\"/nonexistent/sbatch\" was not found"),
            "{message}"
        );
        assert!(message.starts_with("ping failed"), "{message}");
    }

    #[tokio::test]
    async fn slow_command_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let body = format!("echo $$ > {}\nexec sleep 30", pid_file.display());
        let program = stub(dir.path(), "slow", &body);

        let started = Instant::now();
        let error = runner(Duration::from_millis(500))
            .run(&Operation::ListJobs, Invocation::new(&program, vec![]))
            .await
            .unwrap_err();

        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(
            matches!(error, SlurmError::CommandTimedOut { .. }),
            "{error:?}"
        );
        assert!(
            error.to_string().contains("did not exit within 0.5 s"),
            "{error}"
        );
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        assert!(
            !Path::new(&format!("/proc/{}", pid.trim())).exists(),
            "process {} still exists",
            pid.trim()
        );
    }

    #[tokio::test]
    async fn early_exit_ignores_unread_input() {
        let dir = tempfile::tempdir().unwrap();
        let program = stub(
            dir.path(),
            "refusing",
            "echo 'sbatch: error: refused' >&2; exit 1",
        );
        let input = "#!/bin/sh\n".repeat(100_000);

        let output = runner(Duration::from_secs(10))
            .run(
                &Operation::ListJobs,
                Invocation::new(&program, vec![]).input(&input),
            )
            .await
            .unwrap();
        assert_eq!(output.status.code(), Some(1));
        assert_eq!(output.stderr, "sbatch: error: refused\n");
    }

    #[tokio::test]
    async fn non_zero_exit_is_rejection() {
        let dir = tempfile::tempdir().unwrap();
        let stderr_file = dir.path().join("stderr");
        std::fs::write(&stderr_file, fixture("sbatch-invalid-partition.stderr")).unwrap();
        let program = stub(
            dir.path(),
            "sbatch",
            &format!("cat {} >&2; exit 1", stderr_file.display()),
        );
        let operation = Operation::Submit {
            job_name: "misplaced".into(),
            partition: Some("nosuch".into()),
        };

        let error = runner(Duration::from_secs(10))
            .run_checked(&operation, Invocation::new(&program, vec![]))
            .await
            .unwrap_err();
        assert!(
            matches!(error, SlurmError::Rejected { status: None, .. }),
            "{error:?}"
        );
        assert_eq!(error.slurm_error_codes(), vec![2000]);
        let message = error.to_string();
        let expected = format!(
            "submission of array job \"misplaced\" to partition \"nosuch\" failed: {} exited \
             with status 1: sbatch: error: invalid partition specified: nosuch; sbatch: error: \
             Batch job submission failed: Invalid partition name specified (Slurm error 2000)",
            program.display()
        );
        assert_eq!(message, expected);
    }

    #[test]
    fn description_prefers_error_lines() {
        let stderr = fixture("scancel-unknown-job.stderr");
        assert_eq!(
            error_description(&stderr).as_deref(),
            Some("scancel: error: Kill job error on job id 999999: Invalid job id specified")
        );
        assert_eq!(
            error_description("first\n\n  second  \n").as_deref(),
            Some("first; second")
        );
        assert_eq!(error_description(" \n"), None);
        let long = error_description(&"x".repeat(5000)).unwrap();
        assert_eq!(long.chars().count(), MAX_DESCRIPTION_CHARS + 2);
    }

    #[test]
    fn known_codes_of_captured_messages() {
        let cases = [
            ("sbatch-invalid-partition.stderr", Some(2000)),
            ("sbatch-impossible-gpus.stderr", Some(2014)),
            ("sbatch-array-too-large.stderr", Some(2081)),
            ("scancel-unknown-job.stderr", Some(2017)),
            ("scancel-ended.stderr", None),
        ];
        for (name, expected) in cases {
            assert_eq!(known_error_code(&fixture(name)), expected, "{name}");
        }
    }
}
