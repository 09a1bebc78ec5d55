//! The HTTP client a test speaks to the API with, as a user would, and the
//! [`Reply`] it reads: status, headers, the body as JSON and as text, and
//! the documented error shape checked.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

/// An HTTP response with its body parsed as JSON (or `Value::Null` when the
/// body is not JSON; `text` keeps the raw body).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub json: Value,
    pub text: String,
}

impl Reply {
    /// Asserts the documented error shape and returns the code.
    pub fn error_code(&self) -> String {
        let ct = self
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(
            ct.starts_with("application/json"),
            "error without JSON content type: {ct} {}",
            self.text
        );
        let err = &self.json["error"];
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "error without message: {}",
            self.text
        );
        let keys: Vec<&String> = self
            .json
            .as_object()
            .map(|o| o.keys().collect())
            .unwrap_or_default();
        assert_eq!(
            keys,
            vec!["error"],
            "extra fields in error body: {}",
            self.text
        );
        err["code"]
            .as_str()
            .unwrap_or_else(|| panic!("error without code: {}", self.text))
            .to_owned()
    }
}

/// A client of the HTTP API.
#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
}

impl Client {
    pub fn new(base: &str) -> Client {
        Client {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(64)
                .build()
                .expect("http client"),
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    /// A client that sends `Authorization: Bearer <key>` with every request.
    pub fn with_api_key(base: &str, key: &str) -> Client {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            reqwest::header::HeaderValue::from_str(&format!("Bearer {key}")).expect("api key"),
        );
        Client {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .default_headers(headers)
                .build()
                .expect("http client"),
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        let resp = req.send().await.expect("http request failed");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            json,
            text,
        }
    }

    /// `PUT /v1/datasets/{name}` of CSV bytes.
    pub async fn put_dataset(&self, name: &str, csv: Vec<u8>) -> Reply {
        self.send(
            self.http
                .put(format!("{}/v1/datasets/{name}", self.base))
                .header("content-type", "text/csv")
                .body(csv),
        )
        .await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    /// POSTs raw bytes with an optional content type.
    pub async fn post_raw(&self, path: &str, content_type: Option<&str>, body: Vec<u8>) -> Reply {
        let mut req = self.http.post(format!("{}{path}", self.base)).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        self.send(req).await
    }

    pub async fn predict(&self, model: &str, body: &Value) -> Reply {
        self.send(
            self.http
                .post(format!("{}/v1/models/{model}/predict", self.base))
                .json(body),
        )
        .await
    }

    /// Submits and returns the job id, asserting the 202 contract.
    pub async fn submit(&self, model: &str, body: &Value) -> String {
        let r = self.predict(model, body).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "submit failed: {}", r.text);
        r.json["job_id"]
            .as_str()
            .expect("job_id in 202 body")
            .to_owned()
    }

    pub async fn job(&self, id: &str, wait: Option<f64>) -> Reply {
        let path = match wait {
            Some(w) => format!("/v1/jobs/{id}?wait={w}"),
            None => format!("/v1/jobs/{id}"),
        };
        self.get(&path).await
    }

    /// Long-polls until the job is terminal or `timeout` passes.
    pub async fn wait_terminal(&self, id: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.job(id, Some(5.0)).await;
            assert_eq!(r.status, StatusCode::OK, "job {id}: {}", r.text);
            let status = r.json["status"].as_str().unwrap_or("");
            if matches!(status, "succeeded" | "failed" | "canceled") {
                return r.json;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} not terminal after {timeout:?}: {}",
                r.text
            );
        }
    }

    /// Waits until the API lists every named model (workers published them).
    pub async fn wait_for_models(&self, names: &[&str], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.get("/v1/models").await;
            let listed: Vec<String> = r.json["models"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|m| m["name"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            if names.iter().all(|n| listed.iter().any(|l| l == n)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "models {names:?} not published in time; listed {listed:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(self.http.delete(format!("{}{path}", self.base)))
            .await
    }

    /// `POST /v1/jobs/{id}/cancel`, without a body.
    pub async fn cancel(&self, id: impl std::fmt::Display) -> Reply {
        self.send(self.http.post(format!("{}/v1/jobs/{id}/cancel", self.base)))
            .await
    }

    /// A predict request with an `Idempotency-Key` header.
    pub async fn predict_with_key(&self, model: &str, body: &Value, key: &str) -> Reply {
        self.send(
            self.http
                .post(format!("{}/v1/models/{model}/predict", self.base))
                .header("idempotency-key", key)
                .json(body),
        )
        .await
    }
}
