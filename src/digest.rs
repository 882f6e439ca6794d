//! A small stable fingerprint (FNV-1a, 64 bit) for ledger fields such as the migration-set
//! digest and a run's tenant scope. Not for security.

pub fn fnv1a_hex(bytes: impl IntoIterator<Item = u8>) -> String {
    format!("{:016x}", fnv1a(bytes))
}

/// The hash itself (also the stable, spread order of a staged rollout's tenants).
pub fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
