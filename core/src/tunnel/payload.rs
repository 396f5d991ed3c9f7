//! The OPEN and OPEN_RESULT payloads of tunnel streams, and typed open errors.

use bytes::{Bytes, BytesMut};
use prost::Message;
use tunnox_proto::wire as pb;

pub use tunnox_proto::wire::OpenError;

/// A payload that is not the protobuf message it should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {what}: {reason}")]
pub struct PayloadError {
    /// Which message.
    pub what: &'static str,
    /// What prost reported.
    pub reason: String,
}

fn encode(message: &impl Message) -> Bytes {
    let mut buf = BytesMut::with_capacity(message.encoded_len());
    message.encode_raw(&mut buf);
    buf.freeze()
}

/// Encodes a `StreamOpen` for an OPEN frame.
pub fn encode_open(open: &pb::StreamOpen) -> Bytes {
    encode(open)
}

/// Decodes the payload of an OPEN frame.
pub fn decode_open(payload: Bytes) -> Result<pb::StreamOpen, PayloadError> {
    pb::StreamOpen::decode(payload).map_err(|e| PayloadError {
        what: "StreamOpen",
        reason: e.to_string(),
    })
}

/// Encodes the result of an open (`OpenError::Ok` for success).
pub fn encode_result(error: OpenError, message: &str) -> Bytes {
    encode(&pb::StreamOpenResult {
        error: error as i32,
        message: message.to_owned(),
    })
}

/// Decodes the payload of an OPEN_RESULT frame. Unknown error codes from newer peers decode as
/// `OpenError::Internal` so they are never mistaken for success.
pub fn decode_result(payload: Bytes) -> Result<(OpenError, String), PayloadError> {
    let result = pb::StreamOpenResult::decode(payload).map_err(|e| PayloadError {
        what: "StreamOpenResult",
        reason: e.to_string(),
    })?;
    let error = OpenError::try_from(result.error).unwrap_or(OpenError::Internal);
    Ok((error, result.message))
}

/// Why a target client's dial failed, as the runtime observed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialFailure {
    /// The target actively refused (connection refused / reset).
    Refused,
    /// No answer within the dial timeout.
    Timeout,
    /// No route to the host or network.
    Unreachable,
    /// The host name did not resolve.
    Dns,
}

impl From<DialFailure> for OpenError {
    fn from(f: DialFailure) -> OpenError {
        match f {
            DialFailure::Refused => OpenError::DialRefused,
            DialFailure::Timeout => OpenError::DialTimeout,
            DialFailure::Unreachable => OpenError::DialUnreachable,
            DialFailure::Dns => OpenError::DnsFailed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_garbage_is_typed() {
        let open = pb::StreamOpen {
            mapping_id: "m-abc".into(),
            target: Some(pb::TargetAddr {
                host: "db".into(),
                port: 5432,
            }),
            protocol: pb::Protocol::Socks5 as i32,
            visitor_addr: "10.0.0.1:5000".into(),
        };
        assert_eq!(decode_open(encode_open(&open)).unwrap(), open);
        let result = encode_result(OpenError::DialTimeout, "no answer in 10s");
        assert_eq!(
            decode_result(result).unwrap(),
            (OpenError::DialTimeout, "no answer in 10s".into())
        );
        assert!(decode_open(Bytes::from_static(&[0xff, 0xff])).is_err());
        // An error code from the future is not success.
        let future = encode(&pb::StreamOpenResult {
            error: 999,
            message: String::new(),
        });
        assert_eq!(decode_result(future).unwrap().0, OpenError::Internal);
        assert_eq!(OpenError::from(DialFailure::Dns), OpenError::DnsFailed);
    }
}
