//! Searching stored audit events: the query language and its evaluation against the store.

pub mod query;
