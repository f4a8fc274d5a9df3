//! The command-line glue: reading files, printing results, exit codes. The logic lives in the
//! modules it calls.

pub mod policy;
pub mod search;
