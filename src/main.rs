//! `coffer`: one binary for the host and its tools. See `coffer --help`.

use clap::Parser;

fn main() {
    let cli = coffer::cli::Cli::parse();
    if let Err(error) = coffer::cli::run(cli) {
        eprintln!("coffer: error: {error:#}");
        std::process::exit(1);
    }
}
