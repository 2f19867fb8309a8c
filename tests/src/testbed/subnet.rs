//! The testbed's address block (`kubeca-testbed up --subnet CIDR`): where its load balancer and nodes listen.
//!
//! A testbed takes every address from one block of the benchmarking range 198.18.0.0/15
//! (RFC 2544: reserved for tests on one site, never routed), on a bridge of its own that `up`
//! creates on this machine ([`crate::testbed::net`]): the host end of the bridge at the block's
//! address + 1, the load balancer at + 10 and node *i* (control planes first, from 0) at + 11 +
//! *i*, so the default block 198.18.0.0/24 gives the load balancer 198.18.0.10 and the nodes
//! 198.18.0.11 up. Every node is a network namespace of its own, with its own `lo`
//! (127.0.0.1, as on a real node) and one interface on the bridge; two testbeds on different
//! blocks (198.18.0.0/24 and 198.18.1.0/24) run side by side on two bridges. `up` hands the
//! block to every process of the testbed: the node supervisor's `--subnet`, then [`ENV`] for the
//! kubelet and everything it starts.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;

use anyhow::{Context, Result, bail};

/// The block of a testbed started without `--subnet`: load balancer 198.18.0.10, nodes 198.18.0.11 up.
pub const DEFAULT: &str = "198.18.0.0/24";

/// The range every block lies in: RFC 2544's benchmarking range, 198.18.0.0/15.
const RANGE: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 0, 0), 15);

/// The environment variable that tells a testbed process its block (`198.18.1.0/24`).
pub const ENV: &str = "KUBECA_TESTBED_SUBNET";

/// The port of the control-plane endpoint (haproxy) and of every apiserver.
pub const API_PORT: u16 = 6443;

/// Most nodes one testbed has: block + 11 to block + 250, inside the block's first 256 addresses.
pub const MAX_NODES: usize = 240;

/// Offset of the host's end of the bridge in the block.
const HOST_OFFSET: u32 = 1;
/// Offset of the load balancer in the block.
const LB_OFFSET: u32 = 10;
/// Offset of the first node in the block.
const FIRST_NODE_OFFSET: u32 = 11;

/// An address block in 198.18.0.0/15 of at least 256 addresses (a prefix of /15 to /24).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subnet {
    network: Ipv4Addr,
    prefix: u8,
}

impl Subnet {
    /// The block of a testbed started without `--subnet` (198.18.0.0/24).
    pub fn default_block() -> Subnet {
        Subnet { network: Ipv4Addr::new(198, 18, 0, 0), prefix: 24 }
    }

    /// Reads `CIDR` (`198.18.1.0/24`): the network address with no host bits set, a prefix of /15
    /// to /24 (room for the load balancer and [`MAX_NODES`] nodes), inside 198.18.0.0/15.
    pub fn parse(cidr: &str) -> Result<Subnet> {
        let Some((addr, len)) = cidr.split_once('/') else {
            bail!("subnet {cidr:?} is not a CIDR block such as 198.18.1.0/24");
        };
        let network: Ipv4Addr = addr
            .parse()
            .with_context(|| format!("subnet {cidr:?}: {addr:?} is not an IPv4 address"))?;
        let prefix: u8 = len
            .parse()
            .with_context(|| format!("subnet {cidr:?}: {len:?} is not a prefix length"))?;
        let range_mask = u32::MAX << (32 - u32::from(RANGE.1));
        if u32::from(network) & range_mask != u32::from(RANGE.0) {
            bail!(
                "subnet {cidr} is outside 198.18.0.0/15: a testbed takes its addresses from the \
                 benchmarking range (RFC 2544), which no network routes"
            );
        }
        if !(RANGE.1..=24).contains(&prefix) {
            bail!(
                "subnet {cidr}: the prefix must be /15 to /24 (the block holds the load balancer \
                 at +10 and up to {MAX_NODES} nodes from +11)"
            );
        }
        let mask = u32::MAX << (32 - u32::from(prefix));
        let aligned = Ipv4Addr::from(u32::from(network) & mask);
        if aligned != network {
            bail!("subnet {cidr} has host bits set: the block is {aligned}/{prefix}");
        }
        Ok(Subnet { network, prefix })
    }

    /// The block in [`ENV`], as `up` hands it to every process of the testbed.
    pub fn from_env() -> Result<Subnet> {
        let value = std::env::var(ENV).with_context(|| {
            format!(
                "{ENV} is not set (every process of a testbed gets it from `kubeca-testbed up`)"
            )
        })?;
        Subnet::parse(&value).with_context(|| format!("reading {ENV}"))
    }

    /// The prefix length of the block (24 for 198.18.0.0/24).
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The host's end of the testbed's bridge (block + 1).
    pub fn host(&self) -> Ipv4Addr {
        self.offset(HOST_OFFSET)
    }

    /// The name of the testbed's bridge on this machine: `kctb` and the block's index of
    /// 256-address units in 198.18.0.0/15 (`kctb0` for 198.18.0.0/24, `kctb1` for
    /// 198.18.1.0/24), so blocks that do not overlap never share a bridge.
    pub fn bridge(&self) -> String {
        format!("kctb{}", self.index())
    }

    /// The host's end of node `index`'s link to the bridge (`kctb0n0`; at most 15 bytes, as
    /// Linux allows).
    pub fn veth(&self, index: usize) -> String {
        format!("kctb{}n{index}", self.index())
    }

