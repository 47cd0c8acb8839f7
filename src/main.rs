use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = viewcraft::cli::Cli::parse();
    match viewcraft::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("viewcraft: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
