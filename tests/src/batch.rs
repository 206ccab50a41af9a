//! A stand-in for the machines behind AWS Batch: an HTTP server on 127.0.0.1 in front
//! of moto's Batch for one region endpoint.
//!
//! moto accepts Batch calls but never runs a container (in its mode without Docker a
//! job succeeds inside SubmitJob). The stand-in passes every call through to moto.
//! For each job that SubmitJob creates, it runs the job definition's command as a
//! real process per array element. Each process gets the definition's environment,
//! the submission's overrides and the variables Batch sets (`AWS_BATCH_JOB_ID`,
//! `AWS_BATCH_JOB_ARRAY_INDEX`, `AWS_BATCH_JQ_NAME`). DescribeJobs returns the state
//! of those processes: an element is RUNNABLE until it starts, RUNNING while it
//! runs, and SUCCEEDED or FAILED by its exit code. TerminateJob fails elements not
//! started and sends SIGTERM to running ones.
//!
//! Faults for tests: a 429 TooManyRequestsException response to the next N SubmitJob
//! calls, a 500 ServerException response to every call (a region that is down), or
//! elements that never start (a region without capacity).

mod http;

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Message, error_response, exchange, json_response, read_message};

/// How often the scheduler starts elements and reaps exited ones.
const TICK: Duration = Duration::from_millis(50);

/// One array element, as the stand-in runs it.
#[derive(Debug)]
enum Element {
    Runnable,
    Running(Child),
    Succeeded,
    Failed,
}

impl Element {
    fn status(&self) -> &'static str {
        match self {
            Element::Runnable => "RUNNABLE",
            Element::Running(_) => "RUNNING",
            Element::Succeeded => "SUCCEEDED",
            Element::Failed => "FAILED",
        }
    }
}

/// A job that SubmitJob created, with its elements.
#[derive(Debug)]
struct JobRun {
    batch_job_id: String,
    job_name: String,
    job_queue: String,
    job_definition: String,
    /// `None` for a plain job, which has one element and no array index.
    array_size: Option<u32>,
    command: Vec<String>,
    /// The definition's environment with the submission's overrides on top.
    environment: BTreeMap<String, String>,
    created_ms: i64,
    terminated: bool,
    elements: Vec<Element>,
}

/// What a test reads about a job the stand-in ran.
#[derive(Debug, Clone)]
pub struct SubmittedJob {
    pub batch_job_id: String,
    pub job_name: String,
    pub job_queue: String,
    pub job_definition: String,
    pub array_size: Option<u32>,
    pub command: Vec<String>,
    pub environment: BTreeMap<String, String>,
    pub terminated: bool,
    /// Element statuses by index: RUNNABLE, RUNNING, SUCCEEDED or FAILED.
    pub statuses: Vec<&'static str>,
}

/// Calls the stand-in received, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Calls {
    /// SubmitJob calls, including throttled and failed ones.
    pub submit: u32,
    /// SubmitJob calls that got a 429 response.
    pub throttled: u32,
    /// Calls of any kind that got a 500 response while the region was down.
    pub failed: u32,
    pub describe: u32,
    pub terminate: u32,
}

#[derive(Debug, Default)]
struct Faults {
    throttle_submits: u32,
    down: bool,
    no_capacity: bool,
}

struct Shared {
    moto_port: u16,
    /// Elements that run at once over all jobs, like the vCPUs of a compute environment.
    max_running: usize,
    /// Variables every element gets first, such as the S3 endpoint of the test.
    base_environment: Vec<(String, String)>,
    log_dir: PathBuf,
    faults: Mutex<Faults>,
    calls: Mutex<Calls>,
    jobs: Mutex<Vec<JobRun>>,
}

/// The stand-in server with its scheduler; stops and kills its processes on drop.
pub struct BatchStandIn {
    pub port: u16,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    _logs: tempfile::TempDir,
}

