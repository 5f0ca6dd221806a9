//! `include/archon.h` is checked in, for C programmers to read and for the install step to copy;
//! it must say what the code does. This test generates the header from the crate with cbindgen
//! (the settings in `cbindgen.toml`) and fails when the checked-in file differs, so CI catches a
//! change to an exported function that the header does not follow.
//!
//! After changing the ABI on purpose: `ARCHON_UPDATE_HEADER=1 cargo test -p archon-capi --test
//! header` rewrites the file; review the diff and commit it with the change.

use std::fs;
use std::path::Path;

/// The header cbindgen makes of the crate now.
fn generate(crate_dir: &Path) -> Result<Vec<u8>, String> {
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .map_err(|e| format!("cbindgen.toml: {e}"))?;
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(crate_dir.join("src/lib.rs"))
        .generate()
        .map_err(|e| format!("cbindgen: {e}"))?;
    let mut out = Vec::new();
    bindings.write(&mut out);
    Ok(out)
}

#[test]
fn the_checked_in_header_is_what_the_code_generates() -> Result<(), String> {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = crate_dir.join("include/archon.h");
    let generated = generate(crate_dir)?;
    if std::env::var_os("ARCHON_UPDATE_HEADER").is_some_and(|v| !v.is_empty()) {
        return fs::write(&path, &generated).map_err(|e| format!("{}: {e}", path.display()));
    }
    let checked_in = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if checked_in == generated {
        return Ok(());
    }
    let (old, new) = (
        String::from_utf8_lossy(&checked_in),
        String::from_utf8_lossy(&generated),
    );
    let line = old
        .lines()
        .zip(new.lines())
        .position(|(a, b)| a != b)
        .unwrap_or_else(|| old.lines().count().min(new.lines().count()));
    Err(format!(
        "{} is not what the code generates; first difference at line {}:\n  checked in: {:?}\n  generated:  {:?}\n\
         run `ARCHON_UPDATE_HEADER=1 cargo test -p archon-capi --test header`, review the diff, commit it",
        path.display(),
        line + 1,
        old.lines().nth(line).unwrap_or("<end of file>"),
        new.lines().nth(line).unwrap_or("<end of file>"),
    ))
}

#[test]
fn the_header_declares_every_exported_function() -> Result<(), String> {
    // A function the generator skipped (a missing `extern "C"`, a type it cannot translate)
    // would be missing from both files alike; name them, so that such a slip fails too.
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let header = String::from_utf8(generate(crate_dir)?).map_err(|e| e.to_string())?;
    let source = fs::read_to_string(crate_dir.join("src/lib.rs")).map_err(|e| e.to_string())?;
    let exported: Vec<&str> = source
        .split("extern \"C\" fn ")
        .skip(1)
        .filter_map(|rest| rest.split('(').next())
        .collect();
    if exported.is_empty() {
        return Err("no exported function found in src/lib.rs".to_string());
    }
    for name in exported {
        if !header.contains(&format!("{name}(")) {
            return Err(format!("{name} is exported but not declared in archon.h"));
        }
    }
    Ok(())
}
