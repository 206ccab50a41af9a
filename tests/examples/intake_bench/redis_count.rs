//! Counting what a Redis server executes: `INFO commandstats` for every command,
//! including those that Lua scripts run, and MONITOR for the requests that clients
//! send, which are the round trips.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::thread::JoinHandle;

use anyhow::Context;
use redis::aio::MultiplexedConnection;

/// Argument of the `ECHO` that ends a MONITOR count.
const END_MARKER: &str = "intake-bench-monitor-end";

/// Returns the per-command call counts of `INFO commandstats`. Redis counts the
/// commands that scripts run as well as the requests of clients.
pub async fn command_calls(conn: &mut MultiplexedConnection) -> BTreeMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("INFO commandstats");
    info.lines()
        .filter_map(|line| {
            let (name, fields) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = fields
                .split(',')
                .find_map(|field| field.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_string(), calls))
        })
        .collect()
}

/// Returns `after - before` per command, without `INFO` and less the benchmark's own
/// calls in `own`.
pub fn call_delta(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
    own: &[(&str, u64)],
) -> BTreeMap<String, u64> {
    let mut delta = BTreeMap::new();
    for (name, &calls) in after {
        if name == "info" {
            continue;
        }
        let mut count = calls - before.get(name).copied().unwrap_or(0);
        for (own_name, own_calls) in own {
            if name == own_name {
                count = count.saturating_sub(*own_calls);
            }
        }
        if count > 0 {
            delta.insert(name.clone(), count);
        }
    }
    delta
}

/// Returns the `addr` of a connection (`127.0.0.1:PORT`), as MONITOR names it.
pub async fn client_address(conn: &mut MultiplexedConnection) -> anyhow::Result<String> {
    let info: String = redis::cmd("CLIENT").arg("INFO").query_async(conn).await?;
    info.split_whitespace()
        .find_map(|field| field.strip_prefix("addr="))
        .map(str::to_string)
        .with_context(|| format!("CLIENT INFO has no addr: {info}"))
}

/// A MONITOR connection that counts client requests by command. Commands run by
/// scripts (source `lua`) and those of one excluded client are left out.
pub struct Monitor {
    counter: JoinHandle<anyhow::Result<BTreeMap<String, u64>>>,
}

impl Monitor {
    /// Starts monitoring the server on 127.0.0.1:`port`.
    pub fn start(port: u16, excluded_client: String) -> anyhow::Result<Self> {
        let mut stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.write_all(b"MONITOR\r\n")?;
        let mut reader = BufReader::new(stream);
        let mut reply = String::new();
        reader.read_line(&mut reply)?;
        anyhow::ensure!(reply.starts_with("+OK"), "MONITOR failed: {reply}");

        let counter = std::thread::spawn(move || count_requests(reader, &excluded_client));
        Ok(Self { counter })
    }

    /// Sends the end marker on `conn` and returns the counts up to it. Redis executes
    /// the marker after every command that completed before this call, so MONITOR
    /// reports all of those first.
    pub async fn finish(
        self,
        conn: &mut MultiplexedConnection,
    ) -> anyhow::Result<BTreeMap<String, u64>> {
        let _: String = redis::cmd("ECHO").arg(END_MARKER).query_async(conn).await?;
        self.counter
            .join()
            .map_err(|_| anyhow::anyhow!("MONITOR counter thread panicked"))?
    }
}

fn count_requests(
    reader: BufReader<TcpStream>,
    excluded_client: &str,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut counts = BTreeMap::new();
    for line in reader.lines() {
        let line = line?;
        if line.contains(END_MARKER) {
            return Ok(counts);
        }
        let Some((source, command)) = parse_monitor_line(&line) else {
            continue;
        };
        if source == "lua" || source == excluded_client {
            continue;
        }
        *counts.entry(command).or_insert(0) += 1;
    }
    anyhow::bail!("the MONITOR connection closed before the end marker")
}

/// Splits a MONITOR line such as `+1733360000.123456 [0 127.0.0.1:5555] "EVALSHA" "ab"`
/// into its source (`127.0.0.1:5555`, or `lua` inside a script) and the lower-case
/// command name.
fn parse_monitor_line(line: &str) -> Option<(&str, String)> {
    let open = line.find('[')?;
    let close = open + line[open..].find(']')?;
    let (_database, source) = line[open + 1..close].split_once(' ')?;
    let command = line[close + 1..]
        .trim_start()
        .strip_prefix('"')?
        .split('"')
        .next()?
        .to_ascii_lowercase();
    Some((source, command))
}
