//! Who may use `/api/v1`, and how often.
//!
//! - **API keys:** `Authorization: Bearer <key>`. The node keeps only each key's SHA-256 and
//!   compares the presented key's digest with every configured one without an early exit.
//! - **JWTs:** HS256 with a configured secret (at least 32 bytes); `sub` and `exp` are required,
//!   `role` is `admin` or `read` (absent: `read`).
//! - **Roles:** a `read` token may only GET; anything else is 403.
//! - **Rate limit:** per key name or JWT subject (and per address for requests without a valid
//!   token), a token bucket from [`tunnox_core::ratelimit`]; over it is 429 with `Retry-After`.
//! - Missing, malformed, unknown, expired or forged tokens are 401, never anything else.

use std::net::SocketAddr;
use std::sync::Mutex;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tunnox_core::ratelimit::KeyedRateLimit;

use super::{ApiError, ApiState};
use crate::clock::Clock;

/// Shortest JWT secret accepted, in bytes.
pub const JWT_SECRET_MIN_BYTES: usize = 32;
/// Most rate-limit keys remembered.
const RATE_KEYS_MAX: usize = 4096;

/// SHA-256 of an API key, as [`ApiKey::sha256`] holds it.
pub fn key_digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything.
    Admin,
    /// Reads only (GET).
    Read,
}

/// One API key: a name (for logs and the rate limit), its SHA-256 and its role.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// The key's name.
    pub name: String,
    /// SHA-256 of the key.
    pub sha256: [u8; 32],
    /// What it may do.
    pub role: Role,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// Who a request is, once its token checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The key's name, or `jwt:<sub>`.
    pub name: String,
    /// What it may do.
    pub role: Role,
}

/// Bad API auth settings.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthConfigError {
    /// The JWT secret is too short.
    #[error("the JWT secret must be at least {JWT_SECRET_MIN_BYTES} bytes")]
    JwtSecretShort,
    /// A CORS origin is not a valid header value.
    #[error("`{0}` is not a valid CORS origin")]
    CorsOrigin(String),
}

/// Claims of an accepted JWT.
#[derive(Debug, serde::Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    role: Option<Role>,
}

struct Jwt {
    key: jsonwebtoken::DecodingKey,
    validation: jsonwebtoken::Validation,
}

/// Who may use `/api/v1` (see the module docs).
pub struct ApiAuth {
    keys: Vec<ApiKey>,
    jwt: Option<Jwt>,
    limit: Mutex<KeyedRateLimit<String>>,
    clock: Clock,
    cors: Option<CorsLayer>,
}

