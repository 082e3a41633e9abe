//! `GET /api/v1/whoami`.

use actix_web::{HttpMessage, HttpRequest, HttpResponse};
use medchain_core::error::ApiError;

use super::table::ROUTES;
use crate::callers::Caller;

/// `GET /whoami`: the signed-in caller (id and role) and what the role may call.
pub(super) async fn whoami(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let caller = req.extensions().get::<Caller>().cloned();
    let caller = caller.ok_or_else(|| ApiError::Unauthorized("sign in first".into()))?;
    let may: Vec<String> = ROUTES
        .iter()
        .filter(|r| r.roles.contains(&caller.role))
        .map(|r| format!("{} /api/v1{}", r.method, r.path))
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "id": caller.id,
        "role": caller.role,
        "may": may,
    })))
}
