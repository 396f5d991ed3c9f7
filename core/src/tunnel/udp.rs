//! UDP flows over one stream.
//!
//! A UDP mapping carries many flows (one per visitor address) over one tunnel stream. Each
//! datagram is framed as `flow id: u32 | length: u16 | payload`, big-endian, so datagram
//! boundaries survive the byte stream and replies find their visitor. [`FlowTable`] assigns flow
//! ids on the side that receives visitors and forgets flows after an idle timeout, bounded in
//! number.

use std::collections::{BTreeMap, BTreeSet};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::time::{Duration, Instant};

/// Bytes before each datagram's payload.
pub const DATAGRAM_HEADER_LEN: usize = 6;
/// Largest UDP payload over IPv4, the most a datagram frame may carry.
pub const MAX_DATAGRAM_BYTES: usize = 65_507;

/// Identifies one UDP flow within a stream.
pub type FlowId = u32;

/// Errors of UDP framing and flow bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UdpError {
    /// A datagram larger than the limit.
    #[error("datagram of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The flow table is full; the datagram is dropped.
    #[error("too many UDP flows (limit {0})")]
    TooManyFlows(u32),
}

/// One datagram of one flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// Its flow.
    pub flow: FlowId,
    /// The UDP payload.
    pub payload: Bytes,
}

/// Appends one framed datagram to `out`.
pub fn encode_datagram(flow: FlowId, payload: &[u8], out: &mut BytesMut) -> Result<(), UdpError> {
    let len = u16::try_from(payload.len())
        .ok()
        .filter(|len| usize::from(*len) <= MAX_DATAGRAM_BYTES)
        .ok_or(UdpError::TooLarge {
            len: payload.len(),
            max: MAX_DATAGRAM_BYTES,
        })?;
    out.reserve(DATAGRAM_HEADER_LEN + payload.len());
    out.put_u32(flow);
    out.put_u16(len);
    out.put_slice(payload);
    Ok(())
}

/// Splits a byte stream, received in chunks of any size, back into datagrams.
#[derive(Debug, Default)]
pub struct DatagramDecoder {
    buf: BytesMut,
}

impl DatagramDecoder {
    /// An empty decoder.
    pub fn new() -> DatagramDecoder {
        DatagramDecoder::default()
    }

    /// Appends received stream bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete datagram, `Ok(None)` if more bytes are needed, or an error for a length
    /// over the limit (the stream is then unusable).
    pub fn decode(&mut self) -> Result<Option<Datagram>, UdpError> {
        let Some(header) = self.buf.first_chunk::<DATAGRAM_HEADER_LEN>() else {
            return Ok(None);
        };
        let flow = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let len = usize::from(u16::from_be_bytes([header[4], header[5]]));
        if len > MAX_DATAGRAM_BYTES {
            return Err(UdpError::TooLarge {
                len,
                max: MAX_DATAGRAM_BYTES,
            });
        }
        if self.buf.len() < DATAGRAM_HEADER_LEN + len {
            return Ok(None);
        }
        self.buf.advance(DATAGRAM_HEADER_LEN);
        let payload = self.buf.split_to(len).freeze();
        Ok(Some(Datagram { flow, payload }))
    }
}

/// Flows keyed by the caller's address type `K` (a visitor's socket address on the listen side,
/// a local socket handle on the target side), with idle expiry.
#[derive(Debug)]
pub struct FlowTable<K: Ord + Clone> {
    by_key: BTreeMap<K, FlowId>,
    flows: BTreeMap<FlowId, (K, Instant)>,
    expiry: BTreeSet<(Instant, FlowId)>,
    next_flow: FlowId,
    idle_timeout: Duration,
    max_flows: u32,
}

impl<K: Ord + Clone> FlowTable<K> {
    /// A table that forgets flows idle for `idle_timeout` and holds at most `max_flows`.
    pub fn new(idle_timeout: Duration, max_flows: u32) -> FlowTable<K> {
        FlowTable {
            by_key: BTreeMap::new(),
            flows: BTreeMap::new(),
            expiry: BTreeSet::new(),
            next_flow: 1,
            idle_timeout,
            max_flows,
        }
    }

    /// Live flows.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether no flow is live.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// The flow of `key`, creating it if new (`true` in the result); refreshes its idle timer.
    pub fn flow_for(&mut self, now: Instant, key: &K) -> Result<(FlowId, bool), UdpError> {
        if let Some(&flow) = self.by_key.get(key) {
            self.touch(now, flow);
            return Ok((flow, false));
        }
        if self.flows.len() as u64 >= u64::from(self.max_flows) {
            return Err(UdpError::TooManyFlows(self.max_flows));
        }
        // Skip ids still in use after wrap-around (at most max_flows of them).
        let mut flow = self.next_flow;
        while self.flows.contains_key(&flow) || flow == 0 {
            flow = flow.wrapping_add(1);
        }
        self.next_flow = flow.wrapping_add(1);
        self.insert(now, flow, key.clone());
        Ok((flow, true))
    }

