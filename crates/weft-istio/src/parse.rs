//! Documents in, resources out: YAML → JSON, the resource envelope (apiVersion, kind,
//! metadata), then the kind's spec validator. Every error of a file is collected.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::kinds;
use crate::meta::{Key, Kind, ObjectMeta, Resource};
use crate::walk::{check_dns1123_label, check_dns1123_subdomain, Ctx};
use crate::{Error, Errors};

/// At most this many documents per file: a bound on work for hostile input.
const MAX_DOCUMENTS: usize = 10_000;

/// Parses a (multi-document) YAML file. Empty documents are skipped; `kind: List` documents
/// are expanded. If any document is invalid the whole file is rejected with every error.
pub fn parse_yaml(file: &str, text: &str) -> Result<Vec<Resource>, Errors> {
    let mut errors = Vec::new();
    let mut resources = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let label = format!("document {}", i + 1);
        if i >= MAX_DOCUMENTS {
            errors.push(whole(file, &label, format!("too many documents (at most {MAX_DOCUMENTS})")));
            break;
        }
        let yaml = match serde_yaml::Value::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                errors.push(whole(file, &label, format!("invalid YAML: {e}")));
                // The parser cannot resynchronise after a syntax error.
                break;
            }
        };
        let value = match yaml_to_json(yaml) {
            Ok(v) => v,
            Err(m) => {
                errors.push(whole(file, &label, m));
                continue;
            }
        };
        match value {
            Value::Null => continue,
            Value::Object(ref m) if m.get("kind").and_then(Value::as_str) == Some("List") => {
                expand_list(file, &label, &value, &mut resources, &mut errors)
            }
            v => match document(file, &label, v) {
                Ok(r) => resources.push(r),
                Err(mut e) => errors.append(&mut e),
            },
        }
    }
    check_duplicates(file, &resources, &mut errors);
    if errors.is_empty() {
        Ok(resources)
    } else {
        Err(Errors(errors))
    }
}

/// Validates one stored resource (the `raw` JSON of an earlier parse).
pub fn from_json(file: &str, value: Value) -> Result<Resource, Errors> {
    document(file, "document 1", value).map_err(Errors)
}

fn whole(file: &str, resource: &str, message: String) -> Error {
    Error { file: file.to_string(), resource: resource.to_string(), field: String::new(), message }
}

/// `kind: List` (what `kubectl get -o yaml` prints): each item is a resource.
fn expand_list(file: &str, label: &str, list: &Value, out: &mut Vec<Resource>, errors: &mut Vec<Error>) {
    let mut cx = Ctx::default();
    if let Some(o) = cx.object("", list, &["apiVersion", "kind", "items", "metadata"], &[]) {
        if o.get("apiVersion").and_then(Value::as_str) != Some("v1") {
            cx.err("apiVersion", "a List must have apiVersion v1");
        }
        let items = cx.opt_list(&o, "items");
        for (j, item) in items.iter().enumerate() {
            match document(file, &format!("{label} item {}", j + 1), item.clone()) {
                Ok(r) => out.push(r),
                Err(mut e) => errors.append(&mut e),
            }
        }
    }
    for (field, message) in cx.errors {
        errors.push(Error { file: file.into(), resource: label.into(), field, message });
    }
}

fn check_duplicates(file: &str, resources: &[Resource], errors: &mut Vec<Error>) {
    let mut seen: BTreeMap<Key, usize> = BTreeMap::new();
    for r in resources {
        let n = seen.entry(r.key()).or_default();
        *n += 1;
        if *n == 2 {
            errors.push(whole(file, &r.key().to_string(), "defined more than once in this file".into()));
        }
    }
}

/// YAML → JSON: keys become strings (YAML allows `80:`), merge keys (`<<`) are applied,
/// non-finite floats and tags are refused (they have no JSON form).
fn yaml_to_json(mut v: serde_yaml::Value) -> Result<Value, String> {
    v.apply_merge().map_err(|e| format!("invalid YAML merge key: {e}"))?;
    convert(v, 0)
}

fn convert(v: serde_yaml::Value, depth: usize) -> Result<Value, String> {
    use serde_yaml::Value as Y;
    if depth > 64 {
        return Err("document nested too deeply (more than 64 levels)".into());
    }
    Ok(match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                serde_json::Number::from_f64(f).map(Value::Number).ok_or_else(|| format!("number {f} is not finite"))?
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(items.into_iter().map(|i| convert(i, depth + 1)).collect::<Result<_, _>>()?),
        Y::Mapping(m) => {
            let mut out = serde_json::Map::new();
            for (k, v) in m {
                let key = match k {
                    Y::String(s) => s,
                    Y::Number(n) => n.to_string(),
                    Y::Bool(b) => b.to_string(),
                    other => return Err(format!("unsupported map key {other:?} (keys must be strings)")),
                };
                out.insert(key, convert(v, depth + 1)?);
            }
            Value::Object(out)
        }
        Y::Tagged(t) => return Err(format!("YAML tag {} is not supported", t.tag)),
    })
}

const METADATA_FIELDS: &[&str] =
    &["name", "namespace", "labels", "annotations", "creationTimestamp", "resourceVersion"];
