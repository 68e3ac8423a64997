//! The datapath of one node as its users know it: [`Datapath`] (the
//! reconcilers over the pinned maps, [`crate::reconcile`]) and the listings
//! of what the maps hold ([`crate::view`]).
pub use crate::{
    reconcile::{ApplyStats, Datapath, DatapathError, Problem},
    view::{render, BackendListing, FrontendListing, ServiceListing},
};
