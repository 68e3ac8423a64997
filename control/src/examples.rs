//! Manifests embedded in the binary: the default configuration of the lab
//! (`default/nginx` behind VIP 10.100.0.1 / 2001:db8:100::1, see
//! control/examples/).

/// control/examples/nginx.yaml: Service, EndpointSlices and Nodes of the lab.
pub const NGINX: &str = include_str!("../examples/nginx.yaml");
