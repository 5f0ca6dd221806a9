//! Services and tasks: the state machine that keeps what the configuration declares running.
//!
//! [`Manager`] is pure: the loop tells it what happened (a request, a spawn, an exit, a readiness
//! notice, a timer) and it answers with [`Action`]s for the loop to perform (spawn, signal, kill,
//! arm a timer, reply). It never makes a system call and never reads the clock, so every rule,
//! from dependency order to backoff to shutdown order, is tested without forking.

mod manager;
pub mod policy;
#[cfg(test)]
mod tests;

#[cfg(test)]
pub use manager::State;
pub use manager::{Action, Carried, Health, Manager, TimerKind, UnitId};
