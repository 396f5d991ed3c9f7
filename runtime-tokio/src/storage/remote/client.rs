//! [`RemoteStorage`]: the [`Storage`] interface on a `tunnox storage-server`, over gRPC (tonic).
//!
//! Every call is signed with the shared token (see [`super::auth`]), has a deadline
//! ([`RemoteConfig::deadline`], retries included), and fails with a typed [`StorageError`]:
//! `Unavailable`/`Timeout` when the server cannot be reached (so a [`super::super::HybridStorage`]
//! in front answers degraded reads), `Unauthenticated`, `Invalid` for a request the server
//! refused as malformed, and the store's own errors (`WrongKind`, `NotAnInteger`, `Corrupt`).
//!
//! **Retries.** A call that fails as unavailable is retried, with exponential backoff and full
//! jitter, only if repeating it cannot change its effect or its answer's meaning: reads, `set`,
//! `delete`, `set_many`, `delete_many`, `expire`, `ping`. The others are sent once, because a
//! failure may come after the server applied the request (the answer was lost): `incr` and
//! `list_push` would apply twice; `set_if_absent` and `compare_and_swap` would find their own
//! write and answer "not set"; `set_versioned` and `delete_versioned` would raise the version
//! again and answer another version than the one the first attempt wrote. (`delete` retried may
//! answer `false` for a key its first attempt deleted.)

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Response, Status};
use tunnox_core::storage::Versioned;
use tunnox_proto::Message;
use tunnox_proto::storage::storage_service_client::StorageServiceClient;
use tunnox_proto::storage::{
    CompareAndSwapRequest, ExpireRequest, IncrRequest, KeyRequest, KeyValue, KeysRequest,
    ListPushRequest, ListRangeRequest, PingRequest, ScanPrefixRequest, SetManyRequest, SetRequest,
};

use super::auth::{AUTH_HEADER, StorageToken};
use super::status::{BACKEND, from_status};
use super::ttl_to_ms;
use crate::random::unique_bytes;
use crate::storage::{Storage, StorageError};

/// How to reach a storage server.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// `host:port` of the server.
    pub addr: String,
    /// The shared secret requests are signed with.
    pub token: StorageToken,
    /// How long one call may take, connecting and retries included (default 1 s).
    pub deadline: Duration,
    /// Retries of an idempotent call after the first attempt (default 3).
    pub retries_max: u32,
    /// Backoff before the first retry; doubled each time, up to `backoff_max` (default 10 ms).
    pub backoff_initial: Duration,
    /// Longest backoff (default 200 ms).
    pub backoff_max: Duration,
    /// Largest answer accepted, in bytes (default 64 MiB).
    pub response_bytes_max: usize,
    /// TLS; `None`: plaintext.
    pub tls: Option<RemoteTls>,
}

/// How a client trusts the server's certificate.
#[derive(Debug, Clone)]
pub struct RemoteTls {
    /// PEM file of the CA (or the self-signed certificate) that signed the server's certificate.
    pub ca_file: PathBuf,
    /// The name the certificate must carry.
    pub server_name: String,
}

impl RemoteConfig {
    /// The server at `addr` (`host:port`) with the defaults.
    pub fn new(addr: impl Into<String>, token: StorageToken) -> RemoteConfig {
        RemoteConfig {
            addr: addr.into(),
            token,
            deadline: Duration::from_secs(1),
            retries_max: 3,
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(200),
            response_bytes_max: 64 * 1024 * 1024,
            tls: None,
        }
    }
}

/// A [`Storage`] on a storage server (see the module docs).
#[derive(Debug, Clone)]
pub struct RemoteStorage {
    client: StorageServiceClient<Channel>,
    config: RemoteConfig,
}

/// Whether a call may be sent again after failing as unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Repeating it changes nothing.
    Idempotent,
    /// It may have been applied: send once.
    Once,
}

fn refused(reason: String) -> StorageError {
    StorageError::Refused {
        backend: BACKEND,
        reason,
    }
}

