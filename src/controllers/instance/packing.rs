//! A compact, lossless in-memory encoding of JSON values, for what the instance cache keeps of each object:
//! object keys and known words are a byte or two, RFC 3339 timestamps a varint of nanoseconds, numbers
//! varints. It is never stored or sent anywhere, so its word list may change from one build to the next.
//!
//! Why: kube's reflector store keeps one struct per object, and a `ComputeInstanceAction` is 824 bytes inline
//! (metadata 360, status 368) before any of its strings, most of them `None` or a known word. Packed, a settled
//! object's spec and status take a few hundred bytes.

use std::collections::{BTreeSet, HashMap};
use std::sync::OnceLock;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Number, Value};

const NULL: u8 = 0;
const FALSE: u8 = 1;
const TRUE: u8 = 2;
const UINT: u8 = 3;
const NEGATIVE: u8 = 4;
const FLOAT: u8 = 5;
const TEXT: u8 = 6;
const WORD: u8 = 7;
const TIME: u8 = 8;
const ARRAY: u8 = 9;
const OBJECT: u8 = 10;

/// Why bytes could not be unpacked (only bytes [`pack`] did not write: a bug, never input from outside).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("packed object is corrupt at byte {at}")]
pub struct Corrupt {
    at: usize,
}

/// The words written as an index: every key and enum value of the given schemas, plus `extra`.
pub struct Words {
    list: Vec<String>,
    index: HashMap<String, u64>,
}

impl Words {
    /// Collects the property names and enum values of `schemas` (OpenAPI JSON), and `extra`.
    pub fn from_schemas(schemas: &[Value], extra: impl IntoIterator<Item = String>) -> Self {
        fn walk(v: &Value, out: &mut BTreeSet<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::Object(props)) = m.get("properties") {
                        out.extend(props.keys().cloned());
                    }
                    if let Some(Value::Array(values)) = m.get("enum") {
                        out.extend(values.iter().filter_map(|v| v.as_str().map(str::to_owned)));
                    }
                    m.values().for_each(|v| walk(v, out));
                }
                Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
                _ => {}
            }
        }
        let mut set = BTreeSet::new();
        schemas.iter().for_each(|s| walk(s, &mut set));
        set.extend(extra);
        let list: Vec<String> = set.into_iter().collect();
        let index = list.iter().enumerate().map(|(i, w)| (w.clone(), i as u64)).collect();
        Self { list, index }
    }
}

/// The words of a `ComputeInstanceAction` (its CRD schema, the metadata keys, conditions' words).
pub fn action_words() -> &'static Words {
    static WORDS: OnceLock<Words> = OnceLock::new();
    WORDS.get_or_init(|| {
        use crate::crd::instance_action::ComputeInstanceAction;
        use kube::{CustomResourceExt, Resource};
        let crd = serde_json::to_value(ComputeInstanceAction::crd()).unwrap_or_default();
        let this_kind = [
            ComputeInstanceAction::api_version(&()).into_owned(),
            ComputeInstanceAction::kind(&()).into_owned(),
            crate::crd::fleet_action::ComputeFleetAction::kind(&()).into_owned(),
        ];
        Words::from_schemas(
            &[crd],
            this_kind.into_iter().chain(
                [
                    "metadata",
                    "labels",
                    "annotations",
                    "ownerReferences",
                    "apiVersion",
                    "kind",
                    "name",
                    "uid",
                    "controller",
                    "blockOwnerDeletion",
                    "finalizers",
                    "creationTimestamp",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "Ready",
                    "Reconciling",
                    "Stalled",
                    "True",
                    "False",
                    "Unknown",
                    "",
                ]
                .map(str::to_owned),
            ),
        )
    })
}

/// `value` packed with `words`.
pub fn pack(value: &Value, words: &Words) -> Box<[u8]> {
    let mut out = Vec::with_capacity(256);
    write(value, words, &mut out);
    out.into_boxed_slice()
}

