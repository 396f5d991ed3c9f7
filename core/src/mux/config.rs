//! Limits and windows of a mux, and the settings each side announces to the other.

use tunnox_proto::wire::MuxSettings;

/// Local limits of one mux. Every buffer the mux keeps is bounded by one of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MuxConfig {
    /// Receive window each new stream starts with, in bytes (announced to the peer).
    pub stream_window_bytes: u32,
    /// Largest receive window auto-tuning may grow a stream to, in bytes.
    pub stream_window_max_bytes: u32,
    /// Receive window of the whole session, in bytes (announced to the peer).
    pub session_window_bytes: u32,
    /// Largest DATA payload this side sends (DATA is split at this size) and accepts.
    pub max_frame_payload_bytes: u32,
    /// Most concurrent streams, both directions together.
    pub max_streams: u32,
    /// Most of our opens that may await the peer's OPEN_RESULT at once (back-pressure on opens).
    pub max_pending_opens: u32,
    /// Most peer opens that may await the local application's accept; more are refused.
    pub max_pending_accepts: u32,
    /// Bytes the application may queue on one stream ahead of the peer's credit.
    pub send_buffer_bytes: u32,
    /// Most control frames (window updates, resets, pongs, open results) queued unsent before the
    /// peer is judged abusive (it sends work but does not read our answers).
    pub max_queued_control_frames: u32,
}

impl Default for MuxConfig {
    fn default() -> Self {
        MuxConfig {
            stream_window_bytes: 256 * 1024,
            stream_window_max_bytes: 16 * 1024 * 1024,
            session_window_bytes: 16 * 1024 * 1024,
            max_frame_payload_bytes: 64 * 1024,
            max_streams: 65_536,
            max_pending_opens: 256,
            max_pending_accepts: 256,
            send_buffer_bytes: 1024 * 1024,
            max_queued_control_frames: 16 * 1024,
        }
    }
}

impl MuxConfig {
    /// What this side announces to the peer.
    pub fn settings(&self) -> PeerSettings {
        PeerSettings {
            stream_window_bytes: self.stream_window_bytes,
            session_window_bytes: self.session_window_bytes,
            max_frame_payload_bytes: self.max_frame_payload_bytes,
            max_streams: self.max_streams,
        }
    }

    /// Checks the config is usable: every limit positive, windows ordered, frame size sane.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.stream_window_bytes == 0 || self.session_window_bytes == 0 {
            return Err("windows must be positive");
        }
        if self.stream_window_max_bytes < self.stream_window_bytes {
            return Err("stream_window_max_bytes must be at least stream_window_bytes");
        }
        if self.max_frame_payload_bytes < 16 {
            return Err("max_frame_payload_bytes must be at least 16");
        }
        if self.max_streams == 0 || self.max_pending_opens == 0 || self.max_pending_accepts == 0 {
            return Err("stream limits must be positive");
        }
        if self.send_buffer_bytes == 0 || self.max_queued_control_frames == 0 {
            return Err("buffer limits must be positive");
        }
        Ok(())
    }
}

/// What one side tells the other about what it will receive (sent in the handshake).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerSettings {
    /// Initial credit of each stream the peer will give us.
    pub stream_window_bytes: u32,
    /// Initial session credit.
    pub session_window_bytes: u32,
    /// Largest DATA payload the peer accepts.
    pub max_frame_payload_bytes: u32,
    /// Most concurrent streams the peer allows.
    pub max_streams: u32,
}

impl From<PeerSettings> for MuxSettings {
    fn from(s: PeerSettings) -> MuxSettings {
        MuxSettings {
            stream_window_bytes: s.stream_window_bytes,
            session_window_bytes: s.session_window_bytes,
            max_frame_payload_bytes: s.max_frame_payload_bytes,
            max_streams: s.max_streams,
        }
    }
}

impl PeerSettings {
    /// Reads announced settings, refusing zero windows or a frame size too small to be useful.
    pub fn from_wire(s: &MuxSettings) -> Result<PeerSettings, &'static str> {
        if s.stream_window_bytes == 0 || s.session_window_bytes == 0 {
            return Err("peer announced a zero window");
        }
        if s.max_frame_payload_bytes < 16 {
            return Err("peer announced a frame size below 16 bytes");
        }
        if s.max_streams == 0 {
            return Err("peer allows no streams");
        }
        Ok(PeerSettings {
            stream_window_bytes: s.stream_window_bytes,
            session_window_bytes: s.session_window_bytes,
            max_frame_payload_bytes: s.max_frame_payload_bytes,
            max_streams: s.max_streams,
        })
    }
}
