//! `POST /v1/models/{model}/retrain`: queue a `retrain` job. Everything the
//! API can check is checked here, so a request that could never train is a
//! 4xx now rather than a failed job later: the parameters (ranges, unknown
//! keys), the dataset's existence and its columns, or inline rows parsed in
//! full. The job travels on the training stream; a worker's training slot
//! runs it (`worker::retrain`) and reports progress and the outcome on
//! `GET /v1/jobs/{id}`.
//!
//! The model need not exist: retraining an unknown name creates its first
//! version (promoted, since there is nothing to compare it with).

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;
use shared::digest::sha256_hex;
use shared::model::valid_model_name;
use shared::queue::datasets;
use shared::queue::wire::{PromotePolicy, RetrainSpec, TrainerKind, TrainingData};
use trainer::{InlineRows, TrainParams};
use utoipa::PartialSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Schema, SchemaType, Type};

use crate::auth::Tenant;
use crate::config::RequestLimits;
use crate::error::ApiError;
use crate::extract::{self, JsonBody, PathParam};
use crate::metrics::{redis_failed, redis_op};
use crate::paths;
use crate::queue::Queue;
use crate::routes::datasets::dataset_key;
use crate::schema::{Choice, exactly_one_of, nullable_ref};
use crate::submit::{Submission, Work};
use crate::tenants::Policies;
use crate::text::clip;

/// `POST /v1/models/{model}/retrain` body. Every field may be `null`,
/// meaning absent; exactly one of `dataset` and `data` must be given.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RetrainRequest {
    dataset: Option<String>,
    data: Option<InlineRows>,
    /// Parsed on its own, so its errors are named `params.<field>`.
    params: Option<serde_json::Value>,
    promote: Option<PromotePolicy>,
    trainer: Option<TrainerKind>,
    webhook: Option<String>,
    webhook_events_filter: Option<Vec<shared::queue::webhooks::Event>>,
}

/// Written out rather than derived: a derive cannot say "exactly one of
/// `dataset` and `data`", and a schema that allowed `{}` would promise what
/// the handler refuses.
impl PartialSchema for RetrainRequest {
    fn schema() -> RefOr<Schema> {
        let fields = ObjectBuilder::new()
            .property(
                "dataset",
                ObjectBuilder::new()
                    .schema_type(SchemaType::Array(vec![Type::String, Type::Null]))
                    .min_length(Some(1))
                    .max_length(Some(shared::model::MAX_NAME_LEN))
                    .pattern(Some(shared::model::NAME_PATTERN))
                    .description(Some("A stored dataset's name (`PUT /v1/datasets/{name}`)")),
            )
            .property(
                "data",
                nullable_ref(
                    "InlineRows",
                    "Inline rows: one number per column, in the order of `columns`",
                ),
            )
            .property(
                "params",
                nullable_ref(
                    "TrainParams",
                    "Training parameters; every field has a default",
                ),
            )
            .property(
                "promote",
                nullable_ref(
                    "PromotePolicy",
                    "When the new version becomes current; default `if_not_worse`",
                ),
            )
            .property(
                "trainer",
                nullable_ref("TrainerKind", "Which program trains; default `builtin`"),
            )
            .property(
                "webhook",
                ObjectBuilder::new()
                    .schema_type(SchemaType::Array(vec![Type::String, Type::Null]))
                    .max_length(Some(crate::webhooks::guard::MAX_URL_BYTES))
                    .description(Some("An http or https URL to call, signed, on the job's events (see `webhook_events_filter`); without it, the tenant's default webhook")),
            )
            .property(
                "webhook_events_filter",
                utoipa::openapi::schema::ArrayBuilder::new()
                    .schema_type(SchemaType::Array(vec![Type::Array, Type::Null]))
                    .items(utoipa::openapi::Ref::from_schema_name("Event"))
                    .min_items(Some(1))
                    .description(Some("Which events call the webhook: `start`, `progress` (each epoch), `completed`; default `[completed]`")),
            )
            .additional_properties(Some(AdditionalProperties::FreeForm(false)));
        exactly_one_of(
            fields,
            [
                Choice {
                    field: "dataset",
                    json_type: Type::String,
                    title: "From a stored dataset",
                },
                Choice {
                    field: "data",
                    json_type: Type::Object,
                    title: "From inline rows",
                },
            ],
            "Exactly one of `dataset` (a stored dataset) or `data` (inline rows). `null` is the same as leaving a field out; unknown fields are refused.",
        )
    }
}

