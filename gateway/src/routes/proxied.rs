//! A route of the table, served: the caller's role checked, the request streamed to its
//! upstream, and `/models` cut down to what a caller who is not an admin may see.

use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use medchain_core::error::ApiError;

use super::table::Route;
use crate::Gateway;
use crate::callers::{Caller, Role};
use crate::proxy;

pub(super) async fn handle(
    route: &'static Route,
    req: HttpRequest,
    payload: web::Payload,
    g: web::Data<Gateway>,
) -> Result<HttpResponse, ApiError> {
    // Authenticated by the edge (`cors_and_limits`); here: may this caller do this?
    let caller = req.extensions().get::<Caller>().cloned();
    let Some(caller) = caller else {
        return Err(ApiError::Unauthorized("sign in first".into()));
    };
    if !route.roles.contains(&caller.role) {
        metrics::counter!(medchain_core::metrics::name("forbidden_total"), "role" => caller.role.as_str())
            .increment(1);
        let who: Vec<&str> = route.roles.iter().map(|r| r.as_str()).collect();
        return Err(ApiError::Forbidden(format!(
            "{} {} is for the {} role{}; `{}` is signed in as {}",
            route.method,
            route.path,
            who.join(" or "),
            if who.len() > 1 { "s" } else { "" },
            caller.id,
            caller.role
        )));
    }
    let target = route.target_for(&req);
    let res = proxy::forward(
        &g.proxy,
        g.upstream(route.upstream),
        route.policy(&g),
        &req,
        payload,
        &target,
    )
    .await?;
    // Model state tells an admin everything (files, download hosts, failure reasons, memory);
    // everyone else learns what is loaded, not where it lives or why it failed.
    if route.target == "/models" && caller.role != Role::Admin && res.status().is_success() {
        let status = res.status();
        // Model state is a few KB; an upstream answering more is not read further.
        let body = actix_web::body::to_bytes_limited(res.into_body(), 1 << 20)
            .await
            .map_err(|_| ApiError::Internal(anyhow::anyhow!("/models is over 1 MiB")))?
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("reading /models: {e}")))?;
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("/models is not JSON: {e}")))?;
        return Ok(HttpResponse::build(status).json(public_models(&v)));
    }
    Ok(res)
}

/// What a disease service's `/models` says to a caller who is not an admin.
fn public_models(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::{Value, json};
    const KEPT: [&str; 8] = [
        "key",
        "state",
        "model_id",
        "version",
        "sha256",
        "demo",
        "waiting",
        "max_waiting",
    ];
    let models: Vec<Value> = v["models"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let mut out = serde_json::Map::new();
            for k in KEPT {
                if let Some(x) = m.get(k) {
                    out.insert(k.into(), x.clone());
                }
            }
            if m.get("reason").is_some() {
                out.insert(
                    "reason".into(),
                    json!("the model could not be loaded; an admin sees why"),
                );
            }
            Value::Object(out)
        })
        .collect();
    json!({"service": v["service"], "disease": v["disease"], "models": models})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_state_in_public_says_what_not_where_or_why() {
        let full = serde_json::json!({
            "service": "diabetes-svc", "disease": "diabetes", "onnxruntime_loaded": true,
            "memory": {"rss_bytes": 1}, "image_memory": {},
            "models": [{"key": "retina", "state": "failed", "reason": "download from https://models.internal/x failed",
                        "file": "/srv/models/retina.onnx", "source": "https://models.internal/x",
                        "model_id": "m", "version": "1", "sha256": "ab", "demo": true,
                        "load_ms": 5.0, "rss_added_bytes": 9, "waiting": 0, "max_waiting": 8}],
        });
        let public = public_models(&full);
        let text = public.to_string();
        for hidden in [
            "/srv/models",
            "models.internal",
            "rss_bytes",
            "onnxruntime_loaded",
            "load_ms",
        ] {
            assert!(!text.contains(hidden), "{hidden} in {text}");
        }
        assert_eq!(public["models"][0]["state"], "failed");
        assert_eq!(public["models"][0]["model_id"], "m");
        assert!(public["models"][0]["reason"].is_string());
    }
}
