//! Models behind a trait. [`Backend`] is what the executor needs from a model:
//! its published signature and a synchronous, CPU-bound `run`. [`OnnxModel`]
//! implements it with ONNX Runtime; callers must keep `run` off the async
//! executor. Which versions are loaded is [`crate::models`]' business.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{RunOptions, Session, SessionInputValue};
use ort::value::{DynValue, TensorElementType, TensorRef, ValueType};
use shared::model::ModelInfo;
use shared::tensor::{DataType, Tensor, TensorData, TensorSpec};

use crate::error::JobFailure;
use crate::watchdog::{self, CancelFlag, Stopped, Watchdog};

/// A servable model.
pub trait Backend: Send + Sync {
    fn info(&self) -> &ModelInfo;
    /// Runs the model on inputs already checked against [`Backend::info`],
    /// returning the outputs in signature order, within the process's
    /// [`RunLimits`](crate::watchdog::RunLimits) and `ctl`.
    fn run(&self, inputs: &[Tensor], ctl: &RunControl<'_>) -> Result<Vec<Tensor>, JobFailure>;
}

/// What a run answers to besides the process's limits: the cancel flags of
/// the jobs it runs for, and how many jobs share it (the output budget is
/// per job).
#[derive(Debug, Clone, Copy)]
pub struct RunControl<'a> {
    pub cancels: &'a [CancelFlag],
    pub jobs: usize,
}

impl RunControl<'_> {
    /// A run for no job in particular (one job's budget, no cancel).
    pub const SOLO: RunControl<'static> = RunControl {
        cancels: &[],
        jobs: 1,
    };
}

/// The models one worker serves, by name.
pub type Models = HashMap<String, Arc<dyn Backend>>;

/// Whether a model's bytes come from the operator or from a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// A `--models-dir` file: full graph optimisation.
    Operator,
    /// An upload or a retrain output: optimised without constant folding,
    /// which would execute the graph's constant parts while loading (a
    /// 221-byte `ConstantOfShape → ReduceSum` allocates 1 GiB there).
    Tenant,
}

/// How sessions are built.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub trust: Trust,
    pub intra_threads: usize,
    /// An empty directory of the worker's own, given to ONNX Runtime as the
    /// base of external initializers: defence in depth behind the static
    /// check ([`crate::modelcheck`]), so a reference that got past it
    /// resolves to nothing rather than to the working directory.
    pub external_data_dir: std::path::PathBuf,
}

/// The graph optimisations skipped for [`Trust::Tenant`] models, as ONNX
/// Runtime's `optimization.disable_specified_optimizers` (';'-separated).
pub const UNTRUSTED_DISABLED_OPTIMIZERS: &str = "ConstantFolding";

/// An ONNX model in an ONNX Runtime session.
pub struct OnnxModel {
    info: ModelInfo,
    // `Session::run` takes `&mut self`; a mutex serialises runs of one model
    // while different models run in parallel.
    session: Mutex<Session>,
}

