//! Randomness from the operating system's secure source (through rustls's ring provider), in
//! one place: seeds for the node's RNG, admin keys and ids must come from it.

/// `N` bytes from the OS's secure random source; `None` if it cannot be read.
pub fn os_random<const N: usize>() -> Option<[u8; N]> {
    let mut bytes = [0u8; N];
    let provider = rustls::crypto::ring::default_provider();
    provider.secure_random.fill(&mut bytes).ok()?;
    Some(bytes)
}

/// `N` bytes that are unique within the process, random when the OS allows: for nonces and
/// jitter, which must not repeat but need not be secret. Without OS randomness they come from the
/// clock, a counter and the process id.
pub fn unique_bytes<const N: usize>() -> [u8; N] {
    if let Some(bytes) = os_random() {
        return bytes;
    }
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let seed = crate::clock::wall_now().0 ^ n.rotate_left(32) ^ u64::from(std::process::id());
    let mut bytes = [0u8; N];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = (seed.rotate_left((i as u32 % 8) * 8) & 0xff) as u8 ^ (n as u8);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_differ() {
        assert_ne!(os_random::<16>(), os_random::<16>());
        assert_ne!(unique_bytes::<16>(), unique_bytes::<16>());
    }
}
