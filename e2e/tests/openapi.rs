//! The OpenAPI document against the running server: every documented
//! operation is served (not the router's 404/405 fallback), every other
//! method on a documented path is 405, every status the server answered in
//! these requests is documented for its operation, and real bodies (202,
//! job, canceled job, model list, model, health, readiness, errors, and the
//! request bodies we send) validate against the document's schemas.
//!
//! That the router serves no route missing from the document is checked in
//! `api/src/openapi.rs`: the router is built from `routes::TABLE` alone, and
//! the unit test compares that table with the document.

use std::time::Duration;

use e2e::{Api, RedisServer, Reply, StatusCode, Worker, unique_namespace};
use serde_json::{Value, json};

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// Resolves a local `$ref` (`#/components/schemas/X`).
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let pointer = r
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("non-local $ref {r}"));
            let target = doc
                .pointer(pointer)
                .unwrap_or_else(|| panic!("dangling $ref {r}"));
            resolve(doc, target)
        }
        None => schema,
    }
}

/// Validates `value` against the subset of JSON Schema utoipa emits: `$ref`,
/// `type` (one or several), `enum`, `oneOf`, `properties` with `required`,
/// `additionalProperties`, `items`. A property not in the schema is an
/// error too (unless `additionalProperties` allows it): the document must
/// describe everything the server sends. Returns every violation.
fn validate(doc: &Value, schema: &Value, value: &Value, at: &str) -> Vec<String> {
    let schema = resolve(doc, schema);
    let mut errors = Vec::new();
    if let Some(options) = schema.get("oneOf").and_then(Value::as_array) {
        let matching = options
            .iter()
            .filter(|o| validate(doc, o, value, at).is_empty())
            .count();
        if matching != 1 {
            errors.push(format!("{at}: {matching} of oneOf match {value}"));
        }
        return errors;
    }
    if let Some(types) = schema.get("type") {
        let types: Vec<&str> = match types {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let ok = types.iter().any(|t| match *t {
            "null" => value.is_null(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "array" => value.is_array(),
            "object" => value.is_object(),
            _ => false,
        });
        if !ok {
            errors.push(format!("{at}: {value} is not of type {types:?}"));
            return errors;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        errors.push(format!("{at}: {value} is not one of {allowed:?}"));
    }
    if let Some(obj) = value.as_object() {
        let props = schema.get("properties").and_then(Value::as_object);
        for req in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !obj.contains_key(req) {
                errors.push(format!("{at}: required field {req} missing"));
            }
        }
        let extra = schema.get("additionalProperties");
        for (k, v) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(s) => errors.extend(validate(doc, s, v, &format!("{at}.{k}"))),
                None => match extra {
                    Some(s) if s.is_object() => {
                        errors.extend(validate(doc, s, v, &format!("{at}.{k}")));
                    }
                    Some(Value::Bool(true)) => {}
                    _ if props.is_none() && schema.get("type") == Some(&json!("object")) => {}
                    _ => errors.push(format!("{at}: field {k} is not in the schema")),
                },
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), value.as_array()) {
        for (i, v) in arr.iter().enumerate() {
            errors.extend(validate(doc, items, v, &format!("{at}[{i}]")));
        }
    }
    errors
}

/// The operation object of `method path`.
fn operation<'a>(doc: &'a Value, method: &str, path: &str) -> &'a Value {
    doc["paths"][path]
        .get(method.to_ascii_lowercase())
        .unwrap_or_else(|| panic!("{method} {path} is not documented"))
}

