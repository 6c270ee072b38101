//! One owner for each kind of client input: JSON request bodies and query strings.
//!
//! Both refuse what a lenient parser would settle silently: a repeated JSON key or query
//! parameter (serde_json and `form_urlencoded` let the last one win, so a proxy or a
//! validator in front of reportd could read a different request than reportd does) and
//! a name the endpoint does not know.

use actix_web::{web, HttpRequest};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::error::ApiError;

/// What a JSON body must look like: an object with only these keys.
pub(crate) struct BodyShape {
    /// The keys the object may have.
    pub allowed: &'static [&'static str],
    /// The shape, as told to a client that sent something else (`{"ids": [...]}`).
    pub expected: &'static str,
}

/// Reads a POST body as a JSON object of `shape`: `application/json` only (415), at
/// most `api.max_body_bytes` (413), well-formed with no key twice (400).
pub(crate) async fn json_object(
    req: &HttpRequest,
    body: web::Payload,
    max_body_bytes: usize,
    shape: &BodyShape,
) -> Result<Map<String, Value>, ApiError> {
    super::require_json(req)?;
    let bytes = super::read_limited(body, max_body_bytes).await?;
    parse_json_object(&bytes, shape)
}

/// Like [`json_object`], for a body that may be left out: an empty body (any content
/// type) is None; anything else must be a JSON object of `shape`.
pub(crate) async fn optional_json_object(
    req: &HttpRequest,
    body: web::Payload,
    max_body_bytes: usize,
    shape: &BodyShape,
) -> Result<Option<Map<String, Value>>, ApiError> {
    let bytes = super::read_limited(body, max_body_bytes).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    super::require_json(req)?;
    parse_json_object(&bytes, shape).map(Some)
}

/// The pure rule behind [`json_object`].
pub(crate) fn parse_json_object(
    bytes: &[u8],
    shape: &BodyShape,
) -> Result<Map<String, Value>, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(
            "body",
            format!("the body is empty; expected {}", shape.expected),
        ));
    }
    let StrictValue(value) = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::invalid("body", format!("malformed JSON: {e}")))?;
    let Value::Object(object) = value else {
        return Err(ApiError::invalid(
            "body",
            format!("expected {}", shape.expected),
        ));
    };
    if let Some(unknown) = object
        .keys()
        .find(|key| !shape.allowed.contains(&key.as_str()))
    {
        return Err(ApiError::invalid(
            unknown,
            format!(
                "unknown field `{unknown}`; allowed: {}",
                shape.allowed.join(", ")
            ),
        ));
    }
    Ok(object)
}

/// A query string's parameters, in order, each named in `allowed` and given once.
pub(crate) fn query_pairs(
    query: &str,
    allowed: &[&str],
) -> Result<Vec<(String, String)>, ApiError> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()).into_owned() {
        if !allowed.contains(&key.as_str()) {
            return Err(ApiError::invalid(
                &key,
                format!(
                    "unknown query parameter `{key}`; allowed: {}",
                    allowed.join(", ")
                ),
            ));
        }
        if pairs.iter().any(|(seen, _)| *seen == key) {
            return Err(ApiError::invalid(
                &key,
                format!("query parameter `{key}` is given more than once"),
            ));
        }
        pairs.push((key, value));
    }
    Ok(pairs)
}

/// A JSON value read with duplicate object keys, at any depth, as an error.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = StrictValue;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Number(v.into())))
    }

    fn visit_u64<E>(self, v: u64) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Number(v.into())))
    }

    fn visit_f64<E>(self, v: f64) -> Result<StrictValue, E> {
        // JSON has no NaN or infinity, so every parsed float is a Number.
        Ok(StrictValue(
            Number::from_f64(v).map_or(Value::Null, Value::Number),
        ))
    }

    fn visit_str<E>(self, v: &str) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::String(v.to_string())))
    }

    fn visit_string<E>(self, v: String) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::String(v)))
    }

    fn visit_unit<E>(self) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Null))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StrictValue, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(StrictValue(Value::Array(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StrictValue, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "the key `{key}` appears more than once"
                )));
            }
            let StrictValue(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(StrictValue(Value::Object(object)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: BodyShape = BodyShape {
        allowed: &["a", "b"],
        expected: "an object with a and b",
    };

    fn refused(body: &str) -> ApiError {
        match parse_json_object(body.as_bytes(), &SHAPE) {
            Ok(object) => panic!("{body} accepted as {object:?}"),
            Err(error) => error,
        }
    }

    #[test]
    fn a_key_given_twice_is_refused_at_any_depth() {
        for body in [
            r#"{"a": 1, "a": 2}"#,
            r#"{"a": {"x": 1, "x": 1}}"#,
            r#"{"a": [{"x": 1}, {"y": 1, "y": 2}]}"#,
        ] {
            let error = refused(body);
            assert_eq!(error.field.as_deref(), Some("body"), "{body}");
            assert!(
                error.message.contains("more than once"),
                "{}",
                error.message
            );
        }
    }

    #[test]
    fn an_object_of_known_keys_is_read_whole() {
        let object = parse_json_object(br#"{"a": [1, 2.5, "x", null, true], "b": {}}"#, &SHAPE)
            .expect("accepted");
        assert_eq!(
            Value::Object(object),
            serde_json::json!({"a": [1, 2.5, "x", null, true], "b": {}})
        );
    }

    #[test]
    fn empty_malformed_non_object_and_unknown_keys_are_refused_by_name() {
        assert!(refused("  ").message.contains("empty"));
        assert!(refused("{").message.contains("malformed JSON"));
        assert_eq!(refused("[1]").message, "expected an object with a and b");
        let unknown = refused(r#"{"a": 1, "c": 2}"#);
        assert_eq!(unknown.field.as_deref(), Some("c"));
        assert_eq!(unknown.message, "unknown field `c`; allowed: a, b");
    }

    #[test]
    fn a_query_parameter_given_twice_is_refused_by_name() {
        let error = query_pairs("limit=1&limit=2", &["limit"]).expect_err("refused");
        assert_eq!(error.field.as_deref(), Some("limit"));
        assert!(
            error.message.contains("more than once"),
            "{}",
            error.message
        );
    }

    #[test]
    fn query_parameters_are_decoded_in_order_and_unknown_ones_refused() {
        assert_eq!(
            query_pairs("b=x%20y&a=1", &["a", "b"]).expect("accepted"),
            vec![("b".into(), "x y".into()), ("a".into(), "1".into())]
        );
        let error = query_pairs("a=1&z=2", &["a", "b"]).expect_err("refused");
        assert_eq!(error.field.as_deref(), Some("z"));
        assert_eq!(error.message, "unknown query parameter `z`; allowed: a, b");
        assert!(query_pairs("", &["a"]).expect("empty").is_empty());
    }
}