impl BatchStandIn {
    /// Starts a stand-in in front of moto on `moto_port`. Elements run with the
    /// test's environment minus its `AWS_*` and `SPILLWAY_*` variables, plus
    /// `base_environment`, plus what Batch would give them.
    pub fn start(
        moto_port: u16,
        max_running: usize,
        base_environment: Vec<(String, String)>,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let logs = tempfile::tempdir()?;
        let shared = Arc::new(Shared {
            moto_port,
            max_running,
            base_environment,
            log_dir: logs.path().to_path_buf(),
            faults: Mutex::default(),
            calls: Mutex::default(),
            jobs: Mutex::default(),
        });
        let stop = Arc::new(AtomicBool::new(false));

        let acceptor = {
            let (shared, stop) = (Arc::clone(&shared), Arc::clone(&stop));
            std::thread::Builder::new()
                .name(format!("batch-stand-in-{port}"))
                .spawn(move || accept(listener, &shared, &stop))?
        };
        let scheduler = {
            let (shared, stop) = (Arc::clone(&shared), Arc::clone(&stop));
            std::thread::Builder::new()
                .name(format!("batch-scheduler-{port}"))
                .spawn(move || schedule(&shared, &stop))?
        };
        Ok(Self {
            port,
            shared,
            stop,
            threads: vec![acceptor, scheduler],
            _logs: logs,
        })
    }

    /// Base URL for a Batch client or a `[[backend.batch.queues]]` endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Returns 429 TooManyRequestsException to the next `count` SubmitJob calls.
    pub fn throttle_submits(&self, count: u32) {
        self.shared.faults.lock().unwrap().throttle_submits = count;
    }

    /// Returns 500 ServerException to every call while `down` is true.
    pub fn set_down(&self, down: bool) {
        self.shared.faults.lock().unwrap().down = down;
    }

    /// Starts no element while `no_capacity` is true; they stay RUNNABLE.
    pub fn set_no_capacity(&self, no_capacity: bool) {
        self.shared.faults.lock().unwrap().no_capacity = no_capacity;
    }

    /// Returns the calls received so far.
    pub fn calls(&self) -> Calls {
        *self.shared.calls.lock().unwrap()
    }

    /// Returns the jobs that SubmitJob created, in submission order.
    pub fn jobs(&self) -> Vec<SubmittedJob> {
        let jobs = self.shared.jobs.lock().unwrap();
        jobs.iter()
            .map(|job| SubmittedJob {
                batch_job_id: job.batch_job_id.clone(),
                job_name: job.job_name.clone(),
                job_queue: job.job_queue.clone(),
                job_definition: job.job_definition.clone(),
                array_size: job.array_size,
                command: job.command.clone(),
                environment: job.environment.clone(),
                terminated: job.terminated,
                statuses: job.elements.iter().map(Element::status).collect(),
            })
            .collect()
    }

    /// Returns the output of every element so far, for assertion messages.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        let Ok(entries) = std::fs::read_dir(&self.shared.log_dir) else {
            return text;
        };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|entry| entry.path()).collect();
        paths.sort();
        for path in paths {
            let content = std::fs::read_to_string(&path).unwrap_or_default();
            text.push_str(&format!("--- {}\n{content}\n", path.display()));
        }
        text
    }
}

impl Drop for BatchStandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        let mut jobs = self.shared.jobs.lock().unwrap();
        for element in jobs.iter_mut().flat_map(|job| job.elements.iter_mut()) {
            if let Element::Running(child) = element {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn accept(listener: TcpListener, shared: &Arc<Shared>, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let shared = Arc::clone(shared);
                let _ = std::thread::Builder::new()
                    .name("batch-stand-in-request".into())
                    .spawn(move || serve(stream, &shared));
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => return,
        }
    }
}

/// Answers one request on its own connection.
fn serve(mut stream: TcpStream, shared: &Shared) {
    let _ = stream.set_nonblocking(false);
    let Ok(request) = read_message(&stream, false) else {
        return;
    };
    let response = respond(shared, &request).unwrap_or_else(|error| {
        error_response(
            500,
            "Internal Server Error",
            "ServerException",
            &error.to_string(),
        )
    });
    let _ = response.write_to(&mut stream);
}

fn respond(shared: &Shared, request: &Message) -> anyhow::Result<Message> {
    let path = request.path().to_string();
    let throttle = {
        let mut faults = shared.faults.lock().unwrap();
        let mut calls = shared.calls.lock().unwrap();
        if path == "/v1/submitjob" {
            calls.submit += 1;
        }
        if faults.down {
            calls.failed += 1;
            return Ok(error_response(
                500,
                "Internal Server Error",
                "ServerException",
                "stand-in: this region is down",
            ));
        }
        let throttle = path == "/v1/submitjob" && faults.throttle_submits > 0;
        if throttle {
            faults.throttle_submits -= 1;
            calls.throttled += 1;
        }
        throttle
    };
    if throttle {
        return Ok(error_response(
            429,
            "Too Many Requests",
            "TooManyRequestsException",
            "Too Many Requests",
        ));
    }

    match path.as_str() {
        "/v1/submitjob" => submit(shared, request),
        "/v1/describejobs" => {
            shared.calls.lock().unwrap().describe += 1;
            describe(shared, request)
        }
        "/v1/terminatejob" => {
            shared.calls.lock().unwrap().terminate += 1;
            terminate(shared, request);
            Ok(exchange(shared.moto_port, request)?)
        }
        _ => Ok(exchange(shared.moto_port, request)?),
    }
}

