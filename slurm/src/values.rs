//! Scalar values as Slurm writes them in JSON and in CLI output.
//!
//! The same quantity has several shapes across Slurm versions: slurmrestd 22.05
//! (`openapi/v0.0.38`) writes plain numbers, `null` for unset and `-1` for infinite,
//! while the data_parser plugins of 23.02 and later (`v0.0.39` to `v0.0.42`, and
//! `squeue --json` of those versions) write `{"set": …, "infinite": …, "number": …}`.
//! Unset and infinite are never the same as 0.

use std::fmt;
use std::ops::RangeInclusive;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// Slurm's INFINITE for 32-bit fields; its 64-bit counterpart is `u64::MAX`.
const INFINITE32: u64 = u32::MAX as u64;
/// Slurm's NO_VAL for 32-bit fields (unset); its 64-bit counterpart is `u64::MAX - 1`.
const NO_VAL32: u64 = INFINITE32 - 1;

/// A Slurm number that may be unset or infinite.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SlurmNumber {
    /// No value: `null`, `{"set": false}`, `NO_VAL`, or a missing field.
    #[default]
    Unset,
    /// `{"infinite": true}`, `-1`, `INFINITE`, or the text `UNLIMITED`/`INFINITE`.
    Infinite,
    /// A finite value.
    Value(u64),
}

impl SlurmNumber {
    /// Returns the finite value, or `None` when unset or infinite.
    pub fn value(self) -> Option<u64> {
        match self {
            SlurmNumber::Value(value) => Some(value),
            _ => None,
        }
    }

    /// Interprets one JSON value. Returns `None` for shapes that are no number.
    pub fn from_json(value: &Value) -> Option<SlurmNumber> {
        match value {
            Value::Null => Some(SlurmNumber::Unset),
            Value::Number(number) => Some(Self::from_json_number(number)),
            Value::String(text) => Self::from_text(text),
            Value::Object(object) => {
                if !["set", "infinite", "number"]
                    .iter()
                    .any(|key| object.contains_key(*key))
                {
                    return None;
                }
                if object.get("infinite").and_then(Value::as_bool) == Some(true) {
                    return Some(SlurmNumber::Infinite);
                }
                if object.get("set").and_then(Value::as_bool) == Some(false) {
                    return Some(SlurmNumber::Unset);
                }
                Self::from_json(object.get("number").unwrap_or(&Value::Null))
            }
            Value::Bool(_) | Value::Array(_) => None,
        }
    }

    fn from_json_number(number: &serde_json::Number) -> SlurmNumber {
        if let Some(unsigned) = number.as_u64() {
            return Self::from_sentinel(unsigned);
        }
        match number.as_i64() {
            Some(-1) => SlurmNumber::Infinite,
            // Other negative values and fractions have no meaning in the fields
            // this crate reads; treat them as unset rather than guess.
            _ => match number.as_f64() {
                Some(float) if float >= 0.0 && float.fract() == 0.0 => {
                    Self::from_sentinel(float as u64)
                }
                _ => SlurmNumber::Unset,
            },
        }
    }

    fn from_sentinel(value: u64) -> SlurmNumber {
        match value {
            INFINITE32 | u64::MAX => SlurmNumber::Infinite,
            NO_VAL32 => SlurmNumber::Unset,
            value if value == u64::MAX - 1 => SlurmNumber::Unset,
            value => SlurmNumber::Value(value),
        }
    }

    /// Parses digits, `UNLIMITED`/`INFINITE`, or an empty, `N/A` or `NOT_SET` text.
    pub fn from_text(text: &str) -> Option<SlurmNumber> {
        let text = text.trim();
        match text.to_ascii_uppercase().as_str() {
            "" | "N/A" | "NOT_SET" | "(NULL)" => Some(SlurmNumber::Unset),
            "UNLIMITED" | "INFINITE" => Some(SlurmNumber::Infinite),
            _ => text.parse::<u64>().ok().map(Self::from_sentinel),
        }
    }
}

impl<'de> Deserialize<'de> for SlurmNumber {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        SlurmNumber::from_json(&value)
            .ok_or_else(|| D::Error::custom(format!("expected a Slurm number, got {value}")))
    }
}

