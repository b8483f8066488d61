//! Helpers shared by the resource converters: durations, percentages, matchers, header
//! operations, metadata and addresses, each checked and named in errors.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use envoy_types::pb::google::protobuf::{self as pbuf, value::Kind};
use prost::{Message, Name};
use weft_config::{HeaderOps, HeaderValueOp, Labels, Pattern, StringMatch};

use crate::Error;

pub type R<T> = Result<T, Error>;

/// Names the resource being converted, so every error says which one and which field.
#[derive(Clone, Debug)]
pub struct Ctx {
    resource: String,
}

impl Ctx {
    /// `kind` is the Envoy message name (`Cluster`, `Listener`, ...).
    pub fn new(kind: &str, name: &str) -> Ctx {
        Ctx { resource: format!("{kind} {name:?}") }
    }

    pub fn err(&self, field: impl Into<String>, message: impl Into<String>) -> Error {
        Error::Invalid { resource: self.resource.clone(), field: field.into(), message: message.into() }
    }

    pub fn unsupported(&self, field: impl Into<String>) -> Error {
        self.err(field, "not supported")
    }
}

/// `a.b` with an empty `a` is just `b`.
pub fn join(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_string()
    } else {
        format!("{prefix}.{field}")
    }
}

/// Decodes an `Any` that must hold `M`.
pub fn unpack<M: Message + Name + Default>(ctx: &Ctx, field: &str, any: &pbuf::Any) -> R<M> {
    let want = M::type_url();
    if any.type_url != want {
        return Err(ctx.err(field, format!("expected {want}, got {:?}", any.type_url)));
    }
    M::decode(any.value.as_slice()).map_err(|e| ctx.err(field, format!("cannot decode {}: {e}", M::full_name())))
}

/// The message name of a type URL (`type.googleapis.com/a.b.C` → `a.b.C`).
pub fn type_name(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or(url)
}