impl OnnxModel {
    /// Loads `bytes` as model `name`, labelled by content hash (so every
    /// worker loading the same file reports the same label) until
    /// [`OnnxModel::with_version`] gives it its registry number.
    /// Callers run the static checks ([`crate::modelcheck`]) first; the
    /// error is ONNX Runtime's, [`sanitize`]d.
    pub fn load(
        env: &Environment,
        name: &str,
        bytes: &[u8],
        opts: &LoadOptions,
    ) -> Result<OnnxModel, String> {
        let session = build_session(env, bytes, opts).map_err(|e| sanitize(&e.to_string()))?;
        let inputs = session
            .inputs()
            .iter()
            .map(|o| spec(o.name(), o.dtype()))
            .collect::<Result<Vec<_>, _>>()?;
        let outputs = session
            .outputs()
            .iter()
            .map(|o| spec(o.name(), o.dtype()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut version = shared::digest::sha256_hex(bytes);
        // The first 16 hex digits name a file's content well enough.
        version.truncate(16);
        Ok(OnnxModel {
            info: ModelInfo {
                name: name.to_owned(),
                version,
                inputs,
                outputs,
                updated_at_ms: shared::time::now_ms(),
            },
            session: Mutex::new(session),
        })
    }
}

impl OnnxModel {
    /// Labels the model with its registry version number (instead of its
    /// content hash): what jobs record as `model_version`.
    pub fn with_version(mut self, version: u32) -> OnnxModel {
        self.info.version = version.to_string();
        self
    }

    /// The session, for a validation's trial run.
    pub fn session(&self) -> &Mutex<Session> {
        &self.session
    }
}

// Builder errors are not Send/Sync; keep them inside an ort::Result.
// Always from memory: a model loaded from a path would resolve relative
// references against that path's directory.
fn build_session(env: &Environment, bytes: &[u8], opts: &LoadOptions) -> ort::Result<Session> {
    let mut builder = Session::builder(env)?
        .with_optimization_level(GraphOptimizationLevel::Level3)?
        .with_intra_threads(opts.intra_threads.max(1))?
        .with_config_entry(
            "session.model_external_initializers_file_folder_path",
            opts.external_data_dir.to_string_lossy(),
        )?;
    if opts.trust == Trust::Tenant {
        builder = builder.with_disabled_optimizers(UNTRUSTED_DISABLED_OPTIMIZERS)?;
    }
    builder.commit_from_memory(bytes)
}

/// ONNX Runtime's message made fit for a tenant: path-like tokens (which
/// could tell whether a file exists, and where the worker runs) and source
/// locations are replaced, and the text is clipped.
pub fn sanitize(message: &str) -> String {
    const MAX: usize = 300;
    let looks_internal = |w: &str| {
        w.contains('/')
            || w.contains('\\')
            || [".cc:", ".h:", ".cpp:"].iter().any(|s| w.contains(s))
    };
    let mut out = message
        .split_whitespace()
        .map(|w| if looks_internal(w) { "<path>" } else { w })
        .collect::<Vec<_>>()
        .join(" ");
    if let Some((i, _)) = out.char_indices().nth(MAX) {
        out.truncate(i);
        out.push('…');
    }
    out
}

fn spec(name: &str, ty: &ValueType) -> Result<TensorSpec, String> {
    match ty {
        ValueType::Tensor { ty, shape, .. } => Ok(TensorSpec {
            name: name.to_owned(),
            datatype: datatype(*ty).ok_or_else(|| format!("{name} has unsupported type {ty:?}"))?,
            shape: shape.to_vec(),
        }),
        other => Err(format!("{name} is not a tensor ({other:?})")),
    }
}

fn datatype(ty: TensorElementType) -> Option<DataType> {
    Some(match ty {
        TensorElementType::Float32 => DataType::Fp32,
        TensorElementType::Float64 => DataType::Fp64,
        TensorElementType::Int32 => DataType::Int32,
        TensorElementType::Int64 => DataType::Int64,
        TensorElementType::Bool => DataType::Bool,
        _ => return None,
    })
}

impl Backend for OnnxModel {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn run(&self, inputs: &[Tensor], ctl: &RunControl<'_>) -> Result<Vec<Tensor>, JobFailure> {
        let limits = watchdog::limits();
        let ort_err = |e: ort::Error| JobFailure::Inference(e.to_string());
        let values = inputs
            .iter()
            .map(|t| Ok((t.name.as_str(), input_value(t).map_err(ort_err)?)))
            .collect::<Result<Vec<(&str, SessionInputValue<'_>)>, JobFailure>>()?;
        let options = Arc::new(RunOptions::new().map_err(ort_err)?);
        // A panic while holding the lock leaves the session itself intact
        // (ORT state is not mid-update from Rust's view): keep serving.
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let started = std::time::Instant::now();
        // Watched from here: time spent waiting for the lock is not the
        // model's, and the limit is the run's.
        let watch =
            Watchdog::global().watch(Arc::clone(&options), limits.max_run, ctl.cancels.to_vec());
        let outputs = session.run_with_options(values, &options);
        let stopped = watch.stopped();
        drop(watch);
        // One sample per ONNX Runtime run, failed runs included: whether one
        // job ran or several were stacked, this is where the time goes.
        let model = self.info.name.clone();
        metrics::histogram!(shared::metric_names::WORKER_INFERENCE, "model" => model.clone())
            .record(started.elapsed().as_secs_f64());
        let rows = inputs
            .first()
            .and_then(|t| t.shape.first())
            .copied()
            .unwrap_or(1);
        metrics::histogram!(shared::metric_names::WORKER_INFERENCE_BATCH_ROWS, "model" => model)
            .record(rows as f64);
        let outputs = match (outputs, stopped) {
            (Ok(o), _) => o,
            (Err(_), Some(Stopped::TimedOut)) => {
                return Err(JobFailure::InferenceTimeout {
                    limit_ms: u64::try_from(limits.max_run.as_millis()).unwrap_or(u64::MAX),
                });
            }
            (Err(_), Some(Stopped::Canceled)) => return Err(JobFailure::Canceled),
            (Err(e), None) if crate::memlimit::is_allocation_failure(&e.to_string()) => {
                return Err(JobFailure::InferenceMemory);
            }
            (Err(e), None) => return Err(ort_err(e)),
        };
        let budget = limits.max_output_elements.saturating_mul(ctl.jobs.max(1));
        // Counted from the shapes before anything is copied out of ONNX
        // Runtime: a model that blows its output up is refused here, not
        // after a copy and a JSON encoding of it.
        let mut total = 0usize;
        for spec in &self.info.outputs {
            if let Some(value) = outputs.get(spec.name.as_str())
                && let ValueType::Tensor { shape, .. } = value.dtype()
            {
                let n = shape
                    .iter()
                    .try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?))
                    .unwrap_or(usize::MAX);
                total = total.saturating_add(n);
            }
        }
        if total > budget {
            return Err(JobFailure::ResultTooLarge(format!(
                "the outputs hold {total} elements; the limit is {} per job",
                limits.max_output_elements
            )));
        }
        self.info
            .outputs
            .iter()
            .map(|spec| {
                let value = outputs.get(spec.name.as_str()).ok_or_else(|| {
                    JobFailure::Inference(format!("output {} missing from the run", spec.name))
                })?;
                output_tensor(&spec.name, value)
            })
            .collect()
    }
}

fn input_value(t: &Tensor) -> ort::Result<SessionInputValue<'_>> {
    let shape = t.shape.clone();
    Ok(match &t.data {
        TensorData::Fp32(v) => TensorRef::from_array_view((shape, v.as_slice()))?.into(),
        TensorData::Fp64(v) => TensorRef::from_array_view((shape, v.as_slice()))?.into(),
        TensorData::Int32(v) => TensorRef::from_array_view((shape, v.as_slice()))?.into(),
        TensorData::Int64(v) => TensorRef::from_array_view((shape, v.as_slice()))?.into(),
        TensorData::Bool(v) => TensorRef::from_array_view((shape, v.as_slice()))?.into(),
    })
}

