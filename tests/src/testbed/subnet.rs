//! The testbed's address block (`kubeca-testbed up --subnet CIDR`): where its load balancer and nodes listen.
//!
//! A testbed takes every address it listens on from one block of 127.0.0.0/8: the load balancer
//! at the block's address + 10 and node *i* (control planes first, from 0) at + 11 + *i*, so the
//! default block 127.0.0.0/24 gives the load balancer 127.0.0.10 and the nodes 127.0.0.11 up.
//! Every listener of a testbed binds an address of its block (never 127.0.0.1, which every
//! testbed shares), so two testbeds on different blocks (127.0.0.0/24 and 127.0.1.0/24) run side
//! by side. `up` hands the block to every process of the testbed: the node supervisor's
//! `--subnet`, then [`ENV`] for the kubelet and everything it starts.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;

use anyhow::{Context, Result, bail};

/// The block of a testbed started without `--subnet`: load balancer 127.0.0.10, nodes 127.0.0.11 up.
pub const DEFAULT: &str = "127.0.0.0/24";

/// The environment variable that tells a testbed process its block (`127.0.1.0/24`).
pub const ENV: &str = "KUBECA_TESTBED_SUBNET";

/// The port of the control-plane endpoint (haproxy) and of every apiserver.
pub const API_PORT: u16 = 6443;

/// Most nodes one testbed has: block + 11 to block + 250, inside the block's first 256 addresses.
pub const MAX_NODES: usize = 240;

/// Offset of the load balancer in the block.
const LB_OFFSET: u32 = 10;
/// Offset of the first node in the block.
const FIRST_NODE_OFFSET: u32 = 11;

/// An address block on 127.0.0.0/8 of at least 256 addresses (a prefix of /8 to /24).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subnet {
    network: Ipv4Addr,
    prefix: u8,
}

impl Subnet {
    /// The block of a testbed started without `--subnet` (127.0.0.0/24).
    pub fn default_block() -> Subnet {
        Subnet { network: Ipv4Addr::new(127, 0, 0, 0), prefix: 24 }
    }

    /// Reads `CIDR` (`127.0.1.0/24`): the network address with no host bits set, a prefix of /8
    /// to /24 (room for the load balancer and [`MAX_NODES`] nodes), inside 127.0.0.0/8.
    pub fn parse(cidr: &str) -> Result<Subnet> {
        let Some((addr, len)) = cidr.split_once('/') else {
            bail!("subnet {cidr:?} is not a CIDR block such as 127.0.1.0/24");
        };
        let network: Ipv4Addr = addr
            .parse()
            .with_context(|| format!("subnet {cidr:?}: {addr:?} is not an IPv4 address"))?;
        let prefix: u8 = len
            .parse()
            .with_context(|| format!("subnet {cidr:?}: {len:?} is not a prefix length"))?;
        if network.octets()[0] != 127 {
            bail!(
                "subnet {cidr} is outside 127.0.0.0/8: a testbed listens on loopback addresses only"
            );
        }
        if !(8..=24).contains(&prefix) {
            bail!(
                "subnet {cidr}: the prefix must be /8 to /24 (the block holds the load balancer \
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
    /// addresses from a network address of at most 127.255.255.0, so this never leaves it.
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
    fn the_default_block_keeps_the_addresses_of_before() {
        let s = Subnet::parse(DEFAULT).unwrap();
        assert_eq!(s, Subnet::default());
        assert_eq!(s.lb(), Ipv4Addr::new(127, 0, 0, 10));
        assert_eq!(s.lb_endpoint().to_string(), "127.0.0.10:6443");
        assert_eq!(s.node(0), Some(Ipv4Addr::new(127, 0, 0, 11)));
        assert_eq!(s.node(MAX_NODES - 1), Some(Ipv4Addr::new(127, 0, 0, 250)));
        assert_eq!(s.node(MAX_NODES), None);
        assert_eq!(s.to_string(), "127.0.0.0/24");
    }

    #[test]
    fn another_block_moves_every_address() {
        let s = Subnet::parse("127.0.1.0/24").unwrap();
        assert_eq!(s.lb(), Ipv4Addr::new(127, 0, 1, 10));
        assert_eq!(s.node(4), Some(Ipv4Addr::new(127, 0, 1, 15)));
        let wide = Subnet::parse("127.8.0.0/16").unwrap();
        assert_eq!(wide.lb(), Ipv4Addr::new(127, 8, 0, 10));
        assert_eq!(wide.node(239), Some(Ipv4Addr::new(127, 8, 0, 250)));
    }

    #[test]
    fn blocks_off_loopback_or_malformed_are_refused_naming_why() {
        let err = |s: &str| Subnet::parse(s).unwrap_err().to_string();
        assert!(err("10.0.0.0/24").contains("outside 127.0.0.0/8"), "{}", err("10.0.0.0/24"));
        assert!(err("127.0.0.0/25").contains("/8 to /24"));
        assert!(err("127.0.0.0/7").contains("/8 to /24"));
        assert!(err("127.0.1.5/24").contains("the block is 127.0.1.0/24"));
        assert!(err("127.0.1.0").contains("not a CIDR"));
        assert!(err("127.0.1.x/24").contains("not an IPv4 address"));
        assert!(err("127.0.1.0/x").contains("not a prefix length"));
    }

    #[test]
    fn apiserver_names_follow_the_block() {
        let s = Subnet::parse("127.0.1.0/24").unwrap();
        assert_eq!(s.apiserver_name(&"127.0.1.10:6443".parse().unwrap()), "lb");
        assert_eq!(s.apiserver_name(&"127.0.1.12:6443".parse().unwrap()), "kube-apiserver@cp-2");
        // The other testbed's load balancer is not this one's.
        assert_eq!(
            s.apiserver_name(&"127.0.0.10:6443".parse().unwrap()),
            "kube-apiserver@127.0.0.10"
        );
    }
}
