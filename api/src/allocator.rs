//! The process's memory allocator: jemalloc, which hands freed memory back
//! to the system in the background, in place of glibc's malloc, which keeps
//! it.
//!
//! Why: a connection with a request in flight costs the API about 30 KiB
//! of heap (hyper's 8 KiB read and 8 KiB write buffers, the request's
//! futures; heaptrack), allocated on whichever runtime thread serves it.
//! glibc gives each of those threads an arena of its own, and an arena only
//! shrinks from its top, so freed memory between live blocks stays
//! resident: once 1,024 long-polls had answered, glibc still held 32.7 MB
//! with 1.2 MB of it in use (`malloc_stats`), and after an overload 124.6 MB
//! with 2.0 MB in use; VmRSS stayed at 32 and 110 MiB. jemalloc returns
//! unused pages on a decay (`dirty_decay_ms`), from a thread of its own
//! (`background_thread`), so the memory goes back about a second after the
//! load does, even when no further request comes to trigger it: 15 MiB
//! after the same long-polls (`bench --memory-only`). It also costs fewer
//! instructions per job (callgrind: 342k against 392k for the API).
//!
//! The options are [`shared::allocator`]'s. The `jemalloc` feature (on by
//! default) selects it; without it the process uses the system allocator.

#[cfg(feature = "jemalloc")]
shared::jemalloc_allocator!();
