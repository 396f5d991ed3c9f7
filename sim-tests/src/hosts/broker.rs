//! A simulated Redis pub/sub broker: at most once. A message goes to the subscribers connected
//! when it is published; one whose connection is cut, reset or too far behind (its output buffer
//! past a limit, as Redis's `client-output-buffer-limit`) loses it. Envelopes are the core's
//! `broker::Envelope`; the broker only reads their topic.

use std::collections::{BTreeMap, BTreeSet};

use bytes::{BufMut, Bytes, BytesMut};
use tunnox_core::broker::{Envelope, Topic};
use tunnox_runtime_sim::{ConnId, Host, HostCtx, HostEvent, Instant, Port};

use super::frames::{FrameReader, frame};

/// Port the broker listens on.
pub const BROKER_PORT: Port = 6380;

/// A subscriber this far behind (bytes queued, not yet delivered) is disconnected.
pub const OUTPUT_BUFFER_BYTES_MAX: u64 = 256 * 1024;

/// One message of the broker protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerFrame {
    /// Subscribe this connection to topics.
    Subscribe(Vec<Topic>),
    /// Publish an encoded envelope.
    Publish(Bytes),
    /// A message for a subscriber (an encoded envelope).
    Message(Bytes),
    /// Liveness probe; answered with `Pong`.
    Ping,
    /// The answer to `Ping`.
    Pong,
}

impl BrokerFrame {
    /// This message as one frame.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        match self {
            BrokerFrame::Subscribe(topics) => {
                out.put_u8(1);
                let names: Vec<&str> = topics.iter().map(|t| t.name()).collect();
                out.put_slice(names.join(",").as_bytes());
            }
            BrokerFrame::Publish(b) => {
                out.put_u8(2);
                out.put_slice(b);
            }
            BrokerFrame::Message(b) => {
                out.put_u8(3);
                out.put_slice(b);
            }
            BrokerFrame::Ping => out.put_u8(4),
            BrokerFrame::Pong => out.put_u8(5),
        }
        frame(&out)
    }

    /// Decodes one frame's payload.
    pub fn decode(payload: Bytes) -> Option<BrokerFrame> {
        let (&kind, _) = payload.split_first()?;
        let body = payload.slice(1..);
        Some(match kind {
            1 => {
                let text = std::str::from_utf8(&body).ok()?;
                let topics = text
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(Topic::from_name)
                    .collect::<Result<Vec<_>, _>>()
                    .ok()?;
                BrokerFrame::Subscribe(topics)
            }
            2 => BrokerFrame::Publish(body),
            3 => BrokerFrame::Message(body),
            4 => BrokerFrame::Ping,
            5 => BrokerFrame::Pong,
            _ => return None,
        })
    }
}

/// What the broker did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrokerStats {
    /// Messages published.
    pub published: u64,
    /// Copies sent to subscribers.
    pub delivered: u64,
    /// Copies sent twice on purpose (BUGGIFY: subscribers must drop duplicates).
    pub duplicated: u64,
    /// Subscribers disconnected for being too far behind.
    pub slow_subscribers_dropped: u64,
}

#[derive(Debug, Default)]
struct Client {
    reader: FrameReader,
    topics: BTreeSet<Topic>,
}

/// The broker host (see the module docs). It keeps nothing across a crash.
#[derive(Debug, Default)]
pub struct BrokerHost {
    clients: BTreeMap<ConnId, Client>,
    stats: BrokerStats,
    violation: Option<String>,
}

impl BrokerHost {
    /// A broker with no subscribers.
    pub fn new() -> BrokerHost {
        BrokerHost::default()
    }

    /// Counters.
    pub fn stats(&self) -> &BrokerStats {
        &self.stats
    }

    fn publish(&mut self, envelope: Bytes, ctx: &mut HostCtx<'_>) {
        let Ok(decoded) = Envelope::decode(envelope.clone()) else {
            self.violation = Some("broker: a node published a malformed envelope".into());
            return;
        };
        self.stats.published += 1;
        let message = BrokerFrame::Message(envelope).encode();
        let subscribers: Vec<ConnId> = self
            .clients
            .iter()
            .filter(|(_, c)| c.topics.contains(&decoded.topic))
            .map(|(conn, _)| *conn)
            .collect();
        for conn in subscribers {
            if ctx.unsent_bytes(conn).unwrap_or(0) > OUTPUT_BUFFER_BYTES_MAX {
                self.clients.remove(&conn);
                let _ = ctx.reset(conn);
                self.stats.slow_subscribers_dropped += 1;
                ctx.count("broker_slow_subscriber_dropped");
                continue;
            }
            let _ = ctx.send(conn, message.clone());
            self.stats.delivered += 1;
            if ctx.buggify("broker_duplicate_delivery") {
                let _ = ctx.send(conn, message.clone());
                self.stats.duplicated += 1;
            }
        }
    }

    fn on_data(&mut self, conn: ConnId, bytes: &[u8], ctx: &mut HostCtx<'_>) {
        if let Some(c) = self.clients.get_mut(&conn) {
            c.reader.push(bytes);
        }
        loop {
            let Some(c) = self.clients.get_mut(&conn) else {
                return;
            };
            let payload = match c.reader.next_frame() {
                Ok(Some(p)) => p,
                Ok(None) => return,
                Err(e) => {
                    self.violation = Some(format!("broker: corrupt stream on {conn}: {e:?}"));
                    return;
                }
            };
            match BrokerFrame::decode(payload) {
                Some(BrokerFrame::Subscribe(topics)) => c.topics.extend(topics),
                Some(BrokerFrame::Publish(envelope)) => self.publish(envelope, ctx),
                Some(BrokerFrame::Ping) => {
                    let _ = ctx.send(conn, BrokerFrame::Pong.encode());
                }
                Some(BrokerFrame::Message(_) | BrokerFrame::Pong) | None => {
                    self.violation = Some(format!("broker: unexpected frame on {conn}"));
                }
            }
        }
    }
}

impl Host for BrokerHost {
    fn on_event(&mut self, _now: Instant, event: HostEvent, ctx: &mut HostCtx<'_>) {
        match event {
            HostEvent::Started => {
                let _ = ctx.listen(BROKER_PORT);
            }
            HostEvent::Accepted { conn, .. } => {
                self.clients.insert(conn, Client::default());
            }
            HostEvent::Data { conn, bytes } => self.on_data(conn, &bytes, ctx),
            HostEvent::Eof { conn } => {
                self.clients.remove(&conn);
                let _ = ctx.close(conn);
            }
            HostEvent::Reset { conn } => {
                self.clients.remove(&conn);
            }
            HostEvent::Timer
            | HostEvent::Connected { .. }
            | HostEvent::ConnectFailed { .. }
            | HostEvent::Datagram { .. } => {}
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        None
    }

    fn crash(&mut self) {
        self.clients.clear();
    }

    fn restart(&mut self, _now: Instant, ctx: &mut HostCtx<'_>) {
        let _ = ctx.listen(BROKER_PORT);
    }

    fn check_invariants(&self) -> Result<(), String> {
        self.violation.clone().map_or(Ok(()), Err)
    }

    fn digest(&self) -> u64 {
        self.stats.published ^ self.stats.delivered << 24 ^ (self.clients.len() as u64) << 48
    }
}