impl std::fmt::Debug for ApiAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiAuth")
            .field("keys", &self.keys)
            .field("jwt", &self.jwt.is_some())
            .field("cors", &self.cors.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for ApiAuth {
    /// Nobody: every `/api/v1` request is 401.
    fn default() -> ApiAuth {
        ApiAuth::new(Vec::new())
    }
}

/// Requests a key may make at once, and per second after that, unless configured.
pub const RATE_BURST_DEFAULT: u32 = 200;
/// See [`RATE_BURST_DEFAULT`].
pub const RATE_PER_SEC_DEFAULT: u32 = 100;

impl ApiAuth {
    /// These keys, no JWTs, the default rate limit, no CORS.
    pub fn new(keys: Vec<ApiKey>) -> ApiAuth {
        ApiAuth {
            keys,
            jwt: None,
            limit: Mutex::new(KeyedRateLimit::new(
                RATE_BURST_DEFAULT,
                RATE_PER_SEC_DEFAULT,
                RATE_KEYS_MAX,
            )),
            clock: Clock::new(),
            cors: None,
        }
    }

    /// Also accepts HS256 JWTs signed with `secret`.
    pub fn with_jwt_secret(mut self, secret: &[u8]) -> Result<ApiAuth, AuthConfigError> {
        if secret.len() < JWT_SECRET_MIN_BYTES {
            return Err(AuthConfigError::JwtSecretShort);
        }
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 5;
        validation.validate_nbf = true;
        self.jwt = Some(Jwt {
            key: jsonwebtoken::DecodingKey::from_secret(secret),
            validation,
        });
        Ok(self)
    }

    /// Each key may make `burst` requests at once and `per_sec` a second after that.
    pub fn with_rate_limit(mut self, burst: u32, per_sec: u32) -> ApiAuth {
        self.limit = Mutex::new(KeyedRateLimit::new(burst, per_sec, RATE_KEYS_MAX));
        self
    }

    /// Answers browsers from these origins (`*`: any) with CORS headers.
    pub fn with_cors_origins(mut self, origins: &[String]) -> Result<ApiAuth, AuthConfigError> {
        if origins.is_empty() {
            self.cors = None;
            return Ok(self);
        }
        let allow = if origins.iter().any(|o| o == "*") {
            AllowOrigin::any()
        } else {
            let values = origins
                .iter()
                .map(|o| {
                    HeaderValue::from_str(o).map_err(|_| AuthConfigError::CorsOrigin(o.clone()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            AllowOrigin::list(values)
        };
        self.cors = Some(
            CorsLayer::new()
                .allow_origin(allow)
                .allow_methods([
                    Method::GET,
                    Method::POST,
                    Method::PUT,
                    Method::PATCH,
                    Method::DELETE,
                ])
                .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
                .max_age(std::time::Duration::from_secs(600)),
        );
        Ok(self)
    }

    /// The CORS layer, if origins are configured.
    pub(super) fn cors(&self) -> Option<CorsLayer> {
        self.cors.clone()
    }

    /// Who `token` is, if it is a configured key or a valid JWT.
    pub fn identify(&self, token: &str) -> Option<Identity> {
        let digest = key_digest(token);
        // Compare against every key, without an early exit on the first byte that differs.
        let mut found = None;
        for key in &self.keys {
            let differs = digest
                .iter()
                .zip(key.sha256)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if differs == 0 && found.is_none() {
                found = Some(Identity {
                    name: key.name.clone(),
                    role: key.role,
                });
            }
        }
        if found.is_some() {
            return found;
        }
        let jwt = self.jwt.as_ref()?;
        let claims = jsonwebtoken::decode::<Claims>(token, &jwt.key, &jwt.validation).ok()?;
        Some(Identity {
            name: format!("jwt:{}", claims.claims.sub),
            role: claims.claims.role.unwrap_or(Role::Read),
        })
    }

    /// Takes one request from `key`'s budget; `Err` holds whole seconds to wait.
    fn admit(&self, key: String) -> Result<(), u64> {
        let now = self.clock.now();
        let mut limit = self.limit.lock().unwrap_or_else(|e| e.into_inner());
        limit.admit(now, &key).map_err(|wait| {
            u64::try_from(wait.as_millis().div_ceil(1000))
                .unwrap_or(u64::MAX)
                .max(1)
        })
    }
}

/// The token of `Authorization: Bearer <token>` (the scheme name in any case).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// The middleware in front of `/api/v1` (see the module docs).
pub(super) async fn authenticate(
    State(state): State<ApiState>,
    mut request: Request,
    next: Next,
) -> Response {
    let auth = &state.auth;
    let Some(identity) = bearer(request.headers()).and_then(|token| auth.identify(token)) else {
        let addr = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip());
        if let Some(addr) = addr
            && let Err(secs) = auth.admit(format!("addr:{addr}"))
        {
            return ApiError::rate_limited(secs).into_response();
        }
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "a valid API key or token is required",
        )
        .into_response();
    };
    if let Err(secs) = auth.admit(format!("key:{}", identity.name)) {
        return ApiError::rate_limited(secs).into_response();
    }
    let reads = matches!(*request.method(), Method::GET | Method::HEAD);
    if identity.role == Role::Read && !reads {
        return ApiError::new(StatusCode::FORBIDDEN, "this token may only read").into_response();
    }
    request.extensions_mut().insert(identity);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, secret: &str, role: Role) -> ApiKey {
        ApiKey {
            name: name.into(),
            sha256: key_digest(secret),
            role,
        }
    }

    fn jwt(secret: &[u8], claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            claims,
            &jsonwebtoken::EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn in_an_hour() -> u64 {
        crate::clock::wall_now().0 / 1000 + 3600
    }

    #[test]
    fn keys_are_told_apart_by_digest_and_carry_their_role() {
        let auth = ApiAuth::new(vec![
            key("ops", "ops-key-0123456789", Role::Admin),
            key("dash", "dash-key-0123456789", Role::Read),
        ]);
        assert_eq!(
            auth.identify("ops-key-0123456789").unwrap().role,
            Role::Admin
        );
        let dash = auth.identify("dash-key-0123456789").unwrap();
        assert_eq!((dash.name.as_str(), dash.role), ("dash", Role::Read));
        assert_eq!(auth.identify("ops-key-012345678"), None);
        assert_eq!(auth.identify(""), None);
    }

    #[test]
    fn jwts_need_the_secret_an_expiry_and_a_subject() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let auth = ApiAuth::new(Vec::new()).with_jwt_secret(secret).unwrap();
        let good = jwt(
            secret,
            &serde_json::json!({"sub": "ci", "exp": in_an_hour(), "role": "admin"}),
        );
        assert_eq!(
            auth.identify(&good),
            Some(Identity {
                name: "jwt:ci".into(),
                role: Role::Admin
            })
        );
        let reader = jwt(
            secret,
            &serde_json::json!({"sub": "grafana", "exp": in_an_hour()}),
        );
        assert_eq!(auth.identify(&reader).unwrap().role, Role::Read);
        let forged = jwt(
            b"another-secret-another-secret-xx",
            &serde_json::json!({"sub": "ci", "exp": in_an_hour(), "role": "admin"}),
        );
        assert_eq!(auth.identify(&forged), None);
        let expired = jwt(
            secret,
            &serde_json::json!({"sub": "ci", "exp": 1_000_000_000u64}),
        );
        assert_eq!(auth.identify(&expired), None);
        let no_exp = jwt(secret, &serde_json::json!({"sub": "ci"}));
        assert_eq!(auth.identify(&no_exp), None);
        let no_sub = jwt(secret, &serde_json::json!({"exp": in_an_hour()}));
        assert_eq!(auth.identify(&no_sub), None);
        let later = jwt(
            secret,
            &serde_json::json!({"sub": "ci", "exp": in_an_hour(), "nbf": in_an_hour() - 60}),
        );
        assert_eq!(auth.identify(&later), None, "not valid before nbf");
        let bad_role = jwt(
            secret,
            &serde_json::json!({"sub": "x", "exp": in_an_hour(), "role": "root"}),
        );
        assert_eq!(auth.identify(&bad_role), None);
        assert_eq!(auth.identify("not.a.jwt"), None);
    }

    #[test]
    fn short_jwt_secrets_and_bad_origins_are_refused() {
        assert_eq!(
            ApiAuth::new(Vec::new()).with_jwt_secret(b"short").err(),
            Some(AuthConfigError::JwtSecretShort)
        );
        assert!(matches!(
            ApiAuth::new(Vec::new()).with_cors_origins(&["bad\norigin".into()]),
            Err(AuthConfigError::CorsOrigin(_))
        ));
    }
}
