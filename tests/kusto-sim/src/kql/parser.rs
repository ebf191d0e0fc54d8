//! Recursive-descent parser for the KQL subset.
//!
//! Precedence, lowest first: `or`, `and`, comparisons and string operators (`==`, `has`, `in`,
//! `between`, ...), `+ -`, `* / %`, unary minus, postfix `.member`.

use super::ast::*;
use super::lexer::{tokenize, Tok, Token};
use super::KqlError;
use crate::model::value::{parse_datetime, parse_timespan, ScalarType, Value};

/// Tabular operators that exist in Kusto but not in the simulator: answering a semantic error
/// (instead of a syntax error) tells the caller the query is valid KQL we do not run.
const UNSUPPORTED_OPERATORS: [&str; 17] = [
    "join", "union", "lookup", "mv-expand", "parse", "top-nested", "render", "evaluate", "sample",
    "sample-distinct", "make-series", "serialize", "as", "invoke", "getschema", "search", "find",
];

pub fn parse_query(src: &str) -> Result<Query, KqlError> {
    let tokens = tokenize(src)?;
    let mut p = Parser { tokens, pos: 0, src };
    let q = p.query()?;
    Ok(q)
}

/// Parses a standalone scalar expression (used by command parsers for `with` values).
pub fn parse_expression(src: &str) -> Result<Expr, KqlError> {
    let tokens = tokenize(src)?;
    let mut p = Parser { tokens, pos: 0, src };
    let e = p.expr()?;
    p.expect_eof()?;
    Ok(e)
}

pub struct Parser<'a> {
    pub tokens: Vec<Token>,
    pub pos: usize,
    pub src: &'a str,
}

