//! `ssh.check-login`: host-native SSH login check.
//! TODO(issue 6): the SSH client; until then an allowed call answers `unsupported`.

use crate::plugins::bindings::credhost::provider::{ssh, types::Error};
use crate::plugins::manifest::Capability;
use crate::plugins::state::CallState;

impl ssh::Host for CallState {
    fn check_login(&mut self, target: ssh::Target, _auth: ssh::Auth) -> Result<ssh::LoginResult, Error> {
        self.gate(Capability::Ssh, &format!("{}:{}", target.host, target.port))?;
        Err(Error::Unsupported("ssh.check-login is not implemented by this host yet".into()))
    }
}
