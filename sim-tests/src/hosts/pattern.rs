//! Deterministic stream contents: byte `i` of stream `seed` is a pure function of both, so a
//! receiver checks integrity without the sender's copy.

use bytes::Bytes;

/// Byte `offset` of the stream named by `seed`.
pub fn byte_at(seed: u64, offset: u64) -> u8 {
    let word = splitmix(seed ^ (offset / 8).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    (word >> ((offset % 8) * 8)) as u8
}

/// `len` bytes of stream `seed` from `offset`.
pub fn chunk(seed: u64, offset: u64, len: usize) -> Bytes {
    (0..len as u64)
        .map(|i| byte_at(seed, offset + i))
        .collect::<Vec<u8>>()
        .into()
}

/// Where `bytes`, claimed to start at `offset` of stream `seed`, first differ from it.
pub fn first_mismatch(seed: u64, offset: u64, bytes: &[u8]) -> Option<u64> {
    bytes
        .iter()
        .enumerate()
        .find(|(i, b)| **b != byte_at(seed, offset + *i as u64))
        .map(|(i, _)| offset + i as u64)
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_agree_with_bytes_and_mismatches_are_found() {
        let c = chunk(7, 100, 64);
        assert_eq!(first_mismatch(7, 100, &c), None);
        assert_eq!(first_mismatch(7, 101, &c).map(|o| o >= 101), Some(true));
        assert_ne!(chunk(7, 0, 16), chunk(8, 0, 16));
    }
}
