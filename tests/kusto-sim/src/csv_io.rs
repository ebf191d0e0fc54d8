//! CSV files as Kusto's export writes them and its CSV ingestion reads them, strictly.
//!
//! What the documentation fixes, and what is chosen here where it is silent:
//! - Records are RFC 4180 ("Data formats supported for ingestion": CSV, see RFC 4180): fields
//!   holding `,` `"` CR or LF are quoted, `"` doubled; records end with CR LF. No header line
//!   (`includeHeaders` defaults to `none`, "Export data to storage").
//! - `compressed` writes `.gz` artifacts ("the output storage artifacts are compressed as
//!   `.gz` files"); ingestion knows a compressed blob by its `.gz` extension (supported
//!   formats page: compression is indicated by the blob name's extension). A `.gz` blob that
//!   is not gzip, or a gzip blob without the extension, fails here.
//! - Nulls: "a missing value produces an empty string" for `string` columns and CSV-like
//!   ingestion, a null for the other types (Null values page). Kusto strings are never null.
//! - Per type the export docs give no text forms, so the simulator writes the forms Kusto uses
//!   on the wire and in `tostring()`: datetime ISO 8601 UTC with 7 fraction digits (100 ns
//!   ticks, the type's documented precision), timespan `[-][d.]hh:mm:ss[.fffffff]`, guid
//!   hyphenated, dynamic as compact JSON (key order kept), decimal as its text, real as .NET's
//!   shortest round-trip form (`NaN`, `Infinity`, `-Infinity`, `-0`, `5E-324`,
//!   `1.7976931348623157E+308`). Ingestion accepts those forms and refuses anything else
//!   (a datetime with an 8th fraction digit, `1d` as a timespan, a guid without hyphens), so
//!   a value that would be mangled fails loudly instead.
//! - An ingestion mapping (`ingestionMapping`, CSV mapping page) maps each table column to a
//!   field `Ordinal`; columns it does not name get null (empty for strings). Without one,
//!   fields map to columns by position and the counts must agree.

use std::io::{Read, Write};

use crate::model::table::Column;
use crate::model::value::{format_timespan, offset_datetime_from_ticks, parse_datetime, parse_timespan, ScalarType, Value, TICKS_PER_SECOND};

/// Rows as one CSV text, with a header line of column names when `header`.
pub fn write_csv(columns: &[Column], rows: &[Vec<Value>], header: bool) -> String {
    let mut out = String::new();
    if header {
        let names: Vec<String> = columns.iter().map(|c| quote(&c.name, true)).collect();
        out.push_str(&names.join(","));
        out.push_str("\r\n");
    }
    for r in rows {
        let fields: Vec<String> = r.iter().map(field_text).collect();
        out.push_str(&fields.join(","));
        out.push_str("\r\n");
    }
    out
}

fn quote(text: &str, always_if_empty: bool) -> String {
    let needs = text.contains([',', '"', '\n', '\r']) || (always_if_empty && text.is_empty()) || text.trim() != text;
    if needs {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// One cell's CSV field: nulls are empty; an empty string is `""` so it reads as a string.
fn field_text(v: &Value) -> String {
    let text = match v {
        Value::Null => return String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Long(l) => l.to_string(),
        Value::Real(r) => dotnet_real(*r),
        Value::Decimal(d) => d.clone(),
        Value::String(s) => return quote(s, true),
        Value::DateTime(t) => datetime_text(*t),
        Value::Timespan(t) => format_timespan(*t),
        Value::Guid(g) => g.hyphenated().to_string(),
        Value::Dynamic(j) => j.to_string(),
    };
    quote(&text, false)
}

/// ISO 8601 UTC with all 7 fraction digits, as .NET's round-trip ("o") format writes it.
pub fn datetime_text(ticks: i64) -> String {
    let Some(t) = offset_datetime_from_ticks(ticks) else { return String::new() };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:07}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        ticks.rem_euclid(TICKS_PER_SECOND)
    )
}

/// A double as .NET (Core 3.0 and later) writes it: the shortest text that reads back to the
/// same bits, positional for decimal exponents -4..15, else `d.dddE+XX`.
pub fn dotnet_real(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0".into() } else { "0".into() };
    }
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("exponent");
    if (-4..15).contains(&exp) {
        format!("{x}")
    } else {
        format!("{mantissa}E{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    }
}

/// Gzip, as `compressed` export writes.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).expect("writing to memory");
    enc.finish().expect("writing to memory")
}

