//! The `sbatch` command line of an [`ArraySubmission`].
//!
//! sbatch runs with exactly the job's variables and `SLURM_CONF` in its
//! environment, and `--export=ALL` passes them all to the job, so the job gets
//! those and Slurm's own `SLURM_*` variables, as with slurmrestd. An explicit list
//! such as `--export=PATH,FOO` would not do: Slurm 22.05 then sets
//! `SLURM_GET_USER_ENV=1` and the job also gets the user's login environment (for
//! root on the test cluster, HOME, SHELL and what root's profile sets). `NAME=VALUE`
//! items would also break at commas inside values.

use crate::api::ArraySubmission;

/// How a submission requests GPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GpuRequest {
    /// `--gpus-per-node=[TYPE:]N`, as slurmrestd's `gpus_per_node`. Needs
    /// `SelectType=select/cons_tres`.
    #[default]
    GpusPerNode,
    /// `--gres=gpu[:TYPE]:N`, which `select/cons_res` sites need.
    Gres,
}

/// Returns sbatch's arguments. The script goes on standard input, and the job's
/// variables into sbatch's environment.
pub(crate) fn sbatch_arguments(request: &ArraySubmission, gpu_request: GpuRequest) -> Vec<String> {
    let mut args = vec![
        "--parsable".to_string(),
        format!("--job-name={}", request.job_name),
        format!("--array={}", request.array_expression()),
        // Every array element is a one-node job with one task, as in the REST client.
        "--nodes=1".to_string(),
        "--ntasks=1".to_string(),
    ];

    if let Some(partition) = &request.partition {
        args.push(format!("--partition={partition}"));
    }
    if let Some(gpus) = request.gpus_expression() {
        args.push(match gpu_request {
            GpuRequest::GpusPerNode => format!("--gpus-per-node={gpus}"),
            GpuRequest::Gres => format!("--gres=gpu:{gpus}"),
        });
    }

    if let Some(cpus) = request.cpus_per_task {
        args.push(format!("--cpus-per-task={cpus}"));
    }
    if let Some(mib) = request.memory_per_task_mib {
        args.push(format!("--mem={mib}M"));
    }
    if let Some(minutes) = request.time_limit_minutes() {
        args.push(format!("--time={minutes}"));
    }

    if let Some(account) = &request.account {
        args.push(format!("--account={account}"));
    }
    if let Some(qos) = &request.qos {
        args.push(format!("--qos={qos}"));
    }

    args.push(format!("--chdir={}", request.working_directory.display()));
    if let Some(output) = &request.output_path {
        args.push(format!("--output={output}"));
    }
    if let Some(error) = &request.error_path {
        args.push(format!("--error={error}"));
    }
    args.push("--export=ALL".to_string());
    args
}