impl Serialize for SlurmNumber {
    /// Writes the `{set, infinite, number}` shape, which reads back unchanged.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (set, infinite, number) = match *self {
            SlurmNumber::Unset => (false, false, 0),
            SlurmNumber::Infinite => (true, true, 0),
            SlurmNumber::Value(value) => (true, false, value),
        };
        serde_json::json!({ "set": set, "infinite": infinite, "number": number })
            .serialize(serializer)
    }
}

/// A time limit in whole minutes, as Slurm stores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeLimit {
    /// `UNLIMITED` or `INFINITE`.
    Unlimited,
    /// No limit of its own (`NOT_SET`, unset).
    NotSet,
    /// The job takes its partition's limit (`Partition_Limit` in CLI output).
    PartitionLimit,
    /// A limit in minutes.
    Minutes(u64),
}

impl TimeLimit {
    /// Interprets a JSON value: a number of minutes in any [`SlurmNumber`] shape, or
    /// a text as [`TimeLimit::parse`] accepts it. Returns `None` for other shapes.
    pub fn from_json(value: &Value) -> Option<TimeLimit> {
        if let Value::String(text) = value {
            return TimeLimit::parse(text);
        }
        SlurmNumber::from_json(value).map(TimeLimit::from)
    }

    /// Parses `UNLIMITED`, `INFINITE`, `NOT_SET`, `Partition_Limit`, a number of
    /// minutes, or Slurm's time formats `M:S`, `H:M:S`, `D-H`, `D-H:M` and `D-H:M:S`
    /// (seconds are rounded up to the next minute).
    pub fn parse(text: &str) -> Option<TimeLimit> {
        let text = text.trim();
        match text.to_ascii_uppercase().as_str() {
            "UNLIMITED" | "INFINITE" => return Some(TimeLimit::Unlimited),
            "NOT_SET" | "N/A" | "" => return Some(TimeLimit::NotSet),
            "PARTITION_LIMIT" => return Some(TimeLimit::PartitionLimit),
            _ => {}
        }
        parse_duration_seconds(text).map(|seconds| TimeLimit::Minutes(seconds.div_ceil(60)))
    }
}

impl From<SlurmNumber> for TimeLimit {
    fn from(number: SlurmNumber) -> TimeLimit {
        match number {
            SlurmNumber::Unset => TimeLimit::NotSet,
            SlurmNumber::Infinite => TimeLimit::Unlimited,
            SlurmNumber::Value(minutes) => TimeLimit::Minutes(minutes),
        }
    }
}

/// Parses Slurm's duration formats into seconds. A bare number means minutes.
fn parse_duration_seconds(text: &str) -> Option<u64> {
    let (days, rest) = match text.split_once('-') {
        Some((days, rest)) => (days.parse::<u64>().ok()?, rest),
        None => (0, text),
    };
    let parts = rest
        .split(':')
        .map(|part| part.parse::<u64>().ok())
        .collect::<Option<Vec<_>>>()?;
    let has_days = text.contains('-');
    let (hours, minutes, seconds) = match (has_days, parts.as_slice()) {
        (false, [minutes]) => (0, *minutes, 0),
        (false, [minutes, seconds]) => (0, *minutes, *seconds),
        (false, [hours, minutes, seconds]) => (*hours, *minutes, *seconds),
        (true, [hours]) => (*hours, 0, 0),
        (true, [hours, minutes]) => (*hours, *minutes, 0),
        (true, [hours, minutes, seconds]) => (*hours, *minutes, *seconds),
        _ => return None,
    };
    Some(((days * 24 + hours) * 60 + minutes) * 60 + seconds)
}

/// A set of array indices with an optional throttle, as in `1-3,5,7-15:2%4`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArrayIndexSet {
    /// Index ranges in the order given; each is `(first..=last, step)`.
    pub ranges: Vec<(RangeInclusive<u32>, u32)>,
    /// Maximum number of elements that run at once (`%N`), if any.
    pub throttle: Option<u32>,
}

impl ArrayIndexSet {
    /// Parses Slurm's array index expression: comma-separated indices or ranges
    /// `A-B` with an optional step `:S`, then an optional throttle `%N`.
    pub fn parse(text: &str) -> Result<ArrayIndexSet, InvalidValue> {
        let invalid = || InvalidValue::new("array index expression", text);
        let (list, throttle) = match text.trim().split_once('%') {
            Some((list, throttle)) => (list, Some(throttle.parse().map_err(|_| invalid())?)),
            None => (text.trim(), None),
        };
        let mut ranges = Vec::new();
        for item in list.split(',') {
            ranges.push(parse_index_range(item).ok_or_else(invalid)?);
        }
        Ok(ArrayIndexSet { ranges, throttle })
    }

