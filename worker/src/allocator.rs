//! The worker's allocator: jemalloc ([`shared::allocator`]), in place of
//! glibc's malloc.
//!
//! Why: the worker's own allocations (decoding each job's envelope,
//! building its input tensors, encoding its result, the Redis calls) went
//! through glibc's malloc, and its `malloc`, `free` and `realloc` took
//! 35,000 instructions of each job's share of a worker under the closed
//! loop (callgrind, `scripts/bench --instructions-only`), a third of what
//! the worker spends per job. ONNX Runtime's own allocations (its arena, C++
//! `new`) are not Rust's and stay with glibc, so the memory ceiling
//! (`--max-memory-mb`, [`crate::memlimit`]) still catches a graph's
//! oversized allocation as it did: jemalloc's mappings count against
//! `RLIMIT_DATA` like glibc's.
//!
//! The `jemalloc` feature (on by default) selects it; without it the
//! process uses the system allocator.

#[cfg(feature = "jemalloc")]
shared::jemalloc_allocator!();