/// Passes SubmitJob to moto, then records the new job with the command and
/// environment its elements will run with.
fn submit(shared: &Shared, request: &Message) -> anyhow::Result<Message> {
    let response = exchange(shared.moto_port, request)?;
    if response.status() != 200 {
        return Ok(response);
    }
    let submitted = request.json();
    let batch_job_id = response.json()["jobId"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("moto's SubmitJob response has no jobId"))?
        .to_string();
    let job_definition = submitted["jobDefinition"]
        .as_str()
        .unwrap_or("")
        .to_string();

    // Ask moto for the definition and the job, with the submission's headers, whose
    // credential scope names the region.
    let definitions = exchange(
        shared.moto_port,
        &with_path(
            request,
            "/v1/describejobdefinitions",
            serde_json::json!({"jobDefinitions": [job_definition]}),
        ),
    )?
    .json();
    let container = &definitions["jobDefinitions"][0]["containerProperties"];
    let described = exchange(
        shared.moto_port,
        &with_path(
            request,
            "/v1/describejobs",
            serde_json::json!({"jobs": [batch_job_id]}),
        ),
    )?
    .json();

    let mut environment = pairs(&container["environment"]);
    environment.extend(pairs(&submitted["containerOverrides"]["environment"]));
    let command = match submitted["containerOverrides"]["command"].as_array() {
        Some(command) => strings(command),
        None => strings(container["command"].as_array().unwrap_or(&Vec::new())),
    };
    let array_size = submitted["arrayProperties"]["size"]
        .as_u64()
        .map(|size| size as u32);
    let job = JobRun {
        batch_job_id,
        job_name: submitted["jobName"].as_str().unwrap_or("").to_string(),
        job_queue: described["jobs"][0]["jobQueue"]
            .as_str()
            .or(submitted["jobQueue"].as_str())
            .unwrap_or("")
            .to_string(),
        job_definition: definitions["jobDefinitions"][0]["jobDefinitionArn"]
            .as_str()
            .unwrap_or(&job_definition)
            .to_string(),
        array_size,
        command,
        environment,
        created_ms: now_ms(),
        terminated: false,
        elements: (0..array_size.unwrap_or(1))
            .map(|_| Element::Runnable)
            .collect(),
    };
    shared.jobs.lock().unwrap().push(job);
    Ok(response)
}

/// Answers DescribeJobs for the stand-in's jobs and asks moto about the others.
fn describe(shared: &Shared, request: &Message) -> anyhow::Result<Message> {
    let ids: Vec<String> = request.json()["jobs"]
        .as_array()
        .map(|ids| strings(ids))
        .unwrap_or_default();
    let mut described = Vec::new();
    let mut others = Vec::new();
    {
        let jobs = shared.jobs.lock().unwrap();
        for id in &ids {
            match jobs.iter().find(|job| &job.batch_job_id == id) {
                Some(job) => described.push(job_detail(job)),
                None => others.push(id.clone()),
            }
        }
    }
    if !others.is_empty() {
        let forwarded =
            request.with_body(serde_json::json!({"jobs": others}).to_string().into_bytes());
        let response = exchange(shared.moto_port, &forwarded)?.json();
        if let Some(jobs) = response["jobs"].as_array() {
            described.extend(jobs.iter().cloned());
        }
    }
    Ok(json_response(
        200,
        "OK",
        &serde_json::json!({"jobs": described}),
    ))
}

/// Builds the DescribeJobs entry of a job: its status and, for an array, the status
/// summary.
fn job_detail(job: &JobRun) -> serde_json::Value {
    let mut summary: BTreeMap<&str, u32> = [
        "SUBMITTED",
        "PENDING",
        "RUNNABLE",
        "STARTING",
        "RUNNING",
        "SUCCEEDED",
        "FAILED",
    ]
    .into_iter()
    .map(|status| (status, 0))
    .collect();
    for element in &job.elements {
        *summary.entry(element.status()).or_default() += 1;
    }
    let ended = summary["SUCCEEDED"] + summary["FAILED"];
    let status = if ended as usize == job.elements.len() {
        if summary["FAILED"] > 0 {
            "FAILED"
        } else {
            "SUCCEEDED"
        }
    } else if summary["RUNNING"] > 0 {
        "RUNNING"
    } else {
        "RUNNABLE"
    };

    let mut detail = serde_json::json!({
        "jobId": job.batch_job_id,
        "jobName": job.job_name,
        "jobQueue": job.job_queue,
        "jobDefinition": job.job_definition,
        "status": status,
        "createdAt": job.created_ms,
        "dependsOn": [],
    });
    if let Some(size) = job.array_size {
        detail["arrayProperties"] = serde_json::json!({"size": size, "statusSummary": summary});
    }
    detail
}

