//! Kusto scalar types and values, with the text forms Kusto uses on the wire.
//!
//! Datetimes and timespans are kept as 100-nanosecond ticks (Kusto's own precision) so that
//! nothing is lost between a seed, a query, an export and an ingestion.

use std::cmp::Ordering;
use std::fmt;

use time::{Date, Month, OffsetDateTime};
use uuid::Uuid;

/// Ticks (100 ns) per unit, as Kusto counts them.
pub const TICKS_PER_MICRO: i64 = 10;
pub const TICKS_PER_MILLI: i64 = 10_000;
pub const TICKS_PER_SECOND: i64 = 10_000_000;
pub const TICKS_PER_MINUTE: i64 = 60 * TICKS_PER_SECOND;
pub const TICKS_PER_HOUR: i64 = 60 * TICKS_PER_MINUTE;
pub const TICKS_PER_DAY: i64 = 24 * TICKS_PER_HOUR;

/// The scalar types of Kusto. Names follow the KQL spelling (`ColumnType` in v2 answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScalarType {
    Bool,
    Int,
    Long,
    Real,
    Decimal,
    String,
    DateTime,
    Timespan,
    Guid,
    Dynamic,
}

impl ScalarType {
    pub const ALL: [ScalarType; 10] = [
        ScalarType::Bool,
        ScalarType::Int,
        ScalarType::Long,
        ScalarType::Real,
        ScalarType::Decimal,
        ScalarType::String,
        ScalarType::DateTime,
        ScalarType::Timespan,
        ScalarType::Guid,
        ScalarType::Dynamic,
    ];

    /// The KQL name (`ColumnType` in v2, `CslType` in schemas).
    pub fn kql_name(self) -> &'static str {
        match self {
            ScalarType::Bool => "bool",
            ScalarType::Int => "int",
            ScalarType::Long => "long",
            ScalarType::Real => "real",
            ScalarType::Decimal => "decimal",
            ScalarType::String => "string",
            ScalarType::DateTime => "datetime",
            ScalarType::Timespan => "timespan",
            ScalarType::Guid => "guid",
            ScalarType::Dynamic => "dynamic",
        }
    }

    /// The .NET type name used by the v1 format's `DataType` column attribute.
    pub fn clr_name(self) -> &'static str {
        match self {
            ScalarType::Bool => "Boolean",
            ScalarType::Int => "Int32",
            ScalarType::Long => "Int64",
            ScalarType::Real => "Double",
            ScalarType::Decimal => "Decimal",
            ScalarType::String => "String",
            ScalarType::DateTime => "DateTime",
            ScalarType::Timespan => "TimeSpan",
            ScalarType::Guid => "Guid",
            ScalarType::Dynamic => "Object",
        }
    }

    /// Parses a type name as KQL accepts it in schemas and casts (aliases included).
    pub fn parse(name: &str) -> Option<ScalarType> {
        Some(match name.to_ascii_lowercase().as_str() {
            "bool" | "boolean" => ScalarType::Bool,
            "int" | "int32" => ScalarType::Int,
            "long" | "int64" => ScalarType::Long,
            "real" | "double" => ScalarType::Real,
            "decimal" => ScalarType::Decimal,
            "string" => ScalarType::String,
            "datetime" | "date" => ScalarType::DateTime,
            "timespan" | "time" => ScalarType::Timespan,
            "guid" | "uniqueid" => ScalarType::Guid,
            "dynamic" => ScalarType::Dynamic,
            _ => return None,
        })
    }

    pub fn is_numeric(self) -> bool {
        matches!(self, ScalarType::Int | ScalarType::Long | ScalarType::Real | ScalarType::Decimal)
    }
}

impl fmt::Display for ScalarType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kql_name())
    }
}

