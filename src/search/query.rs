//! The search query language (work in progress).
