//! The real haproxy load balancer in TCP mode over the apiservers.
//!
//! (Engineers: read /work/main/tests/DEV-AGREEMENT.md first: ownership, contract, rules, deadline.)