/// One Kusto value. `Null` is typeless here: the column (or expression) carries the type.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i32),
    Long(i64),
    Real(f64),
    /// Kept as its canonical text: the simulator compares decimals numerically but never does
    /// decimal arithmetic (a documented limit).
    Decimal(String),
    String(String),
    DateTime(i64),
    Timespan(i64),
    Guid(Uuid),
    Dynamic(serde_json::Value),
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The type a non-null value has by itself.
    pub fn scalar_type(&self) -> Option<ScalarType> {
        Some(match self {
            Value::Null => return None,
            Value::Bool(_) => ScalarType::Bool,
            Value::Int(_) => ScalarType::Int,
            Value::Long(_) => ScalarType::Long,
            Value::Real(_) => ScalarType::Real,
            Value::Decimal(_) => ScalarType::Decimal,
            Value::String(_) => ScalarType::String,
            Value::DateTime(_) => ScalarType::DateTime,
            Value::Timespan(_) => ScalarType::Timespan,
            Value::Guid(_) => ScalarType::Guid,
            Value::Dynamic(_) => ScalarType::Dynamic,
        })
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(v) => Some(*v as f64),
            Value::Long(v) => Some(*v as f64),
            Value::Real(v) => Some(*v),
            Value::Decimal(v) => v.parse().ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(v) => Some(*v as i64),
            Value::Long(v) => Some(*v),
            _ => None,
        }
    }

    /// The JSON form used in v1 and v2 rows: datetimes, timespans, guids and decimals are
    /// strings; dynamic values are nested JSON.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(v) => J::from(*v),
            Value::Long(v) => J::from(*v),
            Value::Real(v) => {
                // JSON has no NaN/Infinity; Kusto writes them as strings.
                if v.is_finite() {
                    serde_json::Number::from_f64(*v).map(J::Number).unwrap_or(J::Null)
                } else if v.is_nan() {
                    J::String("NaN".into())
                } else if *v > 0.0 {
                    J::String("Infinity".into())
                } else {
                    J::String("-Infinity".into())
                }
            }
            Value::Decimal(s) => J::String(s.clone()),
            Value::String(s) => J::String(s.clone()),
            Value::DateTime(t) => J::String(format_datetime(*t)),
            Value::Timespan(t) => J::String(format_timespan(*t)),
            Value::Guid(g) => J::String(g.to_string()),
            Value::Dynamic(d) => d.clone(),
        }
    }

    /// Reads a JSON cell back as a value of the given column type (used by `.ingest` of JSON
    /// and by tests). Fails like Kusto would on a value that does not fit the type.
    pub fn from_json(ty: ScalarType, json: &serde_json::Value) -> Result<Value, String> {
        use serde_json::Value as J;
        if json.is_null() {
            return Ok(Value::Null);
        }
        match (ty, json) {
            (ScalarType::Dynamic, j) => Ok(Value::Dynamic(j.clone())),
            (ScalarType::Bool, J::Bool(b)) => Ok(Value::Bool(*b)),
            (ScalarType::Int, J::Number(n)) => n
                .as_i64()
                .and_then(|v| i32::try_from(v).ok())
                .map(Value::Int)
                .ok_or_else(|| format!("'{n}' is not an int")),
            (ScalarType::Long, J::Number(n)) => {
                n.as_i64().map(Value::Long).ok_or_else(|| format!("'{n}' is not a long"))
            }
            (ScalarType::Real, J::Number(n)) => Ok(Value::Real(n.as_f64().unwrap_or(f64::NAN))),
            (ScalarType::Decimal, J::Number(n)) => Ok(Value::Decimal(n.to_string())),
            (_, J::String(s)) => parse_text(ty, s),
            (ty, other) => Err(format!("value {other} does not fit type {ty}")),
        }
    }
}

