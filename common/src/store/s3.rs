//! S3 stores built from `AWS_*` settings.
//!
//! The daemon and its workers read the same environment variables. Their names are
//! object_store 0.14's `AmazonS3ConfigKey` names in upper case, such as `AWS_REGION`
//! (default `us-east-1`), `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`, and `AWS_WEB_IDENTITY_TOKEN_FILE` with `AWS_ROLE_ARN`. The
//! endpoint is `AWS_ENDPOINT_URL_S3`, or `AWS_ENDPOINT_URL`, which AWS SDK clients such
//! as the SQS intake read too. Without an access key, object_store tries web identity,
//! then container credentials, then the instance metadata service.
//!
//! Two deviations from object_store's own defaults: an `http://` endpoint is allowed
//! without `AWS_ALLOW_HTTP=true`, because naming such an endpoint is an explicit
//! choice; and `AWS_EC2_METADATA_DISABLED=true`, as the AWS SDKs define it, makes a
//! store without other credentials an error instead of a request to the metadata
//! address. Requests use path-style addressing (`endpoint/bucket/key`), which
//! S3-compatible services and moto need, unless `AWS_VIRTUAL_HOSTED_STYLE_REQUEST=true`.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::client::ClientConfigKey;

/// Stores built from the process environment, one per bucket, so that every object
/// of a bucket shares one connection pool.
static ENV_STORES: LazyLock<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> =
    LazyLock::new(Mutex::default);

/// Returns the store for `bucket` built from the process environment, building it on
/// first use. The environment is read once per bucket and process.
pub(super) fn env_store(bucket: &str) -> Result<Arc<dyn ObjectStore>, String> {
    let mut stores = ENV_STORES.lock().expect("S3 store cache lock");
    if let Some(store) = stores.get(bucket) {
        return Ok(Arc::clone(store));
    }
    let variables = std::env::vars_os()
        .filter_map(|(key, value)| Some((key.into_string().ok()?, value.into_string().ok()?)));
    let store = build(bucket, variables)?;
    stores.insert(bucket.to_string(), Arc::clone(&store));
    Ok(store)
}

/// Builds a store for `bucket` from `AWS_*` variables and ignores other names. The
/// error text names the missing or invalid setting.
pub(super) fn build<I>(bucket: &str, variables: I) -> Result<Arc<dyn ObjectStore>, String>
where
    I: IntoIterator<Item = (String, String)>,
{
    let mut builder = AmazonS3Builder::new();
    let mut allow_http_given = false;
    let mut metadata_disabled = false;
    for (name, value) in variables {
        match name.as_str() {
            "AWS_EC2_METADATA_DISABLED" => {
                metadata_disabled = value.trim().eq_ignore_ascii_case("true");
                continue;
            }
            "AWS_ALLOW_HTTP" => allow_http_given = true,
            // The bucket comes from the URI, never from the environment.
            "AWS_BUCKET" | "AWS_BUCKET_NAME" => continue,
            _ => {}
        }
        if !name.starts_with("AWS_") {
            continue;
        }
        if let Ok(key) = name.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
            builder = builder.with_config(key, value);
        }
    }

    let endpoint = builder
        .get_config_value(&AmazonS3ConfigKey::S3Endpoint)
        .or_else(|| builder.get_config_value(&AmazonS3ConfigKey::Endpoint));
    if !allow_http_given && endpoint.is_some_and(|endpoint| endpoint.starts_with("http://")) {
        builder = builder.with_config(
            AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp),
            "true",
        );
    }
    if metadata_disabled && !has_credential_source(&builder) {
        return Err(
            "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a web identity \
             or container credential source), because AWS_EC2_METADATA_DISABLED=true rules out \
             the instance metadata service"
                .into(),
        );
    }

    let store = builder
        .with_bucket_name(bucket)
        .build()
        .map_err(|error| format!("invalid S3 settings for bucket {bucket}: {error}"))?;
    Ok(Arc::new(store))
}

/// Returns whether the builder has a credential source other than instance metadata.
fn has_credential_source(builder: &AmazonS3Builder) -> bool {
    let is_set = |key| builder.get_config_value(&key).is_some();
    is_set(AmazonS3ConfigKey::AccessKeyId)
        || is_set(AmazonS3ConfigKey::WebIdentityTokenFile)
        || is_set(AmazonS3ConfigKey::ContainerCredentialsRelativeUri)
        || is_set(AmazonS3ConfigKey::ContainerCredentialsFullUri)
        || builder.get_config_value(&AmazonS3ConfigKey::SkipSignature) == Some("true".into())
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
    fn disabled_metadata_without_keys_is_rejected() {
        let error = build(
            "bucket",
            variables(&[
                ("AWS_EC2_METADATA_DISABLED", "true"),
                ("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9"),
            ]),
        )
        .expect_err("a store without credentials must be rejected");

        assert!(error.contains("AWS_ACCESS_KEY_ID"), "{error}");
    }

    #[test]
    fn http_endpoint_with_keys_builds() {
        let built = build(
            "bucket",
            variables(&[
                ("AWS_EC2_METADATA_DISABLED", "true"),
                ("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9"),
                ("AWS_ACCESS_KEY_ID", "testing"),
                ("AWS_SECRET_ACCESS_KEY", "testing"),
                ("AWS_REGION", "eu-west-1"),
            ]),
        );

        assert!(built.is_ok(), "{:?}", built.err());
    }

    #[test]
    fn secret_without_key_id_is_rejected() {
        let error = build("bucket", variables(&[("AWS_SECRET_ACCESS_KEY", "testing")]))
            .expect_err("a secret without a key id must be rejected");

        assert!(error.contains("bucket"), "{error}");
    }
}
