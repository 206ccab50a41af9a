//! Ledger URLs and the connection behind a [`Ledger`](super::Ledger): one Redis server
//! or a Redis Cluster. The module documentation of `ledger` lists the URL forms.

use std::fmt;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use url::Url;

use super::client::{LedgerError, redact_password};

/// Time allowed for one Redis reply. The client's default of 500 ms is too short for
/// an admission chunk on a busy Redis. On a cluster the redis crate (1.8) also uses it
/// as the limit for a whole request, including retries after `MOVED` or `ASK`.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Time allowed to establish a connection to one node.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// URL scheme of a Redis Cluster without TLS.
const CLUSTER_SCHEME: &str = "redis+cluster";

/// URL scheme of a Redis Cluster with TLS.
const CLUSTER_TLS_SCHEME: &str = "rediss+cluster";

/// Query parameter that names one more seed node of a cluster, as `host:port`.
const SEED_PARAMETER: &str = "addr";

/// Address of the ledger's Redis deployment, parsed from a ledger URL.
#[derive(Clone, PartialEq, Eq)]
pub enum LedgerAddress {
    /// One Redis server, as a URL that the redis crate accepts (`redis://`, `rediss://`,
    /// `redis+unix://` and others).
    Single(String),
    /// Seed nodes of a Redis Cluster, each as a `redis://` or `rediss://` URL with the
    /// cluster URL's credentials.
    Cluster(Vec<String>),
}

impl LedgerAddress {
    /// Parses a ledger URL in one of the forms that the module documentation lists.
    pub fn parse(url: &str) -> Result<Self, LedgerError> {
        let invalid = |reason: String| LedgerError::InvalidUrl {
            url: redact_password(url),
            reason,
        };
        let parsed = Url::parse(url).map_err(|error| match error {
            // A comma-separated host list is the usual mistake, and it fails as an
            // invalid port.
            url::ParseError::InvalidPort if url.contains("+cluster://") => invalid(format!(
                "{error}. List more seed nodes as ?{SEED_PARAMETER}=host:port, not after a comma"
            )),
            _ => invalid(error.to_string()),
        })?;

        let node_scheme = match parsed.scheme() {
            CLUSTER_SCHEME => "redis",
            CLUSTER_TLS_SCHEME => "rediss",
            // Any other scheme is for one server, so the redis crate checks it as before
            // (`redis`, `rediss`, `redis+unix` and the others it supports).
            _ => {
                redis::IntoConnectionInfo::into_connection_info(url)
                    .map_err(|error| invalid(error.to_string()))?;
                return Ok(Self::Single(url.to_string()));
            }
        };
        parse_cluster(&parsed, node_scheme)
            .map(Self::Cluster)
            .map_err(invalid)
    }

    /// Returns whether the URL names a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

/// Debug output with every password replaced by `***`.
impl fmt::Debug for LedgerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Single(url) => f
                .debug_tuple("Single")
                .field(&redact_password(url))
                .finish(),
            Self::Cluster(nodes) => {
                let redacted: Vec<String> = nodes.iter().map(|url| redact_password(url)).collect();
                f.debug_tuple("Cluster").field(&redacted).finish()
            }
        }
    }
}

