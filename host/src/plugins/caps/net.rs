//! `net.tcp-probe`: TCP reachability towards allowed hosts.
//!
//! The target must be allowed by an `allowed_hosts` entry (see
//! [`AllowedHost::allows_endpoint`](crate::plugins::manifest::AllowedHost::allows_endpoint));
//! the name is resolved and checked against the private-range policy, and the probe
//! connects to a checked address within the call's time budget.

use std::time::Instant;

use super::netio;
use crate::plugins::bindings::credhost::provider::{net, types::Error};
use crate::plugins::manifest::Capability;
use crate::plugins::state::CallState;

impl net::Host for CallState {
    fn tcp_probe(&mut self, host: String, port: u16, timeout_ms: u32) -> Result<u32, Error> {
        let shown = format!("{}:{port}", netio::norm_host(&host).chars().take(255).collect::<String>());
        self.gate(Capability::Net, &shown)?;
        self.check_endpoint(Capability::Net, &host, port)?;
        let timeout = self.call_timeout(Some(timeout_ms))?;
        let allow_private = self.host.allow_private_networks;
        let target = netio::norm_host(&host);
        let started = Instant::now();
        let result = netio::run(async move {
            let addrs = netio::resolve_checked(&target, port, allow_private).await?;
            netio::connect_checked(&addrs, timeout).await.map(drop)
        })
        .and_then(|r| r);
        match result {
            Ok(()) => Ok(started.elapsed().as_millis().min(u128::from(u32::MAX)) as u32),
            Err(e @ Error::Rejected(_)) => {
                self.refuse(Capability::Net, format!("{shown} private address"));
                Err(e)
            }
            Err(e) => Err(e),
        }
    }
}

impl CallState {
    /// Refuses (and records) a `host:port` target no `allowed_hosts` entry allows.
    pub(crate) fn check_endpoint(&mut self, cap: Capability, host: &str, port: u16) -> Result<(), Error> {
        let allowed = self.manifest.allowed_hosts.iter().any(|h| h.allows_endpoint(host, port, &self.bound.fields));
        if allowed {
            return Ok(());
        }
        let shown = format!("{}:{port}", netio::norm_host(host).chars().take(255).collect::<String>());
        tracing::warn!(plugin = %self.manifest.id, capability = %cap, target = %shown, "target not allowed");
        self.refuse(cap, format!("{shown} not allowed"));
        Err(Error::Rejected(format!("{shown} is not in the plugin's allowed hosts")))
    }
}
