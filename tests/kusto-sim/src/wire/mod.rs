//! The REST wire formats: v1 (management commands), v2 (queries) and errors.

pub mod error;
pub mod v1;
pub mod v2;

/// Identifiers of one request, echoed in answers and error contexts.
#[derive(Debug, Clone)]
pub struct RequestIds {
    pub client_request_id: String,
    pub activity_id: String,
}
