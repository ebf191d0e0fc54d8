//! The syntax tree of the KQL subset.

use crate::model::value::{ScalarType, Value};

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Literal(Value, ScalarType),
    /// A bare name: a column, a scalar `let`, or (in tabular position) a table or tabular `let`.
    Name(String),
    /// `database('d').T`: only meaningful as a tabular source.
    Member(Box<Expr>, String),
    Call { name: String, args: Vec<Expr> },
    Neg(Box<Expr>),
    Binary { op: BinOp, left: Box<Expr>, right: Box<Expr> },
    In { expr: Box<Expr>, list: Vec<Expr>, negated: bool },
    Between { expr: Box<Expr>, low: Box<Expr>, high: Box<Expr>, negated: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// `=~` and `!~`: case-insensitive string equality.
    EqCi,
    NeCi,
    And,
    Or,
    /// String operators: `negated` forms are `!has`, `!contains`, ...
    Str { op: StrOp, negated: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrOp {
    Has,
    HasCs,
    Contains,
    ContainsCs,
    StartsWith,
    EndsWith,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NamedExpr {
    pub name: Option<String>,
    pub expr: Expr,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SortKey {
    pub expr: Expr,
    pub descending: bool,
    pub nulls_first: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Operator {
    Where(Expr),
    Project(Vec<NamedExpr>),
    ProjectAway(Vec<String>),
    Extend(Vec<NamedExpr>),
    Summarize { aggregates: Vec<NamedExpr>, by: Vec<NamedExpr> },
    OrderBy(Vec<SortKey>),
    Take(Expr),
    /// `top N by keys`: sort, then take.
    Top { n: Expr, keys: Vec<SortKey> },
    /// `project-rename new = old, ...`.
    ProjectRename(Vec<(String, String)>),
    Count,
    Distinct(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A table or tabular `let`, resolved at evaluation.
    Named { database: Option<String>, name: String },
    Print(Vec<NamedExpr>),
    Nested(Box<Pipeline>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    pub source: Source,
    pub operators: Vec<Operator>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum LetValue {
    /// A scalar expression, or a bare name that may turn out to be a table.
    Expr(Expr),
    Tabular(Pipeline),
}

/// `declare query_parameters(name: type [= default], ...)`.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryParameter {
    pub name: String,
    pub ty: crate::model::value::ScalarType,
    pub default: Option<Expr>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// `set name [= value];` request options, accepted and ignored (the simulator never
    /// truncates results, so e.g. `set notruncation;` changes nothing).
    pub options: Vec<String>,
    pub parameters: Vec<QueryParameter>,
    pub lets: Vec<(String, LetValue)>,
    pub body: Pipeline,
}
