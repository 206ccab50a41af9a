//! JWT authentication for slurmrestd.
//!
//! slurmrestd started with `-a rest_auth/jwt` takes the user name in the
//! `X-SLURM-USER-NAME` header and a token for that user in `X-SLURM-USER-TOKEN`.
//! Tokens come from a [`TokenSource`]: a file that something else keeps fresh, or a
//! command such as `scontrol token username=spillway lifespan=600`. [`Auth`] keeps
//! the current token and renews it once a share of its lifespan has passed (80% by
//! default, read from the token's `iat` and `exp` claims), and once more when
//! slurmrestd rejects it.

use std::fmt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD_INDIFFERENT;
use reqwest::header::HeaderValue;

/// Share of a token's lifespan after which it is renewed.
pub const DEFAULT_RENEW_FRACTION: f64 = 0.8;
/// How long a token command may run.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Shortest time a token is used before it is renewed by age, so that a source
/// that hands out expired tokens is not asked again on every request.
const MIN_TOKEN_USE: Duration = Duration::from_secs(1);

/// The origin of tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// A file holding the token, optionally after `SLURM_JWT=`. It is read again
    /// at every renewal, so another process may replace it.
    File(PathBuf),
    /// A shell command, run with `sh -c`, that prints the token, optionally after
    /// `SLURM_JWT=` (as `scontrol token` prints it).
    Command(String),
}

impl fmt::Display for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::File(path) => write!(f, "token file {}", path.display()),
            TokenSource::Command(command) => write!(f, "token command {command:?}"),
        }
    }
}

/// A failure to obtain a token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token file could not be read.
    #[error("could not read token file {path}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The token command could not be started or its output not read.
    #[error("could not run token command {command:?}")]
    RunCommand {
        /// The command.
        command: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The token command exited with a failure.
    #[error("token command {command:?} failed with {status}: {stderr}")]
    CommandFailed {
        /// The command.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The end of its standard error.
        stderr: String,
    },
    /// The token command ran too long and was killed.
    #[error("token command {command:?} timed out after {timeout:?}")]
    CommandTimedOut {
        /// The command.
        command: String,
        /// The time it was given.
        timeout: Duration,
    },
    /// The source produced no token, or one that cannot be sent in a header.
    #[error("{source_name} produced no usable token (empty, or not a valid header value)")]
    Unusable {
        /// The source, as text.
        source_name: String,
    },
}

/// A token and when to renew it. Its `Debug` output hides the token.
pub struct Token {
    value: HeaderValue,
    expires_at: Option<SystemTime>,
    renew_at: Option<SystemTime>,
}

impl Token {
    /// Builds a token from its text, reading `iat` and `exp` from its payload.
    /// `obtained_at` replaces a missing or future `iat`. Returns `None` when
    /// the text cannot be sent in a header.
    fn new(text: &str, obtained_at: SystemTime, renew_fraction: f64) -> Option<Token> {
        let mut value = HeaderValue::from_str(text).ok()?;
        value.set_sensitive(true);
        let claims = jwt_claims(text);
        let expires_at = claims.expires_at;
        let issued_at = claims
            .issued_at
            .filter(|issued| *issued <= obtained_at)
            .unwrap_or(obtained_at);
        let renew_at = expires_at.map(|expires| {
            let lifespan = expires.duration_since(issued_at).unwrap_or_default();
            let renew = issued_at + lifespan.mul_f64(renew_fraction.clamp(0.0, 1.0));
            renew.max(obtained_at + MIN_TOKEN_USE)
        });
        Some(Token {
            value,
            expires_at,
            renew_at,
        })
    }

    /// Returns the token's expiry time from its `exp` claim, if it has one.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }

