//! Rules for single string values: job names, storage URIs, digests, container images,
//! deadlines, idempotency keys and labels. Each rule returns what is wrong and the fix.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use url::Url;

use super::walk::{Invalid, list_names, shorten_text};
use crate::digest::{DigestParseError, Sha256Hex};

/// URI schemes that the daemon and workers read and write.
pub(super) const SUPPORTED_SCHEMES: [&str; 3] = ["file", "s3", "gs"];

const MAX_NAME_CHARS: usize = 128;
const MAX_IDEMPOTENCY_KEY_CHARS: usize = 256;
const MAX_LABEL_KEY_CHARS: usize = 63;
const MAX_LABEL_VALUE_CHARS: usize = 256;
const MAX_NOTIFY_TARGET_CHARS: usize = 1024;

/// Checks a job name: 1 to 128 characters of `A-Z a-z 0-9 . _ -`.
pub(super) fn job_name(name: &str) -> Result<(), Invalid> {
    let length = name.chars().count();
    if length == 0 || length > MAX_NAME_CHARS {
        return Err(Invalid::new(
            format!("invalid length: the name has {length} characters"),
            "use 1 to 128 characters of A-Z a-z 0-9 . _ -",
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        let suggestion: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_') {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        return Err(Invalid::new(
            format!("invalid character {bad:?} in the name"),
            format!(
                "use only A-Z a-z 0-9 . _ -, for example \"{}\"",
                shorten_text(&suggestion)
            ),
        ));
    }
    Ok(())
}

/// Checks a SHA-256 digest as [`Sha256Hex`] reads it. `source` names what was hashed
/// in the fix, such as "the shard file".
pub(super) fn sha256(text: &str, source: &str) -> Result<(), Invalid> {
    let problem = match Sha256Hex::parse(text) {
        Ok(_) => return Ok(()),
        Err(DigestParseError::Length(length)) => {
            format!("invalid SHA-256: expected 64 hexadecimal characters, found {length}")
        }
        Err(DigestParseError::Alphabet) => {
            "invalid SHA-256: expected only the characters 0-9 and a-f".to_owned()
        }
    };
    Err(Invalid::new(
        problem,
        format!("set it to the SHA-256 of {source}: 64 characters 0-9 a-f"),
    ))
}

/// The kind of location that a storage URI must name.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum UriKind {
    /// A directory, written with a trailing `/`.
    Directory,
    /// One object or file, written without a trailing `/`.
    File,
    /// A prefix under which objects are written. A trailing `/` is optional.
    Prefix,
}

