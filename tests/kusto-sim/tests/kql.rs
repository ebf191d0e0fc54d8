//! The KQL subset, evaluated against a seeded cluster in-process.

use kusto_sim::model::value::{parse_datetime, TICKS_PER_HOUR};
use kusto_sim::{Cluster, ClusterConfig, Frame, ScalarType, SeedExtent, Value};

async fn cluster() -> Cluster {
    let c = Cluster::start("kql", ClusterConfig::default()).await.unwrap();
    c.command("db", ".create table T (Name:string, N:long, Ts:datetime, Tags:dynamic)").unwrap();
    let t0 = parse_datetime("2024-01-01T00:00:00Z").unwrap();
    let rows = |names: &[(&str, i64)]| -> Vec<Vec<Value>> {
        names
            .iter()
            .map(|(n, v)| {
                vec![
                    Value::String(n.to_string()),
                    Value::Long(*v),
                    Value::DateTime(t0 + v * TICKS_PER_HOUR),
                    Value::Dynamic(serde_json::json!(["x"])),
                ]
            })
            .collect()
    };
    c.seed_extent("db", "T", SeedExtent { rows: rows(&[("alpha", 1), ("beta", 2)]), creation_time: t0, ingestion_time: Some(t0 + 10), tags: vec![] }).unwrap();
    c.seed_extent("db", "T", SeedExtent { rows: rows(&[("gamma ray", 3), ("delta", 4)]), creation_time: t0, ingestion_time: Some(t0 + 20), tags: vec![] }).unwrap();
    c.seed_extent("db", "T", SeedExtent { rows: rows(&[("Alpha", 5)]), creation_time: t0, ingestion_time: None, tags: vec![] }).unwrap();
    c
}

fn column(f: &Frame, name: &str) -> Vec<Value> {
    let i = f.column_index(name).unwrap_or_else(|| panic!("no column {name} in {:?}", f.columns));
    f.rows.iter().map(|r| r.values[i].clone()).collect()
}

fn longs(f: &Frame, name: &str) -> Vec<i64> {
    column(f, name).iter().map(|v| v.as_i64().unwrap_or(-999)).collect()
}

#[tokio::test]
async fn table_references_and_filters() {
    let c = cluster().await;
    for q in ["T", "['T']", "database('db').T", "database('db').['T']", "table('T')"] {
        assert_eq!(c.query("db", &format!("{q} | count")).unwrap().rows[0].values[0], Value::Long(5), "{q}");
    }
    let f = c.query("db", "T | where N > 1 and N <= 4 | order by N asc | project N").unwrap();
    assert_eq!(longs(&f, "N"), vec![2, 3, 4]);
    let f = c.query("db", "T | where N == 1 or not(N < 5) | order by N asc").unwrap();
    assert_eq!(longs(&f, "N"), vec![1, 5]);
    let f = c.query("db", "T | where Name in ('alpha', 'delta') | order by N asc").unwrap();
    assert_eq!(longs(&f, "N"), vec![1, 4]);
    let f = c.query("db", "T | where Name !in ('alpha', 'delta') | count").unwrap();
    assert_eq!(f.rows[0].values[0], Value::Long(3));
    let f = c.query("db", "T | where Name has 'ray' | project N").unwrap();
    assert_eq!(longs(&f, "N"), vec![3]);
    let f = c.query("db", "T | where Name has 'ra' | count").unwrap();
    assert_eq!(f.rows[0].values[0], Value::Long(0), "has matches whole terms only");
    let f = c.query("db", "T | where Name contains 'ALP' | count").unwrap();
    assert_eq!(f.rows[0].values[0], Value::Long(2));
    let f = c.query("db", "T | where Name =~ 'ALPHA' | count").unwrap();
    assert_eq!(f.rows[0].values[0], Value::Long(2));
    let f = c.query("db", "T | where N between (2 .. 3) | order by N asc").unwrap();
    assert_eq!(longs(&f, "N"), vec![2, 3]);
    let f = c.query("db", "T | where Ts between (datetime(2024-01-01 02:00) .. 1h) | order by N asc").unwrap();
    assert_eq!(longs(&f, "N"), vec![2, 3]);
    let f = c.query("db", "T | where Ts > todatetime('2024-01-01T03:30:00Z') | order by N asc").unwrap();
    assert_eq!(longs(&f, "N"), vec![4, 5]);
}

