//! The one rule that tells a dataset line's format from its keys, used by the server's
//! upload validation and by `tuna train` (a worker never guesses: it is told the format the
//! upload validated).

use serde_json::{Map, Value};
use tuna_proto::v1::DatasetFormat;

/// The format a JSON object's keys announce, or `None` when they announce none.
pub fn detect(obj: &Map<String, Value>) -> Option<DatasetFormat> {
    if obj.contains_key("chosen") || obj.contains_key("rejected") {
        Some(DatasetFormat::Preference)
    } else if obj.contains_key("messages") {
        Some(DatasetFormat::Chat)
    } else if obj.contains_key("prompt") || obj.contains_key("completion") {
        Some(DatasetFormat::PromptCompletion)
    } else if obj.contains_key("label") {
        Some(DatasetFormat::Classification)
    } else if obj.contains_key("text") {
        Some(DatasetFormat::Text)
    } else {
        None
    }
}
