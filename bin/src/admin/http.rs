//! The HTTP client of `tunnox admin`: one HTTP/1.1 request per connection (hyper), TLS through
//! rustls for `https` with the certificate verified against the system's roots or `--ca-file`,
//! and the answer's envelope `{success, data, error, code}` unwrapped.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::RootCertStore;
use tokio_rustls::rustls::pki_types::ServerName;
use tunnox_runtime_tokio::tls::{ServerTrust, connector, load_ca_file};

use super::error::AdminError;

/// Largest answer read; a bigger one is refused rather than buffered.
const ANSWER_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The API key. Its `Debug` form does not show it, and no error message contains it.
pub struct ApiKey(String);

impl ApiKey {
    /// A key as given; refused if it cannot travel in an HTTP header.
    pub fn new(key: String, source: &str) -> Result<ApiKey, AdminError> {
        let key = key.trim().to_owned();
        if key.is_empty() {
            return Err(AdminError::Usage(format!(
                "the API key from {source} is empty"
            )));
        }
        if HeaderValue::from_str(&format!("Bearer {key}")).is_err() {
            return Err(AdminError::Usage(format!(
                "the API key from {source} has characters an HTTP header cannot carry"
            )));
        }
        Ok(ApiKey(key))
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<hidden>)")
    }
}

/// Where the API is: `http(s)://host[:port][/prefix]`.
#[derive(Debug, Clone)]
pub struct BaseUrl {
    https: bool,
    /// Host to connect to and to verify, without IPv6 brackets.
    host: String,
    port: u16,
    /// `host[:port]` as written, for the `Host` header.
    authority: String,
    /// Path before `/api/v1`, without a trailing `/`.
    prefix: String,
}

impl BaseUrl {
    /// Parses `URL`; without a scheme, `http://` is assumed.
    pub fn parse(text: &str) -> Result<BaseUrl, AdminError> {
        let bad = |why: &str| AdminError::Usage(format!("API URL {text:?}: {why}"));
        let full = if text.contains("://") {
            text.to_owned()
        } else {
            format!("http://{text}")
        };
        let uri: Uri = full.parse().map_err(|_| bad("not a URL"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad("the scheme must be http or https")),
        };
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad(
                "user information is not accepted; give the key with --key",
            ));
        }
        if uri.query().is_some() {
            return Err(bad("a query is not accepted"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(BaseUrl {
            https,
            host: host.to_owned(),
            port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
            authority: authority.as_str().to_owned(),
            prefix: uri.path().trim_end_matches('/').to_owned(),
        })
    }
}

impl std::fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority, self.prefix)
    }
}

/// A connection to the management API.
pub struct Api {
    base: BaseUrl,
    key: ApiKey,
    tls: Option<TlsConnector>,
    timeout: Duration,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("base", &self.base)
            .field("https", &self.tls.is_some())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Api {
    /// A client of the API at `base`; for https it trusts `ca_file` if given, else the system's
    /// roots.
    pub fn new(
        base: BaseUrl,
        key: ApiKey,
        ca_file: Option<&Path>,
        timeout: Duration,
    ) -> Result<Api, AdminError> {
        let tls = if base.https {
            let roots = match ca_file {
                Some(path) => {
                    load_ca_file(path).map_err(|e| AdminError::Usage(format!("--ca-file: {e}")))?
                }
                None => system_roots()?,
            };
            Some(
                connector(ServerTrust::Roots(roots))
                    .map_err(|e| AdminError::Usage(format!("TLS setup: {e}")))?,
            )
        } else {
            if let Some(path) = ca_file {
                return Err(AdminError::Usage(format!(
                    "a CA file ({}) is given but the API URL {base} is not https",
                    path.display()
                )));
            }
            None
        };
        Ok(Api {
            base,
            key,
            tls,
            timeout,
        })
    }

    /// `METHOD /api/v1PATH` with an optional JSON body: the envelope's `data` (null if absent),
    /// or the API's error.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, AdminError> {
        let target = format!("{}/api/v1{path}", self.base.prefix);
        let exchange = self.exchange(method.clone(), &target, body);
        let (status, retry_after, answer) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
            self.unreachable(format!("no answer within {} s", self.timeout.as_secs()))
        })??;
        decode(&method, path, status, retry_after, &answer)
    }

    fn unreachable(&self, reason: impl std::fmt::Display) -> AdminError {
        AdminError::Unreachable {
            url: self.base.to_string(),
            reason: reason.to_string(),
        }
    }

    /// Connects, sends the request, reads the whole answer.
    async fn exchange(
        &self,
        method: Method,
        target: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Option<String>, Bytes), AdminError> {
        let request = self.request(method, target, body)?;
        let tcp = TcpStream::connect((self.base.host.as_str(), self.base.port))
            .await
            .map_err(|e| self.unreachable(e))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => self.send(TokioIo::new(tcp), request).await,
            Some(tls) => {
                let name = ServerName::try_from(self.base.host.clone()).map_err(|_| {
                    AdminError::Usage(format!("{:?} is not a host name", self.base.host))
                })?;
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| self.unreachable(format!("TLS: {e}")))?;
                self.send(TokioIo::new(stream), request).await
            }
        }
    }

    fn request(
        &self,
        method: Method,
        target: &str,
        body: Option<&Value>,
    ) -> Result<Request<Full<Bytes>>, AdminError> {
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", self.key.0))
            .map_err(|_| AdminError::Usage("the API key cannot travel in a header".into()))?;
        auth.set_sensitive(true);
        let mut builder = Request::builder()
            .method(method)
            .uri(target)
            .header(header::HOST, &self.base.authority)
            .header(header::AUTHORIZATION, auth)
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("tunnox-admin/", env!("CARGO_PKG_VERSION")),
            );
        let payload = match body {
            Some(body) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(body.to_string())
            }
            None => Bytes::new(),
        };
        builder
            .body(Full::new(payload))
            .map_err(|e| AdminError::Usage(format!("cannot build the request for {target}: {e}")))
    }

    async fn send<IO>(
        &self,
        io: IO,
        request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Option<String>, Bytes), AdminError>
    where
        IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| self.unreachable(e))?;
        let driver = tokio::spawn(connection);
        let answer = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| self.unreachable(e))?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = Limited::new(response.into_body(), ANSWER_BYTES_MAX)
                .collect()
                .await
                .map_err(|e| self.unreachable(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok((status, retry_after, body))
        }
        .await;
        driver.abort();
        answer
    }
}

