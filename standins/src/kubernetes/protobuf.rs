//! Request bodies in `application/vnd.kubernetes.protobuf`, which client-go's typed clients
//! always send for built-in kinds (`kubectl create secret`, helm's release Secrets) and never
//! downgrade to JSON. Decoded to the JSON the handlers take, for the kinds those clients
//! create here: Secret, ConfigMap and Namespace; any other kind is refused with 415, which
//! is what a server answers for a media type it cannot read.
//!
//! Hand-rolled: the wire format is a 4-byte magic `k8s\0` and a `runtime.Unknown` holding
//! the object's message, and these messages need a dozen fields; the crates that decode
//! Kubernetes protobuf (k8s-pb) generate every API type for this one use.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value, json};

pub(super) const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// One field of a protobuf message: its number and its payload.
enum Payload<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn varint(input: &mut &[u8]) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first().ok_or("truncated varint")?;
        *input = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("varint too long".to_string())
}

/// The fields of one message, in order.
fn fields(mut input: &[u8]) -> Result<Vec<(u64, Payload<'_>)>, String> {
    let mut out = Vec::new();
    while !input.is_empty() {
        let key = varint(&mut input)?;
        let payload = match key & 7 {
            0 => Payload::Varint(varint(&mut input)?),
            2 => {
                let length = usize::try_from(varint(&mut input)?).map_err(|e| e.to_string())?;
                if length > input.len() {
                    return Err("truncated field".to_string());
                }
                let (bytes, rest) = input.split_at(length);
                input = rest;
                Payload::Bytes(bytes)
            }
            1 => {
                input = input.get(8..).ok_or("truncated fixed64")?;
                Payload::Varint(0)
            }
            5 => {
                input = input.get(4..).ok_or("truncated fixed32")?;
                Payload::Varint(0)
            }
            other => return Err(format!("unsupported wire type {other}")),
        };
        out.push((key >> 3, payload));
    }
    Ok(out)
}

fn text(bytes: &[u8]) -> Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|e| e.to_string())
}

/// A `map<string, …>` entry: key 1, value 2.
fn entry(bytes: &[u8]) -> Result<(String, &[u8]), String> {
    let mut key = String::new();
    let mut value: &[u8] = &[];
    for (number, payload) in fields(bytes)? {
        match (number, payload) {
            (1, Payload::Bytes(b)) => key = text(b)?,
            (2, Payload::Bytes(b)) => value = b,
            _ => {}
        }
    }
    Ok((key, value))
}

fn insert_text(map: &mut Map<String, Value>, bytes: &[u8]) -> Result<(), String> {
    let (key, value) = entry(bytes)?;
    map.insert(key, json!(text(value)?));
    Ok(())
}

/// `ObjectMeta`: name 1, generateName 2, namespace 3, resourceVersion 6, labels 11,
/// annotations 12 (what a create or update sends).
fn object_meta(bytes: &[u8]) -> Result<Value, String> {
    let mut meta = Map::new();
    let mut labels = Map::new();
    let mut annotations = Map::new();
    for (number, payload) in fields(bytes)? {
        let Payload::Bytes(b) = payload else { continue };
        // Go's protobuf encoding writes empty strings; JSON omits them.
        let field = match number {
            1 => "name",
            2 => "generateName",
            3 => "namespace",
            6 => "resourceVersion",
            11 => {
                insert_text(&mut labels, b)?;
                continue;
            }
            12 => {
                insert_text(&mut annotations, b)?;
                continue;
            }
            _ => continue,
        };
        if !b.is_empty() {
            meta.insert(field.into(), json!(text(b)?));
        }
    }
    if !labels.is_empty() {
        meta.insert("labels".into(), Value::Object(labels));
    }
    if !annotations.is_empty() {
        meta.insert("annotations".into(), Value::Object(annotations));
    }
    Ok(Value::Object(meta))
}

/// Secret: metadata 1, data 2 (bytes), type 3, stringData 4, immutable 5.
fn secret(bytes: &[u8]) -> Result<Value, String> {
    let mut object = json!({ "apiVersion": "v1", "kind": "Secret" });
    let mut data = Map::new();
    let mut string_data = Map::new();
    for (number, payload) in fields(bytes)? {
        match (number, payload) {
            (1, Payload::Bytes(b)) => object["metadata"] = object_meta(b)?,
            (2, Payload::Bytes(b)) => {
                let (key, value) = entry(b)?;
                data.insert(key, json!(BASE64.encode(value)));
            }
            (3, Payload::Bytes(b)) => object["type"] = json!(text(b)?),
            (4, Payload::Bytes(b)) => insert_text(&mut string_data, b)?,
            (5, Payload::Varint(v)) => object["immutable"] = json!(v != 0),
            _ => {}
        }
    }
    if !data.is_empty() {
        object["data"] = Value::Object(data);
    }
    if !string_data.is_empty() {
        object["stringData"] = Value::Object(string_data);
    }
    Ok(object)
}

