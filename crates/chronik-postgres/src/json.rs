//! JSON text for `jsonb` parameters, written so that every value reads back as the same
//! `serde_json::Value` it was.

use std::io;

use serde::Serialize as _;
use serde_json::Value;
use serde_json::ser::{CompactFormatter, Formatter};

/// Compact JSON, except that an integral float written in exponent form (serde writes
/// `4.865044698060734e18`) is written as a plain decimal with a fraction
/// (`4865044698060734464.0`).
///
/// Why: `jsonb` keeps numbers as `numeric`, which prints `4.865044698060734e18` back as
/// `4865044698060734000`, an integer; the payload would then read back as an
/// integer-valued `Value` where a float was written (the bad-input round-trip test found
/// it). A fraction digit keeps the `numeric`'s scale, so the text read back is still a
/// float, of the same value.
#[derive(Debug, Clone, Copy)]
struct Jsonb;

impl Formatter for Jsonb {
    fn write_f64<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f64) -> io::Result<()> {
        let mut text = Vec::new();
        CompactFormatter.write_f64(&mut text, value)?;
        if value.is_finite() && value.fract() == 0.0 && text.contains(&b'e') {
            // The exact decimal expansion of the value: parses back to the same f64.
            write!(writer, "{value:.1}")
        } else {
            writer.write_all(&text)
        }
    }
}

/// `value` as JSON text for a `jsonb` parameter (see [`Jsonb`]).
pub(crate) fn to_jsonb_text(value: &Value) -> Result<String, serde_json::Error> {
    let mut out = Vec::with_capacity(128);
    value.serialize(&mut serde_json::Serializer::with_formatter(&mut out, Jsonb))?;
    // serde_json writes only valid UTF-8.
    String::from_utf8(out).map_err(|e| serde::ser::Error::custom(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::to_jsonb_text;
    use serde_json::{Value, json};

    #[test]
    fn integral_floats_keep_a_fraction_and_everything_else_is_compact_json() {
        for (value, text) in [
            (json!(4.865044698060734e18), "4865044698060734464.0"),
            (json!(-1e16), "-10000000000000000.0"),
            (json!(1.5), "1.5"),
            (json!(1e-7), "1e-7"),
            (json!(123.0), "123.0"),
            (json!(u64::MAX), "18446744073709551615"),
            (json!({ "a": [1, "x\"y"] }), r#"{"a":[1,"x\"y"]}"#),
        ] {
            let written = to_jsonb_text(&value).expect("serializes");
            assert_eq!(written, text);
            let read: Value = serde_json::from_str(&written).expect("parses");
            assert_eq!(read, value, "{text}");
        }
    }
}