fn output_tensor(name: &str, value: &DynValue) -> Result<Tensor, JobFailure> {
    let unsupported = || JobFailure::UnsupportedOutput {
        output: name.to_owned(),
        ty: format!("{:?}", value.dtype()),
    };
    let ValueType::Tensor { ty, .. } = value.dtype() else {
        return Err(unsupported());
    };
    let err = |e: ort::Error| JobFailure::Inference(e.to_string());
    macro_rules! extract {
        ($t:ty, $variant:ident) => {{
            let (shape, data) = value.try_extract_tensor::<$t>().map_err(err)?;
            (shape.to_vec(), TensorData::$variant(data.to_vec()))
        }};
    }
    let (shape, data) = match ty {
        TensorElementType::Float32 => extract!(f32, Fp32),
        TensorElementType::Float64 => extract!(f64, Fp64),
        TensorElementType::Int32 => extract!(i32, Int32),
        TensorElementType::Int64 => extract!(i64, Int64),
        TensorElementType::Bool => extract!(bool, Bool),
        _ => return Err(unsupported()),
    };
    Ok(Tensor {
        name: name.to_owned(),
        shape,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::sanitize;

    #[test]
    fn onnx_runtime_messages_lose_paths_and_source_locations() {
        // As ONNX Runtime 1.31 words a missing external file.
        let raw = "External data path validation failed for initializer: w. Error: \
                   tensorprotoutils.cc:461 ValidateExternalDataPathFromDir External data path \
                   does not exist: \"/tmp/cache/no-external-data/etc/passwd\"";
        let clean = sanitize(raw);
        assert!(!clean.contains('/') && !clean.contains("passwd"), "{clean}");
        assert!(!clean.contains(".cc:"), "{clean}");
        assert!(
            clean.starts_with("External data path validation failed"),
            "{clean}"
        );
        let long = "x ".repeat(1000);
        assert!(sanitize(&long).chars().count() <= 301);
    }
}
