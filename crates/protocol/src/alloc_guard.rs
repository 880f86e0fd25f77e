//! A global allocator that keeps huge allocation requests from aborting the process.
//!
//! The `kafka-protocol` decoders reserve `Vec::with_capacity(n)` for an array count `n` read
//! from the wire before checking that the bytes exist. A hostile count (2^31 elements of a
//! 100-byte struct) asks for hundreds of GiB; the system allocator refuses and Rust aborts.
//! Requests of at least [`HUGE_BYTES`] are served instead by an anonymous `MAP_NORESERVE`
//! mapping: address space only, no memory is committed until touched, so the decoder fails
//! cleanly on the short buffer and the mapping is released. Ordinary allocations go to the
//! system allocator unchanged.

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations at or above this size are mapped lazily.
pub const HUGE_BYTES: usize = 1 << 30;

pub struct GuardedAllocator;

unsafe impl GlobalAlloc for GuardedAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= HUGE_BYTES && layout.align() <= 4096 {
            return map(layout.size());
        }
        // SAFETY: forwarded with the caller's layout contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() >= HUGE_BYTES && layout.align() <= 4096 {
            // SAFETY: the pointer came from `map` with this size.
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
            return;
        }
        // SAFETY: forwarded with the caller's layout contract.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let huge_before = layout.size() >= HUGE_BYTES && layout.align() <= 4096;
        let huge_after = new_size >= HUGE_BYTES && layout.align() <= 4096;
        if !huge_before && !huge_after {
            // SAFETY: forwarded with the caller's layout contract.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: the new layout has the same alignment and a non-zero size.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: as for alloc.
        let new_ptr = unsafe { self.alloc(new_layout) };
        if !new_ptr.is_null() {
            // SAFETY: both regions are valid for the smaller size and do not overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new_ptr, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new_ptr
    }
}

fn map(size: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping has no preconditions; failure is MAP_FAILED.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        ptr.cast()
    }
}
