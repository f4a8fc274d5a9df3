//! Go-style durations (`30s`, `5m`, `1h30m`), the form Kubernetes users write and CEL's `duration()`
//! understands.

use std::{borrow::Cow, fmt, time::Duration};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// The subset of Go's duration syntax accepted in the API: whole numbers of hours, minutes,
/// seconds or milliseconds, concatenated. Both CEL and the operator parse it identically.
pub(crate) const CEL_PATTERN: &str = "^([0-9]+(ms|s|m|h))+$";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DurationError {
    #[error("{0:?} is not a duration such as 30s, 5m or 1h30m")]
    Malformed(String),
}

/// A duration kept exactly as written, so that what the user applied is what they read back.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GoDuration(String);

impl GoDuration {
    pub fn new(text: impl Into<String>) -> Result<Self, DurationError> {
        let text = text.into();
        parse(&text)?;
        Ok(Self(text))
    }

    pub(crate) fn from_static(text: &'static str) -> Self {
        Self(text.to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The duration, or why the text is not one (the CRD refuses such text, but objects written
    /// before a validation change, or decoded from files, can still carry it).
    pub fn to_duration(&self) -> Result<Duration, DurationError> {
        parse(&self.0)
    }
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn parse(text: &str) -> Result<Duration, DurationError> {
    let malformed = || DurationError::Malformed(text.to_string());
    let well_formed = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_digit() || "hms".contains(c))
        && text.starts_with(|c: char| c.is_ascii_digit())
        && !text.ends_with(|c: char| c.is_ascii_digit());
    if !well_formed {
        return Err(malformed());
    }
    humantime::parse_duration(text).map_err(|_| malformed())
}

impl JsonSchema for GoDuration {
    fn schema_name() -> Cow<'static, str> {
        "GoDuration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "maxLength": 32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_accepted_forms() {
        let secs = |t: &str| {
            GoDuration::new(t)
                .unwrap()
                .to_duration()
                .unwrap()
                .as_secs_f64()
        };
        assert_eq!(secs("30s"), 30.0);
        assert_eq!(secs("5m"), 300.0);
        assert_eq!(secs("1h30m"), 5400.0);
        assert_eq!(secs("1500ms"), 1.5);
        assert_eq!(secs("0s"), 0.0);
    }

    #[test]
    fn refuses_what_cel_would_refuse() {
        for bad in ["", "30", "s", "1.5s", "-1s", "1d", "1h 30m", "5 m", "1w"] {
            assert!(GoDuration::new(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
