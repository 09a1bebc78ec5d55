//! Whole numbers as JSON Schema counts them: `3` and `3.0` alike.
//!
//! The document types these fields `integer`, and JSON Schema's integer is
//! any number without a fractional part, so `{"version": 3.0}` is valid by
//! the document. serde's integer visitors refuse every float; these
//! `deserialize_with` helpers take one that is whole and in range, and
//! refuse the rest with serde's own error, which [`crate::json_error`] puts
//! in the document's words. A leaf: it imports nothing from the crate.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, Unexpected, Visitor};

/// An integer type a field may hold, and how a message names its range.
pub(crate) trait Int: TryFrom<i128> {
    const EXPECTED: &'static str;
}

impl Int for u32 {
    const EXPECTED: &'static str = "a whole number from 0 to 4294967295";
}

impl Int for i64 {
    const EXPECTED: &'static str = "a whole number";
}

/// One whole number (see the module docs).
pub(crate) struct Whole<T>(pub(crate) T);

impl<'de, T: Int> Deserialize<'de> for Whole<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<T: Int> V<T> {
            fn fit<E: de::Error>(&self, v: i128, found: Unexpected<'_>) -> Result<Whole<T>, E> {
                T::try_from(v)
                    .map(Whole)
                    .map_err(|_| E::invalid_value(found, self))
            }
        }
        impl<T: Int> Visitor<'_> for V<T> {
            type Value = Whole<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(T::EXPECTED)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Whole<T>, E> {
                self.fit(i128::from(v), Unexpected::Unsigned(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Whole<T>, E> {
                self.fit(i128::from(v), Unexpected::Signed(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Whole<T>, E> {
                // Exactly representable and whole: below 2^63 every f64
                // with no fraction converts without loss.
                if v.fract() == 0.0 && v.abs() < 9.2e18 {
                    #[allow(clippy::cast_possible_truncation)]
                    self.fit(v as i128, Unexpected::Float(v))
                } else {
                    Err(E::invalid_value(Unexpected::Float(v), &self))
                }
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// `#[serde(deserialize_with = "whole::one")]`
pub(crate) fn one<'de, D: Deserializer<'de>, T: Int>(d: D) -> Result<T, D::Error> {
    Whole::deserialize(d).map(|w| w.0)
}

/// `#[serde(default, deserialize_with = "whole::option")]`: `null` is `None`.
pub(crate) fn option<'de, D: Deserializer<'de>, T: Int>(d: D) -> Result<Option<T>, D::Error> {
    Option::<Whole<T>>::deserialize(d).map(|o| o.map(|w| w.0))
}

/// `#[serde(deserialize_with = "whole::many")]`
pub(crate) fn many<'de, D: Deserializer<'de>, T: Int>(d: D) -> Result<Vec<T>, D::Error> {
    Vec::<Whole<T>>::deserialize(d).map(|v| v.into_iter().map(|w| w.0).collect())
}

/// The same rule for a part parsed from a `serde_json::Value` by a type of
/// another crate (the trainer's `TrainParams`): every whole float in `v`
/// becomes an integer. Harmless for float fields, which take integers.
pub(crate) fn normalize(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Number(n) => {
            if let Some(f) = n
                .as_f64()
                .filter(|f| n.is_f64() && f.fract() == 0.0 && f.abs() < 9.2e18)
            {
                #[allow(clippy::cast_possible_truncation)]
                let i = f as i64;
                *v = serde_json::Value::from(i);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(normalize),
        serde_json::Value::Object(fields) => fields.values_mut().for_each(normalize),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Deserialize, Debug, PartialEq)]
    struct T {
        #[serde(deserialize_with = "super::one")]
        version: u32,
        #[serde(default, deserialize_with = "super::option")]
        pinned: Option<u32>,
        #[serde(default, deserialize_with = "super::many")]
        shape: Vec<i64>,
    }

    fn parse(s: &str) -> Result<T, String> {
        crate::json_error::parse::<T>(s.as_bytes()).map_err(|e| e.to_string())
    }

    #[test]
    fn a_parsed_value_gets_the_same_rule() {
        let mut v = serde_json::json!({"epochs": 50.0, "lr": 0.5, "seed": [2.0], "name": "x"});
        super::normalize(&mut v);
        assert_eq!(
            v,
            serde_json::json!({"epochs": 50, "lr": 0.5, "seed": [2], "name": "x"})
        );
        assert!(v["epochs"].is_u64());
    }

    #[test]
    fn whole_floats_are_integers_and_the_rest_are_refused() {
        let t = parse(r#"{"version": 3.0, "pinned": 2, "shape": [1.0, -1, 128]}"#).unwrap();
        assert_eq!(
            t,
            T {
                version: 3,
                pinned: Some(2),
                shape: vec![1, -1, 128]
            }
        );
        assert_eq!(
            parse(r#"{"version": 1048577.0}"#).unwrap().version,
            1_048_577
        );
        assert_eq!(
            parse(r#"{"version": 1, "pinned": null}"#).unwrap().pinned,
            None
        );
        for (body, want) in [
            (
                r#"{"version": 1.5}"#,
                "version: got the number 1.5, expected a whole number from 0 to 4294967295",
            ),
            (
                r#"{"version": -1}"#,
                "version: got the number -1, expected a whole number from 0 to 4294967295",
            ),
            (
                r#"{"version": 4294967296}"#,
                "version: got the number 4294967296, expected a whole number from 0 to 4294967295",
            ),
            (
                r#"{"version": 1e30}"#,
                "version: got the number 1e+30, expected a whole number from 0 to 4294967295",
            ),
            (
                r#"{"version": "3"}"#,
                "version: got a string, expected a whole number",
            ),
            (
                r#"{"version": 1, "shape": [0.5]}"#,
                "shape[0]: got the number 0.5, expected a whole number",
            ),
        ] {
            let msg = parse(body).unwrap_err();
            assert!(msg.starts_with(want), "{body}: {msg}");
        }
    }
}
