//! How protocol errors travel over HTTP: each [`ApiError`] kind has one status code, and the
//! client turns a status back into the same kind. The protocol itself knows no status codes.

use axum::http::StatusCode;
use bitnet_framework::protocol::ApiError;

/// The HTTP status of `error`.
pub fn status_of(error: &ApiError) -> StatusCode {
    match error {
        ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
        ApiError::NotFound(_) => StatusCode::NOT_FOUND,
        ApiError::Conflict(_) => StatusCode::CONFLICT,
        ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
        ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        ApiError::TooMany { .. } => StatusCode::TOO_MANY_REQUESTS,
        ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        ApiError::Transport(_) => StatusCode::BAD_GATEWAY,
    }
}

/// Rebuilds the error a server answered with `status` and `message` (and, for 429, the
/// `Retry-After` seconds).
pub fn error_from_status(status: u16, message: String, retry_after_secs: Option<u64>) -> ApiError {
    match status {
        429 => {
            ApiError::TooMany { reason: message, retry_after_secs: retry_after_secs.unwrap_or(1) }
        }
        401 => ApiError::Unauthorized(message),
        403 => ApiError::Forbidden(message),
        404 => ApiError::NotFound(message),
        409 => ApiError::Conflict(message),
        400 | 422 => ApiError::Invalid(message),
        413 => ApiError::TooLarge(message),
        503 => ApiError::Unavailable(message),
        500 => ApiError::Internal(message),
        _ => ApiError::Transport(format!("HTTP {status}: {message}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_kind_survives_the_round_trip() {
        let kinds = [
            ApiError::Unauthorized("m".into()),
            ApiError::Forbidden("m".into()),
            ApiError::NotFound("m".into()),
            ApiError::Conflict("m".into()),
            ApiError::Invalid("m".into()),
            ApiError::TooLarge("m".into()),
            ApiError::Unavailable("m".into()),
            ApiError::Internal("m".into()),
        ];
        for e in kinds {
            assert_eq!(error_from_status(status_of(&e).as_u16(), "m".into(), None), e);
        }
        let limited = ApiError::TooMany { reason: "m".into(), retry_after_secs: 7 };
        assert_eq!(status_of(&limited).as_u16(), 429);
        assert_eq!(error_from_status(429, "m".into(), Some(7)), limited);
        assert!(matches!(error_from_status(418, "m".into(), None), ApiError::Transport(_)));
    }
}
