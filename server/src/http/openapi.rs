//! The OpenAPI 3.1 document of the gateway, generated from the same route table and message
//! descriptors the gateway serves, so it cannot drift from what the server accepts.

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};

use super::routes::{ByteFrame, Route, RouteTable, Shape};

const TIMESTAMP: &str = "google.protobuf.Timestamp";

fn schema_ref(message: &MessageDescriptor) -> Value {
    if message.full_name() == TIMESTAMP {
        return json!({"type": "string", "format": "date-time"});
    }
    json!({"$ref": format!("#/components/schemas/{}", message.full_name())})
}

fn kind_schema(kind: &Kind) -> Value {
    match kind {
        Kind::Double | Kind::Float => json!({"type": "number"}),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            json!({"type": "integer", "format": "int32"})
        }
        Kind::Uint32 | Kind::Fixed32 => json!({"type": "integer", "format": "int32", "minimum": 0}),
        // Written as strings; read as strings or numbers (protobuf's JSON mapping).
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 | Kind::Uint64 | Kind::Fixed64 => {
            json!({"type": ["string", "integer"], "format": "int64"})
        }
        Kind::Bool => json!({"type": "boolean"}),
        Kind::String => json!({"type": "string"}),
        Kind::Bytes => json!({"type": "string", "format": "byte"}),
        Kind::Message(m) => schema_ref(m),
        // Written as names; read as names or numbers.
        Kind::Enum(e) => json!({"anyOf": [
            {"type": "string", "enum": e.values().map(|v| v.name().to_string()).collect::<Vec<_>>()},
            {"type": "integer"},
        ]}),
    }
}

fn field_schema(field: &FieldDescriptor) -> Value {
    if field.is_map()
        && let Kind::Message(entry) = field.kind()
    {
        let value = entry.map_entry_value_field();
        return json!({"type": "object", "additionalProperties": kind_schema(&value.kind())});
    }
    let base = kind_schema(&field.kind());
    if field.is_list() {
        json!({"type": "array", "items": base})
    } else {
        base
    }
}

/// The JSON mapping reads `null` as the field's default, so every field may be null.
fn nullable(schema: Value) -> Value {
    match schema.get("type").and_then(Value::as_str) {
        Some(t) => {
            let mut schema = schema.clone();
            schema["type"] = json!([t, "null"]);
            schema
        }
        None => json!({"anyOf": [schema, {"type": "null"}]}),
    }
}

fn message_schema(message: &MessageDescriptor) -> Value {
    let properties: Map<String, Value> = message
        .fields()
        .map(|f| (f.json_name().to_string(), nullable(field_schema(&f))))
        .collect();
    let mut schema = json!({"type": "object", "properties": properties});
    let oneofs: Vec<Value> = message
        .oneofs()
        .filter(|o| !o.is_synthetic())
        .map(|o| {
            json!(
                o.fields()
                    .map(|f| f.json_name().to_string())
                    .collect::<Vec<_>>()
            )
        })
        .collect();
    if !oneofs.is_empty() {
        schema["x-oneofs"] = Value::Array(oneofs);
    }
    schema
}

