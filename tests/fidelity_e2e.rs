//! Every value exact: tables holding the hardest values of every Kusto type are copied through
//! Azurite and the strict simulator (no lenient mode exists) and compared value by value:
//! reals by their bits, decimals by value, dynamic values by their text (key order included).
//!
//! A table with datetime, timespan, guid or decimal columns travels as gzip CSV with an
//! ordinal mapping; one of only bool/int/long/real/string/dynamic travels as Parquet
//! (`DataRoute`). Both are checked here, and the route each took is read from its checkpoint.
//! Both copies run with `verify: content`: the digests of every type agree on an exact copy.

mod common;

use common::copy::{blob_store, connections, options, run, stack, submit, Stack, DB, JAN_2024};
use kusto_copy::engine::copy::{keys, CopyEngine};
use kusto_copy::engine::records::{DataRoute, IterationRecord};
use kusto_sim::{SeedExtent, Value};
use std::sync::Arc;

const HOUR: i64 = 3600 * 10_000_000;

fn dt(text: &str) -> Value {
    Value::DateTime(kusto_sim::model::value::parse_datetime(text).unwrap())
}

fn dynamic(text: &str) -> Value {
    Value::Dynamic(serde_json::from_str(text).unwrap())
}

/// The rows of `table` at `cluster`, columns by name in `names` order, ordered by `Id`.
fn rows(cluster: &kusto_sim::Cluster, table: &str, names: &[&str]) -> Vec<Vec<Value>> {
    cluster.query(DB, &format!("{table} | order by Id asc | project {}", names.join(", "))).unwrap().values()
}

/// Exact equality: reals by bits (NaN, -0.0), decimals by value (1.50 = 1.5), dynamic by its
/// JSON text (so key order counts), everything else as is.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Real(x), Value::Real(y)) => x.to_bits() == y.to_bits(),
        (Value::Decimal(x), Value::Decimal(y)) => decimal_value(x) == decimal_value(y),
        (Value::Dynamic(x), Value::Dynamic(y)) => x.to_string() == y.to_string(),
        _ => a == b,
    }
}

/// A decimal's value as (sign, digits, exponent), without trailing zeros.
fn decimal_value(text: &str) -> (bool, String, i64) {
    let (neg, body) = match text.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, text.trim_start_matches('+')),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let digits = format!("{int}{frac}");
    let trimmed = digits.trim_start_matches('0');
    let kept = trimmed.trim_end_matches('0');
    let exp = -(frac.len() as i64) + (trimmed.len() - kept.len()) as i64;
    if kept.is_empty() {
        return (false, String::new(), 0);
    }
    (neg, kept.to_string(), exp)
}

fn assert_same_rows(stack: &Stack, table: &str, names: &[&str], expected_rows: usize) {
    let source = rows(&stack.source, table, names);
    let copied = rows(&stack.destination, table, names);
    assert_eq!(source.len(), expected_rows);
    assert_eq!(copied.len(), source.len(), "every row once");
    for (s, d) in source.iter().zip(&copied) {
        for ((name, a), b) in names.iter().zip(s).zip(d) {
            assert!(same(a, b), "row {:?}, column {name}:\n  source      {a:?}\n  destination {b:?}", s[0]);
        }
    }
}

