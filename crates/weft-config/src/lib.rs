//! Weft's proxy configuration: the validated domain model and the static file that produces it.
//!
//! xDS resources and the static YAML file both become a [`model::Bootstrap`] /
//! [`model::ProxyConfig`]; the proxy only ever sees these types.
#![forbid(unsafe_code)]

mod load;
pub mod model;
mod raw;

use std::time::Duration;

pub use load::{load_file, parse_str};
pub use model::*;

/// Why a configuration was rejected. Every variant names where the problem is.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("{file}: cannot read: {message}")]
    Io { file: String, message: String },
    #[error("{file}: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}: {resource}: {field}: {message}")]
    Invalid { file: String, resource: String, field: String, message: String },
}

/// Parses `1.5s`, `250ms`, `100us`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("invalid duration {s:?} (examples: 250ms, 1.5s, 2m)"))?;
    let secs = match unit {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "ns" => value / 1e9,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("invalid duration unit in {s:?} (use ns, us, ms, s, m or h)")),
    };
    if !secs.is_finite() || !(0.0..=315_360_000.0).contains(&secs) {
        return Err(format!("duration {s:?} out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests;
