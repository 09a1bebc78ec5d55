//! The external-trainer path: the example program trains on the training
//! split and its model is scored in ONNX Runtime on the holdout; failures
//! (timeout, non-zero exit, missing or empty output, cancellation) are
//! typed errors and leave no process behind.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use trainer::{
    ExternalError, Metrics, Split, Stream, TrainParams, evaluate_classification, run_external,
    run_external_cancellable,
};

/// A fresh directory for one test's files, removed afterwards.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("trainer-external-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

fn run_sh(
    dir: &Path,
    script: &str,
    timeout: Duration,
) -> (
    Result<trainer::ExternalOutput, ExternalError>,
    Vec<(Stream, String)>,
) {
    let mut lines = Vec::new();
    let result = run_external(
        &sh(script),
        &dir.join("data.csv"),
        &dir.join("params.json"),
        &dir.join("model.onnx"),
        timeout,
        |s, l| lines.push((s, l.to_owned())),
    );
    (result, lines)
}

#[test]
fn example_trainer_produces_a_model_that_scores_well() {
    let dir = Scratch::new("example");
    let ds = common::breast_cancer();
    let params = TrainParams {
        epochs: 200,
        learning_rate: 0.5,
        ..TrainParams::default()
    };
    // The program sees only the training rows; the holdout stays for scoring.
    let split = Split::new(ds.n_rows(), params.holdout_fraction, params.seed).unwrap();
    let data = dir.join("train.csv");
    std::fs::write(&data, ds.to_csv(&split.train_idx)).unwrap();
    let params_path = dir.join("params.json");
    std::fs::write(&params_path, serde_json::to_vec(&params).unwrap()).unwrap();
    let output = dir.join("model.onnx");

    let command = vec![
        common::repo_root()
            .join("scripts/external-trainer-example")
            .to_string_lossy()
            .into_owned(),
    ];
    let mut lines = Vec::new();
    let out = run_external(
        &command,
        &data,
        &params_path,
        &output,
        Duration::from_secs(60),
        |s, l| lines.push((s, l.to_owned())),
    )
    .unwrap();
    println!("external example trainer took {:?}", out.elapsed);
    assert!(
        lines.contains(&(
            Stream::Stderr,
            "455 rows, 30 features, task classification".into()
        )),
        "{lines:?}"
    );
    assert!(
        lines.contains(&(Stream::Stdout, format!("wrote {}", output.display()))),
        "{lines:?}"
    );
    let epochs = lines
        .iter()
        .filter(|(s, l)| *s == Stream::Stdout && l.starts_with("epoch "))
        .count();
    assert_eq!(epochs, 4, "{lines:?}");
    assert_eq!(out.onnx, std::fs::read(&output).unwrap());

    let mut session = common::session(&out.onnx);
    let (labels, probs) = common::classify(&mut session, &split.holdout_features(&ds));
    let metrics =
        evaluate_classification(probs.view(), &split.holdout_labels(&ds).unwrap()).unwrap();
    println!("external example model on the holdout: {metrics}");
    let Metrics::Classification { accuracy, .. } = metrics else {
        panic!()
    };
    assert!(accuracy > 0.9, "{metrics}");
    assert!(labels.iter().any(|&l| l == 0) && labels.iter().any(|&l| l == 1));
}

#[test]
fn contract_environment_and_line_streaming() {
    let dir = Scratch::new("contract");
    // Prints its environment contract, a partial last line, writes a model.
    let (result, lines) = run_sh(
        &dir,
        r#"echo "dataset=$ONNXQ_DATASET"; echo "params=$ONNXQ_PARAMS" >&2;
           printf 'model' > "$ONNXQ_OUTPUT"; printf 'no newline'"#,
        Duration::from_secs(10),
    );
    let out = result.unwrap();
    assert_eq!(out.onnx, b"model");
    assert!(lines.contains(&(
        Stream::Stdout,
        format!("dataset={}", dir.join("data.csv").display())
    )));
    assert!(lines.contains(&(
        Stream::Stderr,
        format!("params={}", dir.join("params.json").display())
    )));
    assert!(
        lines.contains(&(Stream::Stdout, "no newline".into())),
        "{lines:?}"
    );
}

