//! Walking a JSON document with a field path: typed getters that record errors instead of
//! failing, so every problem of a resource is reported; known-field lists that reject fields
//! outside Istio's API and record the ones Weft accepts without applying them. Also the small
//! syntax checks (DNS names, labels, hosts, durations) shared by all kinds.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, Value};

/// Errors and not-applied fields collected while validating one resource.
#[derive(Default)]
pub(crate) struct Ctx {
    pub errors: Vec<(String, String)>,
    pub not_applied: Vec<String>,
}

/// `parent.key`, or `parent["key"]` when the key is not a plain identifier.
pub(crate) fn join(parent: &str, key: &str) -> String {
    let plain = !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    match (parent.is_empty(), plain) {
        (true, true) => key.to_string(),
        (_, true) => format!("{parent}.{key}"),
        (_, false) => format!("{parent}[{key:?}]"),
    }
}

pub(crate) fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// An object being validated: its fields and its path.
pub(crate) struct Obj<'a> {
    pub map: &'a Map<String, Value>,
    pub path: String,
}

impl<'a> Obj<'a> {
    /// A field's value; absent and `null` are the same (as in protobuf JSON).
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }
    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }
    pub fn at(&self, key: &str) -> String {
        join(&self.path, key)
    }
}

impl Ctx {
    pub fn err(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push((field.into(), message.into()));
    }

