//! A software prefetch: a hint to start loading a cache line, for lookups whose keys are known
//! some steps before they are needed.

/// How many items ahead a loop starts loading what a later item will read: about the work of
/// eight items covers a miss to memory. A load that needs a line it must load first (a slot,
/// then the state it points to) starts the first line `2 * AHEAD` items ahead and the second
/// `AHEAD` ahead.
pub(crate) const AHEAD: usize = 8;

/// Starts loading the `lines` cache lines from `ptr` into the cache, without waiting for them.
#[inline(always)]
pub(crate) fn prefetch<T>(ptr: *const T, lines: usize) {
    #[cfg(target_arch = "x86_64")]
    for i in 0..lines {
        let p = (ptr as *const u8).wrapping_add(i * 64) as *const i8;
        // SAFETY: a prefetch is only a hint: it neither reads nor writes memory as far as the
        // program can observe, and it never faults, whatever the address.
        #[allow(unsafe_code)]
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (ptr, lines);
}

/// Starts loading the line of an `Rc`'s reference counts (a hint), for a clone or a drop some
/// steps ahead. The counts sit just before the value; were they elsewhere, the hint would only
/// load the wrong line.
#[inline(always)]
pub(crate) fn prefetch_counts<T: ?Sized>(rc: &std::rc::Rc<T>) {
    let value = std::rc::Rc::as_ptr(rc) as *const u8;
    prefetch(value.wrapping_sub(2 * size_of::<usize>()), 1);
}
