//! Istio's names: cluster names, host resolution, wildcard host matching and the alternative
//! domains (short Kubernetes-style names) a virtual host answers to.

/// The cluster for traffic that goes to the address the client asked for.
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
/// The cluster that has no endpoints: requests fail (REGISTRY_ONLY).
pub const BLACKHOLE_CLUSTER: &str = "BlackHoleCluster";
/// Inbound traffic to ports the workload does not declare.
pub const INBOUND_PASSTHROUGH_CLUSTER: &str = "InboundPassthroughCluster";
/// Outbound capture listener (iptables redirects outbound traffic here).
pub const VIRTUAL_OUTBOUND: &str = "virtualOutbound";
pub const VIRTUAL_OUTBOUND_PORT: u16 = 15001;
/// Inbound capture listener.
pub const VIRTUAL_INBOUND: &str = "virtualInbound";
pub const VIRTUAL_INBOUND_PORT: u16 = 15006;
/// Istio's root namespace: a Sidecar without selector there is the mesh-wide default.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// `outbound|PORT|SUBSET|HOST` (SUBSET empty for the whole service).
pub fn outbound_cluster(port: u16, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

/// `inbound|PORT||`.
pub fn inbound_cluster(port: u16) -> String {
    format!("inbound|{port}||")
}

/// Resolves a host as written in a resource of `namespace`: a short name (no dot) becomes
/// `name.namespace.svc.SUFFIX`, as Istio does; anything else (FQDN, `*`, `*.suffix`) is kept.
pub fn resolve_host(host: &str, namespace: &str, domain_suffix: &str) -> String {
    if host.contains('.') || host == "*" || host.is_empty() {
        host.to_ascii_lowercase()
    } else {
        format!("{}.{namespace}.svc.{domain_suffix}", host.to_ascii_lowercase())
    }
}

/// Whether `pattern` (an exact host, `*`, or `*.suffix`) covers `host` (which may itself be a
/// wildcard: `*.example.com` covers `*.api.example.com`).
pub fn host_matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" || pattern == host {
        return true;
    }
    match pattern.strip_prefix('*') {
        // "*.example.com" matches "a.example.com" and "*.a.example.com", not "example.com".
        Some(suffix) => {
            let body = host.strip_prefix('*').unwrap_or(host);
            body.len() > suffix.len() && body.ends_with(suffix)
        }
        None => false,
    }
}

/// How specific a matching pattern is (exact beats wildcard, longer wildcard beats shorter).
pub fn specificity(pattern: &str) -> usize {
    if pattern.starts_with('*') {
        pattern.len().saturating_sub(1)
    } else {
        usize::MAX
    }
}

/// The short names of a Kubernetes-style host (`NAME.NS.svc.SUFFIX`) for a proxy in
/// `proxy_namespace`, as istiod generates them: `NAME.NS` and `NAME.NS.svc` everywhere, `NAME`
/// alone only in the service's own namespace. Other hosts have none.
pub fn short_names(host: &str, proxy_namespace: &str, domain_suffix: &str) -> Vec<String> {
    let tail = format!(".svc.{domain_suffix}");
    let Some(head) = host.strip_suffix(&tail) else { return Vec::new() };
    let Some((name, ns)) = head.split_once('.') else { return Vec::new() };
    if name.is_empty() || ns.is_empty() || ns.contains('.') || name.starts_with('*') {
        return Vec::new();
    }
    let mut out = Vec::new();
    if ns == proxy_namespace {
        out.push(name.to_string());
    }
    out.push(format!("{name}.{ns}"));
    out.push(format!("{name}.{ns}.svc"));
    out
}

/// Whether a resource in `owner_ns` with `export_to` is visible in `viewer_ns` (empty: all).
pub fn exported_to(export_to: &[String], owner_ns: &str, viewer_ns: &str) -> bool {
    if export_to.is_empty() {
        return true;
    }
    export_to.iter().any(|e| match e.as_str() {
        "*" => true,
        "~" => false,
        "." => owner_ns == viewer_ns,
        ns => ns == viewer_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_resolve_like_istio() {
        let cases = [
            ("reviews", "shop", "reviews.shop.svc.cluster.local"),
            ("reviews.shop", "default", "reviews.shop"),
            ("API.Example.com", "default", "api.example.com"),
            ("*", "default", "*"),
            ("*.example.com", "default", "*.example.com"),
        ];
        for (host, ns, want) in cases {
            assert_eq!(resolve_host(host, ns, "cluster.local"), want, "{host}");
        }
    }

    #[test]
    fn wildcard_patterns_match_hosts() {
        let cases = [
            ("*", "a.b", true),
            ("a.b", "a.b", true),
            ("a.b", "x.a.b", false),
            ("*.example.com", "api.example.com", true),
            ("*.example.com", "a.api.example.com", true),
            ("*.example.com", "example.com", false),
            ("*.example.com", "*.api.example.com", true),
            ("*.example.com", "*.example.com", true),
            ("*.api.example.com", "*.example.com", false),
            ("*.example.com", "api.example.org", false),
        ];
        for (pattern, host, want) in cases {
            assert_eq!(host_matches(pattern, host), want, "{pattern} vs {host}");
        }
    }

    #[test]
    fn short_names_follow_the_proxy_namespace() {
        let host = "reviews.shop.svc.cluster.local";
        assert_eq!(short_names(host, "shop", "cluster.local"), ["reviews", "reviews.shop", "reviews.shop.svc"]);
        assert_eq!(short_names(host, "other", "cluster.local"), ["reviews.shop", "reviews.shop.svc"]);
        assert!(short_names("api.example.com", "shop", "cluster.local").is_empty());
        assert!(short_names("a.b.c.svc.cluster.local", "b", "cluster.local").is_empty());
        assert!(short_names(host, "shop", "corp.local").is_empty());
    }

    #[test]
    fn export_to_rules() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let cases = [
            (s(&[]), "a", "b", true),
            (s(&["*"]), "a", "b", true),
            (s(&["."]), "a", "a", true),
            (s(&["."]), "a", "b", false),
            (s(&["~"]), "a", "a", false),
            (s(&["b", "c"]), "a", "c", true),
            (s(&["b"]), "a", "a", false),
        ];
        for (export, owner, viewer, want) in cases {
            assert_eq!(exported_to(&export, owner, viewer), want, "{export:?} {owner}->{viewer}");
        }
    }

    #[test]
    fn cluster_names() {
        assert_eq!(
            outbound_cluster(9080, "", "r.default.svc.cluster.local"),
            "outbound|9080||r.default.svc.cluster.local"
        );
        assert_eq!(outbound_cluster(9080, "v1", "r"), "outbound|9080|v1|r");
        assert_eq!(inbound_cluster(8080), "inbound|8080||");
    }
}