pub fn gunzip(data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data).read_to_end(&mut out).map_err(|e| format!("not a valid gzip stream: {e}"))?;
    Ok(out)
}

/// Whether a blob URL names a gzip-compressed artifact (by its extension, before any query).
pub fn is_gzip_name(url: &str) -> bool {
    let path = url.split(['?', ';']).next().unwrap_or(url);
    path.to_ascii_lowercase().ends_with(".gz")
}

/// For each target column, the CSV field it takes (`None`: not mapped). Parses a CSV
/// ingestion mapping: `[{"Column": "A", "Properties": {"Ordinal": "0"}}, ...]`.
pub fn parse_mapping(json: &str, target: &[Column]) -> Result<Vec<Option<usize>>, String> {
    let list: Vec<serde_json::Value> = serde_json::from_str(json).map_err(|e| format!("ingestionMapping is not a JSON array: {e}"))?;
    let mut out = vec![None; target.len()];
    for m in &list {
        let column = m.get("Column").and_then(|c| c.as_str()).ok_or_else(|| format!("mapping element {m} has no Column"))?;
        let ordinal = m.get("Properties").and_then(|p| p.get("Ordinal")).ok_or_else(|| format!("mapping of '{column}' has no Properties.Ordinal"))?;
        let ordinal: usize = match ordinal {
            serde_json::Value::String(s) => s.parse().map_err(|_| format!("Ordinal '{s}' of '{column}' is not a number"))?,
            serde_json::Value::Number(n) => n.as_u64().ok_or_else(|| format!("Ordinal {n} of '{column}' is not a number"))? as usize,
            other => return Err(format!("Ordinal {other} of '{column}' is not a number")),
        };
        let i = target.iter().position(|c| c.name == column).ok_or_else(|| format!("mapping names column '{column}', which the table does not have"))?;
        if out[i].is_some() {
            return Err(format!("mapping names column '{column}' twice"));
        }
        out[i] = Some(ordinal);
    }
    Ok(out)
}

/// Reads CSV text into rows of the target columns. Any field that is not in its column's
/// documented form fails the whole ingestion, naming the record and column.
pub fn read_csv(text: &str, target: &[Column], mapping: Option<&[Option<usize>]>) -> Result<Vec<Vec<Value>>, String> {
    let mut rows = Vec::new();
    for (n, record) in crate::commands::data::parse_csv(text).into_iter().enumerate() {
        let ordinals: Vec<Option<usize>> = match mapping {
            Some(m) => m.to_vec(),
            None => {
                if record.len() != target.len() {
                    return Err(format!("CSV record {} has {} fields, the table has {} columns", n + 1, record.len(), target.len()));
                }
                (0..target.len()).map(Some).collect()
            }
        };
        let row = target
            .iter()
            .zip(&ordinals)
            .map(|(c, o)| match o {
                None => Ok(if c.ty == ScalarType::String { Value::String(String::new()) } else { Value::Null }),
                Some(i) => {
                    let field = record.get(*i).ok_or_else(|| format!("CSV record {} has {} fields, the mapping reads field {i}", n + 1, record.len()))?;
                    parse_field(c.ty, field).map_err(|e| format!("CSV record {}, column '{}': {e}", n + 1, c.name))
                }
            })
            .collect::<Result<Vec<_>, String>>()?;
        rows.push(row);
    }
    Ok(rows)
}