    fn is_due(&self, now: SystemTime) -> bool {
        self.renew_at.is_some_and(|renew_at| now >= renew_at)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("value", &"<hidden>")
            .field("expires_at", &self.expires_at)
            .field("renew_at", &self.renew_at)
            .finish()
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Claims {
    issued_at: Option<SystemTime>,
    expires_at: Option<SystemTime>,
}

/// Reads `iat` and `exp` from a JWT's payload without checking its signature,
/// which only slurmctld can. Returns empty claims for anything that is no JWT.
fn jwt_claims(token: &str) -> Claims {
    let Some(payload) = token.split('.').nth(1) else {
        return Claims::default();
    };
    let Ok(bytes) = URL_SAFE_NO_PAD_INDIFFERENT.decode(payload) else {
        return Claims::default();
    };
    let Ok(payload) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Claims::default();
    };
    let time = |claim: &str| {
        payload
            .get(claim)
            .and_then(serde_json::Value::as_u64)
            .map(|seconds| UNIX_EPOCH + Duration::from_secs(seconds))
    };
    Claims {
        issued_at: time("iat"),
        expires_at: time("exp"),
    }
}

/// Extracts the token from a file's or command's text.
fn token_text(output: &str) -> &str {
    let text = output.trim();
    text.strip_prefix("SLURM_JWT=").unwrap_or(text).trim()
}

/// The user name, the token source and the current token of one slurmrestd client.
pub struct Auth {
    user: String,
    user_header: HeaderValue,
    source: TokenSource,
    renew_fraction: f64,
    command_timeout: Duration,
    current: RwLock<Option<Arc<Token>>>,
    renewal: tokio::sync::Mutex<()>,
    tokens_obtained: AtomicU64,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("user", &self.user)
            .field("source", &self.source)
            .field("current", &self.cached())
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// Creates the authentication of `user` with tokens from `source`. Fails when
    /// the user name cannot be sent in a header.
    pub fn new(user: impl Into<String>, source: TokenSource) -> Result<Auth, String> {
        let user = user.into();
        let user_header = HeaderValue::from_str(&user)
            .ok()
            .filter(|_| !user.is_empty())
            .ok_or_else(|| format!("invalid Slurm user name {user:?}"))?;
        Ok(Auth {
            user,
            user_header,
            source,
            renew_fraction: DEFAULT_RENEW_FRACTION,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            current: RwLock::new(None),
            renewal: tokio::sync::Mutex::new(()),
            tokens_obtained: AtomicU64::new(0),
        })
    }

    /// Sets the share of a token's lifespan after which it is renewed (0 to 1).
    pub fn with_renew_fraction(mut self, fraction: f64) -> Auth {
        self.renew_fraction = fraction;
        self
    }

    /// Sets how long a token command may run.
    pub fn with_command_timeout(mut self, timeout: Duration) -> Auth {
        self.command_timeout = timeout;
        self
    }

    /// Returns the user name sent with every request.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Returns how many tokens have been obtained from the source so far.
    pub fn tokens_obtained(&self) -> u64 {
        self.tokens_obtained.load(Ordering::Relaxed)
    }

    fn cached(&self) -> Option<Arc<Token>> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Returns the headers for the current token, or `None` before the first one.
    pub(crate) fn headers(&self) -> Option<(HeaderValue, HeaderValue)> {
        let token = self.cached()?;
        Some((self.user_header.clone(), token.value.clone()))
    }

    /// Returns a token that is not yet due for renewal, renewing it if needed.
    pub(crate) async fn token(&self) -> Result<Arc<Token>, TokenError> {
        if let Some(token) = self
            .cached()
            .filter(|token| !token.is_due(SystemTime::now()))
        {
            return Ok(token);
        }
        let _renewal = self.renewal.lock().await;
        // Another request may have renewed the token while this one waited.
        if let Some(token) = self
            .cached()
            .filter(|token| !token.is_due(SystemTime::now()))
        {
            return Ok(token);
        }
        self.obtain().await
    }

