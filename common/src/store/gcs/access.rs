//! Settings, credentials and the shared client of the GCS stores.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gcloud_storage::client::google_cloud_auth::credentials::CredentialsFile;
use gcloud_storage::client::{Client, ClientConfig};
use object_store::{ObjectStore, Result};

use super::{GcsStore, STORE};

/// Variable that names an emulator endpoint and turns credentials off.
pub const EMULATOR_HOST_VARIABLE: &str = "STORAGE_EMULATOR_HOST";

/// Variable that names a credentials file for Google's credential chain.
pub const CREDENTIALS_VARIABLE: &str = "GOOGLE_APPLICATION_CREDENTIALS";

/// Time allowed to open a connection, the same as object_store's default.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Time allowed between two reads of a response, so that a stalled connection fails
/// instead of holding a worker while its heartbeats keep the lease alive.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Endpoint of the requests and the credentials they carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Access {
    /// An emulator or another JSON API endpoint, reached without credentials.
    Emulator { endpoint: String },
    /// Google's endpoint, with credentials from this file or, without one, from the
    /// rest of the standard chain.
    Google { credentials_file: Option<PathBuf> },
}

impl Access {
    /// Reads the settings from `STORAGE_EMULATOR_HOST` and
    /// `GOOGLE_APPLICATION_CREDENTIALS` and ignores other names. An empty value
    /// counts as unset.
    pub(super) fn from_variables<I>(variables: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let mut emulator = None;
        let mut credentials_file = None;
        for (name, value) in variables {
            let value = value.trim().to_string();
            if value.is_empty() {
                continue;
            }
            match name.as_str() {
                EMULATOR_HOST_VARIABLE => emulator = Some(value),
                CREDENTIALS_VARIABLE => credentials_file = Some(PathBuf::from(value)),
                _ => {}
            }
        }

        match emulator {
            Some(host) => Ok(Access::Emulator {
                endpoint: emulator_endpoint(&host)?,
            }),
            None => Ok(Access::Google { credentials_file }),
        }
    }
}

/// Turns a `STORAGE_EMULATOR_HOST` value into a base URL without a trailing `/`.
/// A value without a scheme means plain HTTP, as in Google's client libraries.
fn emulator_endpoint(host: &str) -> Result<String, String> {
    let with_scheme = if host.contains("://") {
        host.to_string()
    } else {
        format!("http://{host}")
    };
    let invalid = |reason: &str| {
        format!(
            "invalid {EMULATOR_HOST_VARIABLE} {host:?}: {reason}; \
             write it as host:port or http://host:port"
        )
    };

    let url = url::Url::parse(&with_scheme).map_err(|error| invalid(&error.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("the host is missing"));
    }
    if url.path() != "/" || url.query().is_some() {
        return Err(invalid("a path or query is not allowed"));
    }
    Ok(with_scheme.trim_end_matches('/').to_string())
}

/// Client shared by the stores built from the process environment, created with the
/// first such store.
static ENV_CLIENT: Mutex<Option<Arc<LazyClient>>> = Mutex::new(None);

/// Returns the store for `bucket` with settings from the process environment, which
/// is read once per process. Every bucket shares one client and connection pool.
pub(in crate::store) fn env_store(bucket: &str) -> Result<Arc<dyn ObjectStore>, String> {
    check_bucket(bucket)?;
    let mut shared = ENV_CLIENT.lock().expect("GCS client lock");
    let client = match shared.as_ref() {
        Some(client) => Arc::clone(client),
        None => {
            let variables = std::env::vars_os().filter_map(|(key, value)| {
                Some((key.into_string().ok()?, value.into_string().ok()?))
            });
            let client = Arc::new(LazyClient::new(Access::from_variables(variables)?));
            *shared = Some(Arc::clone(&client));
            client
        }
    };
    Ok(Arc::new(GcsStore {
        bucket: bucket.to_string(),
        client,
    }))
}

/// Builds a store for `bucket` from the given variables with a client of its own.
/// Only `GOOGLE_APPLICATION_CREDENTIALS` and `STORAGE_EMULATOR_HOST` are taken from
/// `variables`. The rest of Google's credential chain reads the process environment.
pub(in crate::store) fn build<I>(bucket: &str, variables: I) -> Result<Arc<dyn ObjectStore>, String>
where
    I: IntoIterator<Item = (String, String)>,
{
    check_bucket(bucket)?;
    let access = Access::from_variables(variables)?;
    Ok(Arc::new(GcsStore {
        bucket: bucket.to_string(),
        client: Arc::new(LazyClient::new(access)),
    }))
}