impl RemoteStorage {
    /// A client of the server in `config`. Connects on first use (the server may be down now);
    /// fails only on a bad address or TLS file. Must be called inside a tokio runtime.
    pub fn connect(config: RemoteConfig) -> Result<RemoteStorage, StorageError> {
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", config.addr))
            .map_err(|e| refused(format!("bad storage server address {}: {e}", config.addr)))?
            .connect_timeout(config.deadline)
            .tcp_nodelay(true);
        if let Some(tls) = &config.tls {
            let ca = std::fs::read(&tls.ca_file).map_err(|e| {
                refused(format!(
                    "cannot read the CA file {}: {e}",
                    tls.ca_file.display()
                ))
            })?;
            let tls_config = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca))
                .domain_name(tls.server_name.clone());
            endpoint = endpoint
                .tls_config(tls_config)
                .map_err(|e| refused(format!("TLS configuration: {e}")))?;
        }
        let client = StorageServiceClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(config.response_bytes_max);
        Ok(RemoteStorage { client, config })
    }

    fn deadline_ms(&self) -> u64 {
        u64::try_from(self.config.deadline.as_millis()).unwrap_or(u64::MAX)
    }

    /// The backoff before retry `attempt` (0: the first): full jitter over the exponential step.
    fn backoff(&self, attempt: u32) -> Duration {
        let step = self
            .config
            .backoff_initial
            .saturating_mul(2u32.saturating_pow(attempt))
            .min(self.config.backoff_max);
        let step_us = u64::try_from(step.as_micros()).unwrap_or(u64::MAX);
        let draw = u64::from_le_bytes(unique_bytes::<8>());
        Duration::from_micros(draw % step_us.saturating_add(1))
    }

    /// Sends `message` as `method` (signed anew for every attempt) within the deadline, retrying
    /// as `retry` allows; `key` names the call in errors.
    async fn call<M, R, F, Fut>(
        &self,
        op: &'static str,
        method: &'static str,
        key: &str,
        retry: Retry,
        message: M,
        send: F,
    ) -> Result<R, StorageError>
    where
        M: Message + Clone,
        F: Fn(StorageServiceClient<Channel>, Request<M>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        let body = message.encode_to_vec();
        let attempts = async {
            let mut attempt = 0;
            loop {
                let header = self
                    .config
                    .token
                    .sign(method, crate::clock::wall_now().0, &body);
                let mut request = Request::new(message.clone());
                let header = MetadataValue::try_from(header)
                    .map_err(|e| refused(format!("cannot sign the request: {e}")))?;
                request.metadata_mut().insert(AUTH_HEADER, header);
                request.set_timeout(self.config.deadline);
                let status = match send(self.client.clone(), request).await {
                    Ok(response) => return Ok(response.into_inner()),
                    Err(status) => status,
                };
                let error = from_status(&status, op, key, self.deadline_ms());
                if retry == Retry::Once
                    || !error.is_unavailable()
                    || attempt >= self.config.retries_max
                {
                    return Err(error);
                }
                tokio::time::sleep(self.backoff(attempt)).await;
                attempt += 1;
            }
        };
        match tokio::time::timeout(self.config.deadline, attempts).await {
            Ok(answer) => answer,
            Err(_elapsed) => Err(StorageError::Timeout {
                backend: BACKEND,
                op,
                after_ms: self.deadline_ms(),
            }),
        }
    }
}

fn key_request(key: &str) -> KeyRequest {
    KeyRequest {
        key: key.to_owned(),
    }
}

fn owned_keys(keys: &[&str]) -> KeysRequest {
    KeysRequest {
        keys: keys.iter().map(|key| (*key).to_owned()).collect(),
    }
}

fn set_request(key: &str, value: Bytes, ttl: Option<Duration>) -> SetRequest {
    SetRequest {
        key: key.to_owned(),
        value,
        ttl_ms: ttl_to_ms(ttl),
    }
}

impl Storage for RemoteStorage {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StorageError> {
        let answer = self
            .call(
                "get",
                "Get",
                key,
                Retry::Idempotent,
                key_request(key),
                |mut c, r| async move { c.get(r).await },
            )
            .await?;
        Ok(answer.value)
    }

