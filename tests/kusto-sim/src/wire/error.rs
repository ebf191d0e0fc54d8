//! Kusto's error answer: `{"error": {"code", "message", "@type", "@message", "@context",
//! "@permanent"}}` with the HTTP status that goes with it. This is the one error type of the
//! HTTP boundary; everything the engine refuses becomes one of these.

use serde_json::json;

use crate::kql::KqlError;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{status} {code}: {detail}")]
pub struct KustoError {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub type_name: String,
    pub detail: String,
    pub permanent: bool,
}

impl KustoError {
    fn new(status: u16, code: &str, message: &str, type_name: &str, detail: String, permanent: bool) -> KustoError {
        KustoError {
            status,
            code: code.into(),
            message: message.into(),
            type_name: type_name.into(),
            detail,
            permanent,
        }
    }

    /// A request Kusto refuses to run: syntax, semantics, bad arguments (400, permanent).
    pub fn bad_request(detail: impl Into<String>) -> KustoError {
        KustoError::new(
            400,
            "General_BadRequest",
            "Request is invalid and cannot be executed.",
            "Kusto.Data.Exceptions.KustoBadRequestException",
            format!("Request is invalid and cannot be processed: {}", detail.into()),
            true,
        )
    }

    /// A named entity (database, table, operation, extent) that does not exist (400 in Kusto).
    pub fn not_found(kind: &str, name: &str) -> KustoError {
        KustoError::new(
            400,
            &format!("BadRequest_{kind}NotFound"),
            "Request is invalid and cannot be executed.",
            &format!("Kusto.Data.Exceptions.{kind}NotFoundException"),
            format!("{kind} '{name}' was not found."),
            true,
        )
    }

    pub fn entity_exists(kind: &str, name: &str) -> KustoError {
        KustoError::new(
            400,
            "BadRequest_EntityAlreadyExists",
            "Request is invalid and cannot be executed.",
            "Kusto.Data.Exceptions.EntityAlreadyExistsException",
            format!("{kind} '{name}' already exists."),
            true,
        )
    }

    pub fn unauthorized(detail: impl Into<String>) -> KustoError {
        KustoError::new(
            401,
            "Unauthorized",
            "The request is unauthorized.",
            "Kusto.DataNode.Exceptions.UnauthorizedDatabaseAccessException",
            detail.into(),
            true,
        )
    }

    /// The principal may not run this command (403, permanent): `.show capacity` needs
    /// AllDatabasesMonitor, for example.
    pub fn forbidden(detail: impl Into<String>) -> KustoError {
        KustoError::new(
            403,
            "Forbidden",
            "The request is forbidden.",
            "Kusto.DataNode.Exceptions.UnauthorizedAccessException",
            detail.into(),
            true,
        )
    }

    /// Throttling: transient, the caller should back off (429).
    pub fn throttled(detail: impl Into<String>) -> KustoError {
        KustoError::new(
            429,
            "General_ThrottledRequest",
            "The request was throttled.",
            "Kusto.DataNode.Exceptions.ControlCommandThrottledException",
            detail.into(),
            false,
        )
    }

    /// A transient service failure (5xx, not permanent).
    pub fn transient(status: u16, detail: impl Into<String>) -> KustoError {
        KustoError::new(
            status,
            "General_InternalServerError",
            "Something went wrong processing your request.",
            "Kusto.Common.Svc.Exceptions.ServiceTransientException",
            detail.into(),
            false,
        )
    }

    /// The error a query reports inside a 200 answer when it fails part-way.
    pub fn partial_query_failure(detail: impl Into<String>) -> KustoError {
        KustoError::new(
            200,
            "LimitsExceeded",
            "Request is invalid and cannot be executed.",
            "Kusto.Data.Exceptions.KustoServicePartialQueryFailureLimitsExceededException",
            detail.into(),
            false,
        )
    }

    pub fn internal(detail: impl Into<String>) -> KustoError {
        KustoError::new(
            500,
            "General_InternalServerError",
            "Something went wrong processing your request.",
            "Kusto.Common.Svc.Exceptions.InternalServerException",
            detail.into(),
            true,
        )
    }

    /// The JSON body, with the request's identifiers in `@context`.
    pub fn body(&self, client_request_id: &str, activity_id: &str) -> serde_json::Value {
        json!({
            "error": {
                "code": self.code,
                "message": self.message,
                "@type": self.type_name,
                "@message": self.detail,
                "@context": {
                    "timestamp": crate::model::value::format_datetime(crate::model::value::ticks_from_offset_datetime(time::OffsetDateTime::now_utc())),
                    "serviceAlias": "KUSTO-SIM",
                    "machineName": "KSim000000",
                    "processName": "kusto-sim",
                    "processId": std::process::id(),
                    "clientRequestId": client_request_id,
                    "activityId": activity_id,
                    "activityType": "KD.RestQuery",
                },
                "@permanent": self.permanent,
            }
        })
    }
}

impl From<KqlError> for KustoError {
    fn from(e: KqlError) -> KustoError {
        // Kusto reports both kinds as KustoBadRequestException; the message says which.
        KustoError::bad_request(e.to_string())
    }
}
