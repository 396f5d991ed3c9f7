//! BUGGIFY knobs: per-seed switches that push hosts and the network into rare corners.
//!
//! Each knob is turned on for a seed with [`KnobMix::probability`]; the set is printed with the
//! seed so a failure can be replayed with the same configuration. Hosts read the knobs to shrink
//! their core configs; the network reads the ones about delivery. [`crate::HostCtx::buggify`]
//! offers FoundationDB-style code-site injection on top.

use std::fmt;
use tunnox_core::rng::Rng;

/// Per-seed BUGGIFY switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Knobs {
    /// Hosts should use tiny stream and session flow-control windows.
    pub tiny_windows: bool,
    /// Hosts should use the smallest legal frame payload size.
    pub tiny_max_frame: bool,
    /// Hosts should shrink their timeouts (keepalive, handshake, idle) close to the minimum.
    pub short_timeouts: bool,
    /// Hosts should allow one stream per session (max streams = 1).
    pub one_stream_per_session: bool,
    /// Hosts should use tiny send buffers and pending-open limits (back-pressure paths).
    pub small_buffers: bool,
    /// The network delivers stream data in 1-byte pieces.
    pub split_deliveries_bytewise: bool,
    /// The network's latency tail is ten times as likely.
    pub heavy_latency_tail: bool,
    /// `HostCtx::buggify` sites may fire at all for this seed.
    pub buggify_sites: bool,
}

/// How knobs are drawn for a seed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KnobMix {
    /// Probability that each knob is on for a seed (0.0 turns every knob off).
    pub probability: f64,
    /// Whether `split_deliveries_bytewise` may be drawn (it multiplies delivery events).
    pub allow_bytewise: bool,
}

impl Default for KnobMix {
    fn default() -> Self {
        KnobMix {
            probability: 0.25,
            allow_bytewise: true,
        }
    }
}

impl KnobMix {
    /// A mix that turns every knob off.
    pub fn off() -> KnobMix {
        KnobMix {
            probability: 0.0,
            allow_bytewise: false,
        }
    }
}

impl Knobs {
    /// Draws a knob set from `rng` (a fixed number of draws, whatever the mix).
    pub fn generate(rng: &mut Rng, mix: &KnobMix) -> Knobs {
        let mut draw = || rng.unit_f64() < mix.probability;
        Knobs {
            tiny_windows: draw(),
            tiny_max_frame: draw(),
            short_timeouts: draw(),
            one_stream_per_session: draw(),
            small_buffers: draw(),
            split_deliveries_bytewise: draw() && mix.allow_bytewise,
            heavy_latency_tail: draw(),
            buggify_sites: draw(),
        }
    }

    /// Names of the knobs that are on.
    pub fn enabled(&self) -> Vec<&'static str> {
        let all = [
            ("tiny_windows", self.tiny_windows),
            ("tiny_max_frame", self.tiny_max_frame),
            ("short_timeouts", self.short_timeouts),
            ("one_stream_per_session", self.one_stream_per_session),
            ("small_buffers", self.small_buffers),
            ("split_deliveries_bytewise", self.split_deliveries_bytewise),
            ("heavy_latency_tail", self.heavy_latency_tail),
            ("buggify_sites", self.buggify_sites),
        ];
        all.iter().filter(|(_, on)| *on).map(|(n, _)| *n).collect()
    }
}

impl fmt::Display for Knobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let on = self.enabled();
        if on.is_empty() {
            write!(f, "knobs: none")
        } else {
            write!(f, "knobs: {}", on.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roughly_a_quarter_on_and_reproducible() {
        let mut on = 0;
        for seed in 0..400 {
            let k = Knobs::generate(&mut Rng::seed_from_u64(seed), &KnobMix::default());
            assert_eq!(
                k,
                Knobs::generate(&mut Rng::seed_from_u64(seed), &KnobMix::default())
            );
            on += k.enabled().len();
        }
        let share = on as f64 / (400.0 * 8.0);
        assert!((0.18..0.32).contains(&share), "share {share}");
        let off = Knobs::generate(&mut Rng::seed_from_u64(1), &KnobMix::off());
        assert_eq!(off, Knobs::default());
        assert_eq!(off.to_string(), "knobs: none");
    }
}