#[test]
fn non_zero_exit_is_an_error_with_the_stderr_tail() {
    let dir = Scratch::new("fail");
    let (result, lines) = run_sh(
        &dir,
        "echo working; echo 'bad things happened' >&2; exit 3",
        Duration::from_secs(10),
    );
    match result {
        Err(ExternalError::Failed {
            status,
            stderr_tail,
        }) => {
            assert_eq!(status, "exit code 3");
            assert_eq!(stderr_tail, ["bad things happened"]);
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    assert!(lines.contains(&(Stream::Stdout, "working".into())));
    let err = run_sh(&dir, "kill -9 $$", Duration::from_secs(10))
        .0
        .unwrap_err();
    assert!(
        matches!(&err, ExternalError::Failed { status, .. } if status == "killed by signal 9"),
        "{err:?}"
    );
}

#[test]
fn missing_empty_and_stale_output_are_errors() {
    let dir = Scratch::new("output");
    let err = run_sh(&dir, "true", Duration::from_secs(10)).0.unwrap_err();
    assert!(
        matches!(err, ExternalError::MissingOutput { .. }),
        "{err:?}"
    );
    let err = run_sh(&dir, r#": > "$ONNXQ_OUTPUT""#, Duration::from_secs(10))
        .0
        .unwrap_err();
    assert!(matches!(err, ExternalError::EmptyOutput { .. }), "{err:?}");
    // A model left over from an earlier run does not count as output.
    std::fs::write(dir.join("model.onnx"), b"old model").unwrap();
    let err = run_sh(&dir, "true", Duration::from_secs(10)).0.unwrap_err();
    assert!(
        matches!(err, ExternalError::MissingOutput { .. }),
        "{err:?}"
    );
}

#[test]
fn bad_commands_are_errors() {
    let dir = Scratch::new("spawn");
    let run = |command: &[String]| {
        run_external(
            command,
            &dir.join("d"),
            &dir.join("p"),
            &dir.join("o"),
            Duration::from_secs(5),
            |_, _| {},
        )
    };
    assert!(matches!(run(&[]), Err(ExternalError::EmptyCommand)));
    let err = run(&["/nonexistent/trainer".into()]).unwrap_err();
    assert!(matches!(err, ExternalError::Spawn { .. }), "{err:?}");
    // Arguments are passed as they are, never through a shell.
    let err = run(&["echo".into(), "$(touch injected)".into()]).unwrap_err();
    assert!(matches!(err, ExternalError::MissingOutput { .. }));
    assert!(!Path::new("injected").exists());
}

/// Whether a process is gone (or a zombie waiting for init to reap it).
fn is_dead(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

fn wait_dead(pid: &str) -> bool {
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        if is_dead(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn timeout_kills_the_whole_process_group() {
    let dir = Scratch::new("timeout");
    // The shell starts a grandchild and reports its pid: both must die.
    let started = Instant::now();
    let (result, lines) = run_sh(&dir, "sleep 30 & echo $!; wait", Duration::from_millis(500));
    let took = started.elapsed();
    assert!(
        matches!(result, Err(ExternalError::Timeout { timeout }) if timeout == Duration::from_millis(500)),
        "{result:?}"
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let pid = &lines.first().expect("the grandchild's pid").1;
    assert!(wait_dead(pid), "sleep (pid {pid}) survived the timeout");
}

#[test]
fn cancellation_kills_the_program() {
    let dir = Scratch::new("cancel");
    let cancel = AtomicBool::new(false);
    let started = Instant::now();
    let mut pid = String::new();
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(300));
            cancel.store(true, Ordering::Relaxed);
        });
        run_external_cancellable(
            &sh("sleep 30 & echo $!; wait"),
            &dir.join("d"),
            &dir.join("p"),
            &dir.join("o"),
            Duration::from_secs(30),
            &cancel,
            |_, l| pid = l.to_owned(),
        )
    });
    assert!(matches!(result, Err(ExternalError::Canceled)), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        wait_dead(&pid),
        "sleep (pid {pid}) survived the cancellation"
    );
}

#[test]
fn background_leftovers_do_not_hold_up_a_finished_run() {
    let dir = Scratch::new("leftover");
    // Exits at once, leaving a background process holding stdout.
    let started = Instant::now();
    let (result, lines) = run_sh(
        &dir,
        r#"sleep 30 & echo $!; printf 'm' > "$ONNXQ_OUTPUT""#,
        Duration::from_secs(20),
    );
    assert_eq!(result.unwrap().onnx, b"m");
    assert!(started.elapsed() < Duration::from_secs(3));
    let pid = &lines[0].1;
    assert!(wait_dead(pid), "leftover sleep (pid {pid}) was not killed");
}