    /// Checks `v` is an object whose fields are all in `applied` or `accepted` (Istio fields Weft
    /// does not apply: recorded in `not_applied` when present). Unknown fields are errors.
    pub fn object<'a>(&mut self, path: &str, v: &'a Value, applied: &[&str], accepted: &[&str]) -> Option<Obj<'a>> {
        let Some(map) = v.as_object() else {
            self.err(path, format!("must be an object, not {}", type_name(v)));
            return None;
        };
        for (key, value) in map {
            if applied.contains(&key.as_str()) {
                continue;
            }
            if accepted.contains(&key.as_str()) {
                if !value.is_null() {
                    self.not_applied.push(join(path, key));
                }
                continue;
            }
            let mut message = format!("unknown field {key:?}");
            if let Some(near) = nearest(key, applied.iter().chain(accepted)) {
                message.push_str(&format!(" (did you mean {near:?}?)"));
            }
            self.err(path, message);
        }
        Some(Obj { map, path: path.to_string() })
    }

    /// A required object-valued field.
    pub fn required<'a>(&mut self, o: &Obj<'a>, key: &str) -> Option<&'a Value> {
        let v = o.get(key);
        if v.is_none() {
            self.err(o.at(key), "required");
        }
        v
    }

    pub fn string(&mut self, path: &str, v: &Value) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            other => {
                self.err(path, format!("must be a string, not {}", type_name(other)));
                None
            }
        }
    }

    /// An optional string field; an empty string counts as absent (protobuf's default).
    pub fn opt_string(&mut self, o: &Obj, key: &str) -> Option<String> {
        let v = o.get(key)?;
        self.string(&o.at(key), v).filter(|s| !s.is_empty())
    }

    /// A required, non-empty string field.
    pub fn req_string(&mut self, o: &Obj, key: &str) -> Option<String> {
        match o.get(key) {
            None => {
                self.err(o.at(key), "required");
                None
            }
            Some(v) => {
                let s = self.string(&o.at(key), v)?;
                if s.is_empty() {
                    self.err(o.at(key), "must not be empty");
                    return None;
                }
                Some(s)
            }
        }
    }

    pub fn opt_bool(&mut self, o: &Obj, key: &str) -> Option<bool> {
        match o.get(key)? {
            Value::Bool(b) => Some(*b),
            other => {
                self.err(o.at(key), format!("must be true or false, not {}", type_name(other)));
                None
            }
        }
    }

    /// An integer in `min..=max` (protobuf JSON also allows a quoted integer).
    pub fn int(&mut self, path: &str, v: &Value, min: i64, max: i64) -> Option<i64> {
        let n = match v {
            Value::Number(n) => {
                n.as_i64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9e15).map(|f| f as i64))
            }
            Value::String(s) => s.trim().parse::<i64>().ok(),
            _ => None,
        };
        match n {
            None if matches!(v, Value::Number(_)) => {
                self.err(path, format!("must be a whole number between {min} and {max}"));
                None
            }
            None => {
                self.err(path, format!("must be a number, not {}", type_name(v)));
                None
            }
            Some(n) if n < min || n > max => {
                self.err(path, format!("must be between {min} and {max}"));
                None
            }
            Some(n) => Some(n),
        }
    }

    pub fn opt_u32(&mut self, o: &Obj, key: &str) -> Option<u32> {
        let v = o.get(key)?;
        self.int(&o.at(key), v, 0, u32::MAX as i64).map(|n| n as u32)
    }

    /// A port number 1..=65535.
    pub fn port(&mut self, path: &str, v: &Value) -> Option<u16> {
        self.int(path, v, 1, 65535).map(|n| n as u16)
    }

    /// An optional port where 0 (protobuf's default) means unset.
    pub fn opt_port(&mut self, o: &Obj, key: &str) -> Option<u16> {
        let v = o.get(key)?;
        if v.as_i64() == Some(0) {
            return None;
        }
        self.port(&o.at(key), v)
    }

    /// A double in 0..=100.
    pub fn percent(&mut self, path: &str, v: &Value) -> Option<f64> {
        let f = match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
            _ => None,
        };
        match f {
            None => {
                self.err(path, format!("must be a number, not {}", type_name(v)));
                None
            }
            Some(f) if !(0.0..=100.0).contains(&f) => {
                self.err(path, "must be between 0 and 100");
                None
            }
            Some(f) => Some(f),
        }
    }

    /// Istio's `Percent` message: `{value: 12.5}`.
    pub fn percent_msg(&mut self, path: &str, v: &Value) -> Option<f64> {
        let o = self.object(path, v, &["value"], &[])?;
        match o.get("value") {
            None => Some(0.0),
            Some(v) => self.percent(&o.at("value"), v),
        }
    }

    pub fn duration(&mut self, path: &str, v: &Value) -> Option<Duration> {
        let Some(s) = v.as_str() else {
            self.err(path, format!("must be a duration string such as \"1.5s\" or \"100ms\", not {}", type_name(v)));
            return None;
        };
        match parse_duration(s) {
            Ok(d) => Some(d),
            Err(m) => {
                self.err(path, m);
                None
            }
        }
    }

    pub fn opt_duration(&mut self, o: &Obj, key: &str) -> Option<Duration> {
        let v = o.get(key)?;
        self.duration(&o.at(key), v)
    }

    /// Istio's `ValidateDuration`: at least 1ms, whole milliseconds.
    pub fn opt_duration_ms(&mut self, o: &Obj, key: &str) -> Option<Duration> {
        let d = self.opt_duration(o, key)?;
        if d < Duration::from_millis(1) {
            self.err(o.at(key), "must be at least 1ms");
            return None;
        }
        if d.subsec_nanos() % 1_000_000 != 0 {
            self.err(o.at(key), "only whole milliseconds are supported");
            return None;
        }
        Some(d)
    }

    pub fn list<'a>(&mut self, path: &str, v: &'a Value) -> &'a [Value] {
        match v {
            Value::Array(a) => a,
            other => {
                self.err(path, format!("must be a list, not {}", type_name(other)));
                &[]
            }
        }
    }

    /// An optional list field (absent: empty).
    pub fn opt_list<'a>(&mut self, o: &Obj<'a>, key: &str) -> &'a [Value] {
        match o.get(key) {
            None => &[],
            Some(v) => self.list(&o.at(key), v),
        }
    }

    pub fn string_list(&mut self, o: &Obj, key: &str) -> Vec<String> {
        let path = o.at(key);
        let items = self.opt_list(o, key);
        items.iter().enumerate().filter_map(|(i, v)| self.string(&index(&path, i), v)).collect()
    }

    /// A map of strings to strings.
    pub fn string_map(&mut self, o: &Obj, key: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Some(v) = o.get(key) else { return out };
        let path = o.at(key);
        let Some(map) = v.as_object() else {
            self.err(path, format!("must be a map of strings, not {}", type_name(v)));
            return out;
        };
        for (k, v) in map {
            if let Some(s) = self.string(&join(&path, k), v) {
                out.insert(k.clone(), s);
            }
        }
        out
    }

    /// Kubernetes labels: keys are qualified names, values short label values.
    pub fn labels(&mut self, o: &Obj, key: &str) -> BTreeMap<String, String> {
        let path = o.at(key);
        let labels = self.string_map(o, key);
        for (k, v) in &labels {
            if let Err(m) = check_label_key(k).and_then(|_| check_label_value(v)) {
                self.err(join(&path, k), m);
            }
        }
        labels
    }

    /// An enum given by name; `allowed` pairs Istio's names with values.
    pub fn enumeration<T: Copy>(&mut self, o: &Obj, key: &str, allowed: &[(&str, T)]) -> Option<T> {
        let v = o.get(key)?;
        let s = self.string(&o.at(key), v)?;
        match allowed.iter().find(|(name, _)| *name == s) {
            Some((_, t)) => Some(*t),
            None => {
                let names: Vec<&str> = allowed.iter().map(|(n, _)| *n).collect();
                self.err(o.at(key), format!("{s:?} is not one of {}", names.join(", ")));
                None
            }
        }
    }
}