/// The roots of the operating system's trust store.
fn system_roots() -> Result<RootCertStore, AdminError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        return Err(AdminError::Usage(
            "no CA certificates found on this system to verify the API's certificate; \
             pass --ca-file"
                .into(),
        ));
    }
    Ok(roots)
}

/// The envelope of every API answer (`code` repeats the status).
#[derive(Debug, serde::Deserialize)]
struct Envelope {
    success: bool,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    error: Option<String>,
}

/// The answer's `data`, or the error it reports.
fn decode(
    method: &Method,
    path: &str,
    status: StatusCode,
    retry_after: Option<String>,
    answer: &[u8],
) -> Result<Value, AdminError> {
    let envelope = serde_json::from_slice::<Envelope>(answer).ok();
    let api_error = |message: String, field: Option<String>| AdminError::Api {
        status: status.as_u16(),
        method: method.to_string(),
        path: path.to_owned(),
        message,
        field,
        retry_after: retry_after.clone(),
    };
    match envelope {
        Some(envelope) if status.is_success() && envelope.success => {
            Ok(envelope.data.unwrap_or(Value::Null))
        }
        Some(envelope) => {
            let field = envelope
                .data
                .as_ref()
                .and_then(|d| d.get("field"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            let message = envelope
                .error
                .unwrap_or_else(|| "the API gave no reason".into());
            Err(api_error(message, field))
        }
        None if status.is_success() => Err(AdminError::BadAnswer {
            method: method.to_string(),
            path: path.to_owned(),
            reason: "not the JSON envelope {success, data, error, code}".into(),
        }),
        None if matches!(status.as_u16(), 404 | 405) => Err(api_error(
            "this node does not serve this route (is it an older tunnox?)".into(),
            None,
        )),
        None => {
            let text = String::from_utf8_lossy(answer);
            let text: String = text.chars().filter(|c| !c.is_control()).take(200).collect();
            Err(api_error(
                if text.is_empty() {
                    "no explanation".into()
                } else {
                    text
                },
                None,
            ))
        }
    }
}

/// `text` percent-encoded as one path segment or query value.
pub fn encode_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_or_without_scheme_and_keep_a_prefix() {
        let plain = BaseUrl::parse("127.0.0.1:9100").unwrap();
        assert!(!plain.https);
        assert_eq!(plain.to_string(), "http://127.0.0.1:9100");
        let tls = BaseUrl::parse("https://api.example.com/tunnox/").unwrap();
        assert_eq!((tls.port, tls.prefix.as_str()), (443, "/tunnox"));
        let v6 = BaseUrl::parse("http://[::1]:9100").unwrap();
        assert_eq!(
            (v6.host.as_str(), v6.authority.as_str()),
            ("::1", "[::1]:9100")
        );
        for bad in ["ftp://x", "http://user:pw@x", "http://x/?a=b", "http:///"] {
            assert!(BaseUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_envelope_gives_data_or_the_error_with_its_field() {
        let get = Method::GET;
        let ok = br#"{"success":true,"data":{"id":1},"error":null,"code":0}"#;
        let data = decode(&get, "/users/1", StatusCode::OK, None, ok).unwrap();
        assert_eq!(data["id"], 1);
        let bad = br#"{"success":false,"data":{"field":"entry.port"},"error":"port 0","code":400}"#;
        let error = decode(&get, "/mappings", StatusCode::BAD_REQUEST, None, bad).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("400") && text.contains("port 0") && text.contains("entry.port"));
        assert_eq!(error.exit_code(), 4);
        let bare = decode(&get, "/nodes", StatusCode::NOT_FOUND, None, b"").unwrap_err();
        assert!(bare.to_string().contains("does not serve"), "{bare}");
        let odd = decode(&get, "/nodes", StatusCode::OK, None, b"<html>").unwrap_err();
        assert!(matches!(odd, AdminError::BadAnswer { .. }));
        let limited = decode(
            &get,
            "/x",
            StatusCode::TOO_MANY_REQUESTS,
            Some("3".into()),
            b"",
        );
        assert!(limited.unwrap_err().to_string().contains("retry after 3 s"));
    }

    #[test]
    fn components_are_percent_encoded() {
        assert_eq!(encode_component("m-abc_1.~"), "m-abc_1.~");
        assert_eq!(encode_component("a b/c?"), "a%20b%2Fc%3F");
    }

    #[test]
    fn the_key_is_not_in_its_debug_form() {
        let key = ApiKey::new("very-secret-key-123".into(), "--key").unwrap();
        assert!(!format!("{key:?}").contains("secret"));
        assert!(ApiKey::new("a\nb".into(), "--key").is_err());
        assert!(ApiKey::new("  ".into(), "--key").is_err());
    }
}
