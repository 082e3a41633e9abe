//! `POST /v1/predict/tabular`: a JSON record of the card's features.

use actix_web::{HttpRequest, HttpResponse, web};

use crate::explain::Explained;
use crate::inputs::tabular as input;
use crate::prediction::Prediction;
use crate::state::DiseaseModels;
use medchain_core::audit;
use medchain_core::error::{ApiError, ApiResult};
use medchain_core::request::JsonBytes;

/// `POST /v1/predict/tabular`
pub(super) async fn predict(
    req: HttpRequest,
    models: web::Data<DiseaseModels>,
    body: JsonBytes,
) -> ApiResult<HttpResponse> {
    let model = &models.tabular;
    let card = model.card()?;
    let input = input::parse(card, &body.0)?;
    // Only a prediction with a patient id is recorded, so only it needs the input's digest.
    let audit_input = match &input.patient_id {
        Some(pid) => {
            let canonical = audit::canonical_features(&input.canonical(card))
                .map_err(|k| ApiError::Internal(anyhow::anyhow!("feature `{k}` not canonical")))?;
            Some((pid.clone(), audit::sha256(&canonical)))
        }
        None => None,
    };
    let permit = model.admit()?;
    let n = input.features.len() as i64;
    let output = card
        .probabilities_output()
        .unwrap_or("probabilities")
        .to_string();
    let (probs, ms) = crate::inference::run_one(
        model,
        &permit,
        vec![1, n],
        input.tensor_data(card),
        card.input.name.clone(),
        output,
    )
    .await?;
    drop(permit);
    let probs = probs.into_iter().map(f64::from).collect();
    let mut p = Prediction::new(card, probs, ms, None)?;
    p.explanation = model.explainer().map(|explainer| match explainer {
        Ok(e) => Explained::Tabular(e.tabular(card, &input.features)),
        Err(unavailable) => Explained::Unavailable { unavailable },
    });
    let p = crate::inference::record(&req, &models, p, audit_input).await;
    Ok(HttpResponse::Ok().json(p))
}