impl<'a> Parser<'a> {
    pub fn new(src: &'a str) -> Result<Parser<'a>, KqlError> {
        Ok(Parser { tokens: tokenize(src)?, pos: 0, src })
    }

    pub fn peek(&self) -> &Tok {
        &self.tokens[self.pos].tok
    }

    pub fn peek_at(&self, n: usize) -> &Tok {
        &self.tokens[(self.pos + n).min(self.tokens.len() - 1)].tok
    }

    pub fn offset(&self) -> usize {
        self.tokens[self.pos].start
    }

    pub fn advance(&mut self) -> Tok {
        let t = self.tokens[self.pos].tok.clone();
        if self.pos < self.tokens.len() - 1 {
            self.pos += 1;
        }
        t
    }

    pub fn is_punct(&self, p: &str) -> bool {
        matches!(self.peek(), Tok::Punct(q) if *q == p)
    }

    pub fn is_word(&self, w: &str) -> bool {
        matches!(self.peek(), Tok::Ident(s) if s.eq_ignore_ascii_case(w))
    }

    pub fn eat_punct(&mut self, p: &str) -> bool {
        if self.is_punct(p) {
            self.advance();
            true
        } else {
            false
        }
    }

    pub fn eat_word(&mut self, w: &str) -> bool {
        if self.is_word(w) {
            self.advance();
            true
        } else {
            false
        }
    }

    pub fn error_here(&self, what: impl Into<String>) -> KqlError {
        KqlError::syntax_at(self.src, self.offset(), what)
    }

    pub fn unexpected(&self) -> KqlError {
        let t = &self.tokens[self.pos];
        let text = if matches!(t.tok, Tok::Eof) { "<end of input>".to_string() } else { self.describe(t) };
        KqlError::syntax_at(self.src, t.start, format!("A recognition error occurred. Token: '{text}'"))
    }

    fn describe(&self, t: &Token) -> String {
        match &t.tok {
            Tok::Str { hidden: true, .. } => "h'***'".to_string(),
            _ => self.src[t.start..t.end].to_string(),
        }
    }

    pub fn expect_punct(&mut self, p: &str) -> Result<(), KqlError> {
        if self.eat_punct(p) {
            Ok(())
        } else {
            Err(self.unexpected())
        }
    }

    pub fn expect_word(&mut self, w: &str) -> Result<(), KqlError> {
        if self.eat_word(w) {
            Ok(())
        } else {
            Err(self.unexpected())
        }
    }

    pub fn expect_eof(&mut self) -> Result<(), KqlError> {
        if matches!(self.peek(), Tok::Eof) {
            Ok(())
        } else {
            Err(self.unexpected())
        }
    }

    /// An identifier: a plain word, `['name']` or `["name"]`.
    pub fn name(&mut self) -> Result<String, KqlError> {
        match self.peek().clone() {
            Tok::Ident(s) => {
                self.advance();
                Ok(s)
            }
            Tok::Punct("[") => {
                self.advance();
                let s = match self.advance() {
                    Tok::Str { value, .. } => value,
                    _ => return Err(self.unexpected()),
                };
                self.expect_punct("]")?;
                Ok(s)
            }
            _ => Err(self.unexpected()),
        }
    }

    fn query(&mut self) -> Result<Query, KqlError> {
        let mut lets = Vec::new();
        let mut options = Vec::new();
        let mut parameters = Vec::new();
        loop {
            if self.eat_word("set") {
                let name = self.name()?;
                if self.eat_punct("=") {
                    self.advance();
                }
                self.expect_punct(";")?;
                options.push(name);
                continue;
            }
            if self.eat_word("declare") {
                self.expect_word("query_parameters")?;
                self.expect_punct("(")?;
                loop {
                    let name = self.name()?;
                    self.expect_punct(":")?;
                    let at = self.offset();
                    let ty = match self.advance() {
                        Tok::Ident(t) => ScalarType::parse(&t),
                        _ => None,
                    }
                    .ok_or_else(|| KqlError::syntax_at(self.src, at, "expected a scalar type"))?;
                    let default = if self.eat_punct("=") { Some(self.expr()?) } else { None };
                    parameters.push(QueryParameter { name, ty, default });
                    if !self.eat_punct(",") {
                        break;
                    }
                }
                self.expect_punct(")")?;
                self.expect_punct(";")?;
                continue;
            }
            if self.eat_word("let") {
                let name = self.name()?;
                self.expect_punct("=")?;
                let value = self.let_value()?;
                self.expect_punct(";")?;
                lets.push((name, value));
                continue;
            }
            // Tolerate empty statements (`;;`).
            if self.eat_punct(";") {
                continue;
            }
            break;
        }
        let body = self.pipeline()?;
        while self.eat_punct(";") {}
        self.expect_eof()?;
        Ok(Query { options, parameters, lets, body })
    }

    fn let_value(&mut self) -> Result<LetValue, KqlError> {
        if self.is_word("print") {
            return Ok(LetValue::Tabular(self.pipeline()?));
        }
        let start = self.pos;
        let e = self.expr()?;
        if self.is_punct("|") {
            self.pos = start;
            return Ok(LetValue::Tabular(self.pipeline()?));
        }
        if let Expr::Member(..) = e {
            self.pos = start;
            return Ok(LetValue::Tabular(self.pipeline()?));
        }
        Ok(LetValue::Expr(e))
    }

    pub fn pipeline(&mut self) -> Result<Pipeline, KqlError> {
        let source = self.source()?;
        let mut operators = Vec::new();
        while self.eat_punct("|") {
            operators.push(self.operator()?);
        }
        Ok(Pipeline { source, operators })
    }

    fn source(&mut self) -> Result<Source, KqlError> {
        if self.eat_word("print") {
            let items = self.named_exprs()?;
            return Ok(Source::Print(items));
        }
        if self.eat_punct("(") {
            let inner = self.pipeline()?;
            self.expect_punct(")")?;
            return Ok(Source::Nested(Box::new(inner)));
        }
        let at = self.offset();
        let e = self.postfix()?;
        source_from_expr(e).ok_or_else(|| KqlError::syntax_at(self.src, at, "expected a table reference"))
    }

    fn operator(&mut self) -> Result<Operator, KqlError> {
        let at = self.offset();
        let word = match self.peek().clone() {
            Tok::Ident(w) => w.to_ascii_lowercase(),
            _ => return Err(self.unexpected()),
        };
        self.advance();
        // Dashed operator names: project-away, mv-expand, ...
        let word = if self.is_punct("-") {
            if let Tok::Ident(rest) = self.peek_at(1).clone() {
                self.advance();
                self.advance();
                format!("{word}-{}", rest.to_ascii_lowercase())
            } else {
                word
            }
        } else {
            word
        };
        match word.as_str() {
            "where" | "filter" => Ok(Operator::Where(self.expr()?)),
            "project" => Ok(Operator::Project(self.named_exprs()?)),
            "project-away" => {
                let mut names = vec![self.name()?];
                while self.eat_punct(",") {
                    names.push(self.name()?);
                }
                Ok(Operator::ProjectAway(names))
            }
            "extend" => Ok(Operator::Extend(self.named_exprs()?)),
            "summarize" => {
                let aggregates = if self.is_word("by") { Vec::new() } else { self.named_exprs()? };
                let by = if self.eat_word("by") { self.named_exprs()? } else { Vec::new() };
                if aggregates.is_empty() && by.is_empty() {
                    return Err(self.unexpected());
                }
                Ok(Operator::Summarize { aggregates, by })
            }
            "order" | "sort" => {
                self.expect_word("by")?;
                Ok(Operator::OrderBy(self.sort_keys()?))
            }
            "take" | "limit" => Ok(Operator::Take(self.expr()?)),
            "top" => {
                // `top N by expr [asc|desc] [nulls first|last]` is `order by` then `take`.
                let n = self.expr()?;
                self.expect_word("by")?;
                let keys = self.sort_keys()?;
                Ok(Operator::Top { n, keys })
            }
            "project-rename" => {
                let mut pairs = Vec::new();
                loop {
                    let new = self.name()?;
                    self.expect_punct("=")?;
                    let old = self.name()?;
                    pairs.push((new, old));
                    if !self.eat_punct(",") {
                        break;
                    }
                }
                Ok(Operator::ProjectRename(pairs))
            }
            "count" => Ok(Operator::Count),
            "distinct" => {
                let mut names = vec![self.name()?];
                while self.eat_punct(",") {
                    names.push(self.name()?);
                }
                Ok(Operator::Distinct(names))
            }
            w if UNSUPPORTED_OPERATORS.contains(&w) => {
                Err(KqlError::semantic(format!("SEM0001: operator '{w}' is not supported by kusto-sim")))
            }
            _ => Err(KqlError::syntax_at(self.src, at, format!("A recognition error occurred. Token: '{word}'"))),
        }
    }

    fn sort_keys(&mut self) -> Result<Vec<SortKey>, KqlError> {
        let mut keys = Vec::new();
        loop {
            let expr = self.expr()?;
            let descending = if self.eat_word("asc") {
                false
            } else {
                self.eat_word("desc");
                true
            };
            let mut nulls_first = !descending;
            if self.eat_word("nulls") {
                if self.eat_word("first") {
                    nulls_first = true;
                } else {
                    self.expect_word("last")?;
                    nulls_first = false;
                }
            }
            keys.push(SortKey { expr, descending, nulls_first });
            if !self.eat_punct(",") {
                break;
            }
        }
        Ok(keys)
    }

    fn named_exprs(&mut self) -> Result<Vec<NamedExpr>, KqlError> {
        let mut out = Vec::new();
        loop {
            // `name = expr`, detected by looking ahead for a single `=`.
            let named = matches!(self.peek(), Tok::Ident(_) | Tok::Punct("[")) && {
                let save = self.pos;
                let ok = self.name().is_ok() && self.is_punct("=");
                self.pos = save;
                ok
            };
            if named {
                let name = self.name()?;
                self.expect_punct("=")?;
                out.push(NamedExpr { name: Some(name), expr: self.expr()? });
            } else {
                out.push(NamedExpr { name: None, expr: self.expr()? });
            }
            if !self.eat_punct(",") {
                return Ok(out);
            }
        }
    }

    pub fn expr(&mut self) -> Result<Expr, KqlError> {
        self.or_expr()
    }

    fn or_expr(&mut self) -> Result<Expr, KqlError> {
        let mut left = self.and_expr()?;
        while self.eat_word("or") {
            let right = self.and_expr()?;
            left = Expr::Binary { op: BinOp::Or, left: Box::new(left), right: Box::new(right) };
        }
        Ok(left)
    }

    fn and_expr(&mut self) -> Result<Expr, KqlError> {
        let mut left = self.comparison()?;
        while self.eat_word("and") {
            let right = self.comparison()?;
            left = Expr::Binary { op: BinOp::And, left: Box::new(left), right: Box::new(right) };
        }
        Ok(left)
    }

    fn comparison(&mut self) -> Result<Expr, KqlError> {
        let left = self.additive()?;
        let punct_op = match self.peek() {
            Tok::Punct("==") => Some(BinOp::Eq),
            Tok::Punct("!=") | Tok::Punct("<>") => Some(BinOp::Ne),
            Tok::Punct("<") => Some(BinOp::Lt),
            Tok::Punct("<=") => Some(BinOp::Le),
            Tok::Punct(">") => Some(BinOp::Gt),
            Tok::Punct(">=") => Some(BinOp::Ge),
            Tok::Punct("=~") => Some(BinOp::EqCi),
            Tok::Punct("!~") => Some(BinOp::NeCi),
            _ => None,
        };
        if let Some(op) = punct_op {
            self.advance();
            let right = self.additive()?;
            return Ok(Expr::Binary { op, left: Box::new(left), right: Box::new(right) });
        }
        let negated = if self.is_punct("!") && matches!(self.peek_at(1), Tok::Ident(_)) {
            self.advance();
            true
        } else {
            false
        };
        let word = match self.peek() {
            Tok::Ident(w) => w.to_ascii_lowercase(),
            _ if negated => return Err(self.unexpected()),
            _ => return Ok(left),
        };
        let str_op = match word.as_str() {
            "has" => Some(StrOp::Has),
            "has_cs" => Some(StrOp::HasCs),
            "contains" => Some(StrOp::Contains),
            "contains_cs" => Some(StrOp::ContainsCs),
            "startswith" => Some(StrOp::StartsWith),
            "endswith" => Some(StrOp::EndsWith),
            _ => None,
        };
        if let Some(op) = str_op {
            self.advance();
            let right = self.additive()?;
            return Ok(Expr::Binary { op: BinOp::Str { op, negated }, left: Box::new(left), right: Box::new(right) });
        }
        match word.as_str() {
            "in" => {
                self.advance();
                self.expect_punct("(")?;
                let mut list = Vec::new();
                if !self.is_punct(")") {
                    loop {
                        list.push(self.expr()?);
                        if !self.eat_punct(",") {
                            break;
                        }
                    }
                }
                self.expect_punct(")")?;
                Ok(Expr::In { expr: Box::new(left), list, negated })
            }
            "between" => {
                self.advance();
                self.expect_punct("(")?;
                let low = self.additive()?;
                self.expect_punct("..")?;
                let high = self.additive()?;
                self.expect_punct(")")?;
                Ok(Expr::Between { expr: Box::new(left), low: Box::new(low), high: Box::new(high), negated })
            }
            _ if negated => Err(self.unexpected()),
            _ => Ok(left),
        }
    }

    fn additive(&mut self) -> Result<Expr, KqlError> {
        let mut left = self.multiplicative()?;
        loop {
            let op = match self.peek() {
                Tok::Punct("+") => BinOp::Add,
                Tok::Punct("-") => BinOp::Sub,
                _ => return Ok(left),
            };
            self.advance();
            let right = self.multiplicative()?;
            left = Expr::Binary { op, left: Box::new(left), right: Box::new(right) };
        }
    }

    fn multiplicative(&mut self) -> Result<Expr, KqlError> {
        let mut left = self.unary()?;
        loop {
            let op = match self.peek() {
                Tok::Punct("*") => BinOp::Mul,
                Tok::Punct("/") => BinOp::Div,
                Tok::Punct("%") => BinOp::Mod,
                _ => return Ok(left),
            };
            self.advance();
            let right = self.unary()?;
            left = Expr::Binary { op, left: Box::new(left), right: Box::new(right) };
        }
    }

    fn unary(&mut self) -> Result<Expr, KqlError> {
        if self.eat_punct("-") {
            let inner = self.unary()?;
            return Ok(match inner {
                Expr::Literal(Value::Long(v), t) => Expr::Literal(Value::Long(-v), t),
                Expr::Literal(Value::Real(v), t) => Expr::Literal(Value::Real(-v), t),
                Expr::Literal(Value::Timespan(v), t) => Expr::Literal(Value::Timespan(-v), t),
                other => Expr::Neg(Box::new(other)),
            });
        }
        if self.eat_punct("+") {
            return self.unary();
        }
        self.postfix()
    }

    fn postfix(&mut self) -> Result<Expr, KqlError> {
        let mut e = self.primary()?;
        while self.is_punct(".") {
            self.advance();
            let member = self.name()?;
            e = Expr::Member(Box::new(e), member);
        }
        Ok(e)
    }

    fn primary(&mut self) -> Result<Expr, KqlError> {
        let at = self.offset();
        match self.peek().clone() {
            Tok::Int(v) => {
                self.advance();
                Ok(Expr::Literal(Value::Long(v), ScalarType::Long))
            }
            Tok::Real(v) => {
                self.advance();
                Ok(Expr::Literal(Value::Real(v), ScalarType::Real))
            }
            Tok::Timespan(v) => {
                self.advance();
                Ok(Expr::Literal(Value::Timespan(v), ScalarType::Timespan))
            }
            Tok::Str { value, .. } => {
                self.advance();
                // Adjacent string literals concatenate, as in KQL.
                let mut s = value;
                while let Tok::Str { value, .. } = self.peek().clone() {
                    self.advance();
                    s.push_str(&value);
                }
                Ok(Expr::Literal(Value::String(s), ScalarType::String))
            }
            Tok::TypedLiteral { ty, text } => {
                self.advance();
                typed_literal(&ty, &text).ok_or_else(|| {
                    KqlError::syntax_at(self.src, at, format!("invalid {ty} literal: '{ty}({text})'"))
                })
            }
            Tok::Punct("(") => {
                self.advance();
                let e = self.expr()?;
                self.expect_punct(")")?;
                Ok(e)
            }
            Tok::Punct("[") => Ok(Expr::Name(self.name()?)),
            Tok::Ident(word) => {
                self.advance();
                let lower = word.to_ascii_lowercase();
                match lower.as_str() {
                    "true" => return Ok(Expr::Literal(Value::Bool(true), ScalarType::Bool)),
                    "false" => return Ok(Expr::Literal(Value::Bool(false), ScalarType::Bool)),
                    _ => {}
                }
                if self.eat_punct("(") {
                    let mut args = Vec::new();
                    if !self.is_punct(")") {
                        loop {
                            args.push(self.expr()?);
                            if !self.eat_punct(",") {
                                break;
                            }
                        }
                    }
                    self.expect_punct(")")?;
                    return Ok(Expr::Call { name: lower, args });
                }
                Ok(Expr::Name(word))
            }
            _ => Err(self.unexpected()),
        }
    }
}

/// Turns a parsed primary into a tabular source: `T`, `['T']`, `database('d').T`, `table('T')`.
fn source_from_expr(e: Expr) -> Option<Source> {
    match e {
        Expr::Name(name) => Some(Source::Named { database: None, name }),
        Expr::Call { name, args } if name == "table" && args.len() == 1 => match &args[0] {
            Expr::Literal(Value::String(t), _) => Some(Source::Named { database: None, name: t.clone() }),
            _ => None,
        },
        Expr::Member(base, member) => match *base {
            Expr::Call { name, args } if name == "database" && args.len() == 1 => match &args[0] {
                Expr::Literal(Value::String(d), _) => Some(Source::Named { database: Some(d.clone()), name: member }),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

/// The value of `datetime(...)`, `timespan(...)`, `guid(...)`, `dynamic(...)`, `long(...)`, ...
fn typed_literal(ty: &str, text: &str) -> Option<Expr> {
    let st = ScalarType::parse(ty)?;
    if text.eq_ignore_ascii_case("null") {
        return Some(Expr::Literal(Value::Null, st));
    }
    let v = match st {
        ScalarType::DateTime => Value::DateTime(parse_datetime(text)?),
        ScalarType::Timespan => Value::Timespan(parse_timespan(text)?),
        ScalarType::Dynamic => Value::Dynamic(serde_json::from_str(text).ok()?),
        _ => crate::model::value::parse_text(st, text).ok()?,
    };
    Some(Expr::Literal(v, st))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lets_sources_and_operators() {
        let q = parse_query(
            "let since = ago(1d); let src = database('db').['My Table'] | where ts > since; \
             src | where a in ('x', 'y') and not(b between (1 .. 5)) | project a, c = b * 2 \
             | summarize count(), max(c) by bin(ts, 1h) | order by a asc | take 10",
        )
        .unwrap();
        assert_eq!(q.lets.len(), 2);
        match &q.lets[1].1 {
            LetValue::Tabular(p) => {
                assert_eq!(p.source, Source::Named { database: Some("db".into()), name: "My Table".into() })
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(q.body.operators.len(), 5);
        assert!(matches!(q.body.operators[3], Operator::OrderBy(ref k) if !k[0].descending && k[0].nulls_first));
    }

    #[test]
    fn options_and_query_parameters() {
        let q = parse_query("set notruncation; declare query_parameters(t: string, n: long = 5); T | where a == t | take n").unwrap();
        assert_eq!(q.options, vec!["notruncation".to_string()]);
        assert_eq!(q.parameters.len(), 2);
        assert_eq!(q.parameters[1].default, Some(Expr::Literal(Value::Long(5), ScalarType::Long)));
        assert!(parse_query("declare query_parameters(t: nosuchtype); T").is_err());
    }

    #[test]
    fn precedence_binds_and_tighter_than_or() {
        let e = parse_expression("a == 1 or b == 2 and c == 3").unwrap();
        match e {
            Expr::Binary { op: BinOp::Or, right, .. } => assert!(matches!(*right, Expr::Binary { op: BinOp::And, .. })),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn negated_string_operators() {
        let e = parse_expression("tags !has 'x'").unwrap();
        assert!(matches!(e, Expr::Binary { op: BinOp::Str { op: StrOp::Has, negated: true }, .. }));
        let e = parse_expression("x !in (1, 2)").unwrap();
        assert!(matches!(e, Expr::In { negated: true, .. }));
    }

    #[test]
    fn syntax_errors_and_unsupported_operators() {
        let e = parse_query("T | where").unwrap_err();
        assert!(e.is_syntax(), "{e:?}");
        let e = parse_query("T | frobnicate").unwrap_err();
        assert!(e.is_syntax() && e.message().contains("frobnicate"), "{e:?}");
        let q = parse_query("T | top 3 by a desc | project-rename b = a").unwrap();
        assert!(matches!(q.body.operators[0], Operator::Top { .. }));
        let e = parse_query("T | join (U) on a").unwrap_err();
        assert!(!e.is_syntax() && e.message().contains("join"), "{e:?}");
        assert!(parse_query("T | where a == datetime(not a date)").is_err());
        assert!(parse_query("T T").is_err());
    }
}
