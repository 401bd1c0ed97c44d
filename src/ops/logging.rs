//! `tracing` subscriber: env-filter (`RUST_LOG` wins over `[log] filter`), plain or JSON. The
//! filter can be swapped at run time ([`set_filter`], on SIGHUP).
//!
//! Device-supplied values (ids, text fields) reach log fields and messages as they came off
//! the wire. In the plain format every field and message goes through [`EscapedFields`], so a
//! CR/LF (or any control character) is written as an escape and one event stays one line: a
//! device id cannot forge a second log line. The JSON format is safe by construction (serde
//! escapes control characters in strings).
//!
//! Colour (ANSI escapes) only when stderr is a terminal and `NO_COLOR` is unset or empty
//! (<https://no-color.org>): under systemd stderr is journald, which would store the escapes.

use std::ffi::OsStr;
use std::fmt::{self, Write as _};
use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{Format, Writer};
use tracing_subscriber::fmt::{FormatFields, MakeWriter, SubscriberBuilder};
use tracing_subscriber::EnvFilter;

type Reloader = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

static RELOAD: OnceLock<Reloader> = OnceLock::new();

/// `[log]`: the output format and the default filter.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `plain` or `json`.
    pub format: String,
    /// A `tracing` env-filter; `RUST_LOG` wins when set.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "plain".into(),
            filter: "info".into(),
        }
    }
}

impl LogConfig {
    pub fn validate(&self) -> Result<(), crate::config::error::ConfigError> {
        if !["plain", "json"].contains(&self.format.as_str()) {
            return Err(crate::config::error::invalid(
                "log.format",
                "must be plain or json",
            ));
        }
        Ok(())
    }
}

/// Whether the plain format may colour its output: only on a terminal, and never with a
/// non-empty `NO_COLOR`.
pub fn use_colour(terminal: bool, no_color: Option<&OsStr>) -> bool {
    terminal && !matches!(no_color, Some(v) if !v.is_empty())
}

/// The subscriber both formats start from (JSON replaces the field formatter).
fn builder<W>(
    filter: EnvFilter,
    writer: W,
    ansi: bool,
) -> SubscriberBuilder<EscapedFields, Format, EnvFilter, W>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi)
        .fmt_fields(EscapedFields)
}

pub fn init(format: &str, filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    let ansi = use_colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = builder(filter, std::io::stderr, ansi);
    if format == "json" {
        let builder = builder.json().with_filter_reloading();
        let handle = builder.reload_handle();
        if builder.try_init().is_ok() {
            let _ = RELOAD.set(Box::new(move |f| {
                handle.reload(f).map_err(|e| e.to_string())
            }));
        }
    } else {
        let builder = builder.with_filter_reloading();
        let handle = builder.reload_handle();
        if builder.try_init().is_ok() {
            let _ = RELOAD.set(Box::new(move |f| {
                handle.reload(f).map_err(|e| e.to_string())
            }));
        }
    }
}

/// Apply a new `[log] filter`. `RUST_LOG`, when set, keeps winning (returns `Ok(false)`).
pub fn set_filter(filter: &str) -> Result<bool, String> {
    if std::env::var_os("RUST_LOG").is_some() {
        return Ok(false);
    }
    let f = EnvFilter::try_new(filter).map_err(|e| format!("log.filter: {e}"))?;
    match RELOAD.get() {
        Some(reload) => reload(f).map(|()| true),
        None => Ok(false),
    }
}

/// The plain format's fields, as `tracing_subscriber`'s default (`message` bare, then
/// `name=value`), with control characters escaped.
#[derive(Debug, Default, Clone, Copy)]
pub struct EscapedFields;

impl<'w> FormatFields<'w> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut v = EscapingVisitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut v);
        v.result
    }
}