pub fn duration(ctx: &Ctx, field: &str, d: &pbuf::Duration) -> R<Duration> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 || d.seconds > 315_360_000 {
        return Err(ctx.err(field, format!("invalid duration {}s {}ns", d.seconds, d.nanos)));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// An optional duration with a default when absent.
pub fn dur_or(ctx: &Ctx, field: &str, d: &Option<pbuf::Duration>, default: Duration) -> R<Duration> {
    match d {
        None => Ok(default),
        Some(d) => duration(ctx, field, d),
    }
}

/// An optional timeout where zero means "disabled" (Envoy's convention); absent gives `default`.
pub fn timeout(ctx: &Ctx, field: &str, d: &Option<pbuf::Duration>, default: Option<Duration>) -> R<Option<Duration>> {
    match d {
        None => Ok(default),
        Some(d) => {
            let d = duration(ctx, field, d)?;
            Ok((!d.is_zero()).then_some(d))
        }
    }
}

/// A fractional percent as millionths; absent is 0 (the proto default), above 100% is capped.
pub fn fraction(ctx: &Ctx, field: &str, p: &Option<FractionalPercent>) -> R<u32> {
    let Some(p) = p else { return Ok(0) };
    let scale: u64 = match p.denominator {
        0 => 10_000,
        1 => 100,
        2 => 1,
        other => return Err(ctx.err(format!("{field}.denominator"), format!("unknown denominator {other}"))),
    };
    Ok((p.numerator as u64 * scale).min(1_000_000) as u32)
}

/// A runtime fraction as millionths: absent means 100%, its runtime key is ignored (no runtime).
pub fn runtime_fraction(ctx: &Ctx, field: &str, p: &Option<core::RuntimeFractionalPercent>) -> R<u32> {
    match p {
        None => Ok(1_000_000),
        Some(r) => fraction(ctx, &format!("{field}.default_value"), &r.default_value),
    }
}

/// A percent (0..=100) from Envoy's `type.v3.Percent`.
pub fn percent(ctx: &Ctx, field: &str, p: &Option<envoy_types::pb::envoy::r#type::v3::Percent>) -> R<Option<f64>> {
    match p {
        None => Ok(None),
        Some(p) if (0.0..=100.0).contains(&p.value) => Ok(Some(p.value)),
        Some(p) => Err(ctx.err(field, format!("{} out of range 0..100", p.value))),
    }
}

pub fn regex(ctx: &Ctx, field: &str, r: &matcher::RegexMatcher) -> R<Pattern> {
    Pattern::full(&r.regex).map_err(|e| ctx.err(format!("{field}.regex"), format!("invalid regex: {e}")))
}

/// Envoy's `StringMatcher`. `ignore_case` becomes a case-insensitive regex.
pub fn string_match(ctx: &Ctx, field: &str, m: &matcher::StringMatcher) -> R<StringMatch> {
    use matcher::string_matcher::MatchPattern as P;
    let ci = |pattern: String| {
        Pattern::full(&format!("(?i){pattern}")).map(StringMatch::Regex).map_err(|e| ctx.err(field, e.to_string()))
    };
    match &m.match_pattern {
        None => Err(ctx.err(field, "a match pattern is required")),
        Some(P::Exact(s)) if m.ignore_case => ci(regex::escape(s)),
        Some(P::Prefix(s)) if m.ignore_case => ci(format!("{}.*", regex::escape(s))),
        Some(P::Suffix(s)) if m.ignore_case => ci(format!(".*{}", regex::escape(s))),
        Some(P::Contains(s)) if m.ignore_case => ci(format!(".*{}.*", regex::escape(s))),
        Some(P::Exact(s)) => Ok(StringMatch::Exact(s.clone())),
        Some(P::Prefix(s)) => Ok(StringMatch::Prefix(s.clone())),
        Some(P::Suffix(s)) => Ok(StringMatch::Suffix(s.clone())),
        Some(P::Contains(s)) => Ok(StringMatch::Contains(s.clone())),
        Some(P::SafeRegex(r)) if m.ignore_case => Pattern::full(&format!("(?i)(?:{})", r.regex))
            .map(StringMatch::Regex)
            .map_err(|e| ctx.err(format!("{field}.safe_regex.regex"), format!("invalid regex: {e}"))),
        Some(P::SafeRegex(r)) => regex(ctx, &format!("{field}.safe_regex"), r).map(StringMatch::Regex),
        Some(P::Custom(_)) => Err(ctx.unsupported(format!("{field}.custom"))),
    }
}

fn has_formatter(v: &str) -> bool {
    v.replace("%%", "").contains('%')
}

/// Header additions and removals (`*_headers_to_add` / `*_headers_to_remove`).
pub fn header_ops(
    ctx: &Ctx,
    field: &str,
    adds: &[core::HeaderValueOption],
    removes: &[String],
    which: &str,
) -> R<HeaderOps> {
    let mut add = Vec::with_capacity(adds.len());
    for (i, h) in adds.iter().enumerate() {
        let f = join(field, &format!("{which}_headers_to_add[{i}]"));
        let Some(hv) = &h.header else { return Err(ctx.err(format!("{f}.header"), "required")) };
        let name = hv.key.to_ascii_lowercase();
        if name.starts_with(':') || http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(ctx.err(format!("{f}.header.key"), format!("invalid header name {:?}", hv.key)));
        }
        let value = if hv.value.is_empty() && !hv.raw_value.is_empty() {
            String::from_utf8(hv.raw_value.clone())
                .map_err(|_| ctx.err(format!("{f}.header.raw_value"), "not UTF-8"))?
        } else {
            hv.value.clone()
        };
        if http::HeaderValue::from_str(&value).is_err() {
            return Err(ctx.err(format!("{f}.header.value"), "invalid header value (control characters)"));
        }
        if has_formatter(&value) {
            return Err(ctx.err(format!("{f}.header.value"), "command operators (%...%) are not supported"));
        }
        // `%%` is Envoy's literal percent sign.
        let value = value.replace("%%", "%");
        let append = match (&h.append, h.append_action) {
            (Some(a), 0) => a.value,
            (Some(_), _) => return Err(ctx.err(format!("{f}.append"), "use either append or append_action")),
            (None, 0) => true,
            (None, 2) => false,
            (None, 1) => return Err(ctx.err(format!("{f}.append_action"), "ADD_IF_ABSENT is not supported")),
            (None, 3) => return Err(ctx.err(format!("{f}.append_action"), "OVERWRITE_IF_EXISTS is not supported")),
            (None, n) => return Err(ctx.err(format!("{f}.append_action"), format!("unknown value {n}"))),
        };
        // Envoy drops additions whose value is empty unless told to keep them.
        if value.is_empty() && !h.keep_empty_value {
            continue;
        }
        add.push(HeaderValueOp { name, value, append });
    }
    let mut remove = Vec::with_capacity(removes.len());
    for (i, n) in removes.iter().enumerate() {
        let n = n.to_ascii_lowercase();
        if http::HeaderName::from_bytes(n.as_bytes()).is_err() {
            return Err(
                ctx.err(join(field, &format!("{which}_headers_to_remove[{i}]")), format!("invalid header name {n:?}"))
            );
        }
        remove.push(n);
    }
    Ok(HeaderOps { add, remove })
}