    async fn set(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<(), StorageError> {
        let message = set_request(key, value, ttl);
        self.call(
            "set",
            "Set",
            key,
            Retry::Idempotent,
            message,
            |mut c, r| async move { c.set(r).await },
        )
        .await
        .map(|_| ())
    }

    async fn delete(&self, key: &str) -> Result<bool, StorageError> {
        let answer = self
            .call(
                "delete",
                "Delete",
                key,
                Retry::Idempotent,
                key_request(key),
                |mut c, r| async move { c.delete(r).await },
            )
            .await?;
        Ok(answer.value)
    }

    async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        let answer = self
            .call(
                "exists",
                "Exists",
                key,
                Retry::Idempotent,
                key_request(key),
                |mut c, r| async move { c.exists(r).await },
            )
            .await?;
        Ok(answer.value)
    }

    async fn set_if_absent(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<bool, StorageError> {
        let message = set_request(key, value, ttl);
        let answer = self
            .call(
                "set_if_absent",
                "SetNx",
                key,
                Retry::Once,
                message,
                |mut c, r| async move { c.set_nx(r).await },
            )
            .await?;
        Ok(answer.value)
    }

    async fn incr(&self, key: &str, by: i64) -> Result<i64, StorageError> {
        let message = IncrRequest {
            key: key.to_owned(),
            by,
        };
        let answer = self
            .call(
                "incr",
                "Incr",
                key,
                Retry::Once,
                message,
                |mut c, r| async move { c.incr(r).await },
            )
            .await?;
        Ok(answer.value)
    }

    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>, StorageError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let answer = self
            .call(
                "get_many",
                "GetMany",
                keys[0],
                Retry::Idempotent,
                owned_keys(keys),
                |mut c, r| async move { c.get_many(r).await },
            )
            .await?;
        if answer.values.len() != keys.len() {
            return Err(refused(format!(
                "{} values answered for {} keys",
                answer.values.len(),
                keys.len()
            )));
        }
        Ok(answer.values.into_iter().map(|value| value.value).collect())
    }

    async fn set_many(
        &self,
        pairs: &[(&str, Bytes)],
        ttl: Option<Duration>,
    ) -> Result<(), StorageError> {
        let Some((first, _)) = pairs.first() else {
            return Ok(());
        };
        let message = SetManyRequest {
            pairs: pairs
                .iter()
                .map(|(key, value)| KeyValue {
                    key: (*key).to_owned(),
                    value: value.clone(),
                })
                .collect(),
            ttl_ms: ttl_to_ms(ttl),
        };
        self.call(
            "set_many",
            "SetMany",
            first,
            Retry::Idempotent,
            message,
            |mut c, r| async move { c.set_many(r).await },
        )
        .await
        .map(|_| ())
    }

