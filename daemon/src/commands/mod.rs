//! One module per CLI command.

pub mod check_config;
pub mod dead_letters;
pub mod output;
pub mod results;
pub mod serve;
pub mod simulate;
pub mod status;
pub mod submit;
