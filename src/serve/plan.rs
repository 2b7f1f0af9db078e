//! The memory plan of a configuration on a card of the GPU profile table (`lorafuse plan
//! --gpu`), as JSON: the printed breakdown with the largest batch and resolution that fit,
//! the peak and the card's memory.

use serde_json::{json, Value};

use crate::backend::cuda::{DeviceLimits, USUAL_CARD};
use crate::config::TrainConfig;
use crate::plan::fit::fit;
use crate::plan::report::table;
use crate::plan::{plan, PlanInput};

/// The cards of the table: name, memory in bytes, why lorafuse cannot use it (if so), and
/// whether it is the one the form shows first ([`USUAL_CARD`]).
pub fn profiles() -> Value {
    let cards: Vec<Value> = DeviceLimits::profiles()
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "memory": c.memory,
                "unsupported": c.unsupported(),
                "usual": c.name == USUAL_CARD,
            })
        })
        .collect();
    Value::Array(cards)
}

/// The plan of `cfg` on the card `gpu` (its data folder scanned when it can be read).
pub fn plan_on(cfg: &TrainConfig, gpu: &str) -> Result<Value, String> {
    let card = DeviceLimits::profile(gpu).ok_or_else(|| {
        format!(
            "{gpu:?} is not a card lorafuse knows ({})",
            DeviceLimits::profile_names()
        )
    })?;
    if let Some(why) = card.unsupported() {
        return Err(why);
    }
    let cfg = &crate::train::fits::with_base_model_defaults(cfg);
    let input = match crate::train::trainer::scan_data(cfg) {
        Ok(ds) => PlanInput::with_dataset(cfg, ds),
        Err(_) => PlanInput::from_config(cfg, None),
    }
    .on(card.clone());
    let p = plan(&input).map_err(|e| e.to_string())?;
    let f = fit(&input, card.memory).map_err(|e| e.to_string())?;
    Ok(json!({
        "card": card.to_string(),
        "memory": card.memory,
        "peak": p.peak(),
        "fits": p.peak() <= card.memory,
        "table": table(&p, Some(&f)),
    }))
}
