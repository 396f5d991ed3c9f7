//! Reason codes carried in the value field of RST and GOAWAY frames.

macro_rules! reason_codes {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $code:literal,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)*
            /// A code this version does not know (sent by a newer peer); kept as is.
            Other(u32),
        }

        impl $name {
            /// The numeric code on the wire.
            pub fn code(self) -> u32 {
                match self {
                    $($name::$variant => $code,)*
                    $name::Other(code) => code,
                }
            }

            /// The reason for a numeric code.
            pub fn from_code(code: u32) -> $name {
                match code {
                    $($code => $name::$variant,)*
                    other => $name::Other(other),
                }
            }
        }
    };
}

reason_codes! {
    /// Why a stream was reset.
    ResetReason {
        /// The application abandoned the stream.
        Cancel = 0,
        /// The receiver refused the open (limits, going away).
        Refused = 1,
        /// The peer sent more than the credit it was granted.
        FlowControl = 2,
        /// Too many concurrent streams or pending opens.
        StreamLimit = 3,
        /// The peer broke the protocol on this stream.
        ProtocolError = 4,
        /// An internal error of the sender.
        Internal = 5,
        /// The far end of the tunnel failed (target connection reset or dial failed).
        TargetFailed = 6,
        /// The stream timed out.
        Timeout = 7,
    }
}

reason_codes! {
    /// Why a session is going away.
    GoAwayReason {
        /// Normal close; no error.
        Normal = 0,
        /// The peer broke the protocol.
        ProtocolError = 1,
        /// A newer login of the same client replaced this session.
        Replaced = 2,
        /// The sender is shutting down (drain, then reconnect elsewhere).
        Shutdown = 3,
        /// The peer went silent past the heartbeat timeout.
        HeartbeatTimeout = 4,
        /// The peer violated session flow control.
        FlowControl = 5,
        /// An internal error of the sender.
        Internal = 6,
        /// An administrator disconnected the client.
        Kicked = 7,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_codes_survive() {
        for code in 0..20 {
            assert_eq!(ResetReason::from_code(code).code(), code);
            assert_eq!(GoAwayReason::from_code(code).code(), code);
        }
        assert_eq!(ResetReason::from_code(6), ResetReason::TargetFailed);
        assert_eq!(GoAwayReason::from_code(999), GoAwayReason::Other(999));
    }
}
