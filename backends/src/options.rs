//! Typed access to a netdev's options, whichever way they arrived.
//!
//! QEMU accepts `-netdev` as a `key=value` string (every value a string, dotted keys for nested
//! members) and as JSON (strictly typed). Both become one [`Opts`] over a JSON object; a backend's
//! options struct takes its members out one by one, and [`Opts::finish`] rejects what is left.
//! Error texts follow QEMU's so that scripts matching on them keep working.

use serde_json::{Map, Value};

/// Why a set of netdev options was refused. The `Display` text is QEMU's wording.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    #[error("Parameter '{0}' is missing")]
    Missing(String),
    /// A member nobody knows; QEMU words it differently for key=value text and JSON.
    #[error("{}", if *.keyval { format!("Invalid parameter '{}'", .name) } else { format!("Parameter '{}' is unexpected", .name) })]
    Unexpected { name: String, keyval: bool },
    #[error("Invalid parameter type for '{name}', expected: {expected}")]
    WrongType {
        name: String,
        expected: &'static str,
    },
    #[error("Parameter '{name}' expects {expected}")]
    BadValue {
        name: String,
        expected: &'static str,
    },
    #[error("Parameter '{name}' does not accept value '{value}'")]
    BadEnum { name: String, value: String },
    #[error("{0}")]
    Invalid(String),
}

/// Where option values came from, which decides how strictly scalars are typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionSource {
    /// `key=value` text: every scalar is a string and is converted on access.
    KeyVal,
    /// JSON (command line JSON form, QMP): scalars must already have the right type.
    Json,
}

/// A netdev's members, consumed by typed accessors.
#[derive(Debug, Clone)]
pub struct Opts {
    map: Map<String, Value>,
    prefix: String,
    source: OptionSource,
}

impl Opts {
    /// Wraps a JSON object of options.
    pub fn new(map: Map<String, Value>, source: OptionSource) -> Self {
        Opts {
            map,
            prefix: String::new(),
            source,
        }
    }

