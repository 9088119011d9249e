use clap::Parser;

/// mimalloc: hyper takes a fresh 8 KiB read buffer per message on each side of the
/// proxy, and glibc's malloc serves that size on its slow path (measured: −2,400
/// instructions and −4 % CPU per proxied request; docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = portcullis::cli::Cli::parse();
    match portcullis::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
