//! Recorder management (admins, through the gateway): which accounts the audit contract lets
//! record, granted and revoked with this service's key, which must be the contract's admin.
//! `GET /v1/recorders/{address}` and `POST /v1/recorders/{address}` `{"recorder": bool}`.

use actix_web::{HttpRequest, HttpResponse, web};
use alloy::primitives::Address;
use medchain_core::auth;
use medchain_core::error::{ApiError, ApiResult};
use medchain_core::request::ValidJson;
use serde::Deserialize;
use serde_json::json;

use super::records::{RecordsState, within_read_timeout};
use crate::chain::ChainError;

/// The caller must be an admin (as the gateway names them), or the operator in open mode.
fn admin_only(req: &HttpRequest) -> ApiResult<String> {
    match auth::named_caller(req, "recorders are managed")? {
        None => Ok("operator".into()),
        Some((id, role)) if role == "admin" => Ok(id),
        Some((_, role)) => Err(ApiError::Forbidden(format!(
            "recorders are managed by admins; the {role} role may not"
        ))),
    }
}

fn address(raw: &str) -> ApiResult<Address> {
    raw.parse::<Address>().map_err(|_| {
        ApiError::invalid(
            "address",
            "`address` must be an account address: 0x and 40 hex digits",
        )
    })
}

fn chain_error(e: ChainError) -> ApiError {
    match e {
        ChainError::NotAdmin(signer) => ApiError::Conflict(format!(
            "this service's signer {signer} is not the contract's admin, so it cannot manage \
             recorders; the admin account must"
        )),
        ChainError::Invalid(reason) => ApiError::invalid("address", reason),
        other => ApiError::unavailable(format!("cannot reach the chain: {other}"), Some(5)),
    }
}

/// `GET /v1/recorders/{address}`: whether the account may record, and who the admin is.
pub async fn status(
    req: HttpRequest,
    state: web::Data<RecordsState>,
    raw: web::Path<String>,
) -> ApiResult<HttpResponse> {
    admin_only(&req)?;
    let account = address(&raw)?;
    let (recorder, admin) = within_read_timeout(&state, state.chain.recorder_status(account))
        .await?
        .map_err(chain_error)?;
    Ok(HttpResponse::Ok().json(json!({
        "address": account,
        "recorder": recorder,
        "admin": admin,
        "signer": state.chain.signer(),
        "contract": state.contract,
        "chain_id": state.chain_id,
    })))
}

/// The body of a recorder change.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    /// `true` grants the role, `false` revokes it.
    pub recorder: bool,
}

/// `POST /v1/recorders/{address}` `{"recorder": bool}`: sends the grant or revocation; `202`
/// with the transaction hash once the node has it (it takes effect when mined: read it back).
pub async fn change(
    req: HttpRequest,
    state: web::Data<RecordsState>,
    raw: web::Path<String>,
    body: ValidJson<Change>,
) -> ApiResult<HttpResponse> {
    let who = admin_only(&req)?;
    let account = address(&raw)?;
    let on = body.0.recorder;
    let tx = within_read_timeout(&state, state.chain.set_recorder(account, on))
        .await?
        .map_err(chain_error)?;
    tracing::info!(target: "medchain::access", caller = %who, %account, recorder = on, %tx, "recorder changed");
    Ok(HttpResponse::Accepted().json(json!({
        "address": account,
        "recorder": on,
        "tx_hash": tx,
        "contract": state.contract,
        "chain_id": state.chain_id,
    })))
}
