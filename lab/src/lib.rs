//! Network-namespace labs: topology, processes in namespaces, cleanup.
