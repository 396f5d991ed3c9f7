//! [`StorageServer`]: the `StorageService` over any [`Storage`], with authentication and limits.
//!
//! Every request is authenticated first (see [`super::auth`]), then checked against the limits —
//! an empty or oversized key, an oversized value, too many keys or elements — which answer
//! `InvalidArgument` before the store is touched. Store errors answer the status of
//! [`super::status::to_status`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};
use tunnox_core::storage::Versioned;
use tunnox_proto::Message;
use tunnox_proto::storage::storage_service_server::{StorageService, StorageServiceServer};
use tunnox_proto::storage::{
    BoolResponse, CompareAndSwapRequest, CountResponse, ExpireRequest, IncrRequest,
    IntegerResponse, KeyRequest, KeyValue, KeysRequest, ListPushRequest, ListRangeRequest,
    ListRangeResponse, OptionalValue, PingRequest, PingResponse, ScanPrefixRequest,
    ScanPrefixResponse, SetManyRequest, SetRequest, SetResponse, TtlResponse, ValueResponse,
    ValuesResponse, VersionedResponse,
};

use super::auth::{AUTH_HEADER, AuthError, StorageToken, Verifier};
use super::status::to_status;
use super::ttl_from_ms;
use crate::storage::{Storage, StorageError};

/// Requests one connection may have in flight at once.
const STREAMS_PER_CONNECTION_MAX: u32 = 1024;

/// What a storage server accepts.
#[derive(Debug, Clone)]
pub struct StorageServerConfig {
    /// The shared secret every request must be signed with.
    pub token: StorageToken,
    /// How far a request's timestamp may be from the server's clock (default 10 s).
    pub clock_window: Duration,
    /// Longest key in bytes (default 1 KiB).
    pub key_bytes_max: usize,
    /// Largest value or list element in bytes (default 1 MiB).
    pub value_bytes_max: usize,
    /// Most keys in one batch, entries in one scan, elements in one list range (default 1000).
    pub items_max: usize,
    /// Largest request message in bytes, batches included (default 16 MiB).
    pub request_bytes_max: usize,
    /// Largest answer in bytes (scans, batches, list ranges; default 16 MiB).
    pub response_bytes_max: usize,
}

impl StorageServerConfig {
    /// The defaults, with `token`.
    pub fn new(token: StorageToken) -> StorageServerConfig {
        StorageServerConfig {
            token,
            clock_window: Duration::from_secs(10),
            key_bytes_max: 1024,
            value_bytes_max: 1024 * 1024,
            items_max: 1000,
            request_bytes_max: 16 * 1024 * 1024,
            response_bytes_max: 16 * 1024 * 1024,
        }
    }
}

/// The `StorageService` over a [`Storage`] `S`.
#[derive(Debug)]
pub struct StorageServer<S> {
    store: Arc<S>,
    verifier: Verifier,
    config: StorageServerConfig,
}

/// Why a storage server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listening address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS certificate or key was refused, or serving failed.
    #[error("storage server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// A PEM certificate chain and its private key, to serve with TLS.
#[derive(Clone)]
pub struct ServerTls {
    /// The certificate chain (PEM).
    pub cert_pem: Vec<u8>,
    /// Its private key (PEM).
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls { .. }")
    }
}

fn invalid(reason: impl Into<String>) -> Status {
    Status::invalid_argument(reason)
}

fn status(error: StorageError) -> Status {
    to_status(&error)
}

fn versioned(answer: Versioned) -> VersionedResponse {
    VersionedResponse {
        version: answer.version,
        value: answer.value,
    }
}

