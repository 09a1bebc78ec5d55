//! What a worker publishes about a model it serves, and what the API validates
//! requests against: name, version and input/output signature.

use serde::{Deserialize, Serialize};

use crate::tensor::{DataType, Tensor, TensorSpec};

/// A served model's public description. Workers write it to Redis when they
/// load the model; the API never loads ONNX Runtime and relies on this alone.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    /// The version served, as text: its registry version number (`"3"`),
    /// what jobs record as `model_version`. Only a models-dir file served
    /// before the worker could read the registry is labelled by content
    /// (the first 16 hex digits of its SHA-256) until then.
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

impl ModelInfo {
    /// Checks tensors against the input signature: every input present once
    /// by name, nothing extra, the declared datatype, an accepted shape and a
    /// data length equal to the shape's element count. The message names what
    /// was expected.
    pub fn check_inputs(&self, inputs: &[Tensor]) -> Result<(), String> {
        for t in inputs {
            let Some(spec) = self.inputs.iter().find(|s| s.name == t.name) else {
                return Err(format!(
                    "model {} has no input named {:?}; its inputs are {}",
                    public_name(&self.name),
                    t.name,
                    self.input_names()
                ));
            };
            if inputs.iter().filter(|o| o.name == t.name).count() > 1 {
                return Err(format!("input {} is given more than once", t.name));
            }
            if t.data.datatype() != spec.datatype {
                return Err(format!(
                    "input {} expects datatype {}, got {}",
                    t.name,
                    spec.datatype,
                    t.data.datatype()
                ));
            }
            if !spec.accepts_shape(&t.shape) {
                return Err(format!(
                    "input {} expects shape {}, got {:?}",
                    t.name,
                    spec.shape_text(),
                    t.shape
                ));
            }
            if Tensor::shape_elements(&t.shape) != Some(t.data.len()) {
                return Err(format!(
                    "input {} has shape {:?} ({} elements) but {} data values",
                    t.name,
                    t.shape,
                    Tensor::shape_elements(&t.shape).unwrap_or(0),
                    t.data.len()
                ));
            }
        }
        if let Some(missing) = self
            .inputs
            .iter()
            .find(|s| !inputs.iter().any(|t| t.name == s.name))
        {
            return Err(format!(
                "missing input {} ({} {})",
                missing.name,
                missing.datatype,
                missing.shape_text()
            ));
        }
        Ok(())
    }

    fn input_names(&self) -> String {
        self.inputs
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Longest model or dataset name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// [`valid_model_name`] as a JSON Schema `pattern` (with [`MAX_NAME_LEN`] as
/// `maxLength`), for the OpenAPI document.
pub const NAME_PATTERN: &str = "^[A-Za-z0-9_-][A-Za-z0-9_.-]*$";

/// Whether a model name is safe to use in keys and URLs.
pub fn valid_model_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && !name.starts_with('.')
}

/// Separates the tenant from the model in an internal model name,
/// `{tenant}~{model}`. It is not allowed in public model names, so no public
/// name can reach another tenant's model.
pub const TENANT_SEPARATOR: char = '~';

/// The tenant of an open (keyless) deployment, whose models keep their
/// plain names.
pub const DEFAULT_TENANT: &str = "default";

/// A tenant-qualified name of a model or dataset: how Redis and the
/// workers know it. Written (`Display`) as `{tenant}~{name}`, except the
/// default tenant's names, written plainly so an open deployment's models
/// keep the names they have on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Qualified<'a> {
    pub tenant: &'a str,
    /// The name as its tenant knows it (the public name).
    pub name: &'a str,
}

impl<'a> Qualified<'a> {
    pub fn new(tenant: &'a str, name: &'a str) -> Qualified<'a> {
        Qualified { tenant, name }
    }

    /// Splits an internal name at its first [`TENANT_SEPARATOR`]; a name
    /// without one is the default tenant's.
    pub fn parse(internal: &'a str) -> Qualified<'a> {
        match internal.split_once(TENANT_SEPARATOR) {
            Some((tenant, name)) => Qualified { tenant, name },
            None => Qualified {
                tenant: DEFAULT_TENANT,
                name: internal,
            },
        }
    }

    /// [`Qualified::parse`], only for a name written as `Display` writes
    /// it: `default~m` splits into the default tenant's `m`, but the
    /// default tenant's names carry no prefix, so no tenant owns it.
    pub fn parse_exact(internal: &'a str) -> Option<Qualified<'a>> {
        let q = Qualified::parse(internal);
        (q.is_default() != internal.contains(TENANT_SEPARATOR)).then_some(q)
    }

    pub fn is_default(&self) -> bool {
        self.tenant == DEFAULT_TENANT
    }
}

impl std::fmt::Display for Qualified<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_default() {
            f.write_str(self.name)
        } else {
            write!(f, "{}{TENANT_SEPARATOR}{}", self.tenant, self.name)
        }
    }
}

