//! Seeding: tables of N rows spread over many extents, with chosen creation and ingestion
//! times (historical creation times and rows without ingestion time included).

use uuid::Uuid;

use crate::model::cluster::ClusterState;
use crate::model::table::{Column, Extent, Table};
use crate::model::value::{ScalarType, Value, TICKS_PER_SECOND};
use crate::wire::error::KustoError;

/// One extent to add as is.
#[derive(Debug, Clone)]
pub struct SeedExtent {
    pub rows: Vec<Vec<Value>>,
    pub creation_time: i64,
    /// `None`: the rows have no ingestion time (as with the IngestionTime policy off).
    pub ingestion_time: Option<i64>,
    pub tags: Vec<String>,
}

/// How to spread a seeded table over extents and time.
#[derive(Debug, Clone)]
pub struct SeedPlan {
    pub rows: usize,
    pub extents: usize,
    /// Creation time of the first extent, and the step between extents.
    pub first_creation: i64,
    pub creation_step: i64,
    /// Ingestion time of the first extent and the step; `None` leaves rows without one.
    pub first_ingestion: Option<i64>,
    pub ingestion_step: i64,
}

impl ClusterState {
    /// Adds an extent with exactly the given times. The ingestion clock moves past the given
    /// ingestion time so that later ingestions stay after it (cursors stay exact).
    pub fn seed_extent(&mut self, db: &str, table: &str, seed: SeedExtent) -> Result<Uuid, KustoError> {
        let columns = self.table(db, table)?.columns.clone();
        let width = columns.len();
        let seed = SeedExtent { rows: crate::model::cluster::normalize_rows(&columns, seed.rows), ..seed };
        if let Some(bad) = seed.rows.iter().position(|r| r.len() != width) {
            return Err(KustoError::bad_request(format!("seed row {bad} does not have {width} values")));
        }
        if let Some(t) = seed.ingestion_time {
            self.last_ingestion = self.last_ingestion.max(t);
        }
        let extent = Extent {
            id: crate::ids::new_uuid(),
            ingestion_times: vec![seed.ingestion_time; seed.rows.len()],
            rows: seed.rows,
            min_created_on: seed.creation_time,
            max_created_on: seed.creation_time,
            tags: seed.tags,
        };
        let id = extent.id;
        self.table_mut(db, table)?.extents.push(extent);
        Ok(id)
    }

    /// Creates the table if needed and fills it with generated rows following the plan.
    pub fn seed_table(&mut self, db: &str, table: &str, columns: &[Column], plan: &SeedPlan) -> Result<Vec<Uuid>, KustoError> {
        let d = self.database_mut(db)?;
        d.tables.entry(table.to_string()).or_insert_with(|| Table::new(table, columns.to_vec()));
        let extents = plan.extents.max(1);
        let mut ids = Vec::new();
        let mut next_row = 0;
        for i in 0..extents {
            let n = plan.rows / extents + usize::from(i < plan.rows % extents);
            let rows = sample_rows(columns, next_row, n);
            next_row += n;
            ids.push(self.seed_extent(
                db,
                table,
                SeedExtent {
                    rows,
                    creation_time: plan.first_creation + plan.creation_step * i as i64,
                    ingestion_time: plan.first_ingestion.map(|t| t + plan.ingestion_step * i as i64),
                    tags: vec![],
                },
            )?);
        }
        Ok(ids)
    }
}

/// Deterministic rows for any schema: row `i` is the same on every run; every 7th value
/// (per column, staggered) is null so that nulls travel through every path.
pub fn sample_rows(columns: &[Column], first: usize, count: usize) -> Vec<Vec<Value>> {
    (first..first + count)
        .map(|i| {
            columns
                .iter()
                .enumerate()
                .map(|(c, col)| {
                    if (i + c) % 7 == 6 && c > 0 {
                        return Value::Null;
                    }
                    let n = i as i64;
                    match col.ty {
                        ScalarType::Bool => Value::Bool(i % 2 == 0),
                        ScalarType::Int => Value::Int((n % 1000) as i32 - 500),
                        ScalarType::Long => Value::Long(n),
                        ScalarType::Real => Value::Real(n as f64 * 0.5),
                        ScalarType::Decimal => Value::Decimal(format!("{}.{:02}", n, n % 100)),
                        ScalarType::String => Value::String(format!("row-{i}")),
                        // Microsecond precision so that Parquet round trips stay exact.
                        ScalarType::DateTime => Value::DateTime(1_700_000_000 * TICKS_PER_SECOND + n * 10 * 1_000_003),
                        ScalarType::Timespan => Value::Timespan(n * 10_000_010),
                        ScalarType::Guid => Value::Guid(Uuid::from_u128(0x1234_0000_0000_4000_8000_0000_0000_0000 + i as u128)),
                        ScalarType::Dynamic => Value::Dynamic(serde_json::json!({"i": i, "tags": ["a", i % 3]})),
                    }
                })
                .collect()
        })
        .collect()
}
