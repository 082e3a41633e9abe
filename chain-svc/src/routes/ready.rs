//! `GET /readyz`: node reachable, our contract at the address, the signer able to pay for gas,
//! the outbox able to write.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{HttpResponse, web};
use alloy::primitives::U256;
use medchain_core::health::{Check, readiness};

use crate::chain::AuditChain;
use crate::configuration::SERVICE;
use crate::outbox::Outbox;

/// What `/readyz` checks.
#[derive(Debug)]
pub struct Readiness {
    pub chain: AuditChain,
    pub outbox: Arc<Outbox>,
    pub min_balance: U256,
    pub timeout: Duration,
}

/// `GET /readyz`: node reachable, our contract at the address, the signer able to pay for gas,
/// the outbox able to write.
pub async fn readyz(r: web::Data<Readiness>) -> HttpResponse {
    let outbox = r.outbox.clone();
    let outbox = match tokio::task::spawn_blocking(move || outbox.health()).await {
        Ok(res) => res.map(|()| "writable".to_string()),
        Err(e) => Err(format!("outbox check failed: {e}")),
    };
    let code = match tokio::time::timeout(r.timeout, r.chain.check_code()).await {
        Ok(res) => res.map_err(|e| e.to_string()),
        Err(_) => Err("the chain node did not answer in time".to_string()),
    };
    let balance = match tokio::time::timeout(r.timeout, r.chain.signer_balance()).await {
        Ok(Ok(b)) if b >= r.min_balance => Ok(format!("{} holds {b} wei", r.chain.signer())),
        Ok(Ok(b)) => Err(format!(
            "signer {} holds {b} wei, below the {} wei it needs to pay for records",
            r.chain.signer(),
            r.min_balance
        )),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the chain node did not answer in time".to_string()),
    };
    let check = |name: &str, res: Result<String, String>| Check {
        name: name.into(),
        ok: res.is_ok(),
        detail: res.unwrap_or_else(|e| e),
    };
    readiness(
        SERVICE,
        vec![
            check(
                "contract",
                code.map(|()| format!("MedchainAudit at {}", r.chain.contract())),
            ),
            check("signer_funds", balance),
            check("outbox", outbox),
        ],
    )
}