async fn copy(stack: &Stack, table: &str, job: &str) -> DataRoute {
    let engine = Arc::new(CopyEngine::new(blob_store(stack), connections(stack), options()));
    let request = serde_json::json!({
        "jobId": job,
        "source": format!("{}/{DB}/{table}", stack.source.url()),
        "destination": format!("{}/{DB}", stack.destination.url()),
        "stagingDirectory": format!("{}/staging/{job}", stack.azurite.blob_endpoint()),
        // Every block's digest (every type, the hardest values) must match on both sides
        // before it is moved: the content check sees these values as the copy does.
        "verify": "content",
    })
    .to_string();
    let record = submit(&engine, &request).await;
    run(&engine, &record, |_| {}).await;
    let activity = engine.activity(&record.id, "default").await.unwrap().unwrap();
    assert!(matches!(activity.state, kusto_copy::engine::copy::ActivityState::Completed), "{activity:?}");
    let (iteration, _) = kusto_copy::storage::checkpoint::read_json::<IterationRecord>(engine.store().as_ref(), &keys::iteration(&record.id, "default", 1))
        .await
        .unwrap()
        .unwrap();
    assert!(stack.destination.extents(DB, table).unwrap().iter().all(|e| e.tags.is_empty()), "no tag left");
    let block = kusto_copy::storage::checkpoint::read_json::<kusto_copy::engine::records::BlockRecord>(engine.store().as_ref(), &keys::block(&record.id, "default", 1, 0))
        .await
        .unwrap()
        .unwrap()
        .0;
    assert_eq!((block.content_mismatches, block.export_attempt), (0, 1), "the digests agreed at once");
    iteration.route.expect("the route is recorded on the iteration")
}

fn seed(stack: &Stack, table: &str, rows: Vec<Vec<Value>>) {
    // Two extents of different ages and ingestion hours: two blocks.
    let half = rows.len() / 2;
    let (a, b) = rows.split_at(half);
    for (i, part) in [a, b].into_iter().enumerate() {
        stack
            .source
            .seed_extent(DB, table, SeedExtent {
                rows: part.to_vec(),
                creation_time: JAN_2024 + i as i64 * 24 * HOUR,
                ingestion_time: Some(JAN_2024 + 400 * 24 * HOUR + i as i64 * HOUR),
                tags: vec![],
            })
            .unwrap();
    }
}

fn hard_reals() -> [f64; 7] {
    [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.0, 5e-324, f64::MAX, 0.1]
}

fn hard_strings() -> [&'static str; 7] {
    ["He said \"hi\", then left", "comma, and CR LF\r\nsecond line", "line\u{2028}separator", "emoji 😀🎉 and ünïcödé", "", " padded ", "\"\""]
}

