//! Numeric tensor data on the queue: one MessagePack `bin` of the elements'
//! little-endian bytes, instead of one MessagePack number per element.
//!
//! serde writes a `Vec<f32>` element by element, and reads it back the same
//! way: for a 128-float row that was a third of a worker's instructions per
//! job (rmp-serde's decode) and a tenth of the API's (its encode). A `bin`
//! is one length and one copy each way.
//!
//! Reading accepts both forms, so entries queued by an older API (a
//! MessagePack array of numbers) still run after an upgrade. A `bin` whose
//! length is not a whole number of elements is refused as corrupt.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serializer};

/// A fixed-size number with a little-endian byte form.
pub trait Element: Sized + Copy + for<'de> Deserialize<'de> {
    const SIZE: usize;
    const NAME: &'static str;
    fn put(self, out: &mut Vec<u8>);
    /// `bytes` is exactly [`Element::SIZE`] long.
    fn take(bytes: &[u8]) -> Self;
}

macro_rules! element {
    ($t:ty) => {
        impl Element for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            const NAME: &'static str = stringify!($t);
            fn put(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn take(bytes: &[u8]) -> Self {
                let mut a = [0u8; std::mem::size_of::<$t>()];
                a.copy_from_slice(bytes);
                <$t>::from_le_bytes(a)
            }
        }
    };
}
element!(f32);
element!(f64);
element!(i32);
element!(i64);

/// For `#[serde(with = "crate::packed")]`.
pub fn serialize<T: Element, S: Serializer>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
    let mut out = Vec::with_capacity(v.len() * T::SIZE);
    for &x in v {
        x.put(&mut out);
    }
    s.serialize_bytes(&out)
}

/// For `#[serde(with = "crate::packed")]`: a `bin`, or (the old form) an
/// array of numbers.
pub fn deserialize<'de, T: Element, D: Deserializer<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    d.deserialize_any(Packed(PhantomData))
}

struct Packed<T>(PhantomData<T>);

impl<'de, T: Element> Visitor<'de> for Packed<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "packed {} elements or an array of them", T::NAME)
    }

    fn visit_bytes<E: de::Error>(self, b: &[u8]) -> Result<Vec<T>, E> {
        if !b.len().is_multiple_of(T::SIZE) {
            return Err(E::invalid_length(b.len(), &self));
        }
        Ok(b.chunks_exact(T::SIZE).map(T::take).collect())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        // The hint comes from the input: cap what it may reserve.
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(x) = seq.next_element()? {
            out.push(x);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Packed {
        #[serde(with = "super")]
        f: Vec<f32>,
        #[serde(with = "super")]
        i: Vec<i64>,
    }

    #[derive(Serialize)]
    struct Plain {
        f: Vec<f32>,
        i: Vec<i64>,
    }

    #[test]
    fn round_trips_bit_for_bit_as_one_bin() {
        let v = Packed {
            f: vec![0.1, -0.0, f32::MIN_POSITIVE, f32::MAX, f32::NAN],
            i: vec![i64::MIN, -1, 0, i64::MAX],
        };
        let bytes = rmp_serde::to_vec_named(&v).unwrap();
        // fixmap, "f", bin8 of 5 x 4 bytes.
        assert_eq!(&bytes[..5], &[0x82, 0xa1, b'f', 0xc4, 20]);
        let back: Packed = rmp_serde::from_slice(&bytes).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back.f), bits(&v.f));
        assert_eq!(back.i, v.i);
    }

    #[test]
    fn reads_the_old_array_form() {
        let old = Plain {
            f: vec![1.5, -2.0],
            i: vec![7, -8],
        };
        let back: Packed = rmp_serde::from_slice(&rmp_serde::to_vec_named(&old).unwrap()).unwrap();
        assert_eq!(
            back,
            Packed {
                f: vec![1.5, -2.0],
                i: vec![7, -8]
            }
        );
    }

    #[test]
    fn a_bin_of_partial_elements_is_refused() {
        #[derive(Serialize)]
        struct Raw<'a> {
            #[serde(with = "serde_bytes_like")]
            f: &'a [u8],
            i: Vec<i64>,
        }
        mod serde_bytes_like {
            pub(super) fn serialize<S: serde::Serializer>(
                b: &[u8],
                s: S,
            ) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(b)
            }
        }
        let bytes = rmp_serde::to_vec_named(&Raw {
            f: &[0, 0, 128],
            i: vec![],
        })
        .unwrap();
        let err = rmp_serde::from_slice::<Packed>(&bytes).unwrap_err();
        assert!(err.to_string().contains("packed f32"), "{err}");
    }
}
