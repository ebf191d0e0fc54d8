//! Evaluates a parsed query over in-memory tables.
//!
//! Every operator first derives its output schema from its input schema and checks its
//! expressions' types, so that a wrong query fails as a whole with a semantic error (as Kusto
//! does) instead of producing rows; then it computes rows.

use std::collections::HashMap;

use uuid::Uuid;

use super::ast::*;
use super::functions::{self, has_term, CallContext, AGGREGATES};
use super::KqlError;
use crate::model::table::Column;
use crate::model::value::{compare, ScalarType, Value};

/// The hidden per-row facts that `ingestion_time()`, `extent_id()` and `extent_tags()` read.
#[derive(Debug, Clone, PartialEq)]
pub struct RowMeta {
    pub ingestion_time: Option<i64>,
    pub extent_id: Uuid,
    /// Shared by all rows of an extent.
    pub extent_tags: std::sync::Arc<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub values: Vec<Value>,
    pub meta: Option<RowMeta>,
}

/// A typed, in-memory result.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub columns: Vec<Column>,
    pub rows: Vec<Row>,
    /// Whether rows still carry table metadata (false after summarize, count, print, ...).
    pub has_meta: bool,
}

impl Frame {
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    pub fn values(&self) -> Vec<Vec<Value>> {
        self.rows.iter().map(|r| r.values.clone()).collect()
    }
}

/// Where queries find tables.
pub trait Catalog {
    /// The rows of a table, or `None` when it does not exist.
    fn table(&self, database: Option<&str>, name: &str) -> Result<Option<Frame>, KqlError>;

    /// The rows of a table for which `keep` holds. `keep` sees each row's metadata only (its
    /// values are empty): a scan that filters on ingestion time or cursors copies just the
    /// rows it keeps, which is what makes block exports of a large table affordable.
    fn scan(&self, database: Option<&str>, name: &str, keep: &mut dyn FnMut(&Row) -> bool) -> Result<Option<Frame>, KqlError> {
        Ok(self.table(database, name)?.map(|mut f| {
            f.rows.retain(|r| keep(&Row { values: vec![], meta: r.meta.clone() }));
            f
        }))
    }
}

pub struct Env<'a> {
    pub catalog: &'a dyn Catalog,
    pub now: i64,
    pub cursor_current: String,
    /// Request `Parameters` (name -> value text) for `declare query_parameters`.
    pub parameters: HashMap<String, String>,
}

