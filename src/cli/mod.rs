//! The `kc` subcommands that run in a terminal (argument parsing stays in `main.rs`).

pub mod connect;
pub mod copy;
pub mod operate;
