//! The node's answers to clients' control requests: connection codes created, listed, revoked
//! and redeemed over the session, so two clients can set up a mapping without an administrator.

use tunnox_proto::wire::{
    self as pb, ControlErrorKind, control_request::Body, control_response::Result as Reply,
};

use super::{AdminError, ConnId, Node};
use crate::control::{
    ClientId, Code, CodeError, CodeRequest, CodeState, ConnectionCode, Protocol, Target,
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
        AdminError::Conflict(_) | AdminError::InUse(_) => ControlErrorKind::Invalid,
        AdminError::NotFound(_) => ControlErrorKind::NotFound,
        AdminError::Code(e) => return code_error(e),
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
        let reply = match request.body {
            Some(Body::CreateCode(create)) => self.answer_create_code(now, client, create),
            Some(Body::ActivateCode(activate)) => self.answer_activate_code(now, client, activate),
            Some(Body::ListCodes(_)) => Reply::Codes(pb::CodeList {
                codes: self
                    .state
                    .codes
                    .values()
                    .filter(|c| c.target_client() == client)
                    .map(code_info)
                    .collect(),
            }),
            Some(Body::RevokeCode(revoke)) => self.answer_revoke_code(now, client, &revoke.code),
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

    fn answer_create_code(
        &mut self,
        now: Instant,
        client: ClientId,
        create: pb::CreateCode,
    ) -> Reply {
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
        if create.activation_ttl_secs > 0 {
            request = request
                .with_activation_ttl(Duration::from_secs(u64::from(create.activation_ttl_secs)));
        }
        if create.mapping_ttl_secs > 0 {
            request =
                request.with_mapping_ttl(Duration::from_secs(u64::from(create.mapping_ttl_secs)));
        }
        match self.issue_code(now, request) {
            Ok(issued) => Reply::Code(code_info(&issued)),
            Err(e) => admin_error(e),
        }
    }

    fn answer_activate_code(
        &mut self,
        now: Instant,
        client: ClientId,
        activate: pb::ActivateCode,
    ) -> Reply {
        let Ok(code) = Code::parse(&activate.code) else {
            return error(
                ControlErrorKind::Invalid,
                format!("`{}` is not a connection code", activate.code.trim()),
            );
        };
        match self.redeem_code(now, client, &code, &activate.listen_addr) {
            Ok(mapping) => Reply::Mapping(pb::MappingInfo {
                mapping_id: mapping.id.as_str().to_owned(),
                listen_addr: activate.listen_addr.clone(),
                target: target_addr(&mapping.target),
                expires_at_ms: mapping.expires_at.map_or(0, |t| t.0),
            }),
            Err(e) => admin_error(e),
        }
    }

    fn answer_revoke_code(&mut self, now: Instant, client: ClientId, code: &str) -> Reply {
        let Ok(code) = Code::parse(code) else {
            return error(
                ControlErrorKind::Invalid,
                format!("`{}` is not a connection code", code.trim()),
            );
        };
        if self
            .state
            .codes
            .get(&code)
            .is_some_and(|offer| offer.target_client() != client)
        {
            return error(
                ControlErrorKind::Forbidden,
                "only the client that created a code may revoke it",
            );
        }
        match self.revoke_code(now, &code) {
            Ok(revoked) => Reply::Code(code_info(&revoked)),
            Err(e) => admin_error(e),
        }
    }
}
