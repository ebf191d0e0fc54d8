//! Kusto scalar types and typed values, decoded from the JSON of v1 and v2 answers.

use serde_json::Value as Json;
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use super::error::KustoError;

/// The Kusto scalar types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KustoType {
    Bool,
    Int,
    Long,
    Real,
    Decimal,
    String,
    DateTime,
    TimeSpan,
    Guid,
    Dynamic,
}

impl KustoType {
    /// Accepts v2 `ColumnType` names, their documented aliases, and v1 `DataType` (CLR) names.
    pub fn from_name(name: &str) -> Option<KustoType> {
        let t = match name.to_ascii_lowercase().as_str() {
            "bool" | "boolean" | "sbyte" | "system.boolean" | "system.sbyte" => KustoType::Bool,
            "int" | "int32" | "system.int32" => KustoType::Int,
            "long" | "int64" | "system.int64" => KustoType::Long,
            "real" | "double" | "float" | "system.double" | "system.single" | "single" => {
                KustoType::Real
            }
            "decimal" | "sqldecimal" | "system.decimal" | "system.data.sqltypes.sqldecimal" => {
                KustoType::Decimal
            }
            "string" | "system.string" => KustoType::String,
            "datetime" | "date" | "system.datetime" => KustoType::DateTime,
            "timespan" | "time" | "system.timespan" => KustoType::TimeSpan,
            "guid" | "uniqueid" | "system.guid" => KustoType::Guid,
            "dynamic" | "object" | "system.object" => KustoType::Dynamic,
            _ => return None,
        };
        Some(t)
    }

    pub fn name(self) -> &'static str {
        match self {
            KustoType::Bool => "bool",
            KustoType::Int => "int",
            KustoType::Long => "long",
            KustoType::Real => "real",
            KustoType::Decimal => "decimal",
            KustoType::String => "string",
            KustoType::DateTime => "datetime",
            KustoType::TimeSpan => "timespan",
            KustoType::Guid => "guid",
            KustoType::Dynamic => "dynamic",
        }
    }
}

/// One decoded cell.
#[derive(Debug, Clone, PartialEq)]
pub enum KustoValue {
    Null,
    Bool(bool),
    Int(i32),
    Long(i64),
    Real(f64),
    /// Kept as text: Kusto decimals have 34 digits, more than any float.
    Decimal(String),
    String(String),
    DateTime(OffsetDateTime),
    TimeSpan(Duration),
    Guid(Uuid),
    Dynamic(Json),
}

impl KustoValue {
    /// Decodes a JSON cell as the column's type. `null` is `Null` for every type (strings
    /// included: an empty string is a different value).
    pub fn decode(kind: KustoType, cell: &Json) -> Result<KustoValue, KustoError> {
        if cell.is_null() {
            return Ok(KustoValue::Null);
        }
        let bad = || {
            KustoError::protocol(format!(
                "cannot read {} as {}",
                truncate(&cell.to_string()),
                kind.name()
            ))
        };
        let value = match kind {
            KustoType::Bool => match cell {
                Json::Bool(b) => KustoValue::Bool(*b),
                // v1 answers may type booleans as SByte and send 0/1.
                Json::Number(n) => KustoValue::Bool(n.as_i64().ok_or_else(bad)? != 0),
                Json::String(s) if s.eq_ignore_ascii_case("true") => KustoValue::Bool(true),
                Json::String(s) if s.eq_ignore_ascii_case("false") => KustoValue::Bool(false),
                _ => return Err(bad()),
            },
            KustoType::Int => {
                let n = integer(cell).ok_or_else(bad)?;
                KustoValue::Int(i32::try_from(n).map_err(|_| bad())?)
            }
            KustoType::Long => KustoValue::Long(integer(cell).ok_or_else(bad)?),
            KustoType::Real => match cell {
                Json::Number(n) => KustoValue::Real(n.as_f64().ok_or_else(bad)?),
                // JSON has no NaN or infinities; Kusto spells them as strings.
                Json::String(s) => KustoValue::Real(match s.as_str() {
                    "NaN" => f64::NAN,
                    "Infinity" | "+Infinity" => f64::INFINITY,
                    "-Infinity" => f64::NEG_INFINITY,
                    other => other.parse().map_err(|_| bad())?,
                }),
                _ => return Err(bad()),
            },
            KustoType::Decimal => match cell {
                Json::String(s) => KustoValue::Decimal(s.clone()),
                Json::Number(n) => KustoValue::Decimal(n.to_string()),
                _ => return Err(bad()),
            },
            KustoType::String => match cell {
                Json::String(s) => KustoValue::String(s.clone()),
                _ => return Err(bad()),
            },
            KustoType::DateTime => match cell {
                Json::String(s) => KustoValue::DateTime(parse_datetime(s).ok_or_else(bad)?),
                _ => return Err(bad()),
            },
            KustoType::TimeSpan => match cell {
                Json::String(s) => KustoValue::TimeSpan(parse_timespan(s).ok_or_else(bad)?),
                // Some answers send ticks (100 ns).
                Json::Number(n) => {
                    let ticks = n.as_i64().ok_or_else(bad)?;
                    KustoValue::TimeSpan(Duration::nanoseconds(ticks.saturating_mul(100)))
                }
                _ => return Err(bad()),
            },
            KustoType::Guid => match cell {
                Json::String(s) => KustoValue::Guid(Uuid::parse_str(s).map_err(|_| bad())?),
                _ => return Err(bad()),
            },
            KustoType::Dynamic => KustoValue::Dynamic(cell.clone()),
        };
        Ok(value)
    }