/// Parses the text form of a value (CSV cells, literals in casts, JSON strings).
/// An empty string is null for every type but string, as in Kusto's CSV ingestion.
pub fn parse_text(ty: ScalarType, text: &str) -> Result<Value, String> {
    if ty == ScalarType::String {
        return Ok(Value::String(text.to_string()));
    }
    let t = text.trim();
    if t.is_empty() || t.eq_ignore_ascii_case("null") {
        return Ok(Value::Null);
    }
    let bad = || format!("'{t}' is not a valid {ty}");
    Ok(match ty {
        ScalarType::Bool => match t.to_ascii_lowercase().as_str() {
            "true" | "1" => Value::Bool(true),
            "false" | "0" => Value::Bool(false),
            _ => return Err(bad()),
        },
        ScalarType::Int => Value::Int(t.parse().map_err(|_| bad())?),
        ScalarType::Long => Value::Long(t.parse().map_err(|_| bad())?),
        ScalarType::Real => Value::Real(match t {
            "NaN" => f64::NAN,
            "Infinity" | "+Infinity" => f64::INFINITY,
            "-Infinity" => f64::NEG_INFINITY,
            _ => t.parse().map_err(|_| bad())?,
        }),
        ScalarType::Decimal => {
            t.parse::<f64>().map_err(|_| bad())?;
            Value::Decimal(t.to_string())
        }
        ScalarType::String => unreachable!("handled above"),
        ScalarType::DateTime => Value::DateTime(parse_datetime(t).ok_or_else(bad)?),
        ScalarType::Timespan => Value::Timespan(parse_timespan(t).ok_or_else(bad)?),
        ScalarType::Guid => Value::Guid(Uuid::parse_str(t).map_err(|_| bad())?),
        ScalarType::Dynamic => {
            Value::Dynamic(serde_json::from_str(t).unwrap_or_else(|_| serde_json::Value::String(t.to_string())))
        }
    })
}

/// Total order used by `order by`, `min`, `max` and comparisons between values of one type.
/// Nulls sort first; numbers compare across int/long/real/decimal.
pub fn compare(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Null, _) => Ordering::Less,
        (_, Value::Null) => Ordering::Greater,
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Int(x), Value::Int(y)) => x.cmp(y),
        (Value::Long(x), Value::Long(y)) => x.cmp(y),
        (Value::Int(x), Value::Long(y)) => (*x as i64).cmp(y),
        (Value::Long(x), Value::Int(y)) => x.cmp(&(*y as i64)),
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::DateTime(x), Value::DateTime(y)) => x.cmp(y),
        (Value::Timespan(x), Value::Timespan(y)) => x.cmp(y),
        (Value::Guid(x), Value::Guid(y)) => x.cmp(y),
        (Value::Dynamic(x), Value::Dynamic(y)) => x.to_string().cmp(&y.to_string()),
        (x, y) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
            _ => type_rank(x).cmp(&type_rank(y)),
        },
    }
}

fn type_rank(v: &Value) -> u8 {
    v.scalar_type().map(|t| t as u8).unwrap_or(0)
}

/// Ticks since the Unix epoch for a calendar instant.
pub fn ticks_from_parts(year: i32, month: u8, day: u8, h: u8, m: u8, s: u8, frac_ticks: i64) -> Option<i64> {
    let date = Date::from_calendar_date(year, Month::try_from(month).ok()?, day).ok()?;
    if h > 23 || m > 59 || s > 59 {
        return None;
    }
    let days = date.to_julian_day() as i64 - Date::from_calendar_date(1970, Month::January, 1).ok()?.to_julian_day() as i64;
    Some(days * TICKS_PER_DAY + h as i64 * TICKS_PER_HOUR + m as i64 * TICKS_PER_MINUTE + s as i64 * TICKS_PER_SECOND + frac_ticks)
}

pub fn ticks_from_offset_datetime(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 100) as i64
}

pub fn offset_datetime_from_ticks(ticks: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(ticks as i128 * 100).ok()
}