/// One field in its column's documented text form; empty is null (empty for strings).
pub fn parse_field(ty: ScalarType, text: &str) -> Result<Value, String> {
    if ty == ScalarType::String {
        return Ok(Value::String(text.to_string()));
    }
    if text.is_empty() {
        return Ok(Value::Null);
    }
    let bad = |why: &str| format!("'{text}' is not a {ty}{why}");
    Ok(match ty {
        ScalarType::Bool => match text.to_ascii_lowercase().as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(bad("")),
        },
        ScalarType::Int => Value::Int(text.parse().map_err(|_| bad(""))?),
        ScalarType::Long => Value::Long(text.parse().map_err(|_| bad(""))?),
        ScalarType::Real => Value::Real(match text {
            "NaN" => f64::NAN,
            "Infinity" => f64::INFINITY,
            "-Infinity" => f64::NEG_INFINITY,
            t if is_number(t) => t.parse().map_err(|_| bad(""))?,
            _ => return Err(bad("")),
        }),
        ScalarType::Decimal => {
            if !is_number(text) {
                return Err(bad(""));
            }
            let mantissa = text.split(['e', 'E']).next().unwrap_or(text);
            let digits = mantissa.chars().filter(char::is_ascii_digit).collect::<String>();
            if digits.trim_start_matches('0').len() > 38 {
                return Err(bad(" (more than 38 significant digits: decimal is .NET's SqlDecimal)"));
            }
            Value::Decimal(text.to_string())
        }
        ScalarType::String => unreachable!("handled above"),
        ScalarType::DateTime => {
            if fraction_digits(text) > 7 {
                return Err(bad(" (more than 7 fraction digits: Kusto keeps 100 ns ticks)"));
            }
            let iso = text.len() >= 10 && text.as_bytes()[4] == b'-' && text.as_bytes()[7] == b'-';
            Value::DateTime(parse_datetime(text).filter(|_| iso).ok_or_else(|| bad(" (ISO 8601 expected)"))?)
        }
        ScalarType::Timespan => {
            if !is_dotnet_timespan(text) {
                return Err(bad(" ([-][d.]hh:mm:ss[.fffffff] expected)"));
            }
            Value::Timespan(parse_timespan(text).ok_or_else(|| bad(""))?)
        }
        ScalarType::Guid => {
            if text.len() != 36 {
                return Err(bad(" (a hyphenated guid expected)"));
            }
            Value::Guid(uuid::Uuid::try_parse(text).map_err(|_| bad(""))?)
        }
        ScalarType::Dynamic => Value::Dynamic(serde_json::from_str(text).map_err(|e| format!("'{text}' is not JSON: {e}"))?),
    })
}

/// `[-+]digits[.digits][e[-+]digits]` (or `.digits`): the numbers .NET writes.
fn is_number(t: &str) -> bool {
    let b = t.strip_prefix(['-', '+']).unwrap_or(t);
    let (mantissa, exp) = match b.find(['e', 'E']) {
        Some(i) => (&b[..i], Some(&b[i + 1..])),
        None => (b, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = |s: &str| s.bytes().all(|c| c.is_ascii_digit());
    let mantissa_ok = (!int.is_empty() || !frac.is_empty()) && digits(int) && digits(frac) && !(mantissa.ends_with('.') && frac.is_empty() && int.is_empty());
    let exp_ok = exp.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && digits(e)
    });
    mantissa_ok && exp_ok
}

fn fraction_digits(datetime: &str) -> usize {
    let Some(time_start) = datetime.find(['T', ' ']) else { return 0 };
    let time = &datetime[time_start..];
    match time.find('.') {
        Some(i) => time[i + 1..].bytes().take_while(u8::is_ascii_digit).count(),
        None => 0,
    }
}

