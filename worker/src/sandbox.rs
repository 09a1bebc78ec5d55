//! Validating untrusted model bytes in a child process: what this module
//! owns is the boundary between the worker and a model that may be a bomb.
//!
//! The worker re-executes its own binary ([`std::env::current_exe`]) with
//! the hidden subcommand [`SUBCOMMAND`], the settings as one JSON argument,
//! the model bytes on stdin, and reads one JSON [`Answer`] from stdout. The
//! child runs the static checks ([`crate::modelcheck`]), builds the session
//! exactly as serving builds an untrusted one ([`Trust::Tenant`]), and does
//! one trial run on zeros (dynamic dimensions = 1), so a graph that
//! allocates or loops regardless of its inputs is caught here, not when the
//! first job runs.
//!
//! Limits, set with `setrlimit` between fork and exec (with a parent-death
//! signal, so a child never outlives its worker): address space
//! (`RLIMIT_AS`), CPU seconds (`RLIMIT_CPU`; `SIGXCPU` at the limit),
//! no files written (`RLIMIT_FSIZE` 0), few descriptors, no core dumps. The
//! parent kills the child at the wall-clock limit. The child gets an empty
//! environment and the empty external-data directory as its working
//! directory. A bomb kills the child only; the version ends `invalid` with
//! a stable code.

use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use shared::tensor::{DataType, Tensor, TensorData, TensorSpec};

use crate::backend::{Backend, LoadOptions, OnnxModel, Trust};
use crate::error::JobFailure;
use crate::memlimit::{is_allocation_failure, set_rlimit};
use crate::modelcheck::{self, Limits};

/// The hidden first argument that makes the worker binary a validator.
pub const SUBCOMMAND: &str = "__validate-model";

/// How a validation child is started and bounded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxConfig {
    /// The worker binary (the child is the same program).
    pub exe: PathBuf,
    pub ort_lib: PathBuf,
    pub external_data_dir: PathBuf,
    pub memory_bytes: u64,
    pub cpu_secs: u64,
    pub timeout: Duration,
    pub max_tensor_bytes: u64,
    pub max_nodes: usize,
}

impl SandboxConfig {
    fn limits(&self) -> Limits {
        Limits {
            max_tensor_bytes: self.max_tensor_bytes,
            max_nodes: self.max_nodes,
        }
    }
}

/// A model's signature.
pub type Signature = (Vec<TensorSpec>, Vec<TensorSpec>);

/// The child's one line on stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Answer {
    Ok {
        inputs: Vec<TensorSpec>,
        outputs: Vec<TensorSpec>,
    },
    Err {
        code: String,
        message: String,
    },
}

/// Validates `bytes` in a child process. Blocking: call it off the
/// executor.
#[allow(unsafe_code)] // each block has its SAFETY note
pub fn validate(bytes: &[u8], cfg: &SandboxConfig) -> Result<Signature, JobFailure> {
    let settings = serde_json::to_string(cfg)
        .map_err(|e| JobFailure::ValidatorUnavailable(format!("encoding settings: {e}")))?;
    // The empty directory, unless it could not be made (a read-only file
    // system): then the root, where nothing is writable either.
    let cwd = if cfg.external_data_dir.is_dir() {
        cfg.external_data_dir.as_path()
    } else {
        std::path::Path::new("/")
    };
    let mut cmd = Command::new(&cfg.exe);
    cmd.arg(SUBCOMMAND)
        .arg(settings)
        .env_clear()
        // Else ONNX Runtime 1.31 opens a telemetry database under $HOME at
        // start-up, which RLIMIT_FSIZE (rightly) kills the child for.
        .env("ORT_DISABLE_TELEMETRY", "1")
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (mem, cpu) = (cfg.memory_bytes, cfg.cpu_secs);
    // SAFETY: the closure runs in the forked child before exec and only
    // makes syscalls (setrlimit, prctl), which are async-signal-safe; it
    // allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // A worker that dies mid-validation takes its child with it (the
            // spawning thread waits for the child, so it outlives it).
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            set_rlimit(libc::RLIMIT_AS, mem, mem)?;
            // SIGXCPU at the soft limit; SIGKILL a second later if ignored.
            set_rlimit(libc::RLIMIT_CPU, cpu, cpu + 1)?;
            set_rlimit(libc::RLIMIT_FSIZE, 0, 0)?;
            set_rlimit(libc::RLIMIT_NOFILE, 64, 64)?;
            set_rlimit(libc::RLIMIT_CORE, 0, 0)
        });
    }
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| JobFailure::ValidatorUnavailable(format!("cannot start: {e}")))?;
    let stdin = child.stdin.take();
    let input = bytes.to_vec();
    let writer = std::thread::spawn(move || {
        // A child that died early closes its end: nothing to report here,
        // the exit status says why.
        if let Some(mut s) = stdin {
            let _ = s.write_all(&input);
        }
    });
    let reader = |pipe: Option<Box<dyn Read + Send>>, keep: usize| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(p) = pipe {
                let _ = p.take(1 << 20).read_to_end(&mut buf);
            }
            let from = buf.len().saturating_sub(keep);
            String::from_utf8_lossy(&buf[from..]).into_owned()
        })
    };
    let stdout = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        1 << 20,
    );
    let stderr = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        4096,
    );
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() >= cfg.timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(JobFailure::ValidatorUnavailable(format!("waiting: {e}")));
            }
        }
    };
    let _ = writer.join();
    let out = stdout.join().unwrap_or_default();
    let err = stderr.join().unwrap_or_default();
    tracing::debug!(
        elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
        ?status,
        "model validation child ended"
    );
    let Some(status) = status else {
        return Err(JobFailure::ModelValidationTimeout(format!(
            "validation did not finish within {} s",
            cfg.timeout.as_secs_f64()
        )));
    };
    if let Some(line) = out.lines().last()
        && let Ok(answer) = serde_json::from_str::<Answer>(line)
    {
        return match answer {
            Answer::Ok { inputs, outputs } => Ok((inputs, outputs)),
            Answer::Err { code, message } => Err(JobFailure::model_rejection(&code, message)
                .unwrap_or_else(|| JobFailure::ModelValidationCrashed(format!("code {code}")))),
        };
    }
    Err(died(status, &err, cfg))
}