/// Asserts the reply's status is documented for the operation and, for a
/// JSON body, that it validates against the documented schema.
fn check_reply(doc: &Value, method: &str, path: &str, reply: &Reply) {
    let op = operation(doc, method, path);
    let status = reply.status.as_u16().to_string();
    let response = op["responses"].get(&status).unwrap_or_else(|| {
        panic!(
            "{method} {path} answered {status}, not documented: {}",
            reply.text
        )
    });
    let ct = reply
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let content = &response["content"];
    let documented_ct = content
        .as_object()
        .and_then(|c| c.keys().next())
        .unwrap_or_else(|| panic!("{method} {path} {status}: no documented content"));
    assert!(
        ct.split(';').next() == documented_ct.split(';').next(),
        "{method} {path} {status}: content type {ct}, documented {documented_ct}"
    );
    if ct.starts_with("application/json") {
        let schema = &content[documented_ct.as_str()]["schema"];
        let errors = validate(doc, schema, &reply.json, "body");
        assert!(
            errors.is_empty(),
            "{method} {path} {status}: {errors:#?}\n{}",
            reply.text
        );
    }
    for (name, _) in response["headers"].as_object().into_iter().flatten() {
        // Documented headers that this particular answer must carry.
        if matches!(name.as_str(), "Location" | "Retry-After") {
            assert!(
                reply.headers.contains_key(name.as_str()),
                "{method} {path} {status}: header {name} missing"
            );
        }
    }
}

