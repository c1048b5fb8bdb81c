//! Log lines in the format `server.log_format` names, for every line the process writes.
//!
//! - `text`: logfmt, `ts=… level=… target=…` then, for the access log, its own `key=value` fields (request
//!   values quoted by `proxy::access_log`), and for any other line `msg="…"`, quoted and escaped.
//! - `json`: one JSON object per line; the access log's fields are merged into it.
//!
//! Either way a value from a request cannot split a line or forge a field.

use std::fmt::Write as _;
use std::io::Write as _;

use crate::config::LogFormat;

/// The target of the access log, whose message is already structured.
pub const ACCESS: &str = "access";

/// Installs the process's logger; the level comes from `RUST_LOG` (default `info`).
pub fn init(format: LogFormat) {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    builder.format(move |buf, record| {
        let ts = buf.timestamp_millis();
        let (level, target) = (level_name(record.level()), record.target());
        // The access line, one per request, is written as it is: its fields are already quoted.
        if format == LogFormat::Text && target == ACCESS {
            return writeln!(
                buf,
                "ts={ts} level={level} target={ACCESS} {}",
                record.args()
            );
        }
        let msg = record.args().to_string();
        let line = match format {
            LogFormat::Text => text(&ts.to_string(), record.level(), target, &msg),
            LogFormat::Json => json(&ts.to_string(), record.level(), target, &msg),
        };
        writeln!(buf, "{line}")
    });
    builder.init();
}

/// `v` in double quotes, with `"` and `\` escaped and control characters as `\n`, `\r`, `\t` or `\u{..}`:
/// a line cannot be split or a field forged.
pub fn quote(line: &mut String, v: &str) {
    line.push('"');
    for c in v.chars() {
        match c {
            '"' => line.push_str("\\\""),
            '\\' => line.push_str("\\\\"),
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            '\t' => line.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(line, "\\u{{{:x}}}", c as u32);
            }
            c => line.push(c),
        }
    }
    line.push('"');
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
    let mut line = format!("ts={ts} level={} target={target} ", level_name(level));
    if target == ACCESS {
        line.push_str(msg);
    } else {
        line.push_str("msg=");
        quote(&mut line, msg);
    }
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
    head
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
