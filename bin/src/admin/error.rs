//! What can go wrong in `tunnox admin`, and the exit code each failure gets.

/// A failed `tunnox admin` command. Never carries the API key.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// A flag, the config file or a body file does not make sense; nothing was sent.
    #[error("{0}")]
    Usage(String),
    /// The API could not be reached (connection, TLS, timeout).
    #[error("cannot reach the API at {url}: {reason}")]
    Unreachable {
        /// The base URL tried.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The API answered with an error.
    #[error("{}", api_message(*.status, .method, .path, .message, .field.as_deref(), .retry_after.as_deref()))]
    Api {
        /// The HTTP status.
        status: u16,
        /// The request's method.
        method: String,
        /// The request's path.
        path: String,
        /// The envelope's `error`, or a description of a non-envelope answer.
        message: String,
        /// The offending field of a validation error (`data.field`).
        field: Option<String>,
        /// `Retry-After` of a 429.
        retry_after: Option<String>,
    },
    /// The API answered something that is not the JSON envelope it promises.
    #[error("unexpected answer to {method} {path}: {reason}")]
    BadAnswer {
        /// The request's method.
        method: String,
        /// The request's path.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn api_message(
    status: u16,
    method: &str,
    path: &str,
    message: &str,
    field: Option<&str>,
    retry_after: Option<&str>,
) -> String {
    let mut text = format!(
        "{method} {path}: {status} {}: {message}",
        status_name(status)
    );
    if let Some(field) = field {
        text.push_str(&format!(" (field: {field})"));
    }
    if let Some(secs) = retry_after {
        text.push_str(&format!(" (retry after {secs} s)"));
    }
    text
}

fn status_name(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

impl AdminError {
    /// The process exit code: 2 usage, 3 unreachable, 4 invalid request (400), 5 unauthorized
    /// (401), 6 forbidden (403), 7 not found (404), 8 conflict (409), 9 rate limited (429),
    /// 1 anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            AdminError::Usage(_) => 2,
            AdminError::Unreachable { .. } => 3,
            AdminError::Api { status, .. } => match status {
                400 => 4,
                401 => 5,
                403 => 6,
                404 => 7,
                409 => 8,
                429 => 9,
                _ => 1,
            },
            AdminError::BadAnswer { .. } => 1,
        }
    }
}
