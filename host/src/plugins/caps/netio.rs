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
//! unspecified addresses are refused unless the operator allows private networks, and
//! so is an IPv6 address carrying such an IPv4 address in any form ([`embedded_ipv4`]).

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
/// An IPv6 address is public only if it is and every IPv4 address embedded in it is too.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6) && embedded_ipv4(v6).into_iter().all(is_public_v4),
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
    let nat64 = s[0] == 0x64 && s[1] == 0xff9b;
    // Inside 64:ff9b::/32 only the well-known /96 and the local-use /48 translate to IPv4
    // (checked through their embedded addresses); the rest is unassigned.
    let nat64_known = nat64 && ((s[2..6] == [0, 0, 0, 0]) || s[2] == 1);
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (nat64 && !nat64_known))
}

/// Every IPv4 address an IPv6 address carries, in any form that a host or gateway may
/// turn into an IPv4 destination: mapped `::ffff:a.b.c.d`, translated `::ffff:0:a.b.c.d`,
/// compatible `::a.b.c.d`, 6to4 `2002:AABB:CCDD::/48`, Teredo `2001:0::/32` (server in
/// bits 32..64, client in the last 32 bits inverted), NAT64 `64:ff9b::/96` and every
/// RFC 6052 position under the local-use `64:ff9b:1::/48`, and ISATAP interface ids.
pub fn embedded_ipv4(ip: Ipv6Addr) -> Vec<Ipv4Addr> {
    let s = ip.segments();
    let o = ip.octets();
    let v4 = |b: [u8; 4]| Ipv4Addr::from(b);
    let last = v4([o[12], o[13], o[14], o[15]]);
    let mut out = Vec::new();
    if s[0..5] == [0, 0, 0, 0, 0] && (s[5] == 0xffff || s[5] == 0) {
        out.push(last); // mapped, compatible (and :: / ::1, already refused as v6)
    }
    if s[0..4] == [0, 0, 0, 0] && s[4] == 0xffff && s[5] == 0 {
        out.push(last); // SIIT translated
    }
    if s[0] == 0x2002 {
        out.push(v4([o[2], o[3], o[4], o[5]]));
    }
    if s[0] == 0x2001 && s[1] == 0 {
        out.push(v4([o[4], o[5], o[6], o[7]]));
        out.push(v4([!o[12], !o[13], !o[14], !o[15]]));
    }
    if s[0] == 0x64 && s[1] == 0xff9b {
        if s[2] == 1 {
            // RFC 6052 positions for /48, /56, /64 and /96 prefixes (octet 8 is skipped).
            out.push(v4([o[6], o[7], o[9], o[10]]));
            out.push(v4([o[7], o[9], o[10], o[11]]));
            out.push(v4([o[9], o[10], o[11], o[12]]));
        }
        out.push(last);
    }
    if (s[4] & 0xfdff) == 0 && s[5] == 0x5efe {
        out.push(last); // ISATAP interface id ::0:5efe:a.b.c.d / ::200:5efe:a.b.c.d
    }
    out
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
    fn embedded_ipv4_follows_the_ipv4_policy() {
        // (private embedding, public embedding) pairs for every form.
        for (deny, allow) in [
            ("::127.0.0.1", "::8.8.8.8"),                             // IPv4-compatible
            ("::ffff:0:10.0.0.1", "::ffff:0:8.8.8.8"),                // SIIT translated
            ("2002:7f00:1::", "2002:808:808::"),                      // 6to4 127.0.0.1 / 8.8.8.8
            ("2002:a9fe:a9fe::1", "2002:101:101::1"),                 // 6to4 metadata IP
            ("2001:0:7f00:1:0:0:f7f7:f7f7", "2001:0:808:808:0:0:f7f7:f7f7"), // Teredo server
            ("2001:0:808:808:0:0:80ff:fffe", "2001:0:808:808:0:0:fefe:fefe"), // Teredo client 127.0.0.1 / 1.1.1.1
            ("64:ff9b::7f00:1", "64:ff9b::808:808"),                  // NAT64 well-known
            ("64:ff9b::a9fe:a9fe", "64:ff9b::101:101"),
            // NAT64 local-use: the prefix length is site-specific, so every RFC 6052
            // position must hold a public address (here the /48 and the /96 ones).
            ("64:ff9b:1:7f00:1::", "64:ff9b:1:808:8:808:808:808"),
            ("64:ff9b:1::a00:1", "64:ff9b:1:101:1:101:101:101"),
            ("2606:4700::5efe:a00:1", "2606:4700::5efe:808:808"),     // ISATAP
        ] {
            let (d, a): (Ipv6Addr, Ipv6Addr) = (deny.parse().unwrap(), allow.parse().unwrap());
            assert!(!is_public(IpAddr::V6(d)), "{deny} embeds a private IPv4: {:?}", embedded_ipv4(d));
            assert!(is_public(IpAddr::V6(a)), "{allow} should be public: {:?}", embedded_ipv4(a));
            assert!(check_addr(IpAddr::V6(d), false).unwrap_err().0.contains("private"));
            assert!(check_addr(IpAddr::V6(d), true).is_ok());
        }
        // Unassigned NAT64 space stays refused; ordinary public IPv6 has no embedding.
        assert!(!is_public("64:ff9b:2::808:808".parse().unwrap()));
        assert!(embedded_ipv4("2606:4700:4700::1111".parse().unwrap()).is_empty());
    }

    #[test]
    fn resolution_refuses_loopback_unless_allowed() {
        let r = run(resolve_checked("127.0.0.1", 80, false)).unwrap();
        assert!(matches!(r, Err(ResolveError::Refused(_))), "{r:?}");
        let r = run(resolve_checked("[::1]", 80, true)).unwrap().unwrap();
        assert_eq!(r[0].port(), 80);
        // An IPv6 literal embedding loopback is refused the same way.
        let r = run(resolve_checked("[2002:7f00:1::]", 80, false)).unwrap();
        assert!(matches!(r, Err(ResolveError::Refused(_))), "{r:?}");
    }
}
