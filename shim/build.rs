//! Gives libarchon_bind.so its soname (a preloaded library is named by path, but `ldd` and the
//! loader's messages show it), and exports `bind` alone.

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libarchon_bind.so");
    println!("cargo:rerun-if-changed=build.rs");
}
