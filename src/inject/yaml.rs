//! The YAML that `inject` reads and writes: a stream split into documents by hand, each parsed with
//! saphyr-parser's events into a small tree that keeps every scalar as written, and written back in block
//! style.
//!
//! Why not a serde YAML crate: Kubernetes reads YAML 1.1 (go-yaml), where `0644` is octal and `on` is
//! true, while the maintained Rust crates resolve scalars by YAML 1.2. A document read and written through
//! them could change meaning (`defaultMode: 0644` becoming 644). Here a scalar is never resolved: it keeps
//! its text and whether it was plain, quoted or a block, and is written back the same way, so Kubernetes
//! reads what it read before. Only the values `inject` looks at (names, ports, labels) are interpreted.
//! Documents `inject` does not change are not written by this module at all: they are copied byte for
//! byte.

use saphyr_parser::{Event, Parser, ScalarStyle};

/// A node of a document.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// Keys in document order. Kubernetes keys are always scalars.
    Map(Vec<(String, Node)>),
    Seq(Vec<Node>),
    Scalar(Scalar),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    pub value: String,
    pub style: Style,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Style {
    /// Resolved by the reader (a number, a boolean, null, or a string).
    Plain,
    /// Always a string.
    Quoted,
    /// A string over several lines (literal or folded as written; its value is what matters).
    Block,
}

impl Node {
    /// A string, plain when no YAML reader could take it for anything else, else double-quoted.
    pub fn str(s: &str) -> Node {
        let style = if plain_is_string(s) {
            Style::Plain
        } else {
            Style::Quoted
        };
        Node::Scalar(Scalar {
            value: s.to_string(),
            style,
        })
    }

