"""The FastAPI front of the Python baseline, on the bench's routes:

* `POST /v1/models/mlp128/predict` with `{"features": [128 floats]}`
  submits a Celery task and answers 202 `{"job_id": ...}` (422 when the
  body does not validate, 404 for another model);
* `GET /v1/jobs/{id}?wait=N` answers 200 with the job's status mapped from
  Celery's states, and its result once it succeeded. With `wait` it holds
  the request until the job is terminal or N seconds passed.

Run by the bench as `uvicorn api:api` (one process; see README.md).
"""

import asyncio
import json
import logging
from contextlib import asynccontextmanager
from typing import Annotated

import redis.asyncio as aioredis
from fastapi import FastAPI, HTTPException, Query
from pydantic import BaseModel, Field

from tasks import FEATURES, REDIS_URL, app as celery_app, predict

log = logging.getLogger("baseline.api")

MODEL = "mlp128"
STATUS = {
    "PENDING": "queued",
    "RECEIVED": "queued",
    "RETRY": "queued",
    "STARTED": "running",
    "SUCCESS": "succeeded",
    "FAILURE": "failed",
    "REVOKED": "failed",
}
TERMINAL = {"succeeded", "failed"}
# The result backend's key of a task, and the channel its every state
# change is published on (Celery's Redis backend SETs and PUBLISHes both).
META_PREFIX = celery_app.backend.task_keyprefix.decode()

rds: aioredis.Redis
# Long-polls waiting on a job: backend key -> the queues of its waiters.
waiters: dict[str, set[asyncio.Queue]] = {}


async def listen():
    """One pattern subscription per process wakes every long-poll, so a
    waiting request costs no polling: it is the same design as our API's."""
    pubsub = rds.pubsub()
    await pubsub.psubscribe(META_PREFIX + "*")
    try:
        async for msg in pubsub.listen():
            if msg["type"] != "pmessage":
                continue
            for q in waiters.get(msg["channel"].decode(), ()):
                q.put_nowait(msg["data"])
    except asyncio.CancelledError:
        raise
    except Exception:
        # Long-polls then run to their timeout and clients poll again.
        log.exception("result listener stopped")
    finally:
        await pubsub.aclose()


@asynccontextmanager
async def lifespan(_app):
    global rds
    rds = aioredis.from_url(REDIS_URL)
    listener = asyncio.create_task(listen())
    yield
    listener.cancel()
    await rds.aclose()


api = FastAPI(title="python baseline", lifespan=lifespan)


class Predict(BaseModel):
    features: list[float] = Field(min_length=FEATURES, max_length=FEATURES)


# A plain `def`: Celery's publish is blocking, so FastAPI runs it in its
# thread pool instead of on the event loop.
@api.post("/v1/models/{model}/predict", status_code=202)
def submit(model: str, body: Predict):
    if model != MODEL:
        raise HTTPException(404, detail={"code": "model_not_found"})
    result = predict.delay(body.features)
    return {"job_id": result.id, "status": "queued"}


def view(job_id: str, raw) -> dict:
    # Celery's AsyncResult.state reads this same key (PENDING when absent);
    # it is read here with the asyncio client because AsyncResult blocks.
    meta = json.loads(raw) if raw else {"status": "PENDING"}
    status = STATUS.get(meta["status"], "queued")
    out = {"job_id": job_id, "status": status, "result": None, "error": None}
    if status == "succeeded":
        out["result"] = meta.get("result")
    elif status == "failed":
        out["error"] = meta.get("result")
    return out


@api.get("/v1/jobs/{job_id}")
async def job(job_id: str, wait: Annotated[float, Query(ge=0, le=30)] = 0):
    key = META_PREFIX + job_id
    if wait <= 0:
        return view(job_id, await rds.get(key))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    q: asyncio.Queue = asyncio.Queue()
    # Registered before the read, so a result published in between wakes us.
    waiters.setdefault(key, set()).add(q)
    try:
        out = view(job_id, await rds.get(key))
        while out["status"] not in TERMINAL:
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                out = view(job_id, await asyncio.wait_for(q.get(), left))
            except TimeoutError:
                break
        return out
    finally:
        waiting = waiters.get(key)
        if waiting is not None:
            waiting.discard(q)
            if not waiting:
                del waiters[key]
