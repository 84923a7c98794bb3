//! `tuna`: the command-line tool for the Tuna fine-tuning service.

mod cli;

/// Training frees and reallocates multi-megabyte activations every step; glibc's malloc
/// hands such blocks back to the OS and page-faults them in again, mimalloc keeps them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", cli::output::clean(&e.to_string()));
            ExitCode::FAILURE
        }
    }
}
