//! Protobuf's JSON mapping for the gateway: requests from JSON bodies or query strings,
//! responses to JSON. Field names are lowerCamelCase on output (the `.proto` names are also
//! accepted on input), enums are names, 64-bit integers are strings, and fields at their
//! default value are written out so clients need not know proto3's defaults.

use prost_reflect::{
    DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, SerializeOptions,
};
use serde_json::{Map, Value};
use tonic::Status;

use super::errors::invalid_field;

const SERIALIZE: SerializeOptions = SerializeOptions::new().skip_default_fields(false);

/// `message` as JSON.
pub fn to_json(message: &DynamicMessage) -> Result<Vec<u8>, Status> {
    let mut out = serde_json::Serializer::new(Vec::new());
    message
        .serialize_with_options(&mut out, &SERIALIZE)
        .map_err(|e| Status::internal(format!("encoding the response as JSON: {e}")))?;
    Ok(out.into_inner())
}

/// `message` as JSON that fits an HTTP header: non-ASCII characters escaped as `\uXXXX`.
pub fn to_header_json(message: &DynamicMessage) -> Result<String, Status> {
    let json = to_json(message)?;
    let text = String::from_utf8_lossy(&json);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() && !c.is_ascii_control() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    Ok(out)
}

/// Decodes a JSON document as a `desc` message; an error names the field (`body.<path>`
/// for bodies, the parameter for query strings, `what` otherwise).
pub fn from_json(
    desc: MessageDescriptor,
    value: Value,
    what: &str,
) -> Result<DynamicMessage, Status> {
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(value, &mut track);
    DynamicMessage::deserialize_with_options(desc, de, &options).map_err(|e| {
        let path = track.path().to_string();
        let mut field = if path.is_empty() || path == "." {
            what.to_string()
        } else {
            path
        };
        let message = e.to_string();
        // The path ends at the object holding an unknown field; name the field itself.
        if let Some(name) = message
            .strip_prefix("unrecognized field name '")
            .and_then(|rest| rest.split('\'').next())
        {
            field = if field == what {
                name.to_string()
            } else {
                format!("{field}.{name}")
            };
        }
        invalid_field(&field, &message)
    })
}

/// Decodes a body: empty means the empty message.
pub fn from_body(desc: MessageDescriptor, body: &[u8]) -> Result<DynamicMessage, Status> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(DynamicMessage::new(desc));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| invalid_field("body", &format!("not a JSON document: {e}")))?;
    from_json(desc, value, "body")
}

/// Builds a request from query parameters naming top-level fields (`?id=job_1&pageSize=5`,
/// a repeated field by repeating it). Scalars take the parameter's text; a message or map
/// field takes a JSON document.
pub fn from_query(desc: MessageDescriptor, query: &str) -> Result<DynamicMessage, Status> {
    let mut object = Map::new();
    for (name, text) in form_urlencoded::parse(query.as_bytes()) {
        let field = desc
            .get_field_by_json_name(&name)
            .or_else(|| desc.get_field_by_name(&name))
            .ok_or_else(|| {
                invalid_field(
                    &name,
                    &format!("{} has no field {name:?}", desc.full_name()),
                )
            })?;
        let value = query_value(&field, &text)?;
        let key = field.json_name().to_string();
        if field.is_list() {
            match object
                .entry(key)
                .or_insert_with(|| Value::Array(Vec::new()))
            {
                Value::Array(items) => items.push(value),
                _ => return Err(invalid_field(&name, "given twice")),
            }
        } else if object.insert(key, value).is_some() {
            return Err(invalid_field(&name, "given twice"));
        }
    }
    from_json(desc, Value::Object(object), "query")
}