struct EscapingVisitor<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl EscapingVisitor<'_> {
    fn write(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        if self.result.is_err() {
            return;
        }
        let mut text = String::new();
        if !self.first {
            text.push(' ');
        }
        self.first = false;
        if field.name() != "message" {
            text.push_str(field.name());
            text.push('=');
        }
        let mut raw = String::new();
        if raw.write_fmt(value).is_err() {
            self.result = Err(fmt::Error);
            return;
        }
        escape_into(&raw, &mut text);
        self.result = self.writer.write_str(&text);
    }
}

impl Visit for EscapingVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.write(field, format_args!("{value}"));
        } else {
            self.write(field, format_args!("{value:?}"));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field, format_args!("{value:?}"));
    }
}

/// Control characters (and the Unicode line/paragraph separators some viewers break on)
/// as `\n`, `\r`, `\t` or `\u{..}`; everything else as is.
pub fn escape_into(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DeviceId;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    const FORGED: &str = "356307042441013\r\n2026-01-01T00:00:00.000000Z  INFO fleetgate::immobiliser::actor: command sent\u{1b}[2K";

    fn log_forged() {
        let device = DeviceId::new(FORGED);
        let span = tracing::info_span!("conn", device = %device);
        let _g = span.enter();
        tracing::info!(device = %device, text = FORGED, "registered unknown device {device}");
    }

    fn captured(json: bool) -> String {
        captured_with(json, false)
    }

    fn captured_with(json: bool, ansi: bool) -> String {
        let buf = Buf::default();
        let b = builder(EnvFilter::new("info"), buf.clone(), ansi);
        if json {
            tracing::subscriber::with_default(b.json().finish(), log_forged);
        } else {
            tracing::subscriber::with_default(b.finish(), log_forged);
        }
        let bytes = buf.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn a_device_id_with_cr_lf_logs_as_one_escaped_plain_line() {
        let out = captured(false);
        assert_eq!(out.matches('\n').count(), 1, "{out}");
        assert!(out.ends_with('\n'));
        assert!(!out.contains('\r') && !out.contains('\u{1b}'), "{out:?}");
        assert!(out.contains(r"356307042441013\r\n2026-01-01"), "{out}");
        // Message, event field and span field alike.
        assert_eq!(out.matches(r"\r\n").count(), 4, "{out}");
        assert!(out.contains(r"\u{1b}[2K"), "{out}");
    }

    #[test]
    fn a_device_id_with_cr_lf_logs_as_one_json_line() {
        let out = captured(true);
        assert_eq!(out.matches('\n').count(), 1, "{out}");
        let v: serde_json::Value = serde_json::from_str(out.trim_end()).unwrap();
        assert_eq!(v["fields"]["device"], FORGED);
        assert!(!out.contains('\r') && !out.contains('\u{1b}'), "{out:?}");
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(
            use_colour(true, Some(OsStr::new(""))),
            "an empty NO_COLOR is unset"
        );
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        assert!(
            !use_colour(false, None),
            "a pipe or journald gets no escapes"
        );
        assert!(!use_colour(false, Some(OsStr::new("1"))));
    }

    /// The decision reaches the output: colour writes escapes (the level, the span), no colour
    /// writes none, the device's own ESC still escaped either way.
    #[test]
    fn plain_lines_carry_escapes_only_when_coloured() {
        let plain = captured_with(false, use_colour(false, None));
        assert!(!plain.contains('\u{1b}'), "{plain:?}");
        let coloured = captured_with(false, use_colour(true, None));
        assert!(coloured.contains("\u{1b}["), "{coloured:?}");
        assert!(coloured.contains(r"\u{1b}[2K"), "{coloured:?}");
        assert!(!coloured.contains("\u{1b}[2K"), "{coloured:?}");
    }

    #[test]
    fn escaping_keeps_printable_text_and_escapes_controls() {
        let mut s = String::new();
        escape_into("Ок\tя\u{7f}\u{2028}", &mut s);
        assert_eq!(s, r"Ок\tя\u{7f}\u{2028}");
    }
}