impl utoipa::ToSchema for RetrainRequest {
    fn schemas(out: &mut Vec<(String, RefOr<Schema>)>) {
        out.push(("InlineRows".into(), InlineRows::schema()));
        out.push(("TrainParams".into(), TrainParams::schema()));
        out.push(("PromotePolicy".into(), PromotePolicy::schema()));
        out.push(("TrainerKind".into(), TrainerKind::schema()));
        out.push(("Event".into(), shared::queue::webhooks::Event::schema()));
        <TrainParams as utoipa::ToSchema>::schemas(out);
    }
}

/// Columns listed in an error message, at most.
const COLUMNS_SHOWN: usize = 12;

#[utoipa::path(
    post,
    path = paths::RETRAIN,
    tag = "training",
    summary = "Retrain a model (a background job)",
    description = "Queues a `retrain` job on the training stream. A worker trains (built-in logistic/ridge regression, or the worker's `--external-trainer`), loads the new ONNX model in ONNX Runtime, scores it and the current version (if it has the same signature) on the same holdout rows, registers it as a `ready` version (source `retrain`) and promotes it by the `promote` policy. Poll the job: `progress` while it runs, `result` (`RetrainResult`) when it ends. An unknown model name creates the model.",
    params(
        ("model" = String, Path, description = "Model name (need not exist yet)", example = "iris_classifier"),
        crate::submit::SubmitHeaders,
    ),
    request_body(content = RetrainRequest, content_type = "application/json",
        examples(
            ("dataset" = (summary = "Train on a stored dataset", value = json!({
                "dataset": "iris",
                "params": {"target_column": "species", "epochs": 50},
                "promote": "if_not_worse"
            }))),
            ("inline" = (summary = "Train on rows sent inline", value = json!({
                "data": {
                    "columns": ["x1", "x2", "target"],
                    "rows": [[0.5, 1.0, 0], [1.5, -2.0, 1], [0.2, 0.8, 0], [1.9, -1.5, 1], [0.4, 1.2, 0], [1.7, -2.2, 1], [0.1, 0.9, 0], [1.6, -1.8, 1], [0.3, 1.1, 0], [1.8, -2.1, 1]]
                },
                "params": {"epochs": 20},
                "promote": "never"
            }))),
        )),
    responses(
        (status = 202, description = "Queued", body = crate::submit::AcceptedBody<'static>,
            headers(("Location" = String, description = "The job's status URL"))),
        (status = 400, description = "`malformed_json` or `invalid_idempotency_key`", body = crate::error::Body<'static>),
        (status = 404, description = "`dataset_not_found` or `model_not_found` (an invalid model name)", body = crate::error::Body<'static>),
        (status = 413, description = "`payload_too_large`: over `--max-body-bytes`", body = crate::error::Body<'static>),
        (status = 415, description = "`unsupported_media_type`", body = crate::error::Body<'static>),
        (status = 422, description = "`invalid_input` (both or neither of `dataset`/`data`, an unknown or out-of-range parameter, a target column the dataset lacks), `invalid_dataset` (inline rows that do not parse), `training_budget_exceeded` (epochs × rows × features over `--max-train-work`) or `idempotency_key_reused`", body = crate::error::Body<'static>),
        (status = 429, description = "`queue_full`: the training queue holds `--max-queue-depth` unfinished jobs; `tenant_queue_full`, `rate_limited` or `tenant_concurrency_limit`", body = crate::error::Body<'static>),
    )
)]
pub(crate) async fn retrain(
    State(queue): State<Queue>,
    State(policies): State<Arc<Policies>>,
    State(limits): State<RequestLimits>,
    Extension(tenant): Extension<Tenant>,
    PathParam(public): PathParam,
    headers: HeaderMap,
    body: Result<JsonBody, ApiError>,
) -> Result<Response, ApiError> {
    if !valid_model_name(&public) {
        return Err(ApiError::ModelNotFound(clip(&public)));
    }
    let mut submission = Submission::begin(queue.keys(), &tenant, &public, &headers)?;
    let JsonBody(body) = body?;
    let mut req: RetrainRequest = extract::parse(&body)?;
    submission.set_webhook(
        crate::webhooks::WebhookFields {
            webhook: req.webhook.take(),
            webhook_events_filter: req.webhook_events_filter.take(),
        }
        .subscription(queue.policy().webhook_allow_private)?,
    );
    let params: TrainParams = match req.params {
        Some(mut v) => {
            crate::whole::normalize(&mut v);
            crate::json_error::from_value("params", v)?
        }
        None => TrainParams::default(),
    };
    let (promote, trainer) = (
        req.promote.unwrap_or_default(),
        req.trainer.unwrap_or_default(),
    );
    params
        .validate()
        .map_err(|e| ApiError::InvalidInput(e.to_string()))?;

    let (data, source) = match (req.dataset, req.data) {
        (Some(public_ds), None) => {
            let name = dataset_key(&tenant, &public_ds)?;
            let mut conn = queue.conn();
            let meta = datasets::meta(&mut conn, queue.keys(), &name)
                .await
                .map_err(redis_failed(redis_op::DATASETS))?
                .ok_or_else(|| ApiError::DatasetNotFound(public_ds.clone()))?;
            if !meta.columns.contains(&params.target_column) {
                let mut shown: Vec<String> = meta
                    .columns
                    .iter()
                    .take(COLUMNS_SHOWN)
                    .map(|c| format!("{c:?}"))
                    .collect();
                if meta.columns.len() > COLUMNS_SHOWN {
                    shown.push(format!("... {} more", meta.columns.len() - COLUMNS_SHOWN));
                }
                return Err(ApiError::InvalidInput(format!(
                    "target_column {:?} is not a column of dataset {public_ds:?} (columns: {})",
                    params.target_column,
                    shown.join(", ")
                )));
            }
            let features = meta.columns.len().saturating_sub(1);
            params
                .check_work(meta.rows as usize, features, limits.max_train_work)
                .map_err(|e| ApiError::TrainingBudget(e.to_string()))?;
            (TrainingData::Dataset(name), public_ds)
        }
        (None, Some(rows)) => {
            let (check, max_work) = (params.clone(), limits.max_train_work);
            let csv = tokio::task::spawn_blocking(move || {
                let ds = rows
                    .into_dataset(&check.target_column)
                    .map_err(|e| ApiError::InvalidDataset(e.to_string()))?;
                check
                    .check_work(ds.n_rows(), ds.n_features(), max_work)
                    .map_err(|e| ApiError::TrainingBudget(e.to_string()))?;
                let all: Vec<usize> = (0..ds.n_rows()).collect();
                String::from_utf8(ds.to_csv(&all))
                    .map_err(|e| ApiError::Internal(anyhow::anyhow!("inline rows as CSV: {e}")))
            })
            .await
            .map_err(|e| ApiError::Internal(e.into()))??;
            (TrainingData::InlineCsv(csv), "inline".to_owned())
        }
        _ => {
            return Err(ApiError::InvalidInput(
                "give exactly one of \"dataset\" (a stored dataset's name) or \"data\" ({\"columns\": [...], \"rows\": [[...]]})".into(),
            ));
        }
    };

    let params_json = serde_json::to_string(&params)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("encoding params: {e}")))?;
    let body_hash = submission.wants_body_hash().then(|| sha256_hex(&body));
    let span = submission.span().clone();
    let trace_id = submission.trace_id();
    let spec = RetrainSpec {
        data,
        params_json,
        promote,
        trainer,
        quota: Some(policies.of(tenant.name()).registry_limits()),
    };
    let accepted = submission
        .enqueue(&queue, &policies, &tenant, Work::Retrain(spec), body_hash)
        .await?;
    if !accepted.replayed {
        span.in_scope(|| {
            tracing::info!(
                trace_id,
                dataset = source,
                trainer = trainer.as_str(),
                promote = promote.as_str(),
                "retrain job queued"
            )
        });
    }
    Ok(accepted.into_response())
}