/// The closest candidate by edit distance, if close enough to be a likely typo.
fn nearest<'a>(key: &str, candidates: impl Iterator<Item = &'a &'a str>) -> Option<&'a str> {
    let lower = key.to_ascii_lowercase();
    candidates
        .map(|c| (edit_distance(&lower, &c.to_ascii_lowercase()), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

// ---------------------------------------------------------------------------------------------
// Syntax checks

/// Parses Istio durations: Go style (`1.5s`, `100ms`, `1h30m`, `2us`, `500ns`) which also covers
/// protobuf JSON (`3s`, `0.5s`). Negative, bare numbers and values beyond ~10 years are errors.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?} (examples: 1.5s, 100ms, 1h30m)");
    let text = s.trim();
    if text.is_empty() {
        return Err(bad());
    }
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_len == 0 {
            return Err(bad());
        }
        let (num, after) = rest.split_at(num_len);
        let value: f64 = num.parse().map_err(|_| bad())?;
        let unit_len = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            "" => return Err(format!("invalid duration {s:?}: missing unit (ns, us, ms, s, m, h)")),
            _ => return Err(format!("invalid duration {s:?}: unknown unit {unit:?} (ns, us, ms, s, m, h)")),
        };
        total += value * scale;
        rest = after;
    }
    if !total.is_finite() || total > 315_576_000_000.0 {
        return Err(format!("duration {s:?} is too long"));
    }
    // Round to whole nanoseconds so `0.1s` is exactly 100ms.
    let nanos = (total * 1e9).round();
    Ok(Duration::new((nanos / 1e9).floor() as u64, (nanos % 1e9) as u32))
}

/// The shortest exact spelling of a duration (`1.5s`, `100ms`, `2h`).
pub(crate) fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    for (unit, size) in
        [("h", 3_600_000_000_000u128), ("m", 60_000_000_000), ("s", 1_000_000_000), ("ms", 1_000_000), ("us", 1_000)]
    {
        if nanos % size == 0 {
            return format!("{}{unit}", nanos / size);
        }
    }
    if nanos % 1_000_000 == 0 || nanos >= 1_000_000_000 {
        return format!("{}s", d.as_secs_f64());
    }
    format!("{nanos}ns")
}

/// RFC 1123 label: lower-case alphanumerics and `-`, starting and ending alphanumeric, ≤ 63.
pub(crate) fn check_dns1123_label(s: &str) -> Result<(), String> {
    if is_dns1123_label(s) {
        Ok(())
    } else {
        Err(format!("{s:?} is not a valid DNS-1123 label (lower-case letters, digits and '-', at most 63)"))
    }
}

pub(crate) fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// RFC 1123 subdomain: dot-separated labels, ≤ 253 (Kubernetes object names).
pub(crate) fn check_dns1123_subdomain(s: &str) -> Result<(), String> {
    if !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label) {
        Ok(())
    } else {
        Err(format!("{s:?} is not a valid DNS-1123 name (lower-case letters, digits, '-' and '.', at most 253)"))
    }
}

/// A Kubernetes label name part: alphanumerics, `-`, `_`, `.`, starting and ending alphanumeric.
fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// A qualified label key: `name` or `prefix/name` with a DNS subdomain prefix.
pub(crate) fn check_label_key(k: &str) -> Result<(), String> {
    let ok = match k.split_once('/') {
        Some((prefix, name)) => check_dns1123_subdomain(prefix).is_ok() && is_label_name(name),
        None => is_label_name(k),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{k:?} is not a valid label key (name or prefix/name; alphanumerics, '-', '_', '.')"))
    }
}

/// A label value: empty, or like a label name.
pub(crate) fn check_label_value(v: &str) -> Result<(), String> {
    if v.is_empty() || is_label_name(v) {
        Ok(())
    } else {
        Err(format!("{v:?} is not a valid label value (at most 63 alphanumerics, '-', '_', '.')"))
    }
}

/// A port name (DNS-1123 label, Istio's `ValidatePortName`).
pub(crate) fn check_port_name(name: &str) -> Result<(), String> {
    if is_dns1123_label(name) {
        Ok(())
    } else {
        Err(format!("invalid port name {name:?} (DNS-1123 label: lower-case letters, digits and '-')"))
    }
}

