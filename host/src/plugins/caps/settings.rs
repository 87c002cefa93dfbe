//! `settings.get`: the plugin's manifest settings, as overridden by operator config.

use crate::plugins::bindings::credhost::provider::settings;
use crate::plugins::manifest::Capability;
use crate::plugins::state::CallState;

impl settings::Host for CallState {
    fn get(&mut self, key: String) -> Option<String> {
        self.gate(Capability::Settings, &key).ok()?;
        self.manifest.settings.get(&key).cloned()
    }
}