#[tokio::test]
async fn lets_extend_project_and_ordering() {
    let c = cluster().await;
    let f = c
        .query("db", "let lo = 2; let src = T | where N >= lo; src | extend M = N * 10, S = strcat(Name, '!') | project-away Tags, Ts | order by M desc | take 2")
        .unwrap();
    assert_eq!(f.columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), vec!["Name", "N", "M", "S"]);
    assert_eq!(longs(&f, "M"), vec![50, 40]);
    assert_eq!(column(&f, "S")[0], Value::String("Alpha!".into()));
    let f = c.query("db", "T | project N, Double = N * 2.5 | limit 1").unwrap();
    assert_eq!(f.columns[1].ty, ScalarType::Real);
    let f = c.query("db", "T | top 2 by N desc | project-rename Number = N | project Number").unwrap();
    assert_eq!(longs(&f, "Number"), vec![5, 4]);
    let f = c.query("db", "T | summarize s = make_set(Tags), l = make_list(N)").unwrap();
    assert_eq!(f.rows[0].values[0], Value::Dynamic(serde_json::json!([["x"]])));
    assert_eq!(f.rows[0].values[1], Value::Dynamic(serde_json::json!([1, 2, 3, 4, 5])));
    let f = c.query("db", "T | extend N = N + 1 | order by N asc | project N | take 1").unwrap();
    assert_eq!(longs(&f, "N"), vec![2], "extend replaces an existing column");
}

#[tokio::test]
async fn summarize_with_aggregates_and_bins() {
    let c = cluster().await;
    let f = c.query("db", "T | summarize count(), sum(N), min(N), max(Ts), dcount(Tags), avg(N)").unwrap();
    let names: Vec<&str> = f.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, vec!["count_", "sum_N", "min_N", "max_Ts", "dcount_Tags", "avg_N"]);
    assert_eq!(f.rows[0].values[0], Value::Long(5));
    assert_eq!(f.rows[0].values[1], Value::Long(15));
    assert_eq!(f.rows[0].values[2], Value::Long(1));
    assert_eq!(f.rows[0].values[3], Value::DateTime(parse_datetime("2024-01-01T05:00:00Z").unwrap()));
    assert_eq!(f.rows[0].values[4], Value::Long(1));
    assert_eq!(f.rows[0].values[5], Value::Real(3.0));
    let f = c.query("db", "T | summarize Rows = count() by bin(Ts, 2h) | order by Ts asc").unwrap();
    assert_eq!(f.columns[0].name, "Ts");
    assert_eq!(longs(&f, "Rows"), vec![1, 2, 2]);
    let f = c.query("db", "T | where N > 100 | summarize count()").unwrap();
    assert_eq!(f.rows.len(), 1, "summarize without by always answers one row");
    assert_eq!(f.rows[0].values[0], Value::Long(0));
    let f = c.query("db", "T | summarize n = count() by Big = N > 2 | order by Big asc").unwrap();
    assert_eq!(longs(&f, "n"), vec![2, 3]);
}

#[tokio::test]
async fn ingestion_time_extent_id_and_cursors() {
    let c = cluster().await;
    let f = c.query("db", "T | where isnull(ingestion_time()) | project N").unwrap();
    assert_eq!(longs(&f, "N"), vec![5], "rows without ingestion time are visible as nulls");
    let f = c.query("db", "T | summarize dcount(extent_id())").unwrap();
    assert_eq!(f.rows[0].values[0], Value::Long(3));
    let cursor = match &c.query("db", "print c = cursor_current()").unwrap().rows[0].values[0] {
        Value::String(s) => s.clone(),
        other => panic!("{other:?}"),
    };
    let f = c.query("db", &format!("T | where cursor_before_or_at('{cursor}') | count")).unwrap();
    assert_eq!(f.rows[0].values[0], Value::Long(4));
    let f = c.query("db", &format!("T | where cursor_after('{cursor}') | count")).unwrap();
    assert_eq!(f.rows[0].values[0], Value::Long(0));
    c.command("db", ".ingest inline into table T <| new,6,2024-01-02,[]").unwrap();
    let f = c.query("db", &format!("T | where cursor_after('{cursor}') | project N")).unwrap();
    assert_eq!(longs(&f, "N"), vec![6], "a cursor window holds exactly what came after it");
    let f = c.query("db", "T | where cursor_after('') | count").unwrap();
    assert_eq!(f.rows[0].values[0], Value::Long(5), "an empty cursor means 'from the start'");
}

