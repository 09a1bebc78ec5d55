//! What a client is told when its JSON does not fit: the field at fault and
//! what it should hold, in the words of the API's documentation, never in
//! serde's (`u32`, `struct RetrainRequest`, `a sequence`, `at line 1 column
//! 21`).
//!
//! serde_json reports a shape error as one sentence built from serde's
//! `Unexpected` (what was found) and the visitor's `expecting` text (what
//! was wanted), with the position appended. Neither part is exposed as data,
//! so the sentence is taken apart at the fixed phrases serde's `de::Error`
//! methods write (`invalid type: `, `, expected `), and each part is
//! translated through a table. A message of our own (a custom `expecting`
//! or `de::Error::custom`) passes through unchanged. The unit tests pin
//! every phrase, so a serde release that rewords one fails them rather than
//! leaking.

use serde::de::DeserializeOwned;
use serde_json::error::Category;

use crate::error::ApiError;
use crate::text::clip;

/// Parses JSON text, telling syntax errors (400 `malformed_json`) apart from
/// well-formed JSON of the wrong shape (422 `invalid_input`, naming the field).
pub(crate) fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    match serde_json::from_slice(bytes) {
        Ok(v) => Ok(v),
        // Only a failed parse pays for tracking the path: the same bytes
        // fail the same way again, now with the field named.
        Err(e) if e.classify() == Category::Data => {
            let mut de = serde_json::Deserializer::from_slice(bytes);
            match serde_path_to_error::deserialize::<_, T>(&mut de) {
                Err(at) => Err(ApiError::InvalidInput(at_path(
                    &at.path().to_string(),
                    at.inner(),
                ))),
                Ok(v) => Ok(v),
            }
        }
        Err(e) => Err(syntax_error(&e)),
    }
}

/// A parsed `serde_json::Value` into `T`, for a part of a request parsed on
/// its own (`what` names it in the message, e.g. `params`).
pub(crate) fn from_value<T: DeserializeOwned>(
    what: &str,
    v: serde_json::Value,
) -> Result<T, ApiError> {
    serde_path_to_error::deserialize::<_, T>(v).map_err(|at| {
        let path = at.path().to_string();
        let path = if path == "." {
            what.to_owned()
        } else {
            format!("{what}.{path}")
        };
        ApiError::InvalidInput(at_path(&path, at.inner()))
    })
}

/// Maps any serde_json error: text that is not JSON (or a number JSON cannot
/// hold, like `1e400`) is `malformed_json`, JSON of the wrong shape is
/// `invalid_input`.
pub(crate) fn json_error(e: &serde_json::Error) -> ApiError {
    match e.classify() {
        Category::Data => ApiError::InvalidInput(describe(e)),
        Category::Syntax | Category::Eof | Category::Io => syntax_error(e),
    }
}

fn syntax_error(e: &serde_json::Error) -> ApiError {
    let what = match e.classify() {
        Category::Eof => "it ends early",
        _ if sentence(e).starts_with("number out of range") => "a number is out of range",
        _ => "it is not well-formed",
    };
    ApiError::MalformedJson(format!("request body is not valid JSON: {what}"))
}

fn at_path(path: &str, e: &serde_json::Error) -> String {
    let message = describe(e);
    // The path ends at the unknown key itself, which the message names.
    let path = if message.starts_with("unknown field ") {
        path.rsplit_once('.').map_or("", |(parent, _)| parent)
    } else {
        path
    };
    if path.is_empty() || path == "." {
        message
    } else {
        format!("{path}: {message}")
    }
}

/// serde's sentence without the position serde_json appends.
fn sentence(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let position = format!(" at line {} column {}", e.line(), e.column());
    match full.strip_suffix(&position) {
        Some(s) => s.to_owned(),
        None => full,
    }
}

/// One sentence, in the API's words, of what a shape error found and wanted.
pub(crate) fn describe(e: &serde_json::Error) -> String {
    let s = sentence(e);
    let translated = if let Some(rest) = s.strip_prefix("invalid type: ") {
        found_expected(rest)
    } else if let Some(rest) = s.strip_prefix("invalid value: ") {
        found_expected(rest)
    } else if let Some(rest) = s.strip_prefix("invalid length ") {
        rest.split_once(", expected ")
            .map(|(n, exp)| match expected(exp).as_str() {
                // serde reads a struct from an array too, and then counts.
                "an object" => "got an array, expected an object".to_owned(),
                exp => format!("got {n} elements, expected {exp}"),
            })
    } else {
        // missing, unknown or duplicate field, unknown variant (naming the
        // allowed ones), or a message of our own: no serde terms in them.
        None
    };
    clip(&translated.unwrap_or(s))
}

fn found_expected(rest: &str) -> Option<String> {
    let (unexp, exp) = rest.split_once(", expected ")?;
    Some(format!("got {}, expected {}", found(unexp), expected(exp)))
}

