//! How span fields are kept for JSON logs: written straight out as a JSON object.
//!
//! The JSON formatter stores each span's fields as JSON text when the span is created
//! and copies them into every line logged inside it (`"span": {...}`). Its stock field
//! formatter (`JsonFields`) builds a map of `serde_json::Value`s and serializes it
//! through an `io::Write` adapter — about 7,000 instructions for the three fields of
//! the `request` span, paid on every request although most requests log nothing.
//! This one writes the same JSON object directly (keys in field order instead of
//! sorted; a repeated key keeps its last value, as before, once the text is parsed).

use std::fmt::{self, Write};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::FormattedFields;
use tracing_subscriber::fmt::format::Writer;

/// The span field formatter of the JSON log format (see the module docs).
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonSpanFields;

impl<'w> FormatFields<'w> for JsonSpanFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        // Composed on the stack and handed over in one write: the writer is a fresh
        // `String` behind `dyn Write`, which would otherwise grow piece by piece.
        let mut text = crate::primitives::StackStr::<384>::new();
        if write_object(&mut text, &fields).is_ok() {
            return writer.write_str(text.as_str());
        }
        write_object(&mut writer, fields)
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        if current.fields.is_empty() {
            return write_object(&mut current.fields, fields);
        }
        // Fields recorded later on a span: merge into the existing object (rare).
        let mut extra = String::new();
        write_object(&mut extra, fields)?;
        let mut map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&current.fields).map_err(|_| fmt::Error)?;
        let extra: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&extra).map_err(|_| fmt::Error)?;
        map.extend(extra);
        current.fields = serde_json::Value::Object(map).to_string();
        Ok(())
    }
}

fn write_object<W: Write, R: RecordFields>(out: &mut W, fields: R) -> fmt::Result {
    let mut v = Visitor {
        out,
        first: true,
        result: Ok(()),
    };
    fields.record(&mut v);
    v.result?;
    if v.first {
        v.out.write_str("{}")
    } else {
        v.out.write_char('}')
    }
}

struct Visitor<'a, W: Write> {
    out: &'a mut W,
    first: bool,
    result: fmt::Result,
}

impl<W: Write> Visitor<'_, W> {
    fn key(&mut self, field: &Field) -> fmt::Result {
        self.out.write_str(if self.first { "{\"" } else { ",\"" })?;
        self.first = false;
        Escape(&mut *self.out).write_str(field.name())?;
        self.out.write_str("\":")
    }

    fn try_string(&mut self, field: &Field, value: fmt::Arguments<'_>) -> fmt::Result {
        self.key(field)?;
        self.out.write_char('"')?;
        Escape(&mut *self.out).write_fmt(value)?;
        self.out.write_char('"')
    }

    fn string(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        if self.result.is_ok() {
            self.result = self.try_string(field, value);
        }
    }

    fn raw(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        if self.result.is_ok() {
            self.result = self.key(field).and_then(|()| self.out.write_fmt(value));
        }
    }
}

impl<W: Write> Visit for Visitor<'_, W> {
    fn record_str(&mut self, field: &Field, value: &str) {
        // Straight into the escaper: no formatting machinery (the `request` span's
        // three fields are strings, recorded on every request).
        if self.result.is_ok() {
            self.result = self.key(field).and_then(|()| {
                self.out.write_char('"')?;
                Escape(&mut *self.out).write_str(value)?;
                self.out.write_char('"')
            });
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.string(field, format_args!("{value:?}"));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.raw(field, format_args!("{value}"));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.raw(field, format_args!("{value}"));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.raw(field, format_args!("{value}"));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.raw(field, format_args!("{value}"));
        } else {
            // JSON has no NaN or infinity (serde_json writes null too).
            self.raw(field, format_args!("null"));
        }
    }
}

/// Writes text as the inside of a JSON string.
struct Escape<'a, W: Write>(&'a mut W);

impl<W: Write> Write for Escape<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // The usual text (ids, methods, paths, field names) needs no escape: one write.
        if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
            return self.0.write_str(s);
        }
        let mut start = 0;
        for (i, b) in s.bytes().enumerate() {
            let escaped = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f => "",
                _ => continue,
            };
            self.0.write_str(&s[start..i])?;
            if escaped.is_empty() {
                write!(self.0, "\\u{b:04x}")?;
            } else {
                self.0.write_str(escaped)?;
            }
            start = i + 1;
        }
        self.0.write_str(&s[start..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_json() {
        let mut out = String::new();
        Escape(&mut out).write_str("a\"b\\c\nd\u{1}e/ü").unwrap();
        let parsed: String = serde_json::from_str(&format!("\"{out}\"")).unwrap();
        assert_eq!(parsed, "a\"b\\c\nd\u{1}e/ü");
    }

    #[test]
    fn span_fields_are_a_json_object_the_json_format_reads() {
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
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .fmt_fields(JsonSpanFields)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "request",
                request_id = "abc-1",
                method = %"GET",
                path = %"/a\"b",
                n = 7u64,
                ok = true,
                later = tracing::field::Empty,
            );
            let _e = span.enter();
            span.record("later", "x");
            tracing::info!(event = "e", "hello");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        let span = &line["span"];
        assert_eq!(span["name"], "request");
        assert_eq!(span["request_id"], "abc-1");
        assert_eq!(span["method"], "GET");
        assert_eq!(span["path"], "/a\"b");
        assert_eq!(span["n"], 7);
        assert_eq!(span["ok"], true);
        assert_eq!(span["later"], "x");
        assert_eq!(line["event"], "e");
    }
}
