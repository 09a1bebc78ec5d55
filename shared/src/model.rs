//! What a worker publishes about a model it serves, and what the API validates
//! requests against: name, content version and input/output signature.

use serde::{Deserialize, Serialize};

use crate::tensor::{DataType, TensorSpec};

/// A served model's public description. Workers write it to Redis when they
/// load the model; the API never loads ONNX Runtime and relies on this alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    /// Content hash of the model file (first 16 hex digits of its SHA-256).
    pub version: String,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// When a worker last published this description (Unix ms).
    pub updated_at_ms: i64,
}

impl ModelInfo {
    /// The width `n` when the model takes exactly one 2-D FP32 input
    /// `[batch, n]` with a fixed `n`: the shape the `{"features": [...]}`
    /// shorthand fills.
    pub fn features_width(&self) -> Option<usize> {
        match self.inputs.as_slice() {
            [only] if only.datatype == DataType::Fp32 && only.shape.len() == 2 => {
                usize::try_from(only.shape[1]).ok().filter(|&n| n > 0)
            }
            _ => None,
        }
    }
}

/// Whether a model name is safe to use in keys and URLs.
pub fn valid_model_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && !name.starts_with('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(inputs: Vec<TensorSpec>) -> ModelInfo {
        ModelInfo {
            name: "m".into(),
            version: "v".into(),
            inputs,
            outputs: vec![],
            updated_at_ms: 0,
        }
    }

    fn spec(name: &str, datatype: DataType, shape: &[i64]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            datatype,
            shape: shape.to_vec(),
        }
    }

    #[test]
    fn features_width_needs_a_single_fixed_width_fp32_matrix() {
        assert_eq!(
            info(vec![spec("f", DataType::Fp32, &[-1, 128])]).features_width(),
            Some(128)
        );
        assert_eq!(
            info(vec![spec("f", DataType::Fp32, &[-1, -1])]).features_width(),
            None
        );
        assert_eq!(
            info(vec![spec("f", DataType::Int64, &[-1, 4])]).features_width(),
            None
        );
        assert_eq!(
            info(vec![
                spec("x", DataType::Fp32, &[-1, 4]),
                spec("k", DataType::Int64, &[-1, 1])
            ])
            .features_width(),
            None
        );
    }

    #[test]
    fn model_names_are_restricted_to_key_safe_characters() {
        assert!(valid_model_name("mlp128"));
        assert!(valid_model_name("breast_cancer-v2.1"));
        assert!(!valid_model_name(""));
        assert!(!valid_model_name("a:b"));
        assert!(!valid_model_name("a b"));
        assert!(!valid_model_name(".hidden"));
        assert!(!valid_model_name(&"x".repeat(129)));
    }
}
