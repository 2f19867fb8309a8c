//! The real haproxy load balancer in TCP mode over the apiservers.