/// Checks a storage URI and returns it parsed, with `.` and `..` segments resolved.
pub(super) fn storage_uri(text: &str, kind: UriKind) -> Result<Url, Invalid> {
    // `Url::parse` drops surrounding spaces and inner tabs and newlines, so the text
    // would name a different object than the parsed URI does.
    if text.trim() != text || text.chars().any(char::is_control) {
        return Err(Invalid::new(
            "invalid URI: it starts or ends with whitespace or contains a control character",
            "remove the whitespace around the URI and any tab or newline inside it",
        ));
    }
    let url = match Url::parse(text) {
        Ok(url) => url,
        Err(error) => return Err(unparsable_uri(text, &error)),
    };
    let scheme = url.scheme();

    if !SUPPORTED_SCHEMES.contains(&scheme) {
        return Err(Invalid::new(
            format!("unsupported URI scheme `{scheme}`"),
            format!(
                "use a URI with one of the schemes {}, after copying the data to such a store if needed",
                list_names(SUPPORTED_SCHEMES)
            ),
        ));
    }
    // `Url` also reads `file:/a` and `s3:bucket/a`, which people read as relative paths.
    // Only the `scheme://` form is accepted.
    let written_scheme = text.get(..scheme.len() + 3).unwrap_or_default();
    if !written_scheme.eq_ignore_ascii_case(&format!("{scheme}://")) {
        return Err(Invalid::new(
            format!("invalid URI: expected `{scheme}://` at the start"),
            format!("write it as {scheme}://{}", location_example(scheme)),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(Invalid::new(
            "invalid URI: it has a query (`?`) or fragment (`#`), which storage paths do not use",
            "remove the part from `?` or `#` on, or write those characters in a file name as %3F and %23",
        ));
    }
    check_authority(&url)?;
    check_kind(&url, text, kind)?;
    Ok(url)
}

fn unparsable_uri(text: &str, error: &url::ParseError) -> Invalid {
    let fix = if text.starts_with('/') {
        format!(
            "write a local path as a file URI: file://{}",
            shorten_text(text)
        )
    } else {
        "write it as scheme://location with scheme file, s3 or gs, such as s3://bucket/data/"
            .to_owned()
    };
    Invalid::new(format!("invalid URI: {error}"), fix)
}

fn location_example(scheme: &str) -> &'static str {
    if scheme == "file" {
        "/absolute/path"
    } else {
        "bucket/path"
    }
}

/// Checks the host part: none for `file` (so `file://data/x` is caught), a bucket for
/// `s3` and `gs`.
fn check_authority(url: &Url) -> Result<(), Invalid> {
    let host = url.host_str().unwrap_or_default();
    if url.scheme() == "file" {
        if host.is_empty() {
            return Ok(());
        }
        return Err(Invalid::new(
            format!("invalid file URI: `{host}` is read as a host name, not as part of the path"),
            format!(
                "use three slashes for an absolute path: file:///{host}{}",
                shorten_text(url.path())
            ),
        ));
    }
    if host.is_empty() {
        return Err(Invalid::new(
            "invalid URI: missing bucket name",
            format!(
                "name the bucket after `{}://`, such as {}://bucket/path",
                url.scheme(),
                url.scheme()
            ),
        ));
    }
    Ok(())
}

fn check_kind(url: &Url, text: &str, kind: UriKind) -> Result<(), Invalid> {
    let is_directory = url.path().is_empty() || url.path().ends_with('/');
    match kind {
        UriKind::Directory if !is_directory => Err(Invalid::new(
            "invalid directory URI: it does not end in `/`",
            format!("add a trailing slash: {}/", shorten_text(text)),
        )),
        UriKind::File if is_directory => Err(Invalid::new(
            "invalid file URI: it names a directory or bucket, not a file",
            "point it at one JSONL file, without a trailing `/`",
        )),
        _ => Ok(()),
    }
}

/// Checks that a container image is pinned by digest: `name[:tag]@sha256:<64 hex>`.
pub(super) fn image(text: &str) -> Result<(), Invalid> {
    if text.is_empty() || text.chars().any(char::is_whitespace) {
        return Err(Invalid::new(
            "invalid image reference: it is empty or contains whitespace",
            "write it as registry/repository@sha256:<64 hex>, such as ghcr.io/lab/spillway-worker@sha256:<64 hex>",
        ));
    }
    let Some((name, digest)) = text.split_once('@') else {
        return Err(unpinned_image(text));
    };

    let digest_hex = digest.strip_prefix("sha256:").unwrap_or_default();
    let digest_valid = digest_hex.len() == 64
        && digest_hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !digest_valid {
        return Err(Invalid::new(
            format!("invalid image digest `{}`", shorten_text(digest)),
            "write the digest as sha256: followed by 64 characters 0-9 a-f, as `docker buildx imagetools inspect IMAGE` prints it",
        ));
    }
    image_name(name)
}

fn unpinned_image(text: &str) -> Invalid {
    let repository = strip_tag(text);
    Invalid::new(
        "invalid image: it is not pinned by digest, and a tag can later point at a different build",
        format!(
            "pin it by digest as {}@sha256:<64 hex>. `docker buildx imagetools inspect {}` prints the digest",
            shorten_text(repository),
            shorten_text(text)
        ),
    )
}

/// Returns the image name without its `:tag`, leaving a registry's `:port` alone.
fn strip_tag(name: &str) -> &str {
    let last_component_start = name.rfind('/').map_or(0, |slash| slash + 1);
    match name[last_component_start..].find(':') {
        Some(colon) => &name[..last_component_start + colon],
        None => name,
    }
}

/// Checks `registry/path:tag` against the rules of OCI distribution references,
/// simplified: path components are lower case.
fn image_name(name_and_tag: &str) -> Result<(), Invalid> {
    let name = strip_tag(name_and_tag);
    let tag = name_and_tag.get(name.len() + 1..);

    if let Some(tag) = tag {
        let tag_valid = !tag.is_empty()
            && tag.len() <= 128
            && !tag.starts_with(['.', '-'])
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !tag_valid {
            return Err(Invalid::new(
                format!("invalid image tag `{}`", shorten_text(tag)),
                "use up to 128 characters A-Z a-z 0-9 _ . - for the tag, or leave the tag out and keep the digest",
            ));
        }
    }

    let components: Vec<&str> = name.split('/').collect();
    let has_registry = components.len() > 1
        && (components[0].contains(['.', ':']) || components[0] == "localhost");
    let repository = if has_registry {
        &components[1..]
    } else {
        &components[..]
    };

    if has_registry && !valid_registry(components[0]) {
        return Err(Invalid::new(
            format!("invalid image registry `{}`", shorten_text(components[0])),
            "write the registry as a host name with an optional :port, such as ghcr.io or registry.example.org:5000",
        ));
    }
    if let Some(bad) = repository.iter().find(|c| !valid_path_component(c)) {
        return Err(Invalid::new(
            format!("invalid image repository component `{}`", shorten_text(bad)),
            "use lower-case letters, digits and single . _ - between them, such as lab/spillway-worker",
        ));
    }
    Ok(())
}

fn valid_registry(registry: &str) -> bool {
    let (host, port) = match registry.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (registry, None),
    };
    let host_valid = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'));
    let port_valid =
        port.is_none_or(|port| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()));
    host_valid && port_valid
}