/// The shape of the copy engine's planning query (kusto/commands.rs), run as it is sent.
#[tokio::test]
async fn the_copy_planning_query_runs() {
    let c = cluster().await;
    let cursor = text(&c.query("db", "print Cursor=cursor_current()").unwrap().rows[0].values[0]);
    let q = format!(
        "['T']\n| where cursor_before_or_at('{cursor}')\n\
         | extend ['kc_ingestion_time'] = ingestion_time(), ['kc_extent_id'] = extent_id()\n\
         | where N > 0 // the user's query\n\
         | summarize RowCount = count(), MinIngestionTime = min(['kc_ingestion_time']), \
         MaxIngestionTime = max(['kc_ingestion_time']) \
         by IngestionTimeBin = bin(['kc_ingestion_time'], 3600s), ExtentId = tostring(['kc_extent_id'])\n\
         | order by IngestionTimeBin asc"
    );
    let f = c.query("db", &q).unwrap();
    let names: Vec<&str> = f.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, vec!["IngestionTimeBin", "ExtentId", "RowCount", "MinIngestionTime", "MaxIngestionTime"]);
    assert_eq!(longs(&f, "RowCount"), vec![2, 2], "two extents in the window; the one without ingestion time is outside any cursor");
    let f = c
        .query("db", "['T']\n| where ingestion_time() >= datetime(2024-01-01T00:00:00.0000000Z) and ingestion_time() < datetime(2024-01-01T00:00:00.0000015Z)\n| count")
        .unwrap();
    assert_eq!(f.rows[0].values[0], Value::Long(2), "the range [t0, t0+1.5us) holds the first extent (ingested at t0 + 1 us)");
}

fn text(v: &Value) -> String {
    kusto_sim::kql::functions::to_text(v)
}

#[tokio::test]
async fn print_and_scalar_functions() {
    let c = cluster().await;
    let f = c
        .query("db", "print a = 1 + 2, b = datetime(2024-01-01) + 1d, c = bin(7, 5), d = timespan(1.02:00:00), tostring(42), e = isnotnull(int(null)), g = ago(1h) < now()")
        .unwrap();
    let v = &f.rows[0].values;
    assert_eq!(v[0], Value::Long(3));
    assert_eq!(v[1], Value::DateTime(parse_datetime("2024-01-02").unwrap()));
    assert_eq!(v[2], Value::Long(5));
    assert_eq!(v[3], Value::Timespan(26 * TICKS_PER_HOUR));
    assert_eq!(f.columns[4].name, "print_4");
    assert_eq!(v[4], Value::String("42".into()));
    assert_eq!(v[5], Value::Bool(false));
    assert_eq!(v[6], Value::Bool(true));
}

#[tokio::test]
async fn options_and_query_parameters() {
    let c = cluster().await;
    let q = "set notruncation; declare query_parameters(name: string, since: datetime, n: long = 10); \
             T | where Name == name and Ts > since | take n | project N";
    let f = c.query_with_parameters("db", q, &[("name", "beta"), ("since", "datetime(2024-01-01)")]).unwrap();
    assert_eq!(longs(&f, "N"), vec![2]);
    let f = c.query_with_parameters("db", q, &[("name", "beta"), ("since", "2024-01-01T05:00:00Z")]).unwrap();
    assert!(f.rows.is_empty(), "a plain datetime text works too");
    let e = c.query_with_parameters("db", q, &[("name", "beta")]).unwrap_err();
    assert!(e.detail.contains("since"), "{}", e.detail);
    let e = c.query_with_parameters("db", q, &[("name", "x"), ("since", "not a date")]).unwrap_err();
    assert_eq!(e.status, 400);
}

#[tokio::test]
async fn errors_are_kusto_bad_requests_never_wrong_answers() {
    let c = cluster().await;
    let cases = [
        ("T | where", "Syntax error"),
        ("T | where NoSuchColumn > 1", "Failed to resolve scalar expression named 'NoSuchColumn'"),
        ("NoSuchTable | count", "Failed to resolve table expression named 'NoSuchTable'"),
        ("T | where Name > 1", "Cannot compare values of types string and long"),
        ("T | where N", "must be of type bool"),
        ("T | join (T) on N", "'join' is not supported"),
        ("T | summarize percentile(N, 50)", "not an aggregate supported"),
        ("T | project nosuchfn(N)", "Unknown function"),
        ("T | summarize count() | extend x = ingestion_time()", "ingestion_time"),
        ("T | project N, N", "already exists"),
        ("database('nodb').T", "nodb"),
    ];
    for (q, expected) in cases {
        let e = c.query("db", q).unwrap_err();
        assert_eq!(e.status, 400, "{q}");
        assert_eq!(e.code, "General_BadRequest", "{q}");
        assert!(e.permanent, "{q}");
        assert!(e.detail.contains(expected), "{q}: {}", e.detail);
    }
}
