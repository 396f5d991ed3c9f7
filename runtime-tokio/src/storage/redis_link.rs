//! [`RedisLink`]: one multiplexed, self-reconnecting Redis connection with a per-call deadline,
//! shared by the Redis store and the Redis cache.

use std::future::Future;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::StorageError;

/// Where and how to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// A `redis://` URL.
    pub url: String,
    /// Prepended to every key (`tunnox:` by default; tests use one per run).
    pub key_prefix: String,
    /// How long one call may take, connecting included.
    pub deadline: Duration,
}

impl RedisConfig {
    /// Redis at `url` with the default prefix and a 1 s deadline.
    pub fn new(url: impl Into<String>) -> RedisConfig {
        RedisConfig {
            url: url.into(),
            key_prefix: "tunnox:".to_owned(),
            deadline: Duration::from_secs(1),
        }
    }
}

/// A Redis connection that connects on first use and reconnects after a failure.
#[derive(Clone)]
pub(crate) struct RedisLink {
    connection: ConnectionManager,
    deadline: Duration,
    backend: &'static str,
    /// Where operations are counted, if anywhere.
    metrics: Option<crate::metrics::StorageMetrics>,
}

impl std::fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLink")
            .field("deadline", &self.deadline)
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl RedisLink {
    /// A link to `config.url`; connects lazily, so Redis may be down now. Must be called inside a
    /// tokio runtime. `backend` names it in errors.
    pub(crate) fn open(
        config: &RedisConfig,
        backend: &'static str,
    ) -> Result<RedisLink, StorageError> {
        let refused = |e: redis::RedisError| StorageError::Refused {
            backend,
            reason: e.to_string(),
        };
        let client = redis::Client::open(config.url.as_str()).map_err(refused)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.deadline))
            .set_response_timeout(Some(config.deadline))
            .set_number_of_retries(1)
            .set_max_delay(config.deadline);
        let connection = client
            .get_connection_manager_lazy(manager_config)
            .map_err(refused)?;
        Ok(RedisLink {
            connection,
            deadline: config.deadline,
            backend,
            metrics: None,
        })
    }

    /// Counts every operation into `metrics` from now on.
    pub(crate) fn report_to(&mut self, metrics: crate::metrics::StorageMetrics) {
        self.metrics = Some(metrics);
    }

    /// Runs `call` on the connection within the deadline, mapping Redis errors for `key`.
    pub(crate) async fn run<T, F, Fut>(
        &self,
        op: &'static str,
        key: &str,
        call: F,
    ) -> Result<T, StorageError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let answer = tokio::time::timeout(self.deadline, call(self.connection.clone())).await;
        let result = match answer {
            Err(_elapsed) => Err(self.timeout(op)),
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.classify(op, key, e)),
        };
        if let Some(metrics) = &self.metrics {
            metrics.operation(self.backend, op, &result);
        }
        result
    }

    fn timeout(&self, op: &'static str) -> StorageError {
        StorageError::Timeout {
            backend: self.backend,
            op,
            after_ms: u64::try_from(self.deadline.as_millis()).unwrap_or(u64::MAX),
        }
    }

    fn classify(&self, op: &'static str, key: &str, e: redis::RedisError) -> StorageError {
        if e.is_timeout() {
            self.timeout(op)
        } else if e.code() == Some("WRONGTYPE") {
            StorageError::WrongKind {
                key: key.to_owned(),
            }
        } else if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() {
            StorageError::Unavailable {
                backend: self.backend,
                reason: e.to_string(),
            }
        } else if matches!(
            e.kind(),
            redis::ErrorKind::UnexpectedReturnType | redis::ErrorKind::Parse
        ) {
            StorageError::Corrupt {
                table: self.backend,
                key: key.to_owned(),
                reason: e.to_string(),
            }
        } else {
            StorageError::Refused {
                backend: self.backend,
                reason: e.to_string(),
            }
        }
    }
}
