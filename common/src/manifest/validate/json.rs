//! Reading the manifest bytes into a JSON value, with errors for syntax and for keys
//! that appear twice in one object.
//!
//! `serde_json::Value` silently keeps the last of two equal keys, while the typed
//! `Manifest` rejects them, so the value is built by a visitor that records duplicates.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::ManifestError;
use super::walk::{field_path, index_path, shorten, shorten_text};

const UTF8_BYTE_ORDER_MARK: &[u8] = b"\xEF\xBB\xBF";

/// Parses `bytes` as one JSON document. Returns the value and an error for each
/// duplicate key, or the syntax error that stopped parsing.
pub(super) fn read_document(bytes: &[u8]) -> Result<(Value, Vec<ManifestError>), ManifestError> {
    // Some Windows editors start UTF-8 files with a byte order mark, which JSON forbids
    // but which carries no content.
    let bytes = bytes.strip_prefix(UTF8_BYTE_ORDER_MARK).unwrap_or(bytes);
    let duplicates = RefCell::new(Vec::new());
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);

    let seed = ValueSeed {
        path: String::new(),
        duplicates: &duplicates,
    };
    let value = seed
        .deserialize(&mut deserializer)
        .and_then(|value| deserializer.end().map(|()| value))
        .map_err(|error| syntax_error(bytes, &error))?;
    Ok((value, duplicates.into_inner()))
}

fn syntax_error(bytes: &[u8], error: &serde_json::Error) -> ManifestError {
    let (line, column) = (error.line(), error.column());
    let fix = if error.is_eof() {
        format!(
            "the document ends early at line {line}, column {column}: send the whole file and close every {{, [ and \""
        )
    } else {
        format!(
            "correct the JSON near line {line}, column {column}. `python3 -m json.tool FILE` also reports the first syntax error with its position"
        )
    };
    ManifestError {
        path: String::new(),
        value: excerpt(bytes, line, column),
        problem: format!("invalid JSON: {error}"),
        fix,
    }
}

/// Returns up to 80 characters of line `line` (1-based) that end near `column`.
fn excerpt(bytes: &[u8], line: usize, column: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let Some(line_text) = text.split('\n').nth(line.saturating_sub(1)) else {
        return String::new();
    };
    // serde_json counts columns in bytes. After an invalid UTF-8 sequence the lossy text
    // has different byte offsets, which only shifts the excerpt.
    let end = floor_char_boundary(line_text, column.saturating_add(20));
    let start = floor_char_boundary(line_text, end.saturating_sub(60));
    shorten_text(line_text[start..end].trim())
}

fn floor_char_boundary(text: &str, index: usize) -> usize {
    let mut index = index.min(text.len());
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

/// Builds a `Value` and records the path of every key that repeats within its object.
struct ValueSeed<'d> {
    path: String,
    duplicates: &'d RefCell<Vec<ManifestError>>,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        // serde_json reports numbers out of the f64 range as errors, so `value` is
        // finite; `Value::from` would turn anything else into null.
        Ok(Value::from(value))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            let seed = ValueSeed {
                path: index_path(&self.path, items.len()),
                duplicates: self.duplicates,
            };
            match seq.next_element_seed(seed)? {
                Some(item) => items.push(item),
                None => return Ok(Value::Array(items)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = field_path(&self.path, &key);
            let seed = ValueSeed {
                path: path.clone(),
                duplicates: self.duplicates,
            };
            let value = map.next_value_seed(seed)?;
            if object.contains_key(&key) {
                self.duplicates.borrow_mut().push(ManifestError {
                    path,
                    value: shorten(&value),
                    problem: format!(
                        "duplicate field `{key}`: it appears more than once in this object"
                    ),
                    fix: format!("keep one `{key}` and remove the others"),
                });
                continue;
            }
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_document_reports_duplicate_keys() {
        let (value, duplicates) = read_document(br#"{"a": {"b": 1, "b": 2}}"#).unwrap();
        assert_eq!(value["a"]["b"], 1);
        assert_eq!(duplicates.len(), 1);
        assert_eq!(duplicates[0].path, "a.b");
        assert_eq!(duplicates[0].value, "2");
    }

    #[test]
    fn read_document_skips_byte_order_mark() {
        let (value, _) = read_document(b"\xEF\xBB\xBF{\"a\": 1}").unwrap();
        assert_eq!(value["a"], 1);
    }

    #[test]
    fn syntax_error_has_line_and_excerpt() {
        let error = read_document(b"{\n  \"a\": 1,\n  \"b\" 2\n}").unwrap_err();
        assert!(error.problem.contains("line 3"), "{}", error.problem);
        assert!(error.fix.contains("line 3"), "{}", error.fix);
        assert_eq!(error.value, "\"b\" 2");
    }

    #[test]
    fn excerpt_handles_multibyte_text() {
        let text = "ééééééééééééééééééééééééééééééééééééééééééééééééééééé x";
        let excerpt = excerpt(text.as_bytes(), 1, 41);
        assert!(!excerpt.is_empty());
    }
}
