//! Sources of Kubernetes objects: manifest files ([`mod@file`], read whole into a
//! [`crate::cluster::Cluster`] and handed over as a full listing) and the API
//! server ([`kube`], which hands over only what changed). Both speak
//! [`crate::cluster::Changes`], the input of [`crate::translate::Translator`].
pub mod file;
pub mod kube;
