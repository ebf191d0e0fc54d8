//! Tables and their extents: the storage that queries read and commands change.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::value::{ScalarType, Value};

#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub ty: ScalarType,
}

impl Column {
    pub fn new(name: impl Into<String>, ty: ScalarType) -> Column {
        Column { name: name.into(), ty }
    }
}

/// A data shard. Every row keeps its own ingestion time because merges (and
/// `.move ... setNewIngestionTime`) may combine rows ingested at different times.
#[derive(Debug, Clone)]
pub struct Extent {
    pub id: Uuid,
    pub rows: Vec<Vec<Value>>,
    /// `None` where the IngestionTime policy was off: such rows are invisible to cursors.
    pub ingestion_times: Vec<Option<i64>>,
    /// MinCreatedOn / MaxCreatedOn: retention and caching age.
    pub min_created_on: i64,
    pub max_created_on: i64,
    pub tags: Vec<String>,
}

impl Extent {
    pub fn row_count(&self) -> usize {
        self.rows.len()
    }

    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }

    /// Approximate size so that `.show table details` and extents listings have plausible numbers.
    pub fn original_size(&self) -> i64 {
        self.rows
            .iter()
            .flat_map(|r| r.iter())
            .map(|v| match v {
                Value::String(s) | Value::Decimal(s) => s.len() as i64,
                Value::Dynamic(d) => d.to_string().len() as i64,
                Value::Null => 0,
                _ => 8,
            })
            .sum()
    }
}

#[derive(Debug, Clone)]
pub struct Table {
    pub name: String,
    pub columns: Vec<Column>,
    pub folder: String,
    pub docstring: String,
    /// Policies are stored exactly as given (kind in lower case -> JSON) and shown back.
    pub policies: BTreeMap<String, serde_json::Value>,
    pub extents: Vec<Extent>,
}

impl Table {
    pub fn new(name: impl Into<String>, columns: Vec<Column>) -> Table {
        Table {
            name: name.into(),
            columns,
            folder: String::new(),
            docstring: String::new(),
            policies: BTreeMap::new(),
            extents: Vec::new(),
        }
    }

    pub fn row_count(&self) -> usize {
        self.extents.iter().map(Extent::row_count).sum()
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// The CSL schema text `a:string, b:long` as `.show table schema` prints it.
    pub fn csl_schema(&self) -> String {
        self.columns.iter().map(|c| format!("{}:{}", c.name, c.ty)).collect::<Vec<_>>().join(", ")
    }

    /// The JSON schema shown by `.show table T details` and `.show tables details`.
    pub fn json_schema(&self) -> serde_json::Value {
        serde_json::json!({
            "Name": self.name,
            "OrderedColumns": self.columns.iter().map(|c| serde_json::json!({
                "Name": c.name, "Type": format!("System.{}", c.ty.clr_name()), "CslType": c.ty.kql_name()
            })).collect::<Vec<_>>(),
        })
    }

    /// Whether ingestion sets `ingestion_time()`: on unless an IngestionTime policy says otherwise.
    pub fn ingestion_time_enabled(&self) -> bool {
        match self.policies.get("ingestiontime") {
            Some(p) => p.get("IsEnabled").and_then(|v| v.as_bool()).unwrap_or(true),
            None => true,
        }
    }

    /// Whether the simulator may merge this table's extents (merge policy `AllowMerge`).
    pub fn merges_allowed(&self) -> bool {
        match self.policies.get("merge") {
            Some(p) => p.get("AllowMerge").and_then(|v| v.as_bool()).unwrap_or(true),
            None => true,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Database {
    pub name: String,
    pub tables: BTreeMap<String, Table>,
    pub policies: BTreeMap<String, serde_json::Value>,
    /// Materialized views, listed by `.show materialized-views` (the simulator does not
    /// materialize them: kc only needs to know they exist over a table it moves into).
    pub materialized_views: Vec<MaterializedView>,
}

#[derive(Debug, Clone)]
pub struct MaterializedView {
    pub name: String,
    pub source_table: String,
    pub query: String,
    pub is_enabled: bool,
}

impl Database {
    pub fn new(name: impl Into<String>) -> Database {
        Database { name: name.into(), ..Default::default() }
    }
}
