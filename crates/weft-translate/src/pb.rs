//! Small builders for the Envoy protos the generators share (addresses, ADS config sources,
//! typed `Any` configs, durations, percentages).

use std::time::Duration as StdDuration;

use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::config::core::v3::{
    address, config_source, socket_address, Address, AggregatedConfigSource, ApiVersion, ConfigSource, Pipe,
    SocketAddress,
};
use envoy_types::pb::envoy::r#type::v3::{fractional_percent::DenominatorType, FractionalPercent};
use envoy_types::pb::google::protobuf::{value::Kind, Any, BoolValue, Duration, ListValue, Struct, UInt32Value, Value};
use prost::{Message, Name};

/// Packs a message into an `Any` with its type URL.
pub fn any<M: Message + Name>(msg: &M) -> Any {
    Any { type_url: M::type_url(), value: msg.encode_to_vec() }
}

pub fn duration(d: StdDuration) -> Duration {
    Duration { seconds: d.as_secs().min(i64::MAX as u64) as i64, nanos: d.subsec_nanos() as i32 }
}

pub fn secs(s: i64) -> Duration {
    Duration { seconds: s, nanos: 0 }
}

pub fn u32v(v: u32) -> UInt32Value {
    UInt32Value { value: v }
}

pub fn boolv(v: bool) -> BoolValue {
    BoolValue { value: v }
}

/// `ConfigSource { ads: {}, resource_api_version: V3 }`: fetch over the node's ADS stream.
pub fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

/// A TCP socket address (`address` may be an IP or, for DNS clusters, a host name).
pub fn socket(address: &str, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: address.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port as u32)),
            ..Default::default()
        })),
    }
}

pub fn pipe(path: &str) -> Address {
    Address { address: Some(address::Address::Pipe(Pipe { path: path.to_string(), mode: 0 })) }
}

/// A percentage (0..=100, fractions allowed) as parts per million, like Istio.
pub fn per_million(percent: f64) -> FractionalPercent {
    let numerator = (percent.clamp(0.0, 100.0) * 10_000.0).round() as u32;
    FractionalPercent { numerator, denominator: DenominatorType::Million as i32 }
}

pub fn string_value(s: String) -> Value {
    Value { kind: Some(Kind::StringValue(s)) }
}

pub fn list_value(values: Vec<Value>) -> Value {
    Value { kind: Some(Kind::ListValue(ListValue { values })) }
}

fn pb_struct<'a>(fields: impl IntoIterator<Item = (&'a str, Value)>) -> Struct {
    Struct { fields: fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect() }
}

pub fn struct_value<'a>(fields: impl IntoIterator<Item = (&'a str, Value)>) -> Value {
    Value { kind: Some(Kind::StructValue(pb_struct(fields))) }
}

/// `filter_metadata[namespace]` with the given fields.
pub fn metadata<'a>(namespace: &str, fields: impl IntoIterator<Item = (&'a str, Value)>) -> Metadata {
    Metadata {
        filter_metadata: [(namespace.to_string(), pb_struct(fields))].into_iter().collect(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_become_parts_per_million() {
        for (pct, want) in [(0.0, 0), (100.0, 1_000_000), (0.1, 1000), (12.5, 125_000), (150.0, 1_000_000)] {
            assert_eq!(per_million(pct).numerator, want, "{pct}");
        }
    }

    #[test]
    fn durations_keep_fractions() {
        let d = duration(StdDuration::from_millis(1500));
        assert_eq!((d.seconds, d.nanos), (1, 500_000_000));
    }
}
