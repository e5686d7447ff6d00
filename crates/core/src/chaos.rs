//! Deterministic "randomness": a stable hash of ids mapped to [0, 1). Used for retry jitter and
//! for failure injection, so the same seed gives the same failure schedule on every machine.

/// FNV-1a over the parts (with separators), finished with a splitmix64 round.
pub fn hash64(seed: u64, parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for p in parts {
        for b in p.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A value in [0, 1) derived from the parts.
pub fn unit_hash(seed: u64, parts: &[&str]) -> f64 {
    (hash64(seed, parts) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_hash_is_spread_and_stable() {
        let n = 10_000;
        let hits = (0..n).filter(|i| unit_hash(7, &["step", &i.to_string()]) < 0.3).count();
        assert!((2_700..3_300).contains(&hits), "{hits}");
        assert_eq!(unit_hash(7, &["a"]), unit_hash(7, &["a"]));
        assert_ne!(unit_hash(7, &["a"]), unit_hash(8, &["a"]));
    }
}