    /// Parses QEMU's `-netdev` string: `type,key=value,...`, `,,` for a literal comma, dotted keys
    /// for nested members. The first element may omit `type=`.
    pub fn parse_keyval(text: &str) -> Result<Self, OptionError> {
        let mut map = Map::new();
        for (index, element) in split_keyval(text).into_iter().enumerate() {
            let (key, value) = match element.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None if index == 0 => ("type".to_string(), element.clone()),
                None => {
                    return Err(OptionError::Invalid(format!(
                        "Expected '=' after parameter '{element}'"
                    )))
                }
            };
            if key.is_empty() {
                return Err(OptionError::Invalid("Invalid parameter ''".to_string()));
            }
            insert_dotted(&mut map, &key, value)?;
        }
        Ok(Opts::new(map, OptionSource::KeyVal))
    }

    /// Parses the netdev either as JSON (when it starts with `{`) or as `key=value` text.
    pub fn parse_cli(text: &str) -> Result<Self, OptionError> {
        if text.trim_start().starts_with('{') {
            match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(map)) => Ok(Opts::new(map, OptionSource::Json)),
                Ok(_) => Err(OptionError::Invalid("JSON netdev must be an object".into())),
                Err(e) => Err(OptionError::Invalid(format!("JSON parse error, {e}"))),
            }
        } else {
            Opts::parse_keyval(text)
        }
    }

    /// How these options arrived.
    pub fn source(&self) -> OptionSource {
        self.source
    }

    /// The member's full dotted name as error messages show it (`addr.type`).
    pub fn name_of(&self, key: &str) -> String {
        self.full_name(key)
    }

    fn full_name(&self, key: &str) -> String {
        format!("{}{}", self.prefix, key)
    }

    /// Whether a member is present (not consumed).
    pub fn contains(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    /// Removes a member, returning its raw value.
    pub fn take_value(&mut self, key: &str) -> Option<Value> {
        self.map.remove(key)
    }

    /// Takes a string member.
    pub fn take_str(&mut self, key: &str) -> Result<Option<String>, OptionError> {
        match self.remove_scalar(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.wrong_type(key, "string")),
        }
    }

    /// Takes a mandatory string member.
    pub fn require_str(&mut self, key: &str) -> Result<String, OptionError> {
        self.take_str(key)?
            .ok_or_else(|| OptionError::Missing(self.full_name(key)))
    }

    /// Takes a boolean member (`on`/`off`, `yes`/`no`, `true`/`false` in key=value form).
    pub fn take_bool(&mut self, key: &str) -> Result<Option<bool>, OptionError> {
        match self.remove_scalar(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(Value::String(s)) if self.source == OptionSource::KeyVal => match s.as_str() {
                "on" | "yes" | "true" | "y" => Ok(Some(true)),
                "off" | "no" | "false" | "n" => Ok(Some(false)),
                _ => Err(OptionError::BadValue {
                    name: self.full_name(key),
                    expected: "'on' or 'off'",
                }),
            },
            Some(_) => Err(self.wrong_type(key, "boolean")),
        }
    }

    /// Takes an unsigned integer member no larger than `max`.
    pub fn take_uint(
        &mut self,
        key: &str,
        max: u64,
        type_name: &'static str,
    ) -> Result<Option<u64>, OptionError> {
        let value = match self.remove_scalar(key) {
            None => return Ok(None),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(v) => v,
                // Negative or fractional: QEMU reports the range, as for too large values.
                None => return Err(self.bad_value(key, type_name)),
            },
            Some(Value::String(s)) if self.source == OptionSource::KeyVal => {
                parse_uint_text(&s).ok_or_else(|| self.bad_value(key, "a uint64 value"))?
            }
            Some(_) => return Err(self.bad_value(key, "uint64")),
        };
        if value > max {
            return Err(self.bad_value(key, type_name));
        }
        Ok(Some(value))
    }

    /// Takes an `int` member (signed 64-bit).
    pub fn take_i64(&mut self, key: &str) -> Result<Option<i64>, OptionError> {
        match self.remove_scalar(key) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| self.bad_value(key, "int64_t")),
            Some(Value::String(s)) if self.source == OptionSource::KeyVal => {
                let (negative, digits) = match s.strip_prefix('-') {
                    Some(rest) => (true, rest),
                    None => (false, s.as_str()),
                };
                let magnitude = parse_uint_text(digits)
                    .and_then(|m| i64::try_from(m).ok())
                    .ok_or_else(|| self.bad_value(key, "an int64 value"))?;
                Ok(Some(if negative { -magnitude } else { magnitude }))
            }
            Some(_) => Err(self.bad_value(key, "int64")),
        }
    }

    /// Takes an `int32` member.
    pub fn take_i32(&mut self, key: &str) -> Result<Option<i32>, OptionError> {
        match self.take_i64(key)? {
            None => Ok(None),
            Some(v) => i32::try_from(v)
                .map(Some)
                .map_err(|_| self.bad_value(key, "int32_t")),
        }
    }

    /// Takes a `uint32` member.
    pub fn take_u32(&mut self, key: &str) -> Result<Option<u32>, OptionError> {
        Ok(self
            .take_uint(key, u32::MAX.into(), "uint32_t")?
            .map(|v| v as u32))
    }

    /// Takes a `uint64` member.
    pub fn take_u64(&mut self, key: &str) -> Result<Option<u64>, OptionError> {
        self.take_uint(key, u64::MAX, "uint64")
    }

    /// Takes a `size` member: a number, or in key=value form a number with a `[KMGTPE]` suffix
    /// (`b` for bytes), powers of 1024 as QEMU's `qemu_strtosz`.
    pub fn take_size(&mut self, key: &str) -> Result<Option<u64>, OptionError> {
        match self.remove_scalar(key) {
            Some(Value::String(s)) if self.source == OptionSource::KeyVal => parse_size_text(&s)
                .map(Some)
                .ok_or_else(|| self.bad_value(key, "a size value")),
            Some(other) => {
                self.map.insert(key.to_string(), other);
                self.take_u64(key)
            }
            None => Ok(None),
        }
    }

    /// Takes a member that must be a QEMU identifier (letters, digits, `-`, `.`, `_`, starting
    /// with a letter), as netdev ids are.
    pub fn take_id(&mut self, key: &str) -> Result<String, OptionError> {
        let id = self.require_str(key)?;
        if is_identifier(&id) {
            Ok(id)
        } else {
            Err(self.bad_value(key, "an identifier"))
        }
    }

    /// Takes a list of strings: QEMU's `['String']` members such as `hostfwd`. In key=value text
    /// the key is repeated (`hostfwd=a,hostfwd=b`) or indexed (`hostfwd.0.str=a`); in JSON it is
    /// an array of `{"str": ...}` objects.
    pub fn take_str_list(&mut self, key: &str) -> Result<Vec<String>, OptionError> {
        let keyval = self.source == OptionSource::KeyVal;
        let error = self.wrong_type(key, "array of String");
        let wrong = || error.clone();
        let item = |v: &Value| match v {
            Value::String(s) if keyval => Some(s.clone()),
            Value::Object(m) if m.len() == 1 => {
                m.get("str").and_then(Value::as_str).map(str::to_string)
            }
            _ => None,
        };
        match self.map.remove(key) {
            None => Ok(Vec::new()),
            Some(Value::String(s)) if keyval => Ok(vec![s]),
            Some(Value::Array(items)) => items.iter().map(|v| item(v).ok_or_else(wrong)).collect(),
            Some(Value::Object(indexed)) if keyval => {
                let mut entries = indexed
                    .iter()
                    .map(|(index, v)| Some((index.parse::<usize>().ok()?, item(v)?)))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(wrong)?;
                entries.sort_by_key(|(index, _)| *index);
                Ok(entries.into_iter().map(|(_, s)| s).collect())
            }
            Some(_) => Err(wrong()),
        }
    }

    /// Removes a scalar member. A key repeated in key=value text keeps its last value, as in
    /// QEMU, unless the member is a list ([`Self::take_str_list`]).
    fn remove_scalar(&mut self, key: &str) -> Option<Value> {
        match self.map.remove(key) {
            Some(Value::Array(mut repeated)) if self.source == OptionSource::KeyVal => {
                repeated.pop()
            }
            other => other,
        }
    }

    /// Takes a nested object member (`addr.type=...` in key=value form) as its own [`Opts`].
    pub fn take_nested(&mut self, key: &str) -> Result<Option<Opts>, OptionError> {
        match self.map.remove(key) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(Opts {
                map,
                prefix: format!("{}.", self.full_name(key)),
                source: self.source,
            })),
            Some(_) => Err(self.wrong_type(key, "object")),
        }
    }

    /// Rejects any member nobody took.
    pub fn finish(self) -> Result<(), OptionError> {
        match self.map.keys().next() {
            Some(key) => Err(OptionError::Unexpected {
                name: self.full_name(key),
                keyval: self.source == OptionSource::KeyVal,
            }),
            None => Ok(()),
        }
    }

    fn wrong_type(&self, key: &str, expected: &'static str) -> OptionError {
        OptionError::WrongType {
            name: self.full_name(key),
            expected,
        }
    }

    fn bad_value(&self, key: &str, expected: &'static str) -> OptionError {
        OptionError::BadValue {
            name: self.full_name(key),
            expected,
        }
    }
}

