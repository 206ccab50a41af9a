//! Helpers for walking a manifest's JSON value: the error collector, field paths,
//! per-object field tables and typed field access.
//!
//! A **field table** lists the fields that one JSON object may contain. Walking an
//! object against its table reports unknown and missing fields, and typed access reports
//! wrong types and out-of-range integers, so each section check only adds its own rules.

use std::io;
use std::ops::RangeInclusive;

use serde_json::{Map, Value};

use super::ManifestError;

/// Maximum length of a rejected value as shown in an error, in characters.
const MAX_VALUE_CHARS: usize = 80;

/// Maximum number of errors kept for one manifest. A 4 MiB document of malformed shards could
/// otherwise produce millions of errors and hundreds of megabytes of text.
pub(super) const MAX_REPORTED_ERRORS: usize = 1000;

/// One field that a JSON object may contain.
pub(super) struct Field {
    pub name: &'static str,
    pub required: bool,
    /// A valid value, phrased to complete "set `field` to …", such as
    /// "an integer from 1 to 100000".
    pub expects: &'static str,
}

/// A rule violation found by a value check, before it is tied to a path.
pub(super) struct Invalid {
    pub problem: String,
    pub fix: String,
}

impl Invalid {
    pub fn new(problem: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

/// The errors found so far in one manifest, in the order the walk met them. Errors
/// after the first [`MAX_REPORTED_ERRORS`] are only counted.
#[derive(Default)]
pub(super) struct Report {
    errors: Vec<ManifestError>,
    omitted: usize,
}

impl Report {
    /// Records an error at `path`. `value` is `None` when there is no single value to
    /// show, as for a missing field.
    pub fn reject(
        &mut self,
        path: &str,
        value: Option<&Value>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.push(ManifestError {
            path: path.to_owned(),
            value: value.map(shorten).unwrap_or_default(),
            problem: problem.into(),
            fix: fix.into(),
        });
    }

    /// Records that the value at `path` has the wrong JSON type.
    pub fn reject_type(&mut self, path: &str, value: &Value, expected: &str, fix: String) {
        let problem = format!(
            "invalid type: expected {expected}, found {}",
            json_type(value)
        );
        self.reject(path, Some(value), problem, fix);
    }

    /// Records the result of a value check at `path`.
    pub fn check(&mut self, path: &str, value: &Value, result: Result<(), Invalid>) {
        if let Err(invalid) = result {
            self.reject(path, Some(value), invalid.problem, invalid.fix);
        }
    }

    pub fn push(&mut self, error: ManifestError) {
        if self.errors.len() < MAX_REPORTED_ERRORS {
            self.errors.push(error);
        } else {
            self.omitted += 1;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// Returns the kept errors, followed by one that counts the omitted ones, if any.
    pub fn into_errors(mut self) -> Vec<ManifestError> {
        if self.omitted > 0 {
            self.errors.push(ManifestError {
                path: String::new(),
                value: String::new(),
                problem: format!(
                    "{} more errors are not listed, because only the first {MAX_REPORTED_ERRORS} are kept",
                    self.omitted
                ),
                fix: "correct the errors listed above and validate the manifest again".to_owned(),
            });
        }
        self.errors
    }
}

/// Renders `value` as compact JSON of at most [`MAX_VALUE_CHARS`] characters, ending
/// in `…` when it was cut.
pub(super) fn shorten(value: &Value) -> String {
    // Serializing stops once the buffer is full, so a 4 MiB array costs no more than a
    // short string. Four bytes per character is the UTF-8 worst case.
    let mut buffer = BoundedBuffer {
        bytes: Vec::new(),
        capacity: MAX_VALUE_CHARS * 4 + 4,
    };
    let _ = serde_json::to_writer(&mut buffer, value);
    let text = String::from_utf8_lossy(&buffer.bytes);
    shorten_text(&text)
}

/// Cuts `text` to at most [`MAX_VALUE_CHARS`] characters, ending in `…` when it was cut.
pub(super) fn shorten_text(text: &str) -> String {
    if text.chars().count() <= MAX_VALUE_CHARS {
        return text.to_owned();
    }
    let mut short: String = text.chars().take(MAX_VALUE_CHARS - 1).collect();
    short.push('…');
    short
}

/// A writer that accepts bytes up to `capacity` and then fails.
struct BoundedBuffer {
    bytes: Vec<u8>,
    capacity: usize,
}

impl io::Write for BoundedBuffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.capacity - self.bytes.len();
        if room == 0 {
            return Err(io::Error::other("value rendering is long enough"));
        }
        let accepted = buf.len().min(room);
        self.bytes.extend_from_slice(&buf[..accepted]);
        Ok(accepted)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Returns the path of `key` inside the object at `parent`: `kernel.name` for plain
/// keys, `labels["team.name"]` for keys that contain other characters.
pub(super) fn field_path(parent: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !plain {
        let quoted = serde_json::to_string(key).unwrap_or_default();
        return format!("{parent}[{quoted}]");
    }
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// Returns the path of element `index` of the array at `parent`: `inputs[2]`.
pub(super) fn index_path(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

/// Names the JSON type of `value` with its article, for messages.
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(number) if number.is_f64() => "a fractional number",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Returns the candidate closest to `word` when it is close enough to be a typo.
pub(super) fn suggest<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    let best = candidates
        .iter()
        .map(|candidate| (edit_distance(word, candidate), *candidate))
        .min()?;
    let tolerance = (best.1.len() / 3).max(1);
    (best.0 <= tolerance).then_some(best.1)
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, a_char) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, b_char) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(a_char != *b_char);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

/// Returns the `expects` text of field `name` in `fields`, or "" when it is missing.
pub(super) fn expects(fields: &[Field], name: &str) -> &'static str {
    fields
        .iter()
        .find(|field| field.name == name)
        .map_or("", |field| field.expects)
}

/// Formats `names` as "`a`, `b`, `c`" for fixes.
pub(super) fn list_names<'n>(names: impl IntoIterator<Item = &'n str>) -> String {
    names
        .into_iter()
        .map(|name| format!("`{name}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A JSON object whose unknown and missing fields have been reported, with typed
/// access to its known fields.
pub(super) struct Object<'a> {
    path: String,
    map: &'a Map<String, Value>,
    fields: &'static [Field],
}

impl<'a> Object<'a> {
    /// Checks that `value` is an object and that its keys match `fields`. Returns `None`
    /// when `value` is not an object, and `expects` then completes "set `path` to …" in
    /// the fix.
    pub fn open(
        report: &mut Report,
        path: &str,
        value: &'a Value,
        fields: &'static [Field],
        expects: &str,
    ) -> Option<Self> {
        let Some(map) = value.as_object() else {
            let fix = if path.is_empty() {
                format!("send {expects}")
            } else {
                format!("set `{path}` to {expects}")
            };
            report.reject_type(path, value, "an object", fix);
            return None;
        };

        let object = Self {
            path: path.to_owned(),
            map,
            fields,
        };
        object.report_unknown(report);
        object.report_missing(report);
        Some(object)
    }

    fn report_unknown(&self, report: &mut Report) {
        let allowed: Vec<&str> = self.fields.iter().map(|field| field.name).collect();
        for (key, value) in self.map {
            if allowed.contains(&key.as_str()) {
                continue;
            }
            let hint = match suggest(key, &allowed) {
                Some(near) => format!("rename it to `{near}` or remove it"),
                None => "remove it".to_owned(),
            };
            let place = if self.path.is_empty() {
                "at the top level".to_owned()
            } else {
                format!("in `{}`", self.path)
            };
            report.reject(
                &field_path(&self.path, key),
                Some(value),
                format!("unknown field `{key}`"),
                format!(
                    "{hint}. Fields allowed {place}: {}",
                    list_names(allowed.iter().copied())
                ),
            );
        }
    }

    fn report_missing(&self, report: &mut Report) {
        for field in self.fields.iter().filter(|field| field.required) {
            if !self.map.contains_key(field.name) {
                report.reject(
                    &self.path_of(field.name),
                    None,
                    format!("missing required field `{}`", field.name),
                    format!("add `{}`: {}", field.name, field.expects),
                );
            }
        }
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn path_of(&self, name: &str) -> String {
        field_path(&self.path, name)
    }

    /// Returns the value of field `name`. An optional field set to `null` counts as
    /// absent, as serde treats `Option` fields. A required field's `null` is returned,
    /// so that its type check rejects it.
    pub fn get(&self, name: &str) -> Option<&'a Value> {
        let value = self.map.get(name)?;
        if value.is_null() && !self.field(name).required {
            return None;
        }
        Some(value)
    }

    fn field(&self, name: &str) -> &'static Field {
        self.fields
            .iter()
            .find(|field| field.name == name)
            .unwrap_or_else(|| panic!("field `{name}` is not in the table for `{}`", self.path))
    }

    /// Rejects the value of field `name` for having the wrong type.
    fn reject_field_type(&self, report: &mut Report, name: &str, value: &Value, expected: &str) {
        let path = self.path_of(name);
        let mut fix = format!("set `{path}` to {}", self.field(name).expects);
        if expected == "an integer" && value.as_str().is_some_and(|s| s.parse::<i128>().is_ok()) {
            fix.push_str(", written without quotes");
        }
        report.reject_type(&path, value, expected, fix);
    }

    /// Returns field `name` as a string, reporting any other type.
    pub fn string(&self, report: &mut Report, name: &str) -> Option<&'a str> {
        let value = self.get(name)?;
        match value.as_str() {
            Some(text) => Some(text),
            None => {
                self.reject_field_type(report, name, value, "a string");
                None
            }
        }
    }

    /// Returns field `name` as a string that passes `rule`, reporting a wrong type or
    /// a rule violation.
    pub fn checked_string(
        &self,
        report: &mut Report,
        name: &str,
        rule: impl FnOnce(&str) -> Result<(), Invalid>,
    ) -> Option<&'a str> {
        let text = self.string(report, name)?;
        match rule(text) {
            Ok(()) => Some(text),
            Err(invalid) => {
                report.reject(
                    &self.path_of(name),
                    self.get(name),
                    invalid.problem,
                    invalid.fix,
                );
                None
            }
        }
    }

    /// Returns field `name` as an integer within `range`, reporting any other type or
    /// value. An upper bound of `u64::MAX` is treated as no upper bound in messages.
    pub fn integer(
        &self,
        report: &mut Report,
        name: &str,
        range: RangeInclusive<i128>,
    ) -> Option<i128> {
        let value = self.get(name)?;
        let number = value
            .as_i64()
            .map(i128::from)
            .or(value.as_u64().map(i128::from));
        let Some(number) = number else {
            self.reject_field_type(report, name, value, "an integer");
            return None;
        };
        if range.contains(&number) {
            return Some(number);
        }

        let bounds = if *range.end() >= i128::from(u64::MAX) {
            format!("at least {}", range.start())
        } else {
            format!("from {} to {}", range.start(), range.end())
        };
        let path = self.path_of(name);
        report.reject(
            &path,
            Some(value),
            format!("invalid value {number}: `{name}` must be {bounds}"),
            format!("set `{path}` to {}", self.field(name).expects),
        );
        None
    }

    /// Returns field `name` as a number (integer or fractional) within `bounds`,
    /// reporting any other type or value.
    pub fn number(&self, report: &mut Report, name: &str, bounds: NumberBounds) -> Option<f64> {
        let value = self.get(name)?;
        let Some(number) = value.as_f64() else {
            self.reject_field_type(report, name, value, "a number");
            return None;
        };
        if bounds.contains(number) {
            return Some(number);
        }

        let path = self.path_of(name);
        report.reject(
            &path,
            Some(value),
            format!(
                "invalid value {value}: `{name}` must be {}",
                bounds.describe()
            ),
            format!("set `{path}` to {}", self.field(name).expects),
        );
        None
    }
}

/// An interval of valid numbers; each end is included unless marked exclusive.
#[derive(Clone, Copy)]
pub(super) struct NumberBounds {
    pub min: f64,
    pub min_exclusive: bool,
    pub max: f64,
    pub max_exclusive: bool,
}

impl NumberBounds {
    /// Both ends included.
    pub const fn closed(min: f64, max: f64) -> Self {
        Self {
            min,
            min_exclusive: false,
            max,
            max_exclusive: false,
        }
    }