    pub fn int(n: u64) -> Node {
        Node::Scalar(Scalar {
            value: n.to_string(),
            style: Style::Plain,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Map(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Node> {
        match self {
            Node::Map(m) => m.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The value at `path`, through maps.
    pub fn at(&self, path: &[&str]) -> Option<&Node> {
        path.iter().try_fold(self, |n, k| n.get(k))
    }

    pub fn at_mut(&mut self, path: &[&str]) -> Option<&mut Node> {
        path.iter().try_fold(self, |n, k| n.get_mut(k))
    }

    /// The map at `key`, created empty (at the end) if absent. `None` if `self` is not a map or the
    /// value is something else.
    pub fn entry_map(&mut self, key: &str) -> Option<&mut Node> {
        let Node::Map(m) = self else { return None };
        let i = match m.iter().position(|(k, _)| k == key) {
            Some(i) => i,
            None => {
                m.push((key.to_string(), Node::Map(Vec::new())));
                m.len() - 1
            }
        };
        // `key: {}` or `key:` (null) both take the new entries.
        if matches!(&m[i].1, Node::Scalar(s) if s.style == Style::Plain && is_null(&s.value)) {
            m[i].1 = Node::Map(Vec::new());
        }
        matches!(m[i].1, Node::Map(_)).then_some(&mut m[i].1)
    }

    /// Sets `key` to `value`, in place if present, else at the end.
    pub fn set(&mut self, key: &str, value: Node) {
        if let Node::Map(m) = self {
            match m.iter_mut().find(|(k, _)| k == key) {
                Some((_, v)) => *v = value,
                None => m.push((key.to_string(), value)),
            }
        }
    }

    /// A scalar's text, whatever its style; `None` for a null, a map or a sequence.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Node::Scalar(s) if !(s.style == Style::Plain && is_null(&s.value)) => Some(&s.value),
            _ => None,
        }
    }

    /// A plain scalar that Kubernetes reads as an integer (decimal, as manifests write ports).
    pub fn as_int(&self) -> Option<u64> {
        match self {
            Node::Scalar(s) if s.style == Style::Plain => {
                s.value.strip_prefix('+').unwrap_or(&s.value).parse().ok()
            }
            _ => None,
        }
    }

    pub fn items(&self) -> &[Node] {
        match self {
            Node::Seq(s) => s,
            _ => &[],
        }
    }

    pub fn entries(&self) -> &[(String, Node)] {
        match self {
            Node::Map(m) => m,
            _ => &[],
        }
    }
}

fn is_null(v: &str) -> bool {
    matches!(v, "" | "~" | "null" | "Null" | "NULL")
}

/// Whether `s`, written plain, is read back as this string by YAML 1.1 and 1.2 readers alike.
fn plain_is_string(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    let words = [
        "y", "n", "yes", "no", "on", "off", "true", "false", "null", "nan", "inf",
    ];
    (first.is_ascii_alphabetic() || first == '/')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./-@=+".contains(c))
        && !words.contains(&s.to_ascii_lowercase().as_str())
}

/// The stream's documents, as written: each piece starts at a `---` line (but the first) and holds
/// everything up to the next. A `---` at the start of a line always starts a document in YAML, also
/// inside a block scalar, so splitting on lines is exact. Their concatenation is the input.
pub fn split_documents(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let marker = line
            .strip_prefix("---")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\n', '\r']));
        if marker && at > 0 {
            out.push(&text[start..at]);
            start = at;
        }
        at += line.len();
    }
    if start < text.len() || out.is_empty() {
        out.push(&text[start..]);
    }
    out
}

/// The one document of `piece` (a piece of `split_documents`), or `None` when it holds only comments.
pub fn parse(piece: &str) -> Result<Option<Node>, String> {
    let mut b = Builder::default();
    for ev in Parser::new_from_str(piece) {
        let (ev, span) = ev.map_err(|e| e.to_string())?;
        b.event(ev)
            .map_err(|e| format!("line {}: {e}", span.start.line()))?;
    }
    if b.docs.len() > 1 {
        return Err("two documents without a `---` between them".into());
    }
    // An empty document (`---` and nothing) holds no object either.
    Ok(b.docs
        .pop()
        .filter(|d| d.as_str().is_some() || !matches!(d, Node::Scalar(_))))
}

/// Builds trees from parser events, expanding aliases (Kubernetes expands them too).
#[derive(Default)]
struct Builder {
    /// Open collections: the node, and for a map a key waiting for its value.
    stack: Vec<(Node, Option<String>, usize)>,
    anchors: std::collections::HashMap<usize, Node>,
    docs: Vec<Node>,
}

impl Builder {
    fn event(&mut self, ev: Event<'_>) -> Result<(), String> {
        match ev {
            Event::Scalar(value, style, anchor, tag) => {
                let style = match (style, tag.as_deref()) {
                    (_, Some(t)) if t.is_yaml_core_schema() && t.suffix == "str" => Style::Quoted,
                    (_, Some(t)) => return Err(format!("the tag {t} is not supported here")),
                    (ScalarStyle::Plain, None) => Style::Plain,
                    (ScalarStyle::SingleQuoted | ScalarStyle::DoubleQuoted, None) => Style::Quoted,
                    (ScalarStyle::Literal | ScalarStyle::Folded, None) => Style::Block,
                };
                let node = Node::Scalar(Scalar {
                    value: value.into_owned(),
                    style,
                });
                self.finish(node, anchor)
            }
            Event::SequenceStart(anchor, tag) | Event::MappingStart(anchor, tag)
                if tag.is_some() =>
            {
                let _ = anchor;
                Err("tags on collections are not supported here".into())
            }
            Event::SequenceStart(anchor, _) => {
                self.stack.push((Node::Seq(Vec::new()), None, anchor));
                Ok(())
            }
            Event::MappingStart(anchor, _) => {
                self.stack.push((Node::Map(Vec::new()), None, anchor));
                Ok(())
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, pending, anchor) = self.stack.pop().ok_or("unbalanced YAML")?;
                if pending.is_some() {
                    return Err("a key without a value".into());
                }
                self.finish(node, anchor)
            }
            Event::Alias(id) => {
                let node = self
                    .anchors
                    .get(&id)
                    .cloned()
                    .ok_or("an alias to no anchor")?;
                self.finish(node, 0)
            }
            _ => Ok(()),
        }
    }

    /// A finished node: the value of a pending key, an item, a key, or a whole document.
    fn finish(&mut self, node: Node, anchor: usize) -> Result<(), String> {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        let Some((parent, pending, _)) = self.stack.last_mut() else {
            self.docs.push(node);
            return Ok(());
        };
        match parent {
            Node::Seq(items) => items.push(node),
            Node::Map(entries) => match pending.take() {
                Some(key) => entries.push((key, node)),
                None => match node {
                    Node::Scalar(s) => *pending = Some(s.value),
                    _ => return Err("a mapping key that is not a scalar".into()),
                },
            },
            Node::Scalar(_) => unreachable!("scalars are never open"),
        }
        Ok(())
    }
}

/// `node` as a block-style YAML document (no `---`), ending with a line break. A sequence under a key
/// is indented by `seq_indent` (0 as kubectl writes it, 2 as many people do: `layout` tells which).
pub fn emit(node: &Node, seq_indent: usize) -> String {
    let mut e = Emitter {
        out: String::new(),
        seq_indent,
    };
    match node {
        Node::Map(m) if !m.is_empty() => e.map(m, 0, false),
        Node::Seq(s) if !s.is_empty() => e.seq(s, 0, false),
        other => {
            emit_inline(&mut e.out, other, 0);
            e.out.push('\n');
        }
    }
    e.out
}

/// How `text` indents a sequence under a key: the first `key:` line followed by a `- ` line says.
pub fn layout(text: &str) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.windows(2) {
        let (key, item) = (pair[0], pair[1]);
        let indent = |l: &str| l.len() - l.trim_start().len();
        if key.trim_end().ends_with(':')
            && !key.trim_start().starts_with('#')
            && (item.trim_start().starts_with("- ") || item.trim() == "-")
        {
            return if indent(item) > indent(key) { 2 } else { 0 };
        }
    }
    0
}

struct Emitter {
    out: String,
    seq_indent: usize,
}

fn pad(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

impl Emitter {
    /// Entries at `indent`; the first on the current line when `inline` (after a sequence's `- `).
    fn map(&mut self, m: &[(String, Node)], indent: usize, inline: bool) {
        for (i, (k, v)) in m.iter().enumerate() {
            if i > 0 || !inline {
                pad(&mut self.out, indent);
            }
            write_string(&mut self.out, k);
            self.out.push(':');
            self.value(v, indent);
        }
    }

    /// Items at `indent`.
    fn seq(&mut self, s: &[Node], indent: usize, inline: bool) {
        for (i, item) in s.iter().enumerate() {
            if i > 0 || !inline {
                pad(&mut self.out, indent);
            }
            self.out.push('-');
            match item {
                Node::Map(m) if !m.is_empty() => {
                    self.out.push(' ');
                    self.map(m, indent + 2, true);
                }
                Node::Seq(inner) if !inner.is_empty() => {
                    self.out.push(' ');
                    self.seq(inner, indent + 2, true);
                }
                other => {
                    self.out.push(' ');
                    emit_inline(&mut self.out, other, indent + 2);
                    self.out.push('\n');
                }
            }
        }
    }

    /// After `key:`.
    fn value(&mut self, v: &Node, indent: usize) {
        match v {
            Node::Map(m) if !m.is_empty() => {
                self.out.push('\n');
                self.map(m, indent + 2, false);
            }
            Node::Seq(s) if !s.is_empty() => {
                self.out.push('\n');
                self.seq(s, indent + self.seq_indent, false);
            }
            Node::Scalar(s) if s.style == Style::Plain && s.value.is_empty() => self.out.push('\n'),
            other => {
                self.out.push(' ');
                emit_inline(&mut self.out, other, indent + 2);
                self.out.push('\n');
            }
        }
    }
}

/// A scalar or an empty collection on the current line; a block scalar's lines at `indent`. Ends
/// without the line break (a block scalar's last line has none either).
fn emit_inline(out: &mut String, v: &Node, indent: usize) {
    match v {
        Node::Map(_) => out.push_str("{}"),
        Node::Seq(_) => out.push_str("[]"),
        Node::Scalar(s) => match s.style {
            Style::Plain => out.push_str(if s.value.is_empty() { "null" } else { &s.value }),
            Style::Quoted => write_string(out, &s.value),
            Style::Block => {
                if !write_block(out, &s.value, indent) {
                    quoted(out, &s.value);
                }
            }
        },
    }
}

/// A string (a key, or a value that must stay a string): plain when that is unambiguous, else quoted.
fn write_string(out: &mut String, s: &str) {
    if plain_is_string(s) {
        out.push_str(s);
    } else {
        quoted(out, s);
    }
}

/// A literal block (`|`, `|-` or `|+` by its trailing line breaks), when the text can be one: printable
/// lines, the first not starting with a space. Returns false, writing nothing, otherwise.
fn write_block(out: &mut String, s: &str, indent: usize) -> bool {
    let body = s.trim_end_matches('\n');
    let trailing = s.len() - body.len();
    let first = body.lines().find(|l| !l.is_empty()).unwrap_or("");
    if body.is_empty()
        || first.starts_with([' ', '\t'])
        || s.chars()
            .any(|c| c != '\n' && c != '\t' && (c.is_control() || c == '\u{feff}'))
        || body.lines().next().is_some_and(str::is_empty)
    {
        return false;
    }
    out.push_str(match trailing {
        0 => "|-",
        1 => "|",
        _ => "|+",
    });
    let lines = body
        .split('\n')
        .chain(std::iter::repeat_n("", trailing.saturating_sub(1)));
    for line in lines {
        out.push('\n');
        if !line.is_empty() {
            pad(out, indent);
            out.push_str(line);
        }
    }
    true
}

/// A double-quoted string: `"`, `\` and every character that does not print escaped.
fn quoted(out: &mut String, s: &str) {
    use std::fmt::Write as _;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}') => {
                let _ = if (c as u32) <= 0xFFFF {
                    write!(out, "\\u{:04x}", c as u32)
                } else {
                    write!(out, "\\U{:08x}", c as u32)
                };
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(text: &str) -> Node {
        let node = parse(text).unwrap().unwrap();
        for seq_indent in [0, 2] {
            let written = emit(&node, seq_indent);
            let again = parse(&written).unwrap_or_else(|e| panic!("{e}:\n{written}"));
            assert_eq!(again.as_ref(), Some(&node), "{written}");
        }
        node
    }

    #[test]
    fn the_stream_splits_on_document_markers_and_joins_back_exactly() {
        let text = "# head\napiVersion: v1\n---\nkind: A\ndata:\n  x: |\n    ---not a marker\n--- # c\nkind: B\n---\n";
        let docs = split_documents(text);
        assert_eq!(docs.concat(), text);
        assert_eq!(docs.len(), 4, "{docs:?}");
        assert!(docs[1].starts_with("---\nkind: A"));
        assert_eq!(split_documents(""), [""]);
        assert_eq!(parse("# only a comment\n").unwrap(), None);
        assert_eq!(parse(docs[3]).unwrap(), None);
    }

    #[test]
    fn scalars_keep_how_kubernetes_reads_them() {
        // YAML 1.1 octal, booleans, and strings that look like numbers keep their form.
        let n = round_trip(
            "a: 0644\nb: on\nc: \"on\"\nd: '8080'\ne: 8080\nf: yes\ng:\nh: ~\ni: 1e3\nj: 0x1F\n",
        );
        let text = emit(&n, 0);
        assert!(
            text.contains("a: 0644\n") && text.contains("b: on\n"),
            "{text}"
        );
        assert!(
            text.contains("c: \"on\"\n") && text.contains("d: \"8080\"\n"),
            "{text}"
        );
        assert!(
            text.contains("e: 8080\n") && text.contains("g:\n"),
            "{text}"
        );
        assert_eq!(n.get("e").unwrap().as_int(), Some(8080));
        assert_eq!(n.get("d").unwrap().as_int(), None);
        assert_eq!(n.get("g").unwrap().as_str(), None);
    }

    #[test]
    fn block_and_quoted_strings_round_trip_to_the_same_value() {
        let n = round_trip(
            "cfg: |\n  [server]\n  listen = \"0.0.0.0:8080\"\n\n  # comment\nstrip: |-\n  a\n  b\nkeep: |+\n  a\n\nfold: >\n  a\n  b\nlead: \"  two spaces\\nthen\"\nctl: \"a\\u0007b\\u2028c\"\nempty: ''\n",
        );
        assert_eq!(
            n.get("cfg").unwrap().as_str(),
            Some("[server]\nlisten = \"0.0.0.0:8080\"\n\n# comment\n")
        );
        assert_eq!(n.get("fold").unwrap().as_str(), Some("a b\n"));
        let text = emit(&n, 0);
        assert!(text.contains("cfg: |\n  [server]\n"), "{text}");
        assert!(text.contains("ctl: \"a\\u0007b\\u2028c\""), "{text}");
    }

    #[test]
    fn nested_collections_and_anchors_round_trip() {
        let n = round_trip(
            "spec:\n  containers:\n  - name: a\n    args: [x, \"y z\"]\n    env: []\n  - - nested\n    - seq\n  x: &v {k: 1}\n  y: *v\nlist:\n- {}\n- []\n",
        );
        assert_eq!(n.at(&["spec", "y", "k"]).unwrap().as_int(), Some(1));
        assert_eq!(layout("a:\n- x\n"), 0);
        assert_eq!(layout("# c:\n  - y\na:\n  b:\n    - x\n"), 2);
    }

    #[test]
    fn new_strings_are_plain_only_when_unambiguous() {
        for (s, plain) in [
            ("webhooks", true),
            ("/metrics", true),
            ("true", false),
            ("9090", false),
            ("On", false),
            ("a: b", false),
            ("", false),
            ("-x", false),
            ("{\"a\":1}", false),
        ] {
            let mut out = String::new();
            emit_inline(&mut out, &Node::str(s), 0);
            assert_eq!(out == s, plain, "{s:?} -> {out}");
            assert_eq!(parse(&out).unwrap().unwrap().as_str(), Some(s), "{out}");
        }
    }

    #[test]
    fn unsupported_yaml_is_an_error_not_a_guess() {
        assert!(parse("a: !custom x\n").is_err());
        assert!(parse("? [a]\n: b\n").is_err());
        assert!(parse("a: [\n").is_err());
    }
}
