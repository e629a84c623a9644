//! Parsing of the `-m/--cpumask` option.
//!
//! Two spellings are accepted, as SPDK accepts them:
//! - a hexadecimal mask, `0x3` (a bare number such as `3` is also read as hex, as SPDK does);
//! - a list of cores and ranges, `0,1`, `0-3`, or `[0,2-3]`.

use thiserror::Error;

/// Upper bound on a core index we accept in a mask; a mask naming more is malformed.
pub const MAX_CORES: usize = 1024;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CpumaskError {
    #[error("cpumask {0:?} selects no core (a bare number is a hex mask, as in SPDK: core 0 is 0x1 or [0])")]
    Empty(String),
    #[error("cpumask {mask:?} is malformed: {reason}")]
    Malformed { mask: String, reason: String },
    #[error("cpumask {mask:?} names core {core}, which this process cannot run on (available cores: {available:?})")]
    NoSuchCore {
        mask: String,
        core: usize,
        available: Vec<usize>,
    },
}

/// A sorted, duplicate-free set of cores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuMask {
    cores: Vec<usize>,
}

impl CpuMask {
    /// Parses `text` and checks every core against `available` (the cores this process may use).
    pub fn parse(text: &str, available: &[usize]) -> Result<CpuMask, CpumaskError> {
        let mask = text.trim();
        let malformed = |reason: &str| CpumaskError::Malformed {
            mask: text.to_string(),
            reason: reason.to_string(),
        };
        if mask.is_empty() {
            return Err(CpumaskError::Empty(text.to_string()));
        }
        let is_list = mask.contains(',') || mask.contains('-') || mask.starts_with('[');
        let mut cores = Vec::new();
        if is_list {
            let inner = mask.trim_start_matches('[').trim_end_matches(']');
            for part in inner.split(',') {
                let part = part.trim();
                if part.is_empty() {
                    return Err(malformed("empty list element"));
                }
                let (lo, hi) = match part.split_once('-') {
                    Some((lo, hi)) => (parse_core(lo.trim(), text)?, parse_core(hi.trim(), text)?),
                    None => {
                        let core = parse_core(part, text)?;
                        (core, core)
                    }
                };
                if lo > hi {
                    return Err(malformed("range runs backwards"));
                }
                cores.extend(lo..=hi);
            }
        } else {
            let hex = mask
                .strip_prefix("0x")
                .or_else(|| mask.strip_prefix("0X"))
                .unwrap_or(mask);
            if hex.is_empty() || hex.len() > MAX_CORES / 4 {
                return Err(malformed("hex mask is empty or too long"));
            }
            for (nibble_index, c) in hex.chars().rev().enumerate() {
                let nibble = c.to_digit(16).ok_or_else(|| malformed("not a hex digit"))? as usize;
                for bit in 0..4 {
                    if nibble & (1 << bit) != 0 {
                        cores.push(nibble_index * 4 + bit);
                    }
                }
            }
        }
        cores.sort_unstable();
        cores.dedup();
        if cores.is_empty() {
            return Err(CpumaskError::Empty(text.to_string()));
        }
        if let Some(&core) = cores.iter().find(|c| !available.contains(c)) {
            return Err(CpumaskError::NoSuchCore {
                mask: text.to_string(),
                core,
                available: available.to_vec(),
            });
        }
        debug_assert!(cores.windows(2).all(|w| w[0] < w[1]));
        Ok(CpuMask { cores })
    }

    /// One core.
    pub fn single(core: usize) -> CpuMask {
        CpuMask { cores: vec![core] }
    }

    pub fn cores(&self) -> &[usize] {
        &self.cores
    }

    /// SPDK's hex spelling of this mask, e.g. `0x3`.
    pub fn to_hex(&self) -> String {
        let top = *self.cores.last().expect("a CpuMask is never empty");
        let mut nibbles = vec![0u8; top / 4 + 1];
        for &c in &self.cores {
            nibbles[c / 4] |= 1 << (c % 4);
        }
        let digits: String = nibbles
            .iter()
            .rev()
            .map(|n| char::from_digit(*n as u32, 16).expect("nibble < 16"))
            .collect();
        // The top nibble holds the highest core, so it is never zero.
        debug_assert!(!digits.starts_with('0'));
        format!("0x{digits}")
    }
}

fn parse_core(s: &str, whole: &str) -> Result<usize, CpumaskError> {
    let core: usize = s.parse().map_err(|_| CpumaskError::Malformed {
        mask: whole.to_string(),
        reason: format!("{s:?} is not a core number"),
    })?;
    if core >= MAX_CORES {
        return Err(CpumaskError::Malformed {
            mask: whole.to_string(),
            reason: format!("core {core} is above the limit of {MAX_CORES}"),
        });
    }
    Ok(core)
}

/// The cores this process may run on, from its affinity mask.
pub fn available_cores() -> Vec<usize> {
    let mut ids: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    ids.sort_unstable();
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    const AVAIL: &[usize] = &[0, 1, 2, 3];

    #[test]
    fn hex_masks() {
        assert_eq!(CpuMask::parse("0x3", AVAIL).unwrap().cores(), &[0, 1]);
        assert_eq!(CpuMask::parse("0xA", AVAIL).unwrap().cores(), &[1, 3]);
        assert_eq!(CpuMask::parse("1", AVAIL).unwrap().cores(), &[0]);
    }

    #[test]
    fn lists_and_ranges() {
        assert_eq!(CpuMask::parse("0,1", AVAIL).unwrap().cores(), &[0, 1]);
        assert_eq!(
            CpuMask::parse("[0,2-3]", AVAIL).unwrap().cores(),
            &[0, 2, 3]
        );
        assert_eq!(CpuMask::parse("1-2,1", AVAIL).unwrap().cores(), &[1, 2]);
    }

    #[test]
    fn hex_round_trip() {
        for text in ["0x1", "0x3", "0xa", "0xf"] {
            assert_eq!(CpuMask::parse(text, AVAIL).unwrap().to_hex(), text);
        }
    }

    #[test]
    fn bad_masks() {
        assert!(matches!(
            CpuMask::parse("", AVAIL),
            Err(CpumaskError::Empty(_))
        ));
        assert!(matches!(
            CpuMask::parse("0x0", AVAIL),
            Err(CpumaskError::Empty(_))
        ));
        assert!(matches!(
            CpuMask::parse("0xZ", AVAIL),
            Err(CpumaskError::Malformed { .. })
        ));
        assert!(matches!(
            CpuMask::parse("3-1", AVAIL),
            Err(CpumaskError::Malformed { .. })
        ));
        assert!(matches!(
            CpuMask::parse("0,,1", AVAIL),
            Err(CpumaskError::Malformed { .. })
        ));
        assert!(matches!(
            CpuMask::parse("0,99999", AVAIL),
            Err(CpumaskError::Malformed { .. })
        ));
        assert!(matches!(
            CpuMask::parse("0x10", AVAIL),
            Err(CpumaskError::NoSuchCore { core: 4, .. })
        ));
        assert!(matches!(
            CpuMask::parse("0,7", AVAIL),
            Err(CpumaskError::NoSuchCore { core: 7, .. })
        ));
    }
}