/// Parses the datetime forms Kusto accepts: `2024-01-02`, `2024-01-02 03:04`,
/// `2024-01-02T03:04:05.1234567Z`, with an optional `Z` or `+hh:mm` offset.
pub fn parse_datetime(text: &str) -> Option<i64> {
    let t = text.trim();
    let b = t.as_bytes();
    let num = |s: &str| -> Option<i64> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let year = num(&t[0..4])? as i32;
    let month = num(&t[5..7])? as u8;
    let day = num(&t[8..10])? as u8;
    let mut rest = &t[10..];
    let (mut h, mut mi, mut s, mut frac) = (0u8, 0u8, 0u8, 0i64);
    let mut offset_ticks = 0i64;
    if !rest.is_empty() {
        let sep = rest.as_bytes()[0];
        if sep != b'T' && sep != b' ' {
            return None;
        }
        rest = &rest[1..];
        // Split off a zone suffix.
        let (clock, zone) = match rest.find(['Z', 'z', '+']).or_else(|| rest.rfind('-')) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let mut parts = clock.split(':');
        h = num(parts.next()?)? as u8;
        mi = num(parts.next()?)? as u8;
        if let Some(sec) = parts.next() {
            let (whole, fraction) = match sec.split_once('.') {
                Some((w, f)) => (w, Some(f)),
                None => (sec, None),
            };
            s = num(whole)? as u8;
            if let Some(f) = fraction {
                if f.is_empty() || !f.bytes().all(|c| c.is_ascii_digit()) {
                    return None;
                }
                let mut digits: String = f.chars().take(7).collect();
                while digits.len() < 7 {
                    digits.push('0');
                }
                frac = digits.parse().ok()?;
            }
        }
        if parts.next().is_some() {
            return None;
        }
        if !zone.is_empty() && !zone.eq_ignore_ascii_case("z") {
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            let (oh, om) = zone[1..].split_once(':')?;
            offset_ticks = sign * (num(oh)? * TICKS_PER_HOUR + num(om)? * TICKS_PER_MINUTE);
        }
    }
    Some(ticks_from_parts(year, month, day, h, mi, s, frac)? - offset_ticks)
}

/// Formats like Kusto's JSON output: `2024-01-02T03:04:05Z`, or with 7 fraction digits.
pub fn format_datetime(ticks: i64) -> String {
    let Some(t) = offset_datetime_from_ticks(ticks) else {
        return String::new();
    };
    let frac = ticks.rem_euclid(TICKS_PER_SECOND);
    let base = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    if frac == 0 {
        format!("{base}Z")
    } else {
        format!("{base}.{frac:07}Z")
    }
}

/// Formats a timespan as .NET does (`[-][d.]hh:mm:ss[.fffffff]`), which Kusto uses on the wire.
pub fn format_timespan(ticks: i64) -> String {
    let sign = if ticks < 0 { "-" } else { "" };
    let t = ticks.unsigned_abs();
    let day = TICKS_PER_DAY as u64;
    let days = t / day;
    let rem = t % day;
    let h = rem / TICKS_PER_HOUR as u64;
    let m = (rem % TICKS_PER_HOUR as u64) / TICKS_PER_MINUTE as u64;
    let s = (rem % TICKS_PER_MINUTE as u64) / TICKS_PER_SECOND as u64;
    let frac = rem % TICKS_PER_SECOND as u64;
    let mut out = String::from(sign);
    if days > 0 {
        out.push_str(&format!("{days}."));
    }
    out.push_str(&format!("{h:02}:{m:02}:{s:02}"));
    if frac > 0 {
        out.push_str(&format!(".{frac:07}"));
    }
    out
}

/// Parses `[-][d.]hh:mm[:ss[.fffffff]]` or a KQL timespan literal such as `1d`, `2h`, `30m`,
/// `10s`, `100ms`, `5microseconds`, `3ticks`, `1.5h`.
pub fn parse_timespan(text: &str) -> Option<i64> {
    let t = text.trim();
    if t.contains(':') {
        let (neg, body) = match t.strip_prefix('-') {
            Some(b) => (true, b),
            None => (false, t),
        };
        let mut fields: Vec<&str> = body.split(':').collect();
        if fields.len() < 2 || fields.len() > 3 {
            return None;
        }
        let (days, hours) = match fields[0].split_once('.') {
            Some((d, h)) => (d.parse::<i64>().ok()?, h.parse::<i64>().ok()?),
            None => (0, fields[0].parse::<i64>().ok()?),
        };
        let minutes: i64 = fields[1].parse().ok()?;
        let mut total = days * TICKS_PER_DAY + hours * TICKS_PER_HOUR + minutes * TICKS_PER_MINUTE;
        if fields.len() == 3 {
            let sec = fields.pop()?;
            let (whole, frac) = match sec.split_once('.') {
                Some((w, f)) => (w, f),
                None => (sec, ""),
            };
            total += whole.parse::<i64>().ok()? * TICKS_PER_SECOND;
            if !frac.is_empty() {
                let mut digits: String = frac.chars().take(7).collect();
                while digits.len() < 7 {
                    digits.push('0');
                }
                total += digits.parse::<i64>().ok()?;
            }
        }
        return Some(if neg { -total } else { total });
    }
    let split = t.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = t.split_at(split);
    let n: f64 = number.parse().ok()?;
    let per = timespan_unit_ticks(unit)?;
    Some((n * per as f64).round() as i64)
}

