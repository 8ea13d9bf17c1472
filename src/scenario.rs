//! Scenarios: what a run does (workload, faults, durations), read from TOML.

pub mod workload;
