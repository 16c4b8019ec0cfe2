//! Build script: the rpath to libpython that the `harrow` binary needs to run Python actors, from
//! what the harrow crate's build script found (`harrow_build::link_python()`, as any program that
//! runs Python actors does; it warns when the build has no suitable Python, in which case the
//! subint backend is compiled in but unavailable).

fn main() {
    harrow_build::link_python();
}
