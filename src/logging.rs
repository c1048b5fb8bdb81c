//! Log lines in the format `server.log_format` names, for every line the process writes.
//!
//! - `text`: logfmt, `ts=… level=… target=…` then, for the access log, its own `key=value` fields (request
//!   values quoted by `proxy::access_log`), and for any other line `msg="…"`, quoted and escaped.
//! - `json`: one JSON object per line; the access log's fields are merged into it.
//!
//! Either way a value from a request cannot split a line or forge a field: every character that does not
//! print, or that some reader takes for a line break (U+0085, U+2028, U+2029), is escaped.
//!
//! The format is read for every line, not captured once: a reload that changes `server.log_format` applies
//! to every line written after it (the access log follows the configuration in force too).
//!
//! Access lines wait in one buffer and go to standard error together, once `FLUSH_AT` bytes wait or
//! `FLUSH_EVERY` has passed: one `write` per delivery cost about 1.8 us of system time, a sixth of what
//! the sidecar's own work costs (bench/README.md), and wakes whatever reads the pod's log on every
//! request. Every other line is written at once, after the access lines waiting before it, so lines keep
//! their order. Both go through env_logger, so `RUST_LOG` filters them alike. What waits is written
//! before the process exits; a process that dies of a signal it does not handle (`SIGKILL`, `SIGQUIT`)
//! loses at most `FLUSH_EVERY` of access lines.

use std::cell::Cell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::config::LogFormat;

/// The target of the access log, whose message is already structured.
pub const ACCESS: &str = "access";

/// Whether lines are written as JSON now (`server.log_format = "json"`).
static JSON: AtomicBool = AtomicBool::new(false);

/// Access lines are written out once this many bytes wait...
const FLUSH_AT: usize = 16 * 1024;
/// ...or this long after the last write-out, whichever comes first.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Lines not yet written to standard error.
static PENDING: Mutex<Vec<u8>> = Mutex::new(Vec::new());

thread_local! {
    /// Whether the line this thread is writing is an access line (set as env_logger formats it, read
    /// when it hands the line over).
    static ACCESS_LINE: Cell<bool> = const { Cell::new(false) };
}

/// Installs the process's logger; the level comes from `RUST_LOG` (default `info`).
pub fn init(format: LogFormat) {
    set_format(format);
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    builder.format(move |buf, record| {
        let ts = buf.timestamp_millis();
        let (level, target) = (record.level(), record.target());
        let format = format_now();
        ACCESS_LINE.set(target == ACCESS);
        // The access line, one per request, is written as it is: its fields are already quoted.
        if format == LogFormat::Text && target == ACCESS {
            return writeln!(buf, "ts={ts} level=info target={ACCESS} {}", record.args());
        }
        let msg = record.args().to_string();
        let line = match format {
            LogFormat::Text => text(&ts.to_string(), level, target, &msg),
            LogFormat::Json => json(&ts.to_string(), level, target, &msg),
        };
        writeln!(buf, "{line}")
    });
    builder.target(env_logger::Target::Pipe(Box::new(Batched)));
    builder.init();
    let flusher = std::thread::Builder::new().name("log-flush".into());
    let _ = flusher.spawn(|| {
        loop {
            std::thread::sleep(FLUSH_EVERY);
            flush();
        }
    });
}

/// Whether access lines are written (`RUST_LOG` lets `info` through for the `access` target).
pub fn access_enabled() -> bool {
    log::log_enabled!(target: ACCESS, log::Level::Info)
}

/// Writes out every line waiting; before the process exits.
pub fn flush() {
    write_out(&mut pending());
}

fn pending() -> MutexGuard<'static, Vec<u8>> {
    PENDING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Under the lock, so that lines leave in the order they were queued.
fn write_out(pending: &mut Vec<u8>) {
    if !pending.is_empty() {
        // Standard error gone: there is nowhere left to say so.
        let _ = std::io::stderr().lock().write_all(pending);
        pending.clear();
    }
}

/// env_logger's target. Each line comes as one `write_all` and a `flush`: an access line waits (up to
/// `FLUSH_AT`), any other goes out at once, behind the access lines waiting before it.
struct Batched;

