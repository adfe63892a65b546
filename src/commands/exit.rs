//! The exit codes of every subcommand, `run` included, so that scripts and orchestrators read them alike.

use std::process::ExitCode;

/// Done: the configuration is valid, nothing failed, everything taken was delivered.
pub const OK: u8 = 0;
/// Something failed: a check, the delivery of what was taken within the grace period, the gateway itself.
pub const FAILED: u8 = 1;
/// The configuration is invalid (or a file named on the command line cannot be read): nothing was tried.
pub const INVALID: u8 = 2;

pub fn code(code: u8) -> ExitCode {
    ExitCode::from(code)
}
