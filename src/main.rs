//! Thin entry point: parse, run, exit with a named code. Errors print with their whole cause
//! chain, passwords scrubbed.

use clap::Parser;

fn main() {
    tenantctl::install_panic_hook();
    let cli = tenantctl::cli::Cli::parse();
    let code = match tenantctl::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", tenantctl::redact::scrub(&format!("{err:#}")));
            tenantctl::exit::code_for(&err)
        }
    };
    std::process::exit(code);
}
