use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    credhost::app::bound_malloc_arenas();
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
