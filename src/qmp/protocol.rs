//! QMP messages: the command envelope checked as QEMU checks it, and replies/events encoded as
//! QEMU writes them (pure ASCII with `\uXXXX` escapes, one per line ending in `\r\n`).

use serde_json::{json, Map, Value};

/// QMP error classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    GenericError,
    CommandNotFound,
    DeviceNotFound,
}

impl ErrorClass {
    fn name(self) -> &'static str {
        match self {
            ErrorClass::GenericError => "GenericError",
            ErrorClass::CommandNotFound => "CommandNotFound",
            ErrorClass::DeviceNotFound => "DeviceNotFound",
        }
    }
}

/// A QMP error: class and human-readable description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QmpError {
    pub class: ErrorClass,
    pub desc: String,
}

impl QmpError {
    pub fn generic(desc: impl Into<String>) -> Self {
        QmpError {
            class: ErrorClass::GenericError,
            desc: desc.into(),
        }
    }

    pub fn command_not_found(desc: impl Into<String>) -> Self {
        QmpError {
            class: ErrorClass::CommandNotFound,
            desc: desc.into(),
        }
    }

    pub fn device_not_found(desc: impl Into<String>) -> Self {
        QmpError {
            class: ErrorClass::DeviceNotFound,
            desc: desc.into(),
        }
    }
}

impl From<vhost_user_netd_backends::OptionError> for QmpError {
    fn from(e: vhost_user_netd_backends::OptionError) -> Self {
        QmpError::generic(e.to_string())
    }
}

/// A command as received.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub name: String,
    pub arguments: Map<String, Value>,
    pub id: Option<Value>,
}

/// Checks the envelope; on error returns the error and the `id` if one could be read.
pub fn parse_command(value: Value) -> Result<Command, (QmpError, Option<Value>)> {
    let Value::Object(mut map) = value else {
        return Err((QmpError::generic("QMP input must be a JSON object"), None));
    };
    let id = map.remove("id");
    let fail = |desc: String, id: &Option<Value>| Err((QmpError::generic(desc), id.clone()));
    if let Some(key) = map
        .keys()
        .find(|k| !matches!(k.as_str(), "execute" | "arguments"))
    {
        if key == "exec-oob" {
            return fail("Out-Of-Band execution is not supported".into(), &id);
        }
        return fail(format!("QMP input member '{key}' is unexpected"), &id);
    }
    let name = match map.remove("execute") {
        Some(Value::String(s)) => s,
        Some(_) => return fail("QMP input member 'execute' must be a string".into(), &id),
        None => return fail("QMP input lacks member 'execute'".into(), &id),
    };
    let arguments = match map.remove("arguments") {
        None => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return fail("QMP input member 'arguments' must be an object".into(), &id),
    };
    Ok(Command {
        name,
        arguments,
        id,
    })
}

/// Escapes everything outside ASCII as `\uXXXX` (surrogate pairs above the BMP).
fn ascii_json(value: &Value) -> String {
    let text = value.to_string();
    let mut out = String::with_capacity(text.len() + 2);
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04X}"));
            }
        }
    }
    out.push_str("\r\n");
    out
}

/// `{"return": ..., "id": ...}`.
pub fn encode_return(value: Value, id: Option<Value>) -> String {
    let mut m = Map::new();
    m.insert("return".into(), value);
    if let Some(id) = id {
        m.insert("id".into(), id);
    }
    ascii_json(&Value::Object(m))
}

/// `{"error": {"class": ..., "desc": ...}, "id": ...}`.
pub fn encode_error(error: &QmpError, id: Option<Value>) -> String {
    let mut m = Map::new();
    m.insert(
        "error".into(),
        json!({ "class": error.class.name(), "desc": error.desc }),
    );
    if let Some(id) = id {
        m.insert("id".into(), id);
    }
    ascii_json(&Value::Object(m))
}

/// `{"event": ..., "data": ..., "timestamp": {"seconds": ..., "microseconds": ...}}`.
pub fn encode_event(event: &crate::events::Event) -> String {
    let now = event.timestamp;
    let mut m = Map::new();
    m.insert("event".into(), Value::String(event.name.clone()));
    if let Some(d) = &event.data {
        m.insert("data".into(), d.clone());
    }
    m.insert(
        "timestamp".into(),
        json!({ "seconds": now.as_secs(), "microseconds": now.subsec_micros() }),
    );
    ascii_json(&Value::Object(m))
}

/// Anything: used for the greeting.
pub fn encode(value: &Value) -> String {
    ascii_json(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(v: Value) -> String {
        parse_command(v).unwrap_err().0.desc
    }

    #[test]
    fn envelope_errors_use_qemu_wording() {
        assert_eq!(err(json!([1])), "QMP input must be a JSON object");
        assert_eq!(
            err(json!({"foo": 1})),
            "QMP input member 'foo' is unexpected"
        );
        assert_eq!(
            err(json!({"execute": 1})),
            "QMP input member 'execute' must be a string"
        );
        assert_eq!(
            err(json!({"execute": "q", "arguments": []})),
            "QMP input member 'arguments' must be an object"
        );
        assert_eq!(err(json!({})), "QMP input lacks member 'execute'");
        let (e, id) =
            parse_command(json!({"execute": "q", "id": {"x": [1]}, "extra": 2})).unwrap_err();
        assert_eq!(
            (e.desc.as_str(), id),
            (
                "QMP input member 'extra' is unexpected",
                Some(json!({"x": [1]}))
            )
        );
        let c = parse_command(json!({"execute": "q", "id": 7})).unwrap();
        assert_eq!(
            (c.name.as_str(), c.id, c.arguments.len()),
            ("q", Some(json!(7)), 0)
        );
    }

    #[test]
    fn replies_are_ascii_lines() {
        let r = encode_return(json!({"s": "é😀"}), Some(json!("i")));
        assert_eq!(
            r,
            "{\"id\":\"i\",\"return\":{\"s\":\"\\u00E9\\uD83D\\uDE00\"}}\r\n"
        );
        let back: Value = serde_json::from_str(r.trim_end()).unwrap();
        assert_eq!(back["return"]["s"], "é😀");
        let e = encode_error(&QmpError::command_not_found("x"), None);
        assert_eq!(
            e,
            "{\"error\":{\"class\":\"CommandNotFound\",\"desc\":\"x\"}}\r\n"
        );
        let event = crate::events::Event {
            name: "X".into(),
            data: Some(json!({"a": 1})),
            timestamp: std::time::Duration::new(1_700_000_000, 123_456_789),
        };
        let ev: Value = serde_json::from_str(encode_event(&event).trim_end()).unwrap();
        assert_eq!(
            ev,
            json!({"event": "X", "data": {"a": 1},
                   "timestamp": {"seconds": 1_700_000_000u64, "microseconds": 123_456}})
        );
    }
}
