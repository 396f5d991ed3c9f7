//! Target services the target clients dial: echo, sink and source.

use std::collections::BTreeMap;

use tunnox_runtime_sim::{ConnId, Host, HostCtx, HostEvent, Instant, Port};

use super::pattern;

/// What a service does with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceKind {
    /// Sends every byte back; half-closes when the client does.
    Echo,
    /// Discards what it gets; half-closes when the client does.
    Sink,
    /// Sends `len` pattern bytes (seeded by the port) then half-closes; ignores input.
    Source {
        /// Bytes to send per connection.
        len: u64,
    },
}

/// Seed of the stream a source service on `port` sends.
pub fn source_seed(port: Port) -> u64 {
    0x5eed_0000 ^ u64::from(port)
}

/// A host running services on ports.
#[derive(Debug)]
pub struct ServiceHost {
    services: BTreeMap<Port, ServiceKind>,
    conns: BTreeMap<ConnId, ServiceKind>,
    served: u64,
}

impl ServiceHost {
    /// A host serving `services`.
    pub fn new(services: impl IntoIterator<Item = (Port, ServiceKind)>) -> ServiceHost {
        ServiceHost {
            services: services.into_iter().collect(),
            conns: BTreeMap::new(),
            served: 0,
        }
    }

    /// Connections accepted so far.
    pub fn served(&self) -> u64 {
        self.served
    }

    fn start(&mut self, ctx: &mut HostCtx<'_>) {
        for port in self.services.keys() {
            let _ = ctx.listen(*port);
        }
    }
}

impl Host for ServiceHost {
    fn on_event(&mut self, _now: Instant, event: HostEvent, ctx: &mut HostCtx<'_>) {
        match event {
            HostEvent::Started => self.start(ctx),
            HostEvent::Accepted {
                listener_port,
                conn,
                ..
            } => {
                let Some(kind) = self.services.get(&listener_port).copied() else {
                    let _ = ctx.reset(conn);
                    return;
                };
                self.served += 1;
                self.conns.insert(conn, kind);
                if let ServiceKind::Source { len } = kind {
                    let seed = source_seed(listener_port);
                    let mut offset = 0;
                    while offset < len {
                        let n = (len - offset).min(16 * 1024);
                        let _ = ctx.send(conn, pattern::chunk(seed, offset, n as usize));
                        offset += n;
                    }
                    let _ = ctx.shutdown_write(conn);
                }
            }
            HostEvent::Data { conn, bytes } => {
                if self.conns.get(&conn) == Some(&ServiceKind::Echo) {
                    let _ = ctx.send(conn, bytes);
                }
            }
            HostEvent::Eof { conn } => {
                // Every echo was sent on the Data events before; close after them.
                if self.conns.remove(&conn).is_some() {
                    let _ = ctx.close(conn);
                }
            }
            HostEvent::Reset { conn } => {
                self.conns.remove(&conn);
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
        self.conns.clear();
    }

    fn restart(&mut self, _now: Instant, ctx: &mut HostCtx<'_>) {
        self.start(ctx);
    }

    fn check_invariants(&self) -> Result<(), String> {
        Ok(())
    }

    fn digest(&self) -> u64 {
        self.conns.len() as u64 ^ self.served << 20
    }
}