/// Ticks per unit for KQL timespan literal suffixes.
pub fn timespan_unit_ticks(unit: &str) -> Option<i64> {
    Some(match unit.to_ascii_lowercase().as_str() {
        "d" | "day" | "days" => TICKS_PER_DAY,
        "h" | "hr" | "hrs" | "hour" | "hours" => TICKS_PER_HOUR,
        "m" | "min" | "minute" | "minutes" => TICKS_PER_MINUTE,
        "s" | "sec" | "second" | "seconds" => TICKS_PER_SECOND,
        "ms" | "milli" | "millis" | "millisecond" | "milliseconds" => TICKS_PER_MILLI,
        "microsecond" | "microseconds" => TICKS_PER_MICRO,
        "tick" | "ticks" => 1,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetime_text_round_trips_with_full_precision() {
        let t = parse_datetime("2024-03-05T06:07:08.1234567Z").unwrap();
        assert_eq!(format_datetime(t), "2024-03-05T06:07:08.1234567Z");
        assert_eq!(format_datetime(parse_datetime("2024-03-05").unwrap()), "2024-03-05T00:00:00Z");
        assert_eq!(parse_datetime("1970-01-01 00:00:01"), Some(TICKS_PER_SECOND));
        assert_eq!(parse_datetime("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_datetime("1969-12-31T23:59:59Z"), Some(-TICKS_PER_SECOND));
        assert_eq!(parse_datetime("2024-13-01"), None);
        assert_eq!(parse_datetime("yesterday"), None);
    }

    #[test]
    fn timespan_forms_parse_and_format_like_dotnet() {
        assert_eq!(parse_timespan("1d"), Some(TICKS_PER_DAY));
        assert_eq!(parse_timespan("1.5h"), Some(90 * TICKS_PER_MINUTE));
        assert_eq!(parse_timespan("100ms"), Some(100 * TICKS_PER_MILLI));
        assert_eq!(parse_timespan("1.02:03:04.5"), Some(TICKS_PER_DAY + 2 * TICKS_PER_HOUR + 3 * TICKS_PER_MINUTE + 4 * TICKS_PER_SECOND + 5_000_000));
        assert_eq!(format_timespan(TICKS_PER_DAY + TICKS_PER_SECOND + 1), "1.00:00:01.0000001");
        assert_eq!(format_timespan(-30 * TICKS_PER_MINUTE), "-00:30:00");
        assert_eq!(parse_timespan(&format_timespan(-123_456_789_012)), Some(-123_456_789_012));
    }

    #[test]
    fn json_cells_read_back_to_the_same_value() {
        let values = [
            (ScalarType::Bool, Value::Bool(true)),
            (ScalarType::Int, Value::Int(-7)),
            (ScalarType::Long, Value::Long(1 << 40)),
            (ScalarType::Real, Value::Real(2.5)),
            (ScalarType::Decimal, Value::Decimal("1.25".into())),
            (ScalarType::String, Value::String("x".into())),
            (ScalarType::DateTime, Value::DateTime(123_456_789)),
            (ScalarType::Timespan, Value::Timespan(-5)),
            (ScalarType::Guid, Value::Guid(Uuid::nil())),
            (ScalarType::Dynamic, Value::Dynamic(serde_json::json!({"a": [1, null]}))),
        ];
        for (ty, v) in values {
            assert_eq!(Value::from_json(ty, &v.to_json()).unwrap(), v, "{ty}");
        }
        assert!(Value::from_json(ScalarType::Int, &serde_json::json!(1u64 << 40)).is_err());
    }

    #[test]
    fn numbers_compare_across_types_and_nulls_sort_first() {
        assert_eq!(compare(&Value::Int(2), &Value::Real(1.5)), Ordering::Greater);
        assert_eq!(compare(&Value::Null, &Value::Long(0)), Ordering::Less);
    }
}
