//! How many connections the API may hold, and who gets one.
//!
//! **The file-descriptor budget.** Every connection is a file descriptor,
//! and a process out of descriptors cannot accept, open a Redis connection
//! or read a file: it stops answering everything, `/healthz` included. So
//! the connection caps are sized from `RLIMIT_NOFILE`, which [`raise_nofile`]
//! first raises from its soft to its hard limit:
//!
//! ```text
//! nofile (soft limit, raised to the hard one)
//!   − RESERVED_FDS      64   stdio, epoll, signals, Redis (shared + pub/sub
//!                            + reconnects), OTLP export, files, one accept
//!                            in hand while refusing it
//!   − PROBE_RESERVE     16   connections of the probe reserve (below)
//!   − OPS_CONNECTIONS   32   the operator listener, when `--ops-listen` is set
//!   = budget for the public listener's table; --max-connections is capped by it
//! ```
//!
//! **The table.** [`ConnTable::admit`] decides, at accept, for each
//! connection:
//!
//! 1. its address already holds `--max-connections-per-ip`: refused (closed
//!    at once), so one client cannot take the whole table;
//! 2. a place is free: a regular connection;
//! 3. the table is full but the probe reserve is not: an overflow
//!    connection, which serves exactly one request with a short header
//!    timeout, and only health, readiness and metrics (anything else is a
//!    503 `too_many_connections`). This is how a liveness probe still gets
//!    an answer while abusive clients hold every regular place;
//! 4. otherwise: refused.
//!
//! A [`Slot`] gives its place back when the connection ends.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use shared::metric_names::{HTTP_CONNECTIONS, HTTP_CONNECTIONS_OVERFLOW, HTTP_CONNECTIONS_REFUSED};

/// Descriptors kept out of the connection budget (see the module docs).
pub const RESERVED_FDS: u64 = 64;
/// Connections admitted past a full table to answer probes and scrapes.
pub const PROBE_RESERVE: usize = 16;
/// Connections of the operator listener.
pub const OPS_CONNECTIONS: usize = 32;
/// Below this many public connections the process refuses to start: the
/// descriptor limit is then too low to serve anything but a test.
pub const MIN_CONNECTIONS: usize = 16;

