//! Capture mode: the agent file's `capture` section as a `weft_capture::Plan`, installed when the
//! agent starts and removed when it stops (weft-capture's rules and VIP route only).

use weft_capture::{Cidr, DnsCapture, InboundPorts, ModeChoice, Plan};

use crate::config::AgentConfig;

/// The plan for this host: outbound to the VIP range (and the listed CIDRs and ports) to the
/// proxy's 15001, inbound to the services' ports (or the listed ones, or all) to 15006, the
/// proxy's uid (and gid) exempt, DNS to `weft dns` when asked.
pub fn plan(config: &AgentConfig) -> Result<Plan, String> {
    let c = &config.capture;
    let cidrs = |field: &str, list: &[String]| -> Result<Vec<Cidr>, String> {
        list.iter().map(|s| s.parse::<Cidr>().map_err(|e| format!("capture.{field}: {e}"))).collect()
    };
    let inbound_ports = if c.inbound_all {
        InboundPorts::All
    } else {
        let mut ports: Vec<u16> = match &c.inbound_ports {
            Some(list) => list.clone(),
            None => config.services.iter().flat_map(|s| s.ports.iter().map(|p| p.target_port)).collect(),
        };
        ports.sort_unstable();
        ports.dedup();
        InboundPorts::List(ports)
    };
    let mode = c.mode.parse::<ModeChoice>().map_err(|e| format!("capture.mode: {e}"))?;
    let plan = Plan {
        mode,
        proxy_uid: config.proxy.uid,
        proxy_gid: Some(config.proxy.uid),
        vip_route: c.vip_route,
        outbound_cidrs: cidrs("outboundCidrs", &c.outbound_cidrs)?,
        outbound_ports: c.outbound_ports.clone(),
        inbound_ports,
        exclude_uids: c.exclude_uids.clone(),
        exclude_cidrs: cidrs("excludeCidrs", &c.exclude_cidrs)?,
        exclude_outbound_ports: c.exclude_outbound_ports.clone(),
        exclude_inbound_ports: c.exclude_inbound_ports.clone(),
        dns: c.dns.then(|| DnsCapture { port: config.dns.listen.port(), exempt_uids: Vec::new() }),
        ipv6: c.ipv6,
        ..Plan::default()
    };
    plan.validate().map_err(|e| e.to_string())?;
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "control: {api: 127.0.0.1:15014, xds: 127.0.0.1:15010}\nhost: {address: 10.0.0.5, name: vm}\nservices:\n  - {name: a, ports: [{name: http, number: 9080, targetPort: 8080}, {name: grpc, number: 7070}]}\n  - {name: b, ports: [{name: tcp, number: 5432}]}\nproxy: {mode: capture, uid: 1500}\n";

    fn config(extra: &str) -> AgentConfig {
        crate::config::parse("a.yaml", &format!("{BASE}{extra}")).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_plan_captures_the_services_ports_and_exempts_the_proxy() {
        let p = plan(&config("capture: {enabled: true}\n")).unwrap();
        assert_eq!(p.inbound_ports, InboundPorts::List(vec![5432, 7070, 8080]), "application ports, not service ports");
        assert_eq!((p.proxy_uid, p.proxy_gid), (1500, Some(1500)));
        assert_eq!((p.outbound_port, p.inbound_port), (15001, 15006));
        assert!(p.vip_route && p.dns.is_none() && p.mode == ModeChoice::Auto);
    }

    #[test]
    fn a_host_without_services_captures_outbound_and_dns_but_no_inbound_port() {
        let c = crate::config::parse(
            "a.yaml",
            "control: {api: 127.0.0.1:15014, xds: 127.0.0.1:15010}\nhost: {address: 10.0.0.5, name: client}\nproxy: {mode: capture}\ndns: {enabled: true}\ncapture: {enabled: true, dns: true}\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let p = plan(&c).unwrap();
        assert_eq!(p.inbound_ports, InboundPorts::List(vec![]));
        assert!(p.vip_route && p.dns.is_some());
    }

    #[test]
    fn the_file_s_capture_options_reach_the_plan() {
        let p = plan(&config(
            "dns: {enabled: true, listen: 127.0.0.1:5300}\ncapture: {enabled: true, mode: nftables, inboundPorts: \"*\", excludeInboundPorts: [22], outboundCidrs: [10.1.0.0/16], excludeCidrs: [10.0.0.1], excludeUids: [1001], dns: true, vipRoute: false}\n",
        ))
        .unwrap();
        assert_eq!(p.mode, ModeChoice::Nftables);
        assert_eq!(p.inbound_ports, InboundPorts::All);
        assert_eq!(p.exclude_inbound_ports, vec![22]);
        assert_eq!(p.outbound_cidrs, vec!["10.1.0.0/16".parse().unwrap()]);
        assert_eq!(p.exclude_cidrs, vec!["10.0.0.1/32".parse().unwrap()]);
        assert_eq!(p.exclude_uids, vec![1001]);
        assert_eq!(p.dns, Some(DnsCapture { port: 5300, exempt_uids: vec![] }));
        assert!(!p.vip_route);
    }

    #[test]
    fn a_plan_weft_capture_rejects_is_a_config_error() {
        let e = crate::config::parse("a.yaml", &format!("{BASE}capture: {{enabled: true, inboundPorts: [15001]}}\n"))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "a.yaml: capture: invalid capture plan: inbound_ports: 15001 is a capture port; capturing it would loop"
        );
        let e = crate::config::parse(
            "a.yaml",
            &format!("{BASE}dns: {{enabled: true, listen: 127.0.0.2:53}}\ncapture: {{enabled: true, dns: true}}\n"),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "a.yaml: capture.dns: DNS is redirected to 127.0.0.1:53, so dns.listen must be on 127.0.0.1 (it is 127.0.0.2:53)"
        );
    }
}