    pub fn is_null(&self) -> bool {
        matches!(self, KustoValue::Null)
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            KustoValue::String(s) | KustoValue::Decimal(s) => Some(s),
            KustoValue::Dynamic(Json::String(s)) => Some(s),
            _ => None,
        }
    }

    /// `int` and `long` both read as i64: Kusto answers vary between them for counts.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            KustoValue::Int(i) => Some(i64::from(*i)),
            KustoValue::Long(l) => Some(*l),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            KustoValue::Real(r) => Some(*r),
            KustoValue::Int(i) => Some(f64::from(*i)),
            KustoValue::Long(l) => Some(*l as f64),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            KustoValue::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_datetime(&self) -> Option<OffsetDateTime> {
        match self {
            KustoValue::DateTime(d) => Some(*d),
            _ => None,
        }
    }

    pub fn as_timespan(&self) -> Option<Duration> {
        match self {
            KustoValue::TimeSpan(d) => Some(*d),
            _ => None,
        }
    }

    pub fn as_guid(&self) -> Option<Uuid> {
        match self {
            KustoValue::Guid(g) => Some(*g),
            // `.show` commands type some ids as strings.
            KustoValue::String(s) => Uuid::parse_str(s).ok(),
            _ => None,
        }
    }

    /// The JSON of a dynamic cell. v1 answers (and some v2 tables) send dynamic values as
    /// JSON text inside a string; this parses such text when it holds an object or array.
    pub fn as_json(&self) -> Option<Json> {
        match self {
            KustoValue::Dynamic(Json::String(s)) | KustoValue::String(s) => {
                let t = s.trim_start();
                if t.starts_with('{') || t.starts_with('[') {
                    serde_json::from_str(s).ok()
                } else {
                    Some(Json::String(s.clone()))
                }
            }
            KustoValue::Dynamic(v) => Some(v.clone()),
            _ => None,
        }
    }
}

fn integer(cell: &Json) -> Option<i64> {
    match cell {
        Json::Number(n) => n.as_i64().or_else(|| {
            // Some serialisers write whole numbers as 1.0.
            n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)
        }),
        Json::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

/// ISO 8601 as Kusto writes it (`2024-01-02T03:04:05.1234567Z`, up to 7 fractional digits).
pub fn parse_datetime(s: &str) -> Option<OffsetDateTime> {
    if let Ok(d) = OffsetDateTime::parse(s, &Rfc3339) {
        return Some(d);
    }
    // Kusto also emits datetimes without an offset; they are UTC.
    let with_z = format!("{s}Z");
    OffsetDateTime::parse(&with_z, &Rfc3339).ok()
}

/// Formats a datetime the way Kusto does: UTC, 7 fractional digits, `Z`.
pub fn format_datetime(d: OffsetDateTime) -> String {
    let d = d.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:07}Z",
        d.year(),
        u8::from(d.month()),
        d.day(),
        d.hour(),
        d.minute(),
        d.second(),
        d.nanosecond() / 100
    )
}

/// `[-][d.]hh:mm:ss[.fffffff]`, the .NET TimeSpan text Kusto uses.
pub fn parse_timespan(s: &str) -> Option<Duration> {
    let (negative, rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let mut parts = rest.split(':');
    let first = parts.next()?;
    let minutes: i64 = parts.next()?.parse().ok()?;
    let seconds_text = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    let (days, hours): (i64, i64) = match first.split_once('.') {
        Some((d, h)) => (d.parse().ok()?, h.parse().ok()?),
        None => (0, first.parse().ok()?),
    };
    let (whole, fraction) = match seconds_text.split_once('.') {
        Some((w, f)) => (w, f),
        None => (seconds_text, ""),
    };
    let seconds: i64 = whole.parse().ok()?;
    if !fraction.chars().all(|c| c.is_ascii_digit()) || fraction.len() > 9 {
        return None;
    }
    let nanos: i64 = if fraction.is_empty() {
        0
    } else {
        format!("{fraction:0<9}").parse().ok()?
    };
    if hours > 23 || minutes > 59 || seconds > 59 {
        return None;
    }
    let total = Duration::days(days)
        + Duration::hours(hours)
        + Duration::minutes(minutes)
        + Duration::seconds(seconds)
        + Duration::nanoseconds(nanos);
    Some(if negative { -total } else { total })
}

/// Formats a duration as Kusto timespan text (used for `servertimeout`).
pub fn format_timespan(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    if days > 0 {
        format!("{days}.{h:02}:{m:02}:{s:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timespans() {
        assert_eq!(parse_timespan("00:00:01"), Some(Duration::seconds(1)));
        assert_eq!(
            parse_timespan("1.02:03:04.5"),
            Some(
                Duration::days(1)
                    + Duration::hours(2)
                    + Duration::minutes(3)
                    + Duration::seconds(4)
                    + Duration::milliseconds(500)
            )
        );
        assert_eq!(parse_timespan("-00:01:00"), Some(-Duration::minutes(1)));
        assert_eq!(parse_timespan("nonsense"), None);
        assert_eq!(format_timespan(std::time::Duration::from_secs(600)), "00:10:00");
    }

    #[test]
    fn datetimes_round_trip() {
        let d = parse_datetime("2024-01-02T03:04:05.1234567Z").unwrap();
        assert_eq!(format_datetime(d), "2024-01-02T03:04:05.1234567Z");
        assert!(parse_datetime("2024-01-02T03:04:05").is_some());
    }
}
