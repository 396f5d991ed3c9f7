//! How the API answers: the envelope `{success, data, error, code}`, errors with their status
//! (and the offending field for validation errors), pagination, and parsing of path ids, query
//! strings and JSON bodies into envelope errors instead of axum's plain-text rejections.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use tunnox_core::control::{ClientId, Code, MappingId, UserId};
use tunnox_core::node::AdminError;

/// The envelope every JSON answer uses.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Envelope<T> {
    /// Whether the request succeeded.
    pub success: bool,
    /// The answer (on errors: `{field}` for validation errors, else null).
    pub data: Option<T>,
    /// What went wrong, for people.
    pub error: Option<String>,
    /// 0 on success, else the HTTP status.
    pub code: u32,
}

/// 200 with `data`.
pub(super) fn ok<T: serde::Serialize>(data: T) -> Response {
    Json(Envelope {
        success: true,
        data: Some(data),
        error: None,
        code: 0,
    })
    .into_response()
}

/// 201 with `data`.
pub(super) fn created<T: serde::Serialize>(data: T) -> Response {
    (StatusCode::CREATED, ok(data)).into_response()
}

/// A failed request: its status, what to say, and which field was wrong.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    field: Option<String>,
    retry_after_secs: Option<u64>,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            field: None,
            retry_after_secs: None,
        }
    }

    /// 400 naming `field`.
    pub(super) fn invalid(field: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            field: Some(field.to_owned()),
            ..ApiError::new(StatusCode::BAD_REQUEST, message)
        }
    }

    /// 404 for `what`.
    pub(super) fn not_found(what: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, format!("no such {what}"))
    }

    /// 503: the node is not running.
    pub(super) fn stopped() -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the node is not running")
    }

    /// 429, retry after `secs`.
    pub(super) fn rate_limited(secs: u64) -> ApiError {
        ApiError {
            retry_after_secs: Some(secs.max(1)),
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too many requests")
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(Envelope {
            success: false,
            data: self
                .field
                .map(|field| serde_json::json!({ "field": field })),
            error: Some(self.message),
            code: u32::from(self.status.as_u16()),
        });
        let mut response = (self.status, body).into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> ApiError {
        use tunnox_core::control::CodeError;
        match e {
            AdminError::Invalid(v) => ApiError::invalid(&v.field.clone(), v.to_string()),
            AdminError::Quota(q) => ApiError::new(StatusCode::FORBIDDEN, q.to_string()),
            AdminError::Conflict(_) | AdminError::InUse(_) => {
                ApiError::new(StatusCode::CONFLICT, e.to_string())
            }
            AdminError::NotFound(what) => ApiError::not_found(what),
            AdminError::Code(CodeError::Invalid(v)) => {
                ApiError::invalid(&v.field.clone(), v.to_string())
            }
            AdminError::Code(CodeError::SelfActivation) => {
                ApiError::invalid("listen_client", e.to_string())
            }
            AdminError::Code(
                CodeError::Expired { .. } | CodeError::AlreadyUsed | CodeError::Revoked { .. },
            ) => ApiError::new(StatusCode::CONFLICT, e.to_string()),
        }
    }
}

/// A JSON body, or a 400 (413 when too large, 415 without a JSON content type) in the envelope.
#[derive(Debug)]
pub(super) struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Body<T>, ApiError> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(body)) => Ok(Body(body)),
            Err(rejection) => Err(body_error(&rejection)),
        }
    }
}

fn body_error(rejection: &JsonRejection) -> ApiError {
    let status = match rejection.status() {
        s @ (StatusCode::PAYLOAD_TOO_LARGE | StatusCode::UNSUPPORTED_MEDIA_TYPE) => s,
        _ => StatusCode::BAD_REQUEST,
    };
    let text = rejection.body_text();
    // serde's path to the offending value, when it names one ("entry.port: invalid …").
    let field = text
        .split_once("target type: ")
        .and_then(|(_, rest)| rest.split_once(": "))
        .map(|(path, _)| path.to_owned())
        .filter(|path| !path.contains(' '));
    ApiError {
        field,
        ..ApiError::new(status, text)
    }
}

/// Query parameters, or a 400 in the envelope.
#[derive(Debug)]
pub(super) struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Query<T>, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(q)| Query(q))
            .map_err(|e: QueryRejection| ApiError::invalid("query", e.body_text()))
    }
}

/// Most items one page holds.
pub const PAGE_LIMIT_MAX: usize = 1000;
/// Items per page unless `limit` says otherwise.
pub const PAGE_LIMIT_DEFAULT: usize = 50;

/// `?offset=&limit=` of a list.
#[derive(Debug, Clone, Copy, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct Page {
    /// Items to skip [0].
    pub offset: Option<usize>,
    /// Items to return, 1-1000 [50].
    pub limit: Option<usize>,
}

/// One page of a list.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Paged<T> {
    /// The page's items.
    pub items: Vec<T>,
    /// Items in the whole list.
    pub total: usize,
    /// Items skipped.
    pub offset: usize,
    /// Most items a page holds.
    pub limit: usize,
}

impl Page {
    /// The page of `items` this asks for (`total` counts them all).
    pub(super) fn of<T>(self, items: impl Iterator<Item = T>) -> Result<Paged<T>, ApiError> {
        let limit = self.limit.unwrap_or(PAGE_LIMIT_DEFAULT);
        if !(1..=PAGE_LIMIT_MAX).contains(&limit) {
            return Err(ApiError::invalid(
                "limit",
                format!("limit must be 1-{PAGE_LIMIT_MAX}"),
            ));
        }
        let offset = self.offset.unwrap_or(0);
        let mut total = 0;
        let mut page = Vec::new();
        for item in items {
            if total >= offset && page.len() < limit {
                page.push(item);
            }
            total += 1;
        }
        Ok(Paged {
            items: page,
            total,
            offset,
            limit,
        })
    }
}

impl<T> Paged<T> {
    /// The same page with each item turned into another.
    pub(super) fn try_map<U>(
        self,
        f: impl FnMut(T) -> Result<U, ApiError>,
    ) -> Result<Paged<U>, ApiError> {
        Ok(Paged {
            items: self.items.into_iter().map(f).collect::<Result<_, _>>()?,
            total: self.total,
            offset: self.offset,
            limit: self.limit,
        })
    }
}

impl<T: Clone> Paged<&T> {
    /// The same page with owned items.
    pub(super) fn cloned(self) -> Paged<T> {
        Paged {
            items: self.items.into_iter().cloned().collect(),
            total: self.total,
            offset: self.offset,
            limit: self.limit,
        }
    }
}

fn number(field: &str, text: &str) -> Result<u64, ApiError> {
    text.parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ApiError::invalid(field, format!("`{text}` is not a {field}")))
}

/// A user id from the path.
pub(super) fn user_id(text: &str) -> Result<UserId, ApiError> {
    number("id", text).map(UserId)
}

/// A client id from the path.
pub(super) fn client_id(text: &str) -> Result<ClientId, ApiError> {
    number("id", text).map(ClientId)
}

/// A mapping id from the path.
pub(super) fn mapping_id(text: &str) -> Result<MappingId, ApiError> {
    MappingId::parse(text).map_err(|e| ApiError::invalid("id", e.to_string()))
}

/// A connection code from the path.
pub(super) fn code(text: &str) -> Result<Code, ApiError> {
    Code::parse(text).map_err(|e| ApiError::invalid("code", e.to_string()))
}
