//! `spillway dead-letters`: the newest entries of the Redis dead-letter stream, with
//! the reason each manifest was rejected.

use std::collections::HashMap;

use redis::AsyncCommands;
use redis::streams::StreamRangeReply;
use serde::Serialize;
use spillway_common::manifest::ManifestError;

use super::output::{OutputFormat, print_json};
use crate::config::Config;

/// Maximum length of the manifest excerpt shown in text output.
const EXCERPT_CHARS: usize = 120;

/// One dead-lettered message.
#[derive(Debug, Serialize)]
pub struct DeadLetter {
    /// Entry id in the dead-letter stream; its first part is the time in milliseconds.
    pub entry_id: String,
    /// Id of the message as the intake received it.
    pub message_id: String,
    /// The reason the message was rejected.
    pub reason: String,
    /// Validation errors, when the manifest was invalid.
    pub errors: Vec<ManifestError>,
    /// The message body as received (lossy UTF-8).
    pub manifest: String,
}

/// Prints the newest `limit` dead letters, newest first.
pub async fn run(config: &Config, limit: usize, output: OutputFormat) -> anyhow::Result<()> {
    let url = config.ledger_url()?;
    let mut conn = spillway_common::ledger::LedgerConnection::connect(&url).await?;
    let stream = &config.intake.redis_stream.dead_letter_stream;
    let reply: StreamRangeReply = conn.xrevrange_count(stream, "+", "-", limit).await?;
    let letters: Vec<DeadLetter> = reply
        .ids
        .into_iter()
        .map(|entry| {
            let text = |field: &str| field_text(&entry.map, field);
            DeadLetter {
                message_id: text("message_id"),
                reason: text("reason"),
                errors: serde_json::from_str(&text("errors")).unwrap_or_default(),
                manifest: text(crate::intake::redis_stream::MANIFEST_FIELD),
                entry_id: entry.id,
            }
        })
        .collect();

    if output.is_json() {
        return print_json(&letters);
    }
    if letters.is_empty() {
        println!("no dead letters in {stream}");
        return Ok(());
    }
    for letter in &letters {
        println!("{}  message {}", letter.entry_id, letter.message_id);
        println!("  reason    {}", letter.reason);
        for error in &letter.errors {
            println!("  error     {error}");
        }
        println!("  manifest  {}", excerpt(&letter.manifest));
    }
    println!(
        "{} dead letter(s) in {stream}; SQS and Pub/Sub dead letters stay in their own queues",
        letters.len()
    );
    Ok(())
}

fn field_text(map: &HashMap<String, redis::Value>, field: &str) -> String {
    match map.get(field) {
        Some(redis::Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
        Some(redis::Value::SimpleString(text)) => text.clone(),
        _ => String::new(),
    }
}

fn excerpt(manifest: &str) -> String {
    let flat: String = manifest
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match flat.char_indices().nth(EXCERPT_CHARS) {
        Some((end, _)) => format!("{}…", &flat[..end]),
        None => flat,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_flattens_and_shortens() {
        assert_eq!(excerpt("{\n\"a\": 1}"), "{ \"a\": 1}");
        let long = "x".repeat(EXCERPT_CHARS + 5);
        assert_eq!(excerpt(&long).chars().count(), EXCERPT_CHARS + 1);
    }
}