fn hard_dynamics() -> [&'static str; 7] {
    [
        r#"{"big":9007199254740993,"neg":-9223372036854775808,"max":9223372036854775807}"#,
        r#"{"z":1,"a":2,"m":{"y":[],"b":{}}}"#,
        r#"[[],{},[[]],{"":null}]"#,
        r#"{"b":{"d":1,"c":2},"a":[3,2,1]}"#,
        r#""just a string""#,
        r#"{"text":"quote \" comma , newline \n"}"#,
        "12345678901234567",
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_type_and_its_hardest_values_survive_the_csv_route_exactly() {
    let stack = stack().await;
    let names = ["Id", "B", "I", "L", "R", "D", "S", "T", "Span", "G", "Dyn"];
    stack
        .source
        .command(DB, ".create table Fidelity (Id:long, B:bool, I:int, L:long, R:real, D:decimal, S:string, T:datetime, Span:timespan, G:guid, Dyn:dynamic)")
        .unwrap();
    // The destination's columns in another order, with one the copy does not produce: CSV
    // ingests by position, so only the ordinal mapping puts each field in its column.
    stack
        .destination
        .command(DB, ".create table Fidelity (Note:string, Dyn:dynamic, G:guid, Span:timespan, T:datetime, S:string, D:decimal, R:real, L:long, I:int, B:bool, Id:long)")
        .unwrap();
    let datetimes = ["2024-02-29T12:34:56.1234567Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.9999999Z", "1969-12-31T23:59:59.9999999Z", "2000-01-01T00:00:00.0000001Z", "2024-01-01T00:00:00Z", "1601-01-01T00:00:00.5Z"];
    // A negative timespan with ticks, the extremes, a tick.
    let spans = [-(26 * HOUR + 3 * 60 * 10_000_000 + 4 * 10_000_000 + 5_678_901), i64::MIN + 1, i64::MAX, 1, -1, 0, 10_000_000 * 86_400 * 3650];
    // 30 or more significant digits (decimal holds 38).
    let decimals = [
        "1234567890123456789012.34567890123",
        "-98765432109876543210.9876543210",
        "0.000000000000000000000000000001234567890123",
        "99999999999999999999999999999999999999",
        "1.50",
        "-0.1",
        "0",
    ];
    let mut all: Vec<Vec<Value>> = (0..7)
        .map(|i| {
            vec![
                Value::Long(i as i64),
                Value::Bool(i % 2 == 0),
                Value::Int([i32::MIN, i32::MAX, 0, -1, 1, 7, -7][i]),
                Value::Long([i64::MIN, i64::MAX, 0, -1, 1, 1 << 53, (1 << 53) + 1][i]),
                Value::Real(hard_reals()[i]),
                Value::Decimal(decimals[i].into()),
                Value::String(hard_strings()[i].into()),
                dt(datetimes[i]),
                Value::Timespan(spans[i]),
                Value::Guid(uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210u128.wrapping_mul(i as u128 + 1))),
                dynamic(hard_dynamics()[i]),
            ]
        })
        .collect();
    // Nulls of every nullable type (Kusto strings are never null: the empty string).
    let mut nulls = vec![Value::Null; names.len()];
    nulls[0] = Value::Long(7);
    nulls[6] = Value::String(String::new());
    all.push(nulls);
    seed(&stack, "Fidelity", all);

    let route = copy(&stack, "Fidelity", "fidelity-csv").await;
    assert_eq!(route, DataRoute::Csv { columns: names.iter().map(|n| n.to_string()).collect() }, "datetime, timespan, guid, decimal: CSV");
    assert_same_rows(&stack, "Fidelity", &names, 8);
    // The column the copy does not produce stays empty; nulls stayed nulls.
    let empty = stack.destination.query(DB, "Fidelity | where isempty(Note) | count").unwrap().values();
    assert_eq!(empty, vec![vec![Value::Long(8)]]);
    let nulls = stack.destination.query(DB, "Fidelity | where Id == 7 | where isnull(B) and isnull(I) and isnull(L) and isnull(R) and isnull(D) and isnull(T) and isnull(Span) and isnull(G) and isnull(Dyn) | count").unwrap().values();
    assert_eq!(nulls, vec![vec![Value::Long(1)]]);
    // The simulator keeps a decimal's text, so its scale survives too (1.50 stays 1.50);
    // the real service's CSV form of a decimal is not documented: compared by value above.
    let scale = stack.destination.query(DB, "Fidelity | where Id == 4 | project D").unwrap().values();
    assert_eq!(scale, vec![vec![Value::Decimal("1.50".into())]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_table_parquet_carries_exactly_takes_the_parquet_route_and_survives_it() {
    let stack = stack().await;
    let names = ["Id", "B", "I", "R", "S", "Dyn"];
    stack.source.command(DB, ".create table Plain (Id:long, B:bool, I:int, R:real, S:string, Dyn:dynamic)").unwrap();
    stack.destination.command(DB, ".create table Plain (Id:long, B:bool, I:int, R:real, S:string, Dyn:dynamic)").unwrap();
    let mut all: Vec<Vec<Value>> = (0..7)
        .map(|i| {
            vec![
                Value::Long(i as i64),
                Value::Bool(i % 3 == 0),
                Value::Int(i as i32 * -1000),
                Value::Real(hard_reals()[i]),
                Value::String(hard_strings()[i].into()),
                dynamic(hard_dynamics()[i]),
            ]
        })
        .collect();
    all.push(vec![Value::Long(7), Value::Null, Value::Null, Value::Null, Value::String(String::new()), Value::Null]);
    seed(&stack, "Plain", all);
    let route = copy(&stack, "Plain", "fidelity-parquet").await;
    assert_eq!(route, DataRoute::Parquet);
    assert_same_rows(&stack, "Plain", &names, 8);
}