impl<'a> Env<'a> {
    pub fn new(catalog: &'a dyn Catalog, now: i64, cursor_current: String) -> Env<'a> {
        Env { catalog, now, cursor_current, parameters: HashMap::new() }
    }
}

pub fn run_query(src: &str, env: &Env<'_>) -> Result<Frame, KqlError> {
    let query = super::parser::parse_query(src)?;
    run(&query, env)
}

struct Bindings {
    scalars: HashMap<String, (Value, ScalarType)>,
    tabular: HashMap<String, Frame>,
}

pub fn run(query: &Query, env: &Env<'_>) -> Result<Frame, KqlError> {
    let mut b = Bindings { scalars: HashMap::new(), tabular: HashMap::new() };
    for p in &query.parameters {
        let value = match (env.parameters.get(&p.name), &p.default) {
            (Some(text), _) => parameter_value(&p.name, p.ty, text)?,
            (None, Some(default)) => {
                let empty = Frame { columns: vec![], rows: vec![], has_meta: false };
                let scope = Scope { frame: &empty, b: &b, op: "declare" };
                infer(default, &scope)?;
                coerce(eval(default, &scope, &Row { values: vec![], meta: None }, env), p.ty)
            }
            (None, None) => {
                return Err(KqlError::semantic(format!(
                    "SEM0100: query parameter '{}' was declared but no value was given",
                    p.name
                )))
            }
        };
        b.scalars.insert(p.name.clone(), (value, p.ty));
    }
    for (name, value) in &query.lets {
        match value {
            LetValue::Tabular(p) => {
                let f = pipeline(p, env, &b)?;
                b.tabular.insert(name.clone(), f);
            }
            LetValue::Expr(Expr::Name(n)) if !b.scalars.contains_key(n) => {
                // `let x = T;` binds a table.
                let f = source(&Source::Named { database: None, name: n.clone() }, env, &b)?;
                b.tabular.insert(name.clone(), f);
            }
            LetValue::Expr(e) => {
                let empty = Frame { columns: vec![], rows: vec![], has_meta: false };
                let scope = Scope { frame: &empty, b: &b, op: "let" };
                let ty = infer(e, &scope)?;
                let v = eval(e, &scope, &Row { values: vec![], meta: None }, env);
                b.scalars.insert(name.clone(), (v, ty));
            }
        }
    }
    pipeline(&query.body, env, &b)
}

/// A request parameter's value: a KQL literal of the declared type (`datetime(...)`, `42`),
/// or, for strings, the text itself.
fn parameter_value(name: &str, ty: ScalarType, text: &str) -> Result<Value, KqlError> {
    if let Ok(Expr::Literal(v, t)) = super::parser::parse_expression(text) {
        if t == ty || (v.is_null()) {
            return Ok(v);
        }
        if ty != ScalarType::String {
            let c = coerce(v, ty);
            if !c.is_null() {
                return Ok(c);
            }
        }
    }
    if ty == ScalarType::String {
        return Ok(Value::String(text.to_string()));
    }
    crate::model::value::parse_text(ty, text)
        .map_err(|e| KqlError::semantic(format!("SEM0100: query parameter '{name}': {e}")))
}

fn pipeline(p: &Pipeline, env: &Env<'_>, b: &Bindings) -> Result<Frame, KqlError> {
    let (mut frame, rest) = match scan_with_meta_filters(p, env, b)? {
        Some((frame, skipped)) => (frame, &p.operators[skipped..]),
        None => (source(&p.source, env, b)?, &p.operators[..]),
    };
    for op in rest {
        frame = operator(op, frame, env, b)?;
    }
    Ok(frame)
}

/// A table source followed by `where`s that read only row metadata (ingestion time, cursors,
/// extent id or tags) and constants: run those filters during the scan, so only kept rows are
/// copied out of the table. Same answer as running them as operators; `None` when the pipeline
/// does not start that way.
fn scan_with_meta_filters(p: &Pipeline, env: &Env<'_>, b: &Bindings) -> Result<Option<(Frame, usize)>, KqlError> {
    let Source::Named { database, name } = &p.source else { return Ok(None) };
    if database.is_none() && b.tabular.contains_key(name) {
        return Ok(None);
    }
    let preds: Vec<&Expr> = p
        .operators
        .iter()
        .map_while(|op| match op {
            Operator::Where(e) if reads_only_meta(e, b) => Some(e),
            _ => None,
        })
        .collect();
    if preds.is_empty() {
        return Ok(None);
    }
    // Type-check against the table's columns, exactly as the `where` operator would.
    let Some(columns) = env.catalog.scan(database.as_deref(), name, &mut |_| false)?.map(|f| f.columns) else {
        return Ok(None); // let `source` report the missing table
    };
    let empty = Frame { columns, rows: vec![], has_meta: true };
    let scope = Scope { frame: &empty, b, op: "where" };
    for pred in &preds {
        let ty = infer(pred, &scope)?;
        if ty != ScalarType::Bool {
            return Err(KqlError::semantic(format!("SEM0012: 'where' operator: the predicate must be of type bool, not '{ty}'")));
        }
    }
    let mut keep = |row: &Row| preds.iter().all(|pred| eval(pred, &scope, row, env) == Value::Bool(true));
    let frame = env.catalog.scan(database.as_deref(), name, &mut keep)?.expect("the table existed a moment ago");
    Ok(Some((frame, preds.len())))
}

fn reads_only_meta(e: &Expr, b: &Bindings) -> bool {
    match e {
        Expr::Literal(..) => true,
        Expr::Name(n) => b.scalars.contains_key(n),
        Expr::Member(..) => false,
        Expr::Call { args, .. } => args.iter().all(|a| reads_only_meta(a, b)),
        Expr::Neg(x) => reads_only_meta(x, b),
        Expr::Binary { left, right, .. } => reads_only_meta(left, b) && reads_only_meta(right, b),
        Expr::In { expr, list, .. } => reads_only_meta(expr, b) && list.iter().all(|x| reads_only_meta(x, b)),
        Expr::Between { expr, low, high, .. } => reads_only_meta(expr, b) && reads_only_meta(low, b) && reads_only_meta(high, b),
    }
}

fn source(s: &Source, env: &Env<'_>, b: &Bindings) -> Result<Frame, KqlError> {
    match s {
        Source::Named { database: None, name } if b.tabular.contains_key(name) => Ok(b.tabular[name].clone()),
        Source::Named { database, name } => env.catalog.table(database.as_deref(), name)?.ok_or_else(|| {
            KqlError::semantic(format!("SEM0100: 'table' operator: Failed to resolve table expression named '{name}'"))
        }),
        Source::Nested(p) => pipeline(p, env, b),
        Source::Print(items) => {
            let empty = Frame { columns: vec![], rows: vec![], has_meta: false };
            let scope = Scope { frame: &empty, b, op: "print" };
            let mut columns = Vec::new();
            let mut values = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let ty = infer(&item.expr, &scope)?;
                let name = item.name.clone().unwrap_or_else(|| format!("print_{i}"));
                columns.push(Column::new(name, ty));
                values.push(coerce(eval(&item.expr, &scope, &Row { values: vec![], meta: None }, env), ty));
            }
            check_unique(&columns, "print")?;
            Ok(Frame { columns, rows: vec![Row { values, meta: None }], has_meta: false })
        }
    }
}

