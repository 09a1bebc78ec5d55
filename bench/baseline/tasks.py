"""The Celery side of the Python baseline: the app (Redis as broker and
result backend), the ONNX Runtime session each prefork child loads once,
and the one task, `predict`, that runs models/mlp128.onnx on one row.

Started by the bench as
`celery -A tasks worker --pool prefork --concurrency 2`; the FastAPI front
(`api.py`) imports `app` and `predict` from here to submit jobs.
"""

import os
from pathlib import Path

from celery import Celery
from celery.signals import worker_process_init

REDIS_URL = os.environ.get("BASELINE_REDIS_URL", "redis://127.0.0.1:6379/0")
MODEL_PATH = os.environ.get(
    "BASELINE_MODEL",
    str(Path(__file__).resolve().parents[2] / "models" / "mlp128.onnx"),
)
FEATURES = 128

app = Celery("baseline", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    # Acknowledge after the task ran, so a child that dies mid-task does
    # not lose the job (what our worker's finish-and-ack script gives).
    task_acks_late=True,
    # Without it Celery reports PENDING until the result lands; our system
    # marks a job running when a worker takes it, so this one does too
    # (one more backend write per job, as ours has).
    task_track_started=True,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
)

# One session per prefork child: ONNX Runtime sessions do not survive a
# fork, so each child builds its own after it starts.
_session = None


@worker_process_init.connect
def load_model(**_kwargs):
    global _session
    # Imported here so the API process, which only submits, never loads it.
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # Two children on two cores: one thread each, as our worker's default
    # (--intra-threads 1), instead of a thread pool per child per core.
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    _session = ort.InferenceSession(
        MODEL_PATH, opts, providers=["CPUExecutionProvider"]
    )


@app.task(name="predict")
def predict(features):
    import numpy as np

    x = np.asarray(features, dtype=np.float32).reshape(1, FEATURES)
    (y,) = _session.run(["prediction"], {"features": x})
    value = float(y[0, 0])
    return {
        "outputs": [
            {"name": "prediction", "shape": [1, 1], "datatype": "FP32", "data": [value]}
        ],
        "prediction": value,
    }