    /// Replaces a token that slurmrestd rejected, unless another request has
    /// already replaced it.
    pub(crate) async fn renew_after_rejection(
        &self,
        rejected: &Arc<Token>,
    ) -> Result<Arc<Token>, TokenError> {
        let _renewal = self.renewal.lock().await;
        if let Some(token) = self.cached().filter(|token| !Arc::ptr_eq(token, rejected)) {
            return Ok(token);
        }
        self.obtain().await
    }

    async fn obtain(&self) -> Result<Arc<Token>, TokenError> {
        let obtained_at = SystemTime::now();
        let output = match &self.source {
            TokenSource::File(path) => {
                tokio::fs::read_to_string(path)
                    .await
                    .map_err(|source| TokenError::ReadFile {
                        path: path.clone(),
                        source,
                    })?
            }
            TokenSource::Command(command) => self.run_command(command).await?,
        };
        let unusable = || TokenError::Unusable {
            source_name: self.source.to_string(),
        };
        let text = token_text(&output);
        if text.is_empty() {
            return Err(unusable());
        }
        let token = Token::new(text, obtained_at, self.renew_fraction).ok_or_else(unusable)?;
        let token = Arc::new(token);

        self.tokens_obtained.fetch_add(1, Ordering::Relaxed);
        let lifespan_secs = token.expires_at.map(|expires| {
            expires
                .duration_since(obtained_at)
                .unwrap_or_default()
                .as_secs()
        });
        if lifespan_secs == Some(0) {
            tracing::warn!(user = %self.user, source = %self.source, "obtained Slurm token has already expired");
        } else {
            tracing::debug!(user = %self.user, source = %self.source, ?lifespan_secs, "obtained Slurm token");
        }
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(token.clone());
        Ok(token)
    }

