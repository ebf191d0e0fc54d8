//! Parquet files as Kusto writes and reads them.
//!
//! Export follows the documented mapping ("Data types mapping", native writer):
//! bool→BOOLEAN, int→INT32, long→INT64, real→DOUBLE, string/guid/dynamic→BYTE_ARRAY UTF8
//! (dynamic as JSON text), datetime→INT64 TIMESTAMP (micro- or milliseconds, UTC),
//! timespan→INT64 ticks, decimal→FIXED_LEN_BYTE_ARRAY DECIMAL(38, 18).
//!
//! Ingestion follows the documented "Parquet type conversions" table: a Parquet type that the
//! table does not allow for the target column fails the ingestion. That table allows no
//! Parquet type into `timespan`, and only UUID into `guid`, so by the documentation a Parquet
//! round trip of timespan and guid columns fails, as the documentation says it would (there
//! is no lenient mode: a test that needs those types copies them as CSV, see `csv_io`).

use std::sync::Arc;

use parquet::basic::{ConvertedType, LogicalType, Repetition, TimeUnit, Type as PhysicalType};
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, DoubleType, FixedLenByteArray, FixedLenByteArrayType, Int32Type, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::FileReader;
use parquet::file::serialized_reader::SerializedFileReader;
use parquet::file::writer::SerializedFileWriter;
use parquet::record::Field;
use parquet::schema::types::Type;
use uuid::Uuid;

use crate::model::table::Column;
use crate::model::value::{ScalarType, Value, TICKS_PER_MICRO, TICKS_PER_MILLI};

const DECIMAL_SCALE: u32 = 18;
const DECIMAL_PRECISION: i32 = 38;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatetimePrecision {
    Millisecond,
    Microsecond,
}

impl DatetimePrecision {
    pub fn parse(text: &str) -> Option<DatetimePrecision> {
        match text.to_ascii_lowercase().as_str() {
            "millisecond" | "milliseconds" | "ms" => Some(DatetimePrecision::Millisecond),
            "microsecond" | "microseconds" | "us" => Some(DatetimePrecision::Microsecond),
            _ => None,
        }
    }

    fn ticks(self) -> i64 {
        match self {
            DatetimePrecision::Millisecond => TICKS_PER_MILLI,
            DatetimePrecision::Microsecond => TICKS_PER_MICRO,
        }
    }
}

fn field_type(c: &Column, precision: DatetimePrecision) -> Result<Type, String> {
    let utf8 = |name: &str| {
        Type::primitive_type_builder(name, PhysicalType::BYTE_ARRAY)
            .with_repetition(Repetition::OPTIONAL)
            .with_converted_type(ConvertedType::UTF8)
            .with_logical_type(Some(LogicalType::String))
            .build()
    };
    let plain = |name: &str, t: PhysicalType| Type::primitive_type_builder(name, t).with_repetition(Repetition::OPTIONAL).build();
    let built = match c.ty {
        ScalarType::Bool => plain(&c.name, PhysicalType::BOOLEAN),
        ScalarType::Int => plain(&c.name, PhysicalType::INT32),
        ScalarType::Long | ScalarType::Timespan => plain(&c.name, PhysicalType::INT64),
        ScalarType::Real => plain(&c.name, PhysicalType::DOUBLE),
        ScalarType::String | ScalarType::Guid | ScalarType::Dynamic => utf8(&c.name),
        ScalarType::DateTime => {
            let (unit, converted) = match precision {
                DatetimePrecision::Millisecond => (TimeUnit::MILLIS, ConvertedType::TIMESTAMP_MILLIS),
                DatetimePrecision::Microsecond => (TimeUnit::MICROS, ConvertedType::TIMESTAMP_MICROS),
            };
            Type::primitive_type_builder(&c.name, PhysicalType::INT64)
                .with_repetition(Repetition::OPTIONAL)
                .with_converted_type(converted)
                .with_logical_type(Some(LogicalType::timestamp(true, unit)))
                .build()
        }
        ScalarType::Decimal => Type::primitive_type_builder(&c.name, PhysicalType::FIXED_LEN_BYTE_ARRAY)
            .with_repetition(Repetition::OPTIONAL)
            .with_length(16)
            .with_precision(DECIMAL_PRECISION)
            .with_scale(DECIMAL_SCALE as i32)
            .with_converted_type(ConvertedType::DECIMAL)
            .with_logical_type(Some(LogicalType::decimal(DECIMAL_SCALE as i32, DECIMAL_PRECISION)))
            .build(),
    };
    built.map_err(|e| format!("column '{}': {e}", c.name))
}

