//! jemalloc as a binary's global allocator, in place of glibc's malloc:
//! [`jemalloc_allocator!`] installs it, with the start-up options below.
//! The API and the worker call it from a module of their own that says why
//! (`api/src/allocator.rs`, `worker/src/allocator.rs`), behind their
//! `jemalloc` cargo feature (on by default), which turns on this crate's.
//! A macro rather than an allocator defined here, so that only the binaries
//! that ask for it get it: every other crate linking this one (jobctl, the
//! bench's load generator, the tests) keeps the system's allocator.
//!
//! The options: `background_thread:true` returns unused pages from a
//! thread of jemalloc's own, so memory goes back after a load even when no
//! further allocation comes to trigger it; `dirty_decay_ms:1000` waits a
//! second before doing so; `muzzy_decay_ms:0` sends pages straight from
//! dirty to returned (`MADV_DONTNEED`), so they leave the resident set at
//! once rather than after a second decay. They can be overridden at run
//! time through the `_RJEM_MALLOC_CONF` environment variable (the crate's
//! jemalloc is built with the `_rjem_` prefix).

#[doc(hidden)]
pub use tikv_jemallocator::Jemalloc;

/// Installs jemalloc as the global allocator of the binary that expands
/// it, with the options of the module docs.
#[macro_export]
macro_rules! jemalloc_allocator {
    () => {
        #[global_allocator]
        static GLOBAL: $crate::allocator::Jemalloc = $crate::allocator::Jemalloc;

        /// jemalloc's start-up options, read once when it initialises (its
        /// `malloc_conf` symbol: a pointer to a NUL-terminated string).
        #[allow(unsafe_code, non_upper_case_globals)]
        // SAFETY: jemalloc declares `extern const char *malloc_conf`
        // (prefixed `_rjem_`) and only reads it; a reference to a byte array
        // is a thin pointer to bytes that live for the whole program and end
        // with a NUL.
        #[unsafe(export_name = "_rjem_malloc_conf")]
        static malloc_conf: &[u8; 60] =
            b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";
    };
}
