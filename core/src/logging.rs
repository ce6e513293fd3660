//! Process logging with a filter that the admin API can change at runtime.

use std::sync::{Arc, Mutex};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// Why a log filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("empty log filter; give a level (trace, debug, info, warn, error, off) or <target>=<level> directives separated by commas")]
    Empty,
    #[error("log filter directive {directive:?} has no level; write a level (trace, debug, info, warn, error, off) or <target>=<level>, e.g. \"info,trellis_node_proxy=debug\"")]
    NoLevel { directive: String },
    #[error("log filter directive {directive:?} has level {level:?}, which is not one of trace, debug, info, warn, error, off")]
    BadLevel { directive: String, level: String },
    #[error("invalid log filter {filter:?}: {detail}")]
    Syntax { filter: String, detail: String },
    #[error("cannot change the log filter: {0}")]
    Reload(String),
}

const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

fn is_level(s: &str) -> bool {
    LEVELS.iter().any(|l| l.eq_ignore_ascii_case(s))
}

/// Checks `filter` strictly and builds it.
///
/// `EnvFilter` reads a bare word such as `garbage` as a target with no level,
/// which enables only that target and so silences every other log line,
/// access logs included. A runtime change must not do that by accident, so
/// every directive here must name its level. Returns the filter and its
/// text without the spaces and empty directives `EnvFilter` would refuse.
pub fn parse_filter(filter: &str) -> Result<(EnvFilter, String), FilterError> {
    let directives: Vec<&str> = filter
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    for &directive in &directives {
        match directive.rsplit_once('=') {
            None if is_level(directive) => {}
            None => {
                return Err(FilterError::NoLevel {
                    directive: directive.to_string(),
                })
            }
            // A `=` inside a span field (`target[span{f=x}]`) is not the
            // directive's level separator.
            Some((_, level)) if level.contains(']') || level.contains('}') => {
                return Err(FilterError::NoLevel {
                    directive: directive.to_string(),
                })
            }
            Some((_, level)) if !is_level(level.trim()) => {
                return Err(FilterError::BadLevel {
                    directive: directive.to_string(),
                    level: level.trim().to_string(),
                })
            }
            Some(_) => {}
        }
    }
    if directives.is_empty() {
        return Err(FilterError::Empty);
    }
    let text = directives.join(",");
    let f = EnvFilter::try_new(&text).map_err(|e| FilterError::Syntax {
        filter: filter.to_string(),
        detail: e.to_string(),
    })?;
    Ok((f, text))
}

/// Changes the log filter of the running process.
#[derive(Clone)]
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
    current: Arc<Mutex<String>>,
}

impl LogControl {
    /// Replaces the filter; a bad filter (see [`parse_filter`]) is refused
    /// and the old one stays.
    pub fn set(&self, filter: &str) -> Result<(), FilterError> {
        let (f, text) = parse_filter(filter)?;
        self.handle
            .reload(f)
            .map_err(|e| FilterError::Reload(e.to_string()))?;
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = text;
        Ok(())
    }

    pub fn current(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// How log lines are written (also the access log's format flag).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the global subscriber. Call once per process.
pub fn init(filter: &str, format: LogFormat) -> Result<LogControl, String> {
    let f =
        EnvFilter::try_new(filter).map_err(|e| format!("invalid log filter {filter:?}: {e}"))?;
    let (layer, handle) = reload::Layer::new(f);
    let registry = tracing_subscriber::registry().with(layer);
    let res = match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_target(true)
                    // Colour codes only for a person at a terminal, not for log files.
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout())),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json().flatten_event(true))
            .try_init(),
    };
    res.map_err(|e| format!("cannot install the log subscriber: {e}"))?;
    Ok(LogControl {
        handle,
        current: Arc::new(Mutex::new(filter.to_string())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_by_directive() {
        let no_level = |d: &str| {
            Err(FilterError::NoLevel {
                directive: d.into(),
            })
        };
        let bad_level = |d: &str, l: &str| {
            Err(FilterError::BadLevel {
                directive: d.into(),
                level: l.into(),
            })
        };
        let cases: Vec<(&str, Result<(), FilterError>)> = vec![
            ("info", Ok(())),
            ("DEBUG", Ok(())),
            ("off", Ok(())),
            ("info,trellis_node_proxy=debug", Ok(())),
            ("warn, h2=off ,", Ok(())),
            ("trellis[conn{src=1}]=trace", Ok(())),
            ("garbage", no_level("garbage")),
            ("info,garbage", no_level("garbage")),
            ("trellis[conn{src=1}]", no_level("trellis[conn{src=1}]")),
            ("trellis=loud", bad_level("trellis=loud", "loud")),
            ("", Err(FilterError::Empty)),
            (" , ", Err(FilterError::Empty)),
        ];
        for (filter, want) in cases {
            assert_eq!(parse_filter(filter).map(|_| ()), want, "filter {filter:?}");
        }
    }
}
