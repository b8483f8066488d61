//! `weft agent`: being built; see docs/architecture.md.

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> ExitCode {
    eprintln!("weft agent: not available in this build");
    ExitCode::from(1)
}
