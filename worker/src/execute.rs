//! Executing one job: decoded envelope → model → result JSON or a
//! [`JobFailure`]. Synchronous and CPU-bound; the consumer calls it on a
//! blocking thread.

use serde::Serialize;
use shared::queue::wire::JobEnvelope;
use shared::tensor::{OipTensor, Tensor};

use crate::backend::Models;
use crate::error::JobFailure;

/// A successful run: the model version it ran on and the result as the JSON
/// text stored in the job record.
#[derive(Debug, Clone, PartialEq)]
pub struct Success {
    pub model_version: String,
    pub result_json: String,
}

/// Runs one predict job. Inputs are re-checked against the loaded model's
/// signature: the API validated them against the published one, and a model
/// file may have changed between the two.
pub fn run(models: &Models, job: &JobEnvelope) -> Result<Success, JobFailure> {
    let model = models
        .get(&job.model)
        .ok_or_else(|| JobFailure::ModelUnavailable(job.model.clone()))?;
    let info = model.info();
    info.check_inputs(&job.inputs)
        .map_err(JobFailure::InvalidInput)?;
    let outputs = model.run(&job.inputs)?;
    for t in &outputs {
        if let Some(index) = t.data.first_non_finite() {
            return Err(JobFailure::NonFiniteOutput {
                output: t.name.clone(),
                index,
            });
        }
    }
    Ok(Success {
        model_version: info.version.clone(),
        result_json: result_json(&outputs),
    })
}

#[derive(Serialize)]
struct ResultBody<'a> {
    outputs: Vec<OipTensor<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prediction: Option<serde_json::Number>,
}

/// `{"outputs": [...], "prediction": n}`; `prediction` only when the first
/// output holds exactly one number.
pub fn result_json(outputs: &[Tensor]) -> String {
    let body = ResultBody {
        outputs: outputs.iter().map(OipTensor).collect(),
        prediction: outputs.first().and_then(|t| t.data.single_number()),
    };
    // Serialising plain vectors and numbers cannot fail (floats are finite,
    // checked by the caller).
    serde_json::to_string(&body).unwrap_or_else(|_| String::from("null"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::tensor::TensorData;

    #[test]
    fn result_has_prediction_only_for_a_single_value_first_output() {
        let one = Tensor {
            name: "p".into(),
            shape: vec![1, 1],
            data: TensorData::Fp32(vec![0.25]),
        };
        let two = Tensor {
            name: "q".into(),
            shape: vec![1, 2],
            data: TensorData::Int64(vec![1, 2]),
        };
        assert_eq!(
            result_json(std::slice::from_ref(&one)),
            r#"{"outputs":[{"name":"p","shape":[1,1],"datatype":"FP32","data":[0.25]}],"prediction":0.25}"#
        );
        let json = result_json(&[two, one]);
        assert!(!json.contains("prediction"), "{json}");
    }
}
