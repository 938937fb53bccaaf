//! The `distq` command-line tool.

fn main() -> std::process::ExitCode {
    distq_converter::cli::main()
}
