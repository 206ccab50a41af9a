//! Conversions between gcloud-storage's objects and errors and object_store's.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use gcloud_storage::http::Error as GcsError;
use gcloud_storage::http::objects::Object;
use object_store::path::Path;
use object_store::{Attribute, AttributeValue, Attributes, ObjectMeta, Result, UpdateVersion};

use super::STORE;

/// Returns the generation that a conditional update must match.
pub(super) fn update_generation(version: &UpdateVersion, location: &Path) -> Result<i64> {
    match &version.version {
        Some(generation) => parse_generation(generation, location),
        None => Err(object_store::Error::Generic {
            store: STORE,
            source: format!(
                "a conditional update of {location} needs the object's generation as \
                 UpdateVersion::version; GCS does not match on ETags"
            )
            .into(),
        }),
    }
}

pub(super) fn parse_generation(version: &str, location: &Path) -> Result<i64> {
    version
        .parse::<i64>()
        .map_err(|_| object_store::Error::Generic {
            store: STORE,
            source: format!(
                "invalid version {version:?} of {location}: a GCS generation is an integer"
            )
            .into(),
        })
}

/// Builds the metadata part of an upload: the object name and the attributes that
/// GCS stores. Tags have no GCS counterpart and are dropped.
pub(super) fn upload_metadata(location: &Path, attributes: &Attributes) -> Object {
    let mut object = Object {
        name: location.to_string(),
        content_type: Some("application/octet-stream".into()),
        ..Object::default()
    };
    let mut metadata = HashMap::new();
    for (attribute, value) in attributes {
        let value = value.to_string();
        match attribute {
            Attribute::ContentType => object.content_type = Some(value),
            Attribute::ContentDisposition => object.content_disposition = Some(value),
            Attribute::ContentEncoding => object.content_encoding = Some(value),
            Attribute::ContentLanguage => object.content_language = Some(value),
            Attribute::CacheControl => object.cache_control = Some(value),
            Attribute::StorageClass => object.storage_class = Some(value),
            Attribute::Metadata(key) => {
                metadata.insert(key.to_string(), value);
            }
            _ => {}
        }
    }
    if !metadata.is_empty() {
        object.metadata = Some(metadata);
    }
    object
}

/// Returns the attributes of a stored object, the reverse of [`upload_metadata`].
pub(super) fn object_attributes(object: &Object) -> Attributes {
    let mut attributes = Attributes::new();
    let fields = [
        (Attribute::ContentType, &object.content_type),
        (Attribute::ContentDisposition, &object.content_disposition),
        (Attribute::ContentEncoding, &object.content_encoding),
        (Attribute::ContentLanguage, &object.content_language),
        (Attribute::CacheControl, &object.cache_control),
        (Attribute::StorageClass, &object.storage_class),
    ];
    for (attribute, value) in fields {
        if let Some(value) = value {
            attributes.insert(attribute, AttributeValue::from(value.clone()));
        }
    }
    for (key, value) in object.metadata.iter().flatten() {
        attributes.insert(
            Attribute::Metadata(key.clone().into()),
            AttributeValue::from(value.clone()),
        );
    }
    attributes
}

pub(super) fn object_meta(object: &Object) -> Result<ObjectMeta> {
    let updated = object.updated.or(object.time_created);
    let last_modified = updated
        .and_then(|time| DateTime::<Utc>::from_timestamp(time.unix_timestamp(), time.nanosecond()))
        .unwrap_or_default();
    Ok(ObjectMeta {
        location: Path::parse(&object.name)?,
        last_modified,
        size: u64::try_from(object.size).unwrap_or(0),
        e_tag: Some(object.etag.clone()),
        version: Some(object.generation.to_string()),
    })
}

/// Returns the HTTP status of a failed request, whether GCS sent a JSON error body
/// (a [`GcsError::Response`]) or not (fake-gcs-server's 404 is plain text).
fn status_of(error: &GcsError) -> Option<u16> {
    match error {
        GcsError::Response(response) => Some(response.code),
        GcsError::HttpClient(error) | GcsError::RawResponse(error, _) => {
            error.status().map(|status| status.as_u16())
        }
        _ => None,
    }
}

/// Maps a gcloud-storage error to the object_store error of the same meaning, so that
/// callers treat a missing object or a failed precondition alike on every store.
pub(super) fn store_error(error: GcsError, location: &Path) -> object_store::Error {
    let status = status_of(&error);
    let path = location.to_string();
    let source = Box::new(error);
    match status {
        Some(404) => object_store::Error::NotFound { path, source },
        Some(412) => object_store::Error::Precondition { path, source },
        Some(304) => object_store::Error::NotModified { path, source },
        Some(401) => object_store::Error::Unauthenticated { path, source },
        Some(403) => object_store::Error::PermissionDenied { path, source },
        _ => object_store::Error::Generic {
            store: STORE,
            source,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_metadata_keeps_attributes() {
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentType, "application/json".into());
        attributes.insert(Attribute::Metadata("run".into()), "r1".into());

        let object = upload_metadata(&Path::from("out/job.json"), &attributes);

        assert_eq!(object.name, "out/job.json");
        assert_eq!(object.content_type.as_deref(), Some("application/json"));
        let metadata = object.metadata.expect("metadata");
        assert_eq!(metadata.get("run").map(String::as_str), Some("r1"));
    }
}