fn check_unique(columns: &[Column], op: &str) -> Result<(), KqlError> {
    for (i, c) in columns.iter().enumerate() {
        if columns[..i].iter().any(|d| d.name == c.name) {
            return Err(KqlError::semantic(format!("SEM0025: '{op}' operator: A column named '{}' already exists", c.name)));
        }
    }
    Ok(())
}

fn constant_long(e: &Expr, b: &Bindings, op: &str) -> Result<i64, KqlError> {
    match e {
        Expr::Literal(Value::Long(n), _) => Ok(*n),
        Expr::Name(n) => match b.scalars.get(n) {
            Some((Value::Long(v), _)) => Ok(*v),
            Some((Value::Int(v), _)) => Ok(*v as i64),
            _ => Err(KqlError::semantic(format!("SEM0100: '{op}' operator: expected a constant number of rows"))),
        },
        _ => Err(KqlError::semantic(format!("SEM0100: '{op}' operator: expected a constant number of rows"))),
    }
}

fn operator(op: &Operator, input: Frame, env: &Env<'_>, b: &Bindings) -> Result<Frame, KqlError> {
    match op {
        Operator::Where(pred) => {
            let scope = Scope { frame: &input, b, op: "where" };
            let ty = infer(pred, &scope)?;
            if ty != ScalarType::Bool {
                return Err(KqlError::semantic(format!(
                    "SEM0012: 'where' operator: the predicate must be of type bool, not '{ty}'"
                )));
            }
            let keep: Vec<bool> =
                input.rows.iter().map(|r| eval(pred, &scope, r, env) == Value::Bool(true)).collect();
            let mut out = input;
            let mut it = keep.into_iter();
            out.rows.retain(|_| it.next().unwrap_or(false));
            Ok(out)
        }
        Operator::Extend(items) | Operator::Project(items) => {
            let is_project = matches!(op, Operator::Project(_));
            let op_name = if is_project { "project" } else { "extend" };
            let scope = Scope { frame: &input, b, op: op_name };
            let mut columns = if is_project { Vec::new() } else { input.columns.clone() };
            // For each output column: Some(expr) computed, None means "copy input column".
            let mut sources: Vec<Result<usize, &Expr>> =
                if is_project { Vec::new() } else { (0..input.columns.len()).map(Ok).collect() };
            let mut auto = 0;
            for item in items {
                let ty = infer(&item.expr, &scope)?;
                let name = match (&item.name, &item.expr) {
                    (Some(n), _) => n.clone(),
                    (None, Expr::Name(n)) => n.clone(),
                    _ => {
                        auto += 1;
                        format!("Column{auto}")
                    }
                };
                let src = match (&item.name, &item.expr) {
                    (None, Expr::Name(n)) if input.column_index(n).is_some() => Ok(input.column_index(n).unwrap()),
                    _ => Err(&item.expr),
                };
                match columns.iter().position(|c: &Column| c.name == name) {
                    Some(i) if !is_project => {
                        columns[i] = Column::new(name, ty);
                        sources[i] = src;
                    }
                    Some(_) => {
                        return Err(KqlError::semantic(format!(
                            "SEM0025: 'project' operator: A column named '{name}' already exists"
                        )))
                    }
                    None => {
                        columns.push(Column::new(name, ty));
                        sources.push(src);
                    }
                }
            }
            let rows = input
                .rows
                .iter()
                .map(|r| Row {
                    values: sources
                        .iter()
                        .zip(&columns)
                        .map(|(s, c)| match s {
                            Ok(i) => r.values[*i].clone(),
                            Err(e) => coerce(eval(e, &scope, r, env), c.ty),
                        })
                        .collect(),
                    meta: r.meta.clone(),
                })
                .collect();
            Ok(Frame { columns, rows, has_meta: input.has_meta })
        }
        Operator::ProjectAway(names) => {
            for n in names {
                if input.column_index(n).is_none() {
                    return Err(unresolved("project-away", n));
                }
            }
            let keep: Vec<usize> =
                (0..input.columns.len()).filter(|i| !names.contains(&input.columns[*i].name)).collect();
            Ok(Frame {
                columns: keep.iter().map(|i| input.columns[*i].clone()).collect(),
                rows: input
                    .rows
                    .iter()
                    .map(|r| Row { values: keep.iter().map(|i| r.values[*i].clone()).collect(), meta: r.meta.clone() })
                    .collect(),
                has_meta: input.has_meta,
            })
        }
        Operator::Take(n) => {
            let n = constant_long(n, b, "take")?.max(0) as usize;
            let mut out = input;
            out.rows.truncate(n);
            Ok(out)
        }
        Operator::Count => Ok(Frame {
            columns: vec![Column::new("Count", ScalarType::Long)],
            rows: vec![Row { values: vec![Value::Long(input.rows.len() as i64)], meta: None }],
            has_meta: false,
        }),
        Operator::Distinct(names) => {
            let mut idx = Vec::new();
            for n in names {
                idx.push(input.column_index(n).ok_or_else(|| unresolved("distinct", n))?);
            }
            let mut seen = HashMap::new();
            let mut rows = Vec::new();
            for r in &input.rows {
                let key: Vec<Value> = idx.iter().map(|i| r.values[*i].clone()).collect();
                let k = format!("{key:?}");
                if seen.insert(k, ()).is_none() {
                    rows.push(Row { values: key, meta: None });
                }
            }
            Ok(Frame { columns: idx.iter().map(|i| input.columns[*i].clone()).collect(), rows, has_meta: false })
        }
        Operator::Top { n, keys } => {
            let sorted = operator(&Operator::OrderBy(keys.clone()), input, env, b)?;
            operator(&Operator::Take(n.clone()), sorted, env, b)
        }
        Operator::ProjectRename(pairs) => {
            let mut out = input;
            for (new, old) in pairs {
                let i = out.column_index(old).ok_or_else(|| unresolved("project-rename", old))?;
                out.columns[i].name = new.clone();
            }
            check_unique(&out.columns, "project-rename")?;
            Ok(out)
        }
        Operator::OrderBy(keys) => {
            let scope = Scope { frame: &input, b, op: "order by" };
            for k in keys {
                infer(&k.expr, &scope)?;
            }
            let mut keyed: Vec<(Vec<Value>, Row)> = input
                .rows
                .iter()
                .map(|r| (keys.iter().map(|k| eval(&k.expr, &scope, r, env)).collect(), r.clone()))
                .collect();
            keyed.sort_by(|(a, _), (b, _)| {
                for (i, k) in keys.iter().enumerate() {
                    let (x, y) = (&a[i], &b[i]);
                    let ord = match (x.is_null(), y.is_null()) {
                        (true, true) => std::cmp::Ordering::Equal,
                        (true, false) => if k.nulls_first { std::cmp::Ordering::Less } else { std::cmp::Ordering::Greater },
                        (false, true) => if k.nulls_first { std::cmp::Ordering::Greater } else { std::cmp::Ordering::Less },
                        _ => {
                            let o = compare(x, y);
                            if k.descending { o.reverse() } else { o }
                        }
                    };
                    if ord != std::cmp::Ordering::Equal {
                        return ord;
                    }
                }
                std::cmp::Ordering::Equal
            });
            Ok(Frame { columns: input.columns.clone(), rows: keyed.into_iter().map(|(_, r)| r).collect(), has_meta: input.has_meta })
        }
        Operator::Summarize { aggregates, by } => summarize(aggregates, by, input, env, b),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum AggKind {
    Count,
    CountIf,
    Sum,
    Min,
    Max,
    DCount,
    Avg,
    TakeAny,
    MakeSet,
    MakeList,
}

fn summarize(
    aggregates: &[NamedExpr],
    by: &[NamedExpr],
    input: Frame,
    env: &Env<'_>,
    b: &Bindings,
) -> Result<Frame, KqlError> {
    let scope = Scope { frame: &input, b, op: "summarize" };
    let mut columns = Vec::new();
    let mut auto = 0;
    for item in by {
        let ty = infer(&item.expr, &scope)?;
        let name = match (&item.name, &item.expr) {
            (Some(n), _) => n.clone(),
            (None, Expr::Name(n)) => n.clone(),
            (None, Expr::Call { name, args }) if (name == "bin" || name == "floor") && matches!(args.first(), Some(Expr::Name(_))) => {
                match &args[0] {
                    Expr::Name(n) => n.clone(),
                    _ => unreachable!(),
                }
            }
            _ => {
                auto += 1;
                format!("Column{auto}")
            }
        };
        columns.push(Column::new(name, ty));
    }
    let mut aggs: Vec<(AggKind, Option<&Expr>, ScalarType)> = Vec::new();
    for item in aggregates {
        let Expr::Call { name, args } = &item.expr else {
            return Err(KqlError::semantic(
                "SEM0001: 'summarize' operator: kusto-sim supports only plain aggregate calls (count(), sum(x), ...)",
            ));
        };
        if !AGGREGATES.contains(&name.as_str()) {
            return Err(KqlError::semantic(format!(
                "SEM0001: 'summarize' operator: '{name}' is not an aggregate supported by kusto-sim"
            )));
        }
        let kind = match name.as_str() {
            "count" => AggKind::Count,
            "countif" => AggKind::CountIf,
            "sum" => AggKind::Sum,
            "min" => AggKind::Min,
            "max" => AggKind::Max,
            "dcount" => AggKind::DCount,
            "avg" => AggKind::Avg,
            "make_set" => AggKind::MakeSet,
            "make_list" => AggKind::MakeList,
            _ => AggKind::TakeAny,
        };
        let expected_args = if kind == AggKind::Count { 0 } else { 1 };
        if args.len() != expected_args {
            return Err(KqlError::semantic(format!(
                "SEM0219: aggregate '{name}': expected {expected_args} argument(s), got {}",
                args.len()
            )));
        }
        let arg = args.first();
        let arg_ty = match arg {
            Some(a) => Some(infer(a, &scope)?),
            None => None,
        };
        let ty = match (kind, arg_ty) {
            (AggKind::Count, _) | (AggKind::DCount, _) => ScalarType::Long,
            (AggKind::CountIf, Some(ScalarType::Bool)) => ScalarType::Long,
            (AggKind::CountIf, Some(t)) => {
                return Err(KqlError::semantic(format!("SEM0219: countif expects a bool predicate, not '{t}'")))
            }
            (AggKind::Sum, Some(t)) => match t {
                ScalarType::Int | ScalarType::Long | ScalarType::Bool => ScalarType::Long,
                ScalarType::Real | ScalarType::Timespan | ScalarType::Decimal => t,
                ScalarType::Dynamic => ScalarType::Real,
                _ => return Err(KqlError::semantic(format!("SEM0219: sum() cannot add values of type '{t}'"))),
            },
            (AggKind::MakeSet | AggKind::MakeList, _) => ScalarType::Dynamic,
            (AggKind::Avg, Some(t)) if t.is_numeric() || t == ScalarType::Dynamic => ScalarType::Real,
            (AggKind::Avg, Some(t)) => {
                return Err(KqlError::semantic(format!("SEM0219: avg() cannot average values of type '{t}'")))
            }
            (_, Some(t)) => t,
            (_, None) => ScalarType::Long,
        };
        let base = match arg {
            Some(Expr::Name(n)) => format!("{name}_{n}"),
            _ => format!("{name}_"),
        };
        let col_name = item.name.clone().unwrap_or(base);
        columns.push(Column::new(col_name, ty));
        aggs.push((kind, arg, ty));
    }
    check_unique(&columns, "summarize")?;

    // Group rows, keeping first-seen group order.
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut groups: Vec<(Vec<Value>, Vec<&Row>)> = Vec::new();
    for r in &input.rows {
        let key: Vec<Value> = by.iter().zip(&columns).map(|(e, c)| coerce(eval(&e.expr, &scope, r, env), c.ty)).collect();
        let k = format!("{key:?}");
        let i = *index.entry(k).or_insert_with(|| {
            groups.push((key.clone(), Vec::new()));
            groups.len() - 1
        });
        groups[i].1.push(r);
    }
    if by.is_empty() && groups.is_empty() {
        groups.push((Vec::new(), Vec::new()));
    }
    let rows = groups
        .into_iter()
        .map(|(key, members)| {
            let mut values = key;
            for (kind, arg, ty) in &aggs {
                let vals: Vec<Value> = match arg {
                    Some(a) => members.iter().map(|r| eval(a, &scope, r, env)).collect(),
                    None => Vec::new(),
                };
                values.push(aggregate(*kind, members.len(), vals, *ty));
            }
            Row { values, meta: None }
        })
        .collect();
    Ok(Frame { columns, rows, has_meta: false })
}

fn aggregate(kind: AggKind, n: usize, vals: Vec<Value>, ty: ScalarType) -> Value {
    let non_null = || vals.iter().filter(|v| !v.is_null());
    match kind {
        AggKind::Count => Value::Long(n as i64),
        AggKind::CountIf => Value::Long(vals.iter().filter(|v| **v == Value::Bool(true)).count() as i64),
        AggKind::DCount => {
            let mut seen: Vec<String> = non_null().map(|v| format!("{v:?}")).collect();
            seen.sort();
            seen.dedup();
            Value::Long(seen.len() as i64)
        }
        AggKind::Min => non_null().min_by(|a, b| compare(a, b)).cloned().unwrap_or(Value::Null),
        AggKind::Max => non_null().max_by(|a, b| compare(a, b)).cloned().unwrap_or(Value::Null),
        AggKind::TakeAny => non_null().next().cloned().unwrap_or(Value::Null),
        AggKind::MakeList => Value::Dynamic(serde_json::Value::Array(non_null().map(Value::to_json).collect())),
        AggKind::MakeSet => {
            let mut out: Vec<serde_json::Value> = Vec::new();
            for v in non_null().map(Value::to_json) {
                if !out.contains(&v) {
                    out.push(v);
                }
            }
            Value::Dynamic(serde_json::Value::Array(out))
        }
        AggKind::Sum => match ty {
            ScalarType::Long => Value::Long(non_null().map(|v| match v {
                Value::Bool(b) => *b as i64,
                v => v.as_i64().unwrap_or(0),
            }).fold(0i64, |a, x| a.wrapping_add(x))),
            ScalarType::Timespan => Value::Timespan(non_null().map(|v| if let Value::Timespan(t) = v { *t } else { 0 }).sum()),
            ScalarType::Decimal => Value::Decimal(format!("{}", non_null().filter_map(Value::as_f64).sum::<f64>())),
            _ => Value::Real(non_null().filter_map(Value::as_f64).sum()),
        },
        AggKind::Avg => {
            let xs: Vec<f64> = non_null().filter_map(Value::as_f64).collect();
            if xs.is_empty() {
                Value::Null
            } else {
                Value::Real(xs.iter().sum::<f64>() / xs.len() as f64)
            }
        }
    }
}

/// Makes a computed value fit the column type decided by inference (int literals are long).
fn coerce(v: Value, ty: ScalarType) -> Value {
    if v.is_null() || v.scalar_type() == Some(ty) {
        return v;
    }
    functions::convert(&v, ty)
}

struct Scope<'a> {
    frame: &'a Frame,
    b: &'a Bindings,
    op: &'static str,
}

fn unresolved(op: &str, name: &str) -> KqlError {
    KqlError::semantic(format!("SEM0100: '{op}' operator: Failed to resolve scalar expression named '{name}'"))
}

fn infer(e: &Expr, s: &Scope<'_>) -> Result<ScalarType, KqlError> {
    use ScalarType::*;
    match e {
        Expr::Literal(_, t) => Ok(*t),
        Expr::Name(n) => {
            if let Some(i) = s.frame.column_index(n) {
                return Ok(s.frame.columns[i].ty);
            }
            if let Some((_, t)) = s.b.scalars.get(n) {
                return Ok(*t);
            }
            Err(unresolved(s.op, n))
        }
        Expr::Member(..) => Err(KqlError::semantic(format!(
            "SEM0001: '{}' operator: member access is not supported by kusto-sim",
            s.op
        ))),
        Expr::Call { name, args } => {
            let tys = args.iter().map(|a| infer(a, s)).collect::<Result<Vec<_>, _>>()?;
            functions::return_type(name, &tys, s.frame.has_meta).map_err(|e| match e {
                KqlError::Semantic(m) => KqlError::Semantic(format!("'{}' operator: {m}", s.op)),
                other => other,
            })
        }
        Expr::Neg(inner) => {
            let t = infer(inner, s)?;
            if t.is_numeric() || t == Timespan {
                Ok(t)
            } else {
                Err(KqlError::semantic(format!("SEM0219: cannot negate a value of type '{t}'")))
            }
        }
        Expr::In { expr, list, .. } => {
            let t = infer(expr, s)?;
            for item in list {
                let u = infer(item, s)?;
                comparable(t, u, "in")?;
            }
            Ok(Bool)
        }
        Expr::Between { expr, low, high, .. } => {
            let t = infer(expr, s)?;
            let l = infer(low, s)?;
            let h = infer(high, s)?;
            comparable(t, l, "between")?;
            if !(t == DateTime && h == Timespan) {
                comparable(t, h, "between")?;
            }
            Ok(Bool)
        }
        Expr::Binary { op, left, right } => {
            let l = infer(left, s)?;
            let r = infer(right, s)?;
            binary_type(*op, l, r)
        }
    }
}

fn comparable(a: ScalarType, b: ScalarType, op: &str) -> Result<(), KqlError> {
    use ScalarType::*;
    let ok = a == b || (a.is_numeric() && b.is_numeric()) || a == Dynamic || b == Dynamic;
    if ok {
        Ok(())
    } else {
        Err(KqlError::semantic(format!(
            "SEM0220: Cannot compare values of types {a} and {b} with '{op}'. Try adding explicit casts"
        )))
    }
}

fn binary_type(op: BinOp, l: ScalarType, r: ScalarType) -> Result<ScalarType, KqlError> {
    use ScalarType::*;
    let num = |a: ScalarType, b: ScalarType| -> Option<ScalarType> {
        if a == Decimal || b == Decimal {
            return None;
        }
        if a.is_numeric() && b.is_numeric() {
            Some(if a == Real || b == Real { Real } else if a == Long || b == Long { Long } else { Int })
        } else {
            None
        }
    };
    let bad = |sym: &str| {
        KqlError::semantic(format!("SEM0219: operator '{sym}' is not defined for types '{l}' and '{r}'"))
    };
    match op {
        BinOp::Add => match (l, r) {
            (DateTime, Timespan) | (Timespan, DateTime) => Ok(DateTime),
            (Timespan, Timespan) => Ok(Timespan),
            _ => num(l, r).ok_or_else(|| bad("+")),
        },
        BinOp::Sub => match (l, r) {
            (DateTime, DateTime) => Ok(Timespan),
            (DateTime, Timespan) => Ok(DateTime),
            (Timespan, Timespan) => Ok(Timespan),
            _ => num(l, r).ok_or_else(|| bad("-")),
        },
        BinOp::Mul => match (l, r) {
            (Timespan, t) | (t, Timespan) if t.is_numeric() && t != Decimal => Ok(Timespan),
            _ => num(l, r).ok_or_else(|| bad("*")),
        },
        BinOp::Div => match (l, r) {
            (Timespan, Timespan) => Ok(Real),
            (Timespan, t) if t.is_numeric() && t != Decimal => Ok(Timespan),
            _ => num(l, r).ok_or_else(|| bad("/")),
        },
        BinOp::Mod => match num(l, r) {
            Some(Real) | None => Err(bad("%")),
            Some(t) => Ok(t),
        },
        BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
            comparable(l, r, "comparison")?;
            Ok(Bool)
        }
        BinOp::EqCi | BinOp::NeCi => {
            if (l == String || l == Dynamic) && (r == String || r == Dynamic) {
                Ok(Bool)
            } else {
                Err(bad("=~"))
            }
        }
        BinOp::And | BinOp::Or => {
            if (l == Bool || l == Dynamic) && (r == Bool || r == Dynamic) {
                Ok(Bool)
            } else {
                Err(bad(if op == BinOp::And { "and" } else { "or" }))
            }
        }
        BinOp::Str { .. } => {
            if r == String || r == Dynamic {
                Ok(Bool)
            } else {
                Err(bad("has/contains"))
            }
        }
    }
}