/// The tenant an internal model (or dataset) name belongs to.
pub fn tenant_of(internal: &str) -> &str {
    Qualified::parse(internal).tenant
}

/// An internal name as its tenant knows it: the part after `{tenant}~`.
pub fn public_name(internal: &str) -> &str {
    Qualified::parse(internal).name
}

/// Tenant names end up inside model names and Redis keys: 1-32 of `a-z`,
/// `0-9`, `_` and `-`, starting with a letter or digit.
pub fn valid_tenant_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && name.as_bytes()[0].is_ascii_alphanumeric()
}

/// A model name as Redis and the workers know it: a public name (the
/// default tenant's model) or `{tenant}~{public name}`.
pub fn valid_internal_model_name(name: &str) -> bool {
    match name.split_once(TENANT_SEPARATOR) {
        None => valid_model_name(name),
        Some((tenant, model)) => valid_tenant_name(tenant) && valid_model_name(model),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_names_split_into_tenant_and_public_name() {
        assert_eq!(tenant_of("acme~m"), "acme");
        assert_eq!(tenant_of("m"), DEFAULT_TENANT);
        assert_eq!(public_name("acme~m"), "m");
        assert_eq!(public_name("m"), "m");
    }

    #[test]
    fn qualified_names_round_trip_byte_for_byte() {
        for internal in ["acme~m", "m", "acme~", "a-1~x.y_z"] {
            let q = Qualified::parse_exact(internal).unwrap();
            assert_eq!(q.to_string(), internal);
            assert_eq!(Qualified::parse(internal), q);
        }
        assert_eq!(Qualified::new("acme", "m").to_string(), "acme~m");
        assert_eq!(Qualified::new(DEFAULT_TENANT, "m").to_string(), "m");
        // Split at the first separator, as the tenant's part never holds one.
        assert_eq!(Qualified::parse("acme~m~n"), Qualified::new("acme", "m~n"));
        // Splits like the default tenant's `m`, but that is never written so.
        assert_eq!(
            Qualified::parse("default~m"),
            Qualified::new(DEFAULT_TENANT, "m")
        );
        assert_eq!(Qualified::parse_exact("default~m"), None);
    }

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
    fn check_inputs_names_what_was_expected() {
        use crate::tensor::TensorData;
        let m = info(vec![
            spec("x", DataType::Fp32, &[-1, 4]),
            spec("k", DataType::Int64, &[-1, 1]),
        ]);
        let x = |shape: &[i64], n: usize| Tensor {
            name: "x".into(),
            shape: shape.to_vec(),
            data: TensorData::Fp32(vec![0.0; n]),
        };
        let k = Tensor {
            name: "k".into(),
            shape: vec![1, 1],
            data: TensorData::Int64(vec![3]),
        };
        assert_eq!(m.check_inputs(&[x(&[1, 4], 4), k.clone()]), Ok(()));
        assert_eq!(m.check_inputs(&[x(&[2, 4], 8), k.clone()]), Ok(()));
        let err = m.check_inputs(&[x(&[1, 4], 4)]).unwrap_err();
        assert!(err.contains("missing input k"), "{err}");
        let err = m.check_inputs(&[x(&[1, 3], 3), k.clone()]).unwrap_err();
        assert!(err.contains("[N, 4]"), "{err}");
        let err = m.check_inputs(&[x(&[1, 4], 5), k.clone()]).unwrap_err();
        assert!(err.contains("5 data values"), "{err}");
        let wrong_type = Tensor {
            data: TensorData::Int32(vec![3]),
            ..k.clone()
        };
        let err = m.check_inputs(&[x(&[1, 4], 4), wrong_type]).unwrap_err();
        assert!(err.contains("expects datatype INT64, got INT32"), "{err}");
        let extra = Tensor {
            name: "z".into(),
            ..k.clone()
        };
        let err = m
            .check_inputs(&[x(&[1, 4], 4), k.clone(), extra])
            .unwrap_err();
        assert!(err.contains("no input named \"z\""), "{err}");
        let err = m.check_inputs(&[x(&[1, 4], 4), k.clone(), k]).unwrap_err();
        assert!(err.contains("more than once"), "{err}");
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
        assert!(!valid_model_name("acme~m"));
        assert!(valid_internal_model_name("acme~m"));
        assert!(valid_internal_model_name("m"));
        assert!(!valid_internal_model_name("Acme~m"));
        assert!(!valid_internal_model_name("acme~m~n"));
        assert!(!valid_internal_model_name("~m"));
    }
}