fn valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let edges_alphanumeric = matches!(
        (bytes.first(), bytes.last()),
        (Some(first), Some(last)) if is_lower_alphanumeric(*first) && is_lower_alphanumeric(*last)
    );
    edges_alphanumeric
        && bytes
            .iter()
            .all(|b| is_lower_alphanumeric(*b) || matches!(b, b'.' | b'_' | b'-'))
}

fn is_lower_alphanumeric(byte: u8) -> bool {
    byte.is_ascii_lowercase() || byte.is_ascii_digit()
}

/// Checks an RFC 3339 time with an offset. A time in the past is accepted because the
/// clocks of the submitter and the daemon can differ, so the daemon judges lateness.
pub(super) fn deadline(text: &str) -> Result<(), Invalid> {
    match OffsetDateTime::parse(text, &Rfc3339) {
        Ok(_) => Ok(()),
        Err(error) => Err(Invalid::new(
            format!("invalid RFC 3339 time: {error}"),
            "write a date, time and UTC offset, such as 2026-12-05T06:00:00Z or 2026-12-05T07:00:00+01:00",
        )),
    }
}

/// Checks an idempotency key: 1 to 256 characters, none of them a control character.
pub(super) fn idempotency_key(key: &str) -> Result<(), Invalid> {
    let length = key.chars().count();
    if length == 0 || length > MAX_IDEMPOTENCY_KEY_CHARS {
        return Err(Invalid::new(
            format!("invalid length: the key has {length} characters"),
            "use 1 to 256 characters, such as a UUID or the name of the run",
        ));
    }
    if let Some(bad) = key.chars().find(|c| c.is_control()) {
        return Err(Invalid::new(
            format!("invalid control character {bad:?} in the key"),
            "remove tabs, newlines and other control characters from the key",
        ));
    }
    Ok(())
}

/// Checks a notification target: `sqs://HOST/PATH` or
/// `pubsub://projects/PROJECT/topics/TOPIC`, at most 1024 characters. Whether the site
/// accepts the target is the daemon's decision.
pub(super) fn notify_target(target: &str) -> Result<(), Invalid> {
    let fix = "use sqs:// followed by the host and path of the queue URL, such as \
               sqs://sqs.eu-west-1.amazonaws.com/123456789012/job-notices, or \
               pubsub://projects/PROJECT/topics/TOPIC";
    let length = target.chars().count();
    if length > MAX_NOTIFY_TARGET_CHARS {
        return Err(Invalid::new(
            format!("invalid length: the target has {length} characters, over 1024"),
            fix,
        ));
    }
    if target.chars().any(char::is_whitespace) {
        return Err(Invalid::new(
            "invalid notification target: it contains whitespace",
            fix,
        ));
    }
    let valid = if let Some(rest) = target.strip_prefix("sqs://") {
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        !host.is_empty() && !path.is_empty() && !path.ends_with('/')
    } else if let Some(rest) = target.strip_prefix("pubsub://") {
        let parts: Vec<&str> = rest.split('/').collect();
        matches!(parts.as_slice(), ["projects", project, "topics", topic] if !project.is_empty() && !topic.is_empty())
    } else {
        false
    };
    if !valid {
        return Err(Invalid::new(
            "invalid notification target: expected sqs://HOST/PATH or pubsub://projects/PROJECT/topics/TOPIC",
            fix,
        ));
    }
    Ok(())
}

/// Checks a label key: 1 to 63 characters of `a-z 0-9 _ . -`.
pub(super) fn label_key(key: &str) -> Result<(), Invalid> {
    let length = key.chars().count();
    let charset_valid = key
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'));
    if (1..=MAX_LABEL_KEY_CHARS).contains(&length) && charset_valid {
        return Ok(());
    }
    let suggestion: String = key
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(MAX_LABEL_KEY_CHARS)
        .collect();
    let example = if suggestion.is_empty() {
        "team".to_owned()
    } else {
        suggestion
    };
    Err(Invalid::new(
        format!("invalid label key `{}`", shorten_text(key)),
        format!("use 1 to 63 characters of a-z 0-9 _ . -, such as `{example}`"),
    ))
}

