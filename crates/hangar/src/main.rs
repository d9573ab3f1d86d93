//! The `hangar` binary: the daemon (`serve`), and the CLI that drives it over the REST
//! API. It also carries the sandbox bootstrap, which the daemon re-executes instead of
//! forking itself.

mod cli;
mod serve;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // A re-executed sandbox bootstrap never returns from here.
    hangar_runtime::sandbox::boot::run_if_requested();
    hangar_proxy::tls::install_crypto_provider();

    let args = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let json = args.json;
    match runtime.block_on(cli::run(args)) {
        Ok(code) => code,
        Err(err) => {
            cli::print_error(&err, json);
            ExitCode::FAILURE
        }
    }
}
