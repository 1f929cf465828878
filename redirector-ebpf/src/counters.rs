//! Per-CPU counters: plain increments, no atomics needed.

/// Adds one to a field of the per-CPU [`Counters`](redirector_common::Counters).
macro_rules! bump {
    ($field:ident) => {
        if let Some(c) = $crate::maps::COUNTERS.get_ptr_mut(0) {
            // SAFETY: this CPU's slot of a preallocated per-CPU array; only this CPU writes it.
            // (`allow`: callers inside an `unsafe` block make this block redundant.)
            #[allow(unused_unsafe)]
            let () = unsafe { (*c).$field += 1 };
        }
    };
}
pub(crate) use bump;
