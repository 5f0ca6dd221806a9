//! Gives libarchon.so its soname, `libarchon.so.<major>`: programs linked against it record that
//! name, and dist/install makes the link of that name.

fn main() {
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_else(|_| "0".to_string());
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libarchon.so.{major}");
    println!("cargo:rerun-if-changed=build.rs");
}