fn query_value(field: &FieldDescriptor, text: &str) -> Result<Value, Status> {
    if field.is_map() {
        return serde_json::from_str(text)
            .map_err(|e| invalid_field(field.json_name(), &format!("not a JSON object: {e}")));
    }
    Ok(match field.kind() {
        Kind::Message(_) => serde_json::from_str(text)
            .map_err(|e| invalid_field(field.json_name(), &format!("not a JSON document: {e}")))?,
        Kind::Bool => match text {
            "true" | "1" => Value::Bool(true),
            "false" | "0" => Value::Bool(false),
            _ => return Err(invalid_field(field.json_name(), "must be true or false")),
        },
        Kind::Int32
        | Kind::Sint32
        | Kind::Sfixed32
        | Kind::Uint32
        | Kind::Fixed32
        | Kind::Float
        | Kind::Double => match serde_json::from_str::<serde_json::Number>(text) {
            Ok(n) => Value::Number(n),
            Err(_) => Value::String(text.to_string()),
        },
        // 64-bit integers are strings in the mapping; enums are names; strings and bytes as-is.
        _ => Value::String(text.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::routes::RouteTable;

    fn desc(name: &str) -> MessageDescriptor {
        let table = RouteTable::client_api().unwrap_or_else(|e| panic!("{e}"));
        table
            .pool
            .get_message_by_name(name)
            .unwrap_or_else(|| panic!("{name}"))
    }

    #[test]
    fn query_parameters_become_typed_fields() {
        let msg = from_query(
            desc("tuna.v1.ListJobsRequest"),
            "pageSize=5&states=JOB_STATE_RUNNING",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let json: Value =
            serde_json::from_slice(&to_json(&msg).unwrap_or_default()).unwrap_or(Value::Null);
        assert_eq!(json["pageSize"], 5);
        assert_eq!(json["states"][0], "JOB_STATE_RUNNING");
        // proto names work too; repeated parameters append.
        let msg = from_query(
            desc("tuna.v1.ListJobsRequest"),
            "page_size=7&states=JOB_STATE_QUEUED&states=JOB_STATE_PAUSED&labels=%7B%22a%22%3A%22b%22%7D",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let json: Value =
            serde_json::from_slice(&to_json(&msg).unwrap_or_default()).unwrap_or(Value::Null);
        assert_eq!(json["pageSize"], 7);
        assert_eq!(json["states"].as_array().map(Vec::len), Some(2));
        assert_eq!(json["labels"]["a"], "b");
    }

    #[test]
    fn an_unknown_or_mistyped_field_is_invalid_argument_naming_it() {
        let err = from_query(desc("tuna.v1.GetJobRequest"), "idd=1")
            .err()
            .unwrap_or_else(|| panic!("accepted"));
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("idd"), "{}", err.message());
        let err = from_body(desc("tuna.v1.ListJobsRequest"), br#"{"pageSize": "many"}"#)
            .err()
            .unwrap_or_else(|| panic!("accepted"));
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("pageSize"), "{}", err.message());
        let err = from_body(desc("tuna.v1.GetJobRequest"), b"{not json")
            .err()
            .unwrap_or_else(|| panic!("accepted"));
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn responses_spell_defaults_and_64_bit_integers_as_strings() {
        let msg = from_body(desc("tuna.v1.File"), br#"{"size_bytes": 12}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        let json: Value =
            serde_json::from_slice(&to_json(&msg).unwrap_or_default()).unwrap_or(Value::Null);
        assert_eq!(json["sizeBytes"], "12");
        assert_eq!(json["name"], "");
        assert_eq!(json["purpose"], "FILE_PURPOSE_UNSPECIFIED");
    }

    #[test]
    fn header_json_is_ascii() {
        let msg = from_body(
            desc("tuna.v1.File"),
            "{\"name\": \"r\u{e9}sum\u{e9}\u{1f600}.jsonl\"}".as_bytes(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let header = to_header_json(&msg).unwrap_or_default();
        assert!(header.is_ascii(), "{header}");
        let back: Value = serde_json::from_str(&header).unwrap_or(Value::Null);
        assert_eq!(back["name"], "r\u{e9}sum\u{e9}\u{1f600}.jsonl");
    }
}