/// The value [`pack`] packed, with the same words.
pub fn unpack(bytes: &[u8], words: &Words) -> Result<Value, Corrupt> {
    let mut reader = Reader { bytes, at: 0, words };
    let value = reader.value(0)?;
    if reader.at != bytes.len() {
        return Err(Corrupt { at: reader.at });
    }
    Ok(value)
}

fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn text(s: &str, out: &mut Vec<u8>) {
    varint(s.len() as u64, out);
    out.extend_from_slice(s.as_bytes());
}

/// A timestamp as nanoseconds since the epoch, when formatting those back gives exactly `s` again.
fn timestamp(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[10] != b'T' || !s.ends_with('Z') {
        return None;
    }
    let t = DateTime::parse_from_rfc3339(s).ok()?.with_timezone(&Utc);
    (t.to_rfc3339_opts(SecondsFormat::AutoSi, true) == s)
        .then(|| t.timestamp_nanos_opt())
        .flatten()
}

fn write(value: &Value, words: &Words, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.push(NULL),
        Value::Bool(false) => out.push(FALSE),
        Value::Bool(true) => out.push(TRUE),
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => {
                out.push(UINT);
                varint(u, out);
            }
            (None, Some(i)) => {
                out.push(NEGATIVE);
                varint(!(i as u64), out);
            }
            _ => {
                out.push(FLOAT);
                out.extend_from_slice(&n.as_f64().unwrap_or_default().to_le_bytes());
            }
        },
        Value::String(s) => {
            if let Some(i) = words.index.get(s) {
                out.push(WORD);
                varint(*i, out);
            } else if let Some(nanos) = timestamp(s) {
                out.push(TIME);
                varint(((nanos << 1) ^ (nanos >> 63)) as u64, out);
            } else {
                out.push(TEXT);
                text(s, out);
            }
        }
        Value::Array(items) => {
            out.push(ARRAY);
            varint(items.len() as u64, out);
            items.iter().for_each(|v| write(v, words, out));
        }
        Value::Object(map) => {
            out.push(OBJECT);
            varint(map.len() as u64, out);
            for (k, v) in map {
                // 0 is a key written out; n is the word n - 1.
                match words.index.get(k) {
                    Some(i) => varint(i + 1, out),
                    None => {
                        varint(0, out);
                        text(k, out);
                    }
                }
                write(v, words, out);
            }
        }
    }
}

/// Deeper than any object the API server accepts (and a bound on recursion).
const MAX_DEPTH: usize = 64;

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    words: &'a Words,
}