/// Checks what sbatch's command line and environment cannot carry: variable names
/// other than letters, digits and `_` (not first a digit), and NUL characters.
// NOTE: sbatch also reads its own options from SBATCH_* variables and may read
// other SLURM_* ones, so a job variable with such a name changes the submission.
pub(crate) fn check_submission(request: &ArraySubmission) -> Result<(), String> {
    let mut problems = Vec::new();
    for (name, value) in &request.environment {
        let valid_name = name
            .chars()
            .next()
            .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
            && name
                .chars()
                .all(|character| character.is_ascii_alphanumeric() || character == '_');
        if !valid_name {
            problems.push(format!(
                "the environment variable name {name:?} must consist of letters, digits \
                 and _, and not start with a digit"
            ));
        }
        if value.contains('\0') {
            problems.push(format!(
                "the value of environment variable {name} contains a NUL character"
            ));
        }
    }
    let texts = [
        ("job name", Some(&request.job_name)),
        ("partition", request.partition.as_ref()),
        ("account", request.account.as_ref()),
        ("qos", request.qos.as_ref()),
        ("output path", request.output_path.as_ref()),
        ("error path", request.error_path.as_ref()),
        ("script", Some(&request.script)),
    ];
    for (what, text) in texts {
        if text.is_some_and(|text| text.contains('\0')) {
            problems.push(format!("the {what} contains a NUL character"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;

    fn request() -> ArraySubmission {
        ArraySubmission {
            job_name: "embed".to_string(),
            script: "#!/bin/sh\ntrue\n".to_string(),
            indices: 0..=9,
            throttle: Some(2),
            partition: Some("gpu".to_string()),
            gpus_per_task: Some(1),
            gpu_type: Some("a100".to_string()),
            cpus_per_task: Some(4),
            memory_per_task_mib: Some(2048),
            time_limit: Some(Duration::from_secs(90)),
            account: Some("lab".to_string()),
            qos: Some("high".to_string()),
            working_directory: PathBuf::from("/scratch/job"),
            environment: BTreeMap::from([
                ("PATH".to_string(), "/usr/bin".to_string()),
                ("SPILLWAY_TASKS".to_string(), "a,b".to_string()),
            ]),
            output_path: Some("/scratch/job/%A_%a.out".to_string()),
            error_path: Some("/scratch/job/%A_%a.err".to_string()),
        }
    }

    #[test]
    fn arguments_of_full_request() {
        assert_eq!(
            sbatch_arguments(&request(), GpuRequest::GpusPerNode),
            vec![
                "--parsable",
                "--job-name=embed",
                "--array=0-9%2",
                "--nodes=1",
                "--ntasks=1",
                "--partition=gpu",
                "--gpus-per-node=a100:1",
                "--cpus-per-task=4",
                "--mem=2048M",
                "--time=2",
                "--account=lab",
                "--qos=high",
                "--chdir=/scratch/job",
                "--output=/scratch/job/%A_%a.out",
                "--error=/scratch/job/%A_%a.err",
                "--export=ALL",
            ]
        );
    }

    #[test]
    fn arguments_of_minimal_request() {
        let mut minimal = request();
        minimal.throttle = None;
        minimal.partition = None;
        minimal.gpus_per_task = None;
        minimal.cpus_per_task = None;
        minimal.memory_per_task_mib = None;
        minimal.time_limit = None;
        minimal.account = None;
        minimal.qos = None;
        minimal.output_path = None;
        minimal.error_path = None;
        minimal.environment.clear();
        assert_eq!(
            sbatch_arguments(&minimal, GpuRequest::GpusPerNode),
            vec![
                "--parsable",
                "--job-name=embed",
                "--array=0-9",
                "--nodes=1",
                "--ntasks=1",
                "--chdir=/scratch/job",
                "--export=ALL",
            ]
        );
    }

    #[test]
    fn gres_request() {
        let mut typed = request();
        let args = sbatch_arguments(&typed, GpuRequest::Gres);
        assert!(args.contains(&"--gres=gpu:a100:1".to_string()), "{args:?}");
        typed.gpu_type = None;
        let args = sbatch_arguments(&typed, GpuRequest::Gres);
        assert!(args.contains(&"--gres=gpu:1".to_string()), "{args:?}");
        assert!(!args.iter().any(|arg| arg.starts_with("--gpus-per-node")));
    }

    #[test]
    fn check_rejects_what_sbatch_cannot_carry() {
        assert_eq!(check_submission(&request()), Ok(()));

        let mut bad = request();
        bad.environment.insert("A,B".to_string(), "x".to_string());
        bad.environment
            .insert("9LIVES".to_string(), "x".to_string());
        bad.environment.insert(String::new(), "x".to_string());
        bad.environment
            .insert("NUL".to_string(), "a\0b".to_string());
        bad.job_name = "a\0b".to_string();
        let problems = check_submission(&bad).unwrap_err();
        for expected in [
            "name \"A,B\"",
            "name \"9LIVES\"",
            "name \"\"",
            "environment variable NUL contains a NUL",
            "the job name contains a NUL",
        ] {
            assert!(
                problems.contains(expected),
                "{expected:?} not in {problems}"
            );
        }
    }
}
