//! Spec files: any `tuna.v1` request message written as JSON or TOML, in protobuf's canonical
//! JSON mapping (field names as in the .proto files or lowerCamelCase, enums by name).
//!
//! The mapping comes from the API's own descriptors, so every field the API has can be set
//! from a file and an unknown or mistyped field is an error naming it, never silently dropped.

use std::path::Path;

use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, SerializeOptions};

use crate::ClientError;

/// Reads `path` (`.toml`, else JSON) as the message `T`.
pub fn read<T: prost::Message + Default>(path: &Path, message: &str) -> Result<T, ClientError> {
    let text = std::fs::read_to_string(path).map_err(|source| ClientError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let is_toml = path.extension().is_some_and(|e| e == "toml");
    parse(&text, is_toml, message).map_err(|e| ClientError::SpecFile {
        path: path.display().to_string(),
        message: e,
    })
}

/// Parses `text` as the message named `message` (for example `tuna.v1.SweepSpec`).
pub fn parse<T: prost::Message + Default>(
    text: &str,
    is_toml: bool,
    message: &str,
) -> Result<T, String> {
    let value: serde_json::Value = if is_toml {
        toml::from_str(text).map_err(|e| format!("invalid TOML: {e}"))?
    } else {
        serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?
    };
    let pool = DescriptorPool::decode(tuna_proto::v1::FILE_DESCRIPTOR_SET)
        .map_err(|e| format!("API descriptors: {e}"))?;
    let desc = pool
        .get_message_by_name(message)
        .ok_or_else(|| format!("unknown message {message}"))?;
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    // Track where in the document the error is, so it names the field.
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(value, &mut track);
    let dynamic = DynamicMessage::deserialize_with_options(desc, de, &options).map_err(|e| {
        let path = track.path().to_string();
        if path.is_empty() || path == "." {
            e.to_string()
        } else {
            format!("{path}: {e}")
        }
    })?;
    dynamic.transcode_to::<T>().map_err(|e| e.to_string())
}

/// `msg` (the message named `message`) in the same JSON mapping, with the .proto field names:
/// what `--output json` prints, so it reads back as a spec file.
pub fn to_json<T: prost::Message>(msg: &T, message: &str) -> Result<serde_json::Value, String> {
    let pool = DescriptorPool::decode(tuna_proto::v1::FILE_DESCRIPTOR_SET)
        .map_err(|e| format!("API descriptors: {e}"))?;
    let desc = pool
        .get_message_by_name(message)
        .ok_or_else(|| format!("unknown message {message}"))?;
    let dynamic =
        DynamicMessage::decode(desc, msg.encode_to_vec().as_slice()).map_err(|e| e.to_string())?;
    let options = SerializeOptions::new().use_proto_field_name(true);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    const SWEEP: &str = r#"
max_trials = 8
parallelism = 2
seed = 3

[objective]
metric = "eval_loss"
direction = "DIRECTION_MINIMIZE"

[algorithm]
name = "random"
asha = { min_resource = 4, eta = 2 }

[[parameters]]
name = "hyperparameters.learning_rate"
scale = "log"
min = 1e-4
max = 1e-2

[[parameters]]
name = "method.lora.r"
min = 2
max = 16
integer = true

[template]
base_model = "tiny"
training_file = "file_0123"

[template.method]
type = "lora"

[template.hyperparameters]
max_steps = 12
"#;

    #[test]
    fn toml_sweep_files_map_onto_the_proto() {
        let s: pb::SweepSpec = parse(SWEEP, true, "tuna.v1.SweepSpec").unwrap();
        assert_eq!(s.max_trials, Some(8));
        assert_eq!(s.parallelism, Some(2));
        assert_eq!(s.seed, 3);
        assert_eq!(s.parameters.len(), 2);
        assert!(s.parameters[1].integer);
        assert_eq!(
            s.objective.unwrap().direction,
            pb::Direction::Minimize as i32
        );
        let alg = s.algorithm.unwrap();
        assert_eq!(alg.asha.unwrap().min_resource, Some(4.0));
        let t = s.template.unwrap();
        assert_eq!(t.method.unwrap().r#type, "lora");
        assert_eq!(t.hyperparameters.unwrap().max_steps, Some(12));
    }

    #[test]
    fn the_shipped_examples_parse() {
        let job: pb::JobSpec = parse(
            include_str!("../../examples/job.json"),
            false,
            "tuna.v1.JobSpec",
        )
        .unwrap();
        assert_eq!(job.priority, 10);
        assert_eq!(job.method.unwrap().lora.unwrap().r, Some(8));
        let sweep: pb::SweepSpec = parse(
            include_str!("../../examples/sweep.toml"),
            true,
            "tuna.v1.SweepSpec",
        )
        .unwrap();
        assert_eq!(sweep.max_trials, Some(8));
        let autopeft: pb::SweepSpec = parse(
            include_str!("../../examples/autopeft-sweep.toml"),
            true,
            "tuna.v1.SweepSpec",
        )
        .unwrap();
        assert_eq!(autopeft.parameters.len(), 6);
        assert!(
            autopeft
                .parameters
                .iter()
                .any(|p| p.name == "method.prefix_tuning.num_virtual_tokens")
        );
    }

    #[test]
    fn a_message_printed_as_json_parses_back() {
        let job: pb::JobSpec = parse(
            include_str!("../../examples/job.json"),
            false,
            "tuna.v1.JobSpec",
        )
        .unwrap();
        let json = to_json(&job, "tuna.v1.JobSpec").unwrap();
        assert!(json["hyperparameters"].is_object(), "{json}");
        let back: pb::JobSpec = parse(&json.to_string(), false, "tuna.v1.JobSpec").unwrap();
        assert_eq!(back, job);
    }

    #[test]
    fn unknown_and_mistyped_fields_are_errors_naming_them() {
        let e =
            parse::<pb::SweepSpec>("{\"max_trails\": 3}", false, "tuna.v1.SweepSpec").unwrap_err();
        assert!(e.contains("max_trails"), "{e}");
        let e = parse::<pb::SweepSpec>(
            "{\"template\": {\"hyperparameters\": {\"max_steps\": \"ten\"}}}",
            false,
            "tuna.v1.SweepSpec",
        )
        .unwrap_err();
        assert!(e.starts_with("template.hyperparameters.max_steps: "), "{e}");
        assert!(parse::<pb::SweepSpec>("max_trials = ", true, "tuna.v1.SweepSpec").is_err());
    }
}