/// Turns a cluster URL into one node URL per seed node, or returns why it is invalid.
fn parse_cluster(parsed: &Url, node_scheme: &str) -> Result<Vec<String>, String> {
    if !matches!(parsed.path(), "" | "/" | "/0") {
        return Err(format!(
            "Redis Cluster has only database 0, but the path is {}",
            parsed.path()
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("missing host of the first seed node".into());
    }

    // The first seed keeps the credentials, host and port. `Url::set_scheme` cannot
    // change `redis+cluster` into `redis`, so the node URL is built again from text.
    let mut first = parsed.clone();
    first.set_query(None);
    first.set_fragment(None);
    first.set_path("");
    let after_scheme = &first.as_str()[parsed.scheme().len()..];
    let first = Url::parse(&format!("{node_scheme}{after_scheme}"))
        .map_err(|error| format!("invalid first seed node: {error}"))?;

    let mut nodes = vec![first.to_string()];
    for (name, value) in parsed.query_pairs() {
        if name != SEED_PARAMETER {
            return Err(format!(
                "unknown query parameter {name}. Only {SEED_PARAMETER}=host:port is supported"
            ));
        }
        nodes.push(seed_node(&first, &value)?.to_string());
    }
    Ok(nodes)
}

/// Returns `first` with its host and port replaced by `address` (`host:port`).
fn seed_node(first: &Url, address: &str) -> Result<Url, String> {
    let invalid = |detail: &str| format!("invalid seed node {SEED_PARAMETER}={address}: {detail}");
    let parsed = Url::parse(&format!("redis://{address}")).map_err(|e| invalid(&e.to_string()))?;
    let is_host_and_port = parsed.username().is_empty()
        && parsed.password().is_none()
        && matches!(parsed.path(), "" | "/")
        && parsed.query().is_none()
        && parsed.fragment().is_none();
    if !is_host_and_port {
        return Err(invalid("expected host:port"));
    }
    let Some(port) = parsed.port() else {
        return Err(invalid("missing port"));
    };

    let mut node = first.clone();
    node.set_host(parsed.host_str())
        .map_err(|e| invalid(&e.to_string()))?;
    node.set_port(Some(port))
        .map_err(|()| invalid("the URL cannot carry a port"))?;
    Ok(node)
}

/// A connection to the ledger's Redis, cheap to clone. Commands, pipelines and
/// scripts go through [`ConnectionLike`] whatever the deployment.
///
/// On a cluster, a command is routed by its keys. The redis crate (1.8) rejects a
/// pipeline whose keys hash to different slots with a `CrossSlot` error before sending it.
#[derive(Clone)]
pub enum LedgerConnection {
    /// One Redis server.
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl LedgerConnection {
    /// Connects to the ledger at `url` with a 5 s connection timeout and a 10 s
    /// response timeout.
    pub async fn connect(url: &str) -> Result<Self, LedgerError> {
        let connect_error = |source| LedgerError::Connect {
            url: redact_password(url),
            source,
        };

        match LedgerAddress::parse(url)? {
            LedgerAddress::Single(node) => {
                let client = redis::Client::open(node).map_err(connect_error)?;
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_connection_timeout(Some(CONNECTION_TIMEOUT));
                let conn = ConnectionManager::new_with_config(client, config)
                    .await
                    .map_err(connect_error)?;
                Ok(Self::Single(conn))
            }
            LedgerAddress::Cluster(nodes) => {
                let client = ClusterClientBuilder::new(nodes)
                    .connection_timeout(CONNECTION_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .build()
                    .map_err(connect_error)?;
                let conn = client.get_async_connection().await.map_err(connect_error)?;
                Ok(Self::Cluster(conn))
            }
        }
    }
}

impl ConnectionLike for LedgerConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster_nodes(url: &str) -> Vec<String> {
        match LedgerAddress::parse(url).unwrap() {
            LedgerAddress::Cluster(nodes) => nodes,
            single => panic!("{url} parsed as {single:?}"),
        }
    }

    fn rejection(url: &str) -> String {
        match LedgerAddress::parse(url) {
            Ok(address) => panic!("{url} parsed as {address:?}"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn single_url_is_kept() {
        let url = "redis://:secret@127.0.0.1:6379/2";
        let address = LedgerAddress::parse(url).unwrap();
        assert_eq!(address, LedgerAddress::Single(url.to_string()));
        assert!(!address.is_cluster());
    }

    #[test]
    fn cluster_url_with_one_seed() {
        let nodes = cluster_nodes("redis+cluster://10.0.0.1:7000");
        assert_eq!(nodes, vec!["redis://10.0.0.1:7000"]);
    }

    #[test]
    fn cluster_url_seeds_share_credentials() {
        let nodes = cluster_nodes(
            "redis+cluster://user:p%40ss@10.0.0.1:7000/?addr=10.0.0.2:7001&addr=[::1]:7002",
        );
        assert_eq!(
            nodes,
            vec![
                "redis://user:p%40ss@10.0.0.1:7000",
                "redis://user:p%40ss@10.0.0.2:7001",
                "redis://user:p%40ss@[::1]:7002",
            ]
        );
    }

    #[test]
    fn cluster_tls_url_uses_rediss_nodes() {
        let nodes = cluster_nodes("rediss+cluster://cache.example:7000/0?addr=cache2.example:7000");
        assert_eq!(
            nodes,
            vec![
                "rediss://cache.example:7000",
                "rediss://cache2.example:7000"
            ]
        );
    }

    #[test]
    fn cluster_url_rejects_database() {
        let message = rejection("redis+cluster://10.0.0.1:7000/3");
        assert!(message.contains("only database 0"), "{message}");
    }

    #[test]
    fn cluster_url_rejects_comma_list() {
        let message = rejection("redis+cluster://10.0.0.1:7000,10.0.0.2:7001");
        assert!(message.contains("?addr=host:port"), "{message}");
    }

    #[test]
    fn cluster_url_rejects_bad_seed() {
        for url in [
            "redis+cluster://10.0.0.1:7000/?addr=10.0.0.2",
            "redis+cluster://10.0.0.1:7000/?addr=x:y@10.0.0.2:7001",
            "redis+cluster://10.0.0.1:7000/?addr=10.0.0.2:7001/1",
            "redis+cluster://10.0.0.1:7000/?addr=",
        ] {
            let message = rejection(url);
            assert!(message.contains("invalid seed node"), "{url}: {message}");
        }
    }

    #[test]
    fn cluster_url_rejects_unknown_parameter() {
        let message = rejection("redis+cluster://10.0.0.1:7000/?protocol=resp3");
        assert!(
            message.contains("unknown query parameter protocol"),
            "{message}"
        );
    }

    #[test]
    fn unknown_scheme_is_rejected() {
        let message = rejection("http://10.0.0.1:6379");
        assert!(message.contains("invalid ledger URL http://"), "{message}");
    }

    #[test]
    fn rejection_redacts_password() {
        let message = rejection("redis+cluster://:secret@10.0.0.1:7000/5");
        assert!(!message.contains("secret"), "{message}");
        let message = rejection("redis+cluster://:secret@10.0.0.1:7000,10.0.0.2:7001");
        assert!(!message.contains("secret"), "{message}");
        let debug = format!(
            "{:?}",
            LedgerAddress::parse("redis+cluster://:secret@10.0.0.1:7000").unwrap()
        );
        assert!(!debug.contains("secret"), "{debug}");
    }
}