impl<S: Storage + 'static> StorageServer<S> {
    /// A server of `store` accepting what `config` allows.
    pub fn new(store: S, config: StorageServerConfig) -> StorageServer<S> {
        StorageServer {
            store: Arc::new(store),
            verifier: Verifier::new(config.token.clone(), config.clock_window),
            config,
        }
    }

    /// The tonic service, with the message size limits set.
    pub fn into_service(self) -> StorageServiceServer<StorageServer<S>> {
        let request_bytes_max = self.config.request_bytes_max;
        let response_bytes_max = self.config.response_bytes_max;
        StorageServiceServer::new(self)
            .max_decoding_message_size(request_bytes_max)
            .max_encoding_message_size(response_bytes_max)
    }

    /// Serves on `listen` until `shutdown` completes; with `tls`, only over TLS.
    pub async fn serve(
        self,
        listen: SocketAddr,
        tls: Option<ServerTls>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| ServeError::Bind {
                addr: listen,
                source,
            })?;
        self.serve_on(listener, tls, shutdown).await
    }

    /// Serves on a bound `listener` until `shutdown` completes.
    pub async fn serve_on(
        self,
        listener: tokio::net::TcpListener,
        tls: Option<ServerTls>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        // Bounded work per connection: requests beyond the limit wait for a stream.
        let mut builder = Server::builder()
            .tcp_nodelay(true)
            .max_concurrent_streams(Some(STREAMS_PER_CONNECTION_MAX));
        if let Some(tls) = tls {
            let identity = Identity::from_pem(tls.cert_pem, tls.key_pem);
            builder = builder.tls_config(ServerTlsConfig::new().identity(identity))?;
        }
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        builder
            .add_service(self.into_service())
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await?;
        Ok(())
    }

    /// Authenticates `request` for `method`; its message.
    fn admit<'r, T: Message>(
        &self,
        request: &'r Request<T>,
        method: &str,
    ) -> Result<&'r T, Status> {
        let header = request
            .metadata()
            .get(AUTH_HEADER)
            .and_then(|value| value.to_str().ok());
        let message = request.get_ref();
        self.verifier
            .verify(
                header,
                method,
                &message.encode_to_vec(),
                crate::clock::wall_now().0,
            )
            .map_err(|e| match e {
                // Not the caller's fault: it may retry.
                AuthError::Overloaded => Status::unavailable(e.to_string()),
                _ => Status::unauthenticated(e.to_string()),
            })?;
        Ok(message)
    }

    fn check_key(&self, key: &str) -> Result<(), Status> {
        if key.is_empty() {
            return Err(invalid("empty key"));
        }
        if key.len() > self.config.key_bytes_max {
            return Err(invalid(format!(
                "a key of {} bytes (at most {})",
                key.len(),
                self.config.key_bytes_max
            )));
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<(), Status> {
        if value.len() > self.config.value_bytes_max {
            return Err(invalid(format!(
                "a value of {} bytes (at most {})",
                value.len(),
                self.config.value_bytes_max
            )));
        }
        Ok(())
    }

    fn check_items(&self, count: usize, what: &str) -> Result<(), Status> {
        if count > self.config.items_max {
            return Err(invalid(format!(
                "{count} {what} (at most {})",
                self.config.items_max
            )));
        }
        Ok(())
    }

    fn check_keys<'k>(&self, keys: impl ExactSizeIterator<Item = &'k str>) -> Result<(), Status> {
        self.check_items(keys.len(), "keys")?;
        for key in keys {
            self.check_key(key)?;
        }
        Ok(())
    }

    /// Fails if answering `values` would pass the response limit.
    fn check_response<'v>(&self, values: impl Iterator<Item = &'v [u8]>) -> Result<(), Status> {
        let bytes: usize = values.map(<[u8]>::len).sum();
        if bytes > self.config.response_bytes_max {
            return Err(Status::resource_exhausted(format!(
                "the answer would be {bytes} bytes (at most {}): ask for fewer",
                self.config.response_bytes_max
            )));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl<S: Storage + 'static> StorageService for StorageServer<S> {
    async fn set(&self, request: Request<SetRequest>) -> Result<Response<SetResponse>, Status> {
        let m = self.admit(&request, "Set")?;
        self.check_key(&m.key)?;
        self.check_value(&m.value)?;
        self.store
            .set(&m.key, m.value.clone(), ttl_from_ms(m.ttl_ms))
            .await
            .map_err(status)?;
        Ok(Response::new(SetResponse {}))
    }

    async fn get(&self, request: Request<KeyRequest>) -> Result<Response<ValueResponse>, Status> {
        let m = self.admit(&request, "Get")?;
        self.check_key(&m.key)?;
        let value = self.store.get(&m.key).await.map_err(status)?;
        Ok(Response::new(ValueResponse { value }))
    }

    async fn delete(&self, request: Request<KeyRequest>) -> Result<Response<BoolResponse>, Status> {
        let m = self.admit(&request, "Delete")?;
        self.check_key(&m.key)?;
        let value = self.store.delete(&m.key).await.map_err(status)?;
        Ok(Response::new(BoolResponse { value }))
    }

    async fn exists(&self, request: Request<KeyRequest>) -> Result<Response<BoolResponse>, Status> {
        let m = self.admit(&request, "Exists")?;
        self.check_key(&m.key)?;
        let value = self.store.exists(&m.key).await.map_err(status)?;
        Ok(Response::new(BoolResponse { value }))
    }

    async fn get_many(
        &self,
        request: Request<KeysRequest>,
    ) -> Result<Response<ValuesResponse>, Status> {
        let m = self.admit(&request, "GetMany")?;
        self.check_keys(m.keys.iter().map(String::as_str))?;
        let keys: Vec<&str> = m.keys.iter().map(String::as_str).collect();
        let values = self.store.get_many(&keys).await.map_err(status)?;
        self.check_response(values.iter().flatten().map(|v| v.as_ref()))?;
        Ok(Response::new(ValuesResponse {
            values: values
                .into_iter()
                .map(|value| OptionalValue { value })
                .collect(),
        }))
    }

    async fn set_many(
        &self,
        request: Request<SetManyRequest>,
    ) -> Result<Response<SetResponse>, Status> {
        let m = self.admit(&request, "SetMany")?;
        self.check_keys(m.pairs.iter().map(|pair| pair.key.as_str()))?;
        for pair in &m.pairs {
            self.check_value(&pair.value)?;
        }
        let pairs: Vec<(&str, Bytes)> = m
            .pairs
            .iter()
            .map(|pair| (pair.key.as_str(), pair.value.clone()))
            .collect();
        self.store
            .set_many(&pairs, ttl_from_ms(m.ttl_ms))
            .await
            .map_err(status)?;
        Ok(Response::new(SetResponse {}))
    }

    async fn delete_many(
        &self,
        request: Request<KeysRequest>,
    ) -> Result<Response<CountResponse>, Status> {
        let m = self.admit(&request, "DeleteMany")?;
        self.check_keys(m.keys.iter().map(String::as_str))?;
        let keys: Vec<&str> = m.keys.iter().map(String::as_str).collect();
        let count = self.store.delete_many(&keys).await.map_err(status)?;
        Ok(Response::new(CountResponse { count }))
    }

    async fn set_nx(&self, request: Request<SetRequest>) -> Result<Response<BoolResponse>, Status> {
        let m = self.admit(&request, "SetNx")?;
        self.check_key(&m.key)?;
        self.check_value(&m.value)?;
        let value = self
            .store
            .set_if_absent(&m.key, m.value.clone(), ttl_from_ms(m.ttl_ms))
            .await
            .map_err(status)?;
        Ok(Response::new(BoolResponse { value }))
    }

    async fn incr(
        &self,
        request: Request<IncrRequest>,
    ) -> Result<Response<IntegerResponse>, Status> {
        let m = self.admit(&request, "Incr")?;
        self.check_key(&m.key)?;
        let value = self.store.incr(&m.key, m.by).await.map_err(status)?;
        Ok(Response::new(IntegerResponse { value }))
    }

    async fn expire(
        &self,
        request: Request<ExpireRequest>,
    ) -> Result<Response<BoolResponse>, Status> {
        let m = self.admit(&request, "Expire")?;
        self.check_key(&m.key)?;
        let ttl = ttl_from_ms(m.ttl_ms).ok_or_else(|| invalid("a TTL of 0 ms"))?;
        let value = self.store.expire(&m.key, ttl).await.map_err(status)?;
        Ok(Response::new(BoolResponse { value }))
    }

    async fn ttl(&self, request: Request<KeyRequest>) -> Result<Response<TtlResponse>, Status> {
        let m = self.admit(&request, "Ttl")?;
        self.check_key(&m.key)?;
        let ttl = self.store.ttl(&m.key).await.map_err(status)?;
        Ok(Response::new(TtlResponse {
            ttl_ms: ttl.map(|ttl| u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
        }))
    }

    async fn list_push(
        &self,
        request: Request<ListPushRequest>,
    ) -> Result<Response<CountResponse>, Status> {
        let m = self.admit(&request, "ListPush")?;
        self.check_key(&m.key)?;
        self.check_value(&m.value)?;
        let count = self
            .store
            .list_push(&m.key, m.value.clone())
            .await
            .map_err(status)?;
        Ok(Response::new(CountResponse { count }))
    }

    async fn list_range(
        &self,
        request: Request<ListRangeRequest>,
    ) -> Result<Response<ListRangeResponse>, Status> {
        let m = self.admit(&request, "ListRange")?;
        self.check_key(&m.key)?;
        let values = self
            .store
            .list_range(&m.key, m.start, m.stop)
            .await
            .map_err(status)?;
        self.check_items(values.len(), "list elements in the range")?;
        self.check_response(values.iter().map(|v| v.as_ref()))?;
        Ok(Response::new(ListRangeResponse { values }))
    }

    async fn list_remove(
        &self,
        request: Request<ListPushRequest>,
    ) -> Result<Response<CountResponse>, Status> {
        let m = self.admit(&request, "ListRemove")?;
        self.check_key(&m.key)?;
        self.check_value(&m.value)?;
        let count = self
            .store
            .list_remove(&m.key, &m.value)
            .await
            .map_err(status)?;
        Ok(Response::new(CountResponse { count }))
    }

    async fn list_len(
        &self,
        request: Request<KeyRequest>,
    ) -> Result<Response<CountResponse>, Status> {
        let m = self.admit(&request, "ListLen")?;
        self.check_key(&m.key)?;
        let count = self.store.list_len(&m.key).await.map_err(status)?;
        Ok(Response::new(CountResponse { count }))
    }

    async fn compare_and_swap(
        &self,
        request: Request<CompareAndSwapRequest>,
    ) -> Result<Response<BoolResponse>, Status> {
        let m = self.admit(&request, "CompareAndSwap")?;
        self.check_key(&m.key)?;
        if let Some(new) = &m.new_value {
            self.check_value(new)?;
        }
        let value = self
            .store
            .compare_and_swap(
                &m.key,
                m.expected.clone(),
                m.new_value.clone(),
                ttl_from_ms(m.ttl_ms),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(BoolResponse { value }))
    }

    async fn scan_prefix(
        &self,
        request: Request<ScanPrefixRequest>,
    ) -> Result<Response<ScanPrefixResponse>, Status> {
        let m = self.admit(&request, "ScanPrefix")?;
        if m.prefix.len() > self.config.key_bytes_max {
            return Err(invalid("a prefix longer than the longest key"));
        }
        let limit = usize::try_from(m.limit).unwrap_or(usize::MAX);
        self.check_items(limit, "entries asked of a scan")?;
        let found = self
            .store
            .scan_prefix(&m.prefix, limit)
            .await
            .map_err(status)?;
        self.check_response(found.iter().map(|(_, v)| v.as_ref()))?;
        Ok(Response::new(ScanPrefixResponse {
            pairs: found
                .into_iter()
                .map(|(key, value)| KeyValue { key, value })
                .collect(),
        }))
    }

    async fn get_versioned(
        &self,
        request: Request<KeyRequest>,
    ) -> Result<Response<VersionedResponse>, Status> {
        let m = self.admit(&request, "GetVersioned")?;
        self.check_key(&m.key)?;
        let answer = self.store.get_versioned(&m.key).await.map_err(status)?;
        Ok(Response::new(versioned(answer)))
    }

    async fn set_versioned(
        &self,
        request: Request<SetRequest>,
    ) -> Result<Response<VersionedResponse>, Status> {
        let m = self.admit(&request, "SetVersioned")?;
        self.check_key(&m.key)?;
        self.check_value(&m.value)?;
        if m.ttl_ms != 0 {
            return Err(invalid("a versioned write takes no TTL"));
        }
        let answer = self
            .store
            .set_versioned(&m.key, m.value.clone())
            .await
            .map_err(status)?;
        Ok(Response::new(versioned(answer)))
    }

    async fn delete_versioned(
        &self,
        request: Request<KeyRequest>,
    ) -> Result<Response<VersionedResponse>, Status> {
        let m = self.admit(&request, "DeleteVersioned")?;
        self.check_key(&m.key)?;
        let answer = self.store.delete_versioned(&m.key).await.map_err(status)?;
        Ok(Response::new(versioned(answer)))
    }

    async fn ping(&self, request: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        self.admit(&request, "Ping")?;
        self.store.ping().await.map_err(status)?;
        Ok(Response::new(PingResponse {}))
    }
}