    fn contains(&self, number: f64) -> bool {
        let above_min = if self.min_exclusive {
            number > self.min
        } else {
            number >= self.min
        };
        let below_max = if self.max_exclusive {
            number < self.max
        } else {
            number <= self.max
        };
        above_min && below_max
    }

    /// Describes the interval, such as "greater than 0 and at most 10".
    pub fn describe(&self) -> String {
        match (self.min_exclusive, self.max_exclusive) {
            (false, false) => format!("from {} to {}", self.min, self.max),
            (true, false) => format!("greater than {} and at most {}", self.min, self.max),
            (false, true) => format!("from {} to below {}", self.min, self.max),
            (true, true) => format!("greater than {} and below {}", self.min, self.max),
        }
    }
}

/// Returns the field table of the variant that the object's `name` field selects
/// (a kernel or an optimizer), reporting a missing, mistyped or unknown name. `noun`
/// names one variant in messages, such as "kernel".
pub(super) fn variant_fields(
    report: &mut Report,
    path: &str,
    object: &Value,
    variants: &[(&'static str, &'static [Field])],
    noun: &str,
) -> Option<&'static [Field]> {
    let known: Vec<&str> = variants.iter().map(|(name, _)| *name).collect();
    let known_list = list_names(known.iter().copied());
    let name_path = field_path(path, "name");

