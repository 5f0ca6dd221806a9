//! archon's configuration and Lua actions.
//!
//! Empty until the service-model issue: the configuration file, evaluated in a sandboxed `mlua`
//! state into plain Rust values, lands here.
#![deny(missing_docs)]
