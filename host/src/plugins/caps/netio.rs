//! Shared plumbing of the network capabilities (`http`, `ssh`, `sql`, `net`): the I/O
//! runtime, address policy, DNS resolution checked against it, and time budgets.
//!
//! Capability calls are synchronous (a plugin call runs on a blocking thread). Network
//! I/O runs on one small dedicated tokio runtime owned by the process, so the calls work
//! the same in the server (inside `spawn_blocking`), in the CLI and in plain tests
//! without a runtime. Waiting uses a std channel, never `block_on`, so it cannot panic
//! in any calling context.
//!
//! Address policy: a name is resolved here, every address is checked, and the
//! connection goes to a checked address — DNS rebinding between check and connect is
//! impossible. Loopback, private, link-local, CGNAT, unique-local, multicast and
//! unspecified addresses are refused unless the operator allows private networks.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::Duration;

use crate::plugins::bindings::credhost::provider::types::Error;
use crate::plugins::state::CallState;

/// Longest any single network capability call may take, whatever the budget says.
pub const MAX_CALL: Duration = Duration::from_secs(30);
/// Time kept back from a test's budget so a host call ends before the epoch deadline
/// and the plugin can still turn the result into an outcome.
const BUDGET_RESERVE: Duration = Duration::from_millis(250);
/// Default timeout when a plugin asks for none.
pub const DEFAULT_CALL: Duration = Duration::from_secs(10);

/// The process-wide I/O runtime of the network capabilities.
pub fn io_runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("credhost-caps-io")
            .enable_all()
            .build()
            .expect("creating the capability I/O runtime")
    })
}

/// Runs `fut` on the I/O runtime and waits for it from this (synchronous) thread.
/// A panic in the task (a client library bug) becomes `Err(internal)`, never a host panic.
pub fn run<F>(fut: F) -> Result<F::Output, Error>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    io_runtime().spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().map_err(|_| Error::Internal("the host's network task failed unexpectedly".into()))
}

impl CallState {
    /// Timeout for one network call: the smallest of what the plugin asked for, what
    /// is left of the test's budget (minus a reserve), and [`MAX_CALL`].
    /// `Err(unreachable)` when the budget is already spent.
    pub(crate) fn call_timeout(&self, requested_ms: Option<u32>) -> Result<Duration, Error> {
        let budget = Duration::from_millis(u64::from(self.manifest.limits.test_ms));
        let left = budget.saturating_sub(self.started.elapsed()).saturating_sub(BUDGET_RESERVE);
        let wanted = requested_ms.map_or(DEFAULT_CALL, |ms| Duration::from_millis(u64::from(ms)));
        let t = wanted.min(left).min(MAX_CALL);
        if t < Duration::from_millis(10) {
            return Err(Error::Unreachable("the test's time budget is spent".into()));
        }
        Ok(t)
    }
}

/// Why an address was refused; carried through client errors so it maps to `rejected`.
#[derive(Debug)]
pub struct AddressRefused(pub String);

impl std::fmt::Display for AddressRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AddressRefused {}

/// Is `ip` a public unicast address (the only kind reachable without the operator's leave)?
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64/10
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF 192.0.0/24
        || (a == 198 && (18..20).contains(&b)) // benchmarking 198.18/15
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x64 && s[1] == 0xff9b)) // NAT64 can reach IPv4 private space
}

/// Checks one address against the policy.
pub fn check_addr(ip: IpAddr, allow_private: bool) -> Result<(), AddressRefused> {
    if allow_private || is_public(ip) {
        Ok(())
    } else {
        Err(AddressRefused(format!(
            "address {ip} is in a private, loopback or link-local range; the operator has not allowed private networks"
        )))
    }
}

/// Resolves `host` (a name or an IP literal, IPv6 with or without brackets) and checks
/// every address. Any refused address refuses the whole name: a mixed answer is a
/// rebinding attempt or a misconfiguration, and either way not a target.
pub async fn resolve_checked(host: &str, port: u16, allow_private: bool) -> Result<Vec<SocketAddr>, ResolveError> {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((bare, port))
            .await
            .map_err(|e| ResolveError::Unreachable(format!("cannot resolve {bare}: {e}")))?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(ResolveError::Unreachable(format!("{bare} has no addresses")));
    }
    for a in &addrs {
        check_addr(a.ip(), allow_private).map_err(|e| ResolveError::Refused(format!("{bare}: {e}")))?;
    }
    Ok(addrs)
}

/// Why resolution failed: the network (unreachable) or the policy (rejected).
#[derive(Debug)]
pub enum ResolveError {
    Unreachable(String),
    Refused(String),
}

impl From<ResolveError> for Error {
    fn from(e: ResolveError) -> Error {
        match e {
            ResolveError::Unreachable(m) => Error::Unreachable(m),
            ResolveError::Refused(m) => Error::Rejected(m),
        }
    }
}

/// Connects to the first reachable address of a checked list, within `timeout` overall.
pub async fn connect_checked(addrs: &[SocketAddr], timeout: Duration) -> Result<tokio::net::TcpStream, Error> {
    let attempt = async {
        let mut last = None;
        for a in addrs {
            match tokio::net::TcpStream::connect(a).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Err(e) => last = Some(format!("connect to {a}: {e}")),
            }
        }
        Err(Error::Unreachable(last.unwrap_or_else(|| "no address to connect to".into())))
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(Error::Unreachable(format!("connect timed out after {} ms", timeout.as_millis()))),
    }
}

/// Normal form of a host for comparisons: lower case, no IPv6 brackets, no trailing dot.
pub fn norm_host(host: &str) -> String {
    let h = host.trim();
    let h = h.strip_prefix('[').and_then(|x| x.strip_suffix(']')).unwrap_or(h);
    h.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_ranges_are_not_public() {
        for ip in [
            "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0", "100.64.0.1",
            "::1", "::", "fe80::1", "fd00::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "255.255.255.255", "224.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["1.1.1.1", "8.8.8.8", "2606:4700:4700::1111", "::ffff:1.1.1.1"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn resolution_refuses_loopback_unless_allowed() {
        let r = run(resolve_checked("127.0.0.1", 80, false)).unwrap();
        assert!(matches!(r, Err(ResolveError::Refused(_))), "{r:?}");
        let r = run(resolve_checked("[::1]", 80, true)).unwrap().unwrap();
        assert_eq!(r[0].port(), 80);
    }
}
