//! Certificates: generate or import CAs, re-issue leaves under a new CA, bundles, chain checks (rcgen, x509-parser).