/// `RLIMIT_NOFILE` as found and as left by [`raise_nofile`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoFile {
    /// The soft limit the process started with.
    pub initial: u64,
    /// The soft limit now in force.
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft descriptor limit to the hard one, which an unprivileged
/// process may do; container runtimes and systemd often start services with
/// a soft limit of 1024 under a much higher hard one. If raising fails, the
/// soft limit stays as it was (and the budget is computed from it).
#[allow(unsafe_code)] // each block has its SAFETY note
pub fn raise_nofile() -> std::io::Result<NoFile> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` into the struct we own and
    // reads nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let initial = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        } else {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                soft = lim.rlim_cur,
                hard = lim.rlim_max,
                "cannot raise the file descriptor limit; sizing connections from the soft limit"
            );
        }
    }
    Ok(NoFile {
        initial,
        soft: lim.rlim_cur,
        hard: lim.rlim_max,
    })
}

/// The caps of one listener's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableLimits {
    pub max_connections: usize,
    /// 0: no per-address cap.
    pub max_per_ip: usize,
    /// Overflow connections (the probe reserve); 0: none.
    pub overflow: usize,
}

/// The outcome of [`budget`]: both listeners' caps and how they were found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub nofile: u64,
    /// What the descriptor limit leaves for the public table.
    pub fd_budget: u64,
    pub public: TableLimits,
    /// `Some` when an operator listener is configured.
    pub ops: Option<TableLimits>,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "RLIMIT_NOFILE is {nofile}: after {RESERVED_FDS} reserved descriptors, {PROBE_RESERVE} for \
     the probe reserve and {ops} for the operator listener, {left} remain for connections; \
     at least {MIN_CONNECTIONS} are needed (raise the limit, e.g. `ulimit -n`)"
)]
pub struct BudgetError {
    nofile: u64,
    ops: usize,
    left: u64,
}

/// Sizes both tables from the descriptor limit and the flags: the public
/// cap is `--max-connections` or what the budget allows, whichever is
/// lower, and the per-address cap never exceeds it.
pub fn budget(
    nofile: u64,
    ops_listener: bool,
    max_connections: u64,
    max_per_ip: u64,
) -> Result<Budget, BudgetError> {
    let ops = if ops_listener { OPS_CONNECTIONS } else { 0 };
    let fd_budget = nofile.saturating_sub(RESERVED_FDS + (PROBE_RESERVE + ops) as u64);
    if fd_budget < MIN_CONNECTIONS as u64 {
        return Err(BudgetError {
            nofile,
            ops,
            left: fd_budget,
        });
    }
    let capped = max_connections.min(fd_budget);
    let to_usize = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    let max = to_usize(capped);
    Ok(Budget {
        nofile,
        fd_budget,
        public: TableLimits {
            max_connections: max,
            max_per_ip: to_usize(max_per_ip).min(max),
            overflow: PROBE_RESERVE,
        },
        ops: ops_listener.then_some(TableLimits {
            max_connections: OPS_CONNECTIONS,
            max_per_ip: 0,
            overflow: 0,
        }),
    })
}

/// Why a connection was refused at accept (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its address holds `--max-connections-per-ip` already.
    PerAddress,
    /// The table and the probe reserve are full.
    Full,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::PerAddress => "per_address_limit",
            Refusal::Full => "connection_limit",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

pub enum Admission {
    Regular(Slot),
    /// One request, probes and metrics only (see the module docs).
    Overflow(Slot),
    Refused(Refusal),
}

/// The open connections of one listener.
pub struct ConnTable {
    limits: TableLimits,
    /// The `listener` label.
    listener: &'static str,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    regular: usize,
    overflow: usize,
    // Only addresses with an open connection: the map is bounded by the
    // table, whatever the number of clients.
    per_ip: HashMap<IpAddr, usize>,
}

impl ConnTable {
    pub fn new(limits: TableLimits, listener: &'static str) -> Arc<ConnTable> {
        Arc::new(ConnTable {
            limits,
            listener,
            counts: Mutex::new(Counts::default()),
        })
    }

    pub fn limits(&self) -> TableLimits {
        self.limits
    }

    /// Decides the fate of a connection from `ip` (see the module docs).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Admission {
        // v4-mapped IPv6 peers of a dual-stack listener are the same client
        // as their IPv4 address.
        let ip = ip.to_canonical();
        let mut c = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let from_ip = c.per_ip.get(&ip).copied().unwrap_or(0);
        let admission = if self.limits.max_per_ip > 0 && from_ip >= self.limits.max_per_ip {
            Err(Refusal::PerAddress)
        } else if c.regular < self.limits.max_connections {
            c.regular += 1;
            Ok(false)
        } else if c.overflow < self.limits.overflow {
            c.overflow += 1;
            Ok(true)
        } else {
            Err(Refusal::Full)
        };
        match admission {
            Ok(overflow) => {
                *c.per_ip.entry(ip).or_insert(0) += 1;
                self.report(&c);
                drop(c);
                let slot = Slot {
                    table: Arc::clone(self),
                    ip,
                    overflow,
                };
                if overflow {
                    metrics::counter!(HTTP_CONNECTIONS_OVERFLOW, "listener" => self.listener)
                        .increment(1);
                    Admission::Overflow(slot)
                } else {
                    Admission::Regular(slot)
                }
            }
            Err(refusal) => {
                drop(c);
                metrics::counter!(
                    HTTP_CONNECTIONS_REFUSED,
                    "listener" => self.listener,
                    "reason" => refusal.as_str()
                )
                .increment(1);
                Admission::Refused(refusal)
            }
        }
    }

    /// Regular and overflow connections open now.
    pub fn open(&self) -> (usize, usize) {
        let c = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        (c.regular, c.overflow)
    }

    fn release(&self, ip: IpAddr, overflow: bool) {
        let mut c = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if overflow {
            c.overflow = c.overflow.saturating_sub(1);
        } else {
            c.regular = c.regular.saturating_sub(1);
        }
        if let Some(n) = c.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&ip);
            }
        }
        self.report(&c);
    }

    fn report(&self, c: &Counts) {
        metrics::gauge!(HTTP_CONNECTIONS, "listener" => self.listener)
            .set((c.regular + c.overflow) as f64);
    }
}

/// A place in a [`ConnTable`], given back on drop.
pub struct Slot {
    table: Arc<ConnTable>,
    ip: IpAddr,
    overflow: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.table.release(self.ip, self.overflow);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn the_budget_keeps_the_reserves_and_caps_the_flags() {
        let b = budget(1024, false, 4096, 1024).unwrap();
        assert_eq!(b.fd_budget, 1024 - 64 - 16);
        assert_eq!(b.public.max_connections, 944);
        assert_eq!(b.public.max_per_ip, 944, "never above the table");
        assert_eq!(b.public.overflow, PROBE_RESERVE);
        assert_eq!(b.ops, None);

        let b = budget(1024, true, 100, 10).unwrap();
        assert_eq!(b.fd_budget, 1024 - 64 - 16 - 32);
        assert_eq!((b.public.max_connections, b.public.max_per_ip), (100, 10));
        assert_eq!(b.ops.map(|o| o.max_connections), Some(OPS_CONNECTIONS));

        // Everything the process may hold fits in the limit.
        let b = budget(700, true, u64::MAX, 0).unwrap();
        let total = RESERVED_FDS as usize
            + b.public.max_connections
            + b.public.overflow
            + b.ops.map_or(0, |o| o.max_connections + o.overflow);
        assert_eq!(total, 700);
        assert_eq!(b.public.max_per_ip, 0, "0 stays off");

        let err = budget(90, false, 4096, 0).unwrap_err();
        assert!(err.to_string().contains("RLIMIT_NOFILE is 90"), "{err}");
    }

    #[test]
    fn addresses_then_the_table_then_the_reserve() {
        let t = ConnTable::new(
            TableLimits {
                max_connections: 3,
                max_per_ip: 2,
                overflow: 1,
            },
            "test",
        );
        let a1 = t.admit(ip(2));
        let a2 = t.admit(ip(2));
        assert!(matches!(a1, Admission::Regular(_)) && matches!(a2, Admission::Regular(_)));
        assert!(matches!(
            t.admit(ip(2)),
            Admission::Refused(Refusal::PerAddress)
        ));
        let b1 = t.admit(ip(3));
        assert!(matches!(b1, Admission::Regular(_)));
        // Full: the probe reserve, then nothing.
        let over = t.admit(ip(1));
        assert!(matches!(over, Admission::Overflow(_)));
        assert!(matches!(t.admit(ip(4)), Admission::Refused(Refusal::Full)));
        assert_eq!(t.open(), (3, 1));

        // Places come back when connections end, per address too.
        drop(a1);
        assert_eq!(t.open(), (2, 1));
        let again = t.admit(ip(2));
        assert!(matches!(again, Admission::Regular(_)));
        drop((a2, b1, over, again));
        assert_eq!(t.open(), (0, 0));
        let c = t.counts.lock().unwrap();
        assert!(c.per_ip.is_empty(), "no address is remembered once it left");
    }

    #[test]
    fn v4_mapped_peers_count_as_their_ipv4_address() {
        let t = ConnTable::new(
            TableLimits {
                max_connections: 10,
                max_per_ip: 1,
                overflow: 0,
            },
            "test",
        );
        let _v4 = t.admit(ip(2));
        let mapped = IpAddr::V6(std::net::Ipv4Addr::new(127, 0, 0, 2).to_ipv6_mapped());
        assert!(matches!(
            t.admit(mapped),
            Admission::Refused(Refusal::PerAddress)
        ));
    }

    #[test]
    fn the_limit_can_be_read_and_raised() {
        let n = raise_nofile().expect("getrlimit works");
        assert!(n.soft >= n.initial);
        assert_eq!(n.soft, n.hard, "raised to the hard limit");
    }
}
