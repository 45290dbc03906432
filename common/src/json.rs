//! JSON text for what a process hands to another (`status --json`, the
//! collector's `/status` and `/healthz`, `pki show --json`, the agent's
//! state file): serde types written compactly, one form for all of them.
//!
//! The form is the one these outputs always had, which monitoring and
//! scripts read as text: compact, fields in declaration order, `null` for
//! what is unknown, control characters as `\n` or `\u0001`, and U+2028 and
//! U+2029 escaped too (valid JSON, but they end lines in JavaScript).

use std::io;

use serde::Serialize;

/// `value` as compact JSON text.
pub fn to_string<T: Serialize + ?Sized>(value: &T) -> String {
    let mut out = Vec::with_capacity(128);
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, Compact);
    if value.serialize(&mut serializer).is_err() {
        // Only a map with keys that are not strings fails; no type written
        // here has one.
        return "null".to_owned();
    }
    // serde_json writes UTF-8 only.
    String::from_utf8(out).unwrap_or_default()
}

/// `value` as one line of compact JSON, newline included.
pub fn line<T: Serialize + ?Sized>(value: &T) -> String {
    let mut text = to_string(value);
    text.push('\n');
    text
}

/// serde_json's compact form, with U+2028 and U+2029 escaped.
struct Compact;

impl serde_json::ser::Formatter for Compact {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut rest = fragment;
        while let Some(at) = rest.find(['\u{2028}', '\u{2029}']) {
            writer.write_all(&rest.as_bytes()[..at])?;
            let separator = &rest[at..at + 3];
            let code = separator.chars().next().map_or(0, u32::from);
            write!(writer, "\\u{code:04x}")?;
            rest = &rest[at + separator.len()..];
        }
        writer.write_all(rest.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Sample<'a> {
        text: &'a str,
        missing: Option<&'a str>,
        count: u64,
        list: Vec<&'a str>,
    }

    #[test]
    fn escapes_what_json_requires_and_the_javascript_line_ends() {
        let sample = Sample {
            text: "a\"b\\c\nd\u{1}é\u{2028}\u{8}\u{c}\t\r\u{2029}/",
            missing: None,
            count: 7,
            list: vec!["x", ""],
        };
        assert_eq!(
            line(&sample),
            "{\"text\":\"a\\\"b\\\\c\\nd\\u0001é\\u2028\\b\\f\\t\\r\\u2029/\",\
             \"missing\":null,\"count\":7,\"list\":[\"x\",\"\"]}\n"
        );
    }
}