/// Checks a label value: at most 256 characters.
pub(super) fn label_value(value: &str) -> Result<(), Invalid> {
    let length = value.chars().count();
    if length <= MAX_LABEL_VALUE_CHARS {
        return Ok(());
    }
    Err(Invalid::new(
        format!("invalid label value: it has {length} characters, more than 256"),
        "shorten the value to at most 256 characters",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "0f3e9c2a4b5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7";

    #[test]
    fn image_accepts_pinned_references() {
        for reference in [
            format!("ghcr.io/lab/spillway-worker@sha256:{DIGEST}"),
            format!("ghcr.io/lab/spillway-worker:1.4.0@sha256:{DIGEST}"),
            format!("localhost:5000/worker@sha256:{DIGEST}"),
            format!("worker@sha256:{DIGEST}"),
        ] {
            assert!(image(&reference).is_ok(), "{reference}");
        }
    }

    #[test]
    fn image_rejects_tag_only() {
        let invalid = image("ghcr.io/lab/worker:1.4.0").unwrap_err();
        assert!(invalid.problem.contains("not pinned"));
        assert!(invalid.fix.contains("ghcr.io/lab/worker@sha256:<64 hex>"));
    }

    #[test]
    fn image_keeps_registry_port_when_stripping_tag() {
        assert_eq!(
            strip_tag("localhost:5000/worker:2"),
            "localhost:5000/worker"
        );
        assert_eq!(strip_tag("localhost:5000/worker"), "localhost:5000/worker");
    }

    #[test]
    fn image_rejects_upper_case_repository() {
        let invalid = image(&format!("ghcr.io/Lab/worker@sha256:{DIGEST}")).unwrap_err();
        assert!(invalid.problem.contains("`Lab`"));
    }

    #[test]
    fn image_rejects_upper_case_digest() {
        let upper = DIGEST.to_ascii_uppercase();
        assert!(image(&format!("worker@sha256:{upper}")).is_err());
    }

    #[test]
    fn storage_uri_rejects_short_forms() {
        assert!(storage_uri("file:/srv/a.jsonl", UriKind::File).is_err());
        assert!(storage_uri("s3:bucket/a.jsonl", UriKind::File).is_err());
        assert!(storage_uri("s3:///a.jsonl", UriKind::File).is_err());
        assert!(storage_uri("s3://bucket", UriKind::File).is_err());
    }

    #[test]
    fn storage_uri_fixes_file_host() {
        let invalid = storage_uri("file://data/a.jsonl", UriKind::File).unwrap_err();
        assert!(invalid.fix.contains("file:///data/a.jsonl"));
    }

    #[test]
    fn storage_uri_accepts_kinds() {
        assert!(storage_uri("s3://bucket/", UriKind::Directory).is_ok());
        assert!(storage_uri("gs://bucket/a/b.jsonl", UriKind::File).is_ok());
        assert!(storage_uri("file:///srv/out", UriKind::Prefix).is_ok());
        assert!(storage_uri("FILE:///srv/out/", UriKind::Prefix).is_ok());
    }

    #[test]
    fn notify_target_forms() {
        assert!(notify_target("sqs://sqs.eu-west-1.amazonaws.com/123456789012/notices").is_ok());
        assert!(notify_target("sqs://127.0.0.1:5000/123456789012/notices.fifo").is_ok());
        assert!(notify_target("pubsub://projects/my-lab/topics/notices").is_ok());
        assert!(notify_target("https://sqs.eu-west-1.amazonaws.com/1/notices").is_err());
        assert!(notify_target("sqs://host-only").is_err());
        assert!(notify_target("sqs://host/queue/").is_err());
        assert!(notify_target("pubsub://projects/p/topics/").is_err());
        assert!(notify_target("pubsub://projects/p/subscriptions/s").is_err());
        assert!(notify_target("sqs://host/a b").is_err());
    }

    #[test]
    fn deadline_requires_offset() {
        assert!(deadline("2026-12-05T06:00:00Z").is_ok());
        assert!(deadline("2026-12-05T06:00:00+02:00").is_ok());
        assert!(deadline("2026-12-05T06:00:00").is_err());
        assert!(deadline("2026-02-30T06:00:00Z").is_err());
    }

    #[test]
    fn label_key_suggests_lower_case() {
        let invalid = label_key("Team Name").unwrap_err();
        assert!(invalid.fix.contains("`team_name`"));
    }
}
