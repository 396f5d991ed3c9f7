//! The node's answers to clients' control requests: connection codes created, listed, revoked
//! and redeemed over the session, so two clients can set up a mapping without an administrator.

use tunnox_proto::wire::{
    self as pb, ControlErrorKind, control_request::Body, control_response::Result as Reply,
};

use super::{AdminError, ConnId, Node, StateChange};
use crate::control::{
    ClientId, Code, CodeError, CodeRequest, CodeState, ConnectionCode, Protocol, Target, UnixMillis,
};
use crate::time::{Duration, Instant};

/// A failed request, as the client sees it.
fn error(kind: ControlErrorKind, message: impl Into<String>) -> Reply {
    Reply::Error(pb::ControlError {
        kind: kind as i32,
        message: message.into(),
    })
}

fn code_error(e: CodeError) -> Reply {
    let kind = match e {
        CodeError::Expired { .. } => ControlErrorKind::Expired,
        CodeError::AlreadyUsed => ControlErrorKind::AlreadyUsed,
        CodeError::Revoked { .. } => ControlErrorKind::Revoked,
        CodeError::SelfActivation => ControlErrorKind::SelfActivation,
        CodeError::Invalid(_) => ControlErrorKind::Invalid,
    };
    error(kind, e.to_string())
}

fn admin_error(e: AdminError) -> Reply {
    let kind = match e {
        AdminError::Invalid(_) => ControlErrorKind::Invalid,
        AdminError::Quota(_) => ControlErrorKind::Quota,
        AdminError::Conflict(_) => ControlErrorKind::Invalid,
        AdminError::NotFound(_) => ControlErrorKind::NotFound,
    };
    error(kind, e.to_string())
}

fn protocol_of(p: i32) -> Option<Protocol> {
    match pb::Protocol::try_from(p).ok()? {
        pb::Protocol::Tcp => Some(Protocol::Tcp),
        pb::Protocol::Udp => Some(Protocol::Udp),
        pb::Protocol::Socks5 => Some(Protocol::Socks5),
        pb::Protocol::Http => None,
    }
}

fn target_addr(target: &Target) -> Option<pb::TargetAddr> {
    match target {
        Target::Fixed { host, port } => Some(pb::TargetAddr {
            host: host.clone(),
            port: u32::from(*port),
        }),
        Target::Dynamic => None,
    }
}

fn code_info(code: &ConnectionCode) -> pb::CodeInfo {
    let state = match code.state() {
        CodeState::Unused => "unused",
        CodeState::Used { .. } => "used",
        CodeState::Revoked { .. } => "revoked",
    };
    pb::CodeInfo {
        code: code.code().as_str().to_owned(),
        target: target_addr(code.target()),
        protocol: super::pb_protocol(code.protocol()),
        activation_deadline_ms: code.activation_deadline().0,
        mapping_ttl_secs: code.mapping_ttl().as_secs(),
        state: state.into(),
        description: code.description().to_owned(),
    }
}

impl Node {
    /// Answers a control request from the client on `conn`.
    pub(super) fn on_control_request(
        &mut self,
        now: Instant,
        conn: ConnId,
        request: pb::ControlRequest,
    ) {
        let Some(client) = self.slots.get(&conn).and_then(|s| s.client) else {
            return;
        };
        let wall = self.wall_now(now);
        let reply = match request.body {
            Some(Body::CreateCode(create)) => self.create_code(client, wall, create),
            Some(Body::ActivateCode(activate)) => self.activate_code(now, client, wall, activate),
            Some(Body::ListCodes(_)) => Reply::Codes(pb::CodeList {
                codes: self
                    .state
                    .codes
                    .values()
                    .filter(|c| c.target_client() == client)
                    .map(code_info)
                    .collect(),
            }),
            Some(Body::RevokeCode(revoke)) => self.revoke_code(client, wall, &revoke.code),
            None => error(ControlErrorKind::Invalid, "empty request"),
        };
        if let Some(session) = self.accepted(conn) {
            session.respond(pb::ControlResponse {
                request_id: request.request_id,
                result: Some(reply),
            });
        }
        self.mark(conn);
    }

