//! The verify workload's data pattern: every 8-byte word carries its block address and a seed,
//! so a block that lands in the wrong place, or holds stale or torn data, is caught.

#[inline]
fn word(seed: u64, lba: u64, word_index: u64) -> u64 {
    // splitmix64 of a value unique to (seed, lba, word): cheap and well mixed.
    let mut z = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(lba.wrapping_mul(0xBF58_476D_1CE4_E5B9))
        .wrapping_add(word_index);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Fills `buf` with the pattern for blocks starting at `first_lba`.
pub fn fill(buf: &mut [u8], first_lba: u64, block_size: usize, seed: u64) {
    debug_assert_eq!(buf.len() % block_size, 0);
    let words_per_block = block_size / 8;
    for (i, chunk) in buf.chunks_exact_mut(8).enumerate() {
        let lba = first_lba + (i / words_per_block) as u64;
        let w = word(seed, lba, (i % words_per_block) as u64);
        chunk.copy_from_slice(&w.to_le_bytes());
    }
}

/// A word that did not hold what was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch {
    pub lba: u64,
    pub byte_in_block: usize,
    pub expected: u64,
    pub found: u64,
}

/// Checks `buf` against the pattern; returns the first bad word.
pub fn check(buf: &[u8], first_lba: u64, block_size: usize, seed: u64) -> Option<Mismatch> {
    let words_per_block = block_size / 8;
    for (i, chunk) in buf.chunks_exact(8).enumerate() {
        let lba = first_lba + (i / words_per_block) as u64;
        let word_index = i % words_per_block;
        let expected = word(seed, lba, word_index as u64);
        let found = u64::from_le_bytes(chunk.try_into().expect("chunks of 8"));
        if found != expected {
            return Some(Mismatch {
                lba,
                byte_in_block: word_index * 8,
                expected,
                found,
            });
        }
    }
    None
}

/// Fills `buf` with tagged blocks for the crash workload: each block's first word is `tag`,
/// its second its LBA, the rest the pattern for (tag, lba), so a block tells which write made
/// it and whether it is whole.
pub fn fill_tagged(buf: &mut [u8], first_lba: u64, block_size: usize, tag: u64) {
    fill(buf, first_lba, block_size, tag);
    for (i, block) in buf.chunks_exact_mut(block_size).enumerate() {
        block[0..8].copy_from_slice(&tag.to_le_bytes());
        block[8..16].copy_from_slice(&(first_lba + i as u64).to_le_bytes());
    }
}

/// What a block of the crash workload holds: None (zeroes), Some(tag) (one whole write), or
/// Err (torn, stale from another block, or garbage).
pub fn read_tag(block: &[u8], lba: u64) -> Result<Option<u64>, Mismatch> {
    if block.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let tag = u64::from_le_bytes(block[0..8].try_into().expect("8 bytes"));
    let at = u64::from_le_bytes(block[8..16].try_into().expect("8 bytes"));
    if at != lba {
        return Err(Mismatch {
            lba,
            byte_in_block: 8,
            expected: lba,
            found: at,
        });
    }
    let words = block.len() / 8;
    for i in 2..words {
        let found = u64::from_le_bytes(block[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        let expected = word(tag, lba, i as u64);
        if found != expected {
            return Err(Mismatch {
                lba,
                byte_in_block: i * 8,
                expected,
                found,
            });
        }
    }
    Ok(Some(tag))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_detection() {
        let mut buf = vec![0u8; 4 * 512];
        fill(&mut buf, 100, 512, 7);
        assert_eq!(check(&buf, 100, 512, 7), None);
        // Wrong place, wrong seed, and one flipped bit are all caught.
        assert_eq!(check(&buf, 101, 512, 7).unwrap().lba, 101);
        assert!(check(&buf, 100, 512, 8).is_some());
        buf[3 * 512 + 17] ^= 1;
        let m = check(&buf, 100, 512, 7).unwrap();
        assert_eq!((m.lba, m.byte_in_block), (103, 16));
    }
}