/// A host name as Istio's `ValidateWildcardDomain`: at most 255 bytes, DNS labels (letters,
/// digits, `-`, any case); the first label may be a wildcard, `*` or a partial `*suffix`
/// (`*.example.com`, `*-api.example.com`); `*` alone only when `allow_star`. A trailing dot is
/// not allowed.
pub(crate) fn check_host(h: &str, allow_star: bool) -> Result<(), String> {
    if h == "*" {
        return if allow_star { Ok(()) } else { Err("the wildcard host \"*\" is not allowed here".into()) };
    }
    if h.is_empty() {
        return Err("host must not be empty".into());
    }
    if h.len() > 255 {
        return Err(format!("host {h:?} is longer than 255 characters"));
    }
    for (i, label) in h.split('.').enumerate() {
        // A wildcard first label: `*` or `*` followed by the end of a DNS label.
        let (label, wildcard) = match label.strip_prefix('*') {
            Some(rest) if i == 0 => (rest, true),
            _ => (label, false),
        };
        let b = label.as_bytes();
        let ok = (wildcard && b.is_empty())
            || (!b.is_empty()
                && b.len() <= 63
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
                && (wildcard || b[0] != b'-')
                && b[b.len() - 1] != b'-');
        if !ok {
            return Err(format!(
                "invalid host {h:?} (DNS name with an optional leading \"*.\"; label {label:?} is not valid)"
            ));
        }
    }
    Ok(())
}

/// A fully qualified name without wildcards (ServiceEntry hosts resolved by DNS).
pub(crate) fn is_fqdn(h: &str) -> bool {
    !h.contains('*') && check_host(h, false).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_istio_and_protobuf_forms() {
        let cases: &[(&str, Option<Duration>)] = &[
            ("1.5s", Some(Duration::from_millis(1500))),
            ("100ms", Some(Duration::from_millis(100))),
            ("1h", Some(Duration::from_secs(3600))),
            ("3s", Some(Duration::from_secs(3))),
            ("0.1s", Some(Duration::from_millis(100))),
            ("1h30m", Some(Duration::from_secs(5400))),
            ("2us", Some(Duration::from_micros(2))),
            ("500ns", Some(Duration::from_nanos(500))),
            ("0s", Some(Duration::ZERO)),
            ("0", Some(Duration::ZERO)),
            ("10", None),
            ("-1s", None),
            ("1d", None),
            ("s", None),
            ("", None),
            ("1..5s", None),
            ("99999999999h", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text).ok(), *want, "{text}");
        }
    }

    #[test]
    fn durations_format_back_exactly() {
        for d in [Duration::from_millis(1500), Duration::from_secs(7200), Duration::from_millis(100), Duration::ZERO] {
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
    }

    #[test]
    fn hosts_follow_istio_wildcard_domain_rules() {
        let cases = [
            ("api.example.com", false, true),
            ("*.example.com", false, true),
            ("reviews", false, true),
            ("Reviews.Example.COM", false, true),
            ("*", false, false),
            ("*", true, true),
            ("foo.*.com", false, false),
            ("*x", false, true),
            ("*-api.example.com", false, true),
            ("**.example.com", false, false),
            ("*.", false, false),
            ("exa mple.com", false, false),
            ("-bad.com", false, false),
            ("example.com.", false, false),
            ("", false, false),
        ];
        for (h, star, ok) in cases {
            assert_eq!(check_host(h, star).is_ok(), ok, "{h}");
        }
    }

    #[test]
    fn labels_and_names() {
        assert!(check_label_key("app").is_ok());
        assert!(check_label_key("weft.io/tenant").is_ok());
        assert!(check_label_key("app.kubernetes.io/name").is_ok());
        assert!(check_label_key("-app").is_err());
        assert!(check_label_key("Bad_Prefix/x").is_err());
        assert!(check_label_value("").is_ok());
        assert!(check_label_value("v1.2_x-y").is_ok());
        assert!(check_label_value("has space").is_err());
        assert!(check_dns1123_subdomain("reviews.v1").is_ok());
        assert!(check_dns1123_subdomain("Reviews").is_err());
        assert!(check_dns1123_label("a.b").is_err());
    }

    #[test]
    fn unknown_fields_suggest_the_nearest_known_one() {
        let mut cx = Ctx::default();
        let v = serde_json::json!({"tiemout": "1s", "corsPolicy": {}, "zzz": 1});
        cx.object("spec.http[0]", &v, &["timeout", "retries"], &["corsPolicy"]);
        assert_eq!(
            cx.errors,
            vec![
                ("spec.http[0]".to_string(), "unknown field \"tiemout\" (did you mean \"timeout\"?)".to_string()),
                ("spec.http[0]".to_string(), "unknown field \"zzz\"".to_string()),
            ]
        );
        assert_eq!(cx.not_applied, vec!["spec.http[0].corsPolicy".to_string()]);
    }

    #[test]
    fn paths_quote_keys_that_are_not_identifiers() {
        assert_eq!(join("metadata.labels", "app"), "metadata.labels.app");
        assert_eq!(join("metadata.labels", "weft.io/tenant"), "metadata.labels[\"weft.io/tenant\"]");
        assert_eq!(join("", "spec"), "spec");
    }
}
