//! The agent's file: read as YAML into raw structs, then validated into [`AgentConfig`] with
//! every problem reported as `FILE: FIELD: MESSAGE` (docs/agent.md lists the fields).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use weft_istio::registry::PROTOCOLS;
use weft_istio::{Locality, Protocol};

/// Default lease of a registered instance.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);
/// Default time between lease renewals.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);
/// Default local status endpoint (loopback only).
pub const DEFAULT_STATUS_LISTEN: &str = "127.0.0.1:15020";
/// Default uid of the proxy in capture mode (its traffic is exempt from capture).
pub const DEFAULT_PROXY_UID: u32 = 1337;
/// Default admin address of the supervised proxy.
pub const DEFAULT_PROXY_ADMIN: &str = "127.0.0.1:15000";
/// Default listen address of the supervised `weft dns`.
pub const DEFAULT_DNS_LISTEN: &str = "127.0.0.1:15053";
/// Default admin address of the supervised `weft dns`.
pub const DEFAULT_DNS_ADMIN: &str = "127.0.0.1:15054";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/weft-agent";

/// One problem in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// Field path (`services[1].ports[0].protocol`); empty for problems of the whole file.
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file, self.field, self.message)
        }
    }
}

/// Every problem found in one file, one per line when displayed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

// ---- the validated model -------------------------------------------------------------------