    /// Returns how many indices the set contains.
    pub fn len(&self) -> u64 {
        self.ranges
            .iter()
            .map(|(range, step)| u64::from((range.end() - range.start()) / step) + 1)
            .sum()
    }

    /// Returns true when the set contains no index; a parsed set never is.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Returns true when `index` is in the set.
    pub fn contains(&self, index: u32) -> bool {
        self.ranges.iter().any(|(range, step)| {
            range.contains(&index) && (index - range.start()).is_multiple_of(*step)
        })
    }

    /// Iterates over the indices in the order given.
    pub fn indices(&self) -> impl Iterator<Item = u32> + '_ {
        self.ranges
            .iter()
            .flat_map(|(range, step)| range.clone().step_by(*step as usize))
    }
}

fn parse_index_range(item: &str) -> Option<(RangeInclusive<u32>, u32)> {
    let (bounds, step) = match item.split_once(':') {
        Some((bounds, step)) => (bounds, step.parse::<u32>().ok().filter(|step| *step > 0)?),
        None => (item, 1),
    };
    let (first, last) = match bounds.split_once('-') {
        Some((first, last)) => (first.parse().ok()?, last.parse().ok()?),
        None => {
            let index = bounds.parse().ok()?;
            (index, index)
        }
    };
    (first <= last).then_some((first..=last, step))
}

impl fmt::Display for ArrayIndexSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (position, (range, step)) in self.ranges.iter().enumerate() {
            if position > 0 {
                f.write_str(",")?;
            }
            if range.start() == range.end() {
                write!(f, "{}", range.start())?;
            } else {
                write!(f, "{}-{}", range.start(), range.end())?;
            }
            if *step != 1 {
                write!(f, ":{step}")?;
            }
        }
        if let Some(throttle) = self.throttle {
            write!(f, "%{throttle}")?;
        }
        Ok(())
    }
}

/// A job id as Slurm's CLI prints it: `123`, `123_7` or `123_[1-3,5%2]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DisplayedJobId {
    /// The job id, which is the array job id for array elements.
    pub job_id: u64,
    /// The array part after the underscore, if any.
    pub array: Option<ArrayPart>,
}

/// The elements of an array that one job record represents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArrayPart {
    /// One element that has started, with its array index.
    Task(u32),
    /// Elements that have not started yet, collapsed into one record.
    Collapsed(ArrayIndexSet),
}

impl DisplayedJobId {
    /// Parses `123`, `123_7` or `123_[1-3,5%2]`.
    pub fn parse(text: &str) -> Result<DisplayedJobId, InvalidValue> {
        let invalid = || InvalidValue::new("job id", text);
        let text = text.trim();
        let Some((job_id, array)) = text.split_once('_') else {
            let job_id = text.parse().map_err(|_| invalid())?;
            return Ok(DisplayedJobId {
                job_id,
                array: None,
            });
        };
        let job_id = job_id.parse().map_err(|_| invalid())?;
        let array = match array
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
        {
            Some(set) => ArrayPart::Collapsed(ArrayIndexSet::parse(set).map_err(|_| invalid())?),
            None => ArrayPart::Task(array.parse().map_err(|_| invalid())?),
        };
        Ok(DisplayedJobId {
            job_id,
            array: Some(array),
        })
    }
}

/// Counts the GPUs in a gres or TRES string.
///
/// Accepts gres lists such as `gpu:4`, `gpu:a100:2(S:0-1),gpu:v100:2` or
/// `gpu:a100:2(IDX:0,2)`, and TRES lists such as `cpu=32,gres/gpu=4`. A TRES list
/// that has both the total `gres/gpu=N` and typed `gres/gpu:TYPE=N` entries counts
/// the total only. Returns `None` when the string names no GPU.
pub fn count_gpus(text: &str) -> Option<u64> {
    let mut untyped = None::<u64>;
    let mut typed = None::<u64>;
    for item in split_outside_parentheses(text) {
        let item = strip_trailing_parentheses(item.trim());
        let (name, count) = match item.split_once('=') {
            Some((name, count)) => (name.strip_prefix("gres/").unwrap_or(name), count),
            None => match item.rsplit_once(':') {
                Some((name, count)) => (name, count),
                None => continue,
            },
        };
        let Some(count) = parse_count(count) else {
            continue;
        };
        let slot = match name.split(':').collect::<Vec<_>>().as_slice() {
            ["gpu"] => &mut untyped,
            ["gpu", _] => &mut typed,
            _ => continue,
        };
        *slot = Some(slot.unwrap_or(0) + count);
    }
    untyped.or(typed)
}