impl Reader<'_> {
    fn corrupt(&self) -> Corrupt {
        Corrupt { at: self.at }
    }

    fn byte(&mut self) -> Result<u8, Corrupt> {
        let b = *self.bytes.get(self.at).ok_or(self.corrupt())?;
        self.at += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, Corrupt> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(self.corrupt())
    }

    fn text(&mut self) -> Result<String, Corrupt> {
        let len = usize::try_from(self.varint()?).map_err(|_| self.corrupt())?;
        let end = self.at.checked_add(len).ok_or(self.corrupt())?;
        let s = self.bytes.get(self.at..end).ok_or(self.corrupt())?;
        let s = std::str::from_utf8(s).map_err(|_| self.corrupt())?.to_owned();
        self.at = end;
        Ok(s)
    }

    fn word(&mut self, i: u64) -> Result<String, Corrupt> {
        let i = usize::try_from(i).map_err(|_| self.corrupt())?;
        self.words.list.get(i).cloned().ok_or(self.corrupt())
    }

    fn value(&mut self, depth: usize) -> Result<Value, Corrupt> {
        if depth > MAX_DEPTH {
            return Err(self.corrupt());
        }
        Ok(match self.byte()? {
            NULL => Value::Null,
            FALSE => Value::Bool(false),
            TRUE => Value::Bool(true),
            UINT => Value::Number(self.varint()?.into()),
            NEGATIVE => Value::Number((!self.varint()? as i64).into()),
            FLOAT => {
                let end = self.at + 8;
                let b: [u8; 8] = self
                    .bytes
                    .get(self.at..end)
                    .and_then(|b| b.try_into().ok())
                    .ok_or(self.corrupt())?;
                self.at = end;
                Number::from_f64(f64::from_le_bytes(b)).map_or(Value::Null, Value::Number)
            }
            TEXT => Value::String(self.text()?),
            WORD => {
                let i = self.varint()?;
                Value::String(self.word(i)?)
            }
            TIME => {
                let z = self.varint()?;
                let nanos = ((z >> 1) as i64) ^ -((z & 1) as i64);
                Value::String(DateTime::from_timestamp_nanos(nanos).to_rfc3339_opts(SecondsFormat::AutoSi, true))
            }
            ARRAY => {
                let n = self.varint()?;
                let mut items = Vec::with_capacity(usize::try_from(n.min(1024)).unwrap_or_default());
                for _ in 0..n {
                    items.push(self.value(depth + 1)?);
                }
                Value::Array(items)
            }
            OBJECT => {
                let n = self.varint()?;
                let mut map = Map::new();
                for _ in 0..n {
                    let key = match self.varint()? {
                        0 => self.text()?,
                        i => self.word(i - 1)?,
                    };
                    let v = self.value(depth + 1)?;
                    map.insert(key, v);
                }
                Value::Object(map)
            }
            _ => return Err(Corrupt { at: self.at - 1 }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn words() -> Words {
        Words::from_schemas(
            &[json!({"properties": {"phase": {"enum": ["Succeeded", "Failed"]}, "when": {}}})],
            ["Ready".to_owned()],
        )
    }

    #[test]
    fn every_kind_of_value_comes_back_as_it_was() {
        let w = words();
        let cases = [
            json!(null),
            json!({"phase": "Succeeded", "when": "2026-12-08T01:02:03Z", "other key": "Ready"}),
            json!({"t1": "2026-12-08T01:02:03.5Z", "t2": "2026-12-08T01:02:03.123456789Z", "t3": "1970-01-01T00:00:00Z"}),
            // Timestamp-like strings that would not format back the same stay text.
            json!([
                "2026-12-08T01:02:03.500Z",
                "2026-12-08T01:02:03+01:00",
                "2026-13-08T01:02:03Z",
                "not a time"
            ]),
            json!([
                0,
                1,
                127,
                128,
                u64::MAX,
                -1,
                -128,
                i64::MIN,
                1.5,
                -0.25,
                true,
                false,
                [],
                {}
            ]),
            json!({"nested": {"deeper": [{"a": ""}, {"phase": "Failed"}]}, "ünïcode": "ß→✓"}),
        ];
        for case in cases {
            let packed = pack(&case, &w);
            assert_eq!(unpack(&packed, &w), Ok(case.clone()), "{case}");
        }
    }

    #[test]
    fn known_words_and_timestamps_take_little_room() {
        let w = words();
        let v = json!({"phase": "Succeeded", "when": "2026-12-08T01:02:03.123456Z"});
        let packed = pack(&v, &w);
        // OBJECT, 2, key, WORD, word, key, TIME + 9 varint bytes of nanoseconds.
        assert!(packed.len() <= 16, "{} bytes", packed.len());
        assert!(packed.len() * 3 < serde_json::to_vec(&v).map(|b| b.len()).unwrap_or_default());
    }

    #[test]
    fn bytes_it_did_not_write_are_refused_not_trusted() {
        let w = words();
        let good = pack(&json!({"phase": ["x", 1]}), &w);
        for cut in 0..good.len() {
            assert!(unpack(&good[..cut], &w).is_err(), "cut at {cut}");
        }
        assert!(unpack(&[99], &w).is_err());
        assert!(unpack(&[WORD, 200], &w).is_err());
        let mut trailing = good.to_vec();
        trailing.push(NULL);
        assert!(unpack(&trailing, &w).is_err());
        // Nesting beyond the bound is refused instead of recursing.
        let deep: Vec<u8> = std::iter::repeat_n([ARRAY, 1], 100).flatten().chain([NULL]).collect();
        assert!(unpack(&deep, &w).is_err());
    }
}