/// ConfigMap: metadata 1, data 2, binaryData 3 (bytes), immutable 4.
fn config_map(bytes: &[u8]) -> Result<Value, String> {
    let mut object = json!({ "apiVersion": "v1", "kind": "ConfigMap" });
    let mut data = Map::new();
    let mut binary = Map::new();
    for (number, payload) in fields(bytes)? {
        match (number, payload) {
            (1, Payload::Bytes(b)) => object["metadata"] = object_meta(b)?,
            (2, Payload::Bytes(b)) => insert_text(&mut data, b)?,
            (3, Payload::Bytes(b)) => {
                let (key, value) = entry(b)?;
                binary.insert(key, json!(BASE64.encode(value)));
            }
            (4, Payload::Varint(v)) => object["immutable"] = json!(v != 0),
            _ => {}
        }
    }
    if !data.is_empty() {
        object["data"] = Value::Object(data);
    }
    if !binary.is_empty() {
        object["binaryData"] = Value::Object(binary);
    }
    Ok(object)
}

/// Namespace: metadata 1 (spec and status are set by the server).
fn namespace(bytes: &[u8]) -> Result<Value, String> {
    let mut object = json!({ "apiVersion": "v1", "kind": "Namespace" });
    for (number, payload) in fields(bytes)? {
        if let (1, Payload::Bytes(b)) = (number, payload) {
            object["metadata"] = object_meta(b)?;
        }
    }
    Ok(object)
}

/// Whether a request's `Content-Type` is Kubernetes protobuf.
pub(super) fn is_protobuf(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.split(';').next().is_some_and(|m| m.trim() == MEDIA_TYPE))
}

/// Why a protobuf body cannot be read: a kind the stand-in does not decode (415), or a
/// body that is not what the envelope promises (400).
pub(super) enum Unreadable {
    Kind(String),
    Malformed(String),
}

/// A create or replace body as JSON, whether it came as JSON or as protobuf.
pub(super) fn request_body(
    headers: &axum::http::HeaderMap,
    body: &[u8],
) -> Result<Value, super::kinds::ApiError> {
    use super::kinds::ApiError;
    if !is_protobuf(headers) {
        return serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding JSON: {e}")));
    }
    to_json(body).map_err(|unreadable| match unreadable {
        Unreadable::Kind(kind) => ApiError::new(
            axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!(
                "the Kubernetes stand-in reads {MEDIA_TYPE} only for Secret, ConfigMap and Namespace, not {kind}; send application/json"
            ),
            json!({}),
        ),
        Unreadable::Malformed(why) => {
            ApiError::bad_request(format!("error decoding protobuf: {why}"))
        }
    })
}

/// The JSON of a protobuf request body.
fn to_json(body: &[u8]) -> Result<Value, Unreadable> {
    let malformed = Unreadable::Malformed;
    let envelope = body
        .strip_prefix(b"k8s\0")
        .ok_or_else(|| malformed("protobuf body without the k8s\\0 prefix".to_string()))?;
    let mut kind = String::new();
    let mut raw: &[u8] = &[];
    for (number, payload) in fields(envelope).map_err(malformed)? {
        match (number, payload) {
            (1, Payload::Bytes(type_meta)) => {
                for (n, p) in fields(type_meta).map_err(Unreadable::Malformed)? {
                    if let (2, Payload::Bytes(k)) = (n, p) {
                        kind = text(k).map_err(Unreadable::Malformed)?;
                    }
                }
            }
            (2, Payload::Bytes(bytes)) => raw = bytes,
            _ => {}
        }
    }
    let decoded = match kind.as_str() {
        "Secret" => secret(raw),
        "ConfigMap" => config_map(raw),
        "Namespace" => namespace(raw),
        other => return Err(Unreadable::Kind(other.to_string())),
    };
    decoded.map_err(Unreadable::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(number: u64, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![(number << 3 | 2) as u8, bytes.len() as u8];
        out.extend_from_slice(bytes);
        out
    }

    fn map_entry(number: u64, key: &str, value: &[u8]) -> Vec<u8> {
        field(
            number,
            &[field(1, key.as_bytes()), field(2, value)].concat(),
        )
    }

    #[test]
    fn a_protobuf_secret_reads_as_its_json() {
        let meta = [field(1, b"relay"), map_entry(11, "app", b"dify")].concat();
        let secret = [
            field(1, &meta),
            map_entry(2, "SMTP_PASSWORD", b"s3cret"),
            field(3, b"Opaque"),
        ]
        .concat();
        let type_meta = [field(1, b"v1"), field(2, b"Secret")].concat();
        let body = [b"k8s\0".to_vec(), field(1, &type_meta), field(2, &secret)].concat();
        let Ok(json) = to_json(&body) else {
            panic!("not decoded")
        };
        assert_eq!(
            json,
            json!({
                "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": { "name": "relay", "labels": { "app": "dify" } },
                "data": { "SMTP_PASSWORD": BASE64.encode("s3cret") },
            })
        );
    }
}