/// Why a child that gave no answer ended.
fn died(status: std::process::ExitStatus, stderr: &str, cfg: &SandboxConfig) -> JobFailure {
    let out_of_memory = ["memory allocation of", "bad_alloc", "Failed to allocate"]
        .iter()
        .any(|s| stderr.contains(s));
    match status.signal() {
        Some(libc::SIGXCPU) => JobFailure::ModelValidationTimeout(format!(
            "validation used more than {} s of CPU",
            cfg.cpu_secs
        )),
        // The kernel's OOM killer (nothing else here sends SIGKILL).
        Some(libc::SIGKILL) => JobFailure::ModelValidationMemory(
            "the validation process was killed, most likely for memory".to_owned(),
        ),
        _ if out_of_memory => JobFailure::ModelValidationMemory(format!(
            "validation needed more than the {} MiB it may use",
            cfg.memory_bytes >> 20
        )),
        Some(sig) => JobFailure::ModelValidationCrashed(format!(
            "the validation process died of signal {sig}"
        )),
        None => JobFailure::ModelValidationCrashed(format!(
            "the validation process exited with {} without an answer",
            status.code().unwrap_or(-1)
        )),
    }
}

/// The child's side: everything after `worker __validate-model <json>`.
pub fn child_main(settings: &str) -> ExitCode {
    let answer = match serde_json::from_str::<SandboxConfig>(settings) {
        Ok(cfg) => match run_child(&cfg) {
            Ok((inputs, outputs)) => Answer::Ok { inputs, outputs },
            Err(f) => Answer::Err {
                code: f.code().to_owned(),
                message: f.detail(),
            },
        },
        Err(e) => Answer::Err {
            code: "model_validation_crashed".to_owned(),
            message: format!("bad validator settings: {e}"),
        },
    };
    match serde_json::to_string(&answer) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(_) => ExitCode::FAILURE,
    }
}

fn run_child(cfg: &SandboxConfig) -> Result<Signature, JobFailure> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .read_to_end(&mut bytes)
        .map_err(|e| JobFailure::ModelValidationCrashed(format!("reading the model: {e}")))?;
    modelcheck::check(&bytes, &cfg.limits())?;
    let start_failed =
        |e: String| JobFailure::ModelValidationCrashed(format!("starting ONNX Runtime: {e}"));
    let env = ort::init_from(&cfg.ort_lib)
        .map_err(|e| start_failed(e.to_string()))?
        .with_name("validate")
        .with_telemetry(false)
        .build()
        .map_err(|e| start_failed(e.to_string()))?;
    let opts = LoadOptions {
        trust: Trust::Tenant,
        intra_threads: 1,
        external_data_dir: cfg.external_data_dir.clone(),
    };
    let over = |stage: &str| {
        JobFailure::ModelValidationMemory(format!(
            "{stage} needed more than the {} MiB a validation may use",
            cfg.memory_bytes >> 20
        ))
    };
    let model = OnnxModel::load(&env, "validate", &bytes, &opts).map_err(|e| {
        if is_allocation_failure(&e) {
            over("loading the model")
        } else {
            JobFailure::InvalidModel(e)
        }
    })?;
    let info = model.info();
    let inputs: Vec<Tensor> = info.inputs.iter().map(zeros).collect();
    // Only running out of memory fails the trial: a model may well refuse
    // zeros of batch 1 (a shape it needs, a value it divides by) and still
    // serve real inputs. Running out of time ends the process.
    // The backend tells allocation failures apart from other run errors.
    if let Err(JobFailure::InferenceMemory) = model.run(&inputs, &crate::backend::RunControl::SOLO)
    {
        return Err(over("one run on zeros"));
    }
    Ok((info.inputs.clone(), info.outputs.clone()))
}

/// Zeros of `spec`'s type, dynamic dimensions set to 1.
fn zeros(spec: &TensorSpec) -> Tensor {
    let shape: Vec<i64> = spec
        .shape
        .iter()
        .map(|&d| if d < 0 { 1 } else { d })
        .collect();
    let n = shape
        .iter()
        .map(|&d| usize::try_from(d).unwrap_or(0))
        .product::<usize>();
    let data = match spec.datatype {
        DataType::Fp32 => TensorData::Fp32(vec![0.0; n]),
        DataType::Fp64 => TensorData::Fp64(vec![0.0; n]),
        DataType::Int32 => TensorData::Int32(vec![0; n]),
        DataType::Int64 => TensorData::Int64(vec![0; n]),
        DataType::Bool => TensorData::Bool(vec![false; n]),
    };
    Tensor {
        name: spec.name.clone(),
        shape,
        data,
    }
}