    async fn run_command(&self, command: &str) -> Result<String, TokenError> {
        let run_error = |source| TokenError::RunCommand {
            command: command.to_string(),
            source,
        };
        // kill_on_drop ends the shell when the timeout drops the wait.
        let child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(run_error)?;
        let output =
            match tokio::time::timeout(self.command_timeout, child.wait_with_output()).await {
                Ok(output) => output.map_err(run_error)?,
                Err(_) => {
                    return Err(TokenError::CommandTimedOut {
                        command: command.to_string(),
                        timeout: self.command_timeout,
                    });
                }
            };
        let status = output.status;
        if !status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let stderr = stderr.trim();
            let tail = stderr
                .char_indices()
                .rev()
                .nth(499)
                .map_or(stderr, |(position, _)| &stderr[position..]);
            return Err(TokenError::CommandFailed {
                command: command.to_string(),
                status,
                stderr: tail.to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &serde_json::Value) -> String {
        let encode = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        format!(
            "{}.{}.signature",
            encode(br#"{"alg":"HS256","typ":"JWT"}"#),
            encode(payload.to_string().as_bytes())
        )
    }

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn claims_of_slurm_token() {
        let token = jwt(
            &serde_json::json!({"exp": 1_700_000_600, "iat": 1_700_000_000, "sun": "spillway"}),
        );
        assert_eq!(
            jwt_claims(&token),
            Claims {
                issued_at: Some(at(1_700_000_000)),
                expires_at: Some(at(1_700_000_600)),
            }
        );
    }

    #[test]
    fn claims_of_non_jwt_are_empty() {
        assert_eq!(jwt_claims("garbage"), Claims::default());
        assert_eq!(jwt_claims("a.!!!.c"), Claims::default());
        assert_eq!(jwt_claims(&format!("a.{}.c", "e30")), Claims::default());
    }

    #[test]
    fn renewal_at_share_of_lifespan() {
        let text = jwt(&serde_json::json!({"exp": 1_000_600, "iat": 1_000_000}));
        let token = Token::new(&text, at(1_000_000), 0.8).unwrap();
        assert_eq!(token.renew_at, Some(at(1_000_480)));
        assert!(!token.is_due(at(1_000_479)));
        assert!(token.is_due(at(1_000_480)));
    }

    #[test]
    fn renewal_uses_obtained_time_without_issued_claim() {
        let text = jwt(&serde_json::json!({"exp": 1_000_100}));
        let token = Token::new(&text, at(1_000_000), 0.5).unwrap();
        assert_eq!(token.renew_at, Some(at(1_000_050)));
    }

    #[test]
    fn expired_token_is_kept_for_minimum_use() {
        let text = jwt(&serde_json::json!({"exp": 900, "iat": 800}));
        let token = Token::new(&text, at(1_000), 0.8).unwrap();
        assert_eq!(token.renew_at, Some(at(1_001)));
    }

    #[test]
    fn token_without_expiry_is_never_due() {
        let token = Token::new("opaque", at(1_000), 0.8).unwrap();
        assert_eq!(token.renew_at, None);
        assert!(!token.is_due(at(u32::MAX as u64)));
    }

    #[test]
    fn token_text_strips_prefix() {
        assert_eq!(token_text("SLURM_JWT=abc.def.ghi\n"), "abc.def.ghi");
        assert_eq!(token_text("  abc.def.ghi  "), "abc.def.ghi");
    }

    #[test]
    fn debug_output_hides_token() {
        let token = Token::new("secret-token", at(1_000), 0.8).unwrap();
        assert!(!format!("{token:?}").contains("secret-token"));
    }

    #[tokio::test]
    async fn command_source_runs_and_is_cached() {
        let token = jwt(&serde_json::json!({"exp": 4_000_000_000u64, "iat": 1_000}));
        let auth = Auth::new(
            "spillway",
            TokenSource::Command(format!("echo SLURM_JWT={token}")),
        )
        .unwrap();
        let first = auth.token().await.unwrap();
        let second = auth.token().await.unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(auth.tokens_obtained(), 1);
        let (user, value) = auth.headers().unwrap();
        assert_eq!(user, "spillway");
        assert_eq!(value.to_str().unwrap(), token);
    }

    #[tokio::test]
    async fn rejection_renews_once() {
        let token = jwt(&serde_json::json!({"exp": 4_000_000_000u64, "iat": 1_000}));
        let auth = Auth::new("spillway", TokenSource::Command(format!("echo {token}"))).unwrap();
        let rejected = auth.token().await.unwrap();
        let renewed = auth.renew_after_rejection(&rejected).await.unwrap();
        assert!(!Arc::ptr_eq(&rejected, &renewed));
        // A second request that saw the same rejected token reuses the renewal.
        let again = auth.renew_after_rejection(&rejected).await.unwrap();
        assert!(Arc::ptr_eq(&renewed, &again));
        assert_eq!(auth.tokens_obtained(), 2);
    }

    #[tokio::test]
    async fn failing_command_reports_stderr() {
        let auth = Auth::new(
            "spillway",
            TokenSource::Command("echo no scontrol >&2; exit 3".into()),
        )
        .unwrap();
        let error = auth.token().await.unwrap_err();
        let message = error.to_string();
        assert!(message.contains("no scontrol"), "{message}");
        assert!(message.contains("exit status: 3"), "{message}");
    }

    #[tokio::test]
    async fn slow_command_times_out() {
        let auth = Auth::new("spillway", TokenSource::Command("sleep 5".into()))
            .unwrap()
            .with_command_timeout(Duration::from_millis(100));
        let error = auth.token().await.unwrap_err();
        assert!(
            matches!(error, TokenError::CommandTimedOut { .. }),
            "{error}"
        );
    }

    #[tokio::test]
    async fn empty_file_is_unusable() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let auth = Auth::new("spillway", TokenSource::File(file.path().to_path_buf())).unwrap();
        let error = auth.token().await.unwrap_err();
        assert!(matches!(error, TokenError::Unusable { .. }), "{error}");
    }

    #[tokio::test]
    async fn missing_file_names_path() {
        let auth = Auth::new("spillway", TokenSource::File("/nonexistent/token".into())).unwrap();
        let error = auth.token().await.unwrap_err();
        assert!(error.to_string().contains("/nonexistent/token"), "{error}");
    }
}
