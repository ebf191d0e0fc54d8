//! Scalar functions of the subset: their types (checked before evaluation, so that a bad query
//! is a semantic error rather than a wrong answer) and their values.

use uuid::Uuid;

use super::KqlError;
use crate::model::value::{parse_text, ScalarType, Value, TICKS_PER_SECOND};

/// Offset between .NET ticks (from 0001-01-01) and the Unix-epoch ticks kept in values.
/// Kusto cursors are .NET ticks, and `bin()` aligns datetimes on .NET ticks.
pub const DOTNET_EPOCH_OFFSET: i64 = 621_355_968_000_000_000;

/// What a function may read besides its arguments.
pub struct CallContext<'a> {
    pub ingestion_time: Option<i64>,
    pub extent_id: Option<Uuid>,
    pub extent_tags: Option<&'a [String]>,
    pub has_row_meta: bool,
    pub now: i64,
    pub cursor_current: &'a str,
}

pub const AGGREGATES: [&str; 10] =
    ["count", "countif", "sum", "min", "max", "dcount", "avg", "take_any", "make_set", "make_list"];

pub fn cursor_to_ticks(cursor: &str) -> Option<i64> {
    if cursor.is_empty() {
        return Some(i64::MIN);
    }
    cursor.trim().parse::<i64>().ok().map(|t| t - DOTNET_EPOCH_OFFSET)
}

pub fn ticks_to_cursor(ticks: i64) -> String {
    (ticks + DOTNET_EPOCH_OFFSET).to_string()
}

fn arity(name: &str, args: &[ScalarType], min: usize, max: usize) -> Result<(), KqlError> {
    if args.len() < min || args.len() > max {
        return Err(KqlError::semantic(format!(
            "SEM0219: function '{name}': expected {} argument(s), got {}",
            if min == max { min.to_string() } else { format!("{min}..{max}") },
            args.len()
        )));
    }
    Ok(())
}

fn expect(name: &str, got: ScalarType, allowed: &[ScalarType]) -> Result<(), KqlError> {
    if allowed.contains(&got) || got == ScalarType::Dynamic {
        Ok(())
    } else {
        Err(KqlError::semantic(format!(
            "SEM0219: function '{name}': argument of type '{got}' is not one of: {}",
            allowed.iter().map(|t| t.kql_name()).collect::<Vec<_>>().join(", ")
        )))
    }
}