    /// Records a flow whose id the other side chose (the target side); refreshes it if known.
    pub fn insert_remote(&mut self, now: Instant, flow: FlowId, key: K) -> Result<(), UdpError> {
        if self.flows.contains_key(&flow) {
            self.touch(now, flow);
            return Ok(());
        }
        if self.flows.len() as u64 >= u64::from(self.max_flows) {
            return Err(UdpError::TooManyFlows(self.max_flows));
        }
        self.insert(now, flow, key);
        Ok(())
    }

    fn insert(&mut self, now: Instant, flow: FlowId, key: K) {
        self.by_key.insert(key.clone(), flow);
        self.flows.insert(flow, (key, now));
        self.expiry.insert((now + self.idle_timeout, flow));
    }

    /// Marks `flow` active now.
    pub fn touch(&mut self, now: Instant, flow: FlowId) {
        if let Some((_, last)) = self.flows.get_mut(&flow) {
            self.expiry.remove(&(*last + self.idle_timeout, flow));
            *last = now;
            self.expiry.insert((now + self.idle_timeout, flow));
        }
    }

    /// The key of `flow`.
    pub fn key_of(&self, flow: FlowId) -> Option<&K> {
        self.flows.get(&flow).map(|(k, _)| k)
    }

    /// When the next flow expires.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.expiry.first().map(|(at, _)| *at)
    }

    /// Removes and returns one flow idle past its timeout at `now`; call until `None`.
    pub fn poll_expired(&mut self, now: Instant) -> Option<(FlowId, K)> {
        let &(at, flow) = self.expiry.first()?;
        if at > now {
            return None;
        }
        self.expiry.remove(&(at, flow));
        let (key, _) = self.flows.remove(&flow)?;
        self.by_key.remove(&key);
        Some((flow, key))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn datagrams_survive_any_chunking(
            grams in proptest::collection::vec((any::<u32>(), proptest::collection::vec(any::<u8>(), 0..2000)), 1..20),
            chunk in 1usize..500,
        ) {
            let mut stream = BytesMut::new();
            for (flow, payload) in &grams {
                encode_datagram(*flow, payload, &mut stream).unwrap();
            }
            let mut decoder = DatagramDecoder::new();
            let mut out = Vec::new();
            for piece in stream.chunks(chunk) {
                decoder.push(piece);
                while let Some(d) = decoder.decode().unwrap() {
                    out.push((d.flow, d.payload.to_vec()));
                }
            }
            prop_assert_eq!(out, grams);
        }
    }

    #[test]
    fn oversized_datagrams_are_rejected_both_ways() {
        let mut out = BytesMut::new();
        let big = vec![0u8; MAX_DATAGRAM_BYTES + 1];
        assert!(matches!(
            encode_datagram(1, &big, &mut out),
            Err(UdpError::TooLarge { .. })
        ));
        assert!(out.is_empty());
        let mut decoder = DatagramDecoder::new();
        decoder.push(&[0, 0, 0, 1, 0xff, 0xff]);
        assert!(matches!(
            decoder.decode(),
            Err(UdpError::TooLarge { len: 65535, .. })
        ));
    }

    #[test]
    fn flows_are_reused_bounded_and_expire_when_idle() {
        let idle = Duration::from_secs(60);
        let mut table: FlowTable<&str> = FlowTable::new(idle, 2);
        let t0 = Instant::ZERO;
        let (a, new_a) = table.flow_for(t0, &"10.0.0.1:5000").unwrap();
        assert!(new_a);
        assert_eq!(table.flow_for(t0, &"10.0.0.1:5000").unwrap(), (a, false));
        let (b, _) = table.flow_for(t0, &"10.0.0.2:5000").unwrap();
        assert_ne!(a, b);
        assert_eq!(
            table.flow_for(t0, &"10.0.0.3:5000"),
            Err(UdpError::TooManyFlows(2))
        );
        // Flow a stays active; b goes idle.
        let t1 = t0 + Duration::from_secs(30);
        table.touch(t1, a);
        assert_eq!(table.poll_timeout(), Some(t0 + idle));
        assert_eq!(
            table.poll_expired(t0 + idle - Duration::from_nanos(1)),
            None
        );
        assert_eq!(table.poll_expired(t0 + idle), Some((b, "10.0.0.2:5000")));
        assert_eq!(table.poll_expired(t0 + idle), None);
        assert_eq!(table.key_of(a), Some(&"10.0.0.1:5000"));
        assert_eq!(table.poll_expired(t1 + idle), Some((a, "10.0.0.1:5000")));
        assert!(table.is_empty());
        // Ids chosen by the other side are recorded as given.
        table.insert_remote(t1, 77, "sock-1").unwrap();
        assert_eq!(table.key_of(77), Some(&"sock-1"));
    }
}
