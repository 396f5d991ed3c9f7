//! Lowercase hexadecimal: how keys, secrets, digests and nonces are written as text.

/// `bytes` as lowercase hex.
pub fn encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// Exactly `N` bytes from `2 × N` hex digits (either case); `None` for anything else.
pub fn decode<const N: usize>(s: &str) -> Option<[u8; N]> {
    let digits = s.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let hi = char::from(pair[0]).to_digit(16)?;
        let lo = char::from(pair[1]).to_digit(16)?;
        *byte = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_wrong_lengths_and_digits() {
        let bytes = [0x00, 0x7f, 0xa5, 0xff];
        assert_eq!(encode(&bytes), "007fa5ff");
        assert_eq!(decode::<4>("007fa5ff"), Some(bytes));
        assert_eq!(decode::<4>("007FA5FF"), Some(bytes));
        assert_eq!(decode::<4>("007fa5f"), None);
        assert_eq!(decode::<4>("007fa5ffaa"), None);
        assert_eq!(decode::<4>("007fa5fg"), None);
        assert_eq!(decode::<4>("007fa5é"), None);
    }
}