    fn index(&self) -> u32 {
        (u32::from(self.network) - u32::from(RANGE.0)) >> 8
    }

    /// The load balancer's address (block + 10).
    pub fn lb(&self) -> Ipv4Addr {
        self.offset(LB_OFFSET)
    }

    /// The control-plane endpoint, `<lb>:6443`.
    pub fn lb_endpoint(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.lb()), API_PORT)
    }

    /// The address of node `index` (block + 11 + index), `None` past [`MAX_NODES`].
    pub fn node(&self, index: usize) -> Option<Ipv4Addr> {
        let index = u32::try_from(index).ok().filter(|i| (*i as usize) < MAX_NODES)?;
        Some(self.offset(FIRST_NODE_OFFSET + index))
    }

    /// The monitor's name of the apiserver at `addr`: "lb" for the load balancer, else
    /// `kube-apiserver@cp-<i>` for the node at block + 10 + i (apiservers run only on the
    /// control planes, which come first), else `kube-apiserver@<ip>`.
    pub fn apiserver_name(&self, addr: &SocketAddr) -> String {
        let IpAddr::V4(ip) = addr.ip() else { return format!("kube-apiserver@{}", addr.ip()) };
        if ip == self.lb() {
            return "lb".into();
        }
        let offset = u32::from(ip).wrapping_sub(u32::from(self.network));
        let nodes = FIRST_NODE_OFFSET..FIRST_NODE_OFFSET + MAX_NODES as u32;
        if nodes.contains(&offset) {
            format!("kube-apiserver@cp-{}", offset - LB_OFFSET)
        } else {
            format!("kube-apiserver@{ip}")
        }
    }

    /// Block + `offset`; every offset used is under 256 and a block holds at least 256
    /// addresses, so this never leaves it.
    fn offset(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + offset)
    }
}

impl Default for Subnet {
    fn default() -> Subnet {
        Subnet::default_block()
    }
}

impl FromStr for Subnet {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Subnet> {
        Subnet::parse(s)
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_block_is_the_first_of_the_benchmarking_range() {
        let s = Subnet::parse(DEFAULT).unwrap();
        assert_eq!(s, Subnet::default());
        assert_eq!(s.host(), Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(s.lb(), Ipv4Addr::new(198, 18, 0, 10));
        assert_eq!(s.lb_endpoint().to_string(), "198.18.0.10:6443");
        assert_eq!(s.node(0), Some(Ipv4Addr::new(198, 18, 0, 11)));
        assert_eq!(s.node(MAX_NODES - 1), Some(Ipv4Addr::new(198, 18, 0, 250)));
        assert_eq!(s.node(MAX_NODES), None);
        assert_eq!(s.to_string(), "198.18.0.0/24");
        assert_eq!((s.bridge().as_str(), s.veth(4).as_str()), ("kctb0", "kctb0n4"));
    }

    #[test]
    fn another_block_moves_every_address_and_the_bridge() {
        let s = Subnet::parse("198.18.1.0/24").unwrap();
        assert_eq!(s.lb(), Ipv4Addr::new(198, 18, 1, 10));
        assert_eq!(s.node(4), Some(Ipv4Addr::new(198, 18, 1, 15)));
        assert_eq!(s.bridge(), "kctb1");
        let wide = Subnet::parse("198.19.0.0/16").unwrap();
        assert_eq!(wide.lb(), Ipv4Addr::new(198, 19, 0, 10));
        assert_eq!(wide.node(239), Some(Ipv4Addr::new(198, 19, 0, 250)));
        assert_eq!(wide.bridge(), "kctb256");
        let last = Subnet::parse("198.19.255.0/24").unwrap();
        assert_eq!(last.veth(MAX_NODES - 1), "kctb511n239");
        assert!(last.veth(MAX_NODES - 1).len() <= 15, "Linux's IFNAMSIZ");
    }

    #[test]
    fn blocks_off_the_range_or_malformed_are_refused_naming_why() {
        let err = |s: &str| Subnet::parse(s).unwrap_err().to_string();
        assert!(err("10.0.0.0/24").contains("outside 198.18.0.0/15"), "{}", err("10.0.0.0/24"));
        assert!(err("127.0.0.0/24").contains("outside 198.18.0.0/15"));
        assert!(err("198.20.0.0/24").contains("outside 198.18.0.0/15"));
        assert!(err("198.18.0.0/25").contains("/15 to /24"));
        assert!(err("198.18.0.0/14").contains("/15 to /24"), "{}", err("198.18.0.0/14"));
        assert!(err("198.18.1.5/24").contains("the block is 198.18.1.0/24"));
        assert!(err("198.18.1.0").contains("not a CIDR"));
        assert!(err("198.18.1.x/24").contains("not an IPv4 address"));
        assert!(err("198.18.1.0/x").contains("not a prefix length"));
    }

    #[test]
    fn apiserver_names_follow_the_block() {
        let s = Subnet::parse("198.18.1.0/24").unwrap();
        assert_eq!(s.apiserver_name(&"198.18.1.10:6443".parse().unwrap()), "lb");
        assert_eq!(s.apiserver_name(&"198.18.1.12:6443".parse().unwrap()), "kube-apiserver@cp-2");
        // The other testbed's load balancer is not this one's.
        assert_eq!(
            s.apiserver_name(&"198.18.0.10:6443".parse().unwrap()),
            "kube-apiserver@198.18.0.10"
        );
    }
}
