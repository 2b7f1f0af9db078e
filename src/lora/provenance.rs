//! Which tool wrote a LoRA file, read from its metadata (for `inspect`): the trainer, and
//! what a later tool did to it (a resize, a merge). The marks are the keys each tool writes:
//! lorafuse its `lorafuse.*` keys; sd-scripts' train_network.py a session id and its
//! `ss_network_module`; its extract_lora_from_models.py only the minimum `ss_*` keys and the
//! model spec; resize_lora.py (and `lorafuse resize`) a `ss_training_comment` beginning
//! "dimension is resized"; merges `modelspec.merged_from`.

use std::collections::BTreeMap;

/// One line saying who wrote the file and what was done to it since.
pub fn written_by(meta: &BTreeMap<String, String>) -> String {
    if meta.is_empty() {
        return "unknown (the file has no metadata)".into();
    }
    let get = |k: &str| meta.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let module = get("ss_network_module");
    let implementation = get("modelspec.implementation_version");
    let lorafuse = meta.keys().any(|k| k.starts_with("lorafuse."))
        || implementation.is_some_and(|v| v.starts_with("lorafuse/"));
    let mut line = if lorafuse {
        match implementation.and_then(|v| v.strip_prefix("lorafuse/")) {
            Some(version) => format!("lorafuse {version}"),
            None => "lorafuse".into(),
        }
    } else {
        let network = match module {
            Some("networks.lora") => "LoRA".to_string(),
            Some("lycoris.kohya") => {
                let algo = get("ss_network_args")
                    .and_then(|a| serde_json::from_str::<serde_json::Value>(a).ok())
                    .and_then(|a| a.get("algo").and_then(|v| v.as_str()).map(String::from))
                    .unwrap_or_else(|| "lora".into());
                format!("LyCORIS {algo}")
            }
            Some("networks.dylora") => "DyLoRA".to_string(),
            Some(other) => other.to_string(),
            None => String::new(),
        };
        match (module, get("ss_session_id")) {
            (Some(m), Some(_)) => format!("kohya's sd-scripts train_network.py ({network}, {m})"),
            (Some(m), None) => format!(
                "a tool writing sd-scripts' minimal metadata ({network}, {m}; e.g. \
                 extract_lora_from_models.py or merge_lora.py)"
            ),
            (None, _) if implementation.is_some() || get("modelspec.architecture").is_some() => {
                "a tool writing only the SAI model spec".into()
            }
            (None, _) => "unknown (no sd-scripts or model-spec keys)".into(),
        }
    };
    if let (Some(v), false) = (implementation, lorafuse) {
        line += &format!("; implementation_version {v}");
    }
    if let Some(c) = get("ss_training_comment").filter(|c| c.starts_with("dimension is resized")) {
        let first = c.split(';').next().unwrap_or(c).trim();
        line += &format!("; then resized ({first})");
    }
    if let Some(from) = get("modelspec.merged_from") {
        line += &format!("; merged from {from}");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn tools_by_their_marks() {
        assert!(written_by(&BTreeMap::new()).starts_with("unknown"));
        let ours = meta(&[
            ("lorafuse.targets", "transformer"),
            ("modelspec.implementation_version", "lorafuse/0.1.0"),
            ("ss_network_module", "networks.lora"),
            ("ss_session_id", "1"),
        ]);
        assert_eq!(written_by(&ours), "lorafuse 0.1.0");
        let kohya = meta(&[
            ("ss_network_module", "networks.lora"),
            ("ss_session_id", "123"),
            (
                "ss_training_comment",
                "dimension is resized from 32 to 8; my comment",
            ),
        ]);
        assert_eq!(
            written_by(&kohya),
            "kohya's sd-scripts train_network.py (LoRA, networks.lora); then resized \
             (dimension is resized from 32 to 8)"
        );
        let lyco = meta(&[
            ("ss_network_module", "lycoris.kohya"),
            ("ss_session_id", "5"),
            ("ss_network_args", r#"{"algo": "loha", "conv_dim": "4"}"#),
        ]);
        assert!(
            written_by(&lyco).contains("LyCORIS loha"),
            "{}",
            written_by(&lyco)
        );
        let extracted = meta(&[
            ("ss_network_module", "networks.lora"),
            ("modelspec.architecture", "stable-diffusion-v1/lora"),
        ]);
        assert!(written_by(&extracted).contains("minimal metadata"));
        let spec = meta(&[("modelspec.architecture", "stable-diffusion-v1/lora")]);
        assert!(written_by(&spec).contains("SAI model spec"));
    }
}
