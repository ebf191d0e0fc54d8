//! The KQL subset: tokenizer, parser, evaluator. See the crate README for what is supported.

pub mod ast;
pub mod eval;
pub mod functions;
pub mod lexer;
pub mod parser;
pub mod xxhash;

/// A query that Kusto would refuse. Syntax and semantic errors are both `BadRequest` answers;
/// the distinction shows in the message, as in Kusto's own errors.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KqlError {
    #[error("Syntax error: {0}")]
    Syntax(String),
    #[error("Semantic error: {0}")]
    Semantic(String),
}

impl KqlError {
    /// A syntax error at a byte offset (turned into Kusto's "Line: n, Position: m").
    pub fn syntax(offset: usize, what: impl Into<String>) -> KqlError {
        KqlError::Syntax(format!("SYN0002: {} (offset {offset})", what.into()))
    }

    pub fn syntax_at(src: &str, offset: usize, what: impl Into<String>) -> KqlError {
        let before = &src[..offset.min(src.len())];
        let line = before.matches('\n').count() + 1;
        let col = offset - before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        KqlError::Syntax(format!("SYN0002: {}. Line: {line}, Position: {col}", what.into()))
    }

    pub fn semantic(what: impl Into<String>) -> KqlError {
        KqlError::Semantic(what.into())
    }

    pub fn is_syntax(&self) -> bool {
        matches!(self, KqlError::Syntax(_))
    }

    pub fn message(&self) -> String {
        self.to_string()
    }
}