/// serde's `Unexpected` as the client wrote it.
fn found(unexp: &str) -> String {
    let quoted = |p: &str| {
        unexp
            .strip_prefix(p)
            .map(|v| v.trim_matches('`').to_owned())
    };
    if let Some(n) = quoted("floating point ").or_else(|| quoted("integer ")) {
        format!("the number {n}")
    } else if let Some(b) = quoted("boolean ") {
        b
    } else if unexp.starts_with("string ") {
        "a string".to_owned()
    } else {
        match unexp {
            "sequence" => "an array",
            "map" => "an object",
            "unit value" | "null" => "null",
            other => other,
        }
        .to_owned()
    }
}

/// A visitor's `expecting`, for the Rust types serde names by their Rust
/// names; anything else is already a phrase of its own.
fn expected(exp: &str) -> String {
    match exp {
        "u8" => "a whole number from 0 to 255",
        "u16" => "a whole number from 0 to 65535",
        "u32" => "a whole number from 0 to 4294967295",
        "u64" | "usize" => "a whole number from 0 to 18446744073709551615",
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        "a sequence" => "an array",
        "a boolean" => "true or false",
        "a string" | "a borrowed string" => "a string",
        "unit" => "null",
        _ if exp.starts_with("struct ") || exp == "a map" => "an object",
        _ if exp.starts_with("enum ") || exp.starts_with("variant identifier") => {
            "one of the documented values"
        }
        other => return other.to_owned(),
    }
    .to_owned()
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct T {
        version: Option<u32>,
        rows: Option<Vec<Vec<f64>>>,
        name: Option<String>,
        flag: Option<bool>,
        kind: Option<Kind>,
        inner: Option<Inner>,
    }

    #[derive(Deserialize, Debug)]
    #[serde(rename_all = "snake_case")]
    #[allow(dead_code)]
    enum Kind {
        Always,
        Never,
    }

    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct Inner {
        columns: Vec<String>,
    }

    fn message(body: &str) -> (String, String) {
        let e = parse::<T>(body.as_bytes()).unwrap_err();
        (e.code().as_str().to_owned(), e.to_string())
    }

    /// No message names a Rust type, a serde term or a position.
    fn clean(msg: &str) {
        for internal in [
            " u32", " u64", " f64", "struct ", "sequence", " map", "line ", "column ", "Option",
            "Vec", "enum ",
        ] {
            assert!(!msg.contains(internal), "{msg:?} leaks {internal:?}");
        }
    }

    #[test]
    fn shape_errors_name_the_field_and_what_it_holds() {
        let cases = [
            (
                r#"{"version": 1048577.0}"#,
                "version: got the number 1048577.0, expected a whole number from 0 to 4294967295",
            ),
            (
                r#"{"version": -1}"#,
                "version: got the number -1, expected a whole number from 0 to 4294967295",
            ),
            (
                r#"{"version": "3"}"#,
                "version: got a string, expected a whole number from 0 to 4294967295",
            ),
            (
                r#"{"rows": [[1, "x"]]}"#,
                "rows[0][1]: got a string, expected a number",
            ),
            (r#"{"rows": {}}"#, "rows: got an object, expected an array"),
            (r#"{"name": 5}"#, "name: got the number 5, expected"),
            (r#"{"flag": 1}"#, "flag: got the number 1, expected"),
            (
                r#"{"kind": "sometimes"}"#,
                "kind: unknown variant `sometimes`",
            ),
            (
                r#"{"inner": []}"#,
                "inner: got an array, expected an object",
            ),
            (r#"{"inner": {}}"#, "inner: missing field `columns`"),
            (r#"{"other": 1}"#, "unknown field `other`"),
            (r#"[]"#, "got an array, expected an object"),
        ];
        for (body, want) in cases {
            let (code, msg) = message(body);
            assert_eq!(code, "invalid_input", "{body}");
            assert!(
                msg.starts_with(want),
                "{body}: {msg:?} should start {want:?}"
            );
            clean(&msg);
        }
    }

    #[test]
    fn syntax_errors_are_malformed_without_a_position() {
        for body in ["{", "", r#"{"rows": [[1e400]]}"#, "{]"] {
            let (code, msg) = message(body);
            assert_eq!(code, "malformed_json", "{body}");
            assert!(msg.starts_with("request body is not valid JSON"), "{msg}");
            clean(&msg);
        }
    }

    #[test]
    fn nulls_fill_optional_fields() {
        let t: T = parse(br#"{"version": null, "rows": null, "kind": null}"#).unwrap();
        assert!(t.version.is_none() && t.rows.is_none() && t.kind.is_none());
    }

    #[test]
    fn a_part_parsed_alone_is_named_with_its_path() {
        let v = serde_json::json!({"columns": [1]});
        let e = from_value::<Inner>("data", v).unwrap_err();
        assert_eq!(
            e.to_string(),
            "data.columns[0]: got the number 1, expected a string"
        );
    }
}