    let Some(name_value) = object.get("name") else {
        report.reject(
            &name_path,
            None,
            "missing required field `name`",
            format!("add `name` with one of the known {noun}s: {known_list}"),
        );
        return None;
    };
    let Some(name) = name_value.as_str() else {
        let fix = format!("set `{name_path}` to one of the known {noun}s: {known_list}");
        report.reject_type(&name_path, name_value, "a string", fix);
        return None;
    };

    if let Some((_, fields)) = variants.iter().find(|(known_name, _)| *known_name == name) {
        return Some(fields);
    }
    let hint = suggest(name, &known)
        .map(|near| format!(" (did you mean `{near}`?)"))
        .unwrap_or_default();
    report.reject(
        &name_path,
        Some(name_value),
        format!("unknown {noun} `{}`", shorten_text(name)),
        format!("set `{name_path}` to one of the known {noun}s: {known_list}{hint}"),
    );
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorten_cuts_long_values() {
        let long = Value::String("x".repeat(500));
        let short = shorten(&long);
        assert_eq!(short.chars().count(), MAX_VALUE_CHARS);
        assert!(short.ends_with('…'));
    }

    #[test]
    fn shorten_cuts_multibyte_text() {
        let long = Value::String("é".repeat(500));
        let short = shorten(&long);
        assert_eq!(short.chars().count(), MAX_VALUE_CHARS);
        assert!(short.starts_with("\"éé"));
    }

    #[test]
    fn shorten_keeps_short_values() {
        assert_eq!(shorten(&Value::from("abc")), "\"abc\"");
        assert_eq!(shorten(&Value::from(7)), "7");
    }

    #[test]
    fn field_path_quotes_dotted_keys() {
        assert_eq!(field_path("", "name"), "name");
        assert_eq!(field_path("labels", "team"), "labels.team");
        assert_eq!(field_path("labels", "team.name"), "labels[\"team.name\"]");
        assert_eq!(field_path("", ""), "[\"\"]");
    }

    #[test]
    fn suggest_finds_typos() {
        let fields = ["records", "records_per_task", "sha256"];
        assert_eq!(suggest("recrods", &fields), Some("records"));
        assert_eq!(
            suggest("records_per_tasks", &fields),
            Some("records_per_task")
        );
        assert_eq!(suggest("colour", &fields), None);
    }
}