/// Decimal text to the 16-byte big-endian two's complement of value × 10^18.
fn decimal_bytes(text: &str) -> Result<[u8; 16], String> {
    let t = text.trim();
    let (neg, body) = match t.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if frac.len() > DECIMAL_SCALE as usize || !int.chars().chain(frac.chars()).all(|c| c.is_ascii_digit()) {
        return Err(format!("decimal '{t}' does not fit DECIMAL({DECIMAL_PRECISION}, {DECIMAL_SCALE})"));
    }
    let digits = format!("{}{:0<width$}", if int.is_empty() { "0" } else { int }, frac, width = DECIMAL_SCALE as usize);
    let v: i128 = digits.parse().map_err(|_| format!("decimal '{t}' is out of range"))?;
    Ok((if neg { -v } else { v }).to_be_bytes())
}

/// Unscaled big-endian two's complement bytes and a scale back to canonical decimal text.
fn decimal_text(bytes: &[u8], scale: i32) -> String {
    let mut buf = [if bytes.first().is_some_and(|b| b & 0x80 != 0) { 0xFF } else { 0 }; 16];
    let n = bytes.len().min(16);
    buf[16 - n..].copy_from_slice(&bytes[bytes.len() - n..]);
    let v = i128::from_be_bytes(buf);
    let neg = v < 0;
    let digits = v.unsigned_abs().to_string();
    let scale = scale.max(0) as usize;
    let (int, frac) = if digits.len() > scale {
        (digits[..digits.len() - scale].to_string(), digits[digits.len() - scale..].to_string())
    } else {
        ("0".to_string(), format!("{digits:0>scale$}"))
    };
    let frac = frac.trim_end_matches('0');
    let sign = if neg { "-" } else { "" };
    if frac.is_empty() {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    }
}

/// Canonical decimal text (no trailing fraction zeros), so values compare after a round trip.
pub fn canonical_decimal(text: &str) -> String {
    match decimal_bytes(text) {
        Ok(b) => decimal_text(&b, DECIMAL_SCALE as i32),
        Err(_) => text.to_string(),
    }
}