/// The result type of a scalar function call, or the semantic error Kusto would give.
pub fn return_type(name: &str, args: &[ScalarType], has_row_meta: bool) -> Result<ScalarType, KqlError> {
    use ScalarType::*;
    let needs_rows = |n: &str| -> Result<(), KqlError> {
        if has_row_meta {
            Ok(())
        } else {
            Err(KqlError::semantic(format!(
                "SEM0100: function '{n}' can only be used on rows that come from a table (before any summarize)"
            )))
        }
    };
    Ok(match name {
        "ingestion_time" => {
            arity(name, args, 0, 0)?;
            needs_rows(name)?;
            DateTime
        }
        "extent_id" => {
            arity(name, args, 0, 0)?;
            needs_rows(name)?;
            Guid
        }
        "extent_tags" => {
            arity(name, args, 0, 0)?;
            needs_rows(name)?;
            Dynamic
        }
        "set_has_element" => {
            arity(name, args, 2, 2)?;
            expect(name, args[0], &[Dynamic])?;
            Bool
        }
        "array_length" => {
            arity(name, args, 1, 1)?;
            expect(name, args[0], &[Dynamic])?;
            Long
        }
        "cursor_current" => {
            arity(name, args, 0, 0)?;
            String
        }
        "cursor_after" | "cursor_before_or_at" => {
            arity(name, args, 1, 1)?;
            expect(name, args[0], &[String])?;
            needs_rows(name)?;
            Bool
        }
        "now" => {
            arity(name, args, 0, 1)?;
            if let Some(t) = args.first() {
                expect(name, *t, &[Timespan])?;
            }
            DateTime
        }
        "ago" => {
            arity(name, args, 1, 1)?;
            expect(name, args[0], &[Timespan])?;
            DateTime
        }
        "isnull" | "isnotnull" => {
            arity(name, args, 1, 1)?;
            Bool
        }
        "isempty" | "isnotempty" => {
            arity(name, args, 1, 1)?;
            Bool
        }
        "not" => {
            arity(name, args, 1, 1)?;
            expect(name, args[0], &[Bool])?;
            Bool
        }
        "todatetime" => {
            arity(name, args, 1, 1)?;
            DateTime
        }
        "totimespan" | "totime" => {
            arity(name, args, 1, 1)?;
            Timespan
        }
        "tostring" => {
            arity(name, args, 1, 1)?;
            String
        }
        "tolong" | "toint64" => {
            arity(name, args, 1, 1)?;
            Long
        }
        "toint" => {
            arity(name, args, 1, 1)?;
            Int
        }
        "toreal" | "todouble" => {
            arity(name, args, 1, 1)?;
            Real
        }
        "tobool" | "toboolean" => {
            arity(name, args, 1, 1)?;
            Bool
        }
        "toguid" => {
            arity(name, args, 1, 1)?;
            Guid
        }
        "todecimal" => {
            arity(name, args, 1, 1)?;
            Decimal
        }
        "todynamic" | "parse_json" => {
            arity(name, args, 1, 1)?;
            Dynamic
        }
        "bin" | "floor" => {
            arity(name, args, 2, 2)?;
            match (args[0], args[1]) {
                (DateTime, Timespan) => DateTime,
                (Timespan, Timespan) => Timespan,
                (a, b) if a.is_numeric() && b.is_numeric() => {
                    if a == Real || b == Real {
                        Real
                    } else {
                        a
                    }
                }
                (a, b) => {
                    return Err(KqlError::semantic(format!(
                        "SEM0219: function '{name}' cannot bin a value of type '{a}' by '{b}'"
                    )))
                }
            }
        }
        "strlen" => {
            arity(name, args, 1, 1)?;
            Long
        }
        "tolower" | "toupper" => {
            arity(name, args, 1, 1)?;
            expect(name, args[0], &[String])?;
            String
        }
        "strcat" => {
            if args.is_empty() {
                arity(name, args, 1, 64)?;
            }
            String
        }
        "iff" | "iif" => {
            arity(name, args, 3, 3)?;
            expect(name, args[0], &[Bool])?;
            if args[1] != args[2] && !(args[1].is_numeric() && args[2].is_numeric()) {
                return Err(KqlError::semantic(format!(
                    "SEM0219: function '{name}': the branches have different types ('{}' and '{}')",
                    args[1], args[2]
                )));
            }
            args[1]
        }
        "abs" => {
            arity(name, args, 1, 1)?;
            expect(name, args[0], &[Int, Long, Real, Timespan])?;
            args[0]
        }
        // Docs (query/hash-xxhash64-function): `hash_xxhash64(source [, mod])`, mod an int, the
        // result "between 0 and mod - 1". They show a datetime example but not how a
        // non-string is turned into bytes, so only strings are hashed here: a query that
        // needs another type must convert it first (and so states its encoding).
        "hash_xxhash64" => {
            arity(name, args, 1, 2)?;
            if args[0] != String {
                return Err(KqlError::semantic(format!(
                    "SEM0001: function '{name}': kusto-sim hashes only strings (the docs do not say how a '{}' is encoded): convert it first",
                    args[0]
                )));
            }
            if let Some(m) = args.get(1) {
                if !matches!(m, Int | Long) {
                    return Err(KqlError::semantic(format!("SEM0219: function '{name}': mod must be an int, not '{m}'")));
                }
            }
            Long
        }
        "pack_array" => {
            arity(name, args, 1, 64)?;
            Dynamic
        }
        "datetime_diff" | "datetime_add" | "format_datetime" | "startofday" | "endofday" | "bag_keys"
        | "extract" | "split" | "replace_string" | "hash" | "round" | "make_datetime" | "todecimal_round" => {
            return Err(KqlError::semantic(format!("SEM0001: function '{name}' is not supported by kusto-sim")))
        }
        a if AGGREGATES.contains(&a) => {
            return Err(KqlError::semantic(format!(
                "SEM0100: aggregate function '{a}' can only be used in the context of summarize"
            )))
        }
        _ => return Err(KqlError::semantic(format!("SEM0260: Unknown function: '{name}'"))),
    })
}

