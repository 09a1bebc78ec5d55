//! Tensors as they travel between the HTTP API, the queue and ONNX Runtime.
//!
//! A [`Tensor`] is a name, a shape and flat row-major data of one of the
//! [`DataType`]s the system supports (the Open Inference Protocol's FP32, FP64,
//! INT32, INT64 and BOOL). Its serde form is the compact one used on the queue
//! (MessagePack, numbers packed as bytes by [`crate::packed`]); [`OipTensor`]
//! renders the JSON form clients see:
//! `{"name", "shape", "datatype", "data"}`.

use serde::{Deserialize, Serialize, Serializer, ser::SerializeStruct};

/// Element types the system accepts and returns, named as in the Open Inference
/// Protocol (KServe V2).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DataType {
    #[serde(rename = "FP32")]
    Fp32,
    #[serde(rename = "FP64")]
    Fp64,
    #[serde(rename = "INT32")]
    Int32,
    #[serde(rename = "INT64")]
    Int64,
    #[serde(rename = "BOOL")]
    Bool,
}

impl DataType {
    pub const ALL: [DataType; 5] = [
        DataType::Fp32,
        DataType::Fp64,
        DataType::Int32,
        DataType::Int64,
        DataType::Bool,
    ];

    /// The protocol name, e.g. `FP32`.
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Bool => "BOOL",
        }
    }

    /// Parses a protocol name; case-sensitive as the protocol specifies.
    pub fn parse(s: &str) -> Option<DataType> {
        DataType::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

impl std::fmt::Display for DataType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Flat, row-major tensor contents, typed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TensorData {
    #[serde(with = "crate::packed")]
    Fp32(Vec<f32>),
    #[serde(with = "crate::packed")]
    Fp64(Vec<f64>),
    #[serde(with = "crate::packed")]
    Int32(Vec<i32>),
    #[serde(with = "crate::packed")]
    Int64(Vec<i64>),
    Bool(Vec<bool>),
}

impl TensorData {
    pub fn datatype(&self) -> DataType {
        match self {
            TensorData::Fp32(_) => DataType::Fp32,
            TensorData::Fp64(_) => DataType::Fp64,
            TensorData::Int32(_) => DataType::Int32,
            TensorData::Int64(_) => DataType::Int64,
            TensorData::Bool(_) => DataType::Bool,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            TensorData::Fp32(v) => v.len(),
            TensorData::Fp64(v) => v.len(),
            TensorData::Int32(v) => v.len(),
            TensorData::Int64(v) => v.len(),
            TensorData::Bool(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Joins same-typed data end to end (stacking along the first dimension
    /// of row-major tensors); `None` when the datatypes differ.
    pub fn concat<'a>(parts: impl IntoIterator<Item = &'a TensorData>) -> Option<TensorData> {
        let mut parts = parts.into_iter();
        let mut out = parts.next()?.clone();
        for p in parts {
            match (&mut out, p) {
                (TensorData::Fp32(a), TensorData::Fp32(b)) => a.extend_from_slice(b),
                (TensorData::Fp64(a), TensorData::Fp64(b)) => a.extend_from_slice(b),
                (TensorData::Int32(a), TensorData::Int32(b)) => a.extend_from_slice(b),
                (TensorData::Int64(a), TensorData::Int64(b)) => a.extend_from_slice(b),
                (TensorData::Bool(a), TensorData::Bool(b)) => a.extend_from_slice(b),
                _ => return None,
            }
        }
        Some(out)
    }

    /// Elements `start..end` (clamped to the data).
    pub fn slice(&self, start: usize, end: usize) -> TensorData {
        fn cut<T: Clone>(v: &[T], start: usize, end: usize) -> Vec<T> {
            let end = end.min(v.len());
            v[start.min(end)..end].to_vec()
        }
        match self {
            TensorData::Fp32(v) => TensorData::Fp32(cut(v, start, end)),
            TensorData::Fp64(v) => TensorData::Fp64(cut(v, start, end)),
            TensorData::Int32(v) => TensorData::Int32(cut(v, start, end)),
            TensorData::Int64(v) => TensorData::Int64(cut(v, start, end)),
            TensorData::Bool(v) => TensorData::Bool(cut(v, start, end)),
        }
    }

    /// Index of the first NaN or infinity, if any. Integer and boolean data
    /// are always finite.
    pub fn first_non_finite(&self) -> Option<usize> {
        match self {
            TensorData::Fp32(v) => v.iter().position(|x| !x.is_finite()),
            TensorData::Fp64(v) => v.iter().position(|x| !x.is_finite()),
            _ => None,
        }
    }

    /// The value as a JSON-friendly number when the tensor holds exactly one
    /// numeric element (booleans are not numbers).
    pub fn single_number(&self) -> Option<serde_json::Number> {
        if self.len() != 1 {
            return None;
        }
        match self {
            // Through the f32's shortest decimal form, so 0.73f32 reads 0.73
            // like the same value in `outputs`, not 0.7300000190734863.
            TensorData::Fp32(v) => serde_json::Number::from_f64(v[0].to_string().parse().ok()?),
            TensorData::Fp64(v) => serde_json::Number::from_f64(v[0]),
            TensorData::Int32(v) => Some(v[0].into()),
            TensorData::Int64(v) => Some(v[0].into()),
            TensorData::Bool(_) => None,
        }
    }
}

/// A named tensor: the unit of model input and output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub data: TensorData,
}

impl Tensor {
    /// Number of elements the shape describes (0 for a negative dimension).
    pub fn shape_elements(shape: &[i64]) -> Option<usize> {
        shape.iter().try_fold(1usize, |acc, &d| {
            usize::try_from(d).ok().and_then(|d| acc.checked_mul(d))
        })
    }
}

/// Borrowing view that serialises a [`Tensor`] in the Open Inference Protocol
/// JSON form. Floats go through serde_json's shortest round-trip formatting, so
/// an FP32 value read back as f32 is bit-identical.
pub struct OipTensor<'a>(pub &'a Tensor);

impl Serialize for OipTensor<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let t = self.0;
        let mut s = serializer.serialize_struct("Tensor", 4)?;
        s.serialize_field("name", &t.name)?;
        s.serialize_field("shape", &t.shape)?;
        s.serialize_field("datatype", t.data.datatype().as_str())?;
        match &t.data {
            TensorData::Fp32(v) => s.serialize_field("data", v)?,
            TensorData::Fp64(v) => s.serialize_field("data", v)?,
            TensorData::Int32(v) => s.serialize_field("data", v)?,
            TensorData::Int64(v) => s.serialize_field("data", v)?,
            TensorData::Bool(v) => s.serialize_field("data", v)?,
        }
        s.end()
    }
}

