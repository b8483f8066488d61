//! Envoy-style response flags: a short code for every reason the proxy answered itself.

use std::fmt;

/// A set of response flags (bit set). Printed as Envoy prints them: `UF,URX`, or `-` when empty.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Flags(u32);

macro_rules! flags {
    ($($name:ident = $bit:expr, $code:literal, $doc:literal;)*) => {
        impl Flags {
            $(#[doc = $doc] pub const $name: Flags = Flags(1 << $bit);)*
            const TABLE: &'static [(Flags, &'static str)] = &[$((Flags::$name, $code)),*];
        }
    };
}

flags! {
    UPSTREAM_CONNECTION_FAILURE = 0, "UF", "Upstream connection failure.";
    NO_HEALTHY_UPSTREAM = 1, "UH", "No healthy upstream host.";
    UPSTREAM_OVERFLOW = 2, "UO", "Upstream overflow (circuit breaker).";
    UPSTREAM_RETRY_LIMIT_EXCEEDED = 3, "URX", "Retry limit or retry budget exhausted.";
    UPSTREAM_REQUEST_TIMEOUT = 4, "UT", "Upstream request timeout.";
    NO_ROUTE_FOUND = 5, "NR", "No route (or virtual host) matched.";
    DOWNSTREAM_CONNECTION_TERMINATION = 6, "DC", "The client went away before the response completed.";
    UPSTREAM_CONNECTION_TERMINATION = 7, "UC", "Upstream connection closed or reset mid-request.";
    LOCAL_RESET = 8, "LR", "The proxy reset the stream.";
    FAULT_INJECTED = 9, "FI", "Fault injection abort.";
    DELAY_INJECTED = 10, "DI", "Fault injection delay.";
    RATE_LIMITED = 11, "RL", "Rate limited.";
    NO_CLUSTER_FOUND = 12, "NC", "The route's cluster does not exist.";
    UPSTREAM_RESET = 13, "UR", "Upstream reset the stream.";
    STREAM_IDLE_TIMEOUT = 14, "SI", "Stream idle timeout.";
    DOWNSTREAM_PROTOCOL_ERROR = 15, "DPE", "Malformed downstream request.";
    UPSTREAM_PROTOCOL_ERROR = 16, "UPE", "Malformed upstream response.";
    NO_FILTER_CHAIN = 17, "NFCF", "No filter chain matched the connection.";
    OVERLOAD = 18, "OM", "The proxy is draining or overloaded.";
    DNS_RESOLUTION_FAILED = 19, "DF", "The destination's name did not resolve (dynamic forward proxy).";
}

impl Flags {
    pub const EMPTY: Flags = Flags(0);
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }
    pub fn insert(&mut self, other: Flags) {
        self.0 |= other.0;
    }
    pub fn bits(self) -> u32 {
        self.0
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

impl fmt::Display for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("-");
        }
        let mut first = true;
        for (flag, code) in Flags::TABLE {
            if self.contains(*flag) {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(code)?;
                first = false;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_print_like_envoy() {
        assert_eq!(Flags::EMPTY.to_string(), "-");
        assert_eq!(Flags::UPSTREAM_CONNECTION_FAILURE.to_string(), "UF");
        assert_eq!((Flags::UPSTREAM_CONNECTION_FAILURE | Flags::UPSTREAM_RETRY_LIMIT_EXCEEDED).to_string(), "UF,URX");
        assert!((Flags::NO_ROUTE_FOUND | Flags::FAULT_INJECTED).contains(Flags::FAULT_INJECTED));
        assert!(!Flags::NO_ROUTE_FOUND.contains(Flags::EMPTY));
    }
}