/// Parses a count as Slurm prints it: digits, or digits with a binary unit suffix,
/// such as `1K` for 1024 GPUs in a large partition's gres.
fn parse_count(text: &str) -> Option<u64> {
    let exponent = match text.chars().last()? {
        'K' => 1,
        'M' => 2,
        'G' => 3,
        'T' => 4,
        'P' => 5,
        _ => return text.parse().ok(),
    };
    let digits: u64 = text[..text.len() - 1].parse().ok()?;
    digits.checked_mul(1024u64.checked_pow(exponent)?)
}

/// Removes a suffix such as `(S:0-1)` or `(IDX:0,2)`; a type `(null)` inside stays.
fn strip_trailing_parentheses(item: &str) -> &str {
    match item.rfind('(') {
        Some(position) if item.ends_with(')') => &item[..position],
        _ => item,
    }
}

fn split_outside_parentheses(text: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (position, character) in text.char_indices() {
        match character {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                items.push(&text[start..position]);
                start = position + 1;
            }
            _ => {}
        }
    }
    items.push(&text[start..]);
    items
}

/// A text that could not be parsed, with the kind of value it should have been.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind}: {text:?}")]
pub struct InvalidValue {
    kind: &'static str,
    text: String,
}

impl InvalidValue {
    pub(crate) fn new(kind: &'static str, text: &str) -> InvalidValue {
        InvalidValue {
            kind,
            text: text.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn number_plain_and_structured_shapes() {
        let cases = [
            (json!(5), SlurmNumber::Value(5)),
            (json!(0), SlurmNumber::Value(0)),
            (json!(null), SlurmNumber::Unset),
            (json!(-1), SlurmNumber::Infinite),
            (json!(4294967295u64), SlurmNumber::Infinite),
            (json!(4294967294u64), SlurmNumber::Unset),
            (json!(u64::MAX), SlurmNumber::Infinite),
            (json!(u64::MAX - 1), SlurmNumber::Unset),
            (json!(12.0), SlurmNumber::Value(12)),
            (json!("42"), SlurmNumber::Value(42)),
            (json!("UNLIMITED"), SlurmNumber::Infinite),
            (json!("N/A"), SlurmNumber::Unset),
            (
                json!({"set": true, "infinite": false, "number": 7}),
                SlurmNumber::Value(7),
            ),
            (
                json!({"set": false, "infinite": false, "number": 0}),
                SlurmNumber::Unset,
            ),
            (
                json!({"set": true, "infinite": true, "number": 0}),
                SlurmNumber::Infinite,
            ),
            (
                json!({"set": false, "infinite": true, "number": 0}),
                SlurmNumber::Infinite,
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(SlurmNumber::from_json(&input), Some(expected), "{input}");
        }
    }

    #[test]
    fn number_rejects_other_shapes() {
        assert_eq!(SlurmNumber::from_json(&json!(true)), None);
        assert_eq!(SlurmNumber::from_json(&json!({"total": 2})), None);
        assert_eq!(SlurmNumber::from_json(&json!([1])), None);
        assert_eq!(SlurmNumber::from_json(&json!("ten")), None);
    }

    #[test]
    fn number_serialization_round_trips() {
        for number in [
            SlurmNumber::Unset,
            SlurmNumber::Infinite,
            SlurmNumber::Value(9),
        ] {
            let text = serde_json::to_string(&number).unwrap();
            assert_eq!(serde_json::from_str::<SlurmNumber>(&text).unwrap(), number);
        }
    }

    #[test]
    fn time_limit_texts() {
        let cases = [
            ("UNLIMITED", TimeLimit::Unlimited),
            ("INFINITE", TimeLimit::Unlimited),
            ("NOT_SET", TimeLimit::NotSet),
            ("Partition_Limit", TimeLimit::PartitionLimit),
            ("30", TimeLimit::Minutes(30)),
            ("5:30", TimeLimit::Minutes(6)),
            ("1:00:00", TimeLimit::Minutes(60)),
            ("2-00:00:00", TimeLimit::Minutes(2 * 24 * 60)),
            ("1-12", TimeLimit::Minutes(36 * 60)),
            ("1-00:30", TimeLimit::Minutes(24 * 60 + 30)),
        ];
        for (text, expected) in cases {
            assert_eq!(TimeLimit::parse(text), Some(expected), "{text}");
        }
        assert_eq!(TimeLimit::parse("soon"), None);
    }

    #[test]
    fn time_limit_from_json_shapes() {
        assert_eq!(TimeLimit::from_json(&json!(5)), Some(TimeLimit::Minutes(5)));
        assert_eq!(TimeLimit::from_json(&json!(-1)), Some(TimeLimit::Unlimited));
        assert_eq!(TimeLimit::from_json(&json!(null)), Some(TimeLimit::NotSet));
        assert_eq!(
            TimeLimit::from_json(&json!({"set": true, "infinite": true, "number": 0})),
            Some(TimeLimit::Unlimited)
        );
        assert_eq!(
            TimeLimit::from_json(&json!("Partition_Limit")),
            Some(TimeLimit::PartitionLimit)
        );
    }

    #[test]
    fn array_index_set_with_throttle() {
        let set = ArrayIndexSet::parse("1-3,5%2").unwrap();
        assert_eq!(set.throttle, Some(2));
        assert_eq!(set.len(), 4);
        assert_eq!(set.indices().collect::<Vec<_>>(), vec![1, 2, 3, 5]);
        assert!(set.contains(5));
        assert!(!set.contains(4));
        assert_eq!(set.to_string(), "1-3,5%2");
    }

    #[test]
    fn array_index_set_with_step() {
        let set = ArrayIndexSet::parse("0-9:3").unwrap();
        assert_eq!(set.indices().collect::<Vec<_>>(), vec![0, 3, 6, 9]);
        assert_eq!(set.len(), 4);
        assert!(!set.contains(4));
        assert_eq!(set.throttle, None);
        assert_eq!(set.to_string(), "0-9:3");
    }

    #[test]
    fn array_index_set_rejects_bad_expressions() {
        for text in ["", "3-1", "1-", "a", "1-3%", "1-3%x", "0-9:0", "1,,2"] {
            assert!(ArrayIndexSet::parse(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn displayed_job_ids() {
        assert_eq!(
            DisplayedJobId::parse("123").unwrap(),
            DisplayedJobId {
                job_id: 123,
                array: None
            }
        );
        assert_eq!(
            DisplayedJobId::parse("123_7").unwrap().array,
            Some(ArrayPart::Task(7))
        );
        let collapsed = DisplayedJobId::parse("123_[1-3,5%2]").unwrap();
        assert_eq!(collapsed.job_id, 123);
        let Some(ArrayPart::Collapsed(set)) = collapsed.array else {
            panic!("expected a collapsed range, got {collapsed:?}");
        };
        assert_eq!(set.indices().collect::<Vec<_>>(), vec![1, 2, 3, 5]);
        assert_eq!(set.throttle, Some(2));
        assert!(DisplayedJobId::parse("123_[1-3").is_err());
        assert!(DisplayedJobId::parse("x_1").is_err());
    }

    #[test]
    fn gpu_counts_from_gres_and_tres() {
        let cases = [
            ("gpu:4", Some(4)),
            ("gpu:0", Some(0)),
            ("gpu:a100:2(S:0-1),gpu:v100:2", Some(4)),
            ("gpu:a100:2(IDX:0,2)", Some(2)),
            ("gpu:1K", Some(1024)),
            ("gpu:h100:2K(S:0-1)", Some(2048)),
            ("cpu=32,gres/gpu=1K", Some(1024)),
            ("gpu:1X", None),
            ("gpu:(null):0(IDX:N/A)", Some(0)),
            ("cpu=32,mem=1M,gres/gpu=4", Some(4)),
            ("cpu=32,gres/gpu=4,gres/gpu:a100=4", Some(4)),
            ("cpu=32,gres/gpu:a100=2,gres/gpu:v100=1", Some(3)),
            ("cpu=32,mem=1M,billing=32", None),
            ("", None),
            ("(null)", None),
            ("N/A", None),
            ("mps:100", None),
        ];
        for (text, expected) in cases {
            assert_eq!(count_gpus(text), expected, "{text:?}");
        }
    }
}