    async fn delete_many(&self, keys: &[&str]) -> Result<u64, StorageError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let answer = self
            .call(
                "delete_many",
                "DeleteMany",
                keys[0],
                Retry::Idempotent,
                owned_keys(keys),
                |mut c, r| async move { c.delete_many(r).await },
            )
            .await?;
        Ok(answer.count)
    }

    async fn get_versioned(&self, key: &str) -> Result<Versioned, StorageError> {
        let answer = self
            .call(
                "get_versioned",
                "GetVersioned",
                key,
                Retry::Idempotent,
                key_request(key),
                |mut c, r| async move { c.get_versioned(r).await },
            )
            .await?;
        Ok(Versioned {
            version: answer.version,
            value: answer.value,
        })
    }

    async fn set_versioned(&self, key: &str, value: Bytes) -> Result<Versioned, StorageError> {
        let message = set_request(key, value, None);
        let answer = self
            .call(
                "set_versioned",
                "SetVersioned",
                key,
                Retry::Once,
                message,
                |mut c, r| async move { c.set_versioned(r).await },
            )
            .await?;
        Ok(Versioned {
            version: answer.version,
            value: answer.value,
        })
    }

    async fn delete_versioned(&self, key: &str) -> Result<Versioned, StorageError> {
        let answer = self
            .call(
                "delete_versioned",
                "DeleteVersioned",
                key,
                Retry::Once,
                key_request(key),
                |mut c, r| async move { c.delete_versioned(r).await },
            )
            .await?;
        Ok(Versioned {
            version: answer.version,
            value: answer.value,
        })
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<Bytes>,
        new: Option<Bytes>,
        ttl: Option<Duration>,
    ) -> Result<bool, StorageError> {
        let message = CompareAndSwapRequest {
            key: key.to_owned(),
            expected,
            new_value: new,
            ttl_ms: ttl_to_ms(ttl),
        };
        let answer = self
            .call(
                "compare_and_swap",
                "CompareAndSwap",
                key,
                Retry::Once,
                message,
                |mut c, r| async move { c.compare_and_swap(r).await },
            )
            .await?;
        Ok(answer.value)
    }

    async fn scan_prefix(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Bytes)>, StorageError> {
        let message = ScanPrefixRequest {
            prefix: prefix.to_owned(),
            limit: u32::try_from(limit).unwrap_or(u32::MAX),
        };
        let answer = self
            .call(
                "scan_prefix",
                "ScanPrefix",
                prefix,
                Retry::Idempotent,
                message,
                |mut c, r| async move { c.scan_prefix(r).await },
            )
            .await?;
        Ok(answer
            .pairs
            .into_iter()
            .map(|pair| (pair.key, pair.value))
            .collect())
    }

    async fn expire(&self, key: &str, ttl: Duration) -> Result<bool, StorageError> {
        let message = ExpireRequest {
            key: key.to_owned(),
            ttl_ms: ttl_to_ms(Some(ttl)),
        };
        let answer = self
            .call(
                "expire",
                "Expire",
                key,
                Retry::Idempotent,
                message,
                |mut c, r| async move { c.expire(r).await },
            )
            .await?;
        Ok(answer.value)
    }

    async fn ttl(&self, key: &str) -> Result<Option<Duration>, StorageError> {
        let answer = self
            .call(
                "ttl",
                "Ttl",
                key,
                Retry::Idempotent,
                key_request(key),
                |mut c, r| async move { c.ttl(r).await },
            )
            .await?;
        Ok(answer.ttl_ms.map(Duration::from_millis))
    }

    async fn list_push(&self, key: &str, value: Bytes) -> Result<u64, StorageError> {
        let message = ListPushRequest {
            key: key.to_owned(),
            value,
        };
        let answer = self
            .call(
                "list_push",
                "ListPush",
                key,
                Retry::Once,
                message,
                |mut c, r| async move { c.list_push(r).await },
            )
            .await?;
        Ok(answer.count)
    }

    async fn list_range(
        &self,
        key: &str,
        start: i64,
        stop: i64,
    ) -> Result<Vec<Bytes>, StorageError> {
        let message = ListRangeRequest {
            key: key.to_owned(),
            start,
            stop,
        };
        let answer = self
            .call(
                "list_range",
                "ListRange",
                key,
                Retry::Idempotent,
                message,
                |mut c, r| async move { c.list_range(r).await },
            )
            .await?;
        Ok(answer.values)
    }

    /// Retried: removing every equal element twice removes nothing more (the count answered may
    /// then be 0).
    async fn list_remove(&self, key: &str, value: &[u8]) -> Result<u64, StorageError> {
        let message = ListPushRequest {
            key: key.to_owned(),
            value: Bytes::copy_from_slice(value),
        };
        let answer = self
            .call(
                "list_remove",
                "ListRemove",
                key,
                Retry::Idempotent,
                message,
                |mut c, r| async move { c.list_remove(r).await },
            )
            .await?;
        Ok(answer.count)
    }

    async fn list_len(&self, key: &str) -> Result<u64, StorageError> {
        let answer = self
            .call(
                "list_len",
                "ListLen",
                key,
                Retry::Idempotent,
                key_request(key),
                |mut c, r| async move { c.list_len(r).await },
            )
            .await?;
        Ok(answer.count)
    }

    async fn ping(&self) -> Result<(), StorageError> {
        self.call(
            "ping",
            "Ping",
            "",
            Retry::Idempotent,
            PingRequest {},
            |mut c, r| async move { c.ping(r).await },
        )
        .await
        .map(|_| ())
    }
}