    fn create_code(&mut self, client: ClientId, wall: UnixMillis, create: pb::CreateCode) -> Reply {
        let Some(protocol) = protocol_of(create.protocol) else {
            return error(ControlErrorKind::Invalid, "codes carry tcp, udp or socks5");
        };
        let target = match (protocol, create.target) {
            (Protocol::Socks5, _) => Target::Dynamic,
            (_, Some(t)) => match u16::try_from(t.port) {
                Ok(port) => Target::Fixed { host: t.host, port },
                Err(_) => return error(ControlErrorKind::Invalid, "target.port must be 1-65535"),
            },
            (_, None) => {
                return error(
                    ControlErrorKind::Invalid,
                    "a tcp or udp code needs a target",
                );
            }
        };
        let mut request =
            CodeRequest::new(client, target, protocol).with_description(create.description);
        if let Some(owner) = self.state.clients.get(&client).and_then(|c| c.owner) {
            request = request.with_owner(owner);
        }
        if create.activation_ttl_secs > 0 {
            request = request
                .with_activation_ttl(Duration::from_secs(u64::from(create.activation_ttl_secs)));
        }
        if create.mapping_ttl_secs > 0 {
            request =
                request.with_mapping_ttl(Duration::from_secs(u64::from(create.mapping_ttl_secs)));
        }
        let code = loop {
            let code = Code::generate(&mut self.rng);
            if !self.state.codes.contains_key(&code) {
                break code;
            }
        };
        match ConnectionCode::issue(code, request, wall) {
            Ok(issued) => {
                let info = code_info(&issued);
                self.persist(StateChange::PutCode(issued));
                Reply::Code(info)
            }
            Err(e) => error(ControlErrorKind::Invalid, e.to_string()),
        }
    }

    fn activate_code(
        &mut self,
        now: Instant,
        client: ClientId,
        wall: UnixMillis,
        activate: pb::ActivateCode,
    ) -> Reply {
        let Ok(code) = Code::parse(&activate.code) else {
            return error(
                ControlErrorKind::Invalid,
                format!("`{}` is not a connection code", activate.code.trim()),
            );
        };
        let Some(mut offer) = self.state.codes.get(&code).cloned() else {
            return error(
                ControlErrorKind::NotFound,
                format!("no connection code {code}"),
            );
        };
        let mapping = match offer.activate(wall, client, &activate.listen_addr, &mut self.rng) {
            Ok(mapping) => mapping,
            Err(e) => return code_error(e),
        };
        let info = pb::MappingInfo {
            mapping_id: mapping.id.as_str().to_owned(),
            listen_addr: activate.listen_addr.clone(),
            target: target_addr(&mapping.target),
            expires_at_ms: mapping.expires_at.map_or(0, |t| t.0),
        };
        // The code is spent before anything else can run; if the mapping is refused (quota),
        // the code goes back to what it was.
        let before = self.state.codes.get(&code).cloned();
        self.persist(StateChange::PutCode(offer));
        if let Err(e) = self.put_mapping(now, mapping) {
            if let Some(before) = before {
                self.persist(StateChange::PutCode(before));
            }
            return admin_error(e);
        }
        Reply::Mapping(info)
    }

    fn revoke_code(&mut self, client: ClientId, wall: UnixMillis, code: &str) -> Reply {
        let Ok(code) = Code::parse(code) else {
            return error(
                ControlErrorKind::Invalid,
                format!("`{}` is not a connection code", code.trim()),
            );
        };
        let Some(mut offer) = self.state.codes.get(&code).cloned() else {
            return error(
                ControlErrorKind::NotFound,
                format!("no connection code {code}"),
            );
        };
        if offer.target_client() != client {
            return error(
                ControlErrorKind::Forbidden,
                "only the client that created a code may revoke it",
            );
        }
        match offer.revoke(wall) {
            Ok(()) => {
                let info = code_info(&offer);
                self.persist(StateChange::PutCode(offer));
                Reply::Code(info)
            }
            Err(e) => code_error(e),
        }
    }
}
