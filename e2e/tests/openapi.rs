//! The OpenAPI document against the running server: every documented
//! operation is served (not the router's 404/405 fallback), every other
//! method on a documented path is 405, every status the server answered in
//! these requests is documented for its operation, and real bodies (202,
//! job, canceled job, model list, model, health, readiness, errors, and the
//! request bodies we send) validate against the document's schemas. And
//! every example the document gives is sent as a client would send it: the
//! answer must be one the document lists, and a body example must work.
//!
//! That the router serves no route missing from the document is checked in
//! `api/src/app.rs`: the router is built from `app::TABLE` alone, and the
//! unit test compares that table with the document.

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
/// `type` (one or several), `enum`, `oneOf`, `allOf`, `properties` with
/// `required`, `additionalProperties`, `items`, `minimum`, `minLength`.
/// Stricter than JSON Schema in one way: a property of an object that no
/// part of its schema names is an error (unless `additionalProperties`
/// allows it), so the document must describe everything the server sends.
/// Returns every violation.
fn validate(doc: &Value, schema: &Value, value: &Value, at: &str) -> Vec<String> {
    let mut errors = check(doc, schema, value, at);
    if let Some(obj) = value.as_object() {
        let mut named = Vec::new();
        if !names(doc, schema, &mut named) {
            for k in obj.keys().filter(|k| !named.contains(k)) {
                errors.push(format!("{at}: field {k} is not in the schema"));
            }
        }
    }
    errors
}

/// Collects the properties `schema` names, through `$ref`, `allOf` and
/// `oneOf`; false when it lets any property in (a free-form object, an
/// `additionalProperties` schema or `true`).
fn names(doc: &Value, schema: &Value, out: &mut Vec<String>) -> bool {
    let schema = resolve(doc, schema);
    let mut open = match schema.get("additionalProperties") {
        Some(Value::Bool(false)) => false,
        Some(_) => true,
        None => {
            schema.get("type") == Some(&json!("object"))
                && schema.get("properties").is_none()
                && schema.get("allOf").is_none()
                && schema.get("oneOf").is_none()
        }
    };
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        out.extend(props.keys().cloned());
    }
    for key in ["allOf", "oneOf"] {
        for part in schema
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            open |= names(doc, part, out);
        }
    }
    open
}

