//! The query checker's property (`src/job/query.rs`): whatever it accepts gives the same
//! rows applied block by block (`T | where <block's ingestion range> | <query>`, as every
//! export does) as applied to the whole window, evaluated by the simulator's KQL engine.
//!
//! Two generators: queries built from the accepted operators and functions (so most cases
//! evaluate), and token soup from accepted and refused words alike (so the property covers
//! what the checker lets through, not only what the grammar here builds).

use kusto_sim::{Cluster, ClusterConfig, Column, ScalarType, SeedPlan};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::collections::BTreeMap;

const HOUR: i64 = 3600 * 10_000_000;
const JAN_2023: i64 = 1_672_531_200 * 10_000_000;
const BLOCKS: i64 = 4;

fn datetime(ticks: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ticks as i128 * 100).unwrap();
    format!("datetime({})", t.format(&time::format_description::well_known::Rfc3339).unwrap())
}

/// Rows as a multiset of their printed values.
fn rows(cluster: &Cluster, kql: &str) -> Result<BTreeMap<String, usize>, String> {
    let frame = cluster.query("db", kql).map_err(|e| e.to_string())?;
    let mut out = BTreeMap::new();
    for row in frame.rows {
        *out.entry(format!("{:?}", row.values)).or_default() += 1;
    }
    Ok(out)
}

/// `Ok(true)`: both sides evaluated and agree; `Ok(false)`: the simulator cannot evaluate it.
fn same_by_blocks(cluster: &Cluster, query: &str) -> Result<bool, TestCaseError> {
    let whole = match rows(cluster, &format!("Events\n{query}")) {
        Ok(w) => w,
        Err(e) => {
            if std::env::var("KC_SHOW_UNEVALUATED").is_ok() {
                eprintln!("not evaluated: {query}: {e}");
            }
            return Ok(false);
        }
    };
    let mut by_blocks: BTreeMap<String, usize> = BTreeMap::new();
    for b in 0..BLOCKS {
        let (from, to) = (JAN_2023 + b * HOUR, JAN_2023 + (b + 1) * HOUR);
        let window = format!("Events\n| where ingestion_time() >= {} and ingestion_time() < {}\n{query}", datetime(from), datetime(to));
        let part = rows(cluster, &window).map_err(|e| TestCaseError::fail(format!("whole evaluated but a block did not: {e}: {query}")))?;
        for (row, n) in part {
            *by_blocks.entry(row).or_default() += n;
        }
    }
    prop_assert_eq!(&whole, &by_blocks, "block by block differs from the whole window for {}", query);
    Ok(true)
}

fn predicate() -> impl Strategy<Value = String> {
    prop_oneof![
        (0i64..200).prop_map(|n| format!("Id > {n}")),
        (0i64..200).prop_map(|n| format!("Id % 3 == {}", n % 3)),
        "[a-z0-9-]{1,4}".prop_map(|s| format!("Name has '{s}'")),
        "[0-9]{1,2}".prop_map(|s| format!("Name contains '{s}'")),
        (0.0f64..100.0).prop_map(|a| format!("Amount between ({a:.1} .. {:.1})", a + 20.0)),
        Just("isnotempty(Name)".to_owned()),
        Just("isnull(Amount)".to_owned()),
        Just("Id in (1, 5, 42, 77)".to_owned()),
        Just("strlen(Name) > 5".to_owned()),
        Just("tostring(Props) has 'a'".to_owned()),
        Just("not(Name startswith 'row-1')".to_owned()),
        Just("tolower(Name) == Name".to_owned()),
    ]
}

fn expression() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("strlen(Name)".to_owned()),
        Just("toupper(Name)".to_owned()),
        Just("strcat(Name, '-', tostring(Id))".to_owned()),
        Just("abs(Amount - 50)".to_owned()),
        Just("bin(Amount, 10)".to_owned()),
        Just("iff(Id > 100, 'big', 'small')".to_owned()),
        Just("floor(Amount, 5)".to_owned()),
        Just("Id * 2 + 1".to_owned()),
        Just("tolong(Amount)".to_owned()),
        Just("array_length(parse_json('[1,2]'))".to_owned()),
    ]
}