/// A validated agent file.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentConfig {
    /// The file it came from (for messages).
    pub file: String,
    pub control: ControlConfig,
    pub host: HostConfig,
    pub services: Vec<ServiceConfig>,
    /// Register this host against the WorkloadGroup of this name (in `host.namespace`).
    pub workload_group: Option<String>,
    pub lease_ttl: Duration,
    pub heartbeat: Duration,
    pub proxy: ProxyConfig,
    pub dns: DnsConfig,
    pub capture: CaptureConfig,
    /// Where `GET /status` is served (loopback).
    pub status_listen: SocketAddr,
    pub state_dir: PathBuf,
    /// The `weft` binary started for the proxy and DNS (default: the running one).
    pub weft_binary: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlConfig {
    /// The control plane's API, `HOST:PORT`.
    pub api: String,
    /// The control plane's xDS address, `HOST:PORT` (needed by the proxy and DNS).
    pub xds: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostConfig {
    pub address: IpAddr,
    /// DNS label naming the host in instance names and the proxy's node id.
    pub name: String,
    pub tenant: String,
    pub namespace: String,
    pub locality: Option<Locality>,
    pub network: Option<String>,
    /// Default for services without their own.
    pub service_account: Option<String>,
    /// The proxy's labels (default: the first service's).
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConfig {
    pub name: String,
    pub namespace: String,
    pub ports: Vec<PortConfig>,
    pub labels: BTreeMap<String, String>,
    pub weight: Option<u32>,
    pub service_account: Option<String>,
    pub health_check: Option<HealthCheck>,
}

impl ServiceConfig {
    /// `NAME.NAMESPACE.svc.cluster.local`.
    pub fn host(&self) -> String {
        format!("{}.{}.svc.cluster.local", self.name, self.namespace)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortConfig {
    pub name: String,
    /// The service port clients call.
    pub number: u16,
    /// Istio protocol name as written (validated), empty to infer it from the name.
    pub protocol: String,
    /// The port the application listens on (default: `number`).
    pub target_port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that make an unhealthy instance healthy.
    pub healthy_threshold: u32,
    /// Consecutive failures that make a healthy instance unhealthy.
    pub unhealthy_threshold: u32,
}

pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 1;
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// `GET http://ADDRESS:PORT/PATH`: healthy on 2xx and 3xx.
    Http { address: SocketAddr, path: String },
    /// A TCP connection is accepted.
    Tcp { address: SocketAddr },
    /// The command exits 0.
    Command(Vec<String>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    /// Traffic is captured (iptables/nftables) to the proxy's 15001/15006; the proxy runs as
    /// `uid` so its own traffic is exempt.
    Capture,
    /// Applications call the proxy's bind addresses (Sidecar `bind`, `captureMode: NONE`).
    Bind,
    /// Applications use the proxy's HTTP-proxy port (`HTTP_PROXY`).
    HttpProxy,
}

impl ProxyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyMode::Capture => "capture",
            ProxyMode::Bind => "bind",
            ProxyMode::HttpProxy => "http-proxy",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyConfig {
    pub enabled: bool,
    pub mode: ProxyMode,
    /// The uid the proxy runs as in capture mode.
    pub uid: u32,
    pub admin: SocketAddr,
    pub concurrency: u32,
    /// The HTTP-proxy port in `http-proxy` mode (Istio's `proxyHttpPort`).
    pub http_proxy_port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
    /// `weft dns`'s admin port (`/ready`, metrics, the name table).
    pub admin: SocketAddr,
    /// Upstream resolvers (`IP` or `IP:PORT`); empty: the host's resolv.conf.
    pub upstreams: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureConfig {
    pub enabled: bool,
    /// `auto`, `iptables` or `nftables`.
    pub mode: String,
    /// Inbound ports captured; `None`: the target ports of every service of the host.
    pub inbound_ports: Option<Vec<u16>>,
    /// Capture inbound traffic to every port (but `exclude_inbound_ports`).
    pub inbound_all: bool,
    pub outbound_cidrs: Vec<String>,
    pub outbound_ports: Vec<u16>,
    pub exclude_cidrs: Vec<String>,
    pub exclude_uids: Vec<u32>,
    pub exclude_inbound_ports: Vec<u16>,
    pub exclude_outbound_ports: Vec<u16>,
    /// Redirect the host's DNS (port 53) to `weft dns`.
    pub dns: bool,
    pub ipv6: bool,
    /// Add the local route for the VIP range.
    pub vip_route: bool,
}

impl Default for CaptureConfig {
    fn default() -> CaptureConfig {
        CaptureConfig {
            enabled: false,
            mode: "auto".into(),
            inbound_ports: None,
            inbound_all: false,
            outbound_cidrs: Vec::new(),
            outbound_ports: Vec::new(),
            exclude_cidrs: Vec::new(),
            exclude_uids: Vec::new(),
            exclude_inbound_ports: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            dns: false,
            ipv6: false,
            vip_route: true,
        }
    }
}

// ---- the file as written -------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawFile {
    control: Option<RawControl>,
    #[serde(default)]
    host: RawHost,
    #[serde(default)]
    services: Vec<RawService>,
    workload_group: Option<String>,
    lease_ttl: Option<String>,
    heartbeat: Option<String>,
    #[serde(default)]
    proxy: RawProxy,
    #[serde(default)]
    dns: RawDns,
    #[serde(default)]
    capture: RawCapture,
    #[serde(default)]
    status: RawStatus,
    state_dir: Option<PathBuf>,
    weft_binary: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawControl {
    api: Option<String>,
    xds: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawHost {
    address: Option<String>,
    name: Option<String>,
    tenant: Option<String>,
    namespace: Option<String>,
    locality: Option<String>,
    network: Option<String>,
    service_account: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawService {
    name: Option<String>,
    namespace: Option<String>,
    #[serde(default)]
    ports: Vec<RawPort>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    weight: Option<u32>,
    service_account: Option<String>,
    health_check: Option<RawHealth>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPort {
    name: Option<String>,
    number: Option<u32>,
    protocol: Option<String>,
    target_port: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawHealth {
    http: Option<RawHttpCheck>,
    tcp: Option<RawTcpCheck>,
    command: Option<Vec<String>>,
    interval: Option<String>,
    timeout: Option<String>,
    healthy_threshold: Option<u32>,
    unhealthy_threshold: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttpCheck {
    port: Option<u32>,
    path: Option<String>,
    host: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTcpCheck {
    port: Option<u32>,
    host: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawProxy {
    enabled: Option<bool>,
    mode: Option<String>,
    uid: Option<u32>,
    admin: Option<String>,
    concurrency: Option<u32>,
    http_proxy_port: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDns {
    enabled: Option<bool>,
    listen: Option<String>,
    admin: Option<String>,
    #[serde(default)]
    upstreams: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawCapture {
    enabled: Option<bool>,
    mode: Option<String>,
    inbound_ports: Option<RawPorts>,
    #[serde(default)]
    outbound_cidrs: Vec<String>,
    #[serde(default)]
    outbound_ports: Vec<u32>,
    #[serde(default)]
    exclude_cidrs: Vec<String>,
    #[serde(default)]
    exclude_uids: Vec<u32>,
    #[serde(default)]
    exclude_inbound_ports: Vec<u32>,
    #[serde(default)]
    exclude_outbound_ports: Vec<u32>,
    dns: Option<bool>,
    ipv6: Option<bool>,
    vip_route: Option<bool>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawPorts {
    All(String),
    List(Vec<u32>),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStatus {
    listen: Option<String>,
}

// ---- loading ---------------------------------------------------------------------------------

/// Reads and validates `path`.
pub fn load(path: &Path) -> Result<AgentConfig, ConfigErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.clone(),
            field: String::new(),
            message: format!("cannot read: {e}"),
        }])
    })?;
    parse(&file, &text)
}

/// Validates the text of an agent file; `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<AgentConfig, ConfigErrors> {
    let raw: RawFile = if text.trim().is_empty() {
        RawFile::default()
    } else {
        serde_yaml::from_str(text).map_err(|e| {
            ConfigErrors(vec![ConfigError { file: file.to_string(), field: String::new(), message: e.to_string() }])
        })?
    };
    let mut v = Validator { file: file.to_string(), errors: Vec::new() };
    let config = v.file(raw);
    if v.errors.is_empty() && config.capture.enabled {
        // weft-capture's own checks of the plan this file makes.
        if let Err(e) = crate::capture::plan(&config) {
            v.err("capture", e);
        }
    }
    if v.errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(v.errors))
    }
}

struct Validator {
    file: String,
    errors: Vec<ConfigError>,
}

impl Validator {
    fn err(&mut self, field: impl Into<String>, message: impl Into<String>) {
        let field = field.into();
        // One message per field is enough (a later check may repeat an earlier one's finding).
        if !field.is_empty() && self.errors.iter().any(|e| e.field == field) {
            return;
        }
        self.errors.push(ConfigError { file: self.file.clone(), field, message: message.into() });
    }

    fn duration(&mut self, field: &str, raw: Option<&str>, default: Duration) -> Duration {
        match raw {
            None => default,
            Some(s) => match weft_istio::parse_duration(s) {
                Ok(d) if d.is_zero() => {
                    self.err(field, format!("{s:?} must be longer than zero"));
                    default
                }
                Ok(d) => d,
                Err(m) => {
                    self.err(field, m);
                    default
                }
            },
        }
    }

    fn port(&mut self, field: &str, raw: Option<u32>) -> u16 {
        match raw {
            None => {
                self.err(field, "required");
                0
            }
            Some(p) if (1..=65535).contains(&p) => p as u16,
            Some(p) => {
                self.err(field, format!("{p} is not a port (1..65535)"));
                0
            }
        }
    }

    fn ports(&mut self, field: &str, raw: &[u32]) -> Vec<u16> {
        raw.iter().enumerate().map(|(i, p)| self.port(&format!("{field}[{i}]"), Some(*p))).collect()
    }

    fn socket(&mut self, field: &str, raw: Option<&str>, default: &str) -> SocketAddr {
        let s = raw.unwrap_or(default);
        match s.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                self.err(field, format!("{s:?} is not an IP:PORT address"));
                default.parse().unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)))
            }
        }
    }

    fn host_port(&mut self, field: &str, raw: Option<String>) -> Option<String> {
        let s = raw?;
        let ok = match s.rsplit_once(':') {
            Some((h, p)) => !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0),
            None => false,
        };
        if !ok {
            self.err(field, format!("{s:?} is not HOST:PORT"));
        }
        Some(s)
    }

    fn dns_label(&mut self, field: &str, s: &str) {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-');
        if !ok {
            self.err(
                field,
                format!("{s:?} is not a valid DNS-1123 label (lower-case letters, digits and '-', at most 63)"),
            );
        }
    }

    fn one_of(&mut self, field: &str, s: &str, allowed: &[&str]) -> bool {
        if allowed.contains(&s) {
            true
        } else {
            self.err(field, format!("unknown value {s:?} (expected one of {})", allowed.join(", ")));
            false
        }
    }

    fn file(&mut self, raw: RawFile) -> AgentConfig {
        let control = match raw.control {
            None => {
                self.err("control", "required (the control plane's api and xds addresses)");
                ControlConfig { api: String::new(), xds: None }
            }
            Some(c) => {
                let api = self.host_port("control.api", c.api.clone());
                if api.is_none() {
                    self.err("control.api", "required (the control plane's API, e.g. 127.0.0.1:15014)");
                }
                let xds = self.host_port("control.xds", c.xds);
                ControlConfig { api: api.unwrap_or_default(), xds }
            }
        };
        let host = self.host(raw.host);
        let lease_ttl = self.duration("leaseTtl", raw.lease_ttl.as_deref(), DEFAULT_LEASE_TTL);
        if !(Duration::from_secs(1)..=Duration::from_secs(24 * 3600)).contains(&lease_ttl) {
            self.err("leaseTtl", "must be between 1s and 24h");
        }
        let heartbeat = self.duration("heartbeat", raw.heartbeat.as_deref(), DEFAULT_HEARTBEAT);
        if heartbeat >= lease_ttl {
            self.err(
                "heartbeat",
                format!(
                    "{} must be shorter than leaseTtl ({}), or the lease runs out between renewals",
                    fmt_duration(heartbeat),
                    fmt_duration(lease_ttl)
                ),
            );
        }
        let workload_group = raw.workload_group.inspect(|g| self.dns_label("workloadGroup", g));
        let registers = !raw.services.is_empty() || workload_group.is_some();
        let services: Vec<ServiceConfig> =
            raw.services.into_iter().enumerate().map(|(i, s)| self.service(i, s, &host)).collect();
        self.service_conflicts(&services);
        for (i, s) in services.iter().enumerate() {
            self.instance_checks(i, s, &host);
        }
        let proxy = self.proxy(raw.proxy);
        let dns = self.dns(raw.dns);
        let capture = self.capture(raw.capture, &proxy, &dns);
        // A host that only calls the mesh registers nothing: its proxy and dns are the point.
        if !registers && !proxy.enabled && !dns.enabled {
            self.err(
                "services",
                "at least one service (or a workloadGroup) is required when neither proxy nor dns runs",
            );
        }
        if (proxy.enabled || dns.enabled) && control.xds.is_none() && !control.api.is_empty() {
            self.err("control.xds", "required when the proxy or dns is enabled (e.g. 127.0.0.1:15010)");
        }
        let status_listen = self.socket("status.listen", raw.status.listen.as_deref(), DEFAULT_STATUS_LISTEN);
        if !status_listen.ip().is_loopback() {
            self.err(
                "status.listen",
                format!("{status_listen} is not a loopback address (the status endpoint is local)"),
            );
        }
        AgentConfig {
            file: self.file.clone(),
            control,
            host,
            services,
            workload_group,
            lease_ttl,
            heartbeat,
            proxy,
            dns,
            capture,
            status_listen,
            state_dir: raw.state_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            weft_binary: raw.weft_binary,
        }
    }

    fn host(&mut self, raw: RawHost) -> HostConfig {
        let address = match raw.address.as_deref() {
            None => {
                self.err("host.address", "required (the IP address other hosts reach this one at)");
                IpAddr::from([127, 0, 0, 1])
            }
            Some(s) => match s.parse::<IpAddr>() {
                Ok(ip) if ip.is_unspecified() || ip.is_multicast() => {
                    self.err("host.address", format!("{ip} is not a unicast address"));
                    ip
                }
                Ok(ip) => ip,
                Err(_) => {
                    self.err("host.address", format!("{s:?} is not an IP address"));
                    IpAddr::from([127, 0, 0, 1])
                }
            },
        };
        let name = match raw.name {
            Some(n) => {
                self.dns_label("host.name", &n);
                n
            }
            None => match system_host_name() {
                Some(n) => n,
                None => {
                    self.err("host.name", "required: the system host name is not a usable DNS-1123 label");
                    String::new()
                }
            },
        };
        let tenant = raw.tenant.unwrap_or_else(|| "default".into());
        if tenant.is_empty() {
            self.err("host.tenant", "must not be empty");
        }
        let namespace = raw.namespace.unwrap_or_else(|| "default".into());
        self.dns_label("host.namespace", &namespace);
        let locality = raw.locality.filter(|l| !l.is_empty()).and_then(|l| match Locality::parse(&l) {
            Ok(l) => Some(l),
            Err(m) => {
                self.err("host.locality", m);
                None
            }
        });
        HostConfig {
            address,
            name,
            tenant,
            namespace,
            locality,
            network: raw.network,
            service_account: raw.service_account,
            labels: raw.labels,
        }
    }

    fn service(&mut self, i: usize, raw: RawService, host: &HostConfig) -> ServiceConfig {
        let f = format!("services[{i}]");
        let name = raw.name.unwrap_or_default();
        if name.is_empty() {
            self.err(format!("{f}.name"), "required");
        } else {
            self.dns_label(&format!("{f}.name"), &name);
        }
        let namespace = raw.namespace.unwrap_or_else(|| host.namespace.clone());
        self.dns_label(&format!("{f}.namespace"), &namespace);
        if raw.ports.is_empty() {
            self.err(format!("{f}.ports"), "at least one port is required");
        }
        let mut ports: Vec<PortConfig> = Vec::new();
        for (j, p) in raw.ports.into_iter().enumerate() {
            let pf = format!("{f}.ports[{j}]");
            let pname = p.name.unwrap_or_default();
            if pname.is_empty() {
                self.err(format!("{pf}.name"), "required");
            } else {
                self.dns_label(&format!("{pf}.name"), &pname);
            }
            let number = self.port(&format!("{pf}.number"), p.number);
            let target_port = match p.target_port {
                None => number,
                Some(t) => self.port(&format!("{pf}.targetPort"), Some(t)),
            };
            let protocol = p.protocol.unwrap_or_default();
            if !protocol.is_empty() && matches!(Protocol::parse(&protocol), Protocol::Unsupported(_)) {
                self.err(
                    format!("{pf}.protocol"),
                    format!("unknown value {protocol:?} (expected one of {})", PROTOCOLS.join(", ")),
                );
            }
            if let Some(k) = ports.iter().position(|q| q.name == pname && !pname.is_empty()) {
                self.err(format!("{pf}.name"), format!("{pname:?} is already used by {f}.ports[{k}]"));
            }
            if let Some(k) = ports.iter().position(|q| q.number == number && number != 0) {
                self.err(format!("{pf}.number"), format!("{number} is already used by {f}.ports[{k}]"));
            }
            ports.push(PortConfig { name: pname, number, protocol, target_port });
        }
        let health_check = raw.health_check.and_then(|h| self.health(&format!("{f}.healthCheck"), h, host.address));
        ServiceConfig {
            name,
            namespace,
            ports,
            labels: raw.labels,
            weight: raw.weight,
            service_account: raw.service_account,
            health_check,
        }
    }

    /// Two services of the host on one application port, or with one name in one namespace.
    fn service_conflicts(&mut self, services: &[ServiceConfig]) {
        let mut ports: BTreeMap<u16, String> = BTreeMap::new();
        for (i, s) in services.iter().enumerate() {
            if let Some(k) =
                services[..i].iter().position(|o| o.name == s.name && o.namespace == s.namespace && !s.name.is_empty())
            {
                self.err(
                    format!("services[{i}].name"),
                    format!("{:?} in namespace {} is already used by services[{k}]", s.name, s.namespace),
                );
            }
            for (j, p) in s.ports.iter().enumerate() {
                if p.target_port == 0 {
                    continue;
                }
                let here = format!("services[{i}].ports[{j}]");
                match ports.get(&p.target_port) {
                    Some(first) if !first.starts_with(&format!("services[{i}].")) => {
                        let msg = format!(
                            "port {} is already used by {first}: two services cannot listen on one port of a host",
                            p.target_port
                        );
                        let field = if p.target_port == p.number { "number" } else { "targetPort" };
                        self.err(format!("{here}.{field}"), msg);
                    }
                    // Within one service, equal numbers were reported already.
                    Some(_) if p.target_port == p.number => {}
                    Some(first) => {
                        self.err(
                            format!("{here}.targetPort"),
                            format!("port {} is already used by {first}", p.target_port),
                        );
                    }
                    None => {
                        ports.insert(p.target_port, here);
                    }
                }
            }
        }
    }

    /// The registry's own checks (labels, names, weight, ...) on the instance this service
    /// becomes, reported under the service's fields.
    fn instance_checks(&mut self, i: usize, s: &ServiceConfig, host: &HostConfig) {
        if s.name.is_empty() || host.name.is_empty() {
            return;
        }
        let inst = crate::instance::for_service(s, host, Duration::from_secs(30), true);
        if let Err(errs) = inst.validate("") {
            for e in errs.iter() {
                // Names, addresses and ports are checked above with the file's own field names.
                let field = match e.field.as_str() {
                    "name" | "namespace" | "address" => continue,
                    f if f.starts_with("ports.") || f.starts_with("service.") => continue,
                    "tenant" => "host.tenant".to_string(),
                    "network" => "host.network".to_string(),
                    "serviceAccount" => format!("services[{i}].serviceAccount"),
                    "weight" => format!("services[{i}].weight"),
                    f if f.starts_with("labels.") => format!("services[{i}].{f}"),
                    f => format!("services[{i}] ({f})"),
                };
                self.err(field, e.message.clone());
            }
        }
    }

    fn health(&mut self, f: &str, raw: RawHealth, host: IpAddr) -> Option<HealthCheck> {
        let kinds = [raw.http.is_some(), raw.tcp.is_some(), raw.command.is_some()].iter().filter(|b| **b).count();
        if kinds != 1 {
            self.err(f, "exactly one of http, tcp or command is required");
            return None;
        }
        let addr = |v: &mut Validator, field: String, h: Option<String>, port: u16| -> SocketAddr {
            let ip = match h {
                None => host,
                Some(s) => s.parse::<IpAddr>().unwrap_or_else(|_| {
                    v.err(field, format!("{s:?} is not an IP address"));
                    host
                }),
            };
            SocketAddr::new(ip, port)
        };
        let probe = if let Some(h) = raw.http {
            let port = self.port(&format!("{f}.http.port"), h.port);
            let path = h.path.unwrap_or_else(|| "/".into());
            if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                self.err(format!("{f}.http.path"), format!("{path:?} must start with '/' and contain no spaces"));
            }
            Probe::Http { address: addr(self, format!("{f}.http.host"), h.host, port), path }
        } else if let Some(t) = raw.tcp {
            let port = self.port(&format!("{f}.tcp.port"), t.port);
            Probe::Tcp { address: addr(self, format!("{f}.tcp.host"), t.host, port) }
        } else {
            let argv = raw.command.unwrap_or_default();
            if argv.is_empty() || argv[0].is_empty() {
                self.err(format!("{f}.command"), "must name a program ([program, args...])");
            }
            Probe::Command(argv)
        };
        let interval = self.duration(&format!("{f}.interval"), raw.interval.as_deref(), DEFAULT_CHECK_INTERVAL);
        let timeout =
            self.duration(&format!("{f}.timeout"), raw.timeout.as_deref(), DEFAULT_CHECK_TIMEOUT.min(interval));
        if timeout > interval {
            self.err(
                format!("{f}.timeout"),
                format!("{} is longer than the interval ({})", fmt_duration(timeout), fmt_duration(interval)),
            );
        }
        let threshold = |v: &mut Validator, field: &str, raw: Option<u32>, default: u32| match raw {
            None => default,
            Some(n) if (1..=100).contains(&n) => n,
            Some(n) => {
                v.err(format!("{f}.{field}"), format!("{n} is out of range 1..100"));
                default
            }
        };
        let healthy_threshold = threshold(self, "healthyThreshold", raw.healthy_threshold, DEFAULT_HEALTHY_THRESHOLD);
        let unhealthy_threshold =
            threshold(self, "unhealthyThreshold", raw.unhealthy_threshold, DEFAULT_UNHEALTHY_THRESHOLD);
        Some(HealthCheck { probe, interval, timeout, healthy_threshold, unhealthy_threshold })
    }

    fn proxy(&mut self, raw: RawProxy) -> ProxyConfig {
        let mode = match raw.mode.as_deref().unwrap_or("bind") {
            "capture" => ProxyMode::Capture,
            "bind" => ProxyMode::Bind,
            "http-proxy" => ProxyMode::HttpProxy,
            other => {
                self.one_of("proxy.mode", other, &["capture", "bind", "http-proxy"]);
                ProxyMode::Bind
            }
        };
        let concurrency = raw.concurrency.unwrap_or(2);
        if !(1..=256).contains(&concurrency) {
            self.err("proxy.concurrency", format!("{concurrency} is out of range 1..256"));
        }
        let http_proxy_port = match raw.http_proxy_port {
            None => 15080,
            Some(p) => self.port("proxy.httpProxyPort", Some(p)),
        };
        ProxyConfig {
            enabled: raw.enabled.unwrap_or(true),
            mode,
            uid: raw.uid.unwrap_or(DEFAULT_PROXY_UID),
            admin: self.socket("proxy.admin", raw.admin.as_deref(), DEFAULT_PROXY_ADMIN),
            concurrency,
            http_proxy_port,
        }
    }

    fn dns(&mut self, raw: RawDns) -> DnsConfig {
        for (i, u) in raw.upstreams.iter().enumerate() {
            if u.parse::<IpAddr>().is_err() && u.parse::<SocketAddr>().is_err() {
                self.err(format!("dns.upstreams[{i}]"), format!("{u:?} is not IP or IP:PORT"));
            }
        }
        DnsConfig {
            enabled: raw.enabled.unwrap_or(false),
            listen: self.socket("dns.listen", raw.listen.as_deref(), DEFAULT_DNS_LISTEN),
            admin: self.socket("dns.admin", raw.admin.as_deref(), DEFAULT_DNS_ADMIN),
            upstreams: raw.upstreams,
        }
    }

    fn capture(&mut self, raw: RawCapture, proxy: &ProxyConfig, dns: &DnsConfig) -> CaptureConfig {
        let mode = raw.mode.unwrap_or_else(|| "auto".into());
        self.one_of("capture.mode", &mode, &["auto", "iptables", "nftables"]);
        let (inbound_ports, inbound_all) = match raw.inbound_ports {
            None => (None, false),
            Some(RawPorts::All(s)) if s == "*" || s == "all" => (None, true),
            Some(RawPorts::All(s)) => {
                self.err("capture.inboundPorts", format!("{s:?}: expected a list of ports or \"*\""));
                (None, false)
            }
            Some(RawPorts::List(l)) => (Some(self.ports("capture.inboundPorts", &l)), false),
        };
        for (field, list) in
            [("capture.outboundCidrs", &raw.outbound_cidrs), ("capture.excludeCidrs", &raw.exclude_cidrs)]
        {
            for (i, c) in list.iter().enumerate() {
                if weft_istio::Cidr::parse(c).is_none() {
                    self.err(format!("{field}[{i}]"), format!("{c:?} is not an IP address or CIDR"));
                }
            }
        }
        let c = CaptureConfig {
            enabled: raw.enabled.unwrap_or(false),
            mode,
            inbound_ports,
            inbound_all,
            outbound_cidrs: raw.outbound_cidrs,
            outbound_ports: self.ports("capture.outboundPorts", &raw.outbound_ports),
            exclude_cidrs: raw.exclude_cidrs,
            exclude_uids: raw.exclude_uids,
            exclude_inbound_ports: self.ports("capture.excludeInboundPorts", &raw.exclude_inbound_ports),
            exclude_outbound_ports: self.ports("capture.excludeOutboundPorts", &raw.exclude_outbound_ports),
            dns: raw.dns.unwrap_or(false),
            ipv6: raw.ipv6.unwrap_or(false),
            vip_route: raw.vip_route.unwrap_or(true),
        };
        if c.enabled && proxy.mode != ProxyMode::Capture {
            self.err("capture.enabled", format!("needs proxy.mode capture (it is {})", proxy.mode.as_str()));
        }
        if c.dns && !dns.enabled {
            self.err("capture.dns", "needs dns.enabled (DNS is redirected to weft dns)");
        } else if c.dns && dns.listen.ip() != IpAddr::from([127, 0, 0, 1]) {
            self.err(
                "capture.dns",
                format!(
                    "DNS is redirected to 127.0.0.1:{}, so dns.listen must be on 127.0.0.1 (it is {})",
                    dns.listen.port(),
                    dns.listen
                ),
            );
        }
        c
    }
}

