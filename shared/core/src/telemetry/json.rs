//! JSON log lines written straight from tracing's fields, one object per line: `timestamp`,
//! `level`, the event's fields (its `message` among them), `target`, and `span` (the current
//! span's fields and `name`).
//!
//! tracing-subscriber's own JSON formatter writes the same shape, but it keeps a span's fields
//! as a JSON string and parses that string back into `serde_json::Value`s for every event
//! written inside the span (and builds a map of `Value`s to format each span): 40,000 of a
//! tabular request's 201,000 instructions in diabetes-svc at `info` (callgrind). Here a span's
//! fields are formatted once, as the members of a JSON object, and every event line copies them.

use std::fmt::{self, Write};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The event formatter (`fmt().event_format(JsonLine)`), used with [`JsonFields`].
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonLine;

/// Formats a span's fields as a JSON object, `{"k":v,...}`; a later `record` appends.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonFields;

impl<S> FormatEvent<S, JsonFields> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        writer.write_str("{\"timestamp\":\"")?;
        SystemTime.format_time(&mut writer)?;
        writer.write_str("\",\"level\":\"")?;
        writer.write_str(meta.level().as_str())?;
        writer.write_char('"')?;
        let mut fields = Members::after_others(&mut writer);
        event.record(&mut fields);
        fields.result?;
        writer.write_str(",\"target\":")?;
        string(&mut writer, meta.target())?;
        let span = event
            .parent()
            .and_then(|id| ctx.span(id))
            .or_else(|| ctx.lookup_current());
        if let Some(span) = span {
            writer.write_str(",\"span\":{")?;
            let ext = span.extensions();
            if let Some(f) = ext.get::<FormattedFields<JsonFields>>() {
                // `{...}` as `JsonFields` wrote it: its members, then the name after them.
                let f = f.fields.as_str();
                let members = f.strip_prefix('{').and_then(|m| m.strip_suffix('}'));
                let members = members.unwrap_or_default();
                if !members.is_empty() {
                    writer.write_str(members)?;
                    writer.write_char(',')?;
                }
            }
            writer.write_str("\"name\":")?;
            string(&mut writer, span.metadata().name())?;
            writer.write_char('}')?;
        }
        writer.write_str("}\n")
    }
}

impl<'writer> FormatFields<'writer> for JsonFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        writer.write_char('{')?;
        let mut members = Members::first(&mut writer);
        fields.record(&mut members);
        members.result?;
        writer.write_char('}')
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        if current.fields.is_empty() {
            return self.format_fields(current.as_writer(), fields);
        }
        // Appended before the closing brace. A field recorded again appears twice; JSON
        // readers keep the last, which is the value recorded last.
        current.fields.pop();
        let empty = current.fields.len() == 1;
        let mut w = current.as_writer();
        let mut members = if empty {
            Members::first(&mut w)
        } else {
            Members::after_others(&mut w)
        };
        fields.record(&mut members);
        members.result?;
        current.fields.push('}');
        Ok(())
    }
}

/// Writes fields as object members, `"k":v` separated by commas.
struct Members<'a, W: Write> {
    w: &'a mut W,
    first: bool,
    result: fmt::Result,
}

impl<'a, W: Write> Members<'a, W> {
    fn first(w: &'a mut W) -> Self {
        Self {
            w,
            first: true,
            result: Ok(()),
        }
    }

    fn after_others(w: &'a mut W) -> Self {
        Self {
            w,
            first: false,
            result: Ok(()),
        }
    }

    fn member(&mut self, field: &Field, value: impl FnOnce(&mut W) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        self.result = (|| {
            if !self.first {
                self.w.write_char(',')?;
            }
            self.first = false;
            string(self.w, field.name())?;
            self.w.write_char(':')?;
            value(self.w)
        })();
    }
}