fn operation(rpc: &str, route: &Route) -> Value {
    let input = route.method.input();
    let output = route.method.output();
    let service = route.method.parent_service();
    let error = json!({"description": "an error (HTTP status from the gRPC code)",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let mut op = json!({
        "operationId": format!("{}_{}", service.name(), route.method.name()),
        "tags": [service.name()],
        "summary": format!("{} ({rpc})", route.method.name()),
        "responses": {"400": {"description": "INVALID_ARGUMENT: the request names a bad field (see fieldViolations)",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
            "default": error},
    });
    match route.shape() {
        Shape::Unary => {
            op["requestBody"] =
                json!({"content": {"application/json": {"schema": schema_ref(&input)}}});
            op["responses"]["200"] = json!({"description": "the response message",
                "content": {"application/json": {"schema": schema_ref(&output)}}});
        }
        Shape::ServerStream => {
            op["requestBody"] =
                json!({"content": {"application/json": {"schema": schema_ref(&input)}}});
            let mut content = json!({"text/event-stream": {"schema": {"type": "string",
                "description": format!("server-sent events: `message` (data: a {} as JSON) per message, then `end`, or `error` (data: an Error)", output.full_name())}}});
            if ByteFrame::of(&output).is_some() {
                content["application/octet-stream"] = json!({"schema": {"type": "string", "format": "binary",
                    "description": "with `Accept: application/octet-stream`: the raw bytes; the Tuna-Header response header holds the first message's header as JSON"}});
            }
            op["responses"]["200"] = json!({"description": "a stream", "content": content});
        }
        Shape::ClientStream => {
            let mut content = json!({"application/x-ndjson": {"schema": schema_ref(&input),
                "description": "one message per line"}});
            if ByteFrame::of(&input).is_some() {
                content["application/octet-stream"] = json!({"schema": {"type": "string", "format": "binary"},
                    "description": "the raw bytes; the header message as JSON in the Tuna-Header request header"});
                op["parameters"] = json!([{"name": "Tuna-Header", "in": "header", "required": false,
                    "description": "for application/octet-stream bodies: the header message as JSON",
                    "schema": {"type": "string"}}]);
            }
            op["requestBody"] = json!({"content": content});
            op["responses"]["200"] = json!({"description": "the response message",
                "content": {"application/json": {"schema": schema_ref(&output)}}});
        }
        Shape::Bidirectional => {}
    }
    op
}

/// The whole document; `secured` when the server requires the API key (then every operation
/// declares the bearer scheme, and an unauthenticated call is a 401).
pub fn document(table: &RouteTable, secured: bool) -> Value {
    let mut paths = Map::new();
    for (rpc, route) in table.iter() {
        let post = operation(rpc, route);
        let mut item = json!({"post": post});
        if matches!(route.shape(), Shape::Unary | Shape::ServerStream) {
            let mut get = item["post"].clone();
            if let Some(obj) = get.as_object_mut() {
                obj.remove("requestBody");
                obj.insert(
                    "operationId".into(),
                    json!(format!(
                        "{}_get",
                        item["post"]["operationId"].as_str().unwrap_or(rpc)
                    )),
                );
                obj.insert(
                    "description".into(),
                    json!("the request's top-level fields as query parameters (lowerCamelCase or proto names; repeat a parameter for a repeated field)"),
                );
            }
            item["get"] = get;
        }
        paths.insert(format!("/api/{rpc}"), item);
    }
    let mut schemas: Map<String, Value> = table
        .pool
        .all_messages()
        .filter(|m| !m.is_map_entry() && m.full_name() != TIMESTAMP)
        .map(|m| (m.full_name().to_string(), message_schema(&m)))
        .collect();
    schemas.insert(
        "Error".into(),
        json!({"type": "object", "required": ["code", "message"], "properties": {
            "code": {"type": "string", "description": "the gRPC status code name, e.g. INVALID_ARGUMENT"},
            "message": {"type": "string"},
            "fieldViolations": {"type": "array", "items": {"type": "object", "properties": {
                "field": {"type": "string"}, "description": {"type": "string"}}}},
            "reason": {"type": "string"},
            "correlationId": {"type": "string", "description": "quote it when reporting an INTERNAL error"}
        }}),
    );
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Tuna JSON API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Every client RPC of the tuna.v1 gRPC API, in protobuf's JSON mapping. The .proto files document the semantics."
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}
        },
    });
    if secured {
        doc["security"] = json!([{"bearer": []}]);
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    if k == "$ref" {
                        out.push(v.as_str().unwrap_or_default().to_string());
                    }
                    refs(v, out);
                }
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_route_is_documented_and_every_reference_resolves() {
        let table = RouteTable::client_api().unwrap_or_else(|e| panic!("{e}"));
        let doc = document(&table, true);
        assert_eq!(doc["security"][0]["bearer"], json!([]));
        assert!(document(&table, false).get("security").is_none());
        for (rpc, _) in table.iter() {
            assert!(doc["paths"].get(format!("/api/{rpc}")).is_some(), "{rpc}");
        }
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(found.len() > 50);
        for r in found {
            let name = r.trim_start_matches("#/components/schemas/");
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "{r} dangles"
            );
        }
    }
}
