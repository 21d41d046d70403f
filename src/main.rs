fn main() -> std::process::ExitCode {
    ntimed::cli::main()
}