impl<W: Write> Visit for Members<'_, W> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.member(field, |w| {
            if value.is_finite() {
                // serde_json's shortest round-trip form: 1,300 fewer instructions a request
                // than `{value}` for the access line's two latencies (callgrind).
                let mut buf = [0u8; 32];
                let mut rest = &mut buf[..];
                serde_json::to_writer(&mut rest, &value).map_err(|_| fmt::Error)?;
                let n = 32 - rest.len();
                w.write_str(std::str::from_utf8(&buf[..n]).map_err(|_| fmt::Error)?)
            } else {
                // JSON has no NaN or infinity.
                w.write_str("null")
            }
        });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.member(field, |w| write!(w, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.member(field, |w| write!(w, "{value}"));
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.member(field, |w| write!(w, "{value}"));
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.member(field, |w| write!(w, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.member(field, |w| w.write_str(if value { "true" } else { "false" }));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.member(field, |w| string(w, value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.member(field, |w| {
            w.write_char('"')?;
            write!(Escaped(w), "{value}")?;
            w.write_char('"')
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.member(field, |w| {
            w.write_char('"')?;
            write!(Escaped(w), "{value:?}")?;
            w.write_char('"')
        });
    }
}

/// `s` as a JSON string.
fn string(w: &mut impl Write, s: &str) -> fmt::Result {
    w.write_char('"')?;
    Escaped(w).write_str(s)?;
    w.write_char('"')
}

/// A writer that escapes what it is given for the inside of a JSON string.
struct Escaped<'a, W: Write>(&'a mut W);

impl<W: Write> Write for Escaped<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut plain = 0;
        for (i, b) in s.bytes().enumerate() {
            let escape = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f => "",
                _ => continue,
            };
            self.0.write_str(&s[plain..i])?;
            if escape.is_empty() {
                write!(self.0, "\\u{b:04x}")?;
            } else {
                self.0.write_str(escape)?;
            }
            plain = i + 1;
        }
        self.0.write_str(&s[plain..])
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use serde_json::{Value, json};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn lines(emit: impl FnOnce()) -> Vec<Value> {
        let buf = Buffer::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || out.clone())
            .fmt_fields(JsonFields)
            .event_format(JsonLine)
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    #[test]
    fn events_and_their_span_are_one_json_object_per_line() {
        let got = lines(|| {
            let span = tracing::info_span!("request", request_id = "a\"b\\c\n", n = 3u64);
            let _g = span.enter();
            tracing::info!(
                status = 200,
                latency_ms = 1.5,
                bad = f64::NAN,
                ok = true,
                "served"
            );
            span.record("n", 4u64);
            tracing::warn!(error = %"tab\there\u{1}", "failed: {}", "why");
        });
        assert_eq!(got.len(), 2);
        let first = &got[0];
        assert_eq!(first["level"], "INFO");
        assert_eq!(first["message"], "served");
        assert_eq!(first["status"], 200);
        assert_eq!(first["latency_ms"], 1.5);
        assert_eq!(first["bad"], Value::Null);
        assert_eq!(first["ok"], true);
        assert_eq!(
            first["span"],
            json!({"request_id": "a\"b\\c\n", "n": 3, "name": "request"})
        );
        assert!(first["timestamp"].as_str().unwrap().ends_with('Z'));
        assert!(first["target"].as_str().unwrap().contains("json"));
        let second = &got[1];
        assert_eq!(second["level"], "WARN");
        assert_eq!(second["message"], "failed: why");
        assert_eq!(second["error"], "tab\there\u{1}");
        // Recorded after the span began: the later value is the one read.
        assert_eq!(second["span"]["n"], 4);
    }

    #[test]
    fn an_event_outside_a_span_and_a_span_without_fields() {
        let got = lines(|| {
            tracing::info!("starting");
            let span = tracing::info_span!("load");
            span.in_scope(|| tracing::info!(x = -2i64, "in"));
            let late = tracing::info_span!("late", v = tracing::field::Empty);
            late.record("v", "set");
            late.in_scope(|| tracing::info!("after"));
        });
        assert_eq!(got[0]["message"], "starting");
        assert!(got[0].get("span").is_none());
        assert_eq!(got[1]["span"], json!({"name": "load"}));
        assert_eq!(got[1]["x"], -2);
        assert_eq!(got[2]["span"], json!({"v": "set", "name": "late"}));
    }
}