impl std::io::Write for Batched {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        pending().extend_from_slice(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let mut pending = pending();
        if !ACCESS_LINE.get() || pending.len() >= FLUSH_AT {
            write_out(&mut pending);
        }
        Ok(())
    }
}

/// Writes every following line in `format` (a reload that changed `server.log_format`).
pub fn set_format(format: LogFormat) {
    JSON.store(format == LogFormat::Json, Relaxed);
}

/// The format lines are written in now.
pub fn format_now() -> LogFormat {
    if JSON.load(Relaxed) {
        LogFormat::Json
    } else {
        LogFormat::Text
    }
}

/// The format's name as the configuration writes it.
pub fn format_name(format: LogFormat) -> &'static str {
    match format {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
    }
}

/// The `server.log_format` a configuration file asks for, read before the file is validated: a file that
/// is refused at start-up is reported in the format its owner reads the logs in. Text when the file cannot
/// be read or parsed.
pub fn format_in_file(path: &std::path::Path) -> LogFormat {
    let table = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok());
    let server = table.as_ref().and_then(|t| t.get("server")?.as_table());
    let named = server.and_then(|s| s.get("log_format").or_else(|| s.get("access_log")));
    match named.and_then(|v| v.as_str()) {
        Some("json") => LogFormat::Json,
        _ => LogFormat::Text,
    }
}

/// `v` in double quotes, with `"` and `\` escaped, `\n`, `\r` and `\t` as such, and every other
/// character that does not print or that a reader may take for a line break as `\u{..}`: a line cannot
/// be split, a field forged, or text hidden from the person reading it.
pub fn quote(line: &mut String, v: &str) {
    line.push('"');
    // Most values are printable ASCII with nothing to escape: copied whole.
    if v.bytes()
        .all(|b| matches!(b, b' '..=b'~') && b != b'"' && b != b'\\')
    {
        line.push_str(v);
        line.push('"');
        return;
    }
    for c in v.chars() {
        match c {
            '"' => line.push_str("\\\""),
            '\\' => line.push_str("\\\\"),
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            '\t' => line.push_str("\\t"),
            c if !prints(c) => {
                let _ = write!(line, "\\u{{{:x}}}", c as u32);
            }
            c => line.push(c),
        }
    }
    line.push('"');
}

/// Whether `c` shows as itself on one line: not a control character (C0, DEL, C1, U+0085 included), not
/// a line or paragraph separator (U+2028, U+2029), not an invisible format character (Unicode category
/// Cf: zero-width characters, bidirectional overrides that reorder what a terminal shows, tag
/// characters), not a private-use or unassigned noncharacter code point.
pub fn prints(c: char) -> bool {
    let u = c as u32;
    !(c.is_control()
        || matches!(u,
            0x2028 | 0x2029
            // Cf, the format characters.
            | 0x00AD | 0x0600..=0x0605 | 0x061C | 0x06DD | 0x070F | 0x0890..=0x0891 | 0x08E2
            | 0x180E | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F
            | 0xFEFF | 0xFFF9..=0xFFFB | 0x110BD | 0x110CD | 0x13430..=0x1343F | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A | 0xE0001 | 0xE0020..=0xE007F
            // Private use, and the noncharacters.
            | 0xE000..=0xF8FF | 0xF0000..=0x10FFFF | 0xFDD0..=0xFDEF)
        || u & 0xFFFE == 0xFFFE)
}
fn level_name(level: log::Level) -> &'static str {
    match level {
        log::Level::Error => "error",
        log::Level::Warn => "warn",
        log::Level::Info => "info",
        log::Level::Debug => "debug",
        log::Level::Trace => "trace",
    }
}

fn text(ts: &str, level: log::Level, target: &str, msg: &str) -> String {
    let mut line = format!("ts={ts} level={} target={target} msg=", level_name(level));
    quote(&mut line, msg);
    line
}

fn json(ts: &str, level: log::Level, target: &str, msg: &str) -> String {
    let head = serde_json::json!({
        "ts": ts,
        "level": level_name(level),
        "target": target,
    });
    let mut head = head.to_string();
    // The access log's message is a JSON object of its own: its fields join the line's.
    match msg.strip_prefix('{').filter(|_| target == ACCESS) {
        Some(fields) if fields.len() > 1 => {
            head.pop();
            head.push(',');
            head.push_str(fields);
        }
        _ => {
            head.pop();
            head.push_str(",\"msg\":");
            head.push_str(&serde_json::Value::from(msg).to_string());
            head.push('}');
        }
    }
    escape_json(head)
}

