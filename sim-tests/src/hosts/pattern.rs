//! Deterministic stream contents: byte `i` of stream `seed` is a pure function of both, so a
//! receiver checks integrity without the sender's copy.

use bytes::Bytes;

/// Byte `offset` of the stream named by `seed`.
pub fn byte_at(seed: u64, offset: u64) -> u8 {
    let word = splitmix(seed ^ (offset / 8).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    (word >> ((offset % 8) * 8)) as u8
}

/// `len` bytes of stream `seed` from `offset` (one hash per 8 bytes).
pub fn chunk(seed: u64, offset: u64, len: usize) -> Bytes {
    let mut out = Vec::with_capacity(len);
    fill(seed, offset, len, &mut out);
    out.into()
}

fn fill(seed: u64, offset: u64, len: usize, out: &mut Vec<u8>) {
    let end = offset + len as u64;
    let mut at = offset;
    while at < end {
        let word = splitmix(seed ^ (at / 8).wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_le_bytes();
        let from = (at % 8) as usize;
        let take = (8 - from).min((end - at) as usize);
        out.extend_from_slice(&word[from..from + take]);
        at += take as u64;
    }
}

/// Where `bytes`, claimed to start at `offset` of stream `seed`, first differ from it.
pub fn first_mismatch(seed: u64, offset: u64, bytes: &[u8]) -> Option<u64> {
    let mut expected = Vec::with_capacity(bytes.len());
    fill(seed, offset, bytes.len(), &mut expected);
    if expected == bytes {
        return None;
    }
    bytes
        .iter()
        .zip(&expected)
        .position(|(a, b)| a != b)
        .map(|i| offset + i as u64)
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
        for offset in 0..20 {
            let c = chunk(3, offset, 37);
            for (i, b) in c.iter().enumerate() {
                assert_eq!(*b, byte_at(3, offset + i as u64));
            }
        }
        let mut bad = chunk(9, 5, 30).to_vec();
        bad[17] ^= 1;
        assert_eq!(first_mismatch(9, 5, &bad), Some(22));
        let c = chunk(7, 100, 64);
        assert_eq!(first_mismatch(7, 100, &c), None);
        assert_eq!(first_mismatch(7, 101, &c).map(|o| o >= 101), Some(true));
        assert_ne!(chunk(7, 0, 16), chunk(8, 0, 16));
    }
}
