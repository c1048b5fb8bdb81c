//! The process's allocator: mimalloc, asked the way its fast path wants.
//!
//! The `mimalloc` crate sends every request through `mi_malloc_aligned`, whose fast path covers only
//! blocks of at most 1 KiB with a free block already at the alignment. Everything else (every buffer of
//! more than 1 KiB, however it is aligned) took the aligned slow path: about eight such calls per
//! delivery, a tenth of the allocator's instructions. Every mimalloc block is aligned to at least a
//! machine word, so a request aligned to no more than that is a plain `mi_malloc`; only the rare
//! over-aligned ones (tokio's cache-padded structures) go through `mi_malloc_aligned`.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// What every block mimalloc hands out is aligned to (its smallest size class is one word).
const WORD: usize = std::mem::size_of::<usize>();

pub struct MiMalloc;

// SAFETY: each call forwards to the mimalloc function of the same contract, and a layout aligned to
// more than a word always goes to the aligned variants, which honour any power-of-two alignment.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe {
            if layout.align() <= WORD {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe {
            if layout.align() <= WORD {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        unsafe {
            if layout.align() <= WORD {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size class up to 64 KiB and every alignment up to 4 KiB: the block is aligned as asked,
    /// writable over its whole size, and keeps its bytes through a realloc.
    #[test]
    fn every_size_and_alignment_is_honoured_and_realloc_keeps_the_bytes() {
        let a = MiMalloc;
        let mut size = 1;
        while size <= 64 * 1024 {
            for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
                let layout = Layout::from_size_align(size, align).unwrap();
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    std::ptr::write_bytes(p, 0xa5, size);
                    let q = a.realloc(p, layout, size * 2 + 1);
                    assert_eq!(q as usize % align, 0, "realloc: size {size} align {align}");
                    assert!(
                        std::slice::from_raw_parts(q, size)
                            .iter()
                            .all(|&b| b == 0xa5)
                    );
                    a.dealloc(q, Layout::from_size_align(size * 2 + 1, align).unwrap());
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!(std::slice::from_raw_parts(z, size).iter().all(|&b| b == 0));
                    a.dealloc(z, layout);
                }
            }
            size = size * 3 / 2 + 1;
        }
    }
}