fn eval(e: &Expr, s: &Scope<'_>, row: &Row, env: &Env<'_>) -> Value {
    match e {
        Expr::Literal(v, _) => v.clone(),
        Expr::Name(n) => match s.frame.column_index(n) {
            Some(i) => row.values.get(i).cloned().unwrap_or(Value::Null),
            None => s.b.scalars.get(n).map(|(v, _)| v.clone()).unwrap_or(Value::Null),
        },
        Expr::Member(..) => Value::Null,
        Expr::Call { name, args } => {
            let vals: Vec<Value> = args.iter().map(|a| eval(a, s, row, env)).collect();
            let ctx = CallContext {
                ingestion_time: row.meta.as_ref().and_then(|m| m.ingestion_time),
                extent_id: row.meta.as_ref().map(|m| m.extent_id),
                extent_tags: row.meta.as_ref().map(|m| m.extent_tags.as_slice()),
                has_row_meta: row.meta.is_some(),
                now: env.now,
                cursor_current: &env.cursor_current,
            };
            functions::call(name, &vals, &ctx)
        }
        Expr::Neg(inner) => match eval(inner, s, row, env) {
            Value::Int(v) => Value::Int(v.wrapping_neg()),
            Value::Long(v) => Value::Long(v.wrapping_neg()),
            Value::Real(v) => Value::Real(-v),
            Value::Timespan(v) => Value::Timespan(-v),
            _ => Value::Null,
        },
        Expr::In { expr, list, negated } => {
            let v = eval(expr, s, row, env);
            if v.is_null() {
                return Value::Bool(*negated);
            }
            let found = list.iter().any(|item| equal(&v, &eval(item, s, row, env)));
            Value::Bool(found != *negated)
        }
        Expr::Between { expr, low, high, negated } => {
            let v = eval(expr, s, row, env);
            let lo = eval(low, s, row, env);
            let mut hi = eval(high, s, row, env);
            if let (Value::DateTime(l), Value::Timespan(h)) = (&lo, &hi) {
                hi = Value::DateTime(l + h);
            }
            if v.is_null() || lo.is_null() || hi.is_null() {
                return Value::Null;
            }
            let inside = compare(&v, &lo) != std::cmp::Ordering::Less && compare(&v, &hi) != std::cmp::Ordering::Greater;
            Value::Bool(inside != *negated)
        }
        Expr::Binary { op, left, right } => {
            let l = eval(left, s, row, env);
            // Short-circuit logic keeps Kusto's null semantics simple: null is not true.
            match op {
                BinOp::And => {
                    if l == Value::Bool(false) {
                        return Value::Bool(false);
                    }
                    let r = eval(right, s, row, env);
                    return match (l, r) {
                        (Value::Bool(true), Value::Bool(b)) => Value::Bool(b),
                        (_, Value::Bool(false)) => Value::Bool(false),
                        _ => Value::Null,
                    };
                }
                BinOp::Or => {
                    if l == Value::Bool(true) {
                        return Value::Bool(true);
                    }
                    let r = eval(right, s, row, env);
                    return match (l, r) {
                        (Value::Bool(false), Value::Bool(b)) => Value::Bool(b),
                        (_, Value::Bool(true)) => Value::Bool(true),
                        _ => Value::Null,
                    };
                }
                _ => {}
            }
            let r = eval(right, s, row, env);
            binary(*op, l, r)
        }
    }
}