/// Fails the elements of a job that have not started and stops its running ones.
fn terminate(shared: &Shared, request: &Message) {
    let id = request.json()["jobId"].as_str().unwrap_or("").to_string();
    let mut jobs = shared.jobs.lock().unwrap();
    let Some(job) = jobs.iter_mut().find(|job| job.batch_job_id == id) else {
        return;
    };
    job.terminated = true;
    for element in &mut job.elements {
        match element {
            Element::Runnable => *element = Element::Failed,
            Element::Running(child) => {
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
            }
            _ => {}
        }
    }
}

/// Reaps exited elements and starts runnable ones, up to `max_running` at once,
/// until `stop`.
fn schedule(shared: &Shared, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        let no_capacity = shared.faults.lock().unwrap().no_capacity;
        let mut jobs = shared.jobs.lock().unwrap();
        let mut running = 0;
        for element in jobs.iter_mut().flat_map(|job| job.elements.iter_mut()) {
            if let Element::Running(child) = element {
                match child.try_wait() {
                    Ok(Some(status)) if status.success() => *element = Element::Succeeded,
                    Ok(Some(_)) | Err(_) => *element = Element::Failed,
                    Ok(None) => running += 1,
                }
            }
        }
        if !no_capacity {
            for job in jobs.iter_mut() {
                for index in 0..job.elements.len() {
                    if running >= shared.max_running {
                        break;
                    }
                    if matches!(job.elements[index], Element::Runnable) {
                        job.elements[index] = start_element(shared, job, index);
                        running += 1;
                    }
                }
            }
        }
        drop(jobs);
        std::thread::sleep(TICK);
    }
}

/// Runs one element's command with the environment Batch would give it.
fn start_element(shared: &Shared, job: &JobRun, index: usize) -> Element {
    let Some((program, arguments)) = job.command.split_first() else {
        return Element::Failed;
    };
    let log = shared
        .log_dir
        .join(format!("{}-{index}.log", job.batch_job_id));
    let Ok(output) = std::fs::File::create(&log) else {
        return Element::Failed;
    };
    let mut command = Command::new(program);
    command.args(arguments).stdin(Stdio::null());
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("AWS_") || name.starts_with("SPILLWAY_") {
            command.env_remove(name.as_ref());
        }
    }
    command
        .envs(shared.base_environment.iter().cloned())
        .envs(&job.environment)
        .env("AWS_BATCH_JQ_NAME", queue_name(&job.job_queue));
    match job.array_size {
        Some(_) => command
            .env("AWS_BATCH_JOB_ID", format!("{}:{index}", job.batch_job_id))
            .env("AWS_BATCH_JOB_ARRAY_INDEX", index.to_string()),
        None => command.env("AWS_BATCH_JOB_ID", &job.batch_job_id),
    };
    let Ok(error_output) = output.try_clone() else {
        return Element::Failed;
    };
    match command.stdout(output).stderr(error_output).spawn() {
        Ok(child) => Element::Running(child),
        Err(_) => Element::Failed,
    }
}

/// Returns a copy of `request` for another Batch path and JSON body.
fn with_path(request: &Message, path: &str, body: serde_json::Value) -> Message {
    let mut copy = request.with_body(body.to_string().into_bytes());
    copy.start_line = format!("POST {path} HTTP/1.1");
    copy
}

fn pairs(list: &serde_json::Value) -> BTreeMap<String, String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|pair| {
            Some((
                pair["name"].as_str()?.to_string(),
                pair["value"].as_str()?.to_string(),
            ))
        })
        .collect()
}

fn strings(values: &[serde_json::Value]) -> Vec<String> {
    values
        .iter()
        .filter_map(|value| value.as_str().map(str::to_string))
        .collect()
}

/// Returns the queue name of a job queue ARN (`…:job-queue/<name>`) or name.
fn queue_name(queue: &str) -> &str {
    queue.rsplit('/').next().unwrap_or(queue)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |now| now.as_millis() as i64)
}
