//! Clients of the push routes as a user writes them, shared by the e2e
//! tests and the bench: an SSE reader of `GET /v1/jobs/{id}/events`
//! (`eventsource-stream` over reqwest's byte stream) and a WebSocket driver
//! of `/v1/ws` (`tokio-tungstenite`) that submits many jobs with a window of
//! them in flight and collects every result.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use eventsource_stream::{Event, Eventsource};
use futures::{SinkExt, Stream, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::Client;

/// A WebSocket session of `/v1/ws`.
pub type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// `GET /v1/jobs/{id}/events`, resuming after `last_event_id` if given:
/// the response (its status tells 200, 204 or an error), not yet read.
pub async fn events(c: &Client, id: &str, last_event_id: Option<&str>) -> reqwest::Response {
    let mut req = c
        .http
        .get(format!("{}/v1/jobs/{id}/events", c.base))
        // The client's whole-request timeout would cut a long stream.
        .timeout(Duration::from_secs(600));
    if let Some(last) = last_event_id {
        req = req.header("last-event-id", last);
    }
    req.send().await.expect("events request")
}

/// The events of a 200 answer, as an `EventSource` parses them.
pub fn event_stream(res: reqwest::Response) -> impl Stream<Item = Event> + Unpin {
    Box::pin(
        res.bytes_stream()
            .eventsource()
            .map(|e| e.expect("a well-formed event stream")),
    )
}

/// Opens a `/v1/ws` session on the API at `base` (`http://…`), with
/// `Authorization: Bearer <key>` when given.
pub async fn connect(base: &str, api_key: Option<&str>) -> WsStream {
    let url = format!("{}/v1/ws", base.replacen("http", "ws", 1));
    let mut req = url.into_client_request().expect("ws request");
    if let Some(key) = api_key {
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {key}").parse().expect("header"),
        );
    }
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("websocket upgrade");
    ws
}

/// The next JSON text message of a session (pings skipped); `None` once
/// it closed.
pub async fn next_json(ws: &mut (impl Stream<Item = WsItem> + Unpin)) -> Option<Value> {
    loop {
        match ws.next().await? {
            Ok(Message::Text(t)) => return Some(serde_json::from_str(&t).expect("JSON message")),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

type WsItem = Result<Message, tokio_tungstenite::tungstenite::Error>;

/// A predict message of `/v1/ws`.
pub fn predict_message(tag: &Value, model: &str, body: &Value) -> Message {
    Message::text(json!({"op": "predict", "ref": tag, "model": model, "body": body}).to_string())
}

/// What [`run_jobs`] saw.
pub struct Pushed {
    /// Every `result` message, by its `ref` (the job's index).
    pub results: HashMap<u64, Value>,
    /// `accepted` messages.
    pub acks: usize,
}

/// Submits `n` predicts of `body` to `model` over one session, `ref` = the
/// index, with at most `window` in flight, and waits for every result.
/// Panics on an `error` message or a result seen twice.
pub async fn run_jobs(ws: WsStream, model: &str, body: &Value, n: usize, window: usize) -> Pushed {
    let (mut sink, mut source) = ws.split();
    let room = Arc::new(Semaphore::new(window));
    let send = {
        let room = Arc::clone(&room);
        let (model, body) = (model.to_owned(), body.clone());
        async move {
            for i in 0..n {
                room.acquire().await.expect("semaphore").forget();
                sink.send(predict_message(&json!(i), &model, &body))
                    .await
                    .expect("send predict");
            }
            sink
        }
    };
    let receive = async move {
        let mut pushed = Pushed {
            results: HashMap::with_capacity(n),
            acks: 0,
        };
        while pushed.results.len() < n {
            let msg = next_json(&mut source)
                .await
                .expect("the session closed early");
            match msg["op"].as_str() {
                Some("accepted") => pushed.acks += 1,
                Some("result") => {
                    let tag = msg["ref"].as_u64().expect("ref");
                    assert!(
                        pushed.results.insert(tag, msg).is_none(),
                        "result {tag} pushed twice"
                    );
                    room.add_permits(1);
                }
                _ => panic!("unexpected message {msg}"),
            }
        }
        (pushed, source)
    };
    let (sink, (pushed, source)) = tokio::join!(send, receive);
    // Hand both halves back together, so the socket closes cleanly here.
    let mut ws = sink.reunite(source).expect("the two halves of one socket");
    let _ = ws.close(None).await;
    pushed
}
