//! cellforge: the desktop app when started without a subcommand, the CLI otherwise.

use cellforge::{cli, gui};
use clap::Parser;

fn main() -> std::process::ExitCode {
    gui::mark_process_start();
    cellforge_core::sys::tune_allocator();
    let args = cli::Cli::parse();
    match args.command {
        Some(cmd) => match cli::run(cmd) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                std::process::ExitCode::FAILURE
            }
        },
        None => match gui::Startup::from_args(&args).and_then(gui::run) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                eprintln!(
                    "hint: the window could not open (no display?). The same engine is \
                     available as a command-line tool: run `cellforge --help`."
                );
                std::process::ExitCode::FAILURE
            }
        },
    }
}