/// Splits on `,` honouring QEMU's `,,` escape.
fn split_keyval(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                current.push(',');
            } else {
                out.push(std::mem::take(&mut current));
            }
        } else {
            current.push(c);
        }
    }
    if !current.is_empty() || !out.is_empty() {
        out.push(current);
    }
    out
}

fn insert_dotted(
    map: &mut Map<String, Value>,
    key: &str,
    value: String,
) -> Result<(), OptionError> {
    match key.split_once('.') {
        None => {
            if map.contains_key(key) {
                // QEMU's keyval: the last value wins for scalars, but a key that is both a scalar
                // and an object is an error.
                match map.get_mut(key) {
                    Some(Value::Object(_)) => {
                        return Err(OptionError::Invalid(format!(
                            "Parameters '{key}.*' used inconsistently"
                        )))
                    }
                    // Repeats are kept in order; scalar accessors take the last one.
                    Some(Value::Array(repeats)) => {
                        repeats.push(Value::String(value));
                        return Ok(());
                    }
                    Some(first) => {
                        let first = first.take();
                        map.insert(
                            key.to_string(),
                            Value::Array(vec![first, Value::String(value)]),
                        );
                        return Ok(());
                    }
                    None => {}
                }
            }
            map.insert(key.to_string(), Value::String(value));
            Ok(())
        }
        Some((head, rest)) => {
            let entry = map
                .entry(head.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            match entry {
                Value::Object(inner) => insert_dotted(inner, rest, value),
                _ => Err(OptionError::Invalid(format!(
                    "Parameters '{head}.*' used inconsistently"
                ))),
            }
        }
    }
}

/// Whether `text` is a QEMU identifier.
pub fn is_identifier(text: &str) -> bool {
    let mut chars = text.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

/// Parses a size with an optional binary suffix, as QEMU's `qemu_strtosz`.
fn parse_size_text(text: &str) -> Option<u64> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let shift = match suffix {
        "" | "b" | "B" => 0,
        "k" | "K" => 10,
        "m" | "M" => 20,
        "g" | "G" => 30,
        "t" | "T" => 40,
        "p" | "P" => 50,
        "e" | "E" => 60,
        _ => return None,
    };
    if number.contains('.') {
        let value: f64 = number.parse().ok()?;
        let scaled = value * (1u64 << shift) as f64;
        (scaled.is_finite() && scaled >= 0.0 && scaled < u64::MAX as f64).then_some(scaled as u64)
    } else {
        number.parse::<u64>().ok()?.checked_mul(1u64 << shift)
    }
}

/// Parses an unsigned number as QEMU's keyval does: decimal, `0x` hex or `0` octal.
fn parse_uint_text(text: &str) -> Option<u64> {
    if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()
    } else if text.len() > 1 && text.starts_with('0') {
        u64::from_str_radix(&text[1..], 8).ok()
    } else {
        text.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyval_implied_type_and_escape() {
        let mut o = Opts::parse_keyval("tap,id=n0,script=/a,,b").unwrap();
        assert_eq!(o.require_str("type").unwrap(), "tap");
        assert_eq!(o.require_str("id").unwrap(), "n0");
        assert_eq!(o.take_str("script").unwrap().as_deref(), Some("/a,b"));
        o.finish().unwrap();
    }

    #[test]
    fn keyval_dotted_keys_nest() {
        let mut o = Opts::parse_keyval("stream,id=s,addr.type=unix,addr.path=/x").unwrap();
        let mut addr = o.take_nested("addr").unwrap().unwrap();
        assert_eq!(addr.require_str("type").unwrap(), "unix");
        assert_eq!(addr.require_str("path").unwrap(), "/x");
        addr.finish().unwrap();
        let mut addr = Opts::parse_keyval("stream,addr.type=unix,addr.bogus=1")
            .unwrap()
            .take_nested("addr")
            .unwrap()
            .unwrap();
        addr.require_str("type").unwrap();
        assert_eq!(
            addr.finish().unwrap_err().to_string(),
            "Invalid parameter 'addr.bogus'"
        );
    }

    #[test]
    fn keyval_scalars_convert_json_scalars_are_strict() {
        let mut o = Opts::parse_keyval("tap,queues=0x4,vnet_hdr=off,sndbuf=abc").unwrap();
        assert_eq!(o.take_u32("queues").unwrap(), Some(4));
        assert_eq!(o.take_bool("vnet_hdr").unwrap(), Some(false));
        assert_eq!(
            o.take_size("sndbuf").unwrap_err().to_string(),
            "Parameter 'sndbuf' expects a size value"
        );
        let mut j =
            Opts::parse_cli(r#"{"type":"tap","queues":"2","vnet_hdr":true,"x":-1}"#).unwrap();
        assert_eq!(
            j.take_u32("queues").unwrap_err().to_string(),
            "Parameter 'queues' expects uint64"
        );
        assert_eq!(j.take_bool("vnet_hdr").unwrap(), Some(true));
        assert_eq!(
            j.take_u32("x").unwrap_err().to_string(),
            "Parameter 'x' expects uint32_t"
        );
        let mut v = Opts::parse_keyval("tap,vnet_hdr=maybe,queues=x").unwrap();
        assert_eq!(
            v.take_bool("vnet_hdr").unwrap_err().to_string(),
            "Parameter 'vnet_hdr' expects 'on' or 'off'"
        );
        assert_eq!(
            v.take_u32("queues").unwrap_err().to_string(),
            "Parameter 'queues' expects a uint64 value"
        );
    }

    #[test]
    fn out_of_range_and_unknown_members() {
        let mut o = Opts::parse_keyval("tap,queues=4294967296,what=1").unwrap();
        o.take_str("type").unwrap();
        assert_eq!(
            o.take_u32("queues").unwrap_err().to_string(),
            "Parameter 'queues' expects uint32_t"
        );
        assert_eq!(
            o.finish().unwrap_err().to_string(),
            "Invalid parameter 'what'"
        );
        let j = Opts::parse_cli(r#"{"what":1}"#).unwrap();
        assert_eq!(
            j.finish().unwrap_err().to_string(),
            "Parameter 'what' is unexpected"
        );
        let mut m = Opts::parse_keyval("tap").unwrap();
        m.take_str("type").unwrap();
        assert_eq!(
            m.require_str("id").unwrap_err().to_string(),
            "Parameter 'id' is missing"
        );
    }

    #[test]
    fn sizes_and_identifiers() {
        let mut o = Opts::parse_keyval("tap,a=4k,b=1.5M,c=12,d=1Q,id=1x,e=n0.a-b_c").unwrap();
        assert_eq!(o.take_size("a").unwrap(), Some(4096));
        assert_eq!(o.take_size("b").unwrap(), Some(1_572_864));
        assert_eq!(o.take_size("c").unwrap(), Some(12));
        assert!(o.take_size("d").is_err());
        assert_eq!(
            o.take_id("id").unwrap_err().to_string(),
            "Parameter 'id' expects an identifier"
        );
        assert_eq!(o.take_id("e").unwrap(), "n0.a-b_c");
    }

    #[test]
    fn keyval_rejects_element_without_value() {
        assert!(Opts::parse_keyval("tap,id").is_err());
        assert!(Opts::parse_keyval("tap,=x").is_err());
        assert!(Opts::parse_cli("{not json").is_err());
    }
}