/// Calls a type-checked scalar function. Conversion failures give null, as in Kusto.
pub fn call(name: &str, args: &[Value], ctx: &CallContext<'_>) -> Value {
    let a0 = args.first().cloned().unwrap_or(Value::Null);
    match name {
        "ingestion_time" => ctx.ingestion_time.map(Value::DateTime).unwrap_or(Value::Null),
        "extent_id" => ctx.extent_id.map(Value::Guid).unwrap_or(Value::Null),
        "extent_tags" => match ctx.extent_tags {
            Some(tags) => Value::Dynamic(serde_json::Value::Array(tags.iter().map(|t| serde_json::Value::String(t.clone())).collect())),
            None => Value::Null,
        },
        "set_has_element" => match (&a0, args.get(1)) {
            (Value::Dynamic(serde_json::Value::Array(items)), Some(v)) if !v.is_null() => {
                let wanted = match v {
                    Value::Dynamic(d) => d.clone(),
                    other => other.to_json(),
                };
                Value::Bool(items.contains(&wanted))
            }
            _ => Value::Null,
        },
        "array_length" => match &a0 {
            Value::Dynamic(serde_json::Value::Array(items)) => Value::Long(items.len() as i64),
            _ => Value::Null,
        },
        "cursor_current" => Value::String(ctx.cursor_current.to_string()),
        "cursor_after" | "cursor_before_or_at" => {
            let (Some(it), Value::String(c)) = (ctx.ingestion_time, &a0) else {
                return Value::Bool(false);
            };
            match cursor_to_ticks(c) {
                Some(ct) if name == "cursor_after" => Value::Bool(it > ct),
                Some(ct) => Value::Bool(it <= ct),
                None => Value::Null,
            }
        }
        "now" => Value::DateTime(ctx.now + a0_timespan(&a0)),
        "ago" => Value::DateTime(ctx.now - a0_timespan(&a0)),
        "isnull" => Value::Bool(a0.is_null()),
        "isnotnull" => Value::Bool(!a0.is_null()),
        "isempty" => Value::Bool(is_empty(&a0)),
        "isnotempty" => Value::Bool(!is_empty(&a0)),
        "not" => match a0 {
            Value::Bool(b) => Value::Bool(!b),
            _ => Value::Null,
        },
        "todatetime" => convert(&a0, ScalarType::DateTime),
        "totimespan" | "totime" => convert(&a0, ScalarType::Timespan),
        "tostring" => match &a0 {
            Value::Null => Value::String(String::new()),
            v => Value::String(to_text(v)),
        },
        "tolong" | "toint64" => convert(&a0, ScalarType::Long),
        "toint" => convert(&a0, ScalarType::Int),
        "toreal" | "todouble" => convert(&a0, ScalarType::Real),
        "tobool" | "toboolean" => convert(&a0, ScalarType::Bool),
        "toguid" => convert(&a0, ScalarType::Guid),
        "todecimal" => convert(&a0, ScalarType::Decimal),
        "todynamic" | "parse_json" => match &a0 {
            Value::String(s) => Value::Dynamic(serde_json::from_str(s).unwrap_or(serde_json::Value::String(s.clone()))),
            Value::Null => Value::Null,
            v => Value::Dynamic(v.to_json()),
        },
        "bin" | "floor" => bin(&a0, args.get(1).unwrap_or(&Value::Null)),
        "strlen" => match &a0 {
            Value::Null => Value::Null,
            v => Value::Long(to_text(v).chars().count() as i64),
        },
        "tolower" => map_str(&a0, |s| s.to_lowercase()),
        "toupper" => map_str(&a0, |s| s.to_uppercase()),
        "strcat" => Value::String(args.iter().map(to_text).collect()),
        "iff" | "iif" => match a0 {
            Value::Bool(true) => args[1].clone(),
            _ => args[2].clone(),
        },
        "hash_xxhash64" => match (&a0, args.get(1)) {
            (Value::String(text), None) => Value::Long(super::xxhash::xxh64(text.as_bytes(), 0) as i64),
            (Value::String(text), Some(m)) => match m.as_i64() {
                Some(m) if m > 0 => Value::Long((super::xxhash::xxh64(text.as_bytes(), 0) % m as u64) as i64),
                _ => Value::Null,
            },
            _ => Value::Null,
        },
        "pack_array" => Value::Dynamic(serde_json::Value::Array(args.iter().map(|v| if v.is_null() { serde_json::Value::Null } else { match v { Value::Dynamic(d) => d.clone(), other => other.to_json() } }).collect())),
        "abs" => match a0 {
            Value::Int(v) => Value::Int(v.abs()),
            Value::Long(v) => Value::Long(v.abs()),
            Value::Real(v) => Value::Real(v.abs()),
            Value::Timespan(v) => Value::Timespan(v.abs()),
            _ => Value::Null,
        },
        _ => Value::Null,
    }
}