fn equal(a: &Value, b: &Value) -> bool {
    !a.is_null() && !b.is_null() && compare(a, b) == std::cmp::Ordering::Equal
}

fn binary(op: BinOp, l: Value, r: Value) -> Value {
    use std::cmp::Ordering::*;
    use Value as V;
    if let BinOp::Str { op: sop, negated } = op {
        let hay = functions::to_text(&l);
        let needle = functions::to_text(&r);
        let hit = match sop {
            StrOp::Has => has_term(&hay, &needle, false),
            StrOp::HasCs => has_term(&hay, &needle, true),
            StrOp::Contains => hay.to_lowercase().contains(&needle.to_lowercase()),
            StrOp::ContainsCs => hay.contains(&needle),
            StrOp::StartsWith => hay.to_lowercase().starts_with(&needle.to_lowercase()),
            StrOp::EndsWith => hay.to_lowercase().ends_with(&needle.to_lowercase()),
        };
        return V::Bool(hit != negated);
    }
    if l.is_null() || r.is_null() {
        // Kusto: comparisons with null are false; arithmetic with null is null.
        return match op {
            BinOp::Eq | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge | BinOp::EqCi => V::Bool(false),
            BinOp::Ne | BinOp::NeCi => V::Bool(!(l.is_null() && r.is_null())),
            _ => V::Null,
        };
    }
    match op {
        BinOp::Eq => V::Bool(compare(&l, &r) == Equal),
        BinOp::Ne => V::Bool(compare(&l, &r) != Equal),
        BinOp::Lt => V::Bool(compare(&l, &r) == Less),
        BinOp::Le => V::Bool(compare(&l, &r) != Greater),
        BinOp::Gt => V::Bool(compare(&l, &r) == Greater),
        BinOp::Ge => V::Bool(compare(&l, &r) != Less),
        BinOp::EqCi => V::Bool(functions::to_text(&l).to_lowercase() == functions::to_text(&r).to_lowercase()),
        BinOp::NeCi => V::Bool(functions::to_text(&l).to_lowercase() != functions::to_text(&r).to_lowercase()),
        BinOp::Add => match (l, r) {
            (V::DateTime(a), V::Timespan(b)) | (V::Timespan(b), V::DateTime(a)) => V::DateTime(a + b),
            (V::Timespan(a), V::Timespan(b)) => V::Timespan(a + b),
            (a, b) => arith(a, b, i64::checked_add, |x, y| x + y),
        },
        BinOp::Sub => match (l, r) {
            (V::DateTime(a), V::DateTime(b)) => V::Timespan(a - b),
            (V::DateTime(a), V::Timespan(b)) => V::DateTime(a - b),
            (V::Timespan(a), V::Timespan(b)) => V::Timespan(a - b),
            (a, b) => arith(a, b, i64::checked_sub, |x, y| x - y),
        },
        BinOp::Mul => match (l, r) {
            (V::Timespan(t), n) | (n, V::Timespan(t)) => V::Timespan((t as f64 * n.as_f64().unwrap_or(0.0)) as i64),
            (a, b) => arith(a, b, i64::checked_mul, |x, y| x * y),
        },
        BinOp::Div => match (l, r) {
            (V::Timespan(a), V::Timespan(b)) => {
                if b == 0 { V::Null } else { V::Real(a as f64 / b as f64) }
            }
            (V::Timespan(t), n) => match n.as_f64() {
                Some(d) if d != 0.0 => V::Timespan((t as f64 / d) as i64),
                _ => V::Null,
            },
            (a, b) => arith(a, b, i64::checked_div, |x, y| x / y),
        },
        BinOp::Mod => arith(l, r, i64::checked_rem, |x, y| x % y),
        _ => V::Null,
    }
}

fn arith(a: Value, b: Value, int_op: fn(i64, i64) -> Option<i64>, real_op: fn(f64, f64) -> f64) -> Value {
    match (&a, &b) {
        (Value::Real(_), _) | (_, Value::Real(_)) => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => Value::Real(real_op(x, y)),
            _ => Value::Null,
        },
        (Value::Int(x), Value::Int(y)) => {
            int_op(*x as i64, *y as i64).and_then(|v| i32::try_from(v).ok()).map(Value::Int).unwrap_or(Value::Null)
        }
        _ => match (a.as_i64(), b.as_i64()) {
            (Some(x), Some(y)) => int_op(x, y).map(Value::Long).unwrap_or(Value::Null),
            _ => Value::Null,
        },
    }
}