/// Kubernetes bookkeeping that `kubectl get -o yaml` prints; accepted and ignored.
const K8S_METADATA_FIELDS: &[&str] = &[
    "uid",
    "generation",
    "managedFields",
    "finalizers",
    "ownerReferences",
    "generateName",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
];

/// One document: envelope, metadata, then the spec of its kind.
fn document(file: &str, label: &str, value: Value) -> Result<Resource, Vec<Error>> {
    let mut cx = Ctx::default();
    let mut kind = None;
    let mut api_version = String::new();
    let mut meta = ObjectMeta { namespace: "default".into(), ..Default::default() };
    let mut spec = None;
    // The resource as errors name it: `Kind ns/name` once both are known.
    let mut resource = label.to_string();

    if let Some(o) = cx.object("", &value, &["apiVersion", "kind", "metadata", "spec", "status"], &[]) {
        if let Some(k) = cx.req_string(&o, "kind") {
            match Kind::ALL.into_iter().find(|c| c.as_str() == k) {
                Some(c) => kind = Some(c),
                None => {
                    let names: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
                    cx.err("kind", format!("unsupported kind {k:?} (supported: {})", names.join(", ")));
                }
            }
        }
        if let Some(v) = cx.req_string(&o, "apiVersion") {
            if let Some(k) = kind {
                if !k.api_versions().contains(&v.as_str()) {
                    cx.err(
                        "apiVersion",
                        format!("{v:?} is not an apiVersion of {k} (use {})", k.api_versions().join(", ")),
                    );
                }
            }
            api_version = v;
        }
        if let Some(k) = kind {
            resource = format!("{label} ({k})");
        }
        match o.get("metadata") {
            None => cx.err("metadata.name", "required"),
            Some(m) => {
                if metadata(&mut cx, m, kind, &mut meta) {
                    if let Some(k) = kind {
                        resource = Key::new(k, &meta.namespace, &meta.name).to_string();
                    }
                }
            }
        }
        let empty = Value::Object(Default::default());
        let spec_value = o.get("spec").unwrap_or(&empty);
        if let Some(k) = kind {
            spec = Some(kinds::spec(&mut cx, k, spec_value, &meta));
        }
    }

    match (kind, spec) {
        (Some(kind), Some(spec)) if cx.errors.is_empty() => {
            let mut not_applied = cx.not_applied;
            not_applied.sort();
            not_applied.dedup();
            if !kind.is_applied() {
                not_applied = vec!["spec".to_string()];
            }
            Ok(Resource { api_version, kind, meta, spec, not_applied, raw: value })
        }
        _ => Err(cx
            .errors
            .into_iter()
            .map(|(field, message)| Error { file: file.to_string(), resource: resource.clone(), field, message })
            .collect()),
    }
}

/// Reads `metadata`; returns whether name and namespace are usable in the resource's label.
fn metadata(cx: &mut Ctx, v: &Value, kind: Option<Kind>, meta: &mut ObjectMeta) -> bool {
    let mut all = METADATA_FIELDS.to_vec();
    all.extend_from_slice(K8S_METADATA_FIELDS);
    let Some(o) = cx.object("metadata", v, &all, &[]) else { return false };
    let mut usable = true;
    match cx.req_string(&o, "name") {
        Some(name) => {
            // Istio requires Gateway names to be DNS labels (no dots).
            let check = if kind == Some(crate::Kind::Gateway) { check_dns1123_label } else { check_dns1123_subdomain };
            if let Err(m) = check(&name) {
                cx.err("metadata.name", m);
                usable = false;
            }
            meta.name = name;
        }
        None => usable = false,
    }
    if let Some(ns) = cx.opt_string(&o, "namespace") {
        if let Err(m) = check_dns1123_label(&ns) {
            cx.err("metadata.namespace", m);
            usable = false;
        }
        meta.namespace = ns;
    }
    meta.labels = cx.labels(&o, "labels");
    meta.annotations = cx.string_map(&o, "annotations");
    if let Some(ts) = cx.opt_string(&o, "creationTimestamp") {
        if parse_rfc3339(&ts).is_none() {
            cx.err("metadata.creationTimestamp", format!("{ts:?} is not an RFC 3339 time (e.g. 2024-05-01T10:00:00Z)"));
        }
        meta.creation_timestamp = Some(ts);
    }
    meta.resource_version = cx.opt_string(&o, "resourceVersion");
    usable
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` into (seconds since the Unix epoch, nanos),
/// so times with different offsets or precisions compare correctly.
pub(crate) fn parse_rfc3339(s: &str) -> Option<(i64, u32)> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let d = b.get(r)?;
        if d.is_empty() || !d.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(d).ok()?.parse().ok()
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days_in_month = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month[(month - 1) as usize] {
        return None;
    }
    if hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0u32;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 9 {
                nanos = nanos * 10 + u32::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start)..9 {
            nanos *= 10;
        }
    }
    let offset = match &b[i..] {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), ..] if b.len() - i == 6 && b[i + 3] == b':' => {
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let o = oh * 3600 + om * 60;
            if *sign == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hour * 3600 + min * 60 + sec - offset, nanos))
}
