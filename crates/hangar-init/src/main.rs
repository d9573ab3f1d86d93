//! The `hangar-init` binary: see the library documentation.

fn main() {
    hangar_init::run()
}
