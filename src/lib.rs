//! bramble: a Kubernetes-style orchestrator for fleets of small ARM boards, in one binary.
//!
//! The binary (`main.rs`) only calls [`cli::run`]. The crate is a library too so the fuzz
//! targets (`fuzz/`) reach the decoders a network peer or an image controls.

pub mod agent;
pub mod api;
pub mod cli;
mod client;
mod control;
mod counting;
mod cron;
pub mod images;
mod kubectl;
mod panics;
mod pki;
mod runtime;
mod store;
mod sys;
