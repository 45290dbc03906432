//! Station identities: the validated name a station certificate carries.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest station id accepted anywhere in Ferry.
pub const MAX_STATION_ID_LEN: usize = 64;

/// A station's name, as carried in the common name of its certificate.
///
/// Valid ids are 1 to 64 characters of `[A-Za-z0-9._-]` that do not start with
/// `.` or `-`. The id becomes a directory name in the repository, so `.` and
/// `..` (and hidden names) must never be possible; a leading `-` would read as
/// an option on command lines.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct StationId(String);

/// Why a string is not a valid station id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StationIdError {
    #[error("station id is empty")]
    Empty,
    #[error("station id is {len} characters long, the limit is {MAX_STATION_ID_LEN}")]
    TooLong { len: usize },
    #[error("station id {id:?} contains {bad:?}; only A-Z a-z 0-9 . _ - are allowed")]
    BadCharacter { id: String, bad: char },
    #[error("station id {id:?} must not start with '.' or '-'")]
    BadStart { id: String },
}

impl StationId {
    /// Validates `id` against the station id rules.
    pub fn new(id: impl Into<String>) -> Result<Self, StationIdError> {
        let id = id.into();
        if id.is_empty() {
            return Err(StationIdError::Empty);
        }
        let len = id.chars().count();
        if len > MAX_STATION_ID_LEN {
            return Err(StationIdError::TooLong { len });
        }
        if let Some(bad) = id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(StationIdError::BadCharacter { id, bad });
        }
        if id.starts_with(['.', '-']) {
            return Err(StationIdError::BadStart { id });
        }
        Ok(Self(id))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for StationId {
    type Err = StationIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for StationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StationId({})", self.0)
    }
}

impl<'de> Deserialize<'de> for StationId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        StationId::new(raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_legacy_station_names() {
        for id in [
            "rfeye002073",
            "station-01",
            "site_7.north",
            "A",
            &"x".repeat(64),
        ] {
            assert_eq!(StationId::new(id).unwrap().as_str(), id);
        }
    }

    #[test]
    fn refuses_names_that_could_escape_or_confuse() {
        assert_eq!(StationId::new(""), Err(StationIdError::Empty));
        assert_eq!(
            StationId::new("x".repeat(65)),
            Err(StationIdError::TooLong { len: 65 })
        );
        for id in [".", "..", ".hidden", "-rf"] {
            assert!(
                matches!(StationId::new(id), Err(StationIdError::BadStart { .. })),
                "{id}"
            );
        }
        for id in ["a/b", "a b", "a\0b", "é", "a\nb", "a:b"] {
            assert!(
                matches!(StationId::new(id), Err(StationIdError::BadCharacter { .. })),
                "{id}"
            );
        }
    }
}