/// Checks a bucket name against GCS's naming rules, so that a bad name fails at
/// admission. A name has 3 to 222 characters and each dot-separated part at most 63.
/// It consists of lower-case letters, digits, `-`, `_` and `.`, with a letter or
/// digit at each end.
fn check_bucket(bucket: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c);
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let valid = (3..=222).contains(&bucket.len())
        && bucket.chars().all(allowed)
        && edge(bucket.chars().next())
        && edge(bucket.chars().last())
        && bucket
            .split('.')
            .all(|part| !part.is_empty() && part.len() <= 63);
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid GCS bucket name {bucket:?}: use 3 to 63 lower-case letters, digits, \
             '-', '_' or '.', starting and ending with a letter or digit"
        ))
    }
}

/// A gcloud-storage client that is built, and its credentials looked up, on first use.
pub(super) struct LazyClient {
    pub(super) access: Access,
    client: tokio::sync::OnceCell<Client>,
}

impl LazyClient {
    fn new(access: Access) -> Self {
        Self {
            access,
            client: tokio::sync::OnceCell::new(),
        }
    }

    /// Returns the client, building it first if no earlier call succeeded.
    pub(super) async fn get(&self) -> Result<&Client> {
        self.client
            .get_or_try_init(|| connect(&self.access))
            .await
            .map_err(|reason| object_store::Error::Generic {
                store: STORE,
                source: reason.into(),
            })
    }
}

/// Builds a client for `access`. Only [`Access::Google`] may make requests here: to
/// read the credentials, exchange them for a token or ask the metadata server.
async fn connect(access: &Access) -> Result<Client, String> {
    let http = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .build()
        .map_err(|error| format!("failed to build the GCS HTTP client: {error}"))?;
    let config = ClientConfig {
        http: Some(reqwest_middleware::ClientBuilder::new(http).build()),
        ..ClientConfig::default()
    };

    let config = match access {
        Access::Emulator { endpoint } => ClientConfig {
            storage_endpoint: endpoint.clone(),
            // Used only to sign URLs, which Spillway never does; set so that no
            // Google address is configured at all.
            service_account_endpoint: endpoint.clone(),
            ..config
        }
        .anonymous(),
        Access::Google {
            credentials_file: Some(path),
        } => {
            let file = CredentialsFile::new_from_file(path.display().to_string())
                .await
                .map_err(|error| {
                    format!(
                        "failed to read GCS credentials from {} ({CREDENTIALS_VARIABLE}): {error}",
                        path.display()
                    )
                })?;
            config.with_credentials(file).await.map_err(|error| {
                format!(
                    "failed to get a GCS token with the credentials in {}: {error}",
                    path.display()
                )
            })?
        }
        Access::Google {
            credentials_file: None,
        } => config.with_auth().await.map_err(|error| {
            format!(
                "no GCS credentials: set {CREDENTIALS_VARIABLE}, run `gcloud auth \
                 application-default login`, or run on Google Cloud with a service account \
                 ({error})"
            )
        })?,
    };
    Ok(Client::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn variables(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn emulator_host_without_scheme_is_http() {
        let access =
            Access::from_variables(variables(&[(EMULATOR_HOST_VARIABLE, "127.0.0.1:4443")]))
                .unwrap();

        assert_eq!(
            access,
            Access::Emulator {
                endpoint: "http://127.0.0.1:4443".into()
            }
        );
    }

    #[test]
    fn emulator_host_overrides_credentials_file() {
        let access = Access::from_variables(variables(&[
            (CREDENTIALS_VARIABLE, "/etc/key.json"),
            (EMULATOR_HOST_VARIABLE, "http://127.0.0.1:4443/"),
        ]))
        .unwrap();

        assert_eq!(
            access,
            Access::Emulator {
                endpoint: "http://127.0.0.1:4443".into()
            }
        );
    }

    #[test]
    fn emulator_host_with_path_is_rejected() {
        let error =
            Access::from_variables(variables(&[(EMULATOR_HOST_VARIABLE, "http://h:1/storage")]))
                .unwrap_err();

        assert!(error.contains(EMULATOR_HOST_VARIABLE), "{error}");
    }

    #[test]
    fn no_emulator_uses_google_chain() {
        let access = Access::from_variables(variables(&[
            (EMULATOR_HOST_VARIABLE, " "),
            (CREDENTIALS_VARIABLE, "/etc/key.json"),
        ]))
        .unwrap();

        assert_eq!(
            access,
            Access::Google {
                credentials_file: Some(PathBuf::from("/etc/key.json"))
            }
        );
    }

    #[test]
    fn bucket_names_follow_gcs_rules() {
        for valid in ["abc", "spillway-data", "a.b-c_d", "0bucket9"] {
            assert!(check_bucket(valid).is_ok(), "{valid}");
        }
        for invalid in [
            "ab",
            "Upper",
            "-dash",
            "dash-",
            "a..b",
            "a/b",
            &"x".repeat(64),
        ] {
            assert!(check_bucket(invalid).is_err(), "{invalid}");
        }
    }
}
