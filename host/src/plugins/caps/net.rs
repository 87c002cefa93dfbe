//! `net.tcp-probe`: TCP reachability towards allowed hosts.
//! TODO(issue 6): the probe; until then an allowed call answers `unsupported`.

use crate::plugins::bindings::credhost::provider::{net, types::Error};
use crate::plugins::manifest::Capability;
use crate::plugins::state::CallState;

impl net::Host for CallState {
    fn tcp_probe(&mut self, host: String, port: u16, _timeout_ms: u32) -> Result<u32, Error> {
        self.gate(Capability::Net, &format!("{host}:{port}"))?;
        Err(Error::Unsupported("net.tcp-probe is not implemented by this host yet".into()))
    }
}