/// `1.5s`, `100ms`, `2m`: the shortest exact spelling.
pub fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 60_000 == 0 && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// The system's host name, lower-cased, when it is a usable DNS label (its first label).
fn system_host_name() -> Option<String> {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let first = raw.trim().split('.').next()?.to_ascii_lowercase();
    let ok = !first.is_empty()
        && first.len() <= 63
        && first.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !first.starts_with('-')
        && !first.ends_with('-');
    ok.then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
control: { api: 127.0.0.1:15014, xds: 127.0.0.1:15010 }
host: { address: 10.0.0.5, name: vm-1, namespace: shop, locality: eu/west-1a }
services:
  - name: reviews
    ports:
      - { name: http, number: 9080, protocol: HTTP, targetPort: 8080 }
    labels: { app: reviews }
    healthCheck:
      http: { port: 8080, path: /health }
      interval: 2s
      timeout: 500ms
      unhealthyThreshold: 2
  - name: db
    ports: [{ name: tcp, number: 5432, protocol: TCP }]
    healthCheck: { tcp: { port: 5432, host: 127.0.0.1 } }
  - name: batch
    ports: [{ name: grpc, number: 7070 }]
    healthCheck: { command: [/usr/local/bin/check, --quick] }
leaseTtl: 20s
heartbeat: 5s
proxy: { mode: bind, admin: 127.0.0.1:0 }
dns: { enabled: true, listen: 127.0.0.1:5353, upstreams: [10.0.0.2, "10.0.0.3:53"] }
status: { listen: 127.0.0.1:0 }
stateDir: /tmp/weft-agent-test
"#;

    #[test]
    fn a_complete_file_is_read_with_defaults_filled_in() {
        let c = parse("agent.yaml", GOOD).unwrap();
        assert_eq!(c.control.api, "127.0.0.1:15014");
        assert_eq!(c.host.tenant, "default");
        assert_eq!(c.services[0].namespace, "shop", "services default to the host's namespace");
        assert_eq!(c.services[0].host(), "reviews.shop.svc.cluster.local");
        assert_eq!(c.services[0].ports[0].target_port, 8080);
        assert_eq!(c.services[1].ports[0].target_port, 5432);
        assert_eq!(
            c.services[0].health_check,
            Some(HealthCheck {
                probe: Probe::Http { address: "10.0.0.5:8080".parse().unwrap(), path: "/health".into() },
                interval: Duration::from_secs(2),
                timeout: Duration::from_millis(500),
                healthy_threshold: 1,
                unhealthy_threshold: 2,
            })
        );
        assert_eq!(
            c.services[1].health_check.as_ref().map(|h| &h.probe),
            Some(&Probe::Tcp { address: "127.0.0.1:5432".parse().unwrap() })
        );
        assert_eq!(
            c.services[2].health_check.as_ref().map(|h| (h.interval, h.timeout, h.unhealthy_threshold)),
            Some((DEFAULT_CHECK_INTERVAL, DEFAULT_CHECK_TIMEOUT, DEFAULT_UNHEALTHY_THRESHOLD))
        );
        assert_eq!((c.lease_ttl, c.heartbeat), (Duration::from_secs(20), Duration::from_secs(5)));
        assert_eq!((c.proxy.enabled, c.proxy.mode, c.proxy.uid), (true, ProxyMode::Bind, DEFAULT_PROXY_UID));
        assert!(c.dns.enabled && !c.capture.enabled);
        assert_eq!(c.state_dir, PathBuf::from("/tmp/weft-agent-test"));
    }

    #[test]
    fn defaults_of_a_minimal_file() {
        let c = parse(
            "a.yaml",
            "control: {api: cp.example:15014, xds: cp.example:15010}\nhost: {address: 10.0.0.5, name: vm}\nservices: [{name: web, ports: [{name: http, number: 80}]}]\n",
        )
        .unwrap();
        assert_eq!((c.lease_ttl, c.heartbeat), (DEFAULT_LEASE_TTL, DEFAULT_HEARTBEAT));
        assert_eq!(c.status_listen, DEFAULT_STATUS_LISTEN.parse().unwrap());
        assert_eq!(c.proxy.admin, DEFAULT_PROXY_ADMIN.parse().unwrap());
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(c.services[0].health_check, None);
    }

    #[test]
    fn a_host_that_only_calls_the_mesh_registers_nothing_and_runs_its_proxy_and_dns() {
        let base = "control: {api: 127.0.0.1:15014, xds: 127.0.0.1:15010}\nhost: {address: 10.0.0.5, name: client}\n";
        for services in ["services: []\n", ""] {
            let c = parse("a.yaml", &format!("{base}{services}proxy: {{mode: capture}}\ndns: {{enabled: true}}\ncapture: {{enabled: true, dns: true}}\n"))
                .unwrap_or_else(|e| panic!("{services:?}: {e}"));
            assert!(c.services.is_empty() && c.workload_group.is_none());
            assert!(c.proxy.enabled && c.dns.enabled && c.capture.enabled);
        }
        // Only dns: still something to run.
        let c = parse("a.yaml", &format!("{base}proxy: {{enabled: false}}\ndns: {{enabled: true}}\n")).unwrap();
        assert!(c.services.is_empty() && !c.proxy.enabled && c.dns.enabled);
    }

    /// Each case: a change to a valid file and every message it must produce.
    #[test]
    fn bad_files_name_the_field() {
        let base = "control: {api: 127.0.0.1:15014, xds: 127.0.0.1:15010}\nhost: {address: 10.0.0.5, name: vm-1}\n";
        let cases: Vec<(String, Vec<&str>)> = vec![
            (
                format!("{base}services:\n  - name: a\n    ports: [{{name: http, number: 80}}]\n  - name: b\n    ports: [{{name: web, number: 8080, protocol: htp}}]\n"),
                vec!["a.yaml: services[1].ports[0].protocol: unknown value \"htp\" (expected one of HTTP, HTTP2, HTTP_PROXY, GRPC, GRPC-Web, HTTPS, TLS, TCP, UDP, Mongo, Redis, MySQL)"],
            ),
            (
                format!("{base}services:\n  - name: a\n    ports: [{{name: http, number: 80}}]\n  - name: b\n    ports: [{{name: web, number: 80}}]\n"),
                vec!["a.yaml: services[1].ports[0].number: port 80 is already used by services[0].ports[0]: two services cannot listen on one port of a host"],
            ),
            (
                format!("{base}services:\n  - name: a\n    ports: [{{name: http, number: 80, targetPort: 8080}}]\n  - name: b\n    ports: [{{name: web, number: 81, targetPort: 8080}}]\n"),
                vec!["a.yaml: services[1].ports[0].targetPort: port 8080 is already used by services[0].ports[0]: two services cannot listen on one port of a host"],
            ),
            (
                format!("{base}services:\n  - name: a\n    ports: [{{name: http, number: 80}}, {{name: http, number: 80}}]\n  - name: a\n    ports: [{{name: x, number: 81}}]\n"),
                vec![
                    "a.yaml: services[0].ports[1].name: \"http\" is already used by services[0].ports[0]",
                    "a.yaml: services[0].ports[1].number: 80 is already used by services[0].ports[0]",
                    "a.yaml: services[1].name: \"a\" in namespace default is already used by services[0]",
                ],
            ),
            (
                format!("{base}leaseTtl: 10s\nheartbeat: 10s\nservices: [{{name: a, ports: [{{name: http, number: 80}}]}}]\n"),
                vec!["a.yaml: heartbeat: 10s must be shorter than leaseTtl (10s), or the lease runs out between renewals"],
            ),
            (
                format!("{base}leaseTtl: soon\nservices: [{{name: a, ports: [{{name: http, number: 80}}], healthCheck: {{tcp: {{port: 80}}, interval: 1s, timeout: 2s, healthyThreshold: 0}}}}]\n"),
                vec![
                    "a.yaml: leaseTtl: invalid duration \"soon\" (examples: 1.5s, 100ms, 1h30m)",
                    "a.yaml: services[0].healthCheck.timeout: 2s is longer than the interval (1s)",
                    "a.yaml: services[0].healthCheck.healthyThreshold: 0 is out of range 1..100",
                ],
            ),
            (
                format!("{base}services: [{{name: a, ports: [{{name: http, number: 80}}], healthCheck: {{tcp: {{port: 80}}, http: {{port: 80}}}}}}]\n"),
                vec!["a.yaml: services[0].healthCheck: exactly one of http, tcp or command is required"],
            ),
            (
                format!("{base}services: [{{name: Bad_Name, ports: [{{name: http, number: 70000}}]}}]\n"),
                vec![
                    "a.yaml: services[0].name: \"Bad_Name\" is not a valid DNS-1123 label (lower-case letters, digits and '-', at most 63)",
                    "a.yaml: services[0].ports[0].number: 70000 is not a port (1..65535)",
                ],
            ),
            (
                format!("{base}services: [{{name: a, ports: [{{name: http, number: 80}}], labels: {{\"a b\": c}}}}]\n"),
                vec!["a.yaml: services[0].labels.a b: \"a b\" is not a valid label key (name or prefix/name; alphanumerics, '-', '_', '.')"],
            ),
            (
                "host: {address: 0.0.0.0}\nservices: []\nproxy: {mode: sidecar}\nstatus: {listen: 10.0.0.5:15020}\n".to_string(),
                vec![
                    "a.yaml: control: required (the control plane's api and xds addresses)",
                    "a.yaml: host.address: 0.0.0.0 is not a unicast address",
                    "a.yaml: proxy.mode: unknown value \"sidecar\" (expected one of capture, bind, http-proxy)",
                    "a.yaml: status.listen: 10.0.0.5:15020 is not a loopback address (the status endpoint is local)",
                ],
            ),
            (
                format!("{base}services: []\nproxy: {{enabled: false}}\n"),
                vec!["a.yaml: services: at least one service (or a workloadGroup) is required when neither proxy nor dns runs"],
            ),
            (
                "control: {api: 127.0.0.1}\nhost: {address: 10.0.0.5, name: vm}\nservices: [{name: a, ports: [{name: http, number: 80}]}]\n".to_string(),
                vec![
                    "a.yaml: control.api: \"127.0.0.1\" is not HOST:PORT",
                    "a.yaml: control.xds: required when the proxy or dns is enabled (e.g. 127.0.0.1:15010)",
                ],
            ),
            (
                "control: {api: 127.0.0.1:15014}\nhost: {address: 10.0.0.5, name: vm}\nservices: [{name: a, ports: [{name: http, number: 80}]}]\n".to_string(),
                vec!["a.yaml: control.xds: required when the proxy or dns is enabled (e.g. 127.0.0.1:15010)"],
            ),
            (
                format!("{base}services: [{{name: a, ports: [{{name: http, number: 80}}]}}]\ncapture: {{enabled: true, dns: true, mode: ebpf}}\n"),
                vec![
                    "a.yaml: capture.mode: unknown value \"ebpf\" (expected one of auto, iptables, nftables)",
                    "a.yaml: capture.enabled: needs proxy.mode capture (it is bind)",
                    "a.yaml: capture.dns: needs dns.enabled (DNS is redirected to weft dns)",
                ],
            ),
        ];
        for (text, want) in cases {
            let got: Vec<String> = match parse("a.yaml", &text) {
                Ok(_) => panic!("accepted:\n{text}"),
                Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
            };
            assert_eq!(got, want, "\n{text}");
        }
    }

    #[test]
    fn unknown_fields_and_broken_yaml_are_reported_with_the_file() {
        let e = parse("a.yaml", "control: {api: 127.0.0.1:1}\nhost: {address: 10.0.0.5, nmae: vm}\n").unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("a.yaml: host: unknown field `nmae`"), "{text}");
        let e = parse("a.yaml", "services: [").unwrap_err();
        assert!(e.to_string().starts_with("a.yaml: "), "{e}");
    }
}