/// Writes rows as one Parquet file (snappy), `row_group_size` rows per row group.
pub fn write_parquet(columns: &[Column], rows: &[Vec<Value>], precision: DatetimePrecision, row_group_size: usize) -> Result<Vec<u8>, String> {
    let fields = columns.iter().map(|c| field_type(c, precision).map(Arc::new)).collect::<Result<Vec<_>, _>>()?;
    let schema = Arc::new(Type::group_type_builder("schema").with_fields(fields).build().map_err(|e| e.to_string())?);
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(parquet::basic::Compression::SNAPPY)
            .set_created_by("kusto-sim".into())
            .build(),
    );
    let mut writer = SerializedFileWriter::new(Vec::new(), schema, props).map_err(|e| e.to_string())?;
    let chunks: Vec<&[Vec<Value>]> = if rows.is_empty() { vec![rows] } else { rows.chunks(row_group_size.max(1)).collect() };
    for chunk in chunks {
        let mut rg = writer.next_row_group().map_err(|e| e.to_string())?;
        let mut index = 0;
        while let Some(mut col) = rg.next_column().map_err(|e| e.to_string())? {
            let c = &columns[index];
            let cells: Vec<&Value> = chunk.iter().map(|r| &r[index]).collect();
            let defs: Vec<i16> = cells.iter().map(|v| i16::from(!v.is_null())).collect();
            let present = cells.iter().filter(|v| !v.is_null());
            let result = match c.ty {
                ScalarType::Bool => {
                    let vals: Vec<bool> = present.map(|v| matches!(v, Value::Bool(true))).collect();
                    col.typed::<BoolType>().write_batch(&vals, Some(&defs), None)
                }
                ScalarType::Int => {
                    let vals: Vec<i32> = present.map(|v| if let Value::Int(i) = v { *i } else { 0 }).collect();
                    col.typed::<Int32Type>().write_batch(&vals, Some(&defs), None)
                }
                ScalarType::Long | ScalarType::Timespan | ScalarType::DateTime => {
                    let vals: Vec<i64> = present
                        .map(|v| match v {
                            Value::Long(x) | Value::Timespan(x) => *x,
                            Value::DateTime(t) => t.div_euclid(precision.ticks()),
                            _ => 0,
                        })
                        .collect();
                    col.typed::<Int64Type>().write_batch(&vals, Some(&defs), None)
                }
                ScalarType::Real => {
                    let vals: Vec<f64> = present.map(|v| v.as_f64().unwrap_or(f64::NAN)).collect();
                    col.typed::<DoubleType>().write_batch(&vals, Some(&defs), None)
                }
                ScalarType::String | ScalarType::Guid | ScalarType::Dynamic => {
                    let vals: Vec<ByteArray> = present
                        .map(|v| {
                            let text = match v {
                                Value::Dynamic(d) => d.to_string(),
                                other => crate::kql::functions::to_text(other),
                            };
                            ByteArray::from(text.into_bytes())
                        })
                        .collect();
                    col.typed::<ByteArrayType>().write_batch(&vals, Some(&defs), None)
                }
                ScalarType::Decimal => {
                    let vals = present
                        .map(|v| match v {
                            Value::Decimal(s) => decimal_bytes(s).map(|b| FixedLenByteArray::from(b.to_vec())),
                            other => Err(format!("not a decimal: {other:?}")),
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    col.typed::<FixedLenByteArrayType>().write_batch(&vals, Some(&defs), None)
                }
            };
            result.map_err(|e| format!("column '{}': {e}", c.name))?;
            col.close().map_err(|e| e.to_string())?;
            index += 1;
        }
        rg.close().map_err(|e| e.to_string())?;
    }
    writer.into_inner().map_err(|e| e.to_string())
}

/// What a Parquet field is, for the conversion table.
#[derive(Debug, Clone, Copy, PartialEq)]
enum SourceKind {
    Integer,
    Float,
    Boolean,
    Decimal,
    Timestamp,
    Date,
    Text,
    Json,
    Uuid,
    Other,
}

fn source_kind(t: &Type) -> SourceKind {
    let info = t.get_basic_info();
    if !t.is_primitive() {
        return SourceKind::Other;
    }
    match (info.logical_type_ref(), info.converted_type(), t.get_physical_type()) {
        (Some(LogicalType::Uuid), _, _) => SourceKind::Uuid,
        (Some(LogicalType::Json), _, _) | (_, ConvertedType::JSON, _) => SourceKind::Json,
        (Some(LogicalType::Timestamp(_)), _, _) | (_, ConvertedType::TIMESTAMP_MICROS | ConvertedType::TIMESTAMP_MILLIS, _) => {
            SourceKind::Timestamp
        }
        (_, _, PhysicalType::INT96) => SourceKind::Timestamp,
        (Some(LogicalType::Date), _, _) | (_, ConvertedType::DATE, _) => SourceKind::Date,
        (Some(LogicalType::Decimal(_)), _, _) | (_, ConvertedType::DECIMAL, _) => SourceKind::Decimal,
        (Some(LogicalType::String), _, _) | (_, ConvertedType::UTF8 | ConvertedType::ENUM, _) => SourceKind::Text,
        (_, _, PhysicalType::BOOLEAN) => SourceKind::Boolean,
        (_, _, PhysicalType::INT32 | PhysicalType::INT64) => SourceKind::Integer,
        (_, _, PhysicalType::FLOAT | PhysicalType::DOUBLE) => SourceKind::Float,
        _ => SourceKind::Other,
    }
}

/// The documented conversion table.
fn convertible(from: SourceKind, to: ScalarType) -> bool {
    use ScalarType as T;
    use SourceKind as S;
    match (from, to) {
        (_, T::String) => from != S::Other,
        (S::Integer | S::Float, T::Bool | T::Int | T::Long | T::Real | T::Decimal) => true,
        (S::Boolean, T::Bool | T::Decimal) => true,
        (S::Decimal, T::Bool | T::Int | T::Long | T::Real | T::Decimal) => true,
        (S::Timestamp | S::Date, T::DateTime) => true,
        (S::Text, T::Int | T::Long | T::Real | T::Decimal | T::Dynamic) => true,
        (S::Uuid, T::Guid) => true,
        (S::Json, T::Dynamic) => true,
        _ => false,
    }
}

/// Reads a Parquet file into rows of the target columns, matching fields by name (identity
/// mapping); a column without a field is null. Fails like Kusto on a conversion the
/// documented table does not allow.
pub fn read_parquet(data: Vec<u8>, target: &[Column]) -> Result<Vec<Vec<Value>>, String> {
    let reader = SerializedFileReader::new(bytes::Bytes::from(data)).map_err(|e| format!("not a valid Parquet file: {e}"))?;
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    let fields = schema.root_schema().get_fields().to_vec();
    // For each target column: the index of its field, checked against the conversion table.
    let mut mapping = Vec::new();
    for c in target {
        match fields.iter().position(|f| f.name() == c.name) {
            Some(i) => {
                let kind = source_kind(&fields[i]);
                if !convertible(kind, c.ty) {
                    return Err(format!(
                        "Parquet field '{}' ({:?}) cannot be ingested into column '{}' of type '{}'",
                        c.name, kind, c.name, c.ty
                    ));
                }
                mapping.push(Some((i, kind)));
            }
            None => mapping.push(None),
        }
    }
    let mut rows = Vec::new();
    for row in reader.get_row_iter(None).map_err(|e| e.to_string())? {
        let row = row.map_err(|e| e.to_string())?;
        let cells: Vec<&Field> = row.get_column_iter().map(|(_, f)| f).collect();
        let mut out = Vec::with_capacity(target.len());
        for (c, m) in target.iter().zip(&mapping) {
            let v = match m {
                None => Value::Null,
                Some((i, kind)) => convert_field(cells[*i], *kind, c).map_err(|e| format!("column '{}': {e}", c.name))?,
            };
            out.push(v);
        }
        rows.push(out);
    }
    Ok(rows)
}

fn convert_field(f: &Field, kind: SourceKind, c: &Column) -> Result<Value, String> {
    use crate::kql::functions::convert;
    let v = match f {
        Field::Null => return Ok(Value::Null),
        Field::Bool(b) => Value::Bool(*b),
        Field::Byte(x) => Value::Long(*x as i64),
        Field::Short(x) => Value::Long(*x as i64),
        Field::Int(x) => Value::Long(*x as i64),
        Field::Long(x) => Value::Long(*x),
        Field::UByte(x) => Value::Long(*x as i64),
        Field::UShort(x) => Value::Long(*x as i64),
        Field::UInt(x) => Value::Long(*x as i64),
        Field::ULong(x) => Value::Long(i64::try_from(*x).map_err(|_| format!("{x} does not fit a long"))?),
        Field::Float(x) => Value::Real(*x as f64),
        Field::Double(x) => Value::Real(*x),
        Field::Decimal(d) => Value::Decimal(decimal_text(d.data(), d.scale())),
        Field::Str(s) => Value::String(s.clone()),
        Field::TimestampMillis(ms) => Value::DateTime(ms * TICKS_PER_MILLI),
        Field::TimestampMicros(us) => Value::DateTime(us * TICKS_PER_MICRO),
        Field::Date(days) => Value::DateTime(*days as i64 * crate::model::value::TICKS_PER_DAY),
        Field::Bytes(b) if kind == SourceKind::Uuid && b.len() == 16 => {
            Value::Guid(Uuid::from_slice(b.data()).map_err(|e| e.to_string())?)
        }
        other => return Err(format!("unsupported Parquet value {other:?}")),
    };
    let converted = match (c.ty, &v, kind) {
        (ScalarType::Timespan, Value::Long(t), _) => Value::Timespan(*t),
        (ScalarType::Guid, Value::String(s), _) => Value::Guid(Uuid::parse_str(s).map_err(|_| format!("'{s}' is not a guid"))?),
        (ScalarType::Guid, Value::Guid(_), _) => v.clone(),
        (ScalarType::Dynamic, Value::String(s), _) => Value::Dynamic(
            serde_json::from_str(s).map_err(|e| format!("'{s}' is not JSON: {e}"))?,
        ),
        (ScalarType::Decimal, Value::Decimal(s), _) => Value::Decimal(canonical_decimal(s)),
        (ScalarType::String, Value::Guid(g), _) => Value::String(g.to_string()),
        (ScalarType::Bool, Value::Long(x), _) => Value::Bool(*x != 0),
        (ScalarType::Bool, Value::Real(x), _) => Value::Bool(*x != 0.0),
        (ty, v, _) => {
            let out = convert(v, ty);
            if out.is_null() {
                return Err(format!("{v:?} cannot be converted to {ty}"));
            }
            out
        }
    };
    Ok(match converted {
        Value::Decimal(s) => Value::Decimal(canonical_decimal(&s)),
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed::sample_rows;

    fn all_types() -> Vec<Column> {
        ScalarType::ALL.iter().map(|t| Column::new(format!("c_{t}"), *t)).collect()
    }

    #[test]
    fn decimals_encode_and_decode() {
        for t in ["0", "1.25", "-1.25", "123456789012345678.123456789012345678", "-0.000000000000000001"] {
            assert_eq!(decimal_text(&decimal_bytes(t).unwrap(), 18), t.trim_start_matches('+'));
        }
        assert!(decimal_bytes("1.0000000000000000001").is_err());
        assert_eq!(canonical_decimal("1.500"), "1.5");
    }

    #[test]
    fn every_type_but_timespan_and_guid_round_trips_by_the_documented_tables() {
        let cols = all_types();
        let mut rows = sample_rows(&cols, 0, 50);
        rows.push(vec![Value::Null; cols.len()]);
        let mut bytes = write_parquet(&cols, &rows, DatetimePrecision::Microsecond, 16).unwrap();
        let strict = read_parquet(std::mem::take(&mut bytes), &cols).unwrap_err();
        assert!(strict.contains("timespan") || strict.contains("guid"), "{strict}");
        let without: Vec<Column> = cols.iter().filter(|c| c.ty != ScalarType::Timespan && c.ty != ScalarType::Guid).cloned().collect();
        let rows2: Vec<Vec<Value>> = rows
            .iter()
            .map(|r| r.iter().zip(&cols).filter(|(_, c)| c.ty != ScalarType::Timespan && c.ty != ScalarType::Guid).map(|(v, _)| v.clone()).collect())
            .collect();
        let bytes = write_parquet(&without, &rows2, DatetimePrecision::Microsecond, 1000).unwrap();
        assert_eq!(read_parquet(bytes, &without).unwrap().len(), rows2.len());
    }

    #[test]
    fn millisecond_precision_truncates_datetimes() {
        let cols = vec![Column::new("t", ScalarType::DateTime)];
        let rows = vec![vec![Value::DateTime(1_234_567)]];
        let bytes = write_parquet(&cols, &rows, DatetimePrecision::Millisecond, 10).unwrap();
        assert_eq!(read_parquet(bytes, &cols).unwrap(), vec![vec![Value::DateTime(1_230_000)]]);
    }

    #[test]
    fn wrong_types_and_garbage_fail_like_an_ingestion_error() {
        let cols = vec![Column::new("a", ScalarType::String)];
        let bytes = write_parquet(&cols, &[vec![Value::String("x".into())]], DatetimePrecision::Microsecond, 10).unwrap();
        let err = read_parquet(bytes, &[Column::new("a", ScalarType::DateTime)]).unwrap_err();
        assert!(err.contains("cannot be ingested"), "{err}");
        assert!(read_parquet(b"not parquet".to_vec(), &cols).is_err());
    }
}