/// Row filters and extensions, then at most one projection (which may drop columns the
/// steps before it read, so it comes last).
fn pipeline() -> impl Strategy<Value = String> {
    let step = prop_oneof![
        predicate().prop_map(|p| format!("| where {p}")),
        (predicate(), predicate()).prop_map(|(a, b)| format!("| filter {a} or {b}")),
        expression().prop_map(|e| format!("| extend X = {e}")),
    ];
    let last = prop_oneof![
        Just(String::new()),
        Just("| project Id, Name, Amount".to_owned()),
        Just("| project-away Props".to_owned()),
        Just("| project-rename Label = Name".to_owned()),
        expression().prop_map(|e| format!("| project Id, Y = {e}")),
    ];
    (prop::collection::vec(step, 1..4), last).prop_map(|(steps, last)| format!("{}\n{last}", steps.join("\n")))
}

/// A filter or an extension made of accepted and refused words alike, joined at random.
fn soup() -> impl Strategy<Value = String> {
    let words = prop::sample::select(vec![
        "Id", "Name", "Amount", "Props", "1", "5", "'row-1'", "==", "!=", ">", "<", "+", "*", "%", "and", "or", "has", "contains",
        "(", ")", ",", "strlen(", "tolower(", "abs(", "iff(", "isnull(", "not(", "bin(", "strcat(", "rand()", "prev(", "ago(1d)",
        "now()", "row_number()", "take", "summarize", "count()", "|", "between", "..", "in", "true", "false",
    ]);
    (prop::sample::select(vec!["| where", "| filter", "| extend X ="]), prop::collection::vec(words, 1..8))
        .prop_map(|(op, w)| format!("{op} {}", w.join(" ")))
}

fn check_property(strategy: BoxedStrategy<String>, cases: u32, min_evaluated: u32) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let cluster = runtime.block_on(Cluster::start("source", ClusterConfig::default())).unwrap();
    cluster.create_database("db");
    let columns = [
        Column::new("Id", ScalarType::Long),
        Column::new("Name", ScalarType::String),
        Column::new("Amount", ScalarType::Real),
        Column::new("Props", ScalarType::Dynamic),
    ];
    cluster
        .seed_table("db", "Events", &columns, &SeedPlan {
            rows: 200,
            extents: BLOCKS as usize,
            first_creation: JAN_2023 - 100 * 24 * HOUR,
            creation_step: 24 * HOUR,
            first_ingestion: Some(JAN_2023),
            ingestion_step: HOUR,
        })
        .unwrap();
    let evaluated = std::cell::Cell::new(0u32);
    let accepted = std::cell::Cell::new(0u32);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    runner
        .run(&strategy, |query| {
            if kusto_copy::job::query::check(&query).is_err() {
                return Ok(());
            }
            accepted.set(accepted.get() + 1);
            if same_by_blocks(&cluster, &query)? {
                evaluated.set(evaluated.get() + 1);
            }
            Ok(())
        })
        .unwrap();
    eprintln!("{} accepted, {} evaluated on both sides", accepted.get(), evaluated.get());
    assert!(evaluated.get() >= min_evaluated, "too few queries evaluated ({}) for the property to mean much", evaluated.get());
}

#[test]
fn accepted_pipelines_give_the_same_rows_block_by_block() {
    check_property(pipeline().boxed(), 300, 250);
}

#[test]
fn whatever_the_checker_accepts_gives_the_same_rows_block_by_block() {
    check_property(soup().boxed(), 3000, 20);
}

#[test]
fn the_harness_sees_a_query_that_depends_on_the_block() {
    // The property must be able to fail: `take` (refused by the checker) differs.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let cluster = runtime.block_on(Cluster::start("source", ClusterConfig::default())).unwrap();
    cluster.create_database("db");
    cluster
        .seed_table("db", "Events", &[Column::new("Id", ScalarType::Long)], &SeedPlan {
            rows: 40,
            extents: BLOCKS as usize,
            first_creation: JAN_2023,
            creation_step: HOUR,
            first_ingestion: Some(JAN_2023),
            ingestion_step: HOUR,
        })
        .unwrap();
    assert!(kusto_copy::job::query::check("| take 3").is_err());
    assert!(same_by_blocks(&cluster, "| take 3").is_err(), "take 3 per block is 12 rows, not 3");
}
