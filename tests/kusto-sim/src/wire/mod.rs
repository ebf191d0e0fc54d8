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

impl RequestIds {
    /// The caller's `x-ms-client-request-id` (or one made up), and a new activity id.
    pub fn from_headers(headers: &axum::http::HeaderMap) -> RequestIds {
        RequestIds {
            client_request_id: headers
                .get("x-ms-client-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .unwrap_or_else(|| format!("KSIM;{}", crate::ids::new_uuid())),
            activity_id: crate::ids::new_uuid().to_string(),
        }
    }
}

/// A row's JSON cells. Kusto strings are never null: a null string is answered as "".
pub fn cells(frame: &crate::kql::eval::Frame, values: &[crate::model::value::Value]) -> Vec<serde_json::Value> {
    values
        .iter()
        .zip(&frame.columns)
        .map(|(v, c)| match v {
            crate::model::value::Value::Null if c.ty == crate::model::value::ScalarType::String => {
                serde_json::Value::String(String::new())
            }
            v => v.to_json(),
        })
        .collect()
}
