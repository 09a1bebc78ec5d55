//! Running a team's own training program instead of the built-in trainer.
//!
//! Contract with the program:
//! * it is started as the configured argv (`command[0]` with arguments
//!   `command[1..]`), directly, never through a shell; nothing from the
//!   request is added to the command line;
//! * it finds its inputs and output through environment variables:
//!   `ONNXQ_DATASET` (CSV with a header row), `ONNXQ_PARAMS` (JSON training
//!   parameters) and `ONNXQ_OUTPUT` (where to write the ONNX model); the
//!   rest of the environment and the working directory are inherited;
//!   stdin is empty;
//! * every line it prints on stdout or stderr is passed on as it comes
//!   (lines longer than 8 KiB arrive in pieces);
//! * it succeeds by exiting 0 after writing a non-empty model file
//!   (a file left at `ONNXQ_OUTPUT` from before is deleted first);
//! * a stdout line `epoch K/N` or `epoch K/N loss X` (as
//!   `scripts/external-trainer-example` prints) reports progress, which the
//!   worker shows in the job's status ([`parse_progress`]); any other line
//!   is only logged;
//! * it runs in its own process group; at the timeout or on cancellation
//!   the whole group is killed (SIGKILL), and whatever is left of the group
//!   when the program exits is killed too.

use std::collections::VecDeque;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const ENV_DATASET: &str = "ONNXQ_DATASET";
pub const ENV_PARAMS: &str = "ONNXQ_PARAMS";
pub const ENV_OUTPUT: &str = "ONNXQ_OUTPUT";

const MAX_LINE: usize = 8192;
const STDERR_TAIL: usize = 20;
const POLL: Duration = Duration::from_millis(50);
/// After the program exits, how long to keep reading output still in the
/// pipes (only a process that left the group can hold them open longer).
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Which output a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// A finished external training run.
#[derive(Debug, Clone)]
pub struct ExternalOutput {
    /// Contents of the output file.
    pub onnx: Vec<u8>,
    pub elapsed: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ExternalError {
    #[error("the external trainer command is empty")]
    EmptyCommand,
    #[error("cannot start the external trainer {program:?}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("external trainer: {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("the external trainer did not finish within {timeout:?} and was killed")]
    Timeout { timeout: Duration },
    #[error("the external trainer was canceled and killed")]
    Canceled,
    #[error("the external trainer failed ({status}){}", tail(.stderr_tail))]
    Failed {
        /// `exit code N` or `killed by signal N`.
        status: String,
        /// Its last stderr lines (at most 20).
        stderr_tail: Vec<String>,
    },
    #[error("the external trainer exited 0 but wrote no model at {}", .path.display())]
    MissingOutput { path: PathBuf },
    #[error("the external trainer exited 0 but the model at {} is empty", .path.display())]
    EmptyOutput { path: PathBuf },
}

fn tail(lines: &[String]) -> String {
    match lines.last() {
        Some(last) => format!(": {last}"),
        None => String::new(),
    }
}

/// Epoch `K` of `N` and the loss, if the line reports progress (`epoch K/N`
/// or `epoch K/N loss X`, surrounding whitespace ignored). `K` must be in
/// `1..=N` and `X` finite; anything else is not progress.
pub fn parse_progress(line: &str) -> Option<(u32, u32, Option<f64>)> {
    let mut words = line.split_whitespace();
    if words.next()? != "epoch" {
        return None;
    }
    let (k, n) = words.next()?.split_once('/')?;
    let (k, n): (u32, u32) = (k.parse().ok()?, n.parse().ok()?);
    if k == 0 || k > n {
        return None;
    }
    let loss = match (words.next(), words.next(), words.next()) {
        (None, _, _) => None,
        (Some("loss"), Some(x), None) => Some(x.parse::<f64>().ok().filter(|x| x.is_finite())?),
        _ => return None,
    };
    Some((k, n, loss))
}

/// Runs `command` per the module's contract, passing every output line to
/// `on_line`, and returns the model it wrote. Blocks until the program exits
/// or `timeout` passes: call it from a blocking thread.
pub fn run_external(
    command: &[String],
    dataset_path: &Path,
    params_json_path: &Path,
    output_onnx_path: &Path,
    timeout: Duration,
    on_line: impl FnMut(Stream, &str),
) -> Result<ExternalOutput, ExternalError> {
    let never = AtomicBool::new(false);
    run_external_cancellable(
        command,
        dataset_path,
        params_json_path,
        output_onnx_path,
        timeout,
        &never,
        on_line,
    )
}

/// [`run_external`] that also kills the program (within ~50 ms) once
/// `cancel` becomes true, returning [`ExternalError::Canceled`].
pub fn run_external_cancellable(
    command: &[String],
    dataset_path: &Path,
    params_json_path: &Path,
    output_onnx_path: &Path,
    timeout: Duration,
    cancel: &AtomicBool,
    mut on_line: impl FnMut(Stream, &str),
) -> Result<ExternalOutput, ExternalError> {
    let started = Instant::now();
    let (program, args) = command.split_first().ok_or(ExternalError::EmptyCommand)?;
    match std::fs::remove_file(output_onnx_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(ExternalError::Io {
                what: format!("removing old {}", output_onnx_path.display()),
                source: e,
            });
        }
        _ => {}
    }
    let mut child = Command::new(program)
        .args(args)
        .env(ENV_DATASET, dataset_path)
        .env(ENV_PARAMS, params_json_path)
        .env(ENV_OUTPUT, output_onnx_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|source| ExternalError::Spawn {
            program: program.clone(),
            source,
        })?;
    let group = Group(child.id());

