//! In-process Kubernetes API server double (list/watch wire protocol).