/// `[-][d.]hh:mm:ss[.f...]` with at most 7 fraction digits (.NET's constant "c" format).
fn is_dotnet_timespan(t: &str) -> bool {
    let body = t.strip_prefix('-').unwrap_or(t);
    let (clock, frac) = match body.rsplit_once('.') {
        Some((c, f)) if c.contains(':') && !f.contains(':') => (c, Some(f)),
        _ => (body, None),
    };
    if frac.is_some_and(|f| f.is_empty() || f.len() > 7 || !f.bytes().all(|c| c.is_ascii_digit())) {
        return false;
    }
    let (days, hms) = match clock.split_once('.') {
        Some((d, rest)) => (Some(d), rest),
        None => (None, clock),
    };
    if days.is_some_and(|d| d.is_empty() || !d.bytes().all(|c| c.is_ascii_digit())) {
        return false;
    }
    let parts: Vec<&str> = hms.split(':').collect();
    let limits = [24u32, 60, 60];
    parts.len() == 3
        && parts.iter().zip(limits).all(|(p, limit)| p.len() == 2 && p.bytes().all(|c| c.is_ascii_digit()) && p.parse::<u32>().is_ok_and(|v| v < limit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::value::{parse_datetime, TICKS_PER_DAY};

    fn cols() -> Vec<Column> {
        ScalarType::ALL.iter().map(|t| Column::new(t.kql_name(), *t)).collect()
    }

    #[test]
    fn reals_are_written_as_dotnet_writes_them_and_read_back_bit_for_bit() {
        let table = [
            (f64::NAN, "NaN"),
            (f64::INFINITY, "Infinity"),
            (f64::NEG_INFINITY, "-Infinity"),
            (-0.0, "-0"),
            (0.0, "0"),
            (5e-324, "5E-324"),
            (f64::MAX, "1.7976931348623157E+308"),
            (1e15, "1E+15"),
            (123456789012345.0, "123456789012345"),
            (0.0001, "0.0001"),
            (0.00001, "1E-05"),
            (-2.5, "-2.5"),
        ];
        for (x, text) in table {
            assert_eq!(dotnet_real(x), text);
            let Value::Real(back) = parse_field(ScalarType::Real, text).unwrap() else { panic!() };
            assert_eq!(back.to_bits(), x.to_bits(), "{text}");
        }
        for bad in ["inf", "nan", "∞", "1,5", "0x10", "1e", ""] {
            assert!(bad.is_empty() || parse_field(ScalarType::Real, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn datetimes_keep_every_tick_from_the_first_to_the_last_day() {
        let min = parse_datetime("0001-01-01T00:00:00Z").unwrap();
        let max = parse_datetime("9999-12-31T23:59:59.9999999Z").unwrap();
        for t in [min, max, parse_datetime("2024-02-29T12:34:56.1234567Z").unwrap()] {
            let text = datetime_text(t);
            assert_eq!(parse_field(ScalarType::DateTime, &text).unwrap(), Value::DateTime(t), "{text}");
        }
        assert_eq!(datetime_text(max), "9999-12-31T23:59:59.9999999Z");
        assert!(parse_field(ScalarType::DateTime, "2024-01-01T00:00:00.12345678Z").is_err(), "an 8th digit would be lost");
        assert!(parse_field(ScalarType::DateTime, "yesterday").is_err());
    }

    #[test]
    fn timespans_only_in_the_constant_format() {
        let t = -(3 * TICKS_PER_DAY + 4 * 3600 * TICKS_PER_SECOND + 1_234_567);
        let text = format_timespan(t);
        assert_eq!(text, "-3.04:00:00.1234567");
        assert_eq!(parse_field(ScalarType::Timespan, &text).unwrap(), Value::Timespan(t));
        for bad in ["1d", "25:00:00", "00:00:00.12345678", "1:2:3", "00:00"] {
            assert!(parse_field(ScalarType::Timespan, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_row_of_every_type_round_trips_and_nulls_stay_null() {
        let cols = cols();
        let rows = vec![
            vec![
                Value::Bool(true),
                Value::Int(-7),
                Value::Long(i64::MIN),
                Value::Real(-0.0),
                Value::Decimal("12345678901234567890.1234567890123456".into()),
                Value::String("a \"quoted\", comma\r\nline\u{2028}😀".into()),
                Value::DateTime(1),
                Value::Timespan(-1),
                Value::Guid(uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef)),
                Value::Dynamic(serde_json::from_str(r#"{"z":9007199254740993,"a":[[],{}]}"#).unwrap()),
            ],
            vec![Value::Null, Value::Null, Value::Null, Value::Null, Value::Null, Value::String(String::new()), Value::Null, Value::Null, Value::Null, Value::Null],
        ];
        let text = write_csv(&cols, &rows, false);
        let back = read_csv(&text, &cols, None).unwrap();
        assert_eq!(back[1], rows[1]);
        assert_eq!(format!("{:?}", back[0]), format!("{:?}", rows[0]), "bits, text and key order kept");
        let gz = gzip(text.as_bytes());
        assert_eq!(gunzip(&gz).unwrap(), text.as_bytes());
        assert!(gunzip(text.as_bytes()).is_err());
    }

    #[test]
    fn a_mapping_reads_fields_by_ordinal_and_leaves_the_rest_empty() {
        let cols = vec![Column::new("a", ScalarType::Long), Column::new("extra", ScalarType::String), Column::new("b", ScalarType::Long)];
        let m = parse_mapping(r#"[{"Column":"b","Properties":{"Ordinal":"0"}},{"Column":"a","Properties":{"Ordinal":1}}]"#, &cols).unwrap();
        assert_eq!(m, vec![Some(1), None, Some(0)]);
        let rows = read_csv("1,2\r\n", &cols, Some(&m)).unwrap();
        assert_eq!(rows, vec![vec![Value::Long(2), Value::String(String::new()), Value::Long(1)]]);
        assert!(parse_mapping(r#"[{"Column":"nope","Properties":{"Ordinal":"0"}}]"#, &cols).is_err());
        assert!(read_csv("1\r\n", &cols, Some(&m)).is_err(), "a field the mapping needs is missing");
        assert!(read_csv("1,2\r\n", &cols, None).is_err(), "by position the counts must agree");
    }
}