    let (tx, rx) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        spawn_reader(out, Stream::Stdout, tx.clone());
    }
    if let Some(err) = child.stderr.take() {
        spawn_reader(err, Stream::Stderr, tx.clone());
    }
    drop(tx);

    let deadline = started + timeout;
    let mut stderr_tail = VecDeque::with_capacity(STDERR_TAIL);
    let mut exited: Option<(std::process::ExitStatus, Instant)> = None;
    let mut readers_done = false;
    let status = loop {
        if let Some((status, at)) = exited
            && (readers_done || at.elapsed() >= DRAIN_GRACE)
        {
            break status;
        }
        if cancel.load(Ordering::Relaxed) {
            group.kill_and_reap(&mut child);
            return Err(ExternalError::Canceled);
        }
        let now = Instant::now();
        if now >= deadline {
            group.kill_and_reap(&mut child);
            return Err(ExternalError::Timeout { timeout });
        }
        if readers_done {
            std::thread::sleep(POLL.min(deadline - now));
        } else {
            match rx.recv_timeout(POLL.min(deadline - now)) {
                Ok((stream, line)) => {
                    if stream == Stream::Stderr {
                        if stderr_tail.len() == STDERR_TAIL {
                            stderr_tail.pop_front();
                        }
                        stderr_tail.push_back(line.clone());
                    }
                    on_line(stream, &line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => readers_done = true,
            }
        }
        if exited.is_none() {
            let status = match child.try_wait() {
                Ok(status) => status,
                Err(source) => {
                    group.kill_and_reap(&mut child);
                    return Err(ExternalError::Io {
                        what: "waiting for the process".to_owned(),
                        source,
                    });
                }
            };
            if let Some(status) = status {
                // Leftover background processes would hold the pipes open.
                group.kill();
                exited = Some((status, Instant::now()));
            }
        }
    };

    if !status.success() {
        let status = match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(signal)) => format!("killed by signal {signal}"),
            (None, None) => status.to_string(),
        };
        return Err(ExternalError::Failed {
            status,
            stderr_tail: stderr_tail.into(),
        });
    }
    let onnx = match std::fs::read(output_onnx_path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ExternalError::MissingOutput {
                path: output_onnx_path.to_path_buf(),
            });
        }
        Err(source) => {
            return Err(ExternalError::Io {
                what: format!("reading {}", output_onnx_path.display()),
                source,
            });
        }
    };
    if onnx.is_empty() {
        return Err(ExternalError::EmptyOutput {
            path: output_onnx_path.to_path_buf(),
        });
    }
    Ok(ExternalOutput {
        onnx,
        elapsed: started.elapsed(),
    })
}

/// The child's process group (its id is the child's pid, thanks to
/// `process_group(0)`).
struct Group(u32);

impl Group {
    #[allow(unsafe_code)] // each block has its SAFETY note
    fn kill(&self) {
        let Ok(pgid) = libc::pid_t::try_from(self.0) else {
            return;
        };
        // SAFETY: kill(2) takes plain integers and touches no memory of ours;
        // a negative pid addresses the process group. ESRCH (group already
        // gone) is the expected outcome after a clean exit and is ignored.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }

    fn kill_and_reap(&self, child: &mut Child) {
        self.kill();
        // The leader may already have been reaped (a zombie is reaped
        // here); either way there is nothing more to do.
        let _ = child.wait();
    }
}

/// Forwards `source`'s lines to `tx` until EOF. The thread ends on its own
/// once every process holding the pipe is gone.
fn spawn_reader(
    mut source: impl Read + Send + 'static,
    stream: Stream,
    tx: mpsc::Sender<(Stream, String)>,
) {
    std::thread::spawn(move || {
        let mut pending: Vec<u8> = Vec::new();
        let mut chunk = [0u8; 4096];
        let emit = |bytes: &[u8]| {
            let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
            tx.send((stream, String::from_utf8_lossy(bytes).into_owned()))
                .is_ok()
        };
        loop {
            let n = match source.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            pending.extend_from_slice(&chunk[..n]);
            let mut start = 0;
            while let Some(pos) = pending[start..].iter().position(|&b| b == b'\n') {
                if !emit(&pending[start..start + pos]) {
                    return;
                }
                start += pos + 1;
            }
            pending.drain(..start);
            while pending.len() >= MAX_LINE {
                if !emit(&pending[..MAX_LINE]) {
                    return;
                }
                pending.drain(..MAX_LINE);
            }
        }
        if !pending.is_empty() {
            emit(&pending);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::parse_progress;

    #[test]
    fn progress_lines() {
        assert_eq!(parse_progress("epoch 3/10"), Some((3, 10, None)));
        assert_eq!(
            parse_progress("  epoch 50/200 loss 0.125000 "),
            Some((50, 200, Some(0.125)))
        );
        for not in [
            "",
            "epoch",
            "epoch 0/10",
            "epoch 11/10",
            "epoch 3-10",
            "epoch 3/10 loss",
            "epoch 3/10 loss nan",
            "epoch 3/10 loss 1 extra",
            "Epoch 3/10",
            "training epoch 3/10",
        ] {
            assert_eq!(parse_progress(not), None, "{not:?}");
        }
    }
}
