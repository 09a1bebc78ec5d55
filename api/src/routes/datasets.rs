//! Training datasets over HTTP, per tenant: upload (`PUT`, CSV), read the
//! metadata, list, delete. Storage is [`shared::queue::datasets`]; retrain
//! jobs ([`super::retrain`]) name a dataset and a worker reads it when the
//! job starts.
//!
//! An upload is parsed before it is stored (on the blocking pool: a large
//! file takes tens of milliseconds), so a file that could never be trained
//! on is refused at once with the line and column at fault, instead of
//! failing a retrain job later. Every column must be numeric: any of them
//! may become the target.

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use shared::metric_names::redis_op;
use shared::queue::datasets::{self, DatasetMeta};
use shared::time::rfc3339_ms;

use crate::auth::Tenant;
use crate::config::RequestLimits;
use crate::error::ApiError;
use crate::extract::PathParam;
use crate::metrics::redis_failed;
use crate::paths;
use crate::queue::Queue;
use crate::tenants::Policies;
use crate::text::clip;

/// A stored dataset as clients see it.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct DatasetView {
    name: String,
    /// Data rows (the header not counted).
    rows: u64,
    /// Column names in file order.
    columns: Vec<String>,
    /// Bytes stored.
    size: u64,
    /// SHA-256 of the bytes (hex); a retrain job's result names the hash
    /// it trained on.
    sha256: String,
    #[schema(format = DateTime)]
    created_at: String,
}

impl DatasetView {
    fn new(name: &str, meta: DatasetMeta) -> DatasetView {
        DatasetView {
            name: name.to_owned(),
            rows: meta.rows,
            columns: meta.columns,
            size: meta.size,
            sha256: meta.sha256,
            created_at: rfc3339_ms(meta.created_at_ms),
        }
    }
}

/// A `PUT /v1/datasets/{name}` body: CSV text, a header row and at least
/// one data row.
pub(crate) struct CsvBody;

impl utoipa::PartialSchema for CsvBody {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .min_length(Some(3))
            .into()
    }
}

impl utoipa::ToSchema for CsvBody {}

/// `GET /v1/datasets` body.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct DatasetList {
    datasets: Vec<DatasetView>,
}

/// The internal (tenant-qualified) name of a dataset; an invalid name is a
/// dataset that cannot exist.
pub(crate) fn dataset_key(tenant: &Tenant, public: &str) -> Result<String, ApiError> {
    tenant
        .qualify(public)
        .ok_or_else(|| ApiError::DatasetNotFound(clip(public)))
}

fn is_csv(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim)
        .is_some_and(|v| {
            v.eq_ignore_ascii_case("text/csv") || v.eq_ignore_ascii_case("application/csv")
        })
}

/// Checks that every column is numeric and returns the header and the
/// number of data rows. The first column stands in as the target: the
/// parser checks the target like the features. Only the header record is
/// read to find it; the rows are parsed once.
fn inspect(bytes: &[u8]) -> Result<(Vec<String>, u64), ApiError> {
    let invalid = |e: trainer::DatasetError| ApiError::InvalidDataset(e.to_string());
    let header = trainer::dataset::read_header(bytes).map_err(invalid)?;
    let first_column = header.first().map(String::as_str).unwrap_or_default();
    let ds = trainer::Dataset::from_csv(bytes, first_column).map_err(invalid)?;
    let mut columns = vec![ds.target_name().to_owned()];
    columns.extend(ds.feature_names().iter().cloned());
    Ok((columns, ds.n_rows() as u64))
}

