use std::process::ExitCode;

use clap::Parser;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Sets credhost's allocator defaults before mimalloc reads its options (at its first
/// allocation or its own constructor, both before `main`): constructors sorted under
/// priority 100 run before those of higher numbers and before unprioritised ones.
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array.00100")]
static ALLOCATOR_DEFAULTS: extern "C" fn() = {
    extern "C" fn set() {
        credhost::app::allocator_defaults();
    }
    set
};

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CREDHOST_LOG").unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // `CREDHOST_LOG_FORMAT=json`: one JSON object per line, for log collectors.
    if std::env::var("CREDHOST_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        logs.json().with_current_span(false).init();
    } else {
        // Colour codes only on a terminal: log files and collectors get plain text.
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init();
    }
    // Every command: a panic is logged with its location, never its message.
    credhost::server::install_panic_hook();
    credhost::cli::run(credhost::cli::Cli::parse())
}