/// String fields of `filter_metadata[namespace]`, as labels.
pub fn metadata_strings(md: &Option<core::Metadata>, namespace: &str) -> Labels {
    let mut out = Labels::new();
    let Some(s) = md.as_ref().and_then(|m| m.filter_metadata.get(namespace)) else { return out };
    for (k, v) in &s.fields {
        if let Some(Kind::StringValue(v)) = &v.kind {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

/// A field of `filter_metadata[namespace]`.
pub fn metadata_field<'a>(md: &'a Option<core::Metadata>, namespace: &str, key: &str) -> Option<&'a Kind> {
    md.as_ref()?.filter_metadata.get(namespace)?.fields.get(key)?.kind.as_ref()
}

/// A socket address (IP and port); host names are rejected unless `dns` allows them, in which
/// case they come back as `Err(host, port)`.
pub enum Addr {
    Ip(SocketAddr),
    Name(String, u16),
}

pub fn address(ctx: &Ctx, field: &str, a: &Option<core::Address>, dns: bool) -> R<Addr> {
    use core::address::Address as A;
    use core::socket_address::PortSpecifier as P;
    let sa = match a.as_ref().and_then(|a| a.address.as_ref()) {
        None => return Err(ctx.err(field, "an address is required")),
        Some(A::SocketAddress(sa)) => sa,
        Some(A::Pipe(_)) => return Err(ctx.err(format!("{field}.pipe"), "not supported")),
        Some(_) => return Err(ctx.err(field, "only socket_address is supported")),
    };
    let f = format!("{field}.socket_address");
    if sa.protocol != 0 {
        return Err(ctx.err(format!("{f}.protocol"), "only TCP is supported"));
    }
    if !sa.resolver_name.is_empty() {
        return Err(ctx.err(format!("{f}.resolver_name"), "not supported"));
    }
    let port = match &sa.port_specifier {
        Some(P::PortValue(p)) if *p <= 65535 => *p as u16,
        Some(P::PortValue(p)) => return Err(ctx.err(format!("{f}.port_value"), format!("{p} is not a port"))),
        Some(P::NamedPort(_)) => return Err(ctx.err(format!("{f}.named_port"), "not supported")),
        None => return Err(ctx.err(format!("{f}.port_value"), "required")),
    };
    if let Ok(ip) = sa.address.parse::<IpAddr>() {
        return Ok(Addr::Ip(SocketAddr::new(ip, port)));
    }
    let host = sa.address.to_ascii_lowercase();
    let valid_name = !host.is_empty()
        && host.len() <= 253
        && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
    if dns && valid_name {
        return Ok(Addr::Name(host, port));
    }
    let why = if dns { "invalid host name" } else { "not an IP address (host names need STRICT_DNS or LOGICAL_DNS)" };
    Err(ctx.err(format!("{f}.address"), format!("{:?}: {why}", sa.address)))
}

pub fn socket_address(ctx: &Ctx, field: &str, a: &Option<core::Address>) -> R<SocketAddr> {
    match address(ctx, field, a, false)? {
        Addr::Ip(sa) => Ok(sa),
        Addr::Name(..) => Err(ctx.err(field, "not an IP address")),
    }
}

pub fn cidr(ctx: &Ctx, field: &str, c: &core::CidrRange) -> R<weft_config::Cidr> {
    let addr: IpAddr = c
        .address_prefix
        .parse()
        .map_err(|_| ctx.err(format!("{field}.address_prefix"), format!("invalid IP {:?}", c.address_prefix)))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = c.prefix_len.as_ref().map(|p| p.value).unwrap_or(0);
    if len > max {
        return Err(ctx.err(format!("{field}.prefix_len"), format!("{len} is longer than {max}")));
    }
    Ok(weft_config::Cidr { addr, prefix_len: len as u8 })
}

/// A transport socket weft can honour: none, or plaintext (`raw_buffer`).
pub fn plaintext_socket(ctx: &Ctx, field: &str, t: &Option<core::TransportSocket>) -> R<()> {
    const RAW: &str = "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";
    let Some(t) = t else { return Ok(()) };
    let raw = match &t.config_type {
        Some(core::transport_socket::ConfigType::TypedConfig(any)) => type_name(&any.type_url) == RAW,
        None => t.name == "envoy.transport_sockets.raw_buffer" || t.name == "raw_buffer",
    };
    if raw {
        Ok(())
    } else {
        Err(ctx.unsupported(field))
    }
}
