//! `weft proxy --xds`: the node identity from the flags, and the xDS client plugged into the
//! proxy as its dynamic config source.

use std::collections::BTreeMap;
use std::sync::Arc;

use weft_config::Bootstrap;
use weft_xds_client::{ApplyError, Options, Protocol, Status};

use crate::ProxyArgs;

/// Checks the xDS flags and builds the bootstrap (node labels for metrics) and the source.
pub fn setup(
    a: &ProxyArgs,
    server: &str,
    mut boot: Bootstrap,
) -> Result<(Bootstrap, weft_proxy::DynamicConfig), String> {
    weft_xds_client::client::server_uri(server).map_err(|e| format!("--xds: {e}"))?;
    let Some(id) = a.node_id.as_deref() else { return Err("--xds needs --node-id".into()) };
    let mut labels = BTreeMap::new();
    for kv in a.labels.iter().filter(|s| !s.is_empty()) {
        match kv.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                labels.insert(k.trim().to_string(), v.trim().to_string());
            }
            _ => return Err(format!("--labels: {kv:?} is not KEY=VALUE")),
        }
    }
    let mut node = weft_xds_client::node(id, a.namespace.as_deref(), &labels, &a.instance_ips, a.tenant.as_deref())
        .map_err(|e| format!("--node-id: {e}"))?;
    if let Some(port) = a.http_proxy_port {
        use weft_xds::envoy_types::pb::google::protobuf::{value::Kind, Value};
        let value = Value { kind: Some(Kind::StringValue(port.to_string())) };
        node.metadata.get_or_insert_with(Default::default).fields.insert(weft_xds::HTTP_PROXY_PORT.to_string(), value);
    }
    let info = weft_xds::NodeInfo::from_node(&node).map_err(|e| format!("--node-id: {e}"))?;

    // Source labels of the proxy's metrics: the flags win over the file.
    let n = &mut boot.node;
    n.id = id.to_string();
    n.namespace = info.namespace.clone();
    for (k, v) in &labels {
        n.labels.insert(k.clone(), v.clone());
    }
    if let Some(app) = labels.get("app") {
        n.app = app.clone();
    }
    if let Some(version) = labels.get("version") {
        n.version = version.clone();
    }
    if n.workload.is_empty() {
        n.workload = info.name.clone();
    }

    let protocol = if a.xds_protocol == "sotw" { Protocol::Sotw } else { Protocol::Delta };
    let mut opts = Options::new(server, node, boot.config.clone());
    opts.protocol = protocol;
    opts.cache_dir = a.xds_cache.clone();
    let status = Arc::new(Status::new(server, id, protocol));
    let (dump_status, metrics_status) = (status.clone(), status.clone());
    let dynamic = weft_proxy::DynamicConfig {
        start: Box::new(move |handle: weft_proxy::ConfigHandle| {
            Box::pin(weft_xds_client::run(opts, status, move |config| {
                let handle = handle.clone();
                async move {
                    handle.apply(config).await.map_err(|e| match e {
                        weft_proxy::ApplyError::Listener { name, message } => ApplyError::Listener { name, message },
                        weft_proxy::ApplyError::Stopped => ApplyError::Stopped,
                    })
                }
            }))
        }),
        dump: Arc::new(move || dump_status.dump()),
        metrics: Arc::new(move || {
            metrics_status
                .metrics()
                .into_iter()
                .map(|m| weft_proxy::ExtraMetric {
                    name: m.name,
                    help: m.help,
                    counter: m.counter,
                    labels: m.labels,
                    value: m.value,
                })
                .collect()
        }),
    };
    Ok((boot, dynamic))
}