fn features(n: usize) -> Value {
    json!({ "features": vec![0.25; n] })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_matches_the_router_and_real_responses() {
    let redis = RedisServer::start();
    let ns = unique_namespace("openapi");
    let _worker = Worker::spawn(&redis.url(), &ns, &[]);
    let api = Api::spawn(&redis.url(), &ns, &[]);
    let client = api.client();
    client
        .wait_for_models(&["mlp128", "two_input"], Duration::from_secs(30))
        .await;

    let r = client.get("/openapi.json").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let doc = r.json.clone();
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        r.text
    );
    check_reply(&doc, "GET", "/openapi.json", &r);

    // The validator itself rejects what it must, or every check below would
    // pass vacuously.
    let job_schema = json!({"$ref": "#/components/schemas/Job"});
    assert!(!validate(&doc, &job_schema, &json!({}), "x").is_empty());
    assert!(
        !validate(
            &doc,
            &json!({"$ref": "#/components/schemas/ErrorBody"}),
            &json!({"error": {"code": "no_such_code", "message": "m"}}),
            "x"
        )
        .is_empty()
    );
    assert!(
        !validate(
            &doc,
            &json!({"$ref": "#/components/schemas/Accepted"}),
            &json!({"job_id": "x", "status": "queued", "status_url": "/", "extra": 1}),
            "x"
        )
        .is_empty()
    );

    // Request bodies we send validate against the documented request schema.
    let predict = "/v1/models/{model}/predict";
    let request_schema =
        &operation(&doc, "POST", predict)["requestBody"]["content"]["application/json"]["schema"];
    let oip = json!({
        "id": "r1",
        "inputs": [
            {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0.1, 0.2, 0.3, 0.4]},
            {"name": "k", "shape": [1, 1], "datatype": "INT64", "data": [3]}
        ],
        "deadline": 30
    });
    for body in [&features(128), &oip] {
        let errors = validate(&doc, request_schema, body, "request");
        assert!(errors.is_empty(), "{errors:#?}");
    }

    // Real responses against their schemas.
    let submitted = client.predict("mlp128", &features(128)).await;
    check_reply(&doc, "POST", predict, &submitted);
    let id = submitted.json["job_id"]
        .as_str()
        .expect("job id")
        .to_owned();
    let job = format!("/v1/jobs/{id}");
    let _ = client.wait_terminal(&id, Duration::from_secs(30)).await;
    check_reply(
        &doc,
        "GET",
        "/v1/jobs/{id}",
        &client.job(&id, Some(1.0)).await,
    );
    let oip_reply = client.predict("two_input", &oip).await;
    check_reply(&doc, "POST", predict, &oip_reply);
    let oip_id = oip_reply.json["job_id"]
        .as_str()
        .expect("job id")
        .to_owned();
    let _ = client.wait_terminal(&oip_id, Duration::from_secs(30)).await;
    check_reply(
        &doc,
        "GET",
        "/v1/jobs/{id}",
        &client.job(&oip_id, None).await,
    );
    // A finished job cannot be canceled: 409.
    check_reply(&doc, "DELETE", "/v1/jobs/{id}", &client.delete(&job).await);
    check_reply(&doc, "GET", "/v1/models", &client.get("/v1/models").await);
    check_reply(
        &doc,
        "GET",
        "/v1/models/{model}",
        &client.get("/v1/models/mlp128").await,
    );
    check_reply(&doc, "GET", "/healthz", &client.get("/healthz").await);
    check_reply(&doc, "GET", "/readyz", &client.get("/readyz").await);
    let metrics = client.get("/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    check_reply(&doc, "GET", "/metrics", &metrics);

    // Errors: documented statuses, the error schema, codes from its enum.
    let errors = [
        (
            "GET",
            "/v1/jobs/{id}",
            client.get("/v1/jobs/not-a-uuid").await,
        ),
        (
            "GET",
            "/v1/jobs/{id}",
            client.get(&format!("{job}?wait=-1")).await,
        ),
        (
            "GET",
            "/v1/jobs/{id}",
            client
                .get("/v1/jobs/019ab0c4-5d1e-7c53-9a43-8f0e6f1c2d3b")
                .await,
        ),
        (
            "DELETE",
            "/v1/jobs/{id}",
            client
                .delete("/v1/jobs/019ab0c4-5d1e-7c53-9a43-8f0e6f1c2d3b")
                .await,
        ),
        (
            "POST",
            predict,
            client.predict("mlp128", &features(3)).await,
        ),
        (
            "POST",
            predict,
            client.predict("no_such_model", &features(3)).await,
        ),
        (
            "POST",
            predict,
            client
                .post_raw(
                    "/v1/models/mlp128/predict",
                    Some("application/json"),
                    b"{".to_vec(),
                )
                .await,
        ),
        (
            "POST",
            predict,
            client
                .post_raw(
                    "/v1/models/mlp128/predict",
                    Some("text/plain"),
                    b"{}".to_vec(),
                )
                .await,
        ),
        (
            "GET",
            "/v1/models/{model}",
            client.get("/v1/models/no_such_model").await,
        ),
    ];
    let mut statuses = Vec::new();
    for (method, path, reply) in &errors {
        assert!(
            reply.status.is_client_error(),
            "{method} {path}: {}",
            reply.text
        );
        let _ = reply.error_code();
        check_reply(&doc, method, path, reply);
        statuses.push(reply.status.as_u16());
    }
    assert_eq!(statuses, [400, 400, 404, 404, 422, 404, 400, 415, 404]);

    // Every documented operation is served, and every other method on a
    // documented path is refused with 405 (the router's answer for a known
    // path), never the 404 of an unknown route.
    let concrete = |path: &str| {
        path.replace("{model}", "mlp128")
            .replace("{id}", &id)
            .to_owned()
    };
    for (path, item) in doc["paths"].as_object().expect("paths") {
        let url = format!("{}{}", client.base, concrete(path));
        for method in METHODS {
            let documented = item.get(method.to_ascii_lowercase()).is_some();
            let mut req = client
                .http
                .request(method.parse().expect("method"), &url)
                .header("content-type", "application/json");
            if method == "POST" {
                req = req.body(features(128).to_string());
            }
            let reply = client.send(req).await;
            if documented {
                assert_ne!(
                    reply.status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path}"
                );
                if reply.status == StatusCode::NOT_FOUND {
                    assert_ne!(
                        reply.error_code(),
                        "not_found",
                        "{method} {path} is documented but not routed"
                    );
                }
                check_reply(&doc, method, path, &reply);
            } else {
                assert_eq!(
                    reply.status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is served but not documented: {}",
                    reply.text
                );
            }
        }
    }
}