/// `line` (JSON) with every character that does not print escaped as `\uXXXX`. serde_json escapes only
/// what JSON requires (below U+0020); U+2028 and U+2029 end a line for JavaScript readers, and NEL for
/// some others. Such characters can only stand inside strings (the rest of a line is ASCII), where the
/// escape means the same character.
fn escape_json(line: String) -> String {
    if line.chars().all(prints) {
        return line;
    }
    let mut out = String::with_capacity(line.len() + 12);
    for c in line.chars() {
        if prints(c) {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{u:04x}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_cannot_split_a_text_line_or_forge_a_field() {
        let line = text("t", log::Level::Warn, "x", "a\nlevel=error \"b\"");
        assert_eq!(
            line,
            r#"ts=t level=warn target=x msg="a\nlevel=error \"b\"""#
        );
    }

    #[test]
    fn every_character_that_does_not_print_or_breaks_a_line_is_escaped_in_text() {
        for (raw, escaped) in [
            ("a\u{2028}b", "a\\u{2028}b"),
            ("a\u{2029}b", "a\\u{2029}b"),
            ("a\u{85}b", "a\\u{85}b"),
            ("a\u{0b}\u{0c}b", "a\\u{b}\\u{c}b"),
            ("a\u{7f}\u{9b}b", "a\\u{7f}\\u{9b}b"),
            // A bidirectional override would show the rest of the line reversed.
            ("a\u{202e}b\u{2066}", "a\\u{202e}b\\u{2066}"),
            ("zero\u{200b}width\u{feff}", "zero\\u{200b}width\\u{feff}"),
            ("tag\u{e0041}", "tag\\u{e0041}"),
            (
                "\u{fffe}\u{10ffff}\u{e000}",
                "\\u{fffe}\\u{10ffff}\\u{e000}",
            ),
        ] {
            let mut line = String::new();
            quote(&mut line, raw);
            assert_eq!(line, format!("\"{escaped}\""), "{raw:?}");
        }
        // What prints stays as it is: accents, other scripts, emoji, the plain space.
        let mut line = String::new();
        quote(&mut line, "café 東京 🚀 ü");
        assert_eq!(line, "\"café 東京 🚀 ü\"");
    }

    #[test]
    fn json_lines_escape_what_does_not_print_and_still_parse_to_the_same_text() {
        let raw = "a\u{2028}b\u{2029}c\u{85}d\u{202e}e\u{e0041}";
        let line = json("t", log::Level::Info, "x", raw);
        assert!(line.chars().all(prints), "{line:?}");
        assert!(
            line.contains("\\u2028") && line.contains("\\udb40\\udc41"),
            "{line}"
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["msg"], raw);
        let access = json(
            "t",
            log::Level::Info,
            ACCESS,
            "{\"tenant\":\"OU\u{2028}1\"}",
        );
        let v: serde_json::Value = serde_json::from_str(&access).unwrap();
        assert_eq!(v["tenant"], "OU\u{2028}1");
        assert!(!access.contains('\u{2028}'), "{access}");
    }

    #[test]
    fn the_format_can_change_while_the_process_runs() {
        set_format(LogFormat::Json);
        assert_eq!(format_now(), LogFormat::Json);
        set_format(LogFormat::Text);
        assert_eq!(format_now(), LogFormat::Text);
    }

    #[test]
    fn json_lines_are_single_objects_with_access_fields_merged() {
        let plain: serde_json::Value =
            serde_json::from_str(&json("t", log::Level::Info, "pingora", "hi\n\"x\"")).unwrap();
        assert_eq!(plain["msg"], "hi\n\"x\"");
        let access = json(
            "t",
            log::Level::Info,
            ACCESS,
            r#"{"status":200,"path":"/w"}"#,
        );
        let v: serde_json::Value = serde_json::from_str(&access).unwrap();
        assert_eq!(v["status"], 200);
        assert_eq!(v["target"], "access");
        assert!(!access.contains('\n'));
    }
}