fn a0_timespan(v: &Value) -> i64 {
    match v {
        Value::Timespan(t) => *t,
        _ => 0,
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

fn map_str(v: &Value, f: impl Fn(&str) -> String) -> Value {
    match v {
        Value::String(s) => Value::String(f(s)),
        _ => Value::Null,
    }
}

/// The text form of a value as `tostring()` gives it.
pub fn to_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Dynamic(serde_json::Value::String(s)) => s.clone(),
        Value::Real(r) => format!("{r}"),
        other => match other.to_json() {
            serde_json::Value::String(s) => s,
            j => j.to_string(),
        },
    }
}

/// A cast between scalar types; anything that does not convert is null.
pub fn convert(v: &Value, to: ScalarType) -> Value {
    if v.is_null() {
        return Value::Null;
    }
    if v.scalar_type() == Some(to) {
        return v.clone();
    }
    match (v, to) {
        (Value::Int(x), ScalarType::Long) => Value::Long(*x as i64),
        (Value::Long(x), ScalarType::Int) => i32::try_from(*x).map(Value::Int).unwrap_or(Value::Null),
        (Value::Real(x), ScalarType::Long) if x.is_finite() => Value::Long(x.trunc() as i64),
        (Value::Real(x), ScalarType::Int) if x.is_finite() => Value::Int(x.trunc() as i32),
        (Value::Bool(b), ScalarType::Long) => Value::Long(*b as i64),
        (Value::Bool(b), ScalarType::Int) => Value::Int(*b as i32),
        (Value::DateTime(t), ScalarType::Long) => Value::Long(*t + DOTNET_EPOCH_OFFSET),
        (Value::Timespan(t), ScalarType::Long) => Value::Long(*t),
        (Value::Long(t), ScalarType::DateTime) => Value::DateTime(*t - DOTNET_EPOCH_OFFSET),
        (Value::Long(t), ScalarType::Timespan) => Value::Timespan(*t),
        (v, ScalarType::Real) if v.as_f64().is_some() => Value::Real(v.as_f64().unwrap()),
        (v, ScalarType::Decimal) if v.as_f64().is_some() => Value::Decimal(to_text(v)),
        (Value::Dynamic(serde_json::Value::String(s)), t) | (Value::String(s), t) => {
            parse_text(t, s).unwrap_or(Value::Null)
        }
        (Value::Dynamic(j), t) => Value::from_json(t, j).unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

fn bin(v: &Value, by: &Value) -> Value {
    fn floor_to(x: i64, step: i64) -> Option<i64> {
        if step <= 0 {
            return None;
        }
        Some(x.div_euclid(step) * step)
    }
    match (v, by) {
        (Value::DateTime(t), Value::Timespan(s)) => floor_to(t + DOTNET_EPOCH_OFFSET, *s)
            .map(|x| Value::DateTime(x - DOTNET_EPOCH_OFFSET))
            .unwrap_or(Value::Null),
        (Value::Timespan(t), Value::Timespan(s)) => floor_to(*t, *s).map(Value::Timespan).unwrap_or(Value::Null),
        (Value::Long(x), Value::Long(s)) => floor_to(*x, *s).map(Value::Long).unwrap_or(Value::Null),
        (Value::Int(x), Value::Long(s)) => floor_to(*x as i64, *s).map(|r| Value::Int(r as i32)).unwrap_or(Value::Null),
        (x, s) => match (x.as_f64(), s.as_f64()) {
            (Some(x), Some(s)) if s > 0.0 => Value::Real((x / s).floor() * s),
            _ => Value::Null,
        },
    }
}

/// Kusto's `has`: the needle must match whole terms (runs of letters and digits), ignoring case.
pub fn has_term(haystack: &str, needle: &str, case_sensitive: bool) -> bool {
    let (h, n) = if case_sensitive {
        (haystack.to_string(), needle.to_string())
    } else {
        (haystack.to_lowercase(), needle.to_lowercase())
    };
    if n.is_empty() {
        return true;
    }
    let is_term = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let mut from = 0;
    while let Some(i) = h[from..].find(&n) {
        let start = from + i;
        let end = start + n.len();
        let before = h[..start].chars().next_back();
        let after = h[end..].chars().next();
        let first = n.chars().next();
        let last = n.chars().next_back();
        let left_ok = !is_term(before) || !is_term(first);
        let right_ok = !is_term(after) || !is_term(last);
        if left_ok && right_ok {
            return true;
        }
        from = start + n.chars().next().map(|c| c.len_utf8()).unwrap_or(1);
    }
    false
}

/// Seconds as ticks, for callers that configure durations.
pub fn seconds(s: i64) -> i64 {
    s * TICKS_PER_SECOND
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::value::{parse_datetime, TICKS_PER_DAY, TICKS_PER_HOUR};

    #[test]
    fn has_matches_whole_terms_only() {
        assert!(has_term("drop-by:abc-1", "drop-by:abc-1", false));
        assert!(has_term("Hello World", "world", false));
        assert!(!has_term("Hello World", "worl", false));
        assert!(has_term("Hello World", "World", true));
        assert!(!has_term("abc", "ABC", true));
    }

    #[test]
    fn bin_aligns_datetimes_on_dotnet_ticks() {
        let t = parse_datetime("2024-01-03T05:06:07Z").unwrap();
        assert_eq!(bin(&Value::DateTime(t), &Value::Timespan(TICKS_PER_DAY)), Value::DateTime(parse_datetime("2024-01-03").unwrap()));
        assert_eq!(bin(&Value::DateTime(t), &Value::Timespan(TICKS_PER_HOUR)), Value::DateTime(parse_datetime("2024-01-03T05:00:00Z").unwrap()));
        assert_eq!(bin(&Value::Long(17), &Value::Long(5)), Value::Long(15));
        assert_eq!(bin(&Value::Long(-1), &Value::Long(5)), Value::Long(-5));
    }

    #[test]
    fn cursors_are_dotnet_ticks() {
        let t = parse_datetime("2024-01-01").unwrap();
        assert_eq!(cursor_to_ticks(&ticks_to_cursor(t)), Some(t));
        assert_eq!(ticks_to_cursor(0), "621355968000000000");
        assert_eq!(cursor_to_ticks("not a cursor"), None);
    }

    #[test]
    fn hash_xxhash64_gives_the_documented_examples_and_hashes_only_strings() {
        let ctx = CallContext { ingestion_time: None, extent_id: None, extent_tags: None, has_row_meta: false, now: 0, cursor_current: "" };
        let world = Value::String("World".into());
        assert_eq!(call("hash_xxhash64", &[world.clone()], &ctx), Value::Long(1_846_988_464_401_551_951));
        assert_eq!(call("hash_xxhash64", &[world, Value::Long(100)], &ctx), Value::Long(51));
        assert_eq!(return_type("hash_xxhash64", &[ScalarType::String, ScalarType::Long], false).unwrap(), ScalarType::Long);
        // The docs' datetime example does not say how a datetime becomes bytes: refused.
        for t in [ScalarType::DateTime, ScalarType::Long, ScalarType::Dynamic] {
            assert!(return_type("hash_xxhash64", &[t], false).is_err(), "{t}");
        }
        assert!(return_type("hash_xxhash64", &[ScalarType::String, ScalarType::String], false).is_err());
        let packed = call("pack_array", &[Value::Null, Value::String(String::new())], &ctx);
        assert_eq!(to_text(&packed), r#"[null,""]"#, "a null and an empty string stay apart");
    }

    #[test]
    fn types_are_checked() {
        assert!(return_type("bin", &[ScalarType::String, ScalarType::Long], true).is_err());
        assert!(return_type("nosuchfn", &[], true).is_err());
        assert!(return_type("ingestion_time", &[], false).is_err());
        assert_eq!(return_type("ago", &[ScalarType::Timespan], false).unwrap(), ScalarType::DateTime);
    }
}
