//! Thin entry point: everything, the exit code included, is decided in the library.

fn main() {
    std::process::exit(tenantctl::main());
}