#[utoipa::path(
    put,
    path = paths::DATASET,
    tag = "training",
    summary = "Upload (or replace) a dataset",
    description = "CSV with a header row; every column must hold a finite number in every row (any column may become the target). Parsed before it is stored, in Redis, per tenant. A retrain job reads the dataset when it starts.",
    params(("name" = String, Path, description = "Dataset name (`[A-Za-z0-9_.-]`, at most 128 bytes, not starting with a dot)", example = "iris")),
    request_body(content = CsvBody, content_type = "text/csv", description = "The CSV file, at most `--max-dataset-bytes`",
        example = "sepal_length,sepal_width,petal_length,petal_width,species\n5.1,3.5,1.4,0.2,0\n4.9,3.0,1.4,0.2,0\n4.7,3.2,1.3,0.2,0\n7.0,3.2,4.7,1.4,1\n6.4,3.2,4.5,1.5,1\n6.9,3.1,4.9,1.5,1\n6.3,3.3,6.0,2.5,2\n5.8,2.7,5.1,1.9,2\n7.1,3.0,5.9,2.1,2\n5.0,3.6,1.4,0.2,0\n"),
    responses(
        (status = 201, description = "Stored", body = DatasetView,
            headers(("Location" = String, description = "`/v1/datasets/{name}`"))),
        (status = 200, description = "Replaced an existing dataset", body = DatasetView),
        (status = 404, description = "`dataset_not_found`: the name is not a valid dataset name", body = crate::error::Body<'static>),
        (status = 413, description = "`payload_too_large`: over `--max-dataset-bytes`", body = crate::error::Body<'static>),
        (status = 415, description = "`unsupported_media_type`: the body must be `text/csv`", body = crate::error::Body<'static>),
        (status = 403, description = "`quota_exceeded`: the tenant's datasets, or their bytes, would go past its quota (`--tenants-file`)", body = crate::error::Body<'static>),
        (status = 422, description = "`invalid_dataset`: the message names the line and column at fault, or the limit (10,000 columns, lines of 1 MiB) the file is over", body = crate::error::Body<'static>),
    )
)]
pub(crate) async fn put(
    State(queue): State<Queue>,
    State(policies): State<Arc<Policies>>,
    State(limits): State<RequestLimits>,
    Extension(tenant): Extension<Tenant>,
    PathParam(public): PathParam,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let name = dataset_key(&tenant, &public)?;
    if !is_csv(&headers) {
        return Err(ApiError::NotCsv);
    }
    let limit = limits.max_dataset_bytes;
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::PayloadTooLarge(limit))?;
    if bytes.is_empty() {
        return Err(ApiError::InvalidDataset("the dataset is empty".into()));
    }
    let checked = bytes.clone();
    let (columns, rows) = tokio::task::spawn_blocking(move || inspect(&checked))
        .await
        .map_err(|e| ApiError::Internal(e.into()))??;
    let meta = DatasetMeta {
        sha256: shared::digest::sha256_hex(&bytes),
        size: bytes.len() as u64,
        rows,
        columns,
        created_at_ms: shared::time::now_ms(),
    };
    let quota = policies.of(tenant.name()).dataset_quota();
    let mut conn = queue.conn();
    let stored = datasets::put(&mut conn, queue.keys(), &name, &bytes, &meta, quota)
        .await
        .map_err(redis_failed(redis_op::DATASETS))?;
    let replaced = match stored {
        datasets::Stored::Created => false,
        datasets::Stored::Replaced => true,
        datasets::Stored::OverQuota(q) => return Err(ApiError::over_quota(q)),
    };
    tracing::info!(
        dataset = name,
        rows,
        size = bytes.len(),
        replaced,
        "dataset stored"
    );
    let status = if replaced {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let location = format!("/v1/datasets/{public}");
    Ok((
        status,
        [(header::LOCATION, location)],
        Json(DatasetView::new(&public, meta)),
    )
        .into_response())
}

#[utoipa::path(
    get,
    path = paths::DATASET,
    tag = "training",
    summary = "A dataset's metadata",
    params(("name" = String, Path, description = "Dataset name", example = "iris")),
    responses(
        (status = 200, description = "The dataset", body = DatasetView),
        (status = 404, description = "`dataset_not_found`", body = crate::error::Body<'static>),
    )
)]
pub(crate) async fn get_one(
    State(queue): State<Queue>,
    Extension(tenant): Extension<Tenant>,
    PathParam(public): PathParam,
) -> Result<Response, ApiError> {
    let name = dataset_key(&tenant, &public)?;
    let mut conn = queue.conn();
    match datasets::meta(&mut conn, queue.keys(), &name)
        .await
        .map_err(redis_failed(redis_op::DATASETS))?
    {
        Some(meta) => Ok(Json(DatasetView::new(&public, meta)).into_response()),
        None => Err(ApiError::DatasetNotFound(public)),
    }
}

#[utoipa::path(
    get,
    path = paths::DATASETS,
    tag = "training",
    summary = "The caller's datasets",
    responses(
        (status = 200, description = "Sorted by name", body = DatasetList),
    )
)]
pub(crate) async fn list(
    State(queue): State<Queue>,
    Extension(tenant): Extension<Tenant>,
) -> Result<Response, ApiError> {
    let mut conn = queue.conn();
    let all = datasets::list(&mut conn, queue.keys(), |n| tenant.public_name(n).is_some())
        .await
        .map_err(redis_failed(redis_op::DATASETS))?;
    let datasets = all
        .into_iter()
        .filter_map(|(n, meta)| tenant.public_name(&n).map(|p| DatasetView::new(p, meta)))
        .collect();
    Ok(Json(DatasetList { datasets }).into_response())
}

#[utoipa::path(
    delete,
    path = paths::DATASET,
    tag = "training",
    summary = "Delete a dataset",
    description = "Retrain jobs that already read it are not affected; queued ones naming it fail `dataset_not_found`.",
    params(("name" = String, Path, description = "Dataset name", example = "iris")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "`dataset_not_found`", body = crate::error::Body<'static>),
    )
)]
pub(crate) async fn delete(
    State(queue): State<Queue>,
    Extension(tenant): Extension<Tenant>,
    PathParam(public): PathParam,
) -> Result<Response, ApiError> {
    let name = dataset_key(&tenant, &public)?;
    let mut conn = queue.conn();
    if datasets::delete(&mut conn, queue.keys(), &name)
        .await
        .map_err(redis_failed(redis_op::DATASETS))?
    {
        tracing::info!(dataset = name, "dataset deleted");
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::DatasetNotFound(public))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_column_is_checked_and_listed_in_file_order() {
        let (cols, rows) = inspect(b"a,b,target\n1,2,0\n3,4,1\n").unwrap();
        assert_eq!(cols, ["a", "b", "target"]);
        assert_eq!(rows, 2);
        let err = inspect(b"a,b,target\n1,2,0\nx,4,1\n").unwrap_err();
        assert_eq!(err.code().as_str(), "invalid_dataset");
        let msg = err.to_string();
        assert!(msg.contains("line 3") && msg.contains("\"a\""), "{msg}");
        assert!(
            inspect(b"only\n1\n").is_err(),
            "one column cannot be trained on"
        );
        let err = inspect(b"\n\r\n").unwrap_err();
        assert_eq!(err.code().as_str(), "invalid_dataset");
        assert!(err.to_string().contains("header row is required"), "{err}");
        // A BOM and a quoted field over two lines, as spreadsheets write them.
        let (cols, rows) = inspect(b"\xEF\xBB\xBFa,y\n\"1\n\",0\n2,1\n").unwrap();
        assert_eq!((cols, rows), (vec!["a".to_owned(), "y".to_owned()], 2));
    }
}
