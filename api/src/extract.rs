//! Request extractors whose rejections are [`ApiError`]s, so a bad request
//! never reaches the client as one of axum's plain-text rejections.

use axum::body::Bytes;
use axum::extract::{FromRef, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};

use crate::config::RequestLimits;
use crate::error::ApiError;

/// A request body declared as JSON, not yet parsed: the content type is
/// checked before anything is read, and the size is bounded by the router's
/// `DefaultBodyLimit`. Parsing is left to the handler, which knows when the
/// body is large enough to parse off the async executor.
pub(crate) struct JsonBody(pub Bytes);

impl<S> FromRequest<S> for JsonBody
where
    S: Send + Sync,
    RequestLimits: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        Bytes::from_request(req, state)
            .await
            .map(JsonBody)
            .map_err(|rejection| {
                if let Some(timeout) = crate::body_deadline::find_timeout(&rejection) {
                    ApiError::RequestTimeout(timeout.to_string())
                } else if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge(RequestLimits::from_ref(state).max_body_bytes)
                } else {
                    ApiError::MalformedJson("the request body could not be read".into())
                }
            })
    }
}

pub(crate) use crate::json_error::parse;

/// `application/json`, optionally with parameters such as `charset`.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// The single `{param}` of a route as a string. A segment that cannot be
/// percent-decoded to UTF-8 names no resource, hence 404.
pub(crate) struct PathParam(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|p| PathParam(p.0))
            .map_err(|_| ApiError::NotFound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(ct: Option<&'static str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(ct) = ct {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
        }
        h
    }

    #[test]
    fn content_type_must_be_json_parameters_allowed() {
        assert!(is_json(&headers(Some("application/json"))));
        assert!(is_json(&headers(Some("application/json; charset=utf-8"))));
        assert!(is_json(&headers(Some("Application/JSON"))));
        assert!(!is_json(&headers(Some("text/plain"))));
        assert!(!is_json(&headers(Some("application/jsonx"))));
        assert!(!is_json(&headers(None)));
    }

    #[test]
    fn syntax_errors_and_shape_errors_are_told_apart() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct T {
            a: Vec<f32>,
        }
        assert_eq!(
            parse::<T>(b"{").unwrap_err().code().as_str(),
            "malformed_json"
        );
        assert_eq!(
            parse::<T>(b"").unwrap_err().code().as_str(),
            "malformed_json"
        );
        assert_eq!(
            parse::<T>(br#"{"a":[1e400]}"#).unwrap_err().code().as_str(),
            "malformed_json"
        );
        assert_eq!(
            parse::<T>(br#"{"a":["x"]}"#).unwrap_err().code().as_str(),
            "invalid_input"
        );
        assert_eq!(
            parse::<T>(br#"{"a":[],"b":1}"#)
                .unwrap_err()
                .code()
                .as_str(),
            "invalid_input"
        );
        assert!(parse::<T>(br#"{"a":[1,2.5]}"#).is_ok());
    }
}