/// Standard JSON Schema checks of the subset (see [`validate`]); nested
/// values are validated strictly again.
fn check(doc: &Value, schema: &Value, value: &Value, at: &str) -> Vec<String> {
    let schema = resolve(doc, schema);
    let mut errors = Vec::new();
    if let Some(options) = schema.get("oneOf").and_then(Value::as_array) {
        let matching = options
            .iter()
            .filter(|o| check(doc, o, value, at).is_empty())
            .count();
        if matching != 1 {
            errors.push(format!("{at}: {matching} of oneOf match {value}"));
        }
    }
    for part in schema
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        errors.extend(check(doc, part, value, at));
    }
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
        && value.as_f64().is_some_and(|v| v < min)
    {
        errors.push(format!("{at}: {value} is below the minimum {min}"));
    }
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
        && value
            .as_str()
            .is_some_and(|v| (v.chars().count() as u64) < min)
    {
        errors.push(format!("{at}: {value} is shorter than {min}"));
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
        for (k, v) in obj {
            let at = format!("{at}.{k}");
            match (
                props.and_then(|p| p.get(k)),
                schema.get("additionalProperties"),
            ) {
                (Some(s), _) => errors.extend(validate(doc, s, v, &at)),
                (None, Some(Value::Bool(false))) => {
                    errors.push(format!("{at}: not allowed by the schema"))
                }
                (None, Some(s)) if s.is_object() => errors.extend(validate(doc, s, v, &at)),
                _ => {}
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
    let response = resolve(
        doc,
        op["responses"].get(&status).unwrap_or_else(|| {
            panic!(
                "{method} {path} answered {status}, not documented: {}",
                reply.text
            )
        }),
    );
    let ct = reply
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let content = &response["content"];
    if content.is_null() {
        assert!(
            reply.text.is_empty(),
            "{method} {path} {status}: documented without a body, answered {}",
            reply.text
        );
        return;
    }
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
    // Bulk submit: queued and refused items, an atomic refusal; the listing.
    let batch = "/v1/models/{model}/predict/batch";
    let send_batch = |body: Value| {
        client.send(
            client
                .http
                .post(format!("{}/v1/models/mlp128/predict/batch", client.base))
                .json(&body),
        )
    };
    let mixed = json!({"items": [features(128), features(3)]});
    let reply = send_batch(mixed.clone()).await;
    assert_eq!(reply.json["refused"], 1, "{}", reply.text);
    check_reply(&doc, "POST", batch, &reply);
    let mut atomic = mixed;
    atomic["atomic"] = json!(true);
    let reply = send_batch(atomic).await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text
    );
    check_reply(&doc, "POST", batch, &reply);
    let page = client.get("/v1/jobs?limit=2").await;
    assert_eq!(
        page.json["jobs"].as_array().map(Vec::len),
        Some(2),
        "{}",
        page.text
    );
    check_reply(&doc, "GET", "/v1/jobs", &page);
    check_reply(
        &doc,
        "GET",
        "/v1/jobs",
        &client.get("/v1/jobs?limit=x").await,
    );
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

/// One request the document's examples make: the path with its parameters'
/// examples filled in, and a request body example with its content type.
struct Example {
    method: String,
    template: String,
    url: String,
    body: Option<(String, Vec<u8>)>,
}

/// Every request the document's examples describe: each operation with each
/// of its request body examples (or none, for an operation without a body),
/// path parameters filled with their examples. An operation whose body has
/// no example is a failure: the document must show how to call it.
fn examples(doc: &Value) -> Vec<Example> {
    let mut out = Vec::new();
    for (template, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            let mut url = template.clone();
            for p in op["parameters"].as_array().into_iter().flatten() {
                if p["in"] == "path" {
                    let name = p["name"].as_str().expect("name");
                    let example = p["example"]
                        .as_str()
                        .map(str::to_owned)
                        .or_else(|| p["example"].as_u64().map(|n| n.to_string()))
                        .unwrap_or_else(|| panic!("{method} {template}: {name} has no example"));
                    url = url.replace(&format!("{{{name}}}"), &example);
                }
            }
            let mut bodies = Vec::new();
            for (ct, media) in op["requestBody"]["content"]
                .as_object()
                .into_iter()
                .flatten()
            {
                let mut values: Vec<&Value> = media["examples"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(_, e)| &e["value"])
                    .collect();
                values.extend(media.get("example"));
                assert!(
                    !values.is_empty() || ct == "application/octet-stream",
                    "{method} {template}: the {ct} body has no example"
                );
                for v in values {
                    let bytes = match v {
                        Value::String(text) if !ct.contains("json") => text.clone().into_bytes(),
                        other => other.to_string().into_bytes(),
                    };
                    bodies.push(Some((ct.clone(), bytes)));
                }
            }
            if bodies.is_empty() {
                bodies.push(None);
            }
            for body in bodies {
                out.push(Example {
                    method: method.to_ascii_uppercase(),
                    template: template.clone(),
                    url: url.clone(),
                    body,
                });
            }
        }
    }
    // Creations first (a dataset the retrain example names), removals last.
    let rank = |m: &str| match m {
        "PUT" => 0,
        "DELETE" => 2,
        _ => 1,
    };
    out.sort_by_key(|e| rank(&e.method));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_in_the_document_gets_a_documented_answer() {
    let redis = RedisServer::start();
    let ns = unique_namespace("openapi-examples");
    let _worker = Worker::spawn(&redis.url(), &ns, &[]);
    let api = Api::spawn(&redis.url(), &ns, &[]);
    let client = api.client();
    client
        .wait_for_models(&["mlp128"], Duration::from_secs(30))
        .await;
    let doc = client.get("/openapi.json").await.json;

    let examples = examples(&doc);
    let operations: usize = doc["paths"]
        .as_object()
        .expect("paths")
        .values()
        .map(|item| item.as_object().map_or(0, |m| m.len()))
        .sum();
    assert!(examples.len() >= operations, "{} examples", examples.len());
    let mut refused = Vec::new();
    for ex in &examples {
        let mut req = client.http.request(
            ex.method.parse().expect("method"),
            format!("{}{}", client.base, ex.url),
        );
        if let Some((ct, bytes)) = &ex.body {
            req = req.header("content-type", ct).body(bytes.clone());
        }
        let reply = client.send(req).await;
        assert!(
            !reply.status.is_server_error(),
            "{} {}: {} {}",
            ex.method,
            ex.url,
            reply.status,
            reply.text
        );
        check_reply(&doc, &ex.method, &ex.template, &reply);
        // A body example shows how to call the operation: it must work. One
        // without a body may name what does not exist (a job id, say).
        if ex.body.is_some() && !reply.status.is_success() {
            refused.push(format!("{} {}: {}", ex.method, ex.url, reply.text));
        }
    }
    assert!(refused.is_empty(), "{refused:#?}");
}
