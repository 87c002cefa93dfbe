//! `http.send`: outgoing requests with secrets filled in by the host.
//! TODO(issue 6): the transport; until then an allowed call answers `unsupported`.

use crate::plugins::bindings::credhost::provider::{http, types::Error};
use crate::plugins::manifest::Capability;
use crate::plugins::state::CallState;

impl http::Host for CallState {
    fn send(&mut self, req: http::Request) -> Result<http::Response, Error> {
        self.gate(Capability::Http, &req.url)?;
        Err(Error::Unsupported("http.send is not implemented by this host yet".into()))
    }
}
