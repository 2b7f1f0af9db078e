//! The device memory pool. Every device buffer comes from here and goes back here on drop;
//! the driver (or, on the emulator, the host allocator) is asked only when no cached block of
//! the rounded size is free. A training step allocates the same sizes in the same order every
//! time, so after the first (warm-up) step the pool serves every request from its cache and
//! the driver is not called inside a step: `driver_allocs` stays put, which the tests assert.

use std::collections::BTreeMap;

/// Sizes are rounded up to this many bytes (and a block is at least this big), which also
/// keeps every buffer 512-byte aligned for vector loads.
pub const GRANULE: usize = 512;

/// What the pool holds and has held.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Bytes in live buffers now.
    pub in_use: usize,
    /// The most bytes in live buffers at once since the last [`Pool::reset_peak`].
    pub peak_in_use: usize,
    /// Bytes obtained from the driver and not yet given back (in use + cached).
    pub reserved: usize,
    /// The most bytes reserved at once.
    pub peak_reserved: usize,
    /// How many times the driver was asked for memory, ever.
    pub driver_allocs: u64,
}

/// The pool's bookkeeping; the memory itself belongs to the engine (see `device.rs`).
#[derive(Default)]
pub struct Pool {
    free: BTreeMap<usize, Vec<u64>>,
    stats: PoolStats,
}

/// The size a request of `bytes` occupies in the pool.
pub fn rounded(bytes: usize) -> usize {
    bytes.max(1).div_ceil(GRANULE) * GRANULE
}

impl Pool {
    /// A cached free block of exactly `size` (already rounded) bytes, if there is one.
    pub fn take(&mut self, size: usize) -> Option<u64> {
        let list = self.free.get_mut(&size)?;
        let addr = list.pop()?;
        if list.is_empty() {
            self.free.remove(&size);
        }
        self.note_use(size);
        Some(addr)
    }
    /// Records a fresh block of `size` bytes from the driver, handed out at once.
    pub fn add_from_driver(&mut self, size: usize) {
        self.stats.driver_allocs += 1;
        self.stats.reserved += size;
        self.stats.peak_reserved = self.stats.peak_reserved.max(self.stats.reserved);
        self.note_use(size);
    }
    /// A buffer's block comes back to the cache.
    pub fn give_back(&mut self, addr: u64, size: usize) {
        self.stats.in_use -= size;
        self.free.entry(size).or_default().push(addr);
    }
    /// Empties the cache; returns the blocks for the engine to free.
    pub fn drain_cache(&mut self) -> Vec<(u64, usize)> {
        let mut out = Vec::new();
        for (size, addrs) in std::mem::take(&mut self.free) {
            self.stats.reserved -= size * addrs.len();
            out.extend(addrs.into_iter().map(|a| (a, size)));
        }
        out
    }
    pub fn stats(&self) -> PoolStats {
        self.stats
    }
    /// Starts a new peak measurement from what is in use now.
    pub fn reset_peak(&mut self) {
        self.stats.peak_in_use = self.stats.in_use;
        self.stats.peak_reserved = self.stats.reserved;
    }
    fn note_use(&mut self, size: usize) {
        self.stats.in_use += size;
        self.stats.peak_in_use = self.stats.peak_in_use.max(self.stats.in_use);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_blocks_of_the_same_size_and_tracks_the_peak() {
        let mut p = Pool::default();
        assert_eq!(rounded(1), GRANULE);
        assert_eq!(rounded(GRANULE + 1), 2 * GRANULE);
        p.add_from_driver(1024);
        p.add_from_driver(512);
        p.give_back(0x1000, 1024);
        assert_eq!(p.take(512), None);
        assert_eq!(p.take(1024), Some(0x1000));
        let s = p.stats();
        assert_eq!(
            (s.in_use, s.peak_in_use, s.reserved, s.driver_allocs),
            (1536, 1536, 1536, 2)
        );
        p.give_back(0x1000, 1024);
        p.reset_peak();
        assert_eq!(p.stats().peak_in_use, 512);
        assert_eq!(p.drain_cache(), vec![(0x1000, 1024)]);
        assert_eq!(p.stats().reserved, 512);
    }
}