/// Declared input or output of a model. A dimension of `-1` is dynamic.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
}

impl TensorSpec {
    /// Whether a concrete `shape` fits this spec: same rank, fixed dimensions
    /// equal, dynamic dimensions any non-negative size.
    pub fn accepts_shape(&self, shape: &[i64]) -> bool {
        shape.len() == self.shape.len()
            && shape
                .iter()
                .zip(&self.shape)
                .all(|(&got, &want)| got >= 0 && (want < 0 || got == want))
    }

    /// The shape as text for error messages, dynamic dimensions shown as `N`.
    pub fn shape_text(&self) -> String {
        let dims: Vec<String> = self
            .shape
            .iter()
            .map(|&d| if d < 0 { "N".to_owned() } else { d.to_string() })
            .collect();
        format!("[{}]", dims.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datatype_names_round_trip() {
        for d in DataType::ALL {
            assert_eq!(DataType::parse(d.as_str()), Some(d));
            let json = serde_json::to_string(&d).unwrap();
            assert_eq!(json, format!("\"{}\"", d.as_str()));
        }
        assert_eq!(DataType::parse("fp32"), None);
        assert_eq!(DataType::parse("STRING"), None);
    }

    #[test]
    fn spec_accepts_dynamic_batch_and_rejects_wrong_width() {
        let spec = TensorSpec {
            name: "features".into(),
            datatype: DataType::Fp32,
            shape: vec![-1, 128],
        };
        assert!(spec.accepts_shape(&[1, 128]));
        assert!(spec.accepts_shape(&[7, 128]));
        assert!(!spec.accepts_shape(&[1, 127]));
        assert!(!spec.accepts_shape(&[128]));
        assert!(!spec.accepts_shape(&[-1, 128]));
        assert_eq!(spec.shape_text(), "[N, 128]");
    }

    #[test]
    fn shape_elements_guards_overflow_and_negatives() {
        assert_eq!(Tensor::shape_elements(&[2, 3]), Some(6));
        assert_eq!(Tensor::shape_elements(&[]), Some(1));
        assert_eq!(Tensor::shape_elements(&[-1, 3]), None);
        assert_eq!(Tensor::shape_elements(&[i64::MAX, i64::MAX]), None);
    }

    #[test]
    fn oip_json_form_names_datatype_and_keeps_f32_exact() {
        let t = Tensor {
            name: "y".into(),
            shape: vec![1, 2],
            data: TensorData::Fp32(vec![0.1, 1.0e-7]),
        };
        let json = serde_json::to_string(&OipTensor(&t)).unwrap();
        assert_eq!(
            json,
            r#"{"name":"y","shape":[1,2],"datatype":"FP32","data":[0.1,1e-7]}"#
        );
        let back: Vec<f32> = serde_json::from_str("[0.1,1e-7]").unwrap();
        assert_eq!(back, vec![0.1f32, 1.0e-7]);
    }

    #[test]
    fn concat_and_slice_are_inverse_and_type_checked() {
        let a = TensorData::Int64(vec![1, 2]);
        let b = TensorData::Int64(vec![3]);
        let ab = TensorData::concat([&a, &b]).unwrap();
        assert_eq!(ab, TensorData::Int64(vec![1, 2, 3]));
        assert_eq!(ab.slice(0, 2), a);
        assert_eq!(ab.slice(2, 3), b);
        assert_eq!(ab.slice(2, 99), b);
        assert_eq!(TensorData::concat([&a, &TensorData::Fp32(vec![1.0])]), None);
        assert_eq!(TensorData::concat([]), None);
    }

    #[test]
    fn single_number_only_for_one_numeric_element() {
        assert_eq!(
            TensorData::Fp32(vec![0.73])
                .single_number()
                .map(|n| n.to_string()),
            Some("0.73".to_owned())
        );
        assert_eq!(
            TensorData::Int64(vec![1]).single_number(),
            Some(serde_json::Number::from(1))
        );
        assert!(TensorData::Fp32(vec![0.5, 0.5]).single_number().is_none());
        assert!(TensorData::Bool(vec![true]).single_number().is_none());
    }
}
